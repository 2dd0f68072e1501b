//! Checks of the `immediate_` collectives: random cases that start several
//! at once in a random order, mixed with blocking collectives and
//! point-to-point traffic, complete them through `wait`, `wait_any` or
//! `test_all`, and compare each result with a sequential reference; then
//! progress while the rank blocks elsewhere, and misuse as an error on
//! every rank.

use spmd::op;
use spmd::{Communicator, Error, Match, Pending, Request};

use crate::collectives::{LENGTHS, OPERATORS, data, fold, matmul, matrix, text, with_op};
use crate::rng::Rng;

pub fn run(comm: &Communicator, seed: u64, cases: usize) -> Result<(), Error> {
    let mut rng = Rng::new(seed);
    for case in 0..cases {
        one_case(comm, seed, case, rng.next_u64())?;
    }
    progress_while_blocked(comm)?;
    misuse(comm)?;
    if comm.rank() == 0 {
        println!("ok {cases} random immediate collective cases from seed {seed}");
    }
    Ok(())
}

/// Five collectives, each started or not, in a random order with other
/// traffic between the starts, completed in one of three ways.
fn one_case(comm: &Communicator, seed: u64, case: usize, case_seed: u64) -> Result<(), Error> {
    let (me, n) = (comm.rank(), comm.size());
    let mut rng = Rng::new(case_seed);
    let root = rng.below(n);
    let len = LENGTHS[rng.below(LENGTHS.len())];
    let which = rng.below(OPERATORS.len());
    let parts: Vec<Vec<i64>> = (0..n).map(|r| data(case_seed, r, len)).collect();
    let mine = parts[me].clone();
    let mut order: Vec<usize> = (0..5).filter(|_| rng.below(4) != 0).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let finish = rng.below(3);
    let ctx = format!(
        "seed {seed} case {case}: order {order:?}, finish {finish}, root {root}, len {len}, op {} on rank {me} of {n}",
        OPERATORS[which]
    );

    let mut broadcast_buf = if me == root { parts[root].clone() } else { vec![0; len] };
    let mut reduced = vec![0; len];
    let mut message = if me == root {
        text(case_seed, root)
    } else {
        String::new()
    };
    let scalar = matrix(case_seed, me);
    let (mut barrier, mut broadcast_into, mut allreduce, mut allreduce_into, mut broadcast) =
        (None, None, None, None, None);
    // Each buffer is lent once, to the one request that writes it.
    let (mut lend_buf, mut lend_reduced, mut lend_message) =
        (Some(&mut broadcast_buf[..]), Some(&mut reduced[..]), Some(&mut message));
    for (i, &k) in order.iter().enumerate() {
        match k {
            0 => barrier = Some(comm.immediate_barrier()?),
            1 => broadcast_into = Some(comm.immediate_broadcast_into(lend(&mut lend_buf), root)?),
            2 => allreduce = Some(comm.immediate_allreduce(&scalar, matmul)?),
            3 => {
                allreduce_into = Some(with_op!(which, |o| comm.immediate_allreduce_into(
                    &mine,
                    lend(&mut lend_reduced),
                    *o
                )?))
            }
            _ => broadcast = Some(comm.immediate_broadcast(lend(&mut lend_message), root)?),
        }
        // Other traffic between the starts: a ring exchange, or a blocking
        // collective.
        match (case + i) % 3 {
            0 if n > 1 => {
                let got: (usize, usize) = comm.sendrecv(&(me, case), (me + 1) % n, (me + n - 1) % n)?;
                assert_eq!(got, ((me + n - 1) % n, case), "{ctx}: ring");
            }
            1 => assert_eq!(comm.allreduce(&1u64, &op::Sum)?, n as u64, "{ctx}: blocking allreduce"),
            _ => {}
        }
    }

    let mut pending: Vec<&mut dyn Pending> = Vec::new();
    pending.extend(as_pending(&mut barrier));
    pending.extend(as_pending(&mut broadcast_into));
    pending.extend(as_pending(&mut allreduce));
    pending.extend(as_pending(&mut allreduce_into));
    pending.extend(as_pending(&mut broadcast));
    match finish {
        0 => {}
        1 => {
            let mut left = pending.len();
            while left > 0 {
                let i = spmd::wait_any(&mut pending)?;
                pending.remove(i);
                left -= 1;
            }
        }
        _ => while !spmd::test_all(&mut pending)? {},
    }
    drop(pending);
    barrier.map(Request::wait).transpose()?;
    let broadcast_into = broadcast_into.map(Request::wait).transpose()?;
    let allreduce = allreduce.map(Request::wait).transpose()?;
    let allreduce_into = allreduce_into.map(Request::wait).transpose()?;
    let broadcast = broadcast.map(Request::wait).transpose()?;
    if broadcast_into.is_some() {
        assert_eq!(broadcast_buf, parts[root], "{ctx}: immediate_broadcast_into");
    }
    if let Some(got) = allreduce {
        let want = (1..n).fold(matrix(case_seed, 0), |acc, r| matmul(&acc, &matrix(case_seed, r)));
        assert_eq!(got, want, "{ctx}: immediate_allreduce of matrices (rank order)");
    }
    if allreduce_into.is_some() {
        assert_eq!(reduced, fold(which, &parts, 0..n), "{ctx}: immediate_allreduce_into");
    }
    if broadcast.is_some() {
        assert_eq!(message, text(case_seed, root), "{ctx}: immediate_broadcast");
    }
    Ok(())
}

