//! Jobs across hosts that fail or are ended: each failure named, and no process of the job left on any host.

mod common;

use std::time::Instant;

use common::hosts::{Hosts, across};
use common::{
    assert_all_gone, cpu_seconds, example, finish_reporting, left_child, run, signal, spmdrun, start_reporting_pids,
};
use nix::sys::signal::Signal;

/// While nobody reads spmdrun's output, a report says so: a rank on
/// another host blocked writing its output waits, and so do its agent's
/// reports, which come behind that output. The job ends well once the
/// output is read. A rank blocked writing into a pipe of its own is named
/// as that by its agent.
#[test]
fn a_remote_rank_blocked_writing_its_output_is_explained() {
    let hosts = Hosts::start(1);
    let check = example("spmd-check");
    let args = [
        "-H",
        "127.0.0.2:1,localhost:1",
        "--hang-report",
        "1",
        &check,
        "blocked-output",
    ];
    let (out, seen) = common::unread_until(across(&hosts, &args), "spmdrun's own standard output is full");
    assert!(seen, "{}", out.stderr);
    common::assert_blocked_output_ended_well(&out);
    assert!(
        out.stderr.contains("rank 1 (pid ") && out.stderr.contains(") waits receive(from rank 0, tag 0)"),
        "{}",
        out.stderr
    );
    // Blocked writing into a pipe of its own, which nobody reads: its
    // agent's reports still come, and name it.
    let script =
        format!("if [ $SPMD_RANK = 0 ]; then {check} blocked-output | sleep 60; else exec {check} blocked-output; fi");
    let args = ["-H", "127.0.0.2:1,localhost:1", "--hang-report", "1", "--timeout", "10"];
    let out = run(across(&hosts, &[&args[..], &["sh", "-c", &script]].concat()));
    assert_eq!(out.code(), Some(124), "{out:?}");
    common::assert_named_blocked_writing(&out, 0, "output");
    assert!(
        out.stderr.contains("on host 127.0.0.2) is blocked writing"),
        "{}",
        out.stderr
    );
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
        &["-H", three, "--hang-report", "0", "--timeout", "10", &deadlock],
    ));
    assert_eq!(out.code(), Some(124), "{out:?}");
    assert!(
        out.stderr
            .contains("on host 127.0.0.3) waits receive(from rank 0, tag 7) for"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("has not reported"), "{out:?}");
    // Rank 0, on another host, finalizes with a message it never received,
    // then ranks 1 and 2, here, wait on each other: its agent forwards its
    // page as it ended (the counts of its finalize), so the job's totals
    // match and the deadlock is found.
    let check = example("spmd-check");
    let after = ["-H", "127.0.0.2:1,localhost:2", "--hang-report", "1", "--timeout", "20"];
    let out = run(across(
        &hosts,
        &[&after[..], &[&check, "deadlock-after-finalize"]].concat(),
    ));
    assert_eq!(out.code(), Some(125), "{out:?}");
    assert!(
        out.stderr.contains(
            "spmdrun: deadlock: rank 1 waits receive(from rank 2, tag 7) <- rank 2 waits receive(from rank 1, tag 7)"
        ),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("rank 0 finalized with 1 message(s) it never received (from rank 1 with tag 5)"),
        "rank 0's report, from the other host: {out:?}"
    );
    // A stopped rank on another host holds the verdict off until it goes
    // on, and is named as stopped.
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
        "idle-late",
    ];
    let (child, pids, reader) = start_reporting_pids(&args, 3);
    // Rank 1 computes for 5 s before it waits: no deadlock before the stop.
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

/// Starts `spmd-check fail HOW` on 4 ranks on 2 hosts (the last rank
/// fails); returns the job, the ranks' pids and its output so far.
fn two_host_job(hosts: &Hosts, how: &str) -> (std::process::Child, Vec<i32>, common::JobOutput) {
    let check = example("spmd-check");
    let agent = hosts.launch_agent();
    let args = [
        "--launch-agent",
        &agent,
        "-H",
        "127.0.0.2:2,127.0.0.3:2",
        &check,
        "fail",
        how,
    ];
    start_reporting_pids(&args, 4)
}

/// Starts 4 idle ranks on 2 hosts; returns the job, the ranks' pids and
/// the pids of the two agents (the ranks' parents).
fn idle_job(hosts: &Hosts) -> (std::process::Child, Vec<i32>, Vec<i32>, common::JobOutput) {
    let (child, pids, reader) = two_host_job(hosts, "idle");
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

/// A remote rank whose child holds its stdout and stderr open as it
/// exits: its agent reports the exit with its last words read, without
/// waiting for the pipes' end, and the child goes with the job.
#[test]
fn a_remote_rank_leaving_a_child_that_holds_its_output_ends_the_job() {
    let hosts = Hosts::start(2);
    let (child, pids, reader) = two_host_job(&hosts, "exit-leaving-child");
    let started = Instant::now();
    let out = finish_reporting(child, reader);
    eprintln!("the job ended {:?} after its ranks reported", started.elapsed());
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(
        out.stderr.contains("rank 3 (pid ")
            && out
                .stderr
                .contains("exited with code 3 (its last words on stderr: last words of rank 3)"),
        "{out:?}"
    );
    assert_all_gone(&pids);
    assert_all_gone(&[left_child(&out)]);
}

/// A remote rank that is no spmd program (it never calls `init`) and
/// leaves a child holding its pipes and its control channel: its agent has
/// no last words to wait for on the channel, and the job ends with its
/// status, the child with it.
#[test]
fn a_remote_plain_program_leaving_a_child_ends_the_job() {
    let hosts = Hosts::start(2);
    let agent = hosts.launch_agent();
    let script = "if [ $SPMD_RANK = 3 ]; then sleep 30 & echo child $!; exit 3; fi; sleep 30";
    let started = Instant::now();
    let out = run(spmdrun(&[
        "--launch-agent",
        &agent,
        "-H",
        "127.0.0.2:2,127.0.0.3:2",
        "sh",
        "-c",
        script,
    ]));
    eprintln!("the job ended {:?} after it started", started.elapsed());
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(
        out.stderr.contains("rank 3 (pid ") && out.stderr.contains("exited with code 3"),
        "{out:?}"
    );
    assert_all_gone(&[left_child(&out)]);
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
