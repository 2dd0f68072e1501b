//! The `_timeout` forms in real jobs (`spmd-check timeouts`): every
//! blocking receive, probe, request wait, `wait_any`/`wait_some` and
//! `barrier` gives up with `Error::Timeout` when nothing comes and gets
//! what comes in time; a timed-out barrier fails the collective on every
//! rank (over shared memory on the world, by messages on the others), in
//! every transport and wait mode.

mod common;

use common::{MODES, example, mode_name, run, spmdrun_in};

fn timeouts_on(on: &str, n: usize) {
    for mode in MODES {
        let name = mode_name(mode);
        let (n_text, check) = (n.to_string(), example("spmd-check"));
        let mut cmd = spmdrun_in(mode, &["-n", &n_text, "--timeout", "150", &check, "timeouts"]);
        cmd.env("SPMD_CHECK_ON", on);
        let out = run(cmd);
        let what = format!("timeouts on a {on}, n={n}, {name}");
        assert_eq!(out.code(), Some(0), "{what}: {out:?}");
        let expected = if on == "split" && n > 1 { 2 } else { 1 };
        assert_eq!(
            out.stdout.matches("timeouts: all checks passed").count(),
            expected,
            "{what}: {out:?}"
        );
    }
}

#[test]
fn timeouts_on_the_world() {
    for n in [1, 2, 3, 5] {
        timeouts_on("world", n);
    }
}

#[test]
fn timeouts_on_communicators() {
    for on in ["dup", "split", "subset"] {
        for n in [2, 4] {
            timeouts_on(on, n);
        }
    }
}
