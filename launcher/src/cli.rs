//! The command line of `spmdrun`: flags, their checks, and one-line errors
//! that name the real problem.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use spmd::wire::{Settings, SingleCopy, TransportKind, WaitMode, env};

use crate::hostfile;
use crate::placement::{self, MapBy, Nodes, Placement};

const AFTER_HELP: &str = "\
Every rank gets SPMD_RANK, SPMD_SIZE, SPMD_LOCAL_RANK, SPMD_LOCAL_SIZE and
SPMD_NODE in its environment, and an inherited private channel to spmdrun
(on another host, to spmdrun's agent there, started through ssh);
ranks reach each other only through memory and sockets spmdrun hands them, so
there is no secret, address or file for anyone else to find (over TCP, each
rank listens while the job starts, and every connection proves the job's
secret, which travels only over the private channel).

User settings, read from spmdrun's environment (or given with -x):
  SPMD_TRANSPORT=shm|socket|tcp how ranks talk: shared memory, Unix sockets,
                                or TCP (default shm; across hosts, shm
                                within each host and TCP between them)
  SPMD_WAIT=auto|spin|yield|sleep
                                how a rank polls before it sleeps
                                (default auto: spin with a core per
                                rank, yielding while a peer shares its core;
                                yield with more ranks than cores)
  SPMD_SINGLE_COPY=auto|always|off
                                when a large message between ranks on one
                                machine is copied once, straight from the
                                sender's memory, where the kernel allows it
                                (default auto: when messages queue up on a
                                machine with more runnable tasks than cores)

Exit status: 0 when every rank exits 0; otherwise the first failure's: the
code a rank exited with or gave to abort (101 for a panic), 128+N for a rank
killed by signal N or for spmdrun receiving signal N, 124 for --timeout, 125
for a deadlock, 1 for a rank that exited without finalizing or without
joining the job, or when spmdrun's own output failed; 2 for a bad command
line.";

/// Runs PROGRAM as N ranks of one SPMD job.
#[derive(Debug, Parser)]
#[command(
    name = "spmdrun",
    version,
    about = "Run a program as N ranks of an spmd job",
    override_usage = "spmdrun [-n N] [OPTIONS] PROGRAM [ARGS]...",
    after_help = AFTER_HELP
)]
struct Args {
    /// Number of ranks to start (`-np N` works too). Without it, one rank
    /// per slot of the hosts (per core, without a hostfile or --host).
    #[arg(short = 'n', value_name = "N", allow_negative_numbers = true)]
    ranks: Option<i64>,

    /// Allow more ranks than the hosts have slots (never more than a
    /// host's max_slots). Without a hostfile or --host spmdrun always
    /// allows more ranks than cores.
    #[arg(long)]
    oversubscribe: bool,

    /// Place ranks on the slots of this hostfile, in Open MPI's
    /// (`host slots=N max_slots=M`) or MPICH's (`host:N`) format. A host
    /// without a slot count has one per core on this machine, else one.
    /// Ranks on other hosts start through ssh (see --launch-agent).
    #[arg(long, visible_alias = "machinefile", short = 'f', value_name = "FILE")]
    hostfile: Option<PathBuf>,

    /// Hosts on the command line instead of a hostfile: `a:2,b:2` (a host
    /// named N times without `:N` has N slots).
    #[arg(long, short = 'H', value_name = "HOST[:N],...", conflicts_with = "hostfile")]
    host: Option<String>,

    /// Fill each host's slots in turn (`slot`, the default) or place one
    /// rank per host round the list (`node`).
    #[arg(long = "map-by", value_name = "slot|node", default_value = "slot")]
    map_by: String,

    /// How to reach another host: the command, split at spaces, that
    /// spmdrun runs with the host name and the agent's command line after
    /// it (default `ssh -T -o BatchMode=yes -o ConnectTimeout=10 -o
    /// ServerAliveInterval=5 -o ServerAliveCountMax=3`).
    #[arg(long = "launch-agent", value_name = "CMD")]
    launch_agent: Option<String>,

