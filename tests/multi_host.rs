//! Jobs across hosts: spmdrun reaches 127.0.0.2, 127.0.0.3 and 127.0.0.4
//! through real ssh to a real sshd on each (see `common::hosts`), starts
//! an agent there, and runs the ranks over TCP. The ring, every suite and
//! communicators across 3 hosts; both hostfile formats, `--host`,
//! `--map-by node`, `-x` and `--wdir` forwarded; the preflight naming
//! every failing host; and a remote rank killed, a remote agent killed, or
//! spmdrun stopped, each leaving no process of the job behind.

mod common;

use std::time::Instant;

use common::hosts::Hosts;
use common::{
    Finished, assert_all_gone, cpu_seconds, example, finish_reporting, run, signal, spmdrun, start_reporting_pids,
};
use nix::sys::signal::Signal;

/// `spmdrun` reaching the hosts through the test's ssh.
fn across(hosts: &Hosts, args: &[&str]) -> std::process::Command {
    let agent = hosts.launch_agent();
    let mut all = vec!["--launch-agent", agent.as_str()];
    all.extend_from_slice(args);
    spmdrun(&all)
}

fn ok(out: &Finished, what: &str) {
    assert_eq!(out.code(), Some(0), "{what}: {out:?}");
}

#[test]
fn the_ring_runs_across_three_hosts_from_a_hostfile_in_either_format_or_host_list() {
    let hosts = Hosts::start(3);
    let ring = example("ring");
    let open_mpi = hosts.file(
        "openmpi-hosts",
        "# three hosts\n127.0.0.2 slots=2\n127.0.0.3 slots=2\n\n127.0.0.4 slots=2 max_slots=2\n",
    );
    let mpich = hosts.file("mpich-hosts", "127.0.0.2:2\n127.0.0.3:2 # the second\n127.0.0.4:2\n");
    let runs: [Vec<&str>; 3] = [
        vec!["--hostfile", open_mpi.to_str().unwrap()],
        vec!["-f", mpich.to_str().unwrap()],
        vec!["--host", "127.0.0.2:2,127.0.0.3:2,127.0.0.4:2"],
    ];
    for how in runs {
        let mut args = how.clone();
        args.push(&ring);
        let out = run(across(&hosts, &args));
        ok(&out, &format!("{how:?}"));
        assert!(
            out.lines()
                .contains(&"Processor 0 received message \"P0P1P2P3P4P5\" from rank 5"),
            "{how:?}: {out:?}"
        );
    }
}

/// Each rank's line `RANK NODE LOCAL_RANK LOCAL_SIZE FOO PWD`, by rank.
fn places(out: &Finished) -> Vec<String> {
    let mut lines: Vec<String> = out.stdout.lines().map(String::from).collect();
    lines.sort_by_key(|l| l.split_whitespace().next().and_then(|r| r.parse::<usize>().ok()));
    lines
}

#[test]
fn nodes_come_from_the_hostfile_and_the_environment_and_directory_go_along() {
    let hosts = Hosts::start(3);
    let wdir = hosts.dir().display().to_string();
    let script = "echo $SPMD_RANK $SPMD_NODE $SPMD_LOCAL_RANK $SPMD_LOCAL_SIZE $FOO $(pwd)";
    let hostlist = "127.0.0.2:2,127.0.0.3:2,127.0.0.4:2";
    let by_slot = run(across(
        &hosts,
        &[
            "-H", hostlist, "-x", "FOO=bar", "--wdir", &wdir, "/bin/sh", "-c", script,
        ],
    ));
    ok(&by_slot, "by slot");
    let expect = |rows: [(usize, usize, usize); 6]| -> Vec<String> {
        rows.iter()
            .enumerate()
            .map(|(r, (node, local, size))| format!("{r} {node} {local} {size} bar {wdir}"))
            .collect()
    };
    // Every host has the same hostname: the nodes are the hostfile's.
    assert_eq!(
        places(&by_slot),
        expect([(0, 0, 2), (0, 1, 2), (1, 0, 2), (1, 1, 2), (2, 0, 2), (2, 1, 2)])
    );
    let by_node = run(across(
        &hosts,
        &[
            "-H", hostlist, "--map-by", "node", "-x", "FOO=bar", "--wdir", &wdir, "/bin/sh", "-c", script,
        ],
    ));
    ok(&by_node, "by node");
    assert_eq!(
        places(&by_node),
        expect([(0, 0, 2), (1, 0, 2), (2, 0, 2), (0, 1, 2), (1, 1, 2), (2, 1, 2)])
    );
    // This machine and two hosts: this machine's ranks start without ssh.
    let mixed = run(across(
        &hosts,
        &[
            "-H",
            "localhost:2,127.0.0.2:1,127.0.0.3:1",
            "-x",
            "FOO=bar",
            "--wdir",
            &wdir,
            "/bin/sh",
            "-c",
            script,
        ],
    ));
    ok(&mixed, "this machine and two hosts");
    assert_eq!(
        places(&mixed)[..4],
        [
            format!("0 0 0 2 bar {wdir}"),
            format!("1 0 1 2 bar {wdir}"),
            format!("2 1 0 1 bar {wdir}"),
            format!("3 2 0 1 bar {wdir}")
        ]
    );
}

