//! A message that reaches a rank while it finalizes, then a deadlock among
//! the other ranks: `spmd-check deadlock-after-finalize` on 3 ranks. The
//! finalized rank's status page must count that message, or the job's
//! totals of messages sent and arrived never match again and spmdrun
//! cannot call the deadlock one.

use std::time::Duration;

use spmd::{Error, World};

/// Rank 0 sends to rank 1 and waits for its answer (long enough to sleep,
/// so that its status page holds its counts), then finalizes; rank 1
/// answers, sends one more message (which arrives during rank 0's
/// finalize, and is never received), and waits on rank 2, which waits on
/// rank 1.
pub fn deadlock(world: World) -> Result<(), Error> {
    assert_eq!(world.size(), 3, "deadlock-after-finalize runs on 3 ranks");
    match world.rank() {
        0 => {
            world.send_with_tag(&(), 1, 4)?;
            world.receive_with_tag::<()>(1, 6)?;
            world.finalize()
        }
        1 => {
            world.receive_with_tag::<()>(0, 4)?;
            std::thread::sleep(Duration::from_millis(300));
            world.send_with_tag(&(), 0, 6)?;
            world.send_with_tag(&5u64, 0, 5)?;
            let never: u64 = world.receive_with_tag(2, 7)?;
            panic!("rank 1 received {never} from rank 2, which sends nothing");
        }
        _ => {
            let never: u64 = world.receive_with_tag(1, 7)?;
            panic!("rank 2 received {never} from rank 1, which sends nothing");
        }
    }
}
