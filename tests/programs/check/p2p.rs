//! Point-to-point checks: ordering, wildcards with status, probe, large and
//! empty messages, sends to self, tag 0 where a call says so (`tag_zero.rs`),
//! receives from one rank against what must come first (`straight.rs`),
//! non-blocking requests, and the errors a user meets.

use spmd::{Communicator, Error, Match, Request};

const MANY: u64 = 2000;
const TAGS: u32 = 4;
const BIG: usize = 64 << 20;

pub fn run(world: &Communicator) -> Result<(), Error> {
    ordering(world)?;
    wildcards_and_status(world)?;
    probe(world)?;
    order_after_probe(world)?;
    self_send(world)?;
    crate::self_receive::run(world)?;
    crate::tag_zero::run(world)?;
    empty_and_large(world)?;
    immediate(world)?;
    completion(world)?;
    sendrecv_ring(world)?;
    crate::straight::run(world)?;
    // The same on a communicator whose ranks run backwards: a status names
    // the sender by its rank there, however the message came.
    let backwards = world
        .split(Some(0), -(world.rank() as i64))?
        .expect("every rank passed a color");
    crate::straight::run(&backwards)?;
    crate::numbers::run(world)?;
    errors(world)?;
    world.barrier()
}

/// Ends a phase: a barrier, so that no wildcard receive of one phase can
/// take a message of the next, and a line from rank 0.
fn say(world: &Communicator, what: &str) -> Result<(), Error> {
    world.barrier()?;
    if world.rank() == 0 {
        println!("ok {what}");
    }
    Ok(())
}

/// Every rank sends MANY numbered messages on TAGS tags to every other rank
/// without waiting; every receiver takes them through any-source/any-tag
/// receives and checks each (source, tag) stream arrives in order.
fn ordering(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    let mut sends = Vec::new();
    for seq in 0..MANY {
        for dest in (0..n).filter(|d| *d != me) {
            let tag = (seq % TAGS as u64) as u32;
            sends.push(world.immediate_send_with_tag(&(me as u64, tag, seq), dest, tag)?);
        }
    }
    // Tag t carries sequence numbers t, t + TAGS, t + 2 TAGS, ...
    let mut next = vec![(0..TAGS as u64).collect::<Vec<u64>>(); n];
    // Take tag 3 from the lowest other rank first, out of arrival order.
    if let Some(first) = (0..n).find(|r| *r != me) {
        let (src, tag, seq): (u64, u32, u64) = world.receive_with_tag(first, 3)?;
        assert_eq!(
            (src as usize, tag, seq),
            (first, 3, 3),
            "first tag-3 message from rank {first}"
        );
        next[first][3] = 3 + TAGS as u64;
        for _ in 0..(MANY - 1) {
            let ((src, tag, seq), status): ((u64, u32, u64), _) = world.receive_matching(Match::source(first))?;
            check_next(&mut next, src, tag, seq, status.source(), status.tag());
        }
    }
    let expected = (n.saturating_sub(2)) as u64 * MANY;
    for _ in 0..expected {
        let ((src, tag, seq), status): ((u64, u32, u64), _) = world.receive_matching(Match::any())?;
        check_next(&mut next, src, tag, seq, status.source(), status.tag());
    }
    spmd::wait_all(sends)?;
    for (src, tags) in next.iter().enumerate().filter(|(s, _)| *s != me) {
        for (tag, seq) in tags.iter().enumerate() {
            assert!(*seq >= MANY, "rank {me}: stream ({src}, {tag}) stopped at {seq}");
        }
    }
    say(world, "per-(source, tag) order of many messages")?;
    Ok(())
}

fn check_next(next: &mut [Vec<u64>], src: u64, tag: u32, seq: u64, status_src: usize, status_tag: u32) {
    assert_eq!(src as usize, status_src, "status source");
    assert_eq!(tag, status_tag, "status tag");
    let expected = &mut next[src as usize][tag as usize];
    assert_eq!(seq, *expected, "message from ({src}, {tag}) out of order");
    *expected += TAGS as u64;
}

fn wildcards_and_status(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    if n < 2 {
        return Ok(());
    }
    if me == 0 {
        let mut seen = vec![false; n];
        for _ in 1..n {
            let (text, status): (String, _) = world.receive_matching(Match::any())?;
            assert_eq!(text, format!("hello from {}", status.source()));
            assert_eq!(status.tag(), 100 + status.source() as u32);
            assert_eq!(
                status.len(),
                8 + text.len() as u64,
                "serialized length: u64 prefix + bytes"
            );
            assert!(!seen[status.source()], "two messages from rank {}", status.source());
            seen[status.source()] = true;
        }
    } else {
        world.send_with_tag(&format!("hello from {me}"), 0, 100 + me as u32)?;
    }
    world.barrier()?;
    if me == n - 1 {
        world.send_with_tag(&7u32, 0, 7)?;
    }
    if me == 0 {
        let (v, status): (u32, _) = world.receive_matching(Match::tag(7))?;
        assert_eq!((v, status.tag(), status.source()), (7, 7, n - 1));
    }
    say(world, "any-source and any-tag receives with status")?;
    Ok(())
}

