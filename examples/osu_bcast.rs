//! Broadcast latency over all ranks, printed like the OSU micro-benchmark
//! `osu_bcast`: an `f32` vector from rank 0, the average over ranks of each
//! rank's time per call.
//!
//! Run: `spmdrun -n 8 target/release/examples/osu_bcast [max-bytes]
//! [min-bytes] [iterations]`

mod common;

use spmd::Communicator;

fn main() -> Result<(), spmd::Error> {
    let job = spmd::init()?;
    // BENCH_ON=dup or reversed runs it on a communicator made from the
    // world (see common/mod.rs).
    let on = common::bench_on(&job)?;
    let world: &Communicator = on.as_ref().unwrap_or(&job);
    common::collective::sweep(world, "broadcast", (1, 1), |_, buf| world.broadcast_into(buf, 0))?;
    drop(on);
    job.finalize()
}
