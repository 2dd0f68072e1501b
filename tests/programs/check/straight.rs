//! Receives from one named rank, which over shared memory may take the
//! peer's next message straight out of its fastbox (`progress/straight.rs`),
//! checked against everything that must come first: a message of another
//! tag ahead of it, a receive posted earlier, a message already queued, a
//! receive of the wrong type or too small, and long streams that go
//! between the fastboxes and the ring. Each rank sends to the next rank
//! and receives from the one before.

use spmd::{Communicator, Error, Match, Request};

pub fn run(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    if n < 2 {
        return Ok(());
    }
    let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
    tags_out_of_order(world, next, prev)?;
    posted_receive_first(world, next, prev)?;
    queued_message_first(world, next, prev)?;
    wrong_type_and_short_buffer(world, next, prev)?;
    streams(world, next, prev)?;
    world.barrier()?;
    if me == 0 {
        println!("ok receives from one rank: tags out of order, posted and queued first, refusals, streams");
    }
    Ok(())
}

/// Tags 1, 2, 3, 1, 2, 3 sent; taken as 3, 1, 3, 2, 1, 2.
fn tags_out_of_order(world: &Communicator, next: usize, prev: usize) -> Result<(), Error> {
    for (i, tag) in [1u32, 2, 3, 1, 2, 3].into_iter().enumerate() {
        world.send_slice_with_tag(&[tag * 100 + i as u32 / 3], next, tag)?;
    }
    for (tag, want) in [(3u32, 300u32), (1, 100), (3, 301), (2, 200), (1, 101), (2, 201)] {
        let mut got = [0u32];
        let status = world.receive_into_with_tag(&mut got, prev, tag)?;
        assert_eq!((got[0], status.tag(), status.source()), (want, tag, prev), "tag {tag}");
    }
    Ok(())
}

/// An immediate receive for tag 5 posted before a blocking receive of any
/// tag from the same rank gets the tag-5 message, though it is the first to
/// arrive; the blocking receive gets the tag-6 one sent after it.
fn posted_receive_first(world: &Communicator, next: usize, prev: usize) -> Result<(), Error> {
    let early = world.immediate_receive_with_tag::<u64>(prev, 5)?;
    // Only now may `prev` send: tell it.
    world.send_with_tag(&(), prev, 9)?;
    world.receive_with_tag::<()>(next, 9)?;
    world.send_with_tag(&55u64, next, 5)?;
    world.send_slice_with_tag(&[66u64], next, 6)?;
    let mut got = [0u64];
    let status = world.receive_into_matching(&mut got, Match::source(prev))?;
    assert_eq!((got[0], status.tag()), (66, 6), "the blocking receive posted second");
    let (v, status) = early.wait()?;
    assert_eq!((v, status.tag()), (55, 5), "the immediate receive posted first");
    Ok(())
}

/// A message queued before the receive (a probe waited for it) is taken
/// before the ones from the same rank and tag that arrive later.
fn queued_message_first(world: &Communicator, next: usize, prev: usize) -> Result<(), Error> {
    world.send_slice_with_tag(&[1u64], next, 7)?;
    world.send_slice_with_tag(&[2u64], next, 7)?;
    world.probe(Match::source(prev).with_tag(7))?;
    world.send_with_tag(&(), prev, 9)?;
    world.receive_with_tag::<()>(next, 9)?;
    world.send_slice_with_tag(&[3u64], next, 7)?;
    // Time for the third to arrive and wait in a fastbox (the check holds
    // whenever it arrives; this only makes the receives meet it there).
    std::thread::sleep(std::time::Duration::from_millis(20));
    for want in 1..=3u64 {
        let mut got = [0u64];
        world.receive_into_with_tag(&mut got, prev, 7)?;
        assert_eq!(got[0], want, "tag 7 in the order sent");
    }
    Ok(())
}

/// A receive that cannot take the message (another type, too small a
/// buffer, a serde value of another type) leaves it for the next one.
fn wrong_type_and_short_buffer(world: &Communicator, next: usize, prev: usize) -> Result<(), Error> {
    world.send_slice_with_tag(&[7u32, 8], next, 8)?;
    world.send_slice_with_tag(&[9u32], next, 8)?;
    world.send_with_tag(&"straight".to_string(), next, 10)?;
    let mut as_f64 = [0.0f64; 4];
    assert!(matches!(
        world.receive_into_with_tag(&mut as_f64, prev, 8),
        Err(Error::FormatMismatch { .. })
    ));
    let mut one = [0u32];
    assert!(matches!(
        world.receive_into_with_tag(&mut one, prev, 8),
        Err(Error::Truncated { .. })
    ));
    let mut two = [0u32; 2];
    world.receive_into_with_tag(&mut two, prev, 8)?;
    assert_eq!(two, [7, 8]);
    assert_eq!(world.receive_vec_with_tag::<u32>(prev, 8)?, [9]);
    assert!(matches!(
        world.receive_with_tag::<u64>(prev, 10),
        Err(Error::Decode { .. })
    ));
    assert_eq!(world.receive_with_tag::<String>(prev, 10)?, "straight");
    Ok(())
}

/// Numbered messages of 8, 40, 96 and 112 bytes in turn (one fastbox, two,
/// and too long for them): in lock step, then 300 at a time, more than
/// the fastboxes hold, then as serde values.
fn streams(world: &Communicator, next: usize, prev: usize) -> Result<(), Error> {
    let message = |i: u64| vec![i; [1, 5, 12, 14][(i % 4) as usize]];
    for i in 0..3000u64 {
        world.send_slice_with_tag(&message(i), next, 11)?;
        let mut got = [0u64; 14];
        let status = world.receive_into_with_tag(&mut got, prev, 11)?;
        let want = message(i);
        assert_eq!(&got[..status.len() as usize / 8], &want[..], "lock step, message {i}");
    }
    for round in 0..3u64 {
        for i in 0..300 {
            world.send_slice_with_tag(&message(round * 300 + i), next, 12)?;
        }
        for i in 0..300 {
            let got = world.receive_vec_with_tag::<u64>(prev, 12)?;
            assert_eq!(got, message(round * 300 + i), "round {round}, message {i}");
        }
    }
    for i in 0..1000u64 {
        world.send_with_tag(&(i, i * 3), next, 13)?;
        let got: (u64, u64) = world.receive_with_tag(prev, 13)?;
        assert_eq!(got, (i, i * 3), "serde message {i}");
    }
    Ok(())
}
