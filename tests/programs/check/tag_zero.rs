//! The calls that receive "with tag 0" (blocking, `try_`, `_timeout`,
//! immediate, scoped, `sendrecv`; serde values and plain numbers) take the
//! message of tag 0, and leave one of another tag queued.

use spmd::{Communicator, Error, Match, Request};

/// Every call that receives "with tag 0" takes the message of tag 0, not
/// one of another tag sent before it from the same rank.
pub fn run(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    let (to, from) = ((me + 1) % n, (me + n - 1) % n);
    let calls = [
        "receive",
        "receive_timeout",
        "try_receive",
        "immediate_receive",
        "sendrecv",
        "receive_into",
        "receive_vec",
        "immediate_receive_vec",
        "a scope's immediate_receive_into",
    ];
    for (k, call) in calls.iter().enumerate() {
        let (zero, other) = (k as u64, 1000 + k as u64);
        let serde = k < 5;
        if serde {
            world.send_with_tag(&other, to, 7)?;
        } else {
            world.send_slice_with_tag(&[other], to, 7)?;
        }
        let got = match k {
            0 => {
                world.send(&zero, to)?;
                world.receive::<u64>(from)?
            }
            1 => {
                world.send(&zero, to)?;
                world.receive_timeout::<u64>(from, std::time::Duration::from_secs(60))?
            }
            2 => {
                world.send(&zero, to)?;
                loop {
                    if let Some(v) = world.try_receive::<u64>(from)? {
                        break v;
                    }
                    std::thread::yield_now();
                }
            }
            3 => {
                let req = world.immediate_receive::<u64>(from)?;
                world.send(&zero, to)?;
                req.wait()?.0
            }
            4 => world.sendrecv::<u64, u64>(&zero, to, from)?,
            5 => {
                world.send_slice(&[zero], to)?;
                let mut buf = [0u64; 1];
                world.receive_into(&mut buf, from)?;
                buf[0]
            }
            6 => {
                world.send_slice(&[zero], to)?;
                world.receive_vec::<u64>(from)?[0]
            }
            7 => {
                let req = world.immediate_receive_vec::<u64>(from)?;
                world.send_slice(&[zero], to)?;
                req.wait()?.0[0]
            }
            _ => {
                let mut buf = [0u64; 1];
                world.scope(|s| {
                    let req = s.immediate_receive_into(&mut buf, from)?;
                    world.send_slice(&[zero], to)?;
                    req.wait().map(|_| ())
                })?;
                buf[0]
            }
        };
        assert_eq!(got, zero, "{call} from rank {from} took the message of tag 7");
        let left = if serde {
            world.receive_with_tag::<u64>(from, 7)?
        } else {
            world.receive_vec_matching::<u64>(Match::source(from).with_tag(7))?.0[0]
        };
        assert_eq!(left, other, "{call}: the message of tag 7 from rank {from}");
    }
    world.barrier()?;
    if me == 0 {
        println!("ok every receive of tag 0 leaves other tags queued");
    }
    Ok(())
}
