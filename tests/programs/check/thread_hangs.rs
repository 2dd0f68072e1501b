//! Threads and the ends of a job: `spmd-check thread-hang CASE`.
//!
//! - `computes`: a correct job in which rank 1's main thread waits for what
//!   its other thread sends after computing a while before its first spmd
//!   call: not a deadlock, whatever `--hang-report` says.
//! - `deadlock`: both ranks' main threads wait for each other, after a
//!   thread that used spmd has ended: a real deadlock, to be reported.
//! - `timed`: rank 0's main thread waits for what rank 1 sends once rank
//!   0's other thread, blocked later in a receive with a 3 s timeout, has
//!   timed out: a correct job, as the timeout is the way on.
//! - `joined`: each rank's main thread joins a thread that waits for a
//!   message never sent: blocked, but with a thread outside spmd (in
//!   `join`), which the report says; no deadlock is declared.
//! - `finalize`: one thread finalizes while another waits in a receive on a
//!   duplicate: the receive ends with `Error::Finalized` (or `PeerGone`,
//!   if the peer finalized first).

use std::time::{Duration, Instant};

use spmd::{Error, World};

pub fn run(world: World, case: &str) -> Result<(), Error> {
    assert_eq!(world.size(), 2, "thread-hang runs on 2 ranks");
    let dup = world.dup()?;
    let (rank, other) = (world.rank(), 1 - world.rank());
    match case {
        "computes" => {
            if rank == 1 {
                let worker = std::thread::spawn(move || {
                    let value = compute(Duration::from_secs(3));
                    dup.send(&value, 0)
                });
                let back: u64 = world.receive(0)?;
                worker.join().expect("no panic")?;
                assert_ne!(back, 0);
            } else {
                let value: u64 = dup.receive(1)?;
                world.send(&value, 1)?;
            }
        }
        "deadlock" => {
            let worker = std::thread::spawn(move || -> Result<(), Error> {
                dup.barrier()?;
                std::thread::sleep(Duration::from_millis(300));
                Ok(())
            });
            // Never sent: the launcher ends the job here.
            let _: u64 = world.receive(other)?;
            worker.join().expect("no panic")?;
            panic!("a receive of a message never sent returned");
        }
        "timed" => {
            if rank == 0 {
                let timed = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(50));
                    let outcome = dup.receive_timeout::<u64>(1, Duration::from_secs(3));
                    assert!(matches!(outcome, Err(Error::Timeout { .. })), "{outcome:?}");
                    dup.send(&7u64, 1)
                });
                assert_eq!(world.receive::<u64>(1)?, 8);
                timed.join().expect("no panic")?;
            } else {
                let value: u64 = dup.receive(0)?;
                world.send(&(value + 1), 0)?;
            }
        }
        "joined" => {
            let outcome = std::thread::scope(|t| t.spawn(move || dup.receive::<u64>(other)).join());
            panic!("a receive of a message never sent returned {outcome:?}");
        }
        "finalize" => {
            let worker = std::thread::spawn(move || dup.receive::<u64>(other));
            std::thread::sleep(Duration::from_millis(200));
            world.finalize()?;
            let outcome = worker.join().expect("no panic");
            // Or the peer finalized first, and is gone.
            assert!(
                matches!(outcome, Err(Error::Finalized | Error::PeerGone { .. })),
                "{outcome:?}"
            );
            if rank == 0 {
                println!("thread-hang finalize: all checks passed");
            }
            return Ok(());
        }
        other => panic!("unknown thread-hang case {other:?}"),
    }
    if rank == 0 {
        println!("thread-hang {case}: all checks passed");
    }
    world.finalize()
}

/// Busy work for `time`, outside spmd; never 0.
fn compute(time: Duration) -> u64 {
    let start = Instant::now();
    let mut x = 1u64;
    while start.elapsed() < time {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    }
    x | 1
}
