//! Checks of communicators themselves: the groups `dup`, `split`,
//! `split_by_node` and `subset` make, rank translation, isolation between a
//! communicator and its duplicate under wildcards, misuse as an error on
//! every rank, and memory that stays flat over many made and dropped.

use spmd::{Communicator, Error, Match, World};

pub fn run(world: &World, many: usize) -> Result<(), Error> {
    groups(world)?;
    isolation(world)?;
    let reversed: Vec<usize> = (0..world.size()).rev().collect();
    let rev = world.subset(&reversed)?.expect("every rank is listed");
    isolation(&rev)?;
    ranks_in_errors(&rev)?;
    alone(world)?;
    scope_ends_while_another_thread_waits(world)?;
    disagreement(world)?;
    broadcast_value(world)?;
    many_alive_at_once(world)?;
    many_made_and_dropped(world, many)?;
    Ok(())
}

/// The ranks each constructor gives, checked against what MPI specifies.
fn groups(world: &World) -> Result<(), Error> {
    let (rank, size) = (world.rank(), world.size());
    let dup = world.dup()?;
    assert_eq!((dup.rank(), dup.size()), (rank, size));

    // Colors by rank % 3, ordered by descending rank within each.
    let color = (rank % 3) as u32;
    let part = world
        .split(Some(color), -(rank as i64))?
        .expect("every rank passed a color");
    let members: Vec<usize> = (0..size).rev().filter(|r| r % 3 == rank % 3).collect();
    assert_eq!(part.size(), members.len());
    assert_eq!(members[part.rank()], rank);
    for (i, m) in members.iter().enumerate() {
        assert_eq!(part.translate_rank(i, world)?, Some(*m));
        assert_eq!(world.translate_rank(*m, &part)?, Some(i));
    }
    if size > 1 {
        let other = (rank + 1) % size;
        if other % 3 != rank % 3 {
            assert_eq!(world.translate_rank(other, &part)?, None);
        }
    }
    // Every member gets the same sum over the part: its collectives work.
    let sum = part.allreduce(&rank, &spmd::op::Sum)?;
    assert_eq!(sum, members.iter().sum::<usize>());

    // No color: no communicator, and the others still get theirs.
    let odd = world.split((rank % 2 == 1).then_some(7), spmd::KEEP_ORDER)?;
    assert_eq!(odd.is_some(), rank % 2 == 1);
    if let Some(odd) = &odd {
        assert_eq!((odd.rank(), odd.size()), (rank / 2, size / 2));
    }

    // One node here: the node's communicator is every rank, in order.
    let node = world.split_by_node()?;
    assert_eq!((node.rank(), node.size()), (world.local_rank(), world.local_size()));

    // A subset of a subset translates through both.
    let listed: Vec<usize> = (0..size).rev().step_by(2).collect();
    let sub = world.subset(&listed)?;
    assert_eq!(sub.is_some(), listed.contains(&rank));
    if let Some(sub) = &sub {
        assert_eq!(listed[sub.rank()], rank);
        let inner = sub.dup()?;
        assert_eq!(inner.translate_rank(inner.rank(), world)?, Some(rank));
        let seen = inner.allgather(&rank)?;
        assert_eq!(seen, listed);
    }
    // A rank number beyond the communicator is an error there, not a hang.
    assert!(matches!(dup.send(&1u8, size), Err(Error::InvalidRank { .. })));
    if let Some(odd) = &odd {
        assert!(matches!(odd.send(&1u8, odd.size()), Err(Error::InvalidRank { .. })));
    }
    Ok(())
}

/// Messages of a communicator never match receives of its duplicate, under
/// any-source any-tag receives, in either order.
fn isolation(world: &Communicator) -> Result<(), Error> {
    let dup = world.dup()?;
    let (rank, size) = (world.rank(), world.size());
    if size < 2 {
        return Ok(());
    }
    let (next, prev) = ((rank + 1) % size, (rank + size - 1) % size);
    // Into the world first, then the duplicate, same tag.
    world.send_with_tag(&format!("world from {rank}"), next, 5)?;
    dup.send_with_tag(&format!("dup from {rank}"), next, 5)?;
    // The duplicate's receive, asked first, skips the world's message.
    let (got, status): (String, _) = dup.receive_matching(Match::any())?;
    assert_eq!(
        (got.as_str(), status.source()),
        (format!("dup from {prev}").as_str(), prev)
    );
    let (got, _): (String, _) = world.receive_matching(Match::any())?;
    assert_eq!(got, format!("world from {prev}"));
    // Nothing of either is left over for the other.
    assert!(dup.try_probe(Match::any())?.is_none());
    world.barrier()?;
    dup.barrier()?;
    Ok(())
}

