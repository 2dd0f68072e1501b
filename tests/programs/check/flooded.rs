//! A rank flooded with messages while it waits in a barrier still notices
//! a rank that has left: `spmd-check hang flooded-barrier`.

use std::time::Duration;

use spmd::{Error, World};

/// The tag of rank 0's word to the flooders that it is done.
const STOP: u32 = 99;

/// The last rank finalizes after 300 ms; the ranks between it and rank 0
/// send rank 0 small messages without a pause until rank 0 tells them to
/// stop; rank 0 waits in a barrier meanwhile, and must fail with
/// `PeerGone` naming the last rank while the flood goes on.
pub fn barrier(world: &World) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    assert!(n >= 3, "flooded-barrier needs a rank that floods");
    world.barrier()?;
    if me == n - 1 {
        std::thread::sleep(Duration::from_millis(300));
        return Ok(());
    }
    if me > 0 {
        let part = [7u8; 64];
        loop {
            world.send_slice(&part, 0)?;
            if world.try_receive_with_tag::<u8>(0, STOP)?.is_some() {
                return Ok(());
            }
        }
    }
    match world.barrier() {
        Err(Error::PeerGone { rank }) if rank == n - 1 => {}
        other => panic!("rank 0, flooded in a barrier that rank {} left, got {other:?}", n - 1),
    }
    for flooder in 1..n - 1 {
        world.send_with_tag(&1u8, flooder, STOP)?;
    }
    println!("hang flooded-barrier: all checks passed");
    Ok(())
}
