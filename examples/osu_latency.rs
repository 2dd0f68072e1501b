//! Ping-pong latency between ranks 0 and 1, printed like the OSU
//! micro-benchmark `osu_latency`: one-way time per message size.
//!
//! Run: `spmdrun -n 2 target/release/examples/osu_latency [max-bytes] [serde]`
//!
//! With `serde`, the message is a `Vec<f64>` sent with `send` and received
//! with `receive` (serialized), instead of a byte slice sent raw; sizes are
//! then multiples of 8 bytes.

mod common;

use spmd::Communicator;

fn iterations(size: usize) -> (usize, usize) {
    // (warm-up, timed), fewer for large messages as OSU does.
    if size > 8192 { (10, 100) } else { (1000, 10000) }
}

fn main() -> Result<(), spmd::Error> {
    let job = spmd::init()?;
    // BENCH_ON=dup or reversed runs it on a communicator made from the
    // world (see common/mod.rs).
    let on = common::bench_on(&job)?;
    let world: &Communicator = on.as_ref().unwrap_or(&job);
    let max: usize = common::arg(world, 1, "max-bytes", 4 << 20);
    let serde = match std::env::args().nth(2).as_deref() {
        None => false,
        Some("serde") => true,
        Some(other) => world.abort_with_message(
            2,
            &format!("osu_latency: the second argument may only be \"serde\", got {other:?}"),
        ),
    };
    if world.size() < 2 {
        eprintln!("osu_latency needs at least 2 ranks");
        world.abort(1);
    }
    if world.rank() == 0 {
        let how = if serde { "serde Vec<f64>" } else { "raw bytes" };
        println!("# spmd latency test ({} ranks, {how})", world.size());
        println!("{:<10}{:>20}", "# Size", "Latency (us)");
    }
    let mut buf = vec![0u8; max.max(1)];
    let mut size = if serde { 8 } else { 0 };
    loop {
        let lat = if serde {
            ping_pong_serde(world, size / 8, common::repeated(world, iterations(size)))?
        } else {
            ping_pong(world, &mut buf[..size], common::repeated(world, iterations(size)))?
        };
        if world.rank() == 0 {
            println!("{size:<10}{lat:>20.2}");
        }
        if size >= max {
            break;
        }
        size = if size == 0 { 1 } else { size * 2 };
    }
    drop(on);
    job.finalize()
}

/// Runs `round` (one message there and back) `warmup` times untimed and
/// `iters` times timed; returns the one-way time in microseconds.
fn timed(
    world: &Communicator,
    (warmup, iters): (usize, usize),
    mut round: impl FnMut() -> Result<(), spmd::Error>,
) -> Result<f64, spmd::Error> {
    world.barrier()?;
    let mut start = 0.0;
    for i in 0..warmup + iters {
        if i == warmup {
            start = spmd::wtime();
        }
        round()?;
    }
    Ok((spmd::wtime() - start) * 1e6 / (2.0 * iters as f64))
}

fn ping_pong(world: &Communicator, buf: &mut [u8], counts: (usize, usize)) -> Result<f64, spmd::Error> {
    timed(world, counts, || match world.rank() {
        0 => {
            world.send_slice(buf, 1)?;
            world.receive_into(buf, 1).map(|_| ())
        }
        1 => {
            world.receive_into(buf, 0)?;
            world.send_slice(buf, 0)
        }
        _ => Ok(()),
    })
}

fn ping_pong_serde(world: &Communicator, len: usize, counts: (usize, usize)) -> Result<f64, spmd::Error> {
    let mut v = vec![1.5f64; len];
    timed(world, counts, || match world.rank() {
        0 => {
            world.send(&v, 1)?;
            v = world.receive(1)?;
            Ok(())
        }
        1 => {
            v = world.receive(0)?;
            world.send(&v, 0)
        }
        _ => Ok(()),
    })
}