/// The ranks an error names are the communicator's, not the job's.
fn ranks_in_errors(comm: &Communicator) -> Result<(), Error> {
    if comm.size() < 2 {
        return Ok(());
    }
    if comm.rank() == 0 {
        comm.send_with_tag(&vec![1u32, 2], 1, 9)?;
    } else if comm.rank() == 1 {
        match comm.receive_with_tag::<String>(0, 9) {
            Err(Error::FormatMismatch { sender, .. }) => assert_eq!(sender, 0),
            other => panic!("raw u32s received as a String gave {other:?}"),
        }
        // The message stayed queued for a receive of the right type.
        let numbers: Vec<u32> = comm.receive_with_tag(0, 9)?;
        assert_eq!(numbers, [1, 2]);
    }
    comm.barrier()
}

/// A scope whose body fails while another thread of the rank is blocked
/// in a receive (holding the rank's engine) still withdraws its lent
/// receive before the buffer goes: the message meant for it later stays
/// queued for an ordinary receive.
fn scope_ends_while_another_thread_waits(world: &World) -> Result<(), Error> {
    let dup = world.dup()?;
    if world.size() < 2 || world.rank() > 1 {
        return world.barrier();
    }
    if world.rank() == 0 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        dup.send(&5u64, 1)?;
        // After rank 1's scope has ended (it says so), so that nothing but
        // its withdrawal keeps the message from the buffer.
        world.receive_with_tag::<()>(1, 78)?;
        world.send_slice_with_tag(&[1u64, 2, 3, 4], 1, 77)?;
    } else {
        std::thread::scope(|t| -> Result<(), Error> {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let waiter = t.spawn(move || {
                rx.recv().expect("the main thread's signal");
                dup.receive::<u64>(0)
            });
            let mut buf = [0u64; 4];
            let ended = world.scope(|s| {
                let _lent = s.immediate_receive_into_with_tag(&mut buf, 0, 77)?;
                tx.send(()).expect("the waiter is there");
                // The waiter is now blocked in its receive, holding the engine.
                std::thread::sleep(std::time::Duration::from_millis(100));
                Err::<(), _>(Error::InvalidArgument("the body gives up".into()))
            });
            assert!(matches!(ended, Err(Error::InvalidArgument(_))), "{ended:?}");
            assert_eq!(waiter.join().expect("the waiter does not panic")?, 5);
            Ok(())
        })?;
        world.send_with_tag(&(), 0, 78)?;
        let numbers: Vec<u64> = world.receive_vec_matching(Match::source(0).with_tag(77))?.0;
        assert_eq!(numbers, [1, 2, 3, 4]);
    }
    world.barrier()
}

/// A rank alone in its communicator that waits for any message is told it
/// would wait for ever, as alone in a job.
fn alone(world: &World) -> Result<(), Error> {
    let solo = world.split(Some(world.rank() as u32), 0)?.expect("a color");
    assert_eq!(solo.size(), 1);
    match solo.receive_matching::<u8>(Match::any()) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("alone"), "{m}"),
        other => panic!("an any-source receive alone gave {other:?}"),
    }
    Ok(())
}

/// Ranks that pass different lists to `subset`, call different
/// constructors, or call a constructor against another collective, all get
/// an error.
fn disagreement(world: &World) -> Result<(), Error> {
    let (rank, size) = (world.rank(), world.size());
    if size < 2 {
        return Ok(());
    }
    let list: Vec<usize> = if rank == 0 { vec![0] } else { vec![0, 1] };
    let got = world.dup()?.subset(&list);
    assert!(
        matches!(&got, Err(Error::InvalidArgument(m)) if m.contains("different ranks")),
        "rank {rank}: {:?}",
        got.map(|c| c.map(|c| c.size()))
    );
    let bad = world.dup()?.subset(&[size]);
    assert!(
        matches!(&bad, Err(Error::InvalidArgument(m)) if m.contains("not below")),
        "{bad:?}"
    );

    // Mismatched collectives are spmd's own check; under MPI they are the
    // program's error, which MPI does not catch (README).
    if world.backend() == spmd::Backend::Mpi {
        return Ok(());
    }
    let spare = world.dup()?;
    let got = if rank == 0 {
        spare.dup().map(|_| ())
    } else {
        spare.barrier()
    };
    match got {
        Err(Error::CollectiveMismatch { .. }) | Err(Error::CollectiveFailed { .. }) => {}
        other => panic!("rank {rank}: a dup against a barrier gave {other:?}"),
    }
    Ok(())
}