fn lend<'a, T: ?Sized>(once: &mut Option<&'a mut T>) -> &'a mut T {
    once.take().expect("each collective starts once per case")
}

/// An optional request seen as a [`Pending`], for the slice of them.
fn as_pending<R: Request>(r: &mut Option<R>) -> Option<&mut dyn Pending> {
    r.as_mut().map(|r| r as &mut dyn Pending)
}

/// Rank 0 starts a barrier and then blocks in a receive from the last
/// rank, which sends only once its own barrier is over: the barrier can
/// end only if rank 0's part moves on while it waits for something else.
fn progress_while_blocked(comm: &Communicator) -> Result<(), Error> {
    let (me, n) = (comm.rank(), comm.size());
    let barrier = comm.immediate_barrier()?;
    let total = comm.immediate_allreduce(&(me as u64), op::Sum)?;
    if me == 0 && n > 1 {
        let (word, status): (String, _) = comm.receive_matching(Match::source(n - 1).with_tag(7))?;
        assert_eq!((word.as_str(), status.source()), ("after", n - 1));
    }
    barrier.wait()?;
    assert_eq!(total.wait()?, (n * (n - 1) / 2) as u64);
    if me == n - 1 && n > 1 {
        comm.send_with_tag(&"after", 0, 7)?;
    }
    // A closure's fold and a serde broadcast, which on MPI need rank 0 to
    // fold the parts and pass the result on: it does so while it blocks in
    // a receive, and then in a blocking collective, before it waits on
    // them itself.
    let want = (1..n).fold(matrix(7, 0), |acc, r| matmul(&acc, &matrix(7, r)));
    let product = comm.immediate_allreduce(&matrix(7, me), matmul)?;
    let mut word = if me == n - 1 { text(7, me) } else { String::new() };
    let broadcast = comm.immediate_broadcast(&mut word, n - 1)?;
    if me == 0 && n > 1 {
        let (word, _): (String, _) = comm.receive_matching(Match::source(n - 1).with_tag(8))?;
        assert_eq!(word, "folded");
    }
    assert_eq!(product.wait()?, want, "rank {me}: a fold while rank 0 receives");
    broadcast.wait()?;
    assert_eq!(word, text(7, n - 1), "rank {me}: a broadcast while rank 0 receives");
    if me == n - 1 && n > 1 {
        comm.send_with_tag(&"folded", 0, 8)?;
    }
    let product = comm.immediate_allreduce(&matrix(7, me), matmul)?;
    let got = if me == 0 {
        comm.barrier()?;
        product.wait()?
    } else {
        let got = product.wait()?;
        comm.barrier()?;
        got
    };
    assert_eq!(got, want, "rank {me}: a fold while rank 0 is in a barrier");
    Ok(())
}

