//! Waiting for a send before the receive of the same exchange, as both
//! ranks of an exchange may: every rank posts its receive and its send,
//! then waits for its send first (in a scope, as a tuple, in a `test_all`
//! loop, and across a barrier); then every rank waits for its send before
//! it posts its receive at all (a scope's end, a wait, a test loop, a wait
//! and a barrier). On the MPI backend a large body may go only once the
//! receiver waits for it, and a frame past MPI's eager limit (4 KiB on
//! Open MPI's shared memory, headers included) would go only once the
//! receiver received it, so a send that waited for either without taking
//! in its own messages meanwhile would wait for ever here.

use spmd::{Communicator, Error, Request};

/// The sizes, in numbers: inline, around MPI's eager limits, and large.
const SIZES: [usize; 4] = [100, 1000, 4096, 300_000];

/// The sizes of the sends waited for before any receive, in numbers: also
/// the largest payload the MPI backend sends with its header (3,840 bytes)
/// and the first it sends as a body, and just under and at 4 KiB, where a
/// frame of header and payload would pass Open MPI's eager limit for
/// shared memory.
const BEFORE_ANY_RECEIVE: [usize; 8] = [100, 480, 481, 505, 510, 512, 1000, 300_000];

pub fn run(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    let (right, left) = ((me + 1) % n, (me + n - 1) % n);
    for (round, len) in SIZES.into_iter().enumerate() {
        let mine: Vec<u64> = (0..len as u64).map(|i| i * 31 + me as u64).collect();
        let theirs: Vec<u64> = (0..len as u64).map(|i| i * 31 + left as u64).collect();
        let tag = 500 + round as u32;
        // A scope: the send waited for first.
        let mut got = vec![0u64; len];
        world.scope(|s| {
            let recv = s.immediate_receive_into_with_tag(&mut got, left, tag)?;
            let send = s.immediate_send_slice_with_tag(&mine, right, tag)?;
            send.wait()?;
            recv.wait().map(|_| ())
        })?;
        assert!(got == theirs, "{len} numbers, scope: corrupted");
        // A tuple of requests, the send first.
        let recv = world.immediate_receive_vec_with_tag::<u64>(left, tag)?;
        let send = world.immediate_send_slice_with_tag(&mine, right, tag)?;
        let ((), (got, _)) = (send, recv).wait()?;
        assert!(got == theirs, "{len} numbers, tuple: corrupted");
        // test_all until both are done.
        let mut recv = world.immediate_receive_vec_with_tag::<u64>(left, tag)?;
        let mut send = world.immediate_send_slice_with_tag(&mine, right, tag)?;
        while !spmd::test_all(&mut [&mut send, &mut recv])? {}
        let (got, _) = recv.wait()?;
        assert!(got == theirs, "{len} numbers, test_all: corrupted");
        // The send waited for, then a barrier, then the receive.
        let recv = world.immediate_receive_vec_with_tag::<u64>(left, tag)?;
        world.immediate_send_slice_with_tag(&mine, right, tag)?.wait()?;
        world.barrier()?;
        let (got, _) = recv.wait()?;
        assert!(got == theirs, "{len} numbers, across a barrier: corrupted");
    }
    for (round, len) in BEFORE_ANY_RECEIVE.into_iter().enumerate() {
        // Each step's numbers differ, so that a receive that wrote nothing,
        // or got another step's message, is caught.
        let numbers = |rank: usize, step: u64| -> Vec<u64> {
            (0..len as u64)
                .map(|i| i * 37 + step * 1_000_003 + rank as u64)
                .collect()
        };
        let tag = 600 + round as u32;
        let mut got = vec![0u64; len];
        // A scope's end waits for its send; the receive comes after it.
        let mine = numbers(me, 1);
        world.scope(|s| s.immediate_send_slice_with_tag(&mine, right, tag).map(drop))?;
        world.receive_into_with_tag(&mut got, left, tag)?;
        assert!(got == numbers(left, 1), "{len} numbers after a scope: corrupted");
        // An immediate send waited for, then the receive.
        got.fill(0);
        world
            .immediate_send_slice_with_tag(&numbers(me, 2), right, tag)?
            .wait()?;
        world.receive_into_with_tag(&mut got, left, tag)?;
        assert!(got == numbers(left, 2), "{len} numbers after a wait: corrupted");
        // An immediate send tested until done, then the receive.
        got.fill(0);
        let mut send = world.immediate_send_slice_with_tag(&numbers(me, 3), right, tag)?;
        while !send.test()? {}
        world.receive_into_with_tag(&mut got, left, tag)?;
        assert!(got == numbers(left, 3), "{len} numbers after a test loop: corrupted");
        // An immediate send waited for, then a barrier (no rank waits for
        // a send there), then the receive.
        got.fill(0);
        world
            .immediate_send_slice_with_tag(&numbers(me, 4), right, tag)?
            .wait()?;
        world.barrier()?;
        world.receive_into_with_tag(&mut got, left, tag)?;
        assert!(got == numbers(left, 4), "{len} numbers after a barrier: corrupted");
    }
    Ok(())
}