fn probe(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    if n < 2 {
        return Ok(());
    }
    if me == 1 {
        world.send_slice_with_tag(&[1.0f64, 2.0, 3.0], 0, 42)?;
    }
    if me == 0 {
        assert!(
            world.try_probe(Match::tag(43))?.is_none(),
            "nothing was sent with tag 43"
        );
        let status = world.probe(Match::any())?;
        assert_eq!((status.source(), status.tag(), status.len()), (1, 42, 24));
        // Probing does not consume: the message is still there.
        let again = world
            .try_probe(Match::source(1))?
            .expect("the probed message is still queued");
        assert_eq!(again, status);
        let mut buf = vec![0.0f64; (status.len() / 8) as usize];
        world.receive_into_with_tag(&mut buf, 1, 42)?;
        assert_eq!(buf, [1.0, 2.0, 3.0]);
    }
    say(world, "probe and try_probe")?;
    Ok(())
}

/// A probe, or a receive of the wrong type, that looks at a later message
/// does not let it overtake older ones from the same sender: a wider
/// receive afterwards still gets them in the order they were sent. Small
/// and large (past every inline limit) messages alike.
fn order_after_probe(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    if n < 2 {
        return Ok(());
    }
    for len in [3usize, 100_000] {
        if me == 1 {
            for tag in 0..4u32 {
                world.send_slice_with_tag(&vec![tag as u64; len], 0, tag)?;
            }
        }
        if me == 0 {
            // Looks at tag 2 first, then takes tag 3 as the wrong type.
            let status = world.probe(Match::source(1).with_tag(2))?;
            assert_eq!(status.tag(), 2);
            let wrong = world.receive_vec_matching::<f32>(Match::source(1).with_tag(3));
            assert!(wrong.is_err(), "u64s received as f32s: {wrong:?}");
            for want in 0..4u32 {
                let (got, status) = world.receive_vec_matching::<u64>(Match::source(1))?;
                assert_eq!(
                    (status.tag(), got[0], got.len()),
                    (want, want as u64, len),
                    "messages of {len} numbers after a probe of tag 2 and a wrong-type receive of tag 3"
                );
            }
        }
        world.barrier()?;
    }
    say(world, "order kept after probes and wrong-type receives")
}

fn self_send(world: &Communicator) -> Result<(), Error> {
    let me = world.rank();
    world.send_with_tag(&vec![me; 3], me, 5)?;
    world.send_slice_with_tag(&[me as u32; 2], me, 6)?;
    let v: Vec<usize> = world.receive_with_tag(me, 5)?;
    assert_eq!(v, vec![me; 3]);
    let (w, _) = world.receive_vec_matching::<u32>(Match::source(me).with_tag(6))?;
    assert_eq!(w, [me as u32; 2]);
    say(world, "send to self")?;
    Ok(())
}

fn empty_and_large(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    let (to, from) = ((me + 1) % n, (me + n - 1) % n);
    let empty: [f64; 0] = [];
    let sent = world.immediate_send_slice_with_tag(&empty, to, 9)?;
    let (got, status) = world.receive_vec_matching::<f64>(Match::source(from).with_tag(9))?;
    assert!(got.is_empty() && status.is_empty());
    sent.wait()?;
    world.send(&(), to)?;
    world.receive::<()>(from)?;

    let pattern = |rank: usize| -> Vec<u8> { (0..BIG).map(|i| (i as u64 * 31 + rank as u64) as u8).collect() };
    if n >= 2 {
        if me == 0 {
            world.send_slice(&pattern(0), 1)?;
        } else if me == 1 {
            let got: Vec<u8> = world.receive_vec(0)?;
            assert_eq!(got.len(), BIG);
            assert!(got == pattern(0), "the 64 MiB message arrived corrupted");
        }
    }
    say(world, "empty messages and a 64 MiB message")?;
    Ok(())
}