    /// The address other hosts reach this machine's ranks at (default: the
    /// source address of the route to the first remote host).
    #[arg(long = "control-address", value_name = "IP")]
    control_address: Option<std::net::IpAddr>,

    /// Say how the job is started: each host's agent, and the addresses
    /// the ranks listen on.
    #[arg(long, short = 'v')]
    verbose: bool,

    /// Prefix every output line with the rank that printed it, as `[R] `.
    #[arg(long = "tag-output", short = 'l')]
    tag_output: bool,

    /// Export VAR (from spmdrun's environment) or set VAR=VALUE for every
    /// rank. Repeatable.
    #[arg(short = 'x', value_name = "VAR[=VALUE]")]
    export: Vec<String>,

    /// Working directory of the ranks.
    #[arg(long, value_name = "DIR")]
    wdir: Option<PathBuf>,

    /// End the job with an error (status 124) if it runs longer than
    /// SECONDS, saying what every rank was doing.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    timeout: Option<f64>,

    /// When ranks have been blocked inside spmd for SECONDS, say on what;
    /// when every rank is, and nothing is in flight, report the deadlock
    /// and end the job (status 125). 0 turns the reports off.
    #[arg(
        long = "hang-report",
        value_name = "SECONDS",
        default_value_t = 60.0,
        allow_negative_numbers = true
    )]
    hang_report: f64,

    /// What to do about a deadlock: `end` the job (the default) or only
    /// `report` it and keep waiting.
    #[arg(long = "on-deadlock", value_name = "end|report", default_value = "end")]
    on_deadlock: String,

    /// Bind each rank to a core of its own (`core`, the default, when there
    /// are no more ranks than cores spmdrun may use) or leave the ranks to
    /// the scheduler (`none`).
    #[arg(long = "bind-to", value_name = "core|none", default_value = "core")]
    bind_to: String,

    /// The program to run, and its arguments (passed on as they are).
    #[arg(value_name = "PROGRAM", required = true, trailing_var_arg = true, num_args = 1..)]
    command: Vec<OsString>,
}

/// How spmdrun reaches another host unless `--launch-agent` says: ssh that
/// never asks for a password, gives up on a host that does not answer in
/// 10 s, and notices within about 15 s a host that vanishes.
pub const DEFAULT_LAUNCH_AGENT: [&str; 10] = [
    "ssh",
    "-T",
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=10",
    "-o",
    "ServerAliveInterval=5",
    "-o",
    "ServerAliveCountMax=3",
];

/// The most ranks spmdrun starts on one machine (each is a process, with
/// a link to every other).
pub const MAX_RANKS: usize = 1 << 16;

/// The checked options of one job.
#[derive(Debug)]
pub struct Options {
    pub ranks: usize,
    /// The hosts the ranks run on, and which rank runs on which.
    pub hosts: Vec<hostfile::Host>,
    pub placement: Placement,
    /// The machines the ranks run on, one node each.
    pub nodes: Nodes,
    /// The command that reaches another host (ssh and its options).
    pub launch_agent: Vec<String>,
    /// The address other hosts reach this machine's ranks at.
    pub control_address: Option<std::net::IpAddr>,
    pub verbose: bool,
    pub tag_output: bool,
    pub env: Vec<(String, String)>,
    pub wdir: Option<PathBuf>,
    pub timeout: Option<Duration>,
    pub hang_report: Option<Duration>,
    pub end_on_deadlock: bool,
    /// Bind each rank to a core of its own when the ranks fit.
    pub bind_to_cores: bool,
    pub settings: Settings,
    /// Whether the wait mode was chosen by the user (not `auto`).
    pub wait_chosen: bool,
    pub program: PathBuf,
    /// The program as other hosts get it.
    pub program_elsewhere: PathBuf,
    pub args: Vec<OsString>,
}

