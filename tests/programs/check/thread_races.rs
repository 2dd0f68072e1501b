//! Races between the threads of one rank, each of which once lost a
//! wake-up or undid another thread's wait: two probes at once past the
//! queue bound, two sends at once, a wait on several requests whose test
//! completes an earlier one, communicators made inside an operator and on
//! two threads at once, an operator that panics while another thread
//! moves its collective on, and one that panics in a blocking collective
//! run by a thread that ends while its rank goes on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use spmd::{Error, Match, Pending, Request, World, op};

pub fn run(world: &World) -> Result<(), Error> {
    probes_at_once(world)?;
    sends_at_once(world)?;
    wait_any_wakeups(world)?;
    constructors_in_operators(world)?;
    constructors_on_two_threads(world)?;
    operator_panic_elsewhere(world)?;
    operator_panic_blocking(world)?;
    world.barrier()
}

/// Rank 0 probes on two communicators from two threads; the probe that
/// ends first must not stop the other's peer from being read once more
/// than the queue bound (8 MiB a peer) waits unreceived ahead of its
/// message.
fn probes_at_once(world: &World) -> Result<(), Error> {
    let (x, flood, z) = (world.dup()?, world.dup()?, world.dup()?);
    if world.size() < 2 || world.rank() > 1 {
        return world.barrier();
    }
    let chunk = vec![1u64; 1 << 17];
    let chunks = 12;
    if world.rank() == 1 {
        z.send(&7u64, 0)?;
        std::thread::sleep(Duration::from_millis(200));
        let sends: Vec<_> = (0..chunks)
            .map(|_| flood.immediate_send_slice(&chunk, 0))
            .collect::<Result<_, _>>()?;
        x.send(&5u64, 0)?;
        spmd::wait_all(sends)?;
    } else {
        std::thread::scope(|t| -> Result<(), Error> {
            let a = t.spawn(move || -> Result<u64, Error> {
                x.probe(Match::source(1))?;
                x.receive(1)
            });
            let b = t.spawn(move || -> Result<u64, Error> {
                std::thread::sleep(Duration::from_millis(50));
                z.probe(Match::source(1))?;
                z.receive(1)
            });
            assert_eq!(b.join().expect("no panic")?, 7, "the second probe's message");
            assert_eq!(a.join().expect("no panic")?, 5, "the first probe's message");
            Ok(())
        })?;
        for _ in 0..chunks {
            assert_eq!(flood.receive_vec::<u64>(1)?, chunk);
        }
    }
    world.barrier()
}

/// Ranks 0 and 1 each block one thread in a send to rank 2, which takes it
/// only once both have sent the other more than the queue bound (8 MiB a
/// peer) from another thread, and send on: when the first send ends, the
/// others must still read their peer, or both stay in their sends for ever.
fn sends_at_once(world: &World) -> Result<(), Error> {
    let (x, y, gate) = (world.dup()?, world.dup()?, world.dup()?);
    if world.size() < 3 || world.rank() > 2 {
        return world.barrier();
    }
    let (before, after) = (12, 48);
    match world.rank() {
        2 => {
            for from in [0, 1] {
                gate.receive::<u8>(from)?;
            }
            for from in [0, 1] {
                assert_eq!(y.receive_vec::<u8>(from)?.len(), 16 << 20);
            }
        }
        me => {
            let other = 1 - me;
            let (big, small) = (vec![me as u8; 1 << 20], vec![0u8; 16 << 20]);
            std::thread::scope(|t| -> Result<(), Error> {
                let small = &small;
                let to_late = t.spawn(move || y.send_slice(small, 2));
                std::thread::sleep(Duration::from_millis(20));
                for i in 0..before + after {
                    if i == before {
                        gate.send(&1u8, 2)?;
                    }
                    x.send_slice(&big, other)?;
                }
                for _ in 0..before + after {
                    assert_eq!(x.receive_vec::<u8>(other)?, vec![other as u8; 1 << 20]);
                }
                to_late.join().expect("no panic")
            })?;
        }
    }
    world.barrier()
}

