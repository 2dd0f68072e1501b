//! Allreduce latency over all ranks, printed like the OSU micro-benchmark
//! `osu_allreduce`: sums of `f32` vectors, the average over ranks of each
//! rank's time per call.
//!
//! Run: `spmdrun -n 8 target/release/examples/osu_allreduce [max-bytes]
//! [min-bytes] [iterations]`

mod common;

use spmd::op;

fn main() -> Result<(), spmd::Error> {
    let world = spmd::init()?;
    let max: usize = common::arg(&world, 1, "max-bytes", 1 << 20);
    let min = common::arg(&world, 2, "min-bytes", 4usize).max(4);
    let fixed_iterations = Some(common::arg(&world, 3, "iterations", 0usize)).filter(|n| *n > 0);
    if world.rank() == 0 {
        println!("# spmd allreduce latency test ({} ranks)", world.size());
        println!("{:<10}{:>20}", "# Size", "Avg Latency(us)");
    }
    let mut size = min;
    while size <= max {
        let n = size / 4;
        let send = vec![1.0f32; n];
        let mut recv = vec![0.0f32; n];
        let (warmup, iters) = match fixed_iterations {
            Some(n) => (n / 10, n.max(1)),
            None if size > 8192 => (10, 100),
            None => (200, 2000),
        };
        world.barrier()?;
        let mut start = 0.0;
        for i in 0..warmup + iters {
            if i == warmup {
                start = spmd::wtime();
            }
            world.allreduce_into(&send, &mut recv, &op::Sum)?;
        }
        let mine = (spmd::wtime() - start) * 1e6 / iters as f64;
        let total = world.reduce(&mine, &op::Sum, 0)?;
        if let Some(total) = total {
            println!("{size:<10}{:>20.2}", total / world.size() as f64);
        }
        size *= 2;
    }
    world.finalize()
}