/// This test process's `Cpus_allowed_list`.
fn our_cores() -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let line = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:"));
    line.expect("Cpus_allowed_list").trim().to_string()
}

#[test]
fn hosts_that_are_one_machine_share_its_cores() {
    let hosts = Hosts::start(2);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cores >= 2, "this test needs two cores");
    let script = "echo $SPMD_RANK $(grep Cpus_allowed_list /proc/self/status | cut -f2)";
    let allowed = |hostlist: &str| -> (Vec<String>, String) {
        let out = run(across(&hosts, &["-v", "-H", hostlist, "/bin/sh", "-c", script]));
        ok(&out, hostlist);
        let rows = places(&out)
            .iter()
            .map(|l| l.split_once(' ').expect("rank and cores").1.to_string())
            .collect();
        (rows, out.stderr)
    };
    // Two hosts, one rank each: they are this machine, whose two cores
    // they share, one each (not both the first core of "their" host).
    let (bound, said) = allowed("127.0.0.2:1,127.0.0.3:1");
    assert_eq!(bound.len(), 2);
    assert!(
        bound.iter().all(|c| c.parse::<usize>().is_ok()),
        "one core each: {bound:?}"
    );
    assert_ne!(bound[0], bound[1], "{bound:?}");
    assert!(
        said.contains(&format!(
            "2 ranks on {cores} cores of its machine, shared by 2 nodes of the job: its ranks spin"
        )),
        "{said}"
    );
    // More ranks than the machine has cores, though each host has only
    // as many as it has cores: none bound, and they yield.
    let over = format!("127.0.0.2:{cores},127.0.0.3:{cores}");
    let (free, said) = allowed(&over);
    assert_eq!(free, vec![our_cores(); 2 * cores]);
    let total = 2 * cores;
    assert!(
        said.contains(&format!(
            "{total} ranks on {cores} cores of its machine, shared by 2 nodes of the job: its ranks yield"
        )),
        "{said}"
    );
}

#[test]
fn every_suite_runs_across_three_hosts_on_every_communicator() {
    let hosts = Hosts::start(3);
    let check = example("spmd-check");
    let hostlist = "127.0.0.2:2,127.0.0.3:2,127.0.0.4:2";
    let suites: [&[&str]; 5] = [
        &["p2p"],
        &["collectives", "7", "60"],
        &["immediate", "5", "30"],
        &["timeouts"],
        &["sizes"],
    ];
    // Shared memory within each host and TCP between them (the default),
    // on the world and on communicators made from it; or TCP between
    // every pair (the suites over TCP alone run on one machine too).
    let every_communicator: &[&str] = &["world", "split", "subset"];
    for (transport, ons) in [("shm", every_communicator), ("tcp", &["world"][..])] {
        for &on in ons {
            for args in suites {
                let mut all = vec!["-H", hostlist, "--timeout", "150", &check];
                all.extend_from_slice(args);
                let mut cmd = across(&hosts, &all);
                cmd.env("SPMD_CHECK_ON", on).env("SPMD_TRANSPORT", transport);
                let out = run(cmd);
                ok(&out, &format!("{args:?} on {on} over {transport}"));
                let passed = format!("{}: all checks passed", args[0]);
                assert!(
                    out.stdout.contains(&passed),
                    "{args:?} on {on} over {transport}: {out:?}"
                );
            }
        }
        let mut cmd = across(&hosts, &["-H", hostlist, "--timeout", "150", &check, "comms", "2000"]);
        cmd.env("SPMD_TRANSPORT", transport);
        let out = run(cmd);
        ok(&out, &format!("comms over {transport}"));
        assert!(out.stdout.contains("comms: all checks passed on 6 ranks"), "{out:?}");
    }
    // Ranks placed round the hosts: no host holds a block of consecutive
    // ranks, so the collectives in two levels (within each host, then
    // among one rank per host) keep rank order only for operators that
    // commute; the others go flat.
    for on in ["world", "split"] {
        let args = [
            "-H",
            hostlist,
            "--map-by",
            "node",
            "--timeout",
            "150",
            &check,
            "collectives",
            "7",
            "60",
        ];
        let mut cmd = across(&hosts, &args);
        cmd.env("SPMD_CHECK_ON", on);
        let out = run(cmd);
        ok(&out, &format!("collectives by node on {on}"));
        assert!(
            out.stdout.contains("collectives: all checks passed"),
            "by node on {on}: {out:?}"
        );
    }
}