/// Rank 0 waits on one receive that completes and many that never do;
/// testing a later request reads the message of the first, and the wait
/// must not then sleep as if nothing had come.
fn wait_any_wakeups(world: &World) -> Result<(), Error> {
    let (x, never) = (world.dup()?, world.dup()?);
    if world.size() < 2 || world.rank() > 1 {
        return world.barrier();
    }
    let (rounds, idle) = (400u32, 200);
    if world.rank() == 0 {
        let mut idle_requests: Vec<_> = (0..idle)
            .map(|_| never.immediate_receive_with_tag::<u64>(1, 9))
            .collect::<Result<_, _>>()?;
        for i in 0..rounds {
            let mut answer = x.immediate_receive_with_tag::<u32>(1, i)?;
            {
                let mut all: Vec<&mut dyn Pending> = vec![&mut answer];
                all.extend(idle_requests.iter_mut().map(|r| r as &mut dyn Pending));
                assert_eq!(spmd::wait_any(&mut all)?, 0, "round {i}");
            }
            assert_eq!(answer.wait()?.0, i);
            x.send_with_tag(&i, 1, i)?;
        }
        for r in idle_requests.drain(..) {
            r.wait()?;
        }
    } else {
        let mut seed = 7u64;
        for i in 0..rounds {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            std::thread::sleep(Duration::from_micros((seed >> 33) % 1000));
            x.send_with_tag(&i, 0, i)?;
            assert_eq!(x.receive_with_tag::<u32>(0, i)?, i);
        }
        for _ in 0..idle {
            never.send_with_tag(&0u64, 0, 9)?;
        }
    }
    world.barrier()
}

/// `dup` and `split` inside an operator fail with `Error::Reentered` and
/// leave nothing behind: afterwards every rank makes communicators from
/// the same parent alike, even those whose operator ran.
fn constructors_in_operators(world: &World) -> Result<(), Error> {
    let inner = world.dup()?;
    let refused = Arc::new(Mutex::new(Vec::new()));
    let closure = |a: &u64, b: &u64| {
        let dup = inner.dup().map(|_| ());
        let split = inner.split(Some(0), 0).map(|_| ());
        refused.lock().expect("not poisoned").extend([dup, split]);
        a + b
    };
    assert_eq!(
        world.reduce(&1u64, &closure, 0)?.unwrap_or(world.size() as u64),
        world.size() as u64
    );
    assert_eq!(world.scan(&1u64, &closure)?, world.rank() as u64 + 1);
    for result in refused.lock().expect("not poisoned").drain(..) {
        assert!(matches!(result, Err(Error::Reentered)), "{result:?}");
    }
    // The counts of communicators made from `inner` still agree.
    let again = inner.dup()?;
    assert_eq!(again.allreduce(&1u64, &op::Sum)?, world.size() as u64);
    let half = inner
        .split(Some((world.rank() % 2) as u32), 0)?
        .expect("every rank has a color");
    let alike = (0..world.size()).filter(|r| r % 2 == world.rank() % 2).count();
    assert_eq!(half.allreduce(&1u64, &op::Sum)?, alike as u64);
    world.barrier()
}

/// Two threads make communicators from two parents at once, rank 0
/// starting with the first parent and the others with the second: neither
/// waits for the other (no lock is held across the agreement), and the
/// ids they take differ.
fn constructors_on_two_threads(world: &World) -> Result<(), Error> {
    let (p, q) = (world.dup()?, world.dup()?);
    let first = world.rank() == 0;
    let (made_p, made_q) = std::thread::scope(|t| -> Result<_, Error> {
        let a = t.spawn(move || -> Result<Vec<_>, Error> {
            if !first {
                std::thread::sleep(Duration::from_millis(100));
            }
            (0..3).map(|_| p.dup()).collect()
        });
        let b = t.spawn(move || -> Result<Vec<_>, Error> {
            if first {
                std::thread::sleep(Duration::from_millis(100));
            }
            (0..3).map(|_| q.dup()).collect()
        });
        Ok((a.join().expect("no panic")?, b.join().expect("no panic")?))
    })?;
    let size = world.size() as u64;
    for (i, c) in made_p.iter().chain(&made_q).enumerate() {
        assert_eq!(c.allreduce(&1u64, &op::Sum)?, size, "communicator {i}");
    }
    // Messages in one do not match receives in another.
    let (next, prev) = (
        (world.rank() + 1) % world.size(),
        (world.rank() + world.size() - 1) % world.size(),
    );
    for (i, c) in made_p.iter().chain(&made_q).enumerate() {
        c.send(&(i as u64), next)?;
    }
    let all: Vec<_> = made_p.iter().chain(&made_q).enumerate().collect();
    for (i, c) in all.into_iter().rev() {
        assert_eq!(c.receive::<u64>(prev)?, i as u64);
    }
    world.barrier()
}

