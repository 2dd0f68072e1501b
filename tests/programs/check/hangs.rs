//! Situations that used to hang, each of which must now end with a result
//! or an error on every rank: `spmd-check hang CASE`.

use std::time::{Duration, Instant};

use spmd::op::{self, Op};
use spmd::{Error, Match, Request, World};

pub fn run(world: &World, case: &str, arg: &str) -> Result<(), Error> {
    match case {
        "scope-error" => scope_error(world),
        "scope-panic" => scope_panic(world),
        "send-to-finalized" => send_to_finalized(world, 4 << 20, "send-to-finalized"),
        "small-to-finalized" => send_to_finalized(world, 16, "small-to-finalized"),
        "finalize-unread" => finalize_unread(world),
        "stream-at-finalized" => stream_at_finalized(world, 64 << 10, case),
        "offers-at-finalized" => stream_at_finalized(world, 512 << 10, case),
        "immediate-at-finalized" => immediate_at_finalized(world),
        "partial-barrier" => partial_barrier(world),
        "last-to-finalize" => last_to_finalize(world),
        "mismatch" => mismatch(world, arg.parse().unwrap_or(usize::MAX)),
        "wrong-buffers" => wrong_buffers(world, arg),
        "big-element" => big_element(world),
        "serde-types" => serde_types(world),
        "exchange" => exchange(world, arg),
        "flooded-barrier" => super::flooded::barrier(world),
        "busy-wait" => super::flooded::busy_wait(world, arg),
        other => panic!("unknown hang case {other:?}"),
    }
}

/// An error returned inside a scope does not wait for the scope's receive
/// (nothing will be sent to it yet); the message sent later is not lost.
fn scope_error(world: &World) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    let (left, right) = ((me + n - 1) % n, (me + 1) % n);
    let mut buf = vec![0u64; 100_000];
    let big = vec![me as u64; 3 << 20];
    let start = Instant::now();
    let outcome = world.scope(|s| {
        let _r = s.immediate_receive_into_with_tag(&mut buf, left, 5)?;
        let _s = s.immediate_send_slice_with_tag(&big, right, 6)?;
        Err::<(), Error>(Error::InvalidArgument("deliberate".into()))
    });
    assert!(matches!(outcome, Err(Error::InvalidArgument(_))), "{outcome:?}");
    assert!(start.elapsed() < Duration::from_secs(5), "the scope waited");
    world.barrier()?;
    // The receive was withdrawn, so this message waits for the next one;
    // the send went on without the scope's buffer.
    world.send_slice_with_tag(&[7u64; 100_000], right, 5)?;
    let got: Vec<u64> = world.receive_with_tag(left, 5)?;
    assert!(got.len() == 100_000 && got.iter().all(|v| *v == 7), "the later message");
    let sent: Vec<u64> = world.receive_with_tag(left, 6)?;
    assert!(
        sent.len() == 3 << 20 && sent.iter().all(|v| *v == left as u64),
        "the scoped send"
    );
    if me == 0 {
        println!("hang scope-error: all checks passed");
    }
    world.barrier()
}

/// A panic inside a scope with a receive nothing will match ends the job
/// at once (spmdrun reports the panic) instead of hanging.
fn scope_panic(world: &World) -> Result<(), Error> {
    let mut buf = vec![0u8; 64];
    world.scope(|s| {
        let _r = s.immediate_receive_into_matching(&mut buf, Match::tag(99))?;
        if world.rank() == world.size() - 1 {
            panic!("deliberate panic inside a scope");
        }
        Ok(())
    })
}

/// A send to a rank that has finalized fails with PeerGone: a large one
/// instead of waiting for room that will never come, a small one instead of
/// vanishing into room that nobody will read. Rank 0 sends every 10 ms
/// until it fails: a small message sent before rank 1 has finalized lands,
/// and rank 1's finalize names it as never received (rank 0 says how many
/// it sent, for the test to match).
fn send_to_finalized(world: &World, len: usize, case: &str) -> Result<(), Error> {
    let me = world.rank();
    world.barrier()?;
    if me == 1 {
        return Ok(());
    }
    let (sent, outcome) = send_until_gone(world, len, Duration::from_millis(10));
    println!("rank 0 sent {sent} message(s) before rank 1 was gone");
    match outcome {
        Error::PeerGone { rank: 1 } => println!("hang {case}: all checks passed"),
        other => panic!("rank {me}: sending {len} bytes to a finalized rank gave {other:?}"),
    }
    Ok(())
}

