//! Allgather latency over all ranks, printed like the OSU micro-benchmark
//! `osu_allgather`: every rank's `f32` vector (of the size in the first
//! column) to every rank, the average over ranks of each rank's time per
//! call.
//!
//! Run: `spmdrun -n 8 target/release/examples/osu_allgather [max-bytes]
//! [min-bytes] [iterations]`

mod common;

use spmd::Communicator;

fn main() -> Result<(), spmd::Error> {
    let job = spmd::init()?;
    // BENCH_ON=dup or reversed runs it on a communicator made from the
    // world (see common/mod.rs).
    let on = common::bench_on(&job)?;
    let world: &Communicator = on.as_ref().unwrap_or(&job);
    common::collective::sweep(world, "allgather", (1, world.size()), |send, recv| {
        world.allgather_into(send, recv)
    })?;
    drop(on);
    job.finalize()
}
