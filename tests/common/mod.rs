//! Shared helpers of the integration tests: build spmdrun and the rank
//! programs once, run real jobs with a time limit, and check processes.

#![allow(dead_code)]

pub mod hosts;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// No test job may run longer than this; spmdrun's own `--timeout` is a
/// second guard inside it.
pub const LIMIT: Duration = Duration::from_secs(180);

/// The directory holding `spmdrun` and `examples/`, built for the profile
/// the tests were built with.
pub fn target_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // current_exe is <target>/<profile>/deps/<test>-<hash>
        let exe = std::env::current_exe().expect("the test knows its own path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test runs from <target>/<profile>/deps")
            .to_path_buf();
        let release = dir.file_name().is_some_and(|n| n == "release");
        // `cargo test` builds the examples but not the spmdrun binary, which
        // lives in another package: build both, so they are never stale.
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .args([
                "build",
                "--quiet",
                "--workspace",
                "--bins",
                "--examples",
                "--manifest-path",
            ])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
        if release {
            cargo.arg("--release");
        }
        let out = cargo.output().expect("cargo runs");
        assert!(
            out.status.success(),
            "building spmdrun and the examples failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

pub fn spmdrun_path() -> PathBuf {
    target_dir().join("spmdrun")
}

pub fn example(name: &str) -> String {
    target_dir().join("examples").join(name).display().to_string()
}

/// `spmdrun` with the given arguments.
pub fn spmdrun(args: &[&str]) -> Command {
    let mut cmd = Command::new(spmdrun_path());
    cmd.args(args);
    cmd
}

/// The transports the tests that only care about transports run over.
pub const TRANSPORTS: [&str; 3] = ["shm", "socket", "tcp"];

/// The ways ranks on one machine talk and wait, every one of which the
/// semantic tests run in: shared memory in each of its wait modes (the
/// oversubscribed paths are not left to machines with few cores), and
/// Unix sockets and TCP. Over shared memory, large messages go through the ring when
/// ranks spin, and as offers copied straight from the sender's memory
/// (`SPMD_SINGLE_COPY=always`) when they yield or sleep, so that both
/// paths run in every semantic test whatever the machine's load.
pub const MODES: [(&str, &str); 5] = [
    ("shm", "spin"),
    ("shm", "yield"),
    ("shm", "sleep"),
    ("socket", "auto"),
    ("tcp", "auto"),
];

/// The `SPMD_SINGLE_COPY` of a mode (see [`MODES`]).
pub fn single_copy(mode: (&str, &str)) -> &'static str {
    match mode {
        ("shm", "spin") => "off",
        ("shm", _) => "always",
        _ => "auto",
    }
}

/// `spmdrun` with the given arguments, its ranks using `transport`.
pub fn spmdrun_over(transport: &str, args: &[&str]) -> Command {
    let mut cmd = spmdrun(args);
    cmd.env("SPMD_TRANSPORT", transport);
    cmd
}

/// `spmdrun` with the given arguments, its ranks in `mode` (a transport
/// and a wait mode).
pub fn spmdrun_in(mode: (&str, &str), args: &[&str]) -> Command {
    let mut cmd = spmdrun_over(mode.0, args);
    cmd.env("SPMD_WAIT", mode.1);
    cmd.env("SPMD_SINGLE_COPY", single_copy(mode));
    cmd
}

/// "shm/spin (single copy off)", for messages.
pub fn mode_name(mode: (&str, &str)) -> String {
    format!("{}/{} (single copy {})", mode.0, mode.1, single_copy(mode))
}

/// What a finished job printed and how it ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

/// Runs a command to its end (killing it after LIMIT) and captures output.
pub fn run(mut cmd: Command) -> Finished {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    finish(child)
}

/// Waits for a started child (with piped stdout and stderr) within LIMIT.
pub fn finish(mut child: Child) -> Finished {
    let out = child.stdout.take().expect("stdout is piped");
    collect(child, out)
}

/// Reads the rest of `out` and all of the child's stderr while waiting for
/// it within LIMIT.
fn collect(mut child: Child, out: impl Read + Send + 'static) -> Finished {
    let out_thread = read_all_of(out);
    let err_thread = read_all_of(child.stderr.take().expect("stderr is piped"));
    let status = wait_limited(&mut child);
    Finished {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    }
}

