//! π by numerical integration of 4/(1+x²) over [0, 1] with the midpoint
//! rule, the intervals split across ranks and the sums combined with
//! allreduce.
//!
//! Run: `spmdrun -n 4 target/release/examples/pi [intervals]`

mod common;

use spmd::op;

fn main() -> Result<(), spmd::Error> {
    let world = spmd::init()?;
    let intervals: usize = common::arg(&world, 1, "intervals", 50_000_000);
    let t0 = spmd::wtime();

    let width = 1.0 / intervals as f64;
    let mine = spmd::balance(intervals, world.size(), world.rank());
    let partial: f64 = mine
        .map(|i| {
            let x = (i as f64 + 0.5) * width;
            4.0 / (1.0 + x * x)
        })
        .sum::<f64>()
        * width;

    let pi = world.allreduce(&partial, &op::Sum)?;
    if world.rank() == 0 {
        println!(
            "pi = {pi:.15} (error {:.2e}) with {intervals} intervals on {} ranks in {:.3} s",
            (pi - std::f64::consts::PI).abs(),
            world.size(),
            spmd::wtime() - t0
        );
    }
    world.finalize()
}
