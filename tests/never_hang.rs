//! Situations that used to hang end with a result or an error on every
//! rank, over every transport and wait mode: errors and panics inside a
//! scope, peers that finalize early, ranks that disagree about a
//! collective, wrong buffers on one rank, elements larger than a window,
//! waits on a peer whose unreceived messages fill the queue.

mod common;

use common::{MODES, example, run, spmdrun_in};

/// Runs `spmd-check ARGS` (`hang CASE [ARG]` and the like) on `n` ranks
/// in every mode and checks each mode's outcome.
fn each_mode(n: usize, case: &[&str], check: impl Fn(&str, &common::Finished)) {
    for mode in MODES {
        let ns = n.to_string();
        let mut args = vec!["-n", &ns, "--timeout", "60", "--hang-report", "20"];
        let check_program = example("spmd-check");
        args.push(&check_program);
        args.extend_from_slice(case);
        let out = run(spmdrun_in(mode, &args));
        check(&common::mode_name(mode), &out);
    }
}

fn passes(n: usize, case: &str) {
    each_mode(n, &["hang", case], |mode, out| {
        assert_eq!(out.code(), Some(0), "{case}, {mode}: {out:?}");
        assert!(
            out.stdout.contains(&format!("hang {case}: all checks passed")),
            "{case}, {mode}: {out:?}"
        );
    });
}

#[test]
fn an_error_inside_a_scope_does_not_wait_and_loses_nothing() {
    passes(3, "scope-error");
}

#[test]
fn a_panic_inside_a_scope_ends_the_job_instead_of_hanging() {
    each_mode(3, &["hang", "scope-panic"], |mode, out| {
        assert_eq!(out.code(), Some(101), "{mode}: {out:?}");
        assert!(
            out.stderr.contains("rank 2 (pid") && out.stderr.contains("panicked: deliberate panic inside a scope"),
            "{mode}: {out:?}"
        );
    });
}

#[test]
fn a_send_to_a_rank_that_finalized_is_peer_gone() {
    for case in ["send-to-finalized", "small-to-finalized"] {
        // Small enough for the ring's free room or a fastbox: what went
        // through before rank 1 was gone did not vanish there, its finalize
        // names it.
        each_mode(2, &["hang", case], |mode, out| {
            assert_eq!(out.code(), Some(0), "{case}, {mode}: {out:?}");
            assert!(
                out.stdout.contains(&format!("hang {case}: all checks passed")),
                "{case}, {mode}: {out:?}"
            );
            let sent: usize = out
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix("rank 0 sent ")?.split(' ').next()?.parse().ok())
                .unwrap_or_else(|| panic!("{case}, {mode}: how many were sent: {out:?}"));
            let named = format!("rank 1 finalized with {sent} message(s) it never received");
            assert!(
                sent == 0 || out.stderr.contains(&named),
                "{case}, {mode}: {named:?}: {out:?}"
            );
        });
    }
}

#[test]
fn ranks_that_finalize_with_unread_messages_both_finish() {
    each_mode(3, &["hang", "finalize-unread"], |mode, out| {
        assert_eq!(out.code(), Some(0), "{mode}: {out:?}");
        assert!(out.stdout.contains("all checks passed"), "{mode}: {out:?}");
        // Each rank sent one message to the next and nobody received it:
        // each is accounted for, by its receiver (it arrived, and was never
        // received) or by its sender (it could not be delivered).
        for sender in 0..3 {
            let receiver = (sender + 1) % 3;
            let by_receiver = out.stderr.lines().any(|l| {
                l.contains(&format!("rank {receiver} finalized with"))
                    && l.contains(&format!("from rank {sender} with tag 8"))
            });
            let by_sender = out.stderr.contains(&format!("rank {sender}: finalize failed"));
            assert!(by_receiver || by_sender, "{mode}: rank {sender}'s message: {out:?}");
        }
    });
}

#[test]
fn a_rank_that_streams_at_a_finalizing_rank_does_not_keep_it() {
    for case in ["stream-at-finalized", "immediate-at-finalized", "offers-at-finalized"] {
        at_a_finalizing_rank(case);
    }
}

