//! spmdrun's jobs: the ranks' environment, cores, working directory and
//! exit, output forwarding and standard input, and programs started without
//! spmdrun (the command line's errors, hostfiles and `--host` are in
//! command_line.rs).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{example, run, spmdrun};

#[test]
fn no_descendant_of_a_rank_outlives_the_job() {
    // A child in a session of its own, and a grandchild whose parent left.
    let script = "setsid sleep 300 & echo $!; (sleep 301 & echo $!) ; exit 0";
    let out = run(spmdrun(&["-n", "2", "sh", "-c", script]));
    assert_eq!(out.code(), Some(0), "{out:?}");
    let pids: Vec<i32> = out.lines().iter().map(|l| l.parse().expect("a pid")).collect();
    assert_eq!(pids.len(), 4, "{out:?}");
    common::assert_all_gone(&pids);
}

#[test]
fn the_first_failure_is_reported_in_the_words_of_the_rank_that_failed() {
    // Rank 0 runs out of descriptors while the others connect to it over
    // sockets: the report is rank 0's own error, not the others' view.
    let script = format!(
        "if [ $SPMD_RANK = 0 ]; then ulimit -n 14; fi; exec {} p2p",
        example("spmd-check")
    );
    let mut cmd = spmdrun(&["-n", "16", "--timeout", "60", "sh", "-c", &script]);
    cmd.env("SPMD_TRANSPORT", "socket");
    let out = run(cmd);
    assert_ne!(out.code(), Some(0), "{out:?}");
    let report: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("spmdrun: rank")).collect();
    assert_eq!(report.len(), 1, "{out:?}");
    assert!(report[0].starts_with("spmdrun: rank 0 "), "{out:?}");
    assert!(report[0].contains("Too many open files"), "{out:?}");
}

#[test]
fn a_job_that_needs_more_shared_memory_than_is_free_says_so_before_starting() {
    // A memory cgroup of 24 MiB for spmdrun: 16 ranks need about 40 MiB.
    let root = "/sys/fs/cgroup/memory";
    assert!(
        std::path::Path::new(root).is_dir() && nix::unistd::geteuid().is_root(),
        "this test needs root and the cgroup v1 memory controller at {root} (as CI has)"
    );
    let group = format!("{root}/spmd-test-{}", std::process::id());
    std::fs::create_dir_all(&group).expect("making a memory cgroup");
    std::fs::write(format!("{group}/memory.limit_in_bytes"), "25165824").expect("setting its limit");
    let script = format!(
        "echo $$ > {group}/cgroup.procs && exec {} -n 16 {}",
        common::spmdrun_path().display(),
        example("ring")
    );
    let out = run({
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    });
    let _ = std::fs::remove_dir(&group);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("needs")
            && out.stderr.contains("MiB of shared memory")
            && out.stderr.contains(&group[root.len()..]),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "no rank started: {out:?}");
}

#[test]
fn any_program_runs_once_per_rank() {
    let out = run(spmdrun(&["-n", "4", "hostname"]));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(out.lines().len(), 4, "{out:?}");
    let out = run(spmdrun(&["-np", "3", "--oversubscribe", "true"]));
    assert_eq!(out.code(), Some(0), "-np and --oversubscribe: {out:?}");
}

#[test]
fn every_rank_gets_its_place_and_exported_variables() {
    let script = "echo $SPMD_RANK $SPMD_SIZE $SPMD_LOCAL_RANK $SPMD_LOCAL_SIZE $GREETING $PATH_COPY";
    let mut cmd = spmdrun(&[
        "-n",
        "3",
        "-x",
        "GREETING=hello world",
        "-x",
        "PATH_COPY",
        "sh",
        "-c",
        script,
    ]);
    cmd.env("PATH_COPY", "copied");
    let out = run(cmd);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let mut lines = out.lines();
    lines.sort();
    assert_eq!(
        lines,
        [
            "0 3 0 3 hello world copied",
            "1 3 1 3 hello world copied",
            "2 3 2 3 hello world copied"
        ]
    );
}

