//! Broadcast latency over all ranks, printed like the OSU micro-benchmark
//! `osu_bcast`: an `f32` vector from rank 0, the average over ranks of each
//! rank's time per call.
//!
//! Run: `spmdrun -n 8 target/release/examples/osu_bcast [max-bytes]
//! [min-bytes] [iterations]`

mod common;

fn main() -> Result<(), spmd::Error> {
    let world = spmd::init()?;
    common::collective::sweep(&world, "broadcast", (1, 1), |_, buf| world.broadcast_into(buf, 0))?;
    world.finalize()
}
