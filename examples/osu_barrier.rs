//! Barrier latency over all ranks, printed like the OSU micro-benchmark
//! `osu_barrier`: the average over ranks of each rank's time per barrier.
//!
//! Run: `spmdrun -n 8 target/release/examples/osu_barrier [iterations]`

mod common;

use spmd::{Communicator, op};

fn main() -> Result<(), spmd::Error> {
    let job = spmd::init()?;
    // BENCH_ON=dup or reversed runs it on a communicator made from the
    // world (see common/mod.rs).
    let on = common::bench_on(&job)?;
    let world: &Communicator = on.as_ref().unwrap_or(&job);
    let iters: usize = common::arg(world, 1, "iterations", 2000usize).max(1);
    let (warmup, iters) = common::repeated(world, (iters / 10, iters));
    world.barrier()?;
    let mut start = 0.0;
    for i in 0..warmup + iters {
        if i == warmup {
            start = spmd::wtime();
        }
        world.barrier()?;
    }
    let mine = (spmd::wtime() - start) * 1e6 / iters as f64;
    if let Some(total) = world.reduce(&mine, &op::Sum, 0)? {
        println!("# spmd barrier latency test ({} ranks)", world.size());
        println!("{:<10}{:>20}", "# Size", "Avg Latency(us)");
        println!("{:<10}{:>20.2}", 0, total / world.size() as f64);
    }
    drop(on);
    job.finalize()
}
