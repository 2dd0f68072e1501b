//! spmdrun's hang and deadlock reports, read from the ranks' status pages:
//! a deadlock is named with its cycle and ends the job (status 125); a
//! rank that computes, is stopped, or has not joined is named as that and
//! is no deadlock; `--timeout` says what every rank was doing.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{TRANSPORTS, example, finish, finish_reporting, run, signal, spmdrun, spmdrun_over, start_reporting_pids};
use nix::sys::signal::Signal;

/// Runs spmdrun with `--hang-report 1` and `args` in every mode, and
/// checks each mode's outcome.
fn each_mode(args: &[&str], mut check: impl FnMut(&str, &common::Finished)) {
    for mode in common::MODES {
        let out = run(common::spmdrun_in(mode, &[&["--hang-report", "1"], args].concat()));
        check(&common::mode_name(mode), &out);
    }
}

#[test]
fn a_deadlock_is_named_with_its_cycle_and_ends_the_job() {
    each_mode(&["-n", "2", &example("deadlock")], |transport, out| {
        assert_eq!(out.code(), Some(125), "{transport}: {out:?}");
        assert!(
            out.stderr.contains(
                "spmdrun: deadlock: rank 0 waits receive(from rank 1, tag 7) <- rank 1 waits receive(from rank 0, tag 7); \
                 ending the job"
            ),
            "{transport}: {out:?}"
        );
    });
    each_mode(&["-n", "3", &example("deadlock")], |transport, out| {
        assert_eq!(out.code(), Some(125), "{transport}: {out:?}");
        assert!(
            out.stderr.contains("<- rank 2 waits receive(from rank 0, tag 7)"),
            "{out:?}"
        );
    });
}

/// A deadlock among ranks after another has finalized, with a message
/// that reached it during its finalize (never received): its status page
/// counts that message, so the job's totals match and the deadlock ends
/// the job. (Before, the page kept the counts from the start of its
/// finalize, and spmdrun waited until `--timeout`.)
#[test]
fn a_deadlock_after_another_rank_finalized_ends_the_job() {
    let args = [
        "-n",
        "3",
        "--timeout",
        "20",
        &example("spmd-check"),
        "deadlock-after-finalize",
    ];
    each_mode(&args, |transport, out| {
        assert_eq!(out.code(), Some(125), "{transport}: {out:?}");
        assert!(
            out.stderr.contains(
                "spmdrun: deadlock: rank 1 waits receive(from rank 2, tag 7) <- rank 2 waits receive(from rank 1, tag 7)"
            ),
            "{transport}: {out:?}"
        );
        assert!(
            out.stderr.contains("never received"),
            "{transport}: rank 0's report: {out:?}"
        );
    });
}

/// A send held back because its receiver keeps all it may from the sender
/// and waits on another rank: the hang report names every wait, the send
/// included, and `--timeout` ends the job (messages in flight are no proof
/// of a deadlock, so the job is not ended as one).
#[test]
fn a_send_held_back_by_a_full_queue_is_named_in_the_hang_report() {
    let args = [
        "-n",
        "3",
        "--timeout",
        "8",
        &example("spmd-check"),
        "full-queue",
        "cycle",
    ];
    each_mode(&args, |transport, out| {
        assert_eq!(out.code(), Some(124), "{transport}: {out:?}");
        let report = out.stderr.split("--timeout").next().unwrap_or_default().to_string();
        assert!(
            report.contains("ranks have been blocked inside spmd for 1 s or more"),
            "{transport}: {out:?}"
        );
        assert!(
            report.contains("rank 0 (pid") && report.contains("waits send(to rank 1, which is not reading)"),
            "{transport}: {out:?}"
        );
        assert!(
            report.contains("waits receive(from rank 2, tag 2)"),
            "{transport}: {out:?}"
        );
        assert!(!out.stderr.contains("deadlock"), "{transport}: {out:?}");
    });
}

