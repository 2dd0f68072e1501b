//! Jobs across hosts: spmdrun reaches 127.0.0.2, 127.0.0.3 and 127.0.0.4
//! through real ssh to a real sshd on each (see `common::hosts`), starts
//! an agent there, and runs the ranks over TCP. The ring, every suite and
//! communicators across 3 hosts; both hostfile formats, `--host`,
//! `--map-by node`, `-x` and `--wdir` forwarded; hosts that are one
//! machine sharing its cores; standard input to rank 0 on another host.
//! (How such jobs fail and end is in multi_host_failures.rs.)

mod common;

use common::hosts::{Hosts, across};
use common::{Finished, example, run};

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
