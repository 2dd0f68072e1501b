//! The soak, shortened for CI (scripts/soak runs the full million): 4 ranks
//! exchange random messages of 0 B to 1 MiB by every send and receive form,
//! each checked to arrive once, in order, intact; and memory stays bounded
//! when a rank falls behind or a sender floods a slow receiver.

mod common;

use common::{MODES, example, mode_name, run, spmdrun_in};

/// The largest figure on the line that starts with `label`, in MiB.
fn peak(stdout: &str, label: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?}: {stdout}"));
    let figures = line.rsplit(':').next().unwrap_or_default();
    figures
        .split_whitespace()
        .filter_map(|f| f.parse::<f64>().ok())
        .fold(0.0, f64::max)
}

/// What a rank may hold, in MiB: 8 MiB of unreceived messages per peer
/// (64 in all), 32 of reusable buffers, its share of the shared rings,
/// and the program itself (a debug build, with the soak's own bookkeeping).
const BOUND_MIB: f64 = 160.0;

#[test]
fn every_message_arrives_once_in_order_intact_in_every_mode() {
    for mode in MODES {
        let check = example("spmd-check");
        let out = run(spmdrun_in(
            mode,
            &["-n", "4", "--timeout", "120", &check, "soak", "11", "200000"],
        ));
        let name = mode_name(mode);
        assert_eq!(out.code(), Some(0), "{name}: {out:?}");
        assert!(
            out.stdout
                .contains("soak: 200000 messages, every one once, in order, intact"),
            "{name}: {out:?}"
        );
        assert!(peak(&out.stdout, "soak:") < BOUND_MIB, "{name}: {}", out.stdout);
    }
}

#[test]
fn a_rank_that_falls_behind_keeps_memory_bounded() {
    for transport in common::TRANSPORTS {
        let check = example("spmd-check");
        let out = run(common::spmdrun_over(
            transport,
            &["-n", "4", "--timeout", "120", &check, "soak", "3", "40000", "2"],
        ));
        assert_eq!(out.code(), Some(0), "{transport}: {out:?}");
        assert!(peak(&out.stdout, "soak:") < BOUND_MIB, "{transport}: {}", out.stdout);
    }
}

#[test]
fn a_sender_flooding_a_slow_receiver_keeps_its_memory_bounded() {
    for transport in common::TRANSPORTS {
        let check = example("spmd-check");
        let out = run(common::spmdrun_over(
            transport,
            &["-n", "2", "--timeout", "120", &check, "flood", "256"],
        ));
        assert_eq!(out.code(), Some(0), "{transport}: {out:?}");
        // 256 MiB went through a receiver that never held more than this.
        assert!(peak(&out.stdout, "flood:") < 100.0, "{transport}: {}", out.stdout);
    }
}
