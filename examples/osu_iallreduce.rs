//! Immediate (non-blocking) allreduce latency, printed like the OSU
//! micro-benchmark `osu_iallreduce`'s pure communication time: each call
//! is `immediate_allreduce_into` and a `wait` at once, sums of `f32`
//! vectors, the average over ranks of each rank's time per call.
//!
//! Run: `spmdrun -n 8 target/release/examples/osu_iallreduce [max-bytes]
//! [min-bytes] [iterations]`

mod common;

use spmd::{Communicator, Request, op};

fn main() -> Result<(), spmd::Error> {
    let job = spmd::init()?;
    // BENCH_ON=dup or reversed runs it on a communicator made from the
    // world (see common/mod.rs).
    let on = common::bench_on(&job)?;
    let world: &Communicator = on.as_ref().unwrap_or(&job);
    common::collective::sweep(world, "iallreduce", (1, 1), |send, recv| {
        world.immediate_allreduce_into(send, recv, op::Sum)?.wait()
    })?;
    drop(on);
    job.finalize()
}
