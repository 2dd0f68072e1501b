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
    common::collective::sweep(&world, "allreduce", (1, 1), |send, recv| {
        world.allreduce_into(send, recv, &op::Sum)
    })?;
    world.finalize()
}