fn immediate(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    let receives: Vec<_> = (0..n)
        .map(|r| world.immediate_receive_with_tag::<(usize, usize)>(r, 11))
        .collect::<Result<_, _>>()?;
    let sends: Vec<_> = (0..n)
        .map(|r| world.immediate_send_with_tag(&(me, r), r, 11))
        .collect::<Result<_, _>>()?;
    let got = spmd::wait_all(receives)?;
    for (r, ((from, to), status)) in got.into_iter().enumerate() {
        assert_eq!((from, to, status.source()), (r, me, r));
    }
    spmd::wait_all(sends)?;

    // wait_each keeps every result: a receive that cannot take its message
    // (a string, not a number) costs the others nothing, and leaves the
    // message for the next receive.
    let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
    let receives: Vec<_> = (13..16)
        .map(|tag| world.immediate_receive_with_tag::<u64>(prev, tag))
        .collect::<Result<_, _>>()?;
    world.send_with_tag(&13u64, next, 13)?;
    world.send_with_tag(&"fourteen".to_string(), next, 14)?;
    world.send_with_tag(&15u64, next, 15)?;
    let results = spmd::wait_each(receives);
    assert!(
        matches!(
            &results[..],
            [Ok((13, s13)), Err(Error::Decode { .. }), Ok((15, s15))] if s13.tag() == 13 && s15.tag() == 15
        ),
        "wait_each: {results:?}"
    );
    assert_eq!(
        world.receive_with_tag::<String>(prev, 14)?,
        "fourteen",
        "the message wait_each could not take"
    );

    // test() eventually reports completion.
    let mut req = world.immediate_receive_with_tag::<u64>((me + n - 1) % n, 12)?;
    world.send_with_tag(&(me as u64), (me + 1) % n, 12)?;
    let mut spins = 0u64;
    while !req.test()? {
        spins += 1;
        std::thread::yield_now();
    }
    let (v, _) = req.wait()?;
    assert_eq!(v as usize, (me + n - 1) % n, "after {spins} tests");
    say(world, "immediate sends and receives, wait_all, wait_each, test")?;
    Ok(())
}

/// wait_any, wait_some, test_any and test_all over sends and receives of
/// different types together, and requests grouped in a tuple.
fn completion(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    let (next, prev) = ((me + 1) % n, (me + n - 1) % n);

    // A send and a receive of another type, taken as each completes.
    let mut send = world.immediate_send_with_tag(&format!("from {me}"), next, 13)?;
    let mut receive = world.immediate_receive_with_tag::<String>(prev, 13)?;
    let mut numbers = world.immediate_receive_vec_with_tag::<u32>(prev, 14)?;
    world.send_slice_with_tag(&[me as u32; 3], next, 14)?;
    let mut done = [false; 3];
    while done.iter().any(|d| !*d) {
        let at = {
            let mut pending: Vec<(usize, &mut dyn spmd::Pending)> = Vec::new();
            if !done[0] {
                pending.push((0, &mut send));
            }
            if !done[1] {
                pending.push((1, &mut receive));
            }
            if !done[2] {
                pending.push((2, &mut numbers));
            }
            let (which, mut requests): (Vec<usize>, Vec<&mut dyn spmd::Pending>) = pending.into_iter().unzip();
            which[spmd::wait_any(&mut requests)?]
        };
        done[at] = true;
    }
    send.wait()?;
    let (text, status) = receive.wait()?;
    assert_eq!((text, status.source()), (format!("from {prev}"), prev));
    assert_eq!(numbers.wait()?.0, vec![prev as u32; 3]);

    // wait_some over a receive from every rank, sent in reverse order.
    let mut receives: Vec<_> = (0..n)
        .map(|r| world.immediate_receive_with_tag::<usize>(r, 15))
        .collect::<Result<_, _>>()?;
    for r in (0..n).rev() {
        world.send_with_tag(&me, r, 15)?;
    }
    let mut done = vec![false; n];
    while done.iter().any(|d| !*d) {
        let open: Vec<usize> = (0..n).filter(|r| !done[*r]).collect();
        let mut pending: Vec<&mut dyn spmd::Pending> = Vec::new();
        for (r, req) in receives.iter_mut().enumerate() {
            if !done[r] {
                pending.push(req);
            }
        }
        let some = spmd::wait_some(&mut pending)?;
        assert!(!some.is_empty());
        for i in some {
            done[open[i]] = true;
        }
    }
    for (r, req) in receives.into_iter().enumerate() {
        assert_eq!(req.wait()?.0, r);
    }

    // test_any and test_all: nothing from prev with tag 16 until it is
    // sent after a barrier.
    let mut late = world.immediate_receive_with_tag::<u8>(prev, 16)?;
    assert_eq!(spmd::test_any(&mut [&mut late])?, None);
    world.barrier()?;
    let sent = world.immediate_send_with_tag(&7u8, next, 16)?;
    while !spmd::test_all(&mut [&mut late])? {
        std::thread::yield_now();
    }
    // A receive and a send waited on together, as one request.
    let ((value, _), ()) = (late, sent).wait()?;
    assert_eq!(value, 7);
    assert!(matches!(spmd::wait_any(&mut []), Err(Error::InvalidArgument(_))));

    // try_receive: nothing yet (from itself too), then the message; the
    // two-argument slice sends, plain and lent, use tag 0.
    assert_eq!(world.try_receive_with_tag::<u64>(prev, 17)?, None);
    assert_eq!(world.try_receive_with_tag::<u64>(me, 17)?, None);
    world.barrier()?;
    world.send_with_tag(&(me as u64), next, 17)?;
    let got = loop {
        if let Some((v, status)) = world.try_receive_matching::<u64>(Match::tag(17))? {
            assert_eq!(status.source(), prev);
            break v;
        }
        std::thread::yield_now();
    };
    assert_eq!(got, prev as u64);
    let plain = world.immediate_send_slice(&[me as u16; 5], next)?;
    assert_eq!(world.receive_vec::<u16>(prev)?, vec![prev as u16; 5]);
    plain.wait()?;
    let data = [me as u32; 7];
    world.scope(|s| {
        let lent = s.immediate_send_slice(&data, next)?;
        assert_eq!(world.receive_vec_with_tag::<u32>(prev, 0)?, vec![prev as u32; 7]);
        lent.wait()
    })?;
    say(
        world,
        "wait_any, wait_some, test_any, test_all and tuples over mixed requests",
    )?;
    Ok(())
}