#[test]
fn deadlocks_hangs_and_stopped_ranks_on_other_hosts_are_named() {
    let hosts = Hosts::start(2);
    let deadlock = example("deadlock");
    // A cycle through this machine and two hosts: each agent reports its
    // ranks' status pages, so the cycle is found and named.
    let three = "localhost:1,127.0.0.2:1,127.0.0.3:1";
    let out = run(across(&hosts, &["-H", three, "--hang-report", "1", &deadlock]));
    assert_eq!(out.code(), Some(125), "{out:?}");
    assert!(out.stderr.contains("spmdrun: deadlock: "), "{out:?}");
    for r in 0..3 {
        let wait = format!("rank {r} waits receive(from rank {}, tag 7)", (r + 1) % 3);
        assert!(out.stderr.contains(&wait), "{wait}: {out:?}");
    }
    // --timeout says what the remote ranks wait on.
    let out = run(across(
        &hosts,
        &["-H", three, "--hang-report", "0", "--timeout", "3", &deadlock],
    ));
    assert_eq!(out.code(), Some(124), "{out:?}");
    assert!(
        out.stderr
            .contains("on host 127.0.0.3) waits receive(from rank 0, tag 7) for"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("has not reported"), "{out:?}");
    // A stopped rank on another host holds the verdict off until it goes
    // on, and is named as stopped.
    let check = example("spmd-check");
    let agent = hosts.launch_agent();
    let args = [
        "--launch-agent",
        &agent,
        "-H",
        "localhost:1,127.0.0.2:2",
        "--hang-report",
        "1",
        &check,
        "fail",
        "idle",
    ];
    let (child, pids, reader) = start_reporting_pids(&args, 3);
    signal(pids[2], Signal::SIGSTOP);
    std::thread::sleep(std::time::Duration::from_secs(3));
    signal(pids[2], Signal::SIGCONT);
    let out = finish_reporting(child, reader);
    assert_eq!(out.code(), Some(125), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("rank 2 (pid {} on host 127.0.0.2", pids[2]))
            && out.stderr.contains("is stopped"),
        "{out:?}"
    );
    assert_all_gone(&pids);
}

/// Runs `cmd` with `feed` writing its stdin (from a thread, so that an
/// endless feed ends when spmdrun closes its end).
fn with_input(
    mut cmd: std::process::Command,
    feed: impl FnOnce(std::process::ChildStdin) + Send + 'static,
) -> Finished {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spmdrun starts");
    let stdin = child.stdin.take().expect("stdin is piped");
    std::thread::spawn(move || feed(stdin));
    common::finish(child)
}

/// Writes the same line until the reader goes.
fn endless(mut to: std::process::ChildStdin) {
    use std::io::Write;
    while to.write_all(b"more and more input\n").is_ok() {}
}

