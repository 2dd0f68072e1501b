//! Alltoall latency over all ranks, printed like the OSU micro-benchmark
//! `osu_alltoall`: every rank sends an `f32` vector of the size in the
//! first column to every rank; the average over ranks of each rank's time
//! per call.
//!
//! Run: `spmdrun -n 8 target/release/examples/osu_alltoall [max-bytes]
//! [min-bytes] [iterations]`

mod common;

use spmd::Communicator;

fn main() -> Result<(), spmd::Error> {
    let job = spmd::init()?;
    // BENCH_ON=dup or reversed runs it on a communicator made from the
    // world (see common/mod.rs).
    let on = common::bench_on(&job)?;
    let world: &Communicator = on.as_ref().unwrap_or(&job);
    let n = world.size();
    common::collective::sweep(world, "alltoall", (n, n), |send, recv| world.alltoall_into(send, recv))?;
    drop(on);
    job.finalize()
}