/// What the command line asked for: a job, or a text to print and exit.
pub enum Parsed {
    Job(Box<Options>),
    Exit { text: String, code: i32 },
}

/// Parses and checks the command line. Errors are one line.
pub fn parse(argv: Vec<OsString>) -> Parsed {
    // `-np` is a long option spelled with one dash in mpirun; clap wants it
    // as `-n`. Only options before the program are rewritten: an option is
    // a word starting with '-', and the flags that take a value take the
    // next word with them.
    let mut argv = argv;
    let mut i = 1;
    while i < argv.len() {
        let word = argv[i].to_string_lossy().into_owned();
        if !word.starts_with('-') {
            break;
        }
        if word == "-np" {
            argv[i] = OsString::from("-n");
        }
        let takes_value = [
            "-n",
            "-np",
            "-x",
            "-f",
            "--hostfile",
            "--machinefile",
            "-H",
            "--host",
            "--map-by",
            "--launch-agent",
            "--control-address",
            "--wdir",
            "--timeout",
        ]
        .contains(&word.as_str())
            || ["--hang-report", "--on-deadlock", "--bind-to"].contains(&word.as_str());
        i += if takes_value { 2 } else { 1 };
    }
    let args = match Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                return Parsed::Exit {
                    text: e.to_string(),
                    code: 0,
                };
            }
            // clap's message, without the usage block, on one line.
            let rendered = e.to_string();
            let text: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("tip:") && !l.starts_with("For more information"))
                .collect();
            let text = text.join(" ");
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            return fail(format!("{text} (see spmdrun --help)"));
        }
    };
    match check(args) {
        Ok(o) => Parsed::Job(Box::new(o)),
        Err(text) => fail(text),
    }
}

/// The hosts and the placement of the ranks on them: from the hostfile or
/// `--host`, or this machine with a slot per core (oversubscribed at will).
fn placed(args: &Args, map_by: MapBy) -> Result<(Vec<hostfile::Host>, Placement), String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let listed = match (&args.hostfile, &args.host) {
        (Some(path), _) => Some(hostfile::read(path)?),
        (None, Some(list)) => Some(hostfile::parse_list(list)?),
        (None, None) => None,
    };
    let Some(hosts) = listed else {
        let ranks = args.ranks.map_or(cores, |n| n as usize);
        let here = hostfile::Host {
            name: "localhost".into(),
            slots: Some(cores),
            max_slots: None,
            origin: "this machine".into(),
        };
        return Ok((vec![here], Placement { host: vec![0; ranks] }));
    };
    // A host without a slot count has one per core where that can be
    // learnt: on this machine.
    let slots: Vec<usize> = hosts
        .iter()
        .map(|h| h.slots_or(if hostfile::is_local(&h.name) { cores } else { 1 }))
        .collect();
    let total = slots.iter().fold(0usize, |a, s| a.saturating_add(*s));
    let ranks = match args.ranks {
        Some(n) => n as usize,
        None if total > MAX_RANKS => {
            return Err(format!(
                "the hosts have {total} slots, more than the {MAX_RANKS} ranks spmdrun runs; give -n"
            ));
        }
        None => total,
    };
    let placement = placement::place(&hosts, &slots, ranks, map_by, args.oversubscribe)?;
    Ok((hosts, placement))
}

fn fail(text: String) -> Parsed {
    Parsed::Exit {
        text: format!("spmdrun: {text}"),
        code: 2,
    }
}

fn seconds(flag: &str, s: f64, zero_ok: bool) -> Result<Option<Duration>, String> {
    if zero_ok && s == 0.0 {
        return Ok(None);
    }
    if s.is_finite() && s > 0.0 && s < 1e9 {
        return Ok(Some(Duration::from_secs_f64(s)));
    }
    Err(format!("{flag} {s}: must be a positive number of seconds"))
}

