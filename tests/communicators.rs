//! Communicators in real jobs: the point-to-point and collective suites run
//! on a duplicate of the world, on the two halves of a split (one in
//! reverse order) and on a subset (every rank but 0, reversed), in every
//! transport and wait mode (and the rooted collectives with ranks far
//! ahead, on a split); `spmd-check comms` checks the groups the
//! constructors make, isolation under wildcards, misuse as an error on
//! every rank, and 100,000 communicators made and dropped with flat memory.

mod common;

use common::{MODES, example, mode_name, run, spmdrun_in};

/// The communicators the suites run on besides the world.
const ON: [&str; 3] = ["dup", "split", "subset"];

/// Runs `spmd-check ARGS` on `n` ranks on the communicator `on`, in every
/// mode, and checks that every communicator made passed.
fn suite_on(on: &str, n: usize, args: &[&str], passed: &str) {
    for mode in MODES {
        let name = mode_name(mode);
        let mut all = vec!["-n".to_string(), n.to_string(), "--timeout".into(), "150".into()];
        all.push(example("spmd-check"));
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut cmd = spmdrun_in(mode, &all);
        cmd.env("SPMD_CHECK_ON", on);
        let out = run(cmd);
        assert_eq!(out.code(), Some(0), "{args:?} on a {on}, n={n}, {name}: {out:?}");
        // Two halves each report; a subset of one rank leaves out no one.
        let expected = if on == "split" && n > 1 { 2 } else { 1 };
        let reports = out.stdout.matches(passed).count();
        assert_eq!(reports, expected, "{args:?} on a {on}, n={n}, {name}: {out:?}");
    }
}

fn p2p_on_every_communicator(n: usize) {
    for on in ON {
        suite_on(on, n, &["p2p"], "p2p: all checks passed on");
    }
}

fn collectives_on_every_communicator(n: usize, seed: u64, cases: usize) {
    let (seed, cases) = (seed.to_string(), cases.to_string());
    for on in ON {
        suite_on(
            on,
            n,
            &["collectives", &seed, &cases],
            &format!("ok {cases} random collective cases from seed {seed}"),
        );
    }
}

#[test]
fn p2p_on_communicators_of_1_to_4_ranks() {
    for n in 1..=4 {
        p2p_on_every_communicator(n);
    }
}

#[test]
fn p2p_on_communicators_of_8_and_16_ranks() {
    p2p_on_every_communicator(8);
    p2p_on_every_communicator(16);
}

#[test]
fn collectives_on_communicators_of_1_to_4_ranks() {
    for n in 1..=4 {
        collectives_on_every_communicator(n, 30 + n as u64, 40);
    }
}

#[test]
fn collectives_on_communicators_of_5_to_8_ranks() {
    for n in 5..=8 {
        collectives_on_every_communicator(n, 40 + n as u64, 20);
    }
}

#[test]
fn collectives_on_communicators_of_16_ranks() {
    collectives_on_every_communicator(16, 56, 10);
}

/// Rooted collectives in tight loops with the receiving ranks starting
/// late (`collectives_with_ranks_far_ahead` in `collectives.rs`) on the two
/// halves of a split: each half keeps its own pace.
#[test]
fn rooted_collectives_with_ranks_far_ahead_on_a_split() {
    suite_on(
        "split",
        4,
        &["run-ahead", "12000", "100"],
        "ok 12000 calls of each of 12 collectives with the receivers late",
    );
}

fn comms(n: usize, many: usize) {
    for mode in MODES {
        let name = mode_name(mode);
        let args = [
            "-n",
            &n.to_string(),
            "--timeout",
            "150",
            &example("spmd-check"),
            "comms",
            &many.to_string(),
        ];
        let out = run(spmdrun_in(mode, &args));
        assert_eq!(out.code(), Some(0), "comms, n={n}, {name}: {out:?}");
        assert!(
            out.stdout.contains(&format!("comms: all checks passed on {n} ranks")),
            "comms, n={n}, {name}: {out:?}"
        );
    }
}

#[test]
fn constructors_isolation_and_misuse() {
    for n in [1, 2, 3, 5] {
        comms(n, 1000);
    }
}

#[test]
fn a_hundred_thousand_communicators_with_flat_memory() {
    comms(4, 100_000);
}

#[test]
fn the_grid_example_matches_the_sequential_result() {
    for (n, columns) in [(6, "3"), (4, "2"), (8, "4"), (3, "1")] {
        for mode in MODES {
            let out = run(spmdrun_in(mode, &["-n", &n.to_string(), &example("grid"), columns]));
            assert_eq!(out.code(), Some(0), "grid n={n} {}: {out:?}", mode_name(mode));
            assert!(out.stdout.contains("match the sequential result"), "{out:?}");
        }
    }
}
