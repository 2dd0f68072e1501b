//! The thread level in real jobs (`spmd-check threads`): communicators
//! driven from different threads of a rank at once, in orders that only
//! work if a thread blocked in one communicator leaves the others free;
//! and an operator that calls spmd gets `Error::Reentered`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use spmd::{Error, Request, World, op};

pub fn run(world: &World) -> Result<(), Error> {
    crossed_receives(world)?;
    for round in 0..3 {
        crossed_collectives(world, round)?;
    }
    operators_that_call_spmd(world)?;
    crate::thread_races::run(world)?;
    world.barrier()
}

/// On rank 0, thread A blocks in a receive on one communicator that rank 1
/// answers only after thread B of rank 0 has sent on another: with one
/// thread's wait holding the rank, this never ends.
fn crossed_receives(world: &World) -> Result<(), Error> {
    let (a, b) = (world.dup()?, world.dup()?);
    if world.size() < 2 || world.rank() > 1 {
        return world.barrier();
    }
    let rank = world.rank();
    std::thread::scope(|t| -> Result<(), Error> {
        let (tx, rx) = mpsc::channel::<u64>();
        let thread_a = t.spawn(move || -> Result<u64, Error> {
            if rank == 0 {
                let v: u64 = a.receive(1)?;
                a.send(&(v + 1), 1)?;
                Ok(v)
            } else {
                let u = rx.recv().expect("thread B's value");
                a.send(&(u * 3), 0)?;
                a.receive::<u64>(0)
            }
        });
        let thread_b = t.spawn(move || -> Result<u64, Error> {
            if rank == 0 {
                // Thread A is blocked in its receive by now.
                std::thread::sleep(Duration::from_millis(100));
                b.send(&7u64, 1)?;
                b.receive::<u64>(1)
            } else {
                let u: u64 = b.receive(0)?;
                tx.send(u).expect("thread A is there");
                b.send(&(u * 2), 0)?;
                Ok(u)
            }
        });
        let got_a = thread_a.join().expect("thread A does not panic")?;
        let got_b = thread_b.join().expect("thread B does not panic")?;
        match rank {
            0 => assert_eq!((got_a, got_b), (21, 14), "rank 0"),
            _ => assert_eq!((got_a, got_b), (22, 7), "rank 1"),
        }
        Ok(())
    })?;
    world.barrier()
}

/// Two threads per rank run collectives on two communicators (the world,
/// over the node's shared region where it has one, and a duplicate, over
/// messages), starting in opposite orders on even and odd ranks.
fn crossed_collectives(world: &World, round: usize) -> Result<(), Error> {
    let dup = world.dup()?;
    let (rank, size) = (world.rank(), world.size());
    let odd = rank % 2 == 1;
    let rounds = 200;
    std::thread::scope(|t| -> Result<(), Error> {
        let on_dup = t.spawn(move || -> Result<(), Error> {
            if odd {
                std::thread::sleep(Duration::from_millis(20));
            }
            for i in 0..rounds {
                let sum = dup.allreduce(&(rank + i), &op::Sum)?;
                assert_eq!(sum, size * (size - 1) / 2 + size * i, "dup allreduce {i}");
                let mut word = if dup.rank() == round % size { i as u64 } else { 0 };
                dup.broadcast(&mut word, round % size)?;
                assert_eq!(word, i as u64, "dup broadcast {i}");
                let request = dup.immediate_allreduce(&1u32, op::Sum)?;
                assert_eq!(request.wait()?, size as u32, "dup immediate allreduce {i}");
            }
            Ok(())
        });
        if !odd {
            std::thread::sleep(Duration::from_millis(20));
        }
        for i in 0..rounds {
            let max = world.allreduce(&(rank * i), &op::Max)?;
            assert_eq!(max, (size - 1) * i, "world allreduce {i}");
            world.barrier()?;
        }
        on_dup.join().expect("the dup's thread does not panic")
    })?;
    world.barrier()
}

/// An operator's closure that calls spmd gets `Error::Reentered` from the
/// call, whatever the collective and its path; the collective itself
/// completes with the right result.
fn operators_that_call_spmd(world: &World) -> Result<(), Error> {
    let dup = world.dup()?;
    let size = world.size();
    let reentered = Arc::new(AtomicUsize::new(0));
    let other = Arc::new(AtomicUsize::new(0));
    let note = |result: Result<(), Error>, reentered: &AtomicUsize, other: &AtomicUsize| match result {
        Err(Error::Reentered) => reentered.fetch_add(1, Ordering::Relaxed),
        _ => other.fetch_add(1, Ordering::Relaxed),
    };
    for comm in [&**world, &dup] {
        let closure = |a: &u64, b: &u64| {
            note(comm.barrier(), &reentered, &other);
            a + b
        };
        assert_eq!(comm.allreduce(&1u64, &closure)?, size as u64);
        let mut out = [0u64; 3];
        comm.allreduce_into(&[1u64, 2, 3], &mut out, &closure)?;
        assert_eq!(out, [size as u64, 2 * size as u64, 3 * size as u64]);
        // The closure of an immediate collective owns what it uses: here a
        // communicator of its own.
        let (r, o, inner) = (Arc::clone(&reentered), Arc::clone(&other), world.dup()?);
        let owning = op::from_fn(move |a: &u64, b: &u64| {
            note(inner.barrier(), &r, &o);
            a + b
        });
        assert_eq!(comm.immediate_allreduce(&2u64, owning)?.wait()?, 2 * size as u64);
    }
    assert_eq!(
        other.load(Ordering::Relaxed),
        0,
        "a call from inside an operator did not fail as Reentered"
    );
    // Each rank that combined anything saw the error; with more than one
    // rank, someone combined.
    let seen = world.allreduce(&reentered.load(Ordering::Relaxed), &op::Sum)?;
    assert!(size == 1 || seen > 0, "nobody combined");
    Ok(())
}