/// Each rank's `Cpus_allowed_list`, by rank, for `spmdrun ARGS sh -c ...`.
fn allowed_cores(args: &[&str]) -> Vec<String> {
    let script = "echo $SPMD_RANK $(grep Cpus_allowed_list /proc/self/status | cut -f2)";
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["sh", "-c", script]);
    let out = run(spmdrun(&all));
    assert_eq!(out.code(), Some(0), "{args:?}: {out:?}");
    let mut lines: Vec<(usize, String)> = out
        .lines()
        .iter()
        .map(|l| {
            let (rank, cores) = l.split_once(' ').expect("rank and cores");
            (rank.parse().expect("a rank"), cores.to_string())
        })
        .collect();
    lines.sort();
    lines.into_iter().map(|(_, cores)| cores).collect()
}

#[test]
fn ranks_get_a_core_each_when_they_fit_and_the_scheduler_decides_otherwise() {
    let ours = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let ours = ours
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cores >= 2, "this test needs two cores");
    // Two ranks: one core each, different ones, within ours.
    let bound = allowed_cores(&["-n", "2"]);
    assert_eq!(bound.len(), 2);
    assert!(
        bound.iter().all(|c| c.parse::<usize>().is_ok()),
        "one core each: {bound:?} (ours: {ours})"
    );
    assert_ne!(bound[0], bound[1], "{bound:?}");
    // Asked not to, or more ranks than cores: every core we have.
    assert_eq!(
        allowed_cores(&["-n", "2", "--bind-to", "none"]),
        [ours.clone(), ours.clone()]
    );
    let over = (cores + 1).to_string();
    assert_eq!(allowed_cores(&["-n", &over]), vec![ours; cores + 1]);
}

#[test]
fn wdir_sets_the_working_directory() {
    let dir = std::env::temp_dir().canonicalize().expect("a temp dir");
    let out = run(spmdrun(&["-n", "2", "--wdir", &dir.display().to_string(), "pwd"]));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(out.lines(), [dir.display().to_string(), dir.display().to_string()]);
}

#[test]
fn exit_status_is_the_first_failure() {
    let out = run(spmdrun(&["-n", "2", "sh", "-c", "exit $((SPMD_RANK * 7))"]));
    assert_eq!(out.code(), Some(7), "{out:?}");
    assert!(
        out.stderr.contains("rank 1 (pid ") && out.stderr.contains("exited with code 7"),
        "{out:?}"
    );
}

#[test]
fn tag_output_prefixes_every_line_with_its_rank() {
    let out = run(spmdrun(&[
        "-n",
        "2",
        "--tag-output",
        "sh",
        "-c",
        "echo a; echo b >&2; printf c",
    ]));
    assert_eq!(out.code(), Some(0), "{out:?}");
    let mut lines = out.lines();
    lines.sort();
    assert_eq!(lines, ["[0] a", "[0] c", "[1] a", "[1] c"]);
    let mut errs: Vec<&str> = out.stderr.lines().collect();
    errs.sort();
    assert_eq!(errs, ["[0] b", "[1] b"]);
    let short = run(spmdrun(&["-n", "1", "-l", "echo", "x"]));
    assert_eq!(short.lines(), ["[0] x"]);
}

#[test]
fn output_lines_are_never_torn_apart() {
    let n = 4;
    let out = run(spmdrun(&["-n", &n.to_string(), &example("spmd-check"), "chatter"]));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let mut counts = vec![0; n];
    for line in out.lines() {
        if let Some(rank) = line.strip_suffix(" done").and_then(|l| l.strip_prefix("rank ")) {
            counts[rank.parse::<usize>().expect("a rank")] += 1000;
            continue;
        }
        let rank: usize = line
            .strip_prefix("rank ")
            .and_then(|l| l.split(' ').next())
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("a torn line: {line:?}"));
        let body = line.split(' ').nth(4).unwrap_or_default();
        assert_eq!(body, rank.to_string().repeat(300), "a torn line: {line:?}");
        assert!(line.ends_with(" end"), "a torn line: {line:?}");
        counts[rank] += 1;
    }
    assert_eq!(counts, vec![1500; n], "every rank's 500 lines and its last line");
}