/// mpi4py's broadcast: only the root has the value; a root without one is
/// an error on every rank.
fn broadcast_value(world: &World) -> Result<(), Error> {
    let (rank, size) = (world.rank(), world.size());
    for root in 0..size {
        let mine = (rank == root).then(|| vec![root as u64; 3]);
        assert_eq!(world.broadcast_value(mine, root)?, vec![root as u64; 3]);
    }
    let spare = world.dup()?;
    let root = size - 1;
    match spare.broadcast_value::<u64>(None, root) {
        Err(Error::InvalidArgument(m)) if rank == root => assert!(m.contains("passed None"), "{m}"),
        Err(Error::CollectiveFailed { rank: r, .. }) if rank != root => assert_eq!(r, root),
        other => panic!("rank {rank}: a root without a value gave {other:?}"),
    }
    Ok(())
}

/// More communicators alive at once than one window of ids holds, each
/// with a message in flight: no two share an id, or the messages would
/// cross.
fn many_alive_at_once(world: &World) -> Result<(), Error> {
    let (rank, size) = (world.rank(), world.size());
    let comms: Vec<Communicator> = (0..600).map(|_| world.dup()).collect::<Result<_, _>>()?;
    let next = (rank + 1) % size;
    for (i, c) in comms.iter().enumerate() {
        c.send(&(i as u64), next)?;
    }
    for (i, c) in comms.iter().enumerate().rev() {
        let (got, _): (u64, _) = c.receive_matching(Match::any())?;
        assert_eq!(got, i as u64, "rank {rank}: communicator {i} got another's message");
    }
    // The node's pooled regions serve the first communicators made; the
    // rest do their collectives by messages, with the same results.
    let in_regions = comms.iter().filter(|c| c.node_collectives()).count();
    if world.node_collectives() {
        assert!(
            (1..=16).contains(&in_regions),
            "{in_regions} communicators in pooled regions"
        );
        assert!(
            !comms[599].node_collectives(),
            "the 600th communicator has a pooled region"
        );
    } else {
        assert_eq!(in_regions, 0, "pooled regions without shared memory");
    }
    for round in 0..2 {
        let order: Vec<usize> = if round == 0 {
            (0..600).collect()
        } else {
            (0..600).rev().collect()
        };
        for &i in order.iter().step_by(7) {
            let sum = comms[i].allreduce(&(rank + i), &spmd::op::Sum)?;
            assert_eq!(sum, size * (size - 1) / 2 + size * i, "allreduce on communicator {i}");
        }
    }
    // Dropped, they give their regions back: new communicators get them
    // (cleared of what the last ones left).
    drop(comms);
    let again: Vec<Communicator> = (0..4).map(|_| world.dup()).collect::<Result<_, _>>()?;
    for (i, c) in again.iter().enumerate() {
        assert_eq!(
            c.node_collectives(),
            world.node_collectives(),
            "a new communicator {i} after the drop"
        );
        assert_eq!(c.allreduce(&1usize, &spmd::op::Sum)?, size);
        c.barrier()?;
    }
    Ok(())
}

/// Makes and drops `many` communicators; the memory does not grow with
/// them, and the context ids never run out.
fn many_made_and_dropped(world: &World, many: usize) -> Result<(), Error> {
    let lived = world.dup()?;
    let rss = || -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
        line.split_whitespace()
            .nth(1)
            .and_then(|kb| kb.parse().ok())
            .expect("a size in kB")
    };
    let mut before = 0;
    for i in 0..many {
        if i == many / 10 {
            before = rss();
        }
        let c = if i % 2 == 0 {
            world.dup()?
        } else {
            lived.split(Some((world.rank() % 2) as u32), 0)?.expect("a color")
        };
        if i % 1000 == 0 {
            let sum = c.allreduce(&1usize, &spmd::op::Sum)?;
            assert_eq!(sum, c.size());
        }
    }
    let grew = rss().saturating_sub(before);
    assert!(
        grew < 4096,
        "rank {}: {grew} kB more after {many} communicators",
        world.rank()
    );
    if world.rank() == 0 {
        println!("{many} communicators made and dropped, memory grew {grew} kB");
    }
    Ok(())
}
