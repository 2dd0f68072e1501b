//! A rank flooded with messages while it waits: in a barrier, it still
//! notices a rank that has left (`spmd-check hang flooded-barrier`); kept
//! busy by a steady stream, it is named as waiting in the hang report, not
//! as computing, and a deadlock after it is found (`spmd-check hang
//! busy-wait barrier|receive|any|deadlock|any-deadlock|mixed-deadlock`).

use std::time::{Duration, Instant};

use spmd::{Error, Request, World};

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

/// How long rank 1 keeps rank 0 busy.
const BUSY_FOR: Duration = Duration::from_secs(3);

/// Rank 1 sends rank 0 a small message every 10 microseconds for
/// [`BUSY_FOR`] (a steady stream, faster than a wait polls, and far below
/// what a queue holds), while rank 0 waits in a barrier (`barrier`) or
/// for a message of another tag (`receive`, `deadlock`; `any`: a request
/// for it, in [`spmd::wait_any`]; `any-deadlock` as `deadlock`). Rank 0 keeps
/// finding messages to move, and sleeps between them if at all;
/// spmdrun's hang report must name its wait all the same, as busy. Then
/// rank 1 sends the count with that tag, and rank 0 receives the stream,
/// in order; or (`deadlock`) rank 1 waits for a message from rank 0 that
/// never comes, and spmdrun must find the deadlock once the stream ends
/// (`mixed-deadlock`: rank 0 waits in `wait_any` on receives of two
/// tags, a wait the page cannot name by one receive).
pub fn busy_wait(world: &World, on: &str) -> Result<(), Error> {
    let me = world.rank();
    assert!(world.size() == 2, "busy-wait runs on 2 ranks");
    assert!(
        [
            "barrier",
            "receive",
            "any",
            "deadlock",
            "any-deadlock",
            "mixed-deadlock"
        ]
        .contains(&on),
        "busy-wait barrier, receive, any, deadlock, any-deadlock or mixed-deadlock, not {on:?}"
    );
    world.barrier()?;
    if me == 1 {
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < BUSY_FOR {
            world.send_with_tag(&sent, 0, 3)?;
            sent += 1;
            let pause = Instant::now();
            while pause.elapsed() < Duration::from_micros(10) {
                std::hint::spin_loop();
            }
        }
        match on {
            "barrier" => world.barrier()?,
            "deadlock" | "any-deadlock" | "mixed-deadlock" => {
                let never: u64 = world.receive_with_tag(0, 7)?;
                panic!("rank 1 received {never} from rank 0, which sends nothing");
            }
            _ => {}
        }
        return world.send_with_tag(&sent, 0, 7);
    }
    if on == "barrier" {
        world.barrier()?;
    }
    if on == "mixed-deadlock" {
        let mut count = world.immediate_receive_with_tag::<u64>(1, 7)?;
        let mut other = world.immediate_receive_with_tag::<u64>(1, 8)?;
        let first = spmd::wait_any(&mut [&mut count, &mut other])?;
        panic!("rank 0's wait on two receives that never come ended with request {first}");
    }
    let sent: u64 = if on.starts_with("any") {
        let mut count = world.immediate_receive_with_tag::<u64>(1, 7)?;
        assert_eq!(spmd::wait_any(&mut [&mut count])?, 0, "the one request");
        count.wait()?.0
    } else {
        world.receive_with_tag(1, 7)?
    };
    for k in 0..sent {
        assert_eq!(world.receive_with_tag::<u64>(1, 3)?, k, "the stream's order");
    }
    assert!(sent > 0, "rank 1 sent nothing");
    println!("hang busy-wait {on}: {sent} messages, all checks passed");
    Ok(())
}
