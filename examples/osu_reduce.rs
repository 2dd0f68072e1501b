//! Reduce latency over all ranks, printed like the OSU micro-benchmark
//! `osu_reduce`: sums of `f32` vectors to rank 0, the average over ranks of
//! each rank's time per call.
//!
//! Run: `spmdrun -n 8 target/release/examples/osu_reduce [max-bytes]
//! [min-bytes] [iterations]`

mod common;

use spmd::op;

fn main() -> Result<(), spmd::Error> {
    let world = spmd::init()?;
    common::collective::sweep(&world, "reduce", (1, 1), |send, recv| {
        world.reduce_into(send, recv, &op::Sum, 0)
    })?;
    world.finalize()
}