#[test]
fn standard_input_reaches_rank_0_on_another_host_whole_and_bounded() {
    use std::io::Write;
    let hosts = Hosts::start(2);
    let hostlist = "127.0.0.2:1,127.0.0.3:1,localhost:1";
    // 5 MiB (more than spmdrun sends ahead of the rank), read slowly at
    // first: every byte arrives, in order, at rank 0 only.
    let data: Vec<u8> = (0..5u32 << 20).map(|i| (i % 251) as u8).collect();
    let path = hosts.file("input", "");
    std::fs::write(&path, &data).expect("writing the input");
    let expected = std::process::Command::new("md5sum")
        .arg(&path)
        .output()
        .expect("md5sum runs");
    let expected = String::from_utf8_lossy(&expected.stdout);
    let expected = expected.split_whitespace().next().unwrap_or_default();
    let script = "if [ $SPMD_RANK = 0 ]; then sleep 1; echo 0 $(md5sum); else echo $SPMD_RANK $(wc -c); fi";
    let feed = data.clone();
    let out = with_input(
        across(&hosts, &["-H", hostlist, "/bin/sh", "-c", script]),
        move |mut to| {
            let _ = to.write_all(&feed);
        },
    );
    ok(&out, "5 MiB to rank 0");
    let mut lines = out.lines();
    lines.sort();
    let rank0 = format!("0 {expected} -");
    assert_eq!(
        lines,
        [rank0.as_str(), "1 0", "2 0"],
        "rank 0 has every byte in order: {out:?}"
    );
    // Endless input: a rank 0 that takes some and exits, and one that
    // takes none, each end the job at once.
    let script = "if [ $SPMD_RANK = 0 ]; then head -c 100000 | wc -c; fi";
    let out = with_input(across(&hosts, &["-H", hostlist, "/bin/sh", "-c", script]), endless);
    ok(&out, "rank 0 takes 100000 bytes of endless input");
    assert_eq!(out.stdout.trim(), "100000", "{out:?}");
    // A rank 0 that takes none, and one that closes its stdin and goes
    // on: spmdrun reads only a bounded amount ahead of it (1 MiB, plus
    // what the pipes on the way hold), and none once it is closed.
    for takes in ["sleep 2", "exec 0<&-; sleep 2"] {
        let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = written.clone();
        let script = format!("if [ $SPMD_RANK = 0 ]; then {takes}; fi; echo done");
        let out = with_input(
            across(&hosts, &["-H", hostlist, "/bin/sh", "-c", &script]),
            move |mut to| {
                while to.write_all(&[b'x'; 4096]).is_ok() {
                    count.fetch_add(4096, std::sync::atomic::Ordering::Relaxed);
                }
            },
        );
        ok(&out, takes);
        assert_eq!(out.lines(), ["done"; 3], "{out:?}");
        let written = written.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            written < 2 << 20,
            "{takes}: spmdrun took {written} bytes ahead of rank 0"
        );
    }
    // No input at all: rank 0 sees its end.
    let out = run(across(
        &hosts,
        &["-H", hostlist, "/bin/sh", "-c", "echo $SPMD_RANK $(wc -c)"],
    ));
    ok(&out, "no input");
    let mut lines = out.lines();
    lines.sort();
    assert_eq!(lines, ["0 0", "1 0", "2 0"], "{out:?}");
}

#[test]
fn preflight_names_every_host_that_cannot_run_the_job_and_starts_no_rank() {
    let hosts = Hosts::start(2);
    let check = example("spmd-check");
    // 127.0.0.9 has no sshd.
    let started = Instant::now();
    let out = run(across(&hosts, &["-H", "127.0.0.2,127.0.0.9,127.0.0.3", &check, "p2p"]));
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("1 of 3 hosts failed")
            && out.stderr.contains("host 127.0.0.9")
            && out.stderr.contains("Connection refused"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("host 127.0.0.2 ("), "{out:?}");
    assert!(out.stdout.is_empty(), "no rank started: {out:?}");
    eprintln!("a host refusing ssh was reported in {:?}", started.elapsed());
    // A program that no host has.
    let out = run(across(&hosts, &["-H", "127.0.0.2,127.0.0.3", "/no/such/program"]));
    assert_eq!(out.code(), Some(1), "{out:?}");
    for host in ["127.0.0.2", "127.0.0.3"] {
        assert!(
            out.stderr.contains(&format!("host {host} (--host entry"))
                && out.stderr.contains("/no/such/program: no such file"),
            "{out:?}"
        );
    }
    // A key the hosts do not take, and hosts whose keys are unknown.
    for (agent, why) in [
        (hosts.launch_agent_with_unknown_key(), "Permission denied"),
        (hosts.launch_agent_knowing_no_host(), "Host key verification failed"),
    ] {
        let out = run(spmdrun(&[
            "--launch-agent",
            &agent,
            "-H",
            "127.0.0.2,127.0.0.3",
            &check,
            "p2p",
        ]));
        assert_eq!(out.code(), Some(1), "{out:?}");
        assert!(
            out.stderr.contains("2 of 2 hosts failed") && out.stderr.contains(why),
            "{why}: {out:?}"
        );
    }
    // More ranks than the hosts' slots.
    let out = run(across(
        &hosts,
        &["-n", "5", "-H", "127.0.0.2:2,127.0.0.3:2", &check, "p2p"],
    ));
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("-n 5 is more ranks than the 4 slots"), "{out:?}");
}

