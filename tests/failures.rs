//! A failing rank ends the whole job: the right message, the right exit
//! status, and no process of the job left alive (checked by pid).

mod common;

use common::{
    TRANSPORTS, assert_all_gone, example, finish_reporting, left_child, run, signal, start_reporting_pids,
    start_reporting_pids_with,
};
use nix::sys::signal::Signal;

/// Runs `spmd-check fail HOW` on `n` ranks, in which the last rank fails.
fn failing(n: usize, how: &str) -> (common::Finished, Vec<i32>) {
    failing_over("shm", n, how)
}

/// [`failing`] over `transport`.
fn failing_over(transport: &str, n: usize, how: &str) -> (common::Finished, Vec<i32>) {
    let ns = n.to_string();
    let check = example("spmd-check");
    let args = ["-n", &ns, "--timeout", "60", &check, "fail", how];
    let (child, pids, reader) = start_reporting_pids_with(&args, n, &[("SPMD_TRANSPORT", transport)]);
    let out = finish_reporting(child, reader);
    assert_all_gone(&pids);
    (out, pids)
}

/// The one line spmdrun prints about the failure (details, if any, follow
/// it indented).
fn report(out: &common::Finished) -> &str {
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("spmdrun: ") && !l.starts_with("spmdrun:   "))
        .collect();
    assert_eq!(lines.len(), 1, "expected one report line: {out:?}");
    lines[0]
}

#[test]
fn a_panicking_rank_ends_the_job_with_its_message() {
    for n in [2, 4, 8] {
        let (out, pids) = failing(n, "panic");
        assert_eq!(out.code(), Some(101), "{out:?}");
        let line = report(&out);
        let who = format!("rank {} (pid {} ", n - 1, pids[n - 1]);
        assert!(line.contains(&who), "{line}");
        assert!(
            line.contains(&format!("panicked: deliberate panic on rank {}", n - 1)),
            "{line}"
        );
    }
}

#[test]
fn a_rank_exiting_3_ends_the_job_with_status_3() {
    for n in [2, 3] {
        let (out, pids) = failing(n, "exit");
        assert_eq!(out.code(), Some(3), "{out:?}");
        let line = report(&out);
        assert!(
            line.contains(&format!("rank {} (pid {} ", n - 1, pids[n - 1])),
            "{line}"
        );
        assert!(line.contains("exited with code 3"), "{line}");
    }
}

/// A rank whose child holds its stdout and stderr open as it exits: the
/// job ends with its last words on stderr (what it wrote before it
/// exited), without waiting for the pipes' end, and the child goes with
/// the job. (`scripts/failure-latency` measures how soon.)
#[test]
fn a_rank_leaving_a_child_that_holds_its_output_ends_the_job() {
    for n in [2, 3] {
        let (out, _) = failing(n, "exit-leaving-child");
        assert_eq!(out.code(), Some(3), "{out:?}");
        let line = report(&out);
        assert!(line.contains("exited with code 3"), "{line}");
        assert!(line.contains(&format!("last words of rank {}", n - 1)), "{line}");
        assert_all_gone(&[left_child(&out)]);
    }
}

#[test]
fn an_error_returned_from_main_is_reported_as_that_ranks() {
    // The others wait on the failing rank, and find it gone as its `World`
    // drops: the report must still name it, in its own words. (Before,
    // about half of such runs blamed a waiting rank.)
    for (transport, n) in TRANSPORTS.into_iter().flat_map(|t| [(t, 2), (t, 3)]) {
        for _ in 0..3 {
            let (out, pids) = failing_over(transport, n, "error");
            assert_eq!(out.code(), Some(1), "{transport}: {out:?}");
            let line = report(&out);
            assert!(
                line.contains(&format!("rank {} (pid {} ", n - 1, pids[n - 1])),
                "{line}"
            );
            assert!(line.contains(&format!("deliberate error on rank {}", n - 1)), "{line}");
        }
        // The others' barrier reaches the failing rank before it returns
        // its error: their messages are not a disagreement it reports.
        let (out, pids) = failing_over(transport, n, "error-after-barrier");
        assert_eq!(out.code(), Some(1), "{transport}: {out:?}");
        let line = report(&out);
        assert!(
            line.contains(&format!("rank {} (pid {} ", n - 1, pids[n - 1])),
            "{line}"
        );
        assert!(!out.stderr.contains("disagree"), "{transport}: {out:?}");
    }
}

#[test]
fn abort_ends_the_job_with_its_code() {
    let (out, _) = failing(3, "abort");
    assert_eq!(out.code(), Some(5), "{out:?}");
    assert!(
        report(&out).contains("rank 2 (pid ") && report(&out).contains("called abort(5)"),
        "{out:?}"
    );
}

