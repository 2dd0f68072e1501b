//! Scoped requests that lend buffers: data moves straight between the
//! caller's buffers, requests that are never waited for still complete
//! before the scope ends, and errors surface.

use spmd::{Communicator, Error, Match, Request};

fn pattern(len: usize, from: usize, round: usize) -> Vec<u64> {
    (0..len)
        .map(|i| (i as u64) * 1_000_003 + (from as u64) * 7 + round as u64)
        .collect()
}

pub fn run(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    let (right, left) = ((me + 1) % n, (me + n - 1) % n);
    for (round, len) in [0usize, 1, 100, 40_000, 300_000].into_iter().enumerate() {
        let data = pattern(len, me, round);
        let mut got = vec![0u64; len];
        let mut early = vec![0u64; len];
        let tag = round as u32;
        world.scope(|s| {
            // Posted before the matching send starts: lands in place.
            let recv = s.immediate_receive_into_with_tag(&mut got, left, tag)?;
            let send = s.immediate_send_slice_with_tag(&data, right, tag)?;
            // A second message, received by a request that is dropped: the
            // scope completes it.
            let _dropped = s.immediate_receive_into_with_tag(&mut early, left, tag + 100)?;
            // ... and sent by a request that is never waited for either.
            let _unwaited = s.immediate_send_slice_with_tag(&data, right, tag + 100)?;
            let status = recv.wait()?;
            assert_eq!(status.len(), 8 * len as u64, "round {round}: length");
            assert_eq!((status.source(), status.tag()), (left, tag), "round {round}: status");
            if round % 2 == 1 || round == 4 {
                // Tested until done (a send written in full as it started,
                // of one number, is done at once; one of 300,000 is not),
                // then waited for.
                let mut send = send;
                while !send.test()? {}
                send.wait()?;
            } else {
                send.wait()?;
            }
            Ok(())
        })?;
        assert!(
            got == pattern(len, left, round),
            "round {round}: {len} numbers arrived corrupted"
        );
        assert!(
            early == pattern(len, left, round),
            "round {round}: the dropped receive did not complete"
        );
        world.barrier()?;
    }
    windows(world)?;
    // Receives posted after the data arrived take the copy path.
    let data = pattern(5000, me, 9);
    world.send_slice_with_tag(&data, right, 900)?;
    world.barrier()?;
    let mut late = vec![0u64; 5000];
    world.scope(|s| {
        s.immediate_receive_into_with_tag(&mut late, left, 900)?
            .wait()
            .map(|_| ())
    })?;
    assert!(late == pattern(5000, left, 9), "the late receive was corrupted");
    landed_then_failed(world)?;
    // A buffer too small is an error, from wait or from the scope's end.
    world.send_slice_with_tag(&[1u64, 2, 3], right, 901)?;
    let mut small = [0u64; 2];
    let outcome = world.scope(|s| {
        let _r = s.immediate_receive_into_with_tag(&mut small, left, 901)?;
        Ok(())
    });
    assert!(matches!(outcome, Err(Error::Truncated { .. })), "{outcome:?}");
    world.barrier()?;
    if me == 0 {
        println!("ok scoped requests: in-place sends and receives, dropped and forgotten requests, errors");
    }
    Ok(())
}

/// Waits until `receive`'s message has landed, then fails (as a scope's
/// body that gives up).
fn give_up_once_landed(mut receive: spmd::LentReceive<'_, '_>) -> Result<(), Error> {
    while !receive.test()? {
        std::thread::yield_now();
    }
    Err(Error::InvalidArgument(
        "the body gives up after its receive landed".into(),
    ))
}