/// Runs a case where rank 0 streams messages of 64 KiB (or 512 KiB) at
/// rank 1 while rank 1 finalizes, and checks that every one is accounted
/// for.
fn at_a_finalizing_rank(case: &str) {
    each_mode(2, &["hang", case], |mode, out| {
        assert_eq!(out.code(), Some(0), "{case}, {mode}: {out:?}");
        assert!(out.stdout.contains("all checks passed"), "{case}, {mode}: {out:?}");
        // Every message whose send succeeded is reported by rank 1, none
        // dropped: those it kept (up to its queue bound, 8 MiB from one
        // peer: 128 messages of 64 KiB) and those still in the link when it
        // closed, which it counts without keeping. Rank 0's next send
        // failed, so the stream ended within the bound and a link's worth.
        let number_after = |text: &str, marker: &str| {
            text.split(marker)
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse::<usize>().ok())
        };
        let reported = number_after(&out.stderr, "rank 1 finalized with ");
        let sent = number_after(&out.stdout, "rank 0 sent ");
        match (sent, reported) {
            (Some(s), Some(r)) => {
                assert_eq!(
                    s, r,
                    "{case}, {mode}: rank 0 sent {s} messages, rank 1 reported {r}: {out:?}"
                );
                assert!(r <= 256, "{case}, {mode}: rank 1 took {r} messages: {out:?}");
            }
            _ => panic!("{case}, {mode}: no count sent or reported: {out:?}"),
        }
    });
}

/// The last rank to finalize, after its peers have read its silence for
/// long enough and closed, finalizes at once (over shared memory it used to
/// sleep for ever: its goodbyes were dropped for peers that had gone, and
/// it waited for a byte to move).
#[test]
fn the_last_rank_to_finalize_finishes() {
    passes(3, "last-to-finalize");
}

#[test]
fn a_barrier_that_only_some_ranks_call_is_peer_gone() {
    passes(4, "partial-barrier");
}

/// The flooders never stop until rank 0 has noticed the rank that left:
/// a wait that only looked for leaves when nothing arrived would hang.
#[test]
fn a_rank_flooded_in_a_barrier_notices_a_rank_that_left() {
    passes(4, "flooded-barrier");
}

#[test]
fn wrong_buffers_on_one_rank_are_an_error_on_every_rank() {
    for which in ["alltoall", "scatter", "gather"] {
        each_mode(3, &["hang", "wrong-buffers", which], |mode, out| {
            assert_eq!(out.code(), Some(0), "{which}, {mode}: {out:?}");
            assert!(out.stdout.contains("all checks passed"), "{which}, {mode}: {out:?}");
        });
    }
}

#[test]
fn elements_larger_than_a_window_piece_do_not_loop() {
    passes(2, "big-element");
}

/// Serde values of different types in one collective: every rank gets an
/// error saying the ranks disagree (not a decode error about a message it
/// could receive again), and later collectives fail too.
#[test]
fn values_of_different_types_in_a_collective_are_a_mismatch() {
    passes(3, "serde-types");
}

/// Every mismatch case, on 2 and 4 ranks: each rank says it failed.
fn mismatches(n: usize) {
    // Kept in step with `mismatch_cases` in tests/programs/check/hangs.rs.
    let cases = 66;
    for case in 0..cases {
        let c = case.to_string();
        each_mode(n, &["hang", "mismatch", &c], |mode, out| {
            let failed = out.stdout.lines().filter(|l| l.contains(" failed: ")).count();
            assert!(
                out.code() == Some(0) && failed == n,
                "mismatch case {case}, {mode}: {failed} of {n} ranks said they failed: {out:?}"
            );
        });
    }
    // One past the last case must not exist, so the count above is right.
    let out = run(spmdrun_in(
        MODES[0],
        &[
            "-n",
            "1",
            &example("spmd-check"),
            "hang",
            "mismatch",
            &cases.to_string(),
        ],
    ));
    assert_ne!(
        out.code(),
        Some(0),
        "there are more than {cases} mismatch cases: {out:?}"
    );
}

#[test]
fn ranks_that_call_different_collectives_all_get_an_error_2_ranks() {
    mismatches(2);
}

#[test]
fn ranks_that_call_different_collectives_all_get_an_error_4_ranks() {
    mismatches(4);
}

/// A rank keeps at most 8 MiB of unreceived messages from a peer before it
/// stops reading that peer; every way of waiting for the peer still reads
/// it: a send that waits on a rank that also sends, a receive whose
/// message arrives in pieces, a probe (waiting or polled), finalize.
#[test]
fn a_full_queue_never_stops_a_wait_for_that_peer() {
    for case in ["shift", "landing", "probe", "try-probe", "finalize"] {
        each_mode(3, &["full-queue", case], |mode, out| {
            assert_eq!(out.code(), Some(0), "{case}, {mode}: {out:?}");
            assert!(
                out.stdout.contains(&format!("full-queue {case}: all checks passed")),
                "{case}, {mode}: {out:?}"
            );
        });
    }
}