/// The pid of a process's parent.
fn parent(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process is there");
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .expect("a parent pid")
}

/// Starts 4 idle ranks on 2 hosts; returns the job, the ranks' pids and
/// the pids of the two agents (the ranks' parents).
fn idle_job(
    hosts: &Hosts,
) -> (
    std::process::Child,
    Vec<i32>,
    Vec<i32>,
    std::io::BufReader<std::process::ChildStdout>,
) {
    let check = example("spmd-check");
    let agent = hosts.launch_agent();
    let (child, pids, reader) = start_reporting_pids(
        &[
            "--launch-agent",
            &agent,
            "-H",
            "127.0.0.2:2,127.0.0.3:2",
            &check,
            "fail",
            "idle",
        ],
        4,
    );
    let agents = vec![parent(pids[0]), parent(pids[2])];
    assert_ne!(agents[0], agents[1], "each host has its own agent");
    assert_ne!(
        agents[0],
        child.id() as i32,
        "the ranks are the agents' children, not spmdrun's"
    );
    (child, pids, agents, reader)
}

#[test]
fn a_remote_rank_killed_ends_the_job_everywhere() {
    let hosts = Hosts::start(2);
    let (child, pids, agents, reader) = idle_job(&hosts);
    let killed = Instant::now();
    signal(pids[3], Signal::SIGKILL);
    let out = finish_reporting(child, reader);
    eprintln!("a remote rank's kill ended the job in {:?}", killed.elapsed());
    assert_eq!(out.code(), Some(137), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "rank 3 (pid {} on host 127.0.0.3) was killed by signal 9",
            pids[3]
        )),
        "{out:?}"
    );
    assert_all_gone(&pids);
    assert_all_gone(&agents);
}

#[test]
fn a_remote_agent_killed_ends_the_job_everywhere() {
    let hosts = Hosts::start(2);
    let (child, pids, agents, reader) = idle_job(&hosts);
    let killed = Instant::now();
    signal(agents[0], Signal::SIGKILL);
    let out = finish_reporting(child, reader);
    eprintln!("a remote agent's kill ended the job in {:?}", killed.elapsed());
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("the agent on host 127.0.0.2 (--host entry 1")
            && out.stderr.contains("ranks 0, 1 lost with it"),
        "{out:?}"
    );
    assert_all_gone(&pids);
    assert_all_gone(&agents);
}

/// How many shared-memory segments (distinct files) a process has mapped.
fn segments_mapped(pid: i32) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("the rank's maps");
    let mut inodes: Vec<&str> = maps
        .lines()
        .filter(|l| l.contains("memfd:spmd-segment"))
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    inodes.sort();
    inodes.dedup();
    inodes.len()
}

#[test]
fn sigterm_to_spmdrun_ends_the_ranks_on_every_host() {
    let hosts = Hosts::start(2);
    let (child, pids, agents, reader) = idle_job(&hosts);
    // Each rank shares memory with the other rank of its host (its own
    // segment and its node peer's), and with nobody else.
    for &pid in &pids {
        assert_eq!(segments_mapped(pid), 2, "rank pid {pid}");
    }
    // Blocked in a receive that both its host's peer and the other host's
    // ranks could answer, each sleeps.
    let before: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    std::thread::sleep(std::time::Duration::from_secs(2));
    for (rank, (pid, before)) in pids.iter().zip(before).enumerate() {
        let used = cpu_seconds(*pid) - before;
        assert!(
            used < 0.2,
            "rank {rank} used {used} CPU-seconds in 2 s while blocked in a receive"
        );
    }
    signal(child.id() as i32, Signal::SIGTERM);
    let out = finish_reporting(child, reader);
    assert_eq!(out.code(), Some(143), "{out:?}");
    assert!(out.stderr.contains("received SIGTERM; ending the job"), "{out:?}");
    assert_all_gone(&pids);
    assert_all_gone(&agents);
}