/// What a rank got from a misuse, for the report to rank 0.
fn describe(me: usize, what: &str, got: Result<(), Error>) -> String {
    match got {
        Err(Error::CollectiveMismatch { detail }) => format!("mismatch: {detail}"),
        Err(Error::CollectiveFailed { rank, detail }) => format!("rank {rank} failed: {detail}"),
        Err(Error::PeerGone { rank }) => format!("rank {rank} has gone"),
        other => panic!("rank {me}: {what} gave {other:?}"),
    }
}

/// Every rank's report, on rank 0 (by point-to-point messages, which a
/// failed collective leaves working); no rank goes on before rank 0 has
/// them all, so that no rank's end is taken for a failure.
fn reports(comm: &Communicator, mine: String) -> Result<Vec<String>, Error> {
    let (me, n) = (comm.rank(), comm.size());
    if me != 0 {
        comm.send_with_tag(&mine, 0, 99)?;
        comm.receive_with_tag::<()>(0, 98)?;
        return Ok(Vec::new());
    }
    let mut all = vec![mine];
    for r in 1..n {
        all.push(comm.receive_with_tag(r, 99)?);
    }
    (1..n).try_for_each(|r| comm.send_with_tag(&(), r, 98))?;
    Ok(all)
}

/// Misuse, each an error on every rank and never a hang, each on a
/// communicator of its own as it ends that communicator's collectives:
/// a blocking barrier against an immediate one; a broadcast whose root
/// differs between ranks (learnt at the next collective by the ranks
/// that had finished); and, last and on `comm` itself (over the node's
/// shared memory on the world), a blocking broadcast against immediate
/// ones, where neither side sends the other anything.
fn misuse(comm: &Communicator) -> Result<(), Error> {
    let (me, n) = (comm.rank(), comm.size());
    // spmd's own check: under MPI such a program is in error (README,
    // "Running on a cluster").
    if n < 2 || comm.backend() == spmd::Backend::Mpi {
        return Ok(());
    }
    let mixed = comm.dup()?;
    let got = if me == 0 {
        mixed.immediate_barrier().and_then(|r| r.wait())
    } else {
        mixed.barrier()
    };
    let all = reports(comm, describe(me, "immediate_barrier against barrier", got))?;
    if me == 0 {
        let named = |r: &String| r.contains("immediate_barrier") && r.contains("called barrier");
        assert!(all.iter().any(named), "no rank named the mix: {all:?}");
    }

    let roots = comm.dup()?;
    let root = if me == 0 { 0 } else { 1 };
    let mut value = if me == root {
        format!("from {me}")
    } else {
        String::new()
    };
    let got = roots.immediate_broadcast(&mut value, root).and_then(|r| r.wait());
    // Whatever a rank sent in the broadcast reaches each peer before this
    // (one link per pair keeps order): the next collective sees it.
    for r in (0..n).filter(|r| *r != me) {
        comm.send_with_tag(&(), r, 97)?;
    }
    for r in (0..n).filter(|r| *r != me) {
        comm.receive_with_tag::<()>(r, 97)?;
    }
    let got = got.and_then(|()| roots.allreduce(&1u64, &op::Sum).map(|_| ()));
    let all = reports(comm, describe(me, "immediate_broadcast with different roots", got))?;
    if me == 0 {
        assert!(
            all.iter().any(|r| r.contains("root")),
            "no rank named the roots: {all:?}"
        );
    }

    let mut buf = [if me == 0 { 42u64 } else { 0 }; 8];
    // The root only sends: it learns at its next collective.
    let got = if me == 0 {
        comm.broadcast_into(&mut buf, 0).and_then(|()| comm.barrier())
    } else {
        comm.immediate_broadcast_into(&mut buf, 0).and_then(|r| r.wait())
    };
    let all = reports(
        comm,
        describe(me, "broadcast_into against immediate_broadcast_into", got),
    )?;
    if me == 0 {
        assert!(
            all.iter().any(|r| r.contains("immediate_broadcast_into")),
            "no rank named the mix: {all:?}"
        );
    }
    Ok(())
}