/// Rank 0 sends messages of `len` bytes to rank 1, `pause` apart, until a
/// send fails (within 20 s: rank 1 finalizes meanwhile); how many went
/// through, and the error.
fn send_until_gone(world: &World, len: usize, pause: Duration) -> (usize, Error) {
    let data = vec![5u8; len];
    let start = Instant::now();
    let mut sent = 0usize;
    loop {
        if let Err(e) = world.send_slice(&data, 1) {
            return (sent, e);
        }
        sent += 1;
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "rank 1 took {sent} messages of {len} bytes in 20 s while finalizing"
        );
        std::thread::sleep(pause);
    }
}

/// Ranks that finalize with messages the other has not read both finish.
fn finalize_unread(world: &World) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    let big = vec![3u8; 4 << 20];
    let _pending = world.immediate_send_slice_with_tag(&big, (me + 1) % n, 8)?;
    if me == 0 {
        println!("hang finalize-unread: all checks passed");
    }
    Ok(())
}

/// True on rank 1, which goes on to finalize; rank 0 gives it a moment to
/// get there: a rank still waiting in the barrier reads every peer without
/// bound (a node-wide collective may depend on any of them), and the
/// streaming cases check the bound that finalize keeps.
fn rank_1_finalizes(world: &World) -> Result<bool, Error> {
    world.barrier()?;
    if world.rank() == 1 {
        return Ok(true);
    }
    std::thread::sleep(Duration::from_millis(20));
    Ok(false)
}

/// Rank 0 sends messages of `len` bytes to rank 1 for as long as it can
/// while rank 1 finalizes: rank 1's finalize ends (it reads on only up to
/// its queue bound and for a bounded time) and rank 0's send becomes
/// PeerGone. At 512 KiB the messages go as offers where the mode offers.
fn stream_at_finalized(world: &World, len: usize, case: &str) -> Result<(), Error> {
    if rank_1_finalizes(world)? {
        return Ok(());
    }
    let kib = len >> 10;
    let (sent, outcome) = send_until_gone(world, len, Duration::ZERO);
    println!("rank 0 sent {sent} messages of {kib} KiB");
    match outcome {
        Error::PeerGone { rank: 1 } => println!("hang {case}: all checks passed"),
        other => panic!("rank 0: streaming at a finalizing rank ended with {other:?}"),
    }
    Ok(())
}

/// Rank 0 keeps calling into spmd (reading the others' goodbyes) until
/// every other rank has finalized and closed, and only then finalizes:
/// its own goodbyes have nobody left to read them, and it finishes.
fn last_to_finalize(world: &World) -> Result<(), Error> {
    if world.rank() != 0 {
        return Ok(());
    }
    // The others wait 100 ms for rank 0's goodbye, then close.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(600) {
        assert!(world.try_probe(Match::any())?.is_none(), "nobody sent anything");
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("hang last-to-finalize: all checks passed");
    Ok(())
}

/// As `stream_at_finalized`, with immediate sends: rank 0 queues 400
/// messages of 64 KiB for rank 1, which finalizes, then waits on each in
/// turn. The sends that succeed come first, every later one fails (its
/// frame was dropped unwritten when the link closed, whichever call found
/// that out), and rank 1 reports as many as succeeded.
fn immediate_at_finalized(world: &World) -> Result<(), Error> {
    if rank_1_finalizes(world)? {
        return Ok(());
    }
    let data = vec![5u8; 64 << 10];
    let requests = (0..400)
        .map(|_| world.immediate_send_slice_with_tag(&data, 1, 0))
        .collect::<Result<Vec<_>, _>>()?;
    let outcomes: Vec<Result<(), Error>> = requests.into_iter().map(|r| r.wait()).collect();
    let sent = outcomes.iter().take_while(|o| o.is_ok()).count();
    for (i, o) in outcomes.iter().enumerate().skip(sent) {
        assert!(
            matches!(o, Err(Error::PeerGone { rank: 1 })),
            "send {i} of 400 after {sent} that succeeded ended with {o:?}"
        );
    }
    assert!(sent < 400, "rank 1 read all 400 messages while finalizing");
    println!("rank 0 sent {sent} messages of 64 KiB");
    println!("hang immediate-at-finalized: all checks passed");
    Ok(())
}

