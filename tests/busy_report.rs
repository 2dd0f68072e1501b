//! A rank kept busy in a wait is named as waiting in the hang report. In a
//! file of its own, so that no other test of the workspace runs beside it
//! (cargo runs test files one after another): with the machine's cores
//! shared by other jobs, a rank that waits yields or sleeps between
//! messages (as it should), and the page says asleep, not busy.

mod common;

use common::example;

/// A rank kept busy in a wait by a steady stream of messages (faster than
/// its polling, so that it seldom if ever sleeps) is named as waiting in
/// the hang report, as busy where it polls; no deadlock, and the job ends
/// well. Before the page said so, such a rank read as computing outside
/// spmd.
#[test]
fn a_rank_kept_busy_in_a_wait_is_named_as_waiting() {
    for (on, wait) in [
        ("barrier", "waits barrier"),
        ("receive", "waits receive(from rank 1, tag 7)"),
    ] {
        let mut busy_seen = Vec::new();
        let args = [
            "--hang-report",
            "1",
            "-n",
            "2",
            &example("spmd-check"),
            "hang",
            "busy-wait",
            on,
        ];
        for mode in common::MODES {
            let out = common::run(common::spmdrun_in(mode, &args));
            let mode = common::mode_name(mode);
            assert_eq!(out.code(), Some(0), "{on}, {mode}: {out:?}");
            assert!(!out.stderr.contains("deadlock"), "{on}, {mode}: {out:?}");
            let line = out.stderr.lines().find(|l| l.contains("rank 0 (pid"));
            assert!(
                line.is_some_and(|l| l.contains(wait)),
                "{on}, {mode}: rank 0 not named as waiting: {out:?}"
            );
            if line.is_some_and(|l| l.contains("(not asleep: messages keep moving through it)")) {
                busy_seen.push(mode.to_string());
            }
        }
        // A wait that polls may still sleep now and then on a busy
        // machine, and the page then says asleep; not in every mode.
        assert!(!busy_seen.is_empty(), "{on}: no mode named rank 0 as busy");
    }
}