/// A request kept past `World::finalize`: testing or waiting on it is
/// `Error::Finalized`, and dropping it is quiet. So is every call on a
/// communicator kept past it, whichever path the call takes (node-wide in
/// shared memory, the windows, messages).
pub fn after_finalize() -> Result<(), Error> {
    let world = spmd::init()?;
    let dup = world.dup()?;
    let kept = world.dup()?;
    let mut barrier = dup.immediate_barrier()?;
    let mut late = dup.immediate_allreduce(&1u64, op::Sum)?;
    // The rank finalizes inside a scope that lent a buffer to a receive,
    // and to a second one that took a message this rank had sent itself:
    // the scope ends with the error and lets go of the buffers, and that
    // message, which nothing can receive now, is named on standard error
    // (the test checks).
    let (me, n) = (kept.rank(), kept.size());
    let (mut pending, mut taken) = ([0u64; 1], [0u64; 1]);
    kept.send_slice_with_tag(&[7u64], me, 98)?;
    let in_scope = kept.scope(|s| {
        let _receive = s.immediate_receive_into_with_tag(&mut pending, (me + n - 1) % n, 99)?;
        let _taken = s.immediate_receive_into_with_tag(&mut taken, me, 98)?;
        world.finalize()
    });
    assert!(
        matches!(in_scope, Err(Error::Finalized)),
        "a scope across finalize: {in_scope:?}"
    );
    assert!(matches!(barrier.test(), Err(Error::Finalized)), "test after finalize");
    assert!(
        matches!(late.wait_timeout(std::time::Duration::MAX), Err(Error::Finalized)),
        "wait_timeout after finalize"
    );
    assert!(matches!(late.wait(), Err(Error::Finalized)), "wait after finalize");
    assert!(
        matches!(dup.immediate_barrier(), Err(Error::Finalized)),
        "a new one after finalize"
    );
    drop(barrier);
    let (to, from) = ((me + 1) % n, (me + n - 1) % n);
    let finalized = |what: &str, result: Result<(), Error>| {
        assert!(
            matches!(result, Err(Error::Finalized)),
            "{what} after finalize: {result:?}"
        );
    };
    let mut small = [1u64; 4];
    let mut large = vec![1u64; 4096];
    let parts = vec![1u64; 1024 * n];
    let mut out = vec![0u64; 1024 * n];
    finalized("barrier", kept.barrier());
    finalized(
        "allreduce_into of 32 bytes",
        kept.allreduce_into(&[1u64; 4], &mut small, &op::Sum),
    );
    finalized(
        "allreduce_into of 32 KiB",
        kept.allreduce_into(&vec![1u64; 4096], &mut large, &op::Sum),
    );
    finalized("broadcast_into", kept.broadcast_into(&mut small, 0));
    finalized("alltoall_into", kept.alltoall_into(&parts, &mut out));
    finalized("allreduce", kept.allreduce(&1u64, &op::Sum).map(|_| ()));
    finalized("send", kept.send(&1u64, to));
    finalized("receive", kept.receive::<u64>(from).map(|_| ()));
    finalized("try_receive", kept.try_receive::<u64>(from).map(|_| ()));
    finalized("probe", kept.probe(spmd::Match::any()).map(|_| ()));
    finalized("immediate_send", kept.immediate_send(&1u64, to).map(|_| ()));
    finalized("immediate_receive", kept.immediate_receive::<u64>(from).map(|_| ()));
    finalized(
        "a scope's immediate_receive_into",
        kept.scope(|s| s.immediate_receive_into(&mut small, from).map(|_| ())),
    );
    finalized("dup", kept.dup().map(|_| ()));
    println!("immediate-after-finalize: ok");
    Ok(())
}