fn check(args: Args) -> Result<Options, String> {
    if let Some(n) = args.ranks {
        if n < 1 {
            return Err(format!("-n {n}: must be at least 1"));
        }
        if n > MAX_RANKS as i64 {
            return Err(format!("-n {n}: spmdrun runs at most {MAX_RANKS} ranks on one machine"));
        }
    }
    let map_by = MapBy::parse(&args.map_by)?;
    let (hosts, placement) = placed(&args, map_by)?;
    let ranks = placement.host.len();
    let local: Vec<bool> = hosts.iter().map(|h| hostfile::is_local(&h.name)).collect();
    let nodes = Nodes::of(&placement, &local);
    let launch_agent: Vec<String> = match &args.launch_agent {
        Some(cmd) => cmd.split_whitespace().map(String::from).collect(),
        None => DEFAULT_LAUNCH_AGENT.iter().map(|w| w.to_string()).collect(),
    };
    if launch_agent.is_empty() {
        return Err("--launch-agent: the command is empty".into());
    }
    let mut env = Vec::new();
    for x in &args.export {
        env.push(parse_export(x)?);
    }
    if let Some(dir) = &args.wdir {
        check_wdir(dir)?;
    }
    let timeout = match args.timeout {
        None => None,
        Some(s) => seconds("--timeout", s, false)?,
    };
    let hang_report = seconds("--hang-report", args.hang_report, true)?;
    let end_on_deadlock = match args.on_deadlock.as_str() {
        "end" => true,
        "report" => false,
        other => return Err(format!("--on-deadlock {other:?}: expected \"end\" or \"report\"")),
    };
    let bind_to_cores = match args.bind_to.as_str() {
        "core" => true,
        "none" => false,
        other => return Err(format!("--bind-to {other:?}: expected \"core\" or \"none\"")),
    };
    let setting = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    };
    let transport = match setting(env::TRANSPORT) {
        Some(v) => TransportKind::parse(&v)?,
        None => TransportKind::Shm,
    };
    // Between hosts only TCP reaches: over shared memory (the default),
    // ranks on one host share memory and use TCP to the others; over tcp,
    // every pair uses TCP; Unix sockets cannot leave a host.
    let spans = nodes.host.len();
    if spans > 1 && transport == TransportKind::Socket {
        return Err(format!(
            "{}=socket: the job spans {spans} hosts, which Unix sockets cannot reach (use shm or tcp)",
            env::TRANSPORT
        ));
    }
    let wait = match setting(env::WAIT) {
        Some(v) => WaitMode::parse(&v)?,
        None => None,
    };
    let single_copy = match setting(env::SINGLE_COPY) {
        Some(v) => SingleCopy::parse(&v)?,
        None => SingleCopy::Auto,
    };
    let mut command = args.command.into_iter();
    let Some(program) = command.next() else {
        return Err("no program given".into());
    };
    // Other hosts get the program as given (a bare name is looked up on
    // each host's own PATH), and check it before any rank starts; this
    // machine checks it now if ranks run here.
    let elsewhere = if program.to_string_lossy().contains('/') {
        std::path::absolute(&program).map_err(|e| format!("cannot run {}: {e}", program.to_string_lossy()))?
    } else {
        PathBuf::from(&program)
    };
    let program = if nodes.host.contains(&None) {
        find_program(&program)?
    } else {
        elsewhere.clone()
    };
    Ok(Options {
        ranks,
        hosts,
        placement,
        nodes,
        launch_agent,
        control_address: args.control_address,
        verbose: args.verbose,
        tag_output: args.tag_output,
        env,
        wdir: args.wdir,
        timeout,
        hang_report,
        end_on_deadlock,
        bind_to_cores,
        settings: Settings {
            transport,
            wait: wait.unwrap_or(WaitMode::Spin),
            single_copy,
        },
        wait_chosen: wait.is_some(),
        program,
        program_elsewhere: elsewhere,
        args: command.collect(),
    })
}

