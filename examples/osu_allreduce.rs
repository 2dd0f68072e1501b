//! Allreduce latency over all ranks, printed like the OSU micro-benchmark
//! `osu_allreduce`: sums of `f32` vectors, the average over ranks of each
//! rank's time per call.
//!
//! Run: `spmdrun -n 8 target/release/examples/osu_allreduce [max-bytes]`

use spmd::op;

fn main() -> Result<(), spmd::Error> {
    let world = spmd::init()?;
    let max: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1 << 20);
    if world.rank() == 0 {
        println!("# spmd allreduce latency test ({} ranks)", world.size());
        println!("{:<10}{:>20}", "# Size", "Avg Latency(us)");
    }
    let mut size = 4;
    while size <= max {
        let n = size / 4;
        let send = vec![1.0f32; n];
        let mut recv = vec![0.0f32; n];
        let (warmup, iters) = if size > 8192 { (10, 100) } else { (200, 2000) };
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
