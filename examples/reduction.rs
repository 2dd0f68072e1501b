//! Sum of squares 1..=n split across ranks with `balance`, combined with
//! reduce (to rank 0) and allreduce (to everybody).
//!
//! Run: `spmdrun -n 4 target/release/examples/reduction [n]` (n = 10,000,000
//! by default).

mod common;

use spmd::op;

fn main() -> Result<(), spmd::Error> {
    let world = spmd::init()?;
    let n: usize = common::arg(&world, 1, "n", 10_000_000);

    // This rank's share of 1..=n.
    let mine = spmd::balance(n, world.size(), world.rank());
    let partial: u128 = (mine.start + 1..=mine.end).map(|i| (i as u128) * (i as u128)).sum();

    if let Some(total) = world.reduce(&partial, &op::Sum, 0)? {
        println!("sum of squares 1..={n} = {total}");
    }

    // The same total on every rank, e.g. to decide together whether to stop.
    let everywhere = world.allreduce(&partial, &op::Sum)?;
    let agree = world.allreduce(&everywhere, &op::Max)? == world.allreduce(&everywhere, &op::Min)?;
    if world.rank() == 0 {
        println!("allreduce gave every rank the same total: {agree}");
    }
    world.finalize()
}
