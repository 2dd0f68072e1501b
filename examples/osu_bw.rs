//! Streaming bandwidth from rank 0 to rank 1, printed like the OSU
//! micro-benchmark `osu_bw`: a window of 64 non-blocking sends against 64
//! receives posted in advance (scoped requests, which lend the buffers as
//! MPI's do), then an acknowledgement, repeated.
//!
//! Run: `spmdrun -n 2 target/release/examples/osu_bw [max-bytes] [min-bytes]`
//! (the sizes are the powers of two from `min-bytes`, 1 if not given)

mod common;

use common::window::{WINDOW, iterations, stream};
use spmd::Communicator;

fn main() -> Result<(), spmd::Error> {
    let job = spmd::init()?;
    // BENCH_ON=dup or reversed runs it on a communicator made from the
    // world (see common/mod.rs).
    let on = common::bench_on(&job)?;
    let world: &Communicator = on.as_ref().unwrap_or(&job);
    let max: usize = common::arg(world, 1, "max-bytes", 4 << 20);
    let min: usize = common::arg(world, 2, "min-bytes", 1usize).max(1);
    if world.size() < 2 {
        eprintln!("osu_bw needs at least 2 ranks");
        world.abort(1);
    }
    if world.rank() == 0 {
        println!("# spmd bandwidth test ({} ranks)", world.size());
        println!("{:<10}{:>20}", "# Size", "Bandwidth (MB/s)");
    }
    let Some(mut size) = min.checked_next_power_of_two() else {
        world.abort_with_message(2, &format!("min-bytes {min} is too large"));
    };
    while size <= max {
        let (warmup, iters) = common::repeated(world, iterations(size));
        let seconds = match world.rank() {
            0 => stream(world, size, 1, true, (warmup, iters))?,
            1 => stream(world, size, 0, false, (warmup, iters))?,
            // Only at the barrier of each size.
            _ => {
                world.barrier()?;
                0.0
            }
        };
        if world.rank() == 0 {
            let mb_s = (size * WINDOW * iters) as f64 / seconds / 1e6;
            println!("{size:<10}{mb_s:>20.2}");
        }
        size *= 2;
    }
    drop(on);
    job.finalize()
}