fn wait_limited(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = child.try_wait().expect("waiting works") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the job did not end within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts `spmdrun ARGS` and reads `pid RANK PID` lines until every rank of
/// `n` has reported; returns the child (stdout partly read) and the pids.
pub fn start_reporting_pids(args: &[&str], n: usize) -> (Child, Vec<i32>, JobOutput) {
    start_reporting_pids_with(args, n, &[])
}

/// [`start_reporting_pids`] with more variables in spmdrun's environment.
pub fn start_reporting_pids_with(args: &[&str], n: usize, env: &[(&str, &str)]) -> (Child, Vec<i32>, JobOutput) {
    let mut child = spmdrun(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spmdrun starts");
    // Stderr is read from the start: spmdrun, its queue for it full, would
    // stop reading the ranks' output, and the pids would never come.
    let stderr = read_all_of(child.stderr.take().expect("stderr is piped"));
    let reader = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let (found, told) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = found.send(read_pids(reader, n));
    });
    match told.recv_timeout(LIMIT) {
        Ok(Ok((pids, before, stdout))) => (child, pids, JobOutput { before, stdout, stderr }),
        failed => {
            let _ = child.kill();
            let _ = child.wait();
            let why = match failed {
                Ok(Err(why)) => why,
                _ => format!("no pid from every rank within {LIMIT:?}"),
            };
            panic!("{why}; spmdrun's stderr: {}", stderr.join().unwrap_or_default());
        }
    }
}

/// Reads `pid RANK PID` lines until each of `n` ranks has said one; returns
/// the pids, the other lines read on the way (ranks on other hosts come
/// through other agents, so one rank's later lines may come before
/// another's pid), and the rest of the output.
type PidsRead = (Vec<i32>, Vec<u8>, BufReader<std::process::ChildStdout>);
fn read_pids(mut reader: BufReader<std::process::ChildStdout>, n: usize) -> Result<PidsRead, String> {
    let mut pids = vec![0; n];
    let mut seen = 0;
    let mut line = String::new();
    let mut others = Vec::new();
    while seen < n {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Err("spmdrun's output ended before every rank reported its pid".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading spmdrun's output: {e}")),
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let ["pid", rank, pid] = parts[..] {
            let rank: usize = rank.parse().map_err(|_| format!("a rank number in {line:?}"))?;
            pids[rank] = pid.parse().map_err(|_| format!("a pid in {line:?}"))?;
            seen += 1;
        } else {
            others.extend_from_slice(line.as_bytes());
        }
    }
    Ok((pids, others, reader))
}

/// Reads all of `from` on a thread of its own.
fn read_all_of(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = from.read_to_string(&mut s);
        s
    })
}

/// The output of a job after [`start_reporting_pids`]: the lines of its
/// stdout read on the way that were not a pid's, the rest of its stdout,
/// and its stderr (read from the start).
pub struct JobOutput {
    before: Vec<u8>,
    stdout: BufReader<std::process::ChildStdout>,
    stderr: std::thread::JoinHandle<String>,
}

/// Waits for a child started by [`start_reporting_pids`].
pub fn finish_reporting(mut child: Child, out: JobOutput) -> Finished {
    let rest = read_all_of(out.stdout);
    let status = wait_limited(&mut child);
    let mut stdout = String::from_utf8_lossy(&out.before).into_owned();
    stdout.push_str(&rest.join().unwrap_or_default());
    Finished {
        status,
        stdout,
        stderr: out.stderr.join().unwrap_or_default(),
    }
}

/// Runs `cmd` (spmdrun) with nobody reading its stdout until its stderr
/// has said a line containing `wanted` (or a minute has passed), then
/// reads the rest; returns the outcome and whether the line came while
/// stdout was unread.
pub fn unread_until(mut cmd: Command, wanted: &str) -> (Finished, bool) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spmdrun starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (lines, heard) = std::sync::mpsc::channel();
    let err_thread = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = lines.send(line);
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = false;
    while let Ok(line) = heard.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains(wanted) {
            seen = true;
            break;
        }
    }
    let out_thread = read_all_of(child.stdout.take().expect("stdout is piped"));
    let status = wait_limited(&mut child);
    let finished = Finished {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    };
    (finished, seen)
}

