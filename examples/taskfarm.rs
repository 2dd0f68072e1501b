//! A master/worker task farm with dynamic load balancing: rank 0 hands out
//! tasks one at a time to whichever worker answers first (an any-source
//! receive), so fast workers get more tasks, like Python's `Pool.map`.
//! Here a task is the (deliberately slow) recursive Fibonacci number.
//!
//! Run: `spmdrun -n 4 target/release/examples/taskfarm [largest] [smallest]`
//! (fib(38) down to fib(30) by default).

mod common;

use serde::{Deserialize, Serialize};
use spmd::{Match, World};

const WORK: u32 = 1;
const STOP: u32 = 2;

#[derive(Debug, Serialize, Deserialize)]
struct Task {
    index: usize,
    n: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    index: usize,
    value: u64,
}

fn fib(n: u32) -> u64 {
    if n < 2 { n as u64 } else { fib(n - 1) + fib(n - 2) }
}

fn master(world: &World, tasks: &[u32]) -> Result<Vec<(u64, usize)>, spmd::Error> {
    let mut results = vec![(0, 0); tasks.len()];
    let workers = world.size() - 1;
    if workers == 0 {
        // Alone: do it all here.
        for (i, &n) in tasks.iter().enumerate() {
            results[i] = (fib(n), 0);
        }
        return Ok(results);
    }
    let mut next = 0;
    let mut busy = 0;
    // Prime every worker with one task (or tell it to stop at once).
    for w in 1..=workers {
        if next < tasks.len() {
            world.send_with_tag(
                &Task {
                    index: next,
                    n: tasks[next],
                },
                w,
                WORK,
            )?;
            next += 1;
            busy += 1;
        } else {
            world.send_with_tag(&(), w, STOP)?;
        }
    }
    // Whoever answers first gets the next task.
    while busy > 0 {
        let (answer, status): (Answer, _) = world.receive_matching(Match::tag(WORK))?;
        results[answer.index] = (answer.value, status.source());
        if next < tasks.len() {
            world.send_with_tag(
                &Task {
                    index: next,
                    n: tasks[next],
                },
                status.source(),
                WORK,
            )?;
            next += 1;
        } else {
            world.send_with_tag(&(), status.source(), STOP)?;
            busy -= 1;
        }
    }
    Ok(results)
}

fn worker(world: &World) -> Result<(), spmd::Error> {
    loop {
        let status = world.probe(Match::source(0))?;
        if status.tag() == STOP {
            world.receive_with_tag::<()>(0, STOP)?;
            return Ok(());
        }
        let task: Task = world.receive_with_tag(0, WORK)?;
        world.send_with_tag(
            &Answer {
                index: task.index,
                value: fib(task.n),
            },
            0,
            WORK,
        )?;
    }
}

fn main() -> Result<(), spmd::Error> {
    let world = spmd::init()?;
    let largest: u32 = common::arg(&world, 1, "largest", 38);
    let smallest: u32 = common::arg(&world, 2, "smallest", 30);
    let tasks: Vec<u32> = (smallest.min(largest)..=largest).rev().collect();

    if world.rank() == 0 {
        let t0 = spmd::wtime();
        let results = master(&world, &tasks)?;
        for (&n, (value, by)) in tasks.iter().zip(results) {
            println!("fib({n}) = {value} (rank {by})");
        }
        println!(
            "{} tasks on {} workers in {:.3} s",
            tasks.len(),
            world.size().saturating_sub(1).max(1),
            spmd::wtime() - t0
        );
    } else {
        worker(&world)?;
    }
    world.finalize()
}
