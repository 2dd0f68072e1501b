//! The rank program of the integration tests: `spmd-check MODE [ARGS]`
//! runs one group of checks, panicking (which fails the job) on any
//! mismatch. Rank 0 prints `MODE: all checks passed` at the end.

mod after_finalize;
mod big;
mod collectives;
mod comms;
mod failures;
mod flooded;
mod full_queue;
mod hangs;
mod immediate;
mod numbers;
mod output;
mod p2p;
mod rng;
mod run_ahead;
mod scoped;
mod self_receive;
mod send_first;
mod single_copy;
mod sizes;
mod soak;
mod straight;
mod tag_zero;
mod thread_hangs;
mod thread_races;
mod threads;
mod timeouts;
mod workload;

use spmd::{Communicator, Error, World};

fn main() -> Result<(), spmd::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    let rest = &args[args.len().min(1)..];
    // Failure modes start their own world; so does `alone`.
    if let Some(result) = failures::run(mode, rest) {
        return result;
    }
    if mode == "immediate-after-finalize" {
        return immediate::after_finalize();
    }
    if mode == "chatter" {
        return output::chatter();
    }
    if mode == "blocked-output" {
        return output::blocked_output(rest.first().is_some_and(|a| a == "stderr"));
    }
    if mode == "nested" {
        // Started by a rank, not by spmdrun: init must refuse.
        return spmd::init().map(|_| ());
    }
    if mode == "single-copy" {
        single_copy::before_init(rest.first().map(String::as_str));
    }
    let world = spmd::init()?;
    if mode == "thread-hang" {
        return thread_hangs::run(world, rest.first().map(String::as_str).unwrap_or(""));
    }
    if mode == "deadlock-after-finalize" {
        return after_finalize::deadlock(world);
    }
    // The suites of point-to-point calls and collectives run on the
    // communicator SPMD_CHECK_ON names; a rank outside it only finalizes.
    let on = On::chosen(&world)?;
    let comm: &Communicator = match &on {
        On::World => &world,
        On::Made(c) => c,
        On::Outside => {
            println!("rank {} is outside the communicator checked", world.rank());
            return world.finalize();
        }
    };
    match mode {
        "p2p" => p2p::run(comm)?,
        "comms" => comms::run(&world, rest.first().and_then(|s| s.parse().ok()).unwrap_or(100_000))?,
        "sizes" => sizes::run(comm)?,
        "timeouts" => timeouts::run(comm)?,
        "threads" => threads::run(&world)?,
        "scoped" => {
            scoped::run(comm)?;
            send_first::run(comm)?;
        }
        "single-copy" => single_copy::run(&world)?,
        "soak" => {
            let seed = rest.first().and_then(|s| s.parse().ok()).unwrap_or(1);
            let messages = rest.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
            let slow = rest.get(2).and_then(|s| s.parse().ok());
            soak::run_with(&world, seed, messages, slow)?
        }
        "workload" => workload::run(&world, rest.first().map(String::as_str).unwrap_or("collectives"))?,
        "big" => big::run(&world, rest.first().and_then(|s| s.parse().ok()).unwrap_or(5.0))?,
        "flood" => soak::flood(&world, rest.first().and_then(|s| s.parse().ok()).unwrap_or(256))?,
        "hang" => {
            let arg = |i: usize| rest.get(i).map(String::as_str).unwrap_or("");
            return hangs::run(&world, arg(0), arg(1));
        }
        "full-queue" => return full_queue::run(&world, rest.first().map(String::as_str).unwrap_or("")),
        "immediate" => {
            let seed = rest.first().and_then(|s| s.parse().ok()).unwrap_or(1);
            let cases = rest.get(1).and_then(|s| s.parse().ok()).unwrap_or(40);
            immediate::run(comm, seed, cases)?
        }
        "run-ahead" if rest.first().is_some_and(|a| a == "relied-on") => run_ahead::relied_on(comm)?,
        "run-ahead" => {
            let calls = rest.first().and_then(|s| s.parse().ok()).unwrap_or(36_000);
            let late = rest.get(1).and_then(|s| s.parse().ok()).unwrap_or(300);
            let only = rest.get(2).map(String::as_str);
            run_ahead::run(comm, calls, std::time::Duration::from_millis(late), only)?
        }
        "collectives" => {
            let seed = rest.first().and_then(|s| s.parse().ok()).unwrap_or(1);
            let cases = rest.get(1).and_then(|s| s.parse().ok()).unwrap_or(40);
            collectives::run(comm, seed, cases)?
        }
        other => panic!("unknown mode {other:?}"),
    }
    if comm.rank() == 0 {
        println!("{mode}: all checks passed on {} ranks{}", comm.size(), on.describe());
    }
    drop(on);
    world.finalize()
}

/// Where the suites run.
enum On {
    World,
    /// A communicator made from the world.
    Made(Box<Communicator>),
    /// This rank is not in the communicator made.
    Outside,
}

impl On {
    /// The communicator `SPMD_CHECK_ON` names: `world` (the default),
    /// `dup`, `split` (two halves: the lower ranks, and the upper ones in
    /// reverse order) or `subset` (every rank but 0, in reverse order).
    fn chosen(world: &World) -> Result<On, Error> {
        let (rank, size) = (world.rank(), world.size());
        let made = match std::env::var("SPMD_CHECK_ON").as_deref().unwrap_or("world") {
            "world" => return Ok(On::World),
            "dup" => Some(world.dup()?),
            "split" => {
                let upper = rank >= size / 2;
                let key = if upper { -(rank as i64) } else { rank as i64 };
                world.split(Some(u32::from(upper)), key)?
            }
            "subset" => {
                let ranks: Vec<usize> = (1.min(size - 1)..size).rev().collect();
                world.subset(&ranks)?
            }
            other => panic!("SPMD_CHECK_ON={other}: not world, dup, split or subset"),
        };
        Ok(made.map_or(On::Outside, |c| On::Made(Box::new(c))))
    }

    fn describe(&self) -> String {
        match (self, std::env::var("SPMD_CHECK_ON")) {
            (On::Made(_), Ok(on)) => format!(" of a {on}"),
            _ => String::new(),
        }
    }
}
