//! The loop of the OSU streaming benchmarks (`osu_bw`, `osu_mbw_mr`): a
//! sender posts a window of 64 non-blocking sends to its partner, which has
//! its 64 receives posted in advance, then waits for the partner's
//! acknowledgement; repeated. Scoped requests lend the buffers, as MPI's
//! do: no copies beyond the transport's own. The list of a window's
//! requests is made with room for the window, as OSU's array of requests
//! is: one allocation a window, not a list grown five times.

use spmd::{Communicator, Error};

/// Sends in flight at once.
pub const WINDOW: usize = 64;

/// The OSU (warm-up, timed) windows for messages of `size` bytes.
pub fn iterations(size: usize) -> (usize, usize) {
    if size > 8192 { (2, 20) } else { (10, 100) }
}

/// Streams windows of `size`-byte messages to `partner` (if `sending`) or
/// from it; returns the seconds the timed windows took.
pub fn stream(
    world: &Communicator,
    size: usize,
    partner: usize,
    sending: bool,
    (warmup, iters): (usize, usize),
) -> Result<f64, Error> {
    let data = vec![1u8; size];
    let mut bufs = vec![vec![0u8; size]; WINDOW];
    world.barrier()?;
    let mut start = 0.0;
    for i in 0..warmup + iters {
        if i == warmup {
            start = spmd::wtime();
        }
        if sending {
            world.scope(|s| {
                let mut sends = Vec::with_capacity(WINDOW);
                for _ in 0..WINDOW {
                    sends.push(s.immediate_send_slice_with_tag(&data, partner, 100)?);
                }
                spmd::wait_all(sends).map(|_| ())
            })?;
            world.receive_with_tag::<()>(partner, 101)?;
        } else {
            world.scope(|s| {
                let mut receives = Vec::with_capacity(WINDOW);
                for buf in bufs.iter_mut() {
                    receives.push(s.immediate_receive_into_with_tag(buf, partner, 100)?);
                }
                spmd::wait_all(receives).map(|_| ())
            })?;
            world.send_with_tag(&(), partner, 101)?;
        }
    }
    Ok(spmd::wtime() - start)
}