/// The end of a job of `spmd-check blocked-output` whose output was read
/// late: status 0, every byte, no deadlock.
pub fn assert_blocked_output_ended_well(out: &Finished) {
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(!out.stderr.contains("deadlock"), "{}", out.stderr);
    assert!(
        out.stdout.contains("blocked-output: rank 1 got its message"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stdout.matches('x').count(), 64 * 1023 * 1024, "every byte");
}

/// The report of `spmd-check blocked-output` names `rank` as blocked
/// writing to its standard `stream` ("output" or "error"), and rank 1 as
/// waiting for rank 0.
pub fn assert_named_blocked_writing(out: &Finished, rank: usize, stream: &str) {
    let said = format!("is blocked writing to its standard {stream}: whatever reads it does not keep up");
    let line = out.stderr.lines().find(|l| l.contains(&said));
    assert!(
        line.is_some_and(|l| l.starts_with(&format!("spmdrun:   rank {rank} (pid "))),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(") waits receive(from rank 0, tag 0)"),
        "{}",
        out.stderr
    );
}

/// The pid of the child a rank of `spmd-check fail exit-leaving-child` left
/// (it prints `child PID`).
pub fn left_child(out: &Finished) -> i32 {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("child "))
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("no child pid in {out:?}"))
}

/// True if a process with this pid exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
    }
}

/// Asserts that none of the pids is alive, allowing the kernel a moment to
/// finish tearing processes down.
pub fn assert_all_gone(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let living: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if living.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes of the job outlived it: {living:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends a signal to a process.
pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("kill works");
}

/// The second local user the tests run strangers and unprivileged jobs as.
pub const OTHER_USER: &str = "spmd-mallory";

/// Makes [`OTHER_USER`] if it is missing (the tests run as root in CI;
/// elsewhere, make it once: `useradd -M spmd-mallory`).
pub fn other_user() -> &'static str {
    let exists = Command::new("id")
        .arg(OTHER_USER)
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests need a second user: run `useradd -M {OTHER_USER}` as root (CI does)"
        );
        let made = Command::new("useradd")
            .args(["-M", "-s", "/usr/sbin/nologin", OTHER_USER])
            .status()
            .expect("useradd runs");
        // Another test may have made it meanwhile (status 9: it exists).
        assert!(made.success() || made.code() == Some(9), "useradd failed: {made:?}");
    }
    OTHER_USER
}

/// A copy of a program that [`OTHER_USER`] can run, in a temporary
/// directory of its own that goes when this drops (a copy of spmdrun is
/// tens of megabytes: a run of the tests leaves none behind).
pub struct RunnableCopy {
    dir: PathBuf,
    program: PathBuf,
}

impl RunnableCopy {
    /// The copy.
    pub fn path(&self) -> &Path {
        &self.program
    }

    /// The directory the copy is in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RunnableCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A copy of the program at `path` in a fresh temporary directory that
/// [`OTHER_USER`] can run (the target directory may be closed to it).
pub fn runnable_by_anyone(path: &str) -> RunnableCopy {
    use std::os::unix::fs::PermissionsExt;
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("copies-for-another-user-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("making a directory for copies");
    let copy = RunnableCopy {
        program: dir.join(Path::new(path).file_name().expect("a program name")),
        dir,
    };
    std::fs::set_permissions(copy.dir(), std::fs::Permissions::from_mode(0o755)).expect("opening it");
    std::fs::copy(path, copy.path()).expect("copying the program");
    std::fs::set_permissions(copy.path(), std::fs::Permissions::from_mode(0o755)).expect("making it runnable");
    copy
}

/// A command that runs `program` as [`OTHER_USER`], without root's groups.
pub fn as_other_user(program: &Path) -> Command {
    let user = other_user();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", user, "--regid", user, "--clear-groups"])
        .arg(program);
    cmd
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the rank is alive");
    let (_, rest) = stat.rsplit_once(')').expect("a stat line");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3 of stat, utime 14 and stime 15.
    let ticks: f64 = fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
    // SAFETY: sysconf has no memory effects.
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    };
    ticks / hz
}

/// A size in KiB from a process's `/proc/PID/status` (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