fn check_wdir(dir: &Path) -> Result<(), String> {
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("--wdir {shown}: no such directory")),
        Err(e) => Err(format!("--wdir {shown}: {e}")),
        Ok(m) if !m.is_dir() => Err(format!("--wdir {shown}: not a directory")),
        Ok(_) => match std::fs::read_dir(dir) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("--wdir {shown}: {e}")),
        },
    }
}

fn parse_export(x: &str) -> Result<(String, String), String> {
    let (name, value) = match x.split_once('=') {
        Some((n, v)) => (n, Some(v.to_string())),
        None => (x, None),
    };
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "-x {x:?}: expected VAR or VAR=VALUE with VAR made of letters, digits and _"
        ));
    }
    let user_settings = [env::TRANSPORT, env::WAIT, env::SINGLE_COPY];
    if name.starts_with("SPMD_") && !user_settings.contains(&name) {
        return Err(format!(
            "-x {name}: SPMD_ variables are set by spmdrun itself (only {} are user settings)",
            user_settings.join(", ")
        ));
    }
    let value = match value {
        Some(v) => v,
        None => std::env::var(name).map_err(|_| format!("-x {name}: {name} is not set in spmdrun's environment"))?,
    };
    Ok((name.to_string(), value))
}

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds the program as a path, or on `PATH` when it has no slash.
fn find_program(program: &OsString) -> Result<PathBuf, String> {
    let shown = program.to_string_lossy();
    let path = Path::new(program);
    if shown.contains('/') {
        if !path.exists() {
            return Err(format!("cannot run {shown}: no such file"));
        }
        if path.is_dir() {
            return Err(format!("cannot run {shown}: it is a directory"));
        }
        if !is_executable(path) {
            return Err(format!("cannot run {shown}: not an executable file"));
        }
        return std::path::absolute(path).map_err(|e| format!("cannot run {shown}: {e}"));
    }
    if shown.is_empty() {
        return Err("the program name is empty".into());
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&search) {
        let candidate = dir.join(path);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(format!("cannot run {shown}: not found in PATH"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(args: &[&str]) -> String {
        let mut argv = vec![OsString::from("spmdrun")];
        argv.extend(args.iter().map(OsString::from));
        match parse(argv) {
            Parsed::Exit { text, code: 2 } => text,
            Parsed::Exit { text, code } => panic!("{args:?}: status {code}: {text}"),
            Parsed::Job(o) => panic!("{args:?}: accepted: {o:?}"),
        }
    }

    #[test]
    fn each_mistake_is_named_for_what_it_is() {
        assert!(error(&["--tag-outptu", "-n", "2", "true"]).contains("--tag-outptu"));
        assert!(error(&["-n", "3", "-np", "2", "true"]).contains("-n"));
        assert!(!error(&["-n", "3", "-np", "2", "true"]).contains("PATH"));
        assert!(error(&["-n", "2", "--wdir", "/etc/hostname", "true"]).contains("not a directory"));
        assert!(error(&["-n", "2", "--on-deadlock", "x", "true"]).contains("--on-deadlock"));
        assert!(error(&["-n", "2", "--bind-to", "socket", "true"]).contains("--bind-to"));
        assert!(error(&["-n", "65537", "true"]).contains("at most 65536 ranks"));
        assert!(error(&["-n", "2000000000", "true"]).contains("at most 65536 ranks"));
        assert!(error(&["-n", "2", "-x", "SPMD_TRANSPORT=udp", "true"]).contains("SPMD_TRANSPORT"));
        assert!(error(&["-n", "2", "--map-by", "socket", "true"]).contains("--map-by"));
    }

    #[test]
    fn attached_values_and_user_settings_are_accepted() {
        let argv = ["spmdrun", "-n3", "-x", "SPMD_TRANSPORT=socket", "true", "-n", "x"];
        let Parsed::Job(o) = parse(argv.iter().map(OsString::from).collect()) else {
            panic!("refused");
        };
        assert_eq!(o.ranks, 3);
        assert_eq!(o.settings.transport, TransportKind::Socket);
        assert_eq!(o.args, ["-n", "x"]);
    }
}
