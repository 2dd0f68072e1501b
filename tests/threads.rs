//! The thread level in real jobs (`spmd-check threads`): communicators
//! driven from different threads of a rank at once, in orders that hang if
//! a blocked thread keeps the others out, on the world's shared region and
//! over messages; and an operator that calls spmd gets `Error::Reentered`.
//! Every transport and wait mode, 1 to 5 ranks and 8; the hang report and
//! finalize with threads.

mod common;

use common::{MODES, example, mode_name, run, spmdrun_in};

fn threads(n: usize) {
    for mode in MODES {
        let name = mode_name(mode);
        let (n_text, check) = (n.to_string(), example("spmd-check"));
        let out = run(spmdrun_in(
            mode,
            &["-n", &n_text, "--timeout", "150", &check, "threads"],
        ));
        let what = format!("threads, n={n}, {name}");
        assert_eq!(out.code(), Some(0), "{what}: {out:?}");
        assert!(out.stdout.contains("threads: all checks passed"), "{what}: {out:?}");
    }
}

#[test]
fn threads_drive_communicators_at_once() {
    for n in [1, 2, 3, 4, 5, 8] {
        threads(n);
    }
}

fn thread_hang(mode: (&str, &str), case: &str, extra: &[&str]) -> common::Finished {
    let check = example("spmd-check");
    let mut args = vec!["-n", "2"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[&check, "thread-hang", case]);
    run(spmdrun_in(mode, &args))
}

/// The hang report counts every thread of the process: a thread that
/// computes before its first spmd call may yet send what the main thread
/// waits for, so the rank is not waiting; once only threads asleep in spmd
/// are left, a real deadlock is reported.
#[test]
fn the_hang_report_counts_threads_that_have_not_called_spmd_yet() {
    for mode in MODES {
        let name = mode_name(mode);
        let out = thread_hang(mode, "computes", &["--hang-report", "1", "--timeout", "60"]);
        assert_eq!(out.code(), Some(0), "computes, {name}: {out:?}");
        assert!(!out.stderr.contains("deadlock"), "computes, {name}: {out:?}");
        assert!(
            out.stdout.contains("thread-hang computes: all checks passed"),
            "{name}: {out:?}"
        );
        let out = thread_hang(mode, "deadlock", &["--hang-report", "1", "--timeout", "60"]);
        assert_eq!(out.code(), Some(125), "deadlock, {name}: {out:?}");
        assert!(
            out.stderr.contains(
                "spmdrun: deadlock: rank 0 waits receive(from rank 1, tag 0) <- rank 1 waits receive(from rank 0, tag 0)"
            ),
            "deadlock, {name}: {out:?}"
        );
    }
}

/// The report names the oldest wait of a rank's threads and the earliest
/// deadline among them: a thread in a receive with a timeout keeps a
/// correct job from being called a deadlock, whichever thread slept first.
/// A rank whose main thread joins a thread blocked in spmd is reported as
/// waiting, with a thread outside spmd, and is no deadlock.
#[test]
fn the_hang_report_sees_every_thread_of_a_rank() {
    for mode in MODES {
        let name = mode_name(mode);
        let out = thread_hang(mode, "timed", &["--hang-report", "1", "--timeout", "60"]);
        assert_eq!(out.code(), Some(0), "timed, {name}: {out:?}");
        assert!(
            out.stdout.contains("thread-hang timed: all checks passed"),
            "{name}: {out:?}"
        );
        let out = thread_hang(mode, "joined", &["--hang-report", "1", "--timeout", "4"]);
        assert_ne!(out.code(), Some(0), "joined, {name}: {out:?}");
        assert_ne!(out.code(), Some(125), "joined is no deadlock, {name}: {out:?}");
        assert!(
            out.stderr
                .contains("waits receive(from rank 1, tag 0) in communicator #")
                && out
                    .stderr
                    .contains("(another thread of it is outside spmd, and may yet send)"),
            "joined, {name}: {out:?}"
        );
    }
}

/// A thread blocked in a receive while another thread finalizes the rank
/// gets `Error::Finalized` instead of waiting on.
#[test]
fn finalize_on_one_thread_ends_the_waits_of_the_others() {
    for mode in MODES {
        let out = thread_hang(mode, "finalize", &["--timeout", "60"]);
        let name = mode_name(mode);
        assert_eq!(out.code(), Some(0), "{name}: {out:?}");
        assert!(
            out.stdout.contains("thread-hang finalize: all checks passed"),
            "{name}: {out:?}"
        );
    }
}