fn sendrecv_ring(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    let big = vec![me as u64; 1 << 20];
    let from_left: Vec<u64> = world.sendrecv(&big, (me + 1) % n, (me + n - 1) % n)?;
    assert_eq!(from_left.len(), 1 << 20);
    assert!(from_left.iter().all(|v| *v as usize == (me + n - 1) % n));
    say(world, "sendrecv around the ring with 8 MiB each way")?;
    Ok(())
}

fn errors(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    match world.send(&1u8, n) {
        Err(Error::InvalidRank { rank, size }) => assert_eq!((rank, size), (n, n)),
        other => panic!("send to rank {n} gave {other:?}"),
    }
    let text = Error::InvalidRank { rank: n, size: n }.to_string();
    assert!(text.contains(&n.to_string()), "{text}");

    // A String received as a u64 is a decode error naming the type.
    world.send_with_tag(&"not a number".to_string(), me, 20)?;
    match world.receive_with_tag::<u64>(me, 20) {
        Err(e @ Error::Decode { .. }) => assert!(e.to_string().contains("u64"), "{e}"),
        other => panic!("decoding a String as u64 gave {other:?}"),
    }
    // The message stays queued for a receive of the right type.
    assert_eq!(world.receive_with_tag::<String>(me, 20)?, "not a number");
    // Raw numbers received as a serde value, and the other way round.
    world.send_slice_with_tag(&[1.0f64], me, 21)?;
    assert!(matches!(
        world.receive_with_tag::<f64>(me, 21),
        Err(Error::FormatMismatch { .. })
    ));
    // Numbers of one type received as another are a mismatch too.
    let mut as_u64 = [0u64];
    assert!(matches!(
        world.receive_into_with_tag(&mut as_u64, me, 21),
        Err(Error::FormatMismatch { .. })
    ));
    assert_eq!(world.receive_with_tag::<Vec<f64>>(me, 21)?, [1.0]);
    world.send_with_tag(&1.0f64, me, 22)?;
    let mut one = [0.0f64];
    assert!(matches!(
        world.receive_into_with_tag(&mut one, me, 22),
        Err(Error::FormatMismatch { .. })
    ));
    assert_eq!(world.receive_with_tag::<f64>(me, 22)?, 1.0);
    // Too much for the buffer.
    world.send_slice_with_tag(&[1u32, 2, 3], me, 23)?;
    let mut two = [0u32; 2];
    match world.receive_into_with_tag(&mut two, me, 23) {
        Err(Error::Truncated {
            message_bytes,
            buffer_bytes,
            ..
        }) => assert_eq!((message_bytes, buffer_bytes), (12, 8)),
        other => panic!("receiving 3 u32 into 2 gave {other:?}"),
    }
    let mut three = [0u32; 3];
    world.receive_into_with_tag(&mut three, me, 23)?;
    assert_eq!(
        three,
        [1, 2, 3],
        "the message kept after a receive into too small a buffer"
    );
    // Waiting for a message from oneself that was never sent cannot end.
    assert!(matches!(
        world.receive_with_tag::<u8>(me, 24),
        Err(Error::InvalidArgument(_))
    ));
    say(world, "errors: invalid rank, decode, format, truncation, self-wait")?;
    Ok(())
}