/// Only ranks 0 and 1 call barrier; the others finalize: 0 and 1 get
/// PeerGone instead of waiting for ever.
fn partial_barrier(world: &World) -> Result<(), Error> {
    let me = world.rank();
    if me >= 2 {
        return Ok(());
    }
    match world.barrier() {
        // Gone, or the other rank found so first and said so.
        Err(Error::PeerGone { rank }) if rank >= 2 => {
            if me == 0 {
                println!("hang partial-barrier: all checks passed");
            }
            Ok(())
        }
        Err(Error::CollectiveFailed { rank, detail }) if rank < 2 && detail.contains("has gone") => {
            if me == 0 {
                println!("hang partial-barrier: all checks passed");
            }
            Ok(())
        }
        other => panic!("rank {me}: a barrier without ranks 2.. gave {other:?}"),
    }
}

/// The collectives, each called one way (`which` picks one, with a root
/// and a length where it takes them).
fn call(world: &World, which: usize, root: usize, len: usize) -> Result<(), Error> {
    let n = world.size();
    let mine = vec![world.rank() as i64; len];
    let mut recv = vec![0i64; len];
    let mut all = vec![0i64; len * n];
    match which {
        0 => world.barrier(),
        1 => world.broadcast(&mut mine.clone(), root),
        2 => world.broadcast_into(&mut recv, root),
        3 => world.scatter(&vec![1u8; n], root).map(|_| ()),
        4 => world.scatter_into(&all.clone(), &mut recv, root),
        5 => world.gather(&1u8, root).map(|_| ()),
        6 => world.gather_into(&mine, &mut all, root),
        7 => world.allgather(&1u8).map(|_| ()),
        8 => world.allgather_into(&mine, &mut all),
        9 => world.reduce(&1u64, &op::Sum, root).map(|_| ()),
        10 => world.reduce_into(&mine, &mut recv, &op::Sum, root),
        11 => world.allreduce(&1u64, &op::Sum).map(|_| ()),
        12 => world.allreduce_into(&mine, &mut recv, &op::Max),
        13 => world.scan(&1u64, &op::Sum).map(|_| ()),
        14 => world.scan_into(&mine, &mut recv, &op::Sum),
        15 => world.alltoall(&vec![1u8; n]).map(|_| ()),
        _ => world.alltoall_into(&all.clone(), &mut all),
    }
}

const CALLS: usize = 17;

/// Collectives that have a root, and those whose slices have a length.
const ROOTED: [usize; 8] = [1, 2, 3, 4, 5, 6, 9, 10];
const SIZED: [usize; 8] = [2, 4, 6, 8, 10, 12, 14, 16];

/// A collective as (which, root, length), for [`call`].
type Called = (usize, usize, usize);

/// Every disagreement the mismatch cases try: what rank 0 calls and what
/// the others call.
pub fn mismatch_cases() -> Vec<(Called, Called)> {
    let mut cases = Vec::new();
    for a in 0..CALLS {
        cases.push(((a, 0, 4), ((a + 1) % CALLS, 0, 4)));
        cases.push(((a, 0, 4), ((a + 5) % CALLS, 0, 4)));
    }
    for a in ROOTED {
        cases.push(((a, 0, 4), (a, 1, 4)));
    }
    for a in SIZED {
        cases.push(((a, 0, 100), (a, 0, 10_000)));
        cases.push(((a, 0, 10_000), (a, 0, 20_000)));
        cases.push(((a, 0, 3), (a, 0, 5)));
    }
    cases
}

fn is_disagreement(e: &Error) -> bool {
    matches!(
        e,
        Error::CollectiveMismatch { .. }
            | Error::CollectiveFailed { .. }
            | Error::CollectivesBroken { .. }
            | Error::InvalidArgument(_)
            | Error::PeerGone { .. }
    )
}

