//! The loop of the OSU collective benchmarks: for each size from
//! `min-bytes` to `max-bytes` (arguments 1 and 2; `iterations`, argument 3,
//! overrides the OSU counts), times a collective on `f32` vectors and
//! prints the average over ranks of each rank's time per call.

use spmd::{Communicator, Error, op};

/// Runs the sweep for the collective `call(send, recv)`, titled `what`;
/// `send` and `recv` are `parts.0` and `parts.1` times the size in the
/// first column ((1, 1) for reductions, (1, ranks) for an allgather,
/// (ranks, ranks) for an alltoall).
pub fn sweep(
    world: &Communicator,
    what: &str,
    parts: (usize, usize),
    mut call: impl FnMut(&[f32], &mut [f32]) -> Result<(), Error>,
) -> Result<(), Error> {
    let max: usize = super::arg(world, 1, "max-bytes", 1 << 20);
    let min = super::arg(world, 2, "min-bytes", 4usize).max(4);
    let fixed_iterations = Some(super::arg(world, 3, "iterations", 0usize)).filter(|n| *n > 0);
    if world.rank() == 0 {
        println!("# spmd {what} latency test ({} ranks)", world.size());
        println!("{:<10}{:>20}", "# Size", "Avg Latency(us)");
    }
    let mut size = min;
    while size <= max {
        let n = size / 4;
        let send = vec![1.0f32; n * parts.0];
        let mut recv = vec![0.0f32; n * parts.1];
        let (warmup, iters) = super::repeated(
            world,
            match fixed_iterations {
                Some(n) => (n / 10, n.max(1)),
                None if size > 8192 => (10, 100),
                None => (200, 2000),
            },
        );
        world.barrier()?;
        let mut start = 0.0;
        for i in 0..warmup + iters {
            if i == warmup {
                start = spmd::wtime();
            }
            call(&send, &mut recv)?;
        }
        let mine = (spmd::wtime() - start) * 1e6 / iters as f64;
        let total = world.reduce(&mine, &op::Sum, 0)?;
        if let Some(total) = total {
            println!("{size:<10}{:>20.2}", total / world.size() as f64);
        }
        size *= 2;
    }
    Ok(())
}