#[test]
fn a_rank_computing_outside_spmd_is_named_and_is_no_deadlock() {
    for transport in TRANSPORTS {
        let out = run(spmdrun_over(
            transport,
            &["-n", "3", "--hang-report", "1", &example("slow"), "3"],
        ));
        assert_eq!(out.code(), Some(0), "{transport}: {out:?}");
        assert!(!out.stderr.contains("deadlock"), "{out:?}");
        let reports = out.stderr.matches("blocked inside spmd").count();
        assert_eq!(reports, 1, "one report for the episode: {out:?}");
        assert!(
            out.stderr.contains("is running outside any spmd wait (computing"),
            "{out:?}"
        );
        assert!(out.stderr.contains("waits broadcast (root 0)"), "{out:?}");
        assert!(out.stderr.contains("for rank 0 for"), "{out:?}");
    }
}

#[test]
fn a_stopped_rank_is_named_as_stopped_and_the_deadlock_waits_for_it() {
    let check = example("spmd-check");
    // Rank 1 computes for 5 s before it waits: no deadlock before the stop,
    // however late the stop comes.
    let args = ["-n", "3", "--hang-report", "1", &check, "fail", "idle-late"];
    let (mut child, pids, reader) = start_reporting_pids(&args, 3);
    signal(pids[1], Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().expect("waiting works").is_none(),
        "the job ended while a rank was stopped"
    );
    signal(pids[1], Signal::SIGCONT);
    let started = Instant::now();
    let out = finish_reporting(child, reader);
    assert_eq!(out.code(), Some(125), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("rank 1 (pid {} on vm) is stopped", pids[1]))
            || out.stderr.contains(&format!("rank 1 (pid {} on ", pids[1])) && out.stderr.contains("is stopped"),
        "{out:?}"
    );
    assert!(out.stderr.contains("spmdrun: deadlock:"), "{out:?}");
    common::assert_all_gone(&pids);
}

