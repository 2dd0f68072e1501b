//! Every collective against a sequential reference: random operations,
//! roots, lengths (zero included) and operators drawn from seeds, run by the
//! `spmd-check collectives SEED CASES` rank program in real jobs; and
//! rooted collectives called in tight loops, with some ranks far ahead.

mod common;

use common::{MODES, example, mode_name, run, spmdrun_in};

fn collectives(n: usize, seed: u64, cases: usize) {
    for mode in MODES {
        collectives_in(mode, n, seed, cases);
    }
}

fn collectives_in(mode: (&str, &str), n: usize, seed: u64, cases: usize) {
    let transport = mode_name(mode);
    let out = run(spmdrun_in(
        mode,
        &[
            "-n",
            &n.to_string(),
            "--timeout",
            "150",
            &example("spmd-check"),
            "collectives",
            &seed.to_string(),
            &cases.to_string(),
        ],
    ));
    assert_eq!(out.code(), Some(0), "n={n} seed={seed} {transport}: {out:?}");
    assert!(
        out.stdout
            .contains(&format!("ok {cases} random collective cases from seed {seed}")),
        "n={n}: {out:?}"
    );
}

#[test]
fn collectives_1_rank() {
    collectives(1, 11, 120);
}

#[test]
fn collectives_2_ranks() {
    collectives(2, 12, 120);
    collectives(2, 13, 120);
}

#[test]
fn collectives_3_ranks() {
    collectives(3, 14, 120);
    collectives(3, 15, 120);
}

#[test]
fn collectives_4_ranks() {
    collectives(4, 16, 120);
}

#[test]
fn collectives_5_and_6_ranks() {
    collectives(5, 17, 80);
    collectives(6, 18, 80);
}

#[test]
fn collectives_8_ranks_on_fewer_cores() {
    collectives(8, 19, 80);
}

#[test]
fn collectives_16_ranks_on_fewer_cores() {
    collectives(16, 20, 40);
}

/// 12,000 calls of each collective where some ranks only send
/// (broadcast, scatter, scan, reduce, gather, their `_into` and `v` forms,
/// and the immediate broadcasts), the receiving ranks waiting first while
/// the others report their progress: those must stop within 64 calls, and
/// every value must be right, through several wraps of the call numbers.
#[test]
fn collectives_with_ranks_far_ahead() {
    for mode in MODES {
        let transport = mode_name(mode);
        let out = run(spmdrun_in(
            mode,
            &[
                "-n",
                "3",
                "--timeout",
                "150",
                &example("spmd-check"),
                "run-ahead",
                "12000",
                "100",
            ],
        ));
        assert_eq!(out.code(), Some(0), "{transport}: {out:?}");
        assert!(
            out.stdout
                .contains("ok 12000 calls of each of 12 collectives with the receivers late"),
            "{transport}: {out:?}"
        );
    }
}