#[test]
fn abort_with_a_code_that_reads_as_success_ends_the_job_with_1() {
    for code in [0, 256] {
        let (out, _) = failing(2, &format!("abort-{code}"));
        assert_eq!(out.code(), Some(1), "{out:?}");
        assert!(report(&out).contains(&format!("called abort({code})")), "{out:?}");
    }
}

#[test]
fn exiting_without_finalize_while_others_run_is_a_failure() {
    let (out, _) = failing(2, "no-finalize");
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        report(&out).contains("rank 1 (pid ") && report(&out).contains("without calling finalize"),
        "{out:?}"
    );
}

#[test]
fn a_rank_killed_by_sigkill_ends_the_job_with_128_plus_9() {
    for n in [3, 8] {
        let ns = n.to_string();
        let check = example("spmd-check");
        let (child, pids, reader) = start_reporting_pids(&["-n", &ns, &check, "fail", "idle"], n);
        signal(pids[1], Signal::SIGKILL);
        let out = finish_reporting(child, reader);
        assert_all_gone(&pids);
        assert_eq!(out.code(), Some(137), "{out:?}");
        let line = report(&out);
        assert!(line.contains(&format!("rank 1 (pid {} ", pids[1])), "{line}");
        assert!(line.contains("killed by signal 9 (SIGKILL)"), "{line}");
    }
}

#[test]
fn sigterm_and_sigint_to_spmdrun_end_the_whole_job() {
    for (sig, code, name) in [(Signal::SIGTERM, 143, "SIGTERM"), (Signal::SIGINT, 130, "SIGINT")] {
        let check = example("spmd-check");
        let (child, pids, reader) = start_reporting_pids(&["-n", "4", &check, "fail", "idle"], 4);
        signal(child.id() as i32, sig);
        let out = finish_reporting(child, reader);
        assert_all_gone(&pids);
        assert_eq!(out.code(), Some(code), "{out:?}");
        assert!(report(&out).contains(&format!("received {name}")), "{out:?}");
    }
}

#[test]
fn timeout_ends_a_job_that_runs_too_long() {
    let check = example("spmd-check");
    let (child, pids, reader) = start_reporting_pids(&["-n", "2", "--timeout", "5", &check, "fail", "idle"], 2);
    let out = finish_reporting(child, reader);
    assert_all_gone(&pids);
    assert_eq!(out.code(), Some(124), "{out:?}");
    assert!(report(&out).contains("--timeout"), "{out:?}");
    // It says what every rank was doing.
    for (rank, pid) in pids.iter().enumerate() {
        let said = format!("spmdrun:   rank {rank} (pid {pid} on ");
        let line = out.stderr.lines().find(|l| l.starts_with(&said));
        assert!(
            line.is_some_and(|l| l.contains("waits receive(from any rank, tag 999)")),
            "{out:?}"
        );
    }
}

#[test]
fn no_environment_or_command_line_holds_a_key_and_children_inherit_no_channel() {
    // Local jobs have no secret at all (ranks get their channel and links
    // from spmdrun); nothing that looks like one may appear either.
    let check = example("spmd-check");
    let (child, pids, reader) = start_reporting_pids(&["-n", "2", &check, "fail", "idle"], 2);
    for pid in pids.iter().copied().chain([child.id() as i32]) {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("the environment is readable");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        for text in [&environ, &cmdline] {
            assert!(
                !text.split(|b| *b == 0).any(|kv| kv.starts_with(b"SPMD_SECRET")),
                "pid {pid} has SPMD_SECRET"
            );
            // No word anywhere looks like a 256-bit key in hex.
            let hexish = text.split(|b| !b.is_ascii_hexdigit()).any(|w| w.len() >= 64);
            assert!(
                !hexish,
                "pid {pid} has something like a secret in its environment or command line"
            );
        }
    }
    signal(child.id() as i32, Signal::SIGTERM);
    let out = finish_reporting(child, reader);
    assert_all_gone(&pids);
    assert_eq!(out.code(), Some(143), "{out:?}");
    // A program a rank starts inherits neither the channel nor the links
    // to other ranks: `spmd-check children` looks for them in a child.
    for transport in common::TRANSPORTS {
        let out = run(common::spmdrun_over(transport, &["-n", "3", &check, "children"]));
        assert_eq!(out.code(), Some(0), "{transport}: {out:?}");
        assert!(
            out.stdout.contains("children: all checks passed"),
            "{transport}: {out:?}"
        );
    }
}
