//! Bandwidth and message rate of several pairs at once, printed like the
//! OSU micro-benchmark `osu_mbw_mr`: each rank of the first half streams
//! windows of 64 non-blocking sends to its partner in the second half
//! (rank i to rank i + n/2), which has its receives posted in advance and
//! acknowledges each window; the figures are every pair's bytes over the
//! slowest pair's time.
//!
//! Run: `spmdrun -n 8 target/release/examples/osu_mbw_mr [max-bytes]` (4
//! pairs; `-n 2` is one pair)

mod common;

use common::window::{WINDOW, iterations, stream};
use spmd::{Communicator, op};

fn main() -> Result<(), spmd::Error> {
    let job = spmd::init()?;
    let on = common::bench_on(&job)?;
    let world: &Communicator = on.as_ref().unwrap_or(&job);
    let max: usize = common::arg(world, 1, "max-bytes", 4 << 20);
    if world.size() < 2 || world.size() % 2 != 0 {
        world.abort_with_message(1, "osu_mbw_mr needs an even number of ranks, at least 2");
    }
    let pairs = world.size() / 2;
    let me = world.rank();
    let sending = me < pairs;
    let partner = if sending { me + pairs } else { me - pairs };
    if world.rank() == 0 {
        println!("# spmd multiple bandwidth / message rate test ({pairs} pairs)");
        println!("{:<10}{:>20}{:>20}", "# Size", "MB/s", "Messages/s");
    }
    let mut size = 1;
    while size <= max {
        let (warmup, iters) = common::repeated(world, iterations(size));
        let seconds = stream(world, size, partner, sending, (warmup, iters))?;
        // The slowest pair's time (a sender's, which covers its partner's):
        // every pair's bytes moved within it.
        let slowest = world.reduce(&if sending { seconds } else { 0.0 }, &op::Max, 0)?;
        if let Some(slowest) = slowest {
            let messages = (pairs * WINDOW * iters) as f64 / slowest;
            println!("{size:<10}{:>20.2}{messages:>20.2}", messages * size as f64 / 1e6);
        }
        size *= 2;
    }
    drop(on);
    job.finalize()
}
