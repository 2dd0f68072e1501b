//! A rank kept busy in a wait is named as waiting in the hang report, with
//! messages moving through it, and is asleep again (in a deadlock) once
//! they stop; in every transport and wait mode.

mod common;

use common::{Finished, example};

/// Runs `spmd-check hang busy-wait on` on 2 ranks, with hang reports after
/// a second, in `mode`.
fn busy_wait(mode: (&str, &str), on: &str) -> Finished {
    let check = example("spmd-check");
    let args = ["--hang-report", "1", "-n", "2", &check, "hang", "busy-wait", on];
    common::run(common::spmdrun_in(mode, &args))
}

/// A rank kept busy in a wait by a steady stream of messages is named as
/// waiting in the hang report, with `(messages keep moving through it)`:
/// whether it never sleeps (the stream comes faster than it polls) or
/// sleeps between messages (a wait mode that sleeps at once, or cores
/// shared with other jobs); in a barrier, a receive, and a wait on
/// requests (`wait_any`); no deadlock, and the job ends well. Before the
/// page said so, such a rank read as computing outside spmd, and then as
/// asleep whenever it had slept between two messages.
#[test]
fn a_rank_kept_busy_in_a_wait_is_named_as_waiting() {
    for (on, wait) in [
        ("barrier", "waits barrier"),
        ("receive", "waits receive(from rank 1, tag 7)"),
        ("any", "waits receive(from rank 1, tag 7)"),
    ] {
        for mode in common::MODES {
            let out = busy_wait(mode, on);
            let mode = common::mode_name(mode);
            assert_eq!(out.code(), Some(0), "{on}, {mode}: {out:?}");
            assert!(!out.stderr.contains("deadlock"), "{on}, {mode}: {out:?}");
            let line = out.stderr.lines().find(|l| l.contains("rank 0 (pid"));
            assert!(
                line.is_some_and(|l| l.contains(wait) && l.contains("(messages keep moving through it)")),
                "{on}, {mode}: rank 0 not named as waiting with messages moving: {out:?}"
            );
        }
    }
}

/// A rank that waits while a stream moves through it, and whose wait goes
/// on after the stream ends, in a deadlock: named as busy while it lasts,
/// then the deadlock is found, named with its cycle, and ends the job;
/// in a blocking receive and in a wait on a request (`wait_any`), which
/// is named after the receive it waits for.
#[test]
fn a_deadlock_after_a_busy_wait_is_found() {
    let verdict =
        "spmdrun: deadlock: rank 0 waits receive(from rank 1, tag 7) <- rank 1 waits receive(from rank 0, tag 7)";
    for on in ["deadlock", "any-deadlock"] {
        for mode in common::MODES {
            let out = busy_wait(mode, on);
            let mode = common::mode_name(mode);
            assert_eq!(out.code(), Some(125), "{on}, {mode}: {out:?}");
            let report = out.stderr.find("(messages keep moving through it)");
            let deadlock = out.stderr.find(verdict);
            assert!(
                report.zip(deadlock).is_some_and(|(r, d)| r < d),
                "{on}, {mode}: no busy report before the deadlock: {out:?}"
            );
        }
    }
}

/// A wait on requests that are not one receive's (two tags) is named as a
/// receive from any rank with any tag; its deadlock after the stream is
/// found and ends the job, without a cycle.
#[test]
fn a_deadlock_in_a_wait_on_mixed_requests_is_found_without_a_cycle() {
    let verdict = "spmdrun: deadlock: every rank still running is blocked inside spmd and no message is in flight";
    for mode in common::MODES {
        let out = busy_wait(mode, "mixed-deadlock");
        let mode = common::mode_name(mode);
        assert_eq!(out.code(), Some(125), "{mode}: {out:?}");
        assert!(out.stderr.contains(verdict), "{mode}: {out:?}");
        assert!(
            out.stderr.contains("waits receive(from any rank, any tag)"),
            "{mode}: {out:?}"
        );
    }
}
