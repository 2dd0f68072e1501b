//! Point-to-point semantics, checked inside real jobs by the `spmd-check
//! p2p` rank program (ordering, wildcards, probe, 64 MiB, self-sends,
//! requests, errors).

mod common;

use common::{example, run, spmdrun};

fn p2p(n: usize) {
    let out = run(spmdrun(&[
        "-n",
        &n.to_string(),
        "--timeout",
        "150",
        &example("spmd-check"),
        "p2p",
    ]));
    assert_eq!(out.code(), Some(0), "n={n}: {out:?}");
    assert!(
        out.stdout.contains(&format!("p2p: all checks passed on {n} ranks")),
        "n={n}: {out:?}"
    );
}

#[test]
fn p2p_1_rank() {
    p2p(1);
}

#[test]
fn p2p_2_ranks() {
    p2p(2);
}

#[test]
fn p2p_3_ranks() {
    p2p(3);
}

#[test]
fn p2p_4_ranks() {
    p2p(4);
}

#[test]
fn p2p_8_ranks_on_fewer_cores() {
    p2p(8);
}
