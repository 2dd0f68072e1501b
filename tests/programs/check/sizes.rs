//! Messages of awkward sizes in both directions at once: empty, one byte,
//! around the shared-memory ring's size (a frame is a 32-byte header plus
//! the payload, so payloads of ring − 32 ± 1 make frames of ring ± 1), and
//! 64 MiB, which wraps a ring hundreds of times.

use spmd::{Communicator, Error, Match, Request};

/// The ring between two ranks of a job of up to 64 ranks (see the README).
const RING: usize = 1 << 20;
const HEADER: usize = 32;

fn sizes() -> Vec<usize> {
    let mut v = vec![0, 1, 2, 31, 32, 33, 4095, 4096, 4097];
    for base in [RING - HEADER, RING, 2 * RING - HEADER] {
        v.extend([base - 1, base, base + 1]);
    }
    v.push(64 << 20);
    v
}

fn pattern(len: usize, from: usize, salt: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(131) ^ from ^ salt.wrapping_mul(7)) as u8)
        .collect()
}

pub fn run(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    if n < 2 {
        return Ok(());
    }
    // Ranks pair up: 0 with 1, 2 with 3, ...; an odd last rank sits out.
    let partner = me ^ 1;
    if partner >= n {
        return world.barrier();
    }
    for (round, &len) in sizes().iter().enumerate() {
        let send = world.immediate_send_slice_with_tag(&pattern(len, me, round), partner, round as u32)?;
        let (got, status) = world.receive_vec_matching::<u8>(Match::source(partner).with_tag(round as u32))?;
        assert_eq!(status.len(), len as u64, "round {round}: length");
        assert!(
            got == pattern(len, partner, round),
            "round {round}: {len} bytes arrived corrupted"
        );
        send.wait()?;
    }
    // The same sizes received into a buffer that is waiting before the
    // message comes (it lands there directly), and into one too small.
    let mut buf = vec![0u8; 64 << 20];
    for (round, &len) in sizes().iter().enumerate() {
        let tag = 500 + round as u32;
        if me < partner {
            world.send_with_tag(&(), partner, tag)?;
            let status = world.receive_into_matching(&mut buf, Match::source(partner).with_tag(tag))?;
            assert_eq!(status.len(), len as u64, "landing round {round}: length");
            assert!(
                buf[..len] == pattern(len, partner, round)[..],
                "landing round {round}: {len} bytes corrupted"
            );
        } else {
            world.receive_with_tag::<()>(partner, tag)?;
            world.send_slice_with_tag(&pattern(len, me, round), partner, tag)?;
        }
    }
    if me < partner {
        world.send_with_tag(&(), partner, 600)?;
        let mut small = [0u64; 3];
        match world.receive_into_matching(&mut small, Match::source(partner).with_tag(601)) {
            Err(Error::Truncated {
                message_bytes: 32,
                buffer_bytes: 24,
                ..
            }) => {}
            other => panic!("4 u64 into a buffer of 3 gave {other:?}"),
        }
    } else {
        world.receive_with_tag::<()>(partner, 600)?;
        world.send_slice_with_tag(&[1u64, 2, 3, 4], partner, 601)?;
    }
    // Many middling messages queued at once, more than a ring holds.
    let burst: Vec<_> = (0..64)
        .map(|i| world.immediate_send_slice_with_tag(&pattern(40_000 + i, me, i), partner, 1000))
        .collect::<Result<_, _>>()?;
    for i in 0..64 {
        let got: Vec<u8> = world.receive_vec_matching(Match::source(partner).with_tag(1000))?.0;
        assert!(got == pattern(40_000 + i, partner, i), "burst message {i} corrupted");
    }
    spmd::wait_all(burst)?;
    mixed_stream(world, partner)?;
    world.barrier()?;
    if me == 0 {
        println!(
            "ok {} sizes, a burst and a mixed stream in both directions",
            sizes().len()
        );
    }
    Ok(())
}

/// Sizes on both sides of the small-message limits (a message's first
/// fastbox holds 16 bytes of its payload, each further one 28, and the
/// fastboxes carry 264 at most: ten boxes) and larger, so that one stream
/// switches between the ways a message can travel.
const MIXED_SIZES: [usize; 20] = [
    0, 1, 8, 16, 17, 44, 45, 64, 72, 73, 100, 101, 128, 256, 263, 264, 265, 4096, 70_000, 300_000,
];
const MIXED_COUNT: usize = 3000;

/// A stream of messages of random sizes on one tag, sent blocking or not,
/// while the receiver now and then stops taking them for a while: every
/// message must arrive whole and in the order sent.
fn mixed_stream(world: &Communicator, partner: usize) -> Result<(), Error> {
    let me = world.rank();
    let len_of = |from: usize, i: usize| {
        let mut rng = crate::rng::Rng::new((from * MIXED_COUNT + i) as u64);
        MIXED_SIZES[rng.below(MIXED_SIZES.len())]
    };
    let mut pending = Vec::new();
    let mut next = 0;
    for i in 0..MIXED_COUNT {
        let data = pattern(len_of(me, i), me, i);
        if i % 3 == 0 {
            world.send_slice_with_tag(&data, partner, 2000)?;
        } else {
            pending.push(world.immediate_send_slice_with_tag(&data, partner, 2000)?);
        }
        // Take the partner's messages in bursts, after pauses that let
        // both of its ways to this rank fill up.
        if i % 200 == 199 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            while next <= i {
                check_mixed(world, partner, next, len_of(partner, next))?;
                next += 1;
            }
        }
    }
    while next < MIXED_COUNT {
        check_mixed(world, partner, next, len_of(partner, next))?;
        next += 1;
    }
    spmd::wait_all(pending).map(|_| ())
}

fn check_mixed(world: &Communicator, partner: usize, i: usize, len: usize) -> Result<(), Error> {
    let (got, status) = world.receive_vec_matching::<u8>(Match::source(partner).with_tag(2000))?;
    assert_eq!(
        status.len(),
        len as u64,
        "mixed stream message {i}: length (out of order?)"
    );
    assert!(
        got == pattern(len, partner, i),
        "mixed stream message {i}: corrupted or out of order"
    );
    Ok(())
}
