//! The `immediate_` collectives in real jobs: random cases of several at
//! once, mixed with blocking collectives and point-to-point traffic, on
//! the world and on communicators made from it, in every transport and
//! wait mode (`spmd-check immediate SEED CASES`); progress while a rank
//! blocks elsewhere, and an immediate collective against a blocking one
//! as an error on every rank.

mod common;

use common::{MODES, example, mode_name, run, spmdrun_in};

fn immediate_on(on: &str, n: usize, seed: u64, cases: usize) {
    for mode in MODES {
        let name = mode_name(mode);
        let (n_text, seed_text, cases_text) = (n.to_string(), seed.to_string(), cases.to_string());
        let check = example("spmd-check");
        let args = [
            "-n",
            &n_text,
            "--timeout",
            "150",
            &check,
            "immediate",
            &seed_text,
            &cases_text,
        ];
        let mut cmd = spmdrun_in(mode, &args);
        cmd.env("SPMD_CHECK_ON", on);
        let out = run(cmd);
        let what = format!("immediate on a {on}, n={n}, seed {seed}, {name}");
        assert_eq!(out.code(), Some(0), "{what}: {out:?}");
        let expected = if on == "split" && n > 1 { 2 } else { 1 };
        let passed = format!("ok {cases} random immediate collective cases from seed {seed}");
        assert_eq!(out.stdout.matches(&passed).count(), expected, "{what}: {out:?}");
        assert_eq!(
            out.stdout.matches("immediate: all checks passed").count(),
            expected,
            "{what}: {out:?}"
        );
        // The failed call of the misuse check breaks the communicator's
        // collectives on every rank: no rank warns of a stray message.
        assert!(!out.stderr.contains("never called"), "{what}: {out:?}");
    }
}

#[test]
fn immediate_collectives_on_the_world_1_to_4_ranks() {
    for n in 1..=4 {
        immediate_on("world", n, 60 + n as u64, 40);
    }
}

#[test]
fn immediate_collectives_on_the_world_5_to_8_and_16_ranks() {
    for n in [5, 6, 7, 8, 16] {
        immediate_on("world", n, 70 + n as u64, 15);
    }
}

#[test]
fn immediate_collectives_on_communicators() {
    for on in ["dup", "split", "subset"] {
        for n in [2, 3, 5, 8] {
            immediate_on(on, n, 80 + n as u64, 10);
        }
    }
}

#[test]
fn a_request_kept_past_finalize_is_an_error_not_a_panic() {
    for mode in MODES {
        for n in [1, 3] {
            let (n_text, check) = (n.to_string(), example("spmd-check"));
            let out = run(spmdrun_in(mode, &["-n", &n_text, &check, "immediate-after-finalize"]));
            let what = format!("n={n}, {}", mode_name(mode));
            assert_eq!(out.code(), Some(0), "{what}: {out:?}");
            assert_eq!(
                out.stdout.matches("immediate-after-finalize: ok").count(),
                n,
                "{what}: {out:?}"
            );
            // The message the scope's second receive had taken is named
            // once on each rank, as never received.
            for me in 0..n {
                let line =
                    format!("rank {me} finalized with 1 message(s) it never received (from rank {me} with tag 98)");
                assert_eq!(out.stderr.matches(&line).count(), 1, "{what}: {line}: {out:?}");
            }
        }
    }
}
