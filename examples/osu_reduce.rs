//! Reduce latency over all ranks, printed like the OSU micro-benchmark
//! `osu_reduce`: sums of `f32` vectors to rank 0, the average over ranks of
//! each rank's time per call.
//!
//! Run: `spmdrun -n 8 target/release/examples/osu_reduce [max-bytes]
//! [min-bytes] [iterations]`

mod common;

use spmd::{Communicator, op};

fn main() -> Result<(), spmd::Error> {
    let job = spmd::init()?;
    // BENCH_ON=dup or reversed runs it on a communicator made from the
    // world (see common/mod.rs).
    let on = common::bench_on(&job)?;
    let world: &Communicator = on.as_ref().unwrap_or(&job);
    common::collective::sweep(world, "reduce", (1, 1), |send, recv| {
        world.reduce_into(send, recv, &op::Sum, 0)
    })?;
    drop(on);
    job.finalize()
}