/// On rank 0, the operator of thread A's immediate allreduce panics while
/// thread B, in a receive on another communicator, moves the collective
/// on: the panic comes out of A's wait, not B's receive, and rank 0's
/// next collective on that communicator is refused (`CollectivesBroken`);
/// rank 1's wait gets the sum or fails naming rank 0; both go on
/// afterwards.
fn operator_panic_elsewhere(world: &World) -> Result<(), Error> {
    // Two ranks, so that both fold. On the MPI backend any panic ends the
    // job (README, "Running on a cluster"): the failures suite checks that.
    if world.size() < 2 || world.backend() == spmd::Backend::Mpi {
        return Ok(());
    }
    let Some(pair) = world.subset(&[0, 1])? else {
        return world.barrier();
    };
    let (d1, d2) = (pair.dup()?, pair.dup()?);
    let rank = pair.rank();
    std::thread::scope(|t| -> Result<(), Error> {
        let a = t.spawn(move || -> Result<u64, Error> {
            let request = d1.immediate_allreduce(
                &1u64,
                op::from_fn(move |a: &u64, b: &u64| {
                    assert_ne!(rank, 0, "a deliberate panic in an operator");
                    a + b
                }),
            )?;
            // Not in spmd while the others' parts arrive.
            std::thread::sleep(Duration::from_millis(400));
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| request.wait())) {
                Ok(result) => result,
                Err(panic) => {
                    // The call failed here: the next collective on the
                    // communicator is refused, as after any failure.
                    match d1.barrier() {
                        Err(Error::CollectivesBroken { detail }) => assert!(detail.contains("panicked"), "{detail}"),
                        other => panic!("rank 0's barrier after its operator panicked gave {other:?}"),
                    }
                    std::panic::resume_unwind(panic)
                }
            }
        });
        let b = t.spawn(move || -> Result<u64, Error> {
            if rank == 0 {
                d2.receive::<u64>(1)
            } else {
                std::thread::sleep(Duration::from_millis(100));
                d2.send(&5u64, 0)?;
                Ok(5)
            }
        });
        assert_eq!(b.join().expect("B does not see A's panic")?, 5);
        match (rank, a.join()) {
            (0, Err(panic)) => {
                let text = panic.downcast_ref::<String>().map_or("", String::as_str);
                assert!(text.contains("a deliberate panic"), "{text}");
            }
            (0, Ok(result)) => panic!("rank 0's operator panicked, yet its wait returned {result:?}"),
            // Rank 1 folded both parts before rank 0's notice came, or
            // was told that rank 0 failed.
            (_, Ok(Ok(sum))) => assert_eq!(sum, 2),
            (_, Ok(Err(e))) => assert!(e.to_string().contains("rank 0"), "{e}"),
            (_, Err(_)) => panic!("only rank 0's operator panics"),
        }
        Ok(())
    })?;
    world.barrier()
}

/// The operator of a blocking allreduce on a duplicate panics on every
/// rank that runs it; the allreduce runs in a thread that ends while the
/// rank's main thread goes on to a barrier of the world. A rank whose
/// operator did not run is told that another failed, instead of waiting
/// for ever for its part, and everyone meets at the barrier.
fn operator_panic_blocking(world: &World) -> Result<(), Error> {
    if world.size() < 2 || world.backend() == spmd::Backend::Mpi {
        return Ok(());
    }
    let dup = world.dup()?;
    let outcome = std::thread::scope(|t| {
        t.spawn(move || {
            dup.allreduce(
                &1u64,
                &op::from_fn(|a: &u64, b: &u64| -> u64 {
                    assert!(a + b == 0, "a deliberate panic in a blocking collective's operator");
                    0
                }),
            )
        })
        .join()
    });
    match outcome {
        Err(panic) => {
            let text = panic.downcast_ref::<&str>().copied().unwrap_or("");
            assert!(text.contains("a deliberate panic"), "{text}");
        }
        Ok(Err(e)) => assert!(e.to_string().contains("panicked"), "{e}"),
        Ok(Ok(sum)) => panic!("every operator panics, yet the allreduce returned {sum}"),
    }
    world.barrier()
}