#[test]
fn timeout_names_a_rank_that_never_joined() {
    let check = example("spmd-check");
    let script = format!("if [ $SPMD_RANK = 1 ]; then sleep 30; fi; exec {check} fail idle");
    let out = run(spmdrun(&["-n", "2", "--timeout", "6", "sh", "-c", &script]));
    assert_eq!(out.code(), Some(124), "{out:?}");
    assert!(out.stderr.contains("--timeout"), "{out:?}");
    assert!(
        out.stderr.contains("rank 1 (pid") && out.stderr.contains("has not called spmd::init"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("rank 0 (pid") && out.stderr.contains("waiting for the other ranks to join"),
        "{out:?}"
    );
}

/// A rank that waits inside `init` for one that has not called it is a
/// blocked rank like any other: the hang report names both, long before
/// any `--timeout`.
/// Runs `sh -c script` on 2 ranks with hang reports after 1 s, ended by
/// `--timeout` after 8 s.
fn reported_for_8_s(script: &str) -> common::Finished {
    run(spmdrun(&[
        "-n",
        "2",
        "--hang-report",
        "1",
        "--timeout",
        "8",
        "sh",
        "-c",
        script,
    ]))
}

#[test]
fn a_hang_report_names_a_rank_that_never_joined() {
    let check = example("spmd-check");
    let script = format!("if [ $SPMD_RANK = 1 ]; then sleep 30; fi; exec {check} fail idle");
    let out = reported_for_8_s(&script);
    assert_eq!(out.code(), Some(124), "{out:?}");
    let report = out.stderr.split("--timeout").next().unwrap_or_default().to_string();
    assert!(
        report.contains("ranks have been blocked inside spmd for 1 s or more"),
        "{out:?}"
    );
    assert!(
        report.contains("rank 1 (pid") && report.contains("has not called spmd::init"),
        "{out:?}"
    );
    assert!(report.contains("waiting for the other ranks to join"), "{out:?}");
}

#[test]
fn on_deadlock_report_keeps_waiting_and_hang_report_0_says_nothing() {
    let deadlock = example("deadlock");
    let out = run(spmdrun(&[
        "-n",
        "2",
        "--hang-report",
        "1",
        "--on-deadlock",
        "report",
        "--timeout",
        "8",
        &deadlock,
    ]));
    assert_eq!(out.code(), Some(124), "{out:?}");
    assert!(out.stderr.contains("spmdrun: deadlock:"), "{out:?}");
    let out = run(spmdrun(&["-n", "2", "--hang-report", "0", "--timeout", "3", &deadlock]));
    assert_eq!(out.code(), Some(124), "{out:?}");
    assert!(
        !out.stderr.contains("deadlock:") && !out.stderr.contains("blocked inside"),
        "{out:?}"
    );
}

#[test]
fn a_rank_blocked_writing_to_a_slow_reader_is_not_a_deadlock() {
    // The ranks print more than the pipe holds while nobody reads
    // spmdrun's output for a while: they wait in `write`, not in spmd.
    let child = spmdrun(&[
        "-n",
        "2",
        "--hang-report",
        "1",
        "sh",
        "-c",
        "head -c 3000000 /dev/zero | tr '\\0' x",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spmdrun starts");
    std::thread::sleep(Duration::from_secs(3));
    let out = finish(child);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(!out.stderr.contains("deadlock"), "{}", out.stderr);
    assert_eq!(out.stdout.matches('x').count(), 6_000_000, "every byte");
}

/// A rank blocked writing its output while nobody reads spmdrun's is named
/// as that in the report of the rank waiting for it (not as computing),
/// with a line saying spmdrun's output is full, and the job ends well once
/// the output is read, with every byte; one blocked writing its standard
/// error into a pipe of its own is named as that.
#[test]
fn a_rank_blocked_writing_its_output_is_named_as_that() {
    let check = example("spmd-check");
    let (out, seen) = common::unread_until(
        spmdrun(&["-n", "2", "--hang-report", "1", &check, "blocked-output"]),
        "is blocked writing to its standard output",
    );
    assert!(seen, "{}", out.stderr);
    common::assert_blocked_output_ended_well(&out);
    common::assert_named_blocked_writing(&out, 0, "output");
    assert!(
        out.stderr.contains("spmdrun's own standard output is full"),
        "{}",
        out.stderr
    );
    // Its standard error into a pipe of its own, which nobody reads.
    let script = format!(
        "if [ $SPMD_RANK = 0 ]; then {check} blocked-output stderr 2>&1 >/dev/null | sleep 60; \
         else exec {check} blocked-output; fi"
    );
    let out = reported_for_8_s(&script);
    assert_eq!(out.code(), Some(124), "{out:?}");
    common::assert_named_blocked_writing(&out, 0, "error");
    assert!(!out.stderr.contains("own standard"), "{}", out.stderr);
}

/// A program that counts on a broadcast root never waiting (it sends the
/// others a message after each broadcast, which they receive before
/// theirs) deadlocks at the 64th call, which ends with a barrier: the
/// report names the root's wait in the broadcast and the others' receives.
#[test]
fn a_program_counting_on_a_root_running_ahead_is_named_as_a_deadlock() {
    // The timeout only keeps a missed deadlock from hanging the test.
    let args = [
        "-n",
        "3",
        "--timeout",
        "60",
        &example("spmd-check"),
        "run-ahead",
        "relied-on",
    ];
    each_mode(&args, |transport, out| {
        assert_eq!(out.code(), Some(125), "{transport}: {out:?}");
        assert!(
            out.stderr.contains(
                "spmdrun: deadlock: rank 0 waits broadcast (root 0) (collective call #64 of the world) for rank"
            ) && out.stderr.contains("waits receive(from rank 0, tag 0); ending the job"),
            "{transport}: {out:?}"
        );
    });
}
