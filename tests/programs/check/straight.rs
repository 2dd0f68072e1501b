//! Receives from one named rank, which over shared memory may take the
//! peer's next message straight out of its fastbox or out of the ring
//! (`progress/straight.rs`), checked against everything that must come
//! first: a message of another tag ahead of it, a receive posted earlier, a
//! message already queued, a receive of the wrong type or too small, and
//! long streams that go between the fastboxes, whole frames in the ring
//! and frames too long to take straight. Each check runs with messages of
//! one number (a fastbox) and of [`LONG`] numbers (a ring frame). Each rank
//! sends to the next rank and receives from the one before.

use spmd::{Communicator, Error, Match, Request};

pub fn run(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    if n < 2 {
        return Ok(());
    }
    let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
    for len in [1, LONG] {
        tags_out_of_order(world, next, prev, len)?;
        posted_receive_first(world, next, prev, len)?;
        queued_message_first(world, next, prev, len)?;
        wrong_type_and_short_buffer(world, next, prev, len)?;
    }
    streams(world, next, prev)?;
    world.barrier()?;
    if me == 0 {
        println!("ok receives from one rank: tags out of order, posted and queued first, refusals, streams");
    }
    Ok(())
}

/// The numbers in a long message: too many for the fastboxes (800 bytes
/// of `u64`), few enough for a ring frame taken straight.
const LONG: usize = 100;

/// Tags 1, 2, 3, 1, 2, 3 sent; taken as 3, 1, 3, 2, 1, 2.
fn tags_out_of_order(world: &Communicator, next: usize, prev: usize, len: usize) -> Result<(), Error> {
    for (i, tag) in [1u32, 2, 3, 1, 2, 3].into_iter().enumerate() {
        world.send_slice_with_tag(&vec![tag * 100 + i as u32 / 3; len], next, tag)?;
    }
    for (tag, want) in [(3u32, 300u32), (1, 100), (3, 301), (2, 200), (1, 101), (2, 201)] {
        let mut got = vec![0u32; len];
        let status = world.receive_into_with_tag(&mut got, prev, tag)?;
        assert_eq!(
            (status.tag(), status.source(), status.len()),
            (tag, prev, 4 * len as u64),
            "tag {tag}"
        );
        assert_eq!(got, vec![want; len], "tag {tag}");
    }
    Ok(())
}

/// An immediate receive for tag 5 posted before a blocking receive of any
/// tag from the same rank gets the tag-5 message, though it is the first to
/// arrive; the blocking receive gets the tag-6 one sent after it.
fn posted_receive_first(world: &Communicator, next: usize, prev: usize, len: usize) -> Result<(), Error> {
    let early = world.immediate_receive_with_tag::<Vec<u64>>(prev, 5)?;
    // Only now may `prev` send: tell it.
    world.send_with_tag(&(), prev, 9)?;
    world.receive_with_tag::<()>(next, 9)?;
    world.send_with_tag(&vec![55u64; len], next, 5)?;
    world.send_slice_with_tag(&vec![66u64; len], next, 6)?;
    let mut got = vec![0u64; len];
    let status = world.receive_into_matching(&mut got, Match::source(prev))?;
    assert_eq!(
        (got, status.tag()),
        (vec![66; len], 6),
        "the blocking receive posted second"
    );
    let (v, status) = early.wait()?;
    assert_eq!(
        (v, status.tag()),
        (vec![55; len], 5),
        "the immediate receive posted first"
    );
    Ok(())
}

/// A message queued before the receive (a probe waited for it) is taken
/// before the ones from the same rank and tag that arrive later.
fn queued_message_first(world: &Communicator, next: usize, prev: usize, len: usize) -> Result<(), Error> {
    world.send_slice_with_tag(&vec![1u64; len], next, 7)?;
    world.send_slice_with_tag(&vec![2u64; len], next, 7)?;
    world.probe(Match::source(prev).with_tag(7))?;
    world.send_with_tag(&(), prev, 9)?;
    world.receive_with_tag::<()>(next, 9)?;
    world.send_slice_with_tag(&vec![3u64; len], next, 7)?;
    // Time for the third to arrive and wait in a fastbox or the ring (the
    // check holds whenever it arrives; this only makes the receives meet
    // it there).
    std::thread::sleep(std::time::Duration::from_millis(20));
    for want in 1..=3u64 {
        let mut got = vec![0u64; len];
        world.receive_into_with_tag(&mut got, prev, 7)?;
        assert_eq!(got, vec![want; len], "tag 7 in the order sent");
    }
    Ok(())
}

/// A receive that cannot take the message (another type, too small a
/// buffer, a serde value of another type) leaves it for the next one.
fn wrong_type_and_short_buffer(world: &Communicator, next: usize, prev: usize, len: usize) -> Result<(), Error> {
    let pair: Vec<u32> = (0..2 * len as u32).map(|i| 7 + i).collect();
    world.send_slice_with_tag(&pair, next, 8)?;
    world.send_slice_with_tag(&vec![9u32; len], next, 8)?;
    let text = "straight".repeat(len);
    world.send_with_tag(&text, next, 10)?;
    let mut as_f64 = vec![0.0f64; 4 * len];
    assert!(matches!(
        world.receive_into_with_tag(&mut as_f64, prev, 8),
        Err(Error::FormatMismatch { .. })
    ));
    let mut one = vec![0u32; 2 * len - 1];
    assert!(matches!(
        world.receive_into_with_tag(&mut one, prev, 8),
        Err(Error::Truncated { .. })
    ));
    let mut two = vec![0u32; 2 * len];
    world.receive_into_with_tag(&mut two, prev, 8)?;
    assert_eq!(two, pair);
    assert_eq!(world.receive_vec_with_tag::<u32>(prev, 8)?, vec![9; len]);
    assert!(matches!(
        world.receive_with_tag::<u64>(prev, 10),
        Err(Error::Decode { .. })
    ));
    assert_eq!(world.receive_with_tag::<String>(prev, 10)?, text);
    Ok(())
}

/// Numbered messages of 8, 40, 256, 272 bytes, 1 KiB, 16 KiB, 16 KiB and
/// 8 bytes, and 64 KiB in turn (one fastbox, two, ten (the most), then
/// ring frames: just too long for the fastboxes, short, the longest taken
/// straight, just too long for that, and written in pieces): in lock
/// step, then 300 at a time (more bytes than the ring; the fastboxes wait
/// after each ring frame until the ring is read), then as serde values.
fn streams(world: &Communicator, next: usize, prev: usize) -> Result<(), Error> {
    const LENGTHS: [usize; 8] = [1, 5, 32, 34, 128, 2048, 2049, 8192];
    let message = |i: u64| vec![i; LENGTHS[(i % 8) as usize]];
    for i in 0..3000u64 {
        world.send_slice_with_tag(&message(i), next, 11)?;
        let mut got = [0u64; 8192];
        let status = world.receive_into_with_tag(&mut got, prev, 11)?;
        let want = message(i);
        assert_eq!((status.source(), status.tag()), (prev, 11), "lock step, message {i}");
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
        world.send_with_tag(&message(i), next, 13)?;
        let got: Vec<u64> = world.receive_with_tag(prev, 13)?;
        assert_eq!(got, message(i), "serde message {i} of many numbers");
    }
    Ok(())
}