/// Rank 0 calls one collective, the others another (or the same with
/// another root, or other lengths): every rank gets an error, at that call
/// or, if its part was done before another rank failed, at its next
/// collective. Each rank says so on a line of its own.
fn mismatch(world: &World, case: usize) -> Result<(), Error> {
    let me = world.rank();
    let Some(&(first, second)) = mismatch_cases().get(case) else {
        panic!("no mismatch case {case}");
    };
    let (which, root, len) = if me == 0 { first } else { second };
    let root = root.min(world.size() - 1);
    let result = call(world, which, root, len);
    // A rank whose part was done before another rank found the
    // disagreement gets the error at the next collective in which it waits
    // for that rank (a barrier waits for everybody, but the failing rank
    // may have arrived in the first one before it failed).
    let error = match result {
        Err(e) => e,
        Ok(()) => (0..2)
            .find_map(|_| world.barrier().err())
            .unwrap_or_else(|| panic!("rank {me}: case {case}, {first:?} against {second:?}: no error")),
    };
    assert!(is_disagreement(&error), "rank {me}: case {case}: {error:?}");
    says_nothing_twice(&error.to_string());
    // Every later collective fails at once (unless the error was a peer
    // that left, when there is nothing more to say).
    if !matches!(error, Error::PeerGone { .. }) {
        let later = world.allreduce(&1u64, &op::Sum);
        assert!(
            matches!(later, Err(Error::CollectivesBroken { .. })),
            "rank {me}: after case {case}: {later:?}"
        );
    }
    println!("rank {me} failed: {error}");
    Ok(())
}

/// Panics if `text` says a phrase of two words or more twice in a row
/// ("of at most 4 KiB of at most 4 KiB", "invalid argument: invalid
/// argument: ..."): an error put together from parts that each said it.
pub fn says_nothing_twice(text: &str) {
    let words: Vec<&str> = text.split_whitespace().collect();
    for k in 2..=6 {
        for i in 0..words.len().saturating_sub(2 * k - 1) {
            assert!(
                words[i..i + k] != words[i + k..i + 2 * k],
                "an error says {:?} twice: {text}",
                words[i..i + k].join(" ")
            );
        }
    }
}

/// One rank's buffers are wrong for a small alltoall_into (`which` is
/// "alltoall"), for the root's send buffer of a scatter_into ("scatter"),
/// or the root's receive buffer of a gather_into ("gather"): every rank
/// gets an error instead of some waiting, and later collectives fail too.
fn wrong_buffers(world: &World, which: &str) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    let odd = me == n - 1;
    let result = match which {
        "alltoall" => {
            let send = vec![1i64; 4 * n];
            let mut recv = vec![0i64; if odd { 4 * n - 1 } else { 4 * n }];
            world.alltoall_into(&send, &mut recv)
        }
        "scatter" => {
            let root_send = vec![1i64; if odd { 4 * n + 3 } else { 4 * n }];
            world.scatter_into(&root_send, &mut [0i64; 4], n - 1)
        }
        _ => {
            let mut all = vec![0i64; if odd { 4 * n - 2 } else { 4 * n }];
            world.gather_into(&[1i64; 4], &mut all, n - 1)
        }
    };
    let error = match result {
        Err(e) => e,
        // Done here before the root failed: the next collective fails.
        Ok(()) => world.barrier().expect_err("the barrier after a failed collective"),
    };
    assert!(is_disagreement(&error), "rank {me}: {which}: {error:?}");
    says_nothing_twice(&error.to_string());
    if me == 0 {
        println!("hang wrong-buffers: all checks passed");
    }
    Ok(())
}

