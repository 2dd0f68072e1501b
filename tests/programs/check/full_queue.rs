//! Waits that meet a full queue: a rank that holds more unreceived bytes
//! from a peer than it keeps stops reading that peer, and every way of
//! waiting for that peer must still read it: `spmd-check full-queue CASE`.

use spmd::{Error, Match, World};

/// More than a rank keeps queued from one peer (8 MiB).
const OVER_LIMIT: usize = 24 << 20;

pub fn run(world: &World, case: &str) -> Result<(), Error> {
    match case {
        "shift" => shift(world)?,
        "landing" => landing(world)?,
        "probe" => probe(world, false)?,
        "try-probe" => probe(world, true)?,
        "finalize" => return finalize(world),
        "cycle" => cycle(world)?,
        other => panic!("unknown full-queue case {other:?}"),
    }
    if world.rank() == 0 {
        println!("full-queue {case}: all checks passed");
    }
    Ok(())
}

/// A program that counts on unlimited buffering: rank 0 sends rank 1 more
/// than it keeps before the message rank 2 waits for, and rank 1 first
/// waits for rank 2. Rank 0's send waits for rank 1 to read it, which it
/// never does: a deadlock, which spmdrun's hang report names (MPI may hang
/// here too: a standard send may wait for its receive).
fn cycle(world: &World) -> Result<(), Error> {
    const PIECES: usize = 2 * OVER_LIMIT / PIECE;
    const PIECE: usize = 16 << 10;
    match world.rank() {
        0 => {
            for _ in 0..PIECES {
                world.send_slice_with_tag(&pattern(0, PIECE), 1, 1)?;
            }
            world.send(&1u8, 2)?;
        }
        1 => {
            let go: u8 = world.receive_with_tag(2, 2)?;
            for _ in 0..PIECES {
                world.receive_vec_matching::<u8>(Match::source(0).with_tag(1))?;
            }
            println!("rank 1 got {go} and every piece");
        }
        2 => {
            let go: u8 = world.receive(0)?;
            world.send_with_tag(&go, 1, 2)?;
        }
        _ => {}
    }
    Ok(())
}

/// `len` bytes that differ by `rank` and by position (a period of 251
/// bytes, copied block by block: generating them byte by byte would cost
/// more than sending them).
fn pattern(rank: usize, len: usize) -> Vec<u8> {
    let block: Vec<u8> = (0..251u32).map(|i| i as u8 ^ rank as u8).collect();
    let mut out = vec![0u8; len];
    for chunk in out.chunks_mut(block.len()) {
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
    out
}

/// Every rank leaves a large message for the next one unreceived, then
/// sends it another with a blocking send and only then receives: each
/// waits in a send to a rank that holds a full queue from it and also
/// waits in a send.
fn shift(world: &World) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    let (left, right) = ((me + n - 1) % n, (me + 1) % n);
    let first = pattern(me, OVER_LIMIT);
    drop(world.immediate_send_slice_with_tag(&first, right, 1)?);
    world.send_slice_with_tag(&pattern(me + 1, OVER_LIMIT), right, 2)?;
    let mut got = vec![0u8; OVER_LIMIT];
    world.receive_into_with_tag(&mut got, left, 2)?;
    assert!(got == pattern(left + 1, OVER_LIMIT), "the message sent blocking");
    world.receive_into_with_tag(&mut got, left, 1)?;
    assert!(got == pattern(left, OVER_LIMIT), "the message left queued");
    Ok(())
}

/// Rank 1 queues a large message from rank 0 without receiving it, then
/// receives into its own buffer a message large enough to arrive in
/// pieces: the pieces after the first must still be read.
fn landing(world: &World) -> Result<(), Error> {
    match world.rank() {
        0 => {
            world.send_slice_with_tag(&pattern(0, OVER_LIMIT), 1, 1)?;
            world.send_with_tag(&"queued", 1, 9)?;
            let _: String = world.receive_with_tag(1, 8)?;
            world.send_slice_with_tag(&pattern(7, 16 << 20), 1, 2)?;
        }
        1 => {
            let _: String = world.receive_with_tag(0, 9)?;
            world.send_with_tag(&"receiving", 0, 8)?;
            let mut buf = vec![0u8; 16 << 20];
            world.receive_into_with_tag(&mut buf, 0, 2)?;
            assert!(buf == pattern(7, 16 << 20), "the landed message");
            let queued: Vec<u8> = world.receive_vec_matching(Match::source(0).with_tag(1))?.0;
            assert!(queued == pattern(0, OVER_LIMIT), "the queued message");
        }
        _ => {}
    }
    Ok(())
}

/// Rank 1 queues a large message from rank 0, then probes (waiting, or
/// polling with `try_probe`) for one rank 0 sends only after the probe
/// has begun.
fn probe(world: &World, polling: bool) -> Result<(), Error> {
    match world.rank() {
        0 => {
            world.send_slice_with_tag(&pattern(0, OVER_LIMIT), 1, 1)?;
            world.send_with_tag(&"queued", 1, 9)?;
            let _: String = world.receive_with_tag(1, 8)?;
            world.send_with_tag(&42u64, 1, 2)?;
        }
        1 => {
            let _: String = world.receive_with_tag(0, 9)?;
            world.send_with_tag(&"probing", 0, 8)?;
            let wanted = Match::source(0).with_tag(2);
            let status = if polling {
                loop {
                    if let Some(s) = world.try_probe(wanted)? {
                        break s;
                    }
                }
            } else {
                world.probe(wanted)?
            };
            assert_eq!(status.tag(), 2);
            let answer: u64 = world.receive_with_tag(0, 2)?;
            assert_eq!(answer, 42);
            let queued: Vec<u8> = world.receive_vec_matching(Match::source(0).with_tag(1))?.0;
            assert!(queued == pattern(0, OVER_LIMIT), "the queued message");
        }
        _ => {}
    }
    Ok(())
}

/// Every rank leaves two large messages to the next one unreceived and
/// finalizes: finalize writes out the second while the next rank, also
/// finalizing, already holds the first.
fn finalize(world: &World) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    let right = (me + 1) % n;
    let data = pattern(me, OVER_LIMIT);
    drop(world.immediate_send_slice_with_tag(&data, right, 1)?);
    drop(world.immediate_send_slice_with_tag(&data, right, 2)?);
    if me == 0 {
        println!("full-queue finalize: all checks passed");
    }
    Ok(())
}
