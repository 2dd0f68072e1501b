//! Streaming bandwidth from rank 0 to rank 1, printed like the OSU
//! micro-benchmark `osu_bw`: a window of 64 non-blocking sends against 64
//! receives posted in advance (scoped requests, which lend the buffers as
//! MPI's do), then an acknowledgement, repeated.
//!
//! Run: `spmdrun -n 2 target/release/examples/osu_bw [max-bytes]`

mod common;

use spmd::Communicator;

const WINDOW: usize = 64;

fn iterations(size: usize) -> (usize, usize) {
    if size > 8192 { (2, 20) } else { (10, 100) }
}

fn main() -> Result<(), spmd::Error> {
    let job = spmd::init()?;
    // BENCH_ON=dup or reversed runs it on a communicator made from the
    // world (see common/mod.rs).
    let on = common::bench_on(&job)?;
    let world: &Communicator = on.as_ref().unwrap_or(&job);
    let max: usize = common::arg(world, 1, "max-bytes", 4 << 20);
    if world.size() < 2 {
        eprintln!("osu_bw needs at least 2 ranks");
        world.abort(1);
    }
    if world.rank() == 0 {
        println!("# spmd bandwidth test ({} ranks)", world.size());
        println!("{:<10}{:>20}", "# Size", "Bandwidth (MB/s)");
    }
    let mut size = 1;
    while size <= max {
        let mb_s = window(world, size, common::repeated(world, iterations(size)))?;
        if world.rank() == 0 {
            println!("{size:<10}{mb_s:>20.2}");
        }
        size *= 2;
    }
    drop(on);
    job.finalize()
}

fn window(world: &Communicator, size: usize, (warmup, iters): (usize, usize)) -> Result<f64, spmd::Error> {
    let data = vec![1u8; size];
    let mut bufs = vec![vec![0u8; size]; WINDOW];
    world.barrier()?;
    let mut start = 0.0;
    for i in 0..warmup + iters {
        if i == warmup {
            start = spmd::wtime();
        }
        // Scoped requests lend the buffers: no copies beyond the rings.
        match world.rank() {
            0 => {
                world.scope(|s| {
                    let sends: Vec<_> = (0..WINDOW)
                        .map(|_| s.immediate_send_slice_with_tag(&data, 1, 100))
                        .collect::<Result<_, _>>()?;
                    spmd::wait_all(sends).map(|_| ())
                })?;
                world.receive_with_tag::<()>(1, 101)?;
            }
            1 => {
                world.scope(|s| {
                    let receives: Vec<_> = bufs
                        .iter_mut()
                        .map(|buf| s.immediate_receive_into_with_tag(buf, 0, 100))
                        .collect::<Result<_, _>>()?;
                    spmd::wait_all(receives).map(|_| ())
                })?;
                world.send_with_tag(&(), 0, 101)?;
            }
            _ => {}
        }
    }
    let seconds = spmd::wtime() - start;
    Ok((size * WINDOW * iters) as f64 / seconds / 1e6)
}