/// Ranks that give serde values of different types to the same
/// collective (rank 0 a `u64`, the others an `f32`) get an error that says
/// the ranks disagree, not a decode error about a message that is nobody's
/// to receive: every rank where the parts meet in the collective (an
/// allreduce on a duplicate, and on the world, node-wide where it can), the
/// root of a gather, which decodes them after the others are done.
fn serde_types(world: &World) -> Result<(), Error> {
    let me = world.rank();
    let disagree = |what: &str, error: &Error| {
        assert!(
            matches!(error, Error::CollectiveMismatch { .. } | Error::CollectiveFailed { .. }),
            "rank {me}, {what}: {error:?}"
        );
        let text = error.to_string();
        assert!(!text.contains("stays queued"), "rank {me}, {what}: {text}");
        says_nothing_twice(&text);
    };
    let allreduce = |comm: &spmd::Communicator| {
        let result = if me == 0 {
            comm.allreduce(&1u64, &op::Sum).map(|_| ())
        } else {
            comm.allreduce(&1.0f32, &op::Sum).map(|_| ())
        };
        result.and_then(|()| comm.barrier())
    };
    let dup = world.dup()?;
    disagree("allreduce on a dup", &allreduce(&dup).expect_err("no error"));
    assert!(
        matches!(dup.barrier(), Err(Error::CollectivesBroken { .. })),
        "rank {me}: a collective after the mismatch"
    );
    let dup = world.dup()?;
    let gathered = if me == 0 {
        dup.gather(&1u64, 0).map(|_| ())
    } else {
        dup.gather(&1.0f32, 0).map(|_| ())
    };
    match gathered {
        Err(e) if me == 0 => disagree("the root of a gather", &e),
        Ok(()) if me != 0 => {}
        other => panic!("rank {me}: gather of different types gave {other:?}"),
    }
    disagree("allreduce on the world", &allreduce(world).expect_err("no error"));
    // The world's collectives are broken now: the ranks meet by messages.
    if me == 0 {
        (1..world.size()).try_for_each(|r| world.receive_with_tag::<()>(r, 12))?;
        println!("hang serde-types: all checks passed");
    } else {
        world.send_with_tag(&(), 0, 12)?;
    }
    Ok(())
}

/// Elements larger than a window piece (288 KiB each) go through messages
/// instead of looping for ever.
fn big_element(world: &World) -> Result<(), Error> {
    type Big = [u64; 36_864];
    let n = world.size() as u64;
    let mine: Vec<Big> = vec![[world.rank() as u64 + 1; 36_864]; 2];
    let mut sum: Vec<Big> = vec![[0; 36_864]; 2];
    let add = |a: &Big, b: &Big| {
        let mut c = *a;
        c.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        c
    };
    world.allreduce_into(&mine, &mut sum, &add)?;
    let want = n * (n + 1) / 2;
    assert!(
        sum.iter().all(|e| e.iter().all(|v| *v == want)),
        "the sum of 288 KiB elements"
    );
    let _ = add.combine(&mine[0], &mine[1]);
    if world.rank() == 0 {
        println!("hang big-element: all checks passed");
    }
    Ok(())
}

/// Ranks 0 and 1 exchange small and large messages for ever (for the tests
/// that corrupt a segment under them): bursts of small ones through the
/// fastboxes, large ones through the rings. Ends with the first error.
/// With `ring-frames`, rank 1 sends bursts of ten messages of 1000 bytes
/// (whole frames in the ring) that rank 0 leaves there for a second before
/// it receives them from rank 1 by name.
fn exchange(world: &World, arg: &str) -> Result<(), Error> {
    let me = world.rank();
    let other = 1 - me.min(1);
    let big = vec![me as u8; 200_000];
    let mut back = vec![0u8; 200_000];
    println!("pid {me} {}", std::process::id());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    if arg == "ring-frames" {
        return ring_frames(world);
    }
    loop {
        for i in 0..20u64 {
            world.send_slice(&[i], other)?;
        }
        for _ in 0..20 {
            let _: Vec<u64> = world.receive_vec(other)?;
        }
        world.send_slice_with_tag(&big, other, 1)?;
        world.receive_into_with_tag(&mut back, other, 1)?;
    }
}

/// `exchange ring-frames`: ten messages of 1000 bytes from rank 1 at a
/// time, left in the ring for a second.
fn ring_frames(world: &World) -> Result<(), Error> {
    loop {
        if world.rank() == 0 {
            std::thread::sleep(Duration::from_secs(1));
            for _ in 0..10 {
                world.receive_vec::<u8>(1)?;
            }
            world.send(&(), 1)?;
        } else {
            for _ in 0..10 {
                world.send_slice(&[1u8; 1000], 0)?;
            }
            world.receive::<()>(0)?;
        }
    }
}