/// A message that landed in a lent buffer before the scope's body failed
/// is copied out and stays queued in its place, ahead of one that arrived
/// after it (a fastbox-sized one and a ring-sized one over shared memory),
/// or goes to a receive posted since that accepts it.
fn landed_then_failed(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    let (right, left) = ((me + 1) % n, (me + n - 1) % n);
    for (round, len) in [(60usize, 1usize), (61, 20_000)] {
        let tag = 950 + round as u32;
        let mut buf = vec![0u64; len];
        let outcome = world.scope(|s| {
            let first = s.immediate_receive_into_with_tag(&mut buf, left, tag)?;
            // Every rank has posted before anything is sent.
            world.barrier()?;
            world.send_slice_with_tag(&pattern(len, me, round), right, tag)?;
            world.send_slice_with_tag(&pattern(len, me, round + 1), right, tag)?;
            give_up_once_landed(first)
        });
        assert!(matches!(outcome, Err(Error::InvalidArgument(_))), "{outcome:?}");
        for (k, which) in ["the landed message", "the one after it"].into_iter().enumerate() {
            let got: Vec<u64> = world.receive_vec_with_tag(left, tag)?;
            assert!(
                got == pattern(len, left, round + k),
                "{len} numbers: {which} came wrong"
            );
        }
        world.barrier()?;
        // A receive posted after the scope's, and outliving it, gets the
        // earliest message the scope gives back: not the one a second
        // scoped receive had taken from the queue, and not nothing (waiting
        // for ever while both sit in the queue); on the MPI backend too,
        // where that receive is already posted in MPI.
        let mut second = vec![0u64; len];
        let mut later = None;
        let outcome = world.scope(|s| {
            let first = s.immediate_receive_into_with_tag(&mut buf, left, tag)?;
            world.barrier()?;
            world.send_slice_with_tag(&pattern(len, me, round + 2), right, tag)?;
            world.send_slice_with_tag(&pattern(len, me, round + 3), right, tag)?;
            // The second message is queued once this returns (the first
            // went to `first`), and the second scoped receive takes it.
            world.probe(Match::source(left).with_tag(tag))?;
            let _second = s.immediate_receive_into_with_tag(&mut second, left, tag)?;
            later = Some(world.immediate_receive_vec_with_tag::<u64>(left, tag)?);
            give_up_once_landed(first)
        });
        assert!(matches!(outcome, Err(Error::InvalidArgument(_))), "{outcome:?}");
        let later = later.ok_or_else(|| Error::InvalidArgument("the later receive was not posted".into()))?;
        let (got, _) = later.wait()?;
        assert!(
            got == pattern(len, left, round + 2),
            "{len} numbers: the receive posted later did not get the first message given back"
        );
        let got: Vec<u64> = world.receive_vec_with_tag(left, tag)?;
        assert!(
            got == pattern(len, left, round + 3),
            "{len} numbers: the second message given back"
        );
        world.barrier()?;
    }
    Ok(())
}

/// Windows of 64 receives from the left neighbour (any tag), as a stream
/// posts them, against 64 sends to the right with tags 0 to 63 and sizes
/// from one number to past a fastbox: each status names the sender, the
/// tag and the count of the message it got, in order. In the last window
/// every receive names its tag, posted in the reverse order, so each
/// message lands in a receive that is not the first one posted.
fn windows(world: &Communicator) -> Result<(), Error> {
    const WINDOW: usize = 64;
    let (me, n) = (world.rank(), world.size());
    let (right, left) = ((me + 1) % n, (me + n - 1) % n);
    // Up to 36 numbers (288 bytes): past the fastboxes' 264.
    let count = |k: usize| 1 + k % 36;
    for (round, reversed) in [(0, false), (1, false), (2, true)] {
        let data: Vec<Vec<u64>> = (0..WINDOW).map(|k| pattern(count(k), me, round * WINDOW + k)).collect();
        let mut bufs = vec![vec![0u64; 36]; WINDOW];
        let statuses = world.scope(|s| {
            let mut receives = Vec::new();
            if reversed {
                for (k, buf) in bufs.iter_mut().enumerate().rev() {
                    receives.push((k, s.immediate_receive_into_with_tag(buf, left, k as u32)?));
                }
            } else {
                for (k, buf) in bufs.iter_mut().enumerate() {
                    receives.push((k, s.immediate_receive_into_matching(buf, Match::source(left))?));
                }
            }
            let sends = (0..WINDOW)
                .map(|k| s.immediate_send_slice_with_tag(&data[k], right, k as u32))
                .collect::<Result<Vec<_>, Error>>()?;
            let mut statuses = Vec::new();
            for (k, receive) in receives {
                statuses.push((k, receive.wait()?));
            }
            spmd::wait_all(sends)?;
            Ok(statuses)
        })?;
        for (k, status) in statuses {
            let what = format!("window {round}, receive {k}");
            assert_eq!((status.source(), status.tag()), (left, k as u32), "{what}: status");
            assert_eq!(status.count(), Some(count(k) as u64), "{what}: count");
            assert!(
                bufs[k][..count(k)] == pattern(count(k), left, round * WINDOW + k),
                "{what}: corrupted"
            );
        }
        world.barrier()?;
    }
    Ok(())
}
