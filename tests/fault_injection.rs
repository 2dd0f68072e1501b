//! Kills at random moments: a random rank by SIGKILL in the middle of
//! collectives, of 64 MiB transfers, or of a wait, and spmdrun itself in the
//! middle of collectives; every time, over both transports, the job ends
//! naming the killed rank, and no process of it is left. (The timings of
//! the same kills are `scripts/fault-injection`'s business, not a test's.)

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{TRANSPORTS, assert_all_gone, example, finish_reporting, signal, start_reporting_pids_with};
use nix::sys::signal::Signal;

const RANKS: usize = 6;
const TRIALS: u64 = 3;

/// A small generator of the random moments and victims, seeded from the
/// clock; the seed is in every failure message.
struct Dice(u64);

impl Dice {
    fn new() -> Dice {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Dice(nanos | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn workload(what: &str) -> Vec<String> {
    let check = example("spmd-check");
    let ranks = RANKS.to_string();
    let tail: &[&str] = match what {
        "waiting" => &["fail", "idle"],
        "transfers" => &["workload", "transfers"],
        _ => &["workload", "collectives"],
    };
    ["-n", &ranks, &check]
        .iter()
        .chain(tail)
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn a_rank_killed_at_a_random_moment_ends_the_job_naming_it() {
    let mut dice = Dice::new();
    let seed = dice.0;
    for transport in TRANSPORTS {
        for what in ["collectives", "transfers", "waiting"] {
            for trial in 0..TRIALS {
                let args = workload(what);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let (child, pids, reader) = start_reporting_pids_with(&args, RANKS, &[("SPMD_TRANSPORT", transport)]);
                std::thread::sleep(Duration::from_millis(20 + dice.below(300)));
                let victim = dice.below(RANKS as u64) as usize;
                signal(pids[victim], Signal::SIGKILL);
                let out = finish_reporting(child, reader);
                let context = format!("{transport}, {what}, trial {trial}, seed {seed}: {out:?}");
                assert_all_gone(&pids);
                assert_eq!(out.code(), Some(137), "{context}");
                let named = format!("spmdrun: rank {victim} (pid {} ", pids[victim]);
                let first = out.stderr.lines().find(|l| l.starts_with("spmdrun: rank"));
                assert!(
                    first.is_some_and(|l| l.starts_with(&named) && l.contains("SIGKILL")),
                    "{context}"
                );
            }
        }
    }
}

#[test]
fn spmdrun_killed_at_a_random_moment_leaves_no_rank_behind() {
    let mut dice = Dice::new();
    let seed = dice.0;
    for transport in TRANSPORTS {
        for trial in 0..TRIALS {
            let args = workload("collectives");
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (mut child, pids, _reader) = start_reporting_pids_with(&args, RANKS, &[("SPMD_TRANSPORT", transport)]);
            std::thread::sleep(Duration::from_millis(20 + dice.below(300)));
            signal(child.id() as i32, Signal::SIGKILL);
            let _ = child.wait();
            // Ranks notice that spmdrun has gone and end themselves.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while pids.iter().any(|p| common::alive(*p)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let living: Vec<i32> = pids.iter().copied().filter(|p| common::alive(*p)).collect();
            assert!(
                living.is_empty(),
                "{transport}, trial {trial}, seed {seed}: ranks outlived spmdrun: {living:?}"
            );
        }
    }
}
