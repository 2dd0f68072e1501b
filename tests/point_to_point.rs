//! Point-to-point semantics, checked inside real jobs by the `spmd-check
//! p2p` rank program (ordering, wildcards, probe, 64 MiB, self-sends,
//! requests, errors) and `spmd-check sizes` (awkward sizes around the
//! shared-memory ring), over shared memory and over sockets.

mod common;

use common::{MODES, example, mode_name, run, spmdrun_in};

fn check(what: &str, n: usize) {
    for mode in MODES {
        let name = mode_name(mode);
        let args = ["-n", &n.to_string(), "--timeout", "150", &example("spmd-check"), what];
        let out = run(spmdrun_in(mode, &args));
        assert_eq!(out.code(), Some(0), "{what}, n={n}, {name}: {out:?}");
        assert!(
            out.stdout.contains(&format!("{what}: all checks passed on {n} ranks")),
            "{what}, n={n}, {name}: {out:?}"
        );
    }
}

#[test]
fn p2p_1_rank() {
    check("p2p", 1);
}

#[test]
fn p2p_2_ranks() {
    check("p2p", 2);
}

#[test]
fn p2p_3_ranks() {
    check("p2p", 3);
}

#[test]
fn p2p_4_ranks() {
    check("p2p", 4);
}

#[test]
fn p2p_8_ranks_on_fewer_cores() {
    check("p2p", 8);
}

#[test]
fn p2p_16_ranks_on_fewer_cores() {
    check("p2p", 16);
}

#[test]
fn awkward_sizes_in_both_directions() {
    for n in [2, 3, 4] {
        check("sizes", n);
    }
}

#[test]
fn scoped_requests_lend_buffers() {
    for n in [1, 2, 3, 8] {
        check("scoped", n);
    }
}
