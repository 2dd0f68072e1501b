//! Allreduce latency over all ranks, printed like the OSU micro-benchmark
//! `osu_allreduce`: sums of `f32` vectors, the average over ranks of each
//! rank's time per call.
//!
//! Run: `spmdrun -n 8 target/release/examples/osu_allreduce [max-bytes]
//! [min-bytes] [iterations]`

use spmd::op;

fn main() -> Result<(), spmd::Error> {
    let world = spmd::init()?;
    let arg = |i: usize| std::env::args().nth(i).and_then(|s| s.parse::<usize>().ok());
    let max = arg(1).unwrap_or(1 << 20);
    let min = arg(2).unwrap_or(4).max(4);
    let fixed_iterations = arg(3);
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