#[test]
fn standard_input_goes_to_rank_0_only() {
    let mut child = spmdrun(&[
        "-n",
        "3",
        "sh",
        "-c",
        "while read l; do echo \"$SPMD_RANK got $l\"; done; echo $SPMD_RANK end",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spmdrun starts");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin.write_all(b"one\ntwo\n").expect("writing stdin");
    drop(stdin);
    let out = common::finish(child);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let mut lines = out.lines();
    lines.sort();
    assert_eq!(lines, ["0 end", "0 got one", "0 got two", "1 end", "2 end"]);
}

/// Runs `line` under `script`, whose pseudo-terminal is its stdin, with
/// `typed` written to that terminal at once.
fn on_a_terminal(line: &str, typed: &[u8]) -> common::Finished {
    let mut child = Command::new("script")
        .args(["-qec", line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script starts");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin.write_all(typed).expect("writing stdin");
    // Kept open: script ends when its command does.
    std::thread::spawn(move || {
        std::thread::sleep(common::LIMIT);
        drop(stdin);
    });
    common::finish(child)
}

#[test]
fn standard_input_from_a_terminal_reaches_rank_0() {
    // A terminal as spmdrun's stdin: rank 0, in its own process group,
    // would be stopped reading it; spmdrun reads it and passes it on.
    let job = format!(
        "{} -n 2 --timeout 20 sh -c 'if [ $SPMD_RANK = 0 ]; then read l; echo \"got $l\"; fi'",
        common::spmdrun_path().display()
    );
    let out = on_a_terminal(&job, b"typed\n");
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("got typed"), "{out:?}");
    // As a background job of that terminal spmdrun reads nothing (which
    // would stop it) and keeps running; brought to the foreground, it
    // reads what was typed.
    let shell = format!("set -m; {job} & sleep 2; jobs -l; fg");
    let line = format!("sh -c '{}'", shell.replace('\'', "'\\''"));
    let out = on_a_terminal(&line, b"typed\n");
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("Running"), "{out:?}");
    assert!(!out.stdout.contains("Stopped"), "{out:?}");
    assert!(out.stdout.contains("got typed"), "{out:?}");
}

#[test]
fn a_program_started_alone_is_a_job_of_one() {
    let out = run({
        let mut c = Command::new(example("spmd-check"));
        c.arg("alone");
        c
    });
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("alone: all checks passed"), "{out:?}");
}

#[test]
fn a_program_started_by_mpirun_without_the_mpi_feature_says_so() {
    let launchers: [(&[(&str, &str)], &str); 4] = [
        (&[("OMPI_COMM_WORLD_SIZE", "4")], "Open MPI"),
        (&[("PMI_SIZE", "4")], "MPICH"),
        (&[("PMIX_SIZE", "4")], "PMIx"),
        (&[("SLURM_STEP_ID", "0"), ("SLURM_STEP_NUM_TASKS", "4")], "srun"),
    ];
    for (vars, launcher) in launchers {
        let mut cmd = Command::new(example("spmd-check"));
        cmd.args(["p2p"]).envs(vars.iter().copied());
        let out = run(cmd);
        assert_ne!(out.code(), Some(0), "{out:?}");
        assert!(
            out.stderr.contains(launcher) && out.stderr.contains("built without its `mpi` feature"),
            "{launcher}: {out:?}"
        );
    }
    // A batch script has SLURM_PROCID too, without being a job step: alone.
    let mut cmd = Command::new(example("spmd-check"));
    cmd.args(["alone"]).envs([("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4")]);
    let out = run(cmd);
    assert_eq!(out.code(), Some(0), "{out:?}");
}

#[test]
fn an_ordinary_user_runs_many_ranks_under_a_small_limit_on_open_files() {
    // Start-up hands every rank a descriptor per peer, and the kernel caps
    // the descriptors an ordinary user has in flight at the sender's limit
    // on open files: 40 ranks pass 1,560 of them under a limit of 200.
    let spmdrun = common::runnable_by_anyone(&common::spmdrun_path().display().to_string());
    let check = common::runnable_by_anyone(&example("spmd-check"));
    for transport in common::TRANSPORTS {
        let script = format!(
            "ulimit -n 200 && exec {} -n 40 --timeout 150 {} p2p",
            spmdrun.path().display(),
            check.path().display()
        );
        let mut cmd = common::as_other_user(std::path::Path::new("/bin/sh"));
        cmd.args(["-c", &script]).env("SPMD_TRANSPORT", transport);
        let out = run(cmd);
        assert_eq!(out.code(), Some(0), "{transport}: {out:?}");
    }
}
