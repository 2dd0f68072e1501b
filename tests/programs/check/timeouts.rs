//! Checks of the `_timeout` forms: every blocking receive, probe, wait and
//! `barrier` gives up with `Error::Timeout` when nothing comes, and still
//! gets what comes in time; a request waited on with a timeout goes on.

use std::time::{Duration, Instant};

use spmd::{Communicator, Error, Match, Request};

const SHORT: Duration = Duration::from_millis(30);
const LONG: Duration = Duration::from_secs(60);

fn timed_out<T: std::fmt::Debug>(what: &str, r: Result<T, Error>) {
    match r {
        Err(Error::Timeout { .. }) => {}
        other => panic!("{what}: expected a timeout, got {other:?}"),
    }
}

pub fn run(comm: &Communicator) -> Result<(), Error> {
    receives(comm)?;
    requests(comm)?;
    barriers(comm)?;
    Ok(())
}

/// Each receive and probe form: nothing from this rank itself, then the
/// message it sends itself.
fn receives(comm: &Communicator) -> Result<(), Error> {
    let (me, n) = (comm.rank(), comm.size());
    // Nothing ever comes from the next rank with tag 77 (alone, a rank
    // waiting for itself is an error at once, not a timeout).
    let next = (me + 1) % n;
    let none = Match::source(next).with_tag(77);
    if n > 1 {
        let started = Instant::now();
        timed_out("receive_timeout", comm.receive_with_tag_timeout::<u64>(next, 77, SHORT));
        assert!(started.elapsed() >= SHORT, "receive_with_tag_timeout gave up early");
        timed_out(
            "receive_matching_timeout",
            comm.receive_matching_timeout::<u64>(none, SHORT),
        );
        timed_out(
            "receive_vec_matching_timeout",
            comm.receive_vec_matching_timeout::<u32>(none, SHORT),
        );
        let mut buf = [0u32; 4];
        timed_out(
            "receive_into_matching_timeout",
            comm.receive_into_matching_timeout(&mut buf, none, SHORT),
        );
        timed_out("probe_timeout", comm.probe_timeout(none, SHORT));
    }
    let mut buf = [0u32; 4];
    comm.send(&1u64, me)?;
    // A timeout too long to add to the clock is no deadline.
    assert_eq!(comm.receive_timeout::<u64>(me, Duration::MAX)?, 1);
    comm.send(&1u64, me)?;
    assert_eq!(comm.receive_timeout::<u64>(me, LONG)?, 1);
    comm.send_with_tag(&2u64, me, 3)?;
    assert_eq!(comm.receive_with_tag_timeout::<u64>(me, 3, LONG)?, 2);
    comm.send_slice_with_tag(&[7u32, 8], me, 5)?;
    assert_eq!(
        comm.probe_timeout(Match::source(me).with_tag(5), LONG)?.count(),
        Some(2)
    );
    let (v, _) = comm.receive_vec_matching_timeout::<u32>(Match::source(me), LONG)?;
    assert_eq!(v, [7, 8]);
    comm.send_slice(&[1u32, 2, 3, 4], me)?;
    comm.receive_into_matching_timeout(&mut buf, Match::source(me), LONG)?;
    assert_eq!(buf, [1, 2, 3, 4]);
    Ok(())
}

/// A request, a set of them, and an immediate barrier that rank 0 joins
/// late: the waits with a timeout run out, the requests go on, and they
/// complete once the message or the late rank comes.
fn requests(comm: &Communicator) -> Result<(), Error> {
    let (me, n) = (comm.rank(), comm.size());
    if n > 1 {
        let next = (me + 1) % n;
        let mut receive = comm.immediate_receive_with_tag::<u64>(next, 9)?;
        assert!(!receive.wait_timeout(SHORT)?, "a receive with no message completed");
        assert_eq!(spmd::wait_any_timeout(&mut [&mut receive], SHORT)?, None);
        assert!(spmd::wait_some_timeout(&mut [&mut receive], SHORT)?.is_empty());
        // Every rank's waits have run out before any message goes.
        comm.barrier()?;
        comm.send_with_tag(&9u64, (me + n - 1) % n, 9)?;
        assert!(receive.wait_timeout(LONG)?, "the receive did not complete");
        assert_eq!(receive.wait()?.0, 9);
    }
    if n < 2 {
        return Ok(());
    }
    // Rank 0 joins the barrier only once every other rank has seen its
    // own wait run out.
    if me == 0 {
        for r in 1..n {
            comm.receive_with_tag::<()>(r, 10)?;
        }
        comm.immediate_barrier()?.wait()?;
    } else {
        let mut barrier = comm.immediate_barrier()?;
        assert!(
            !barrier.wait_timeout(SHORT)?,
            "rank {me}: a barrier without rank 0 completed"
        );
        comm.send_with_tag(&(), 0, 10)?;
        assert!(barrier.wait_timeout(LONG)?, "rank {me}: the barrier did not complete");
        barrier.wait()?;
    }
    Ok(())
}

/// `barrier_timeout` that every rank reaches, then one that rank 0
/// enters alone (over the node's shared memory on the world, by messages
/// on other communicators): it times out there, and the others, entering
/// later, hear that it failed. Last in the run, as it breaks the
/// communicator's collectives.
fn barriers(comm: &Communicator) -> Result<(), Error> {
    let (me, n) = (comm.rank(), comm.size());
    comm.barrier_timeout(LONG)?;
    comm.barrier_timeout(Duration::MAX)?;
    comm.barrier()?;
    let mut barrier = comm.immediate_barrier()?;
    assert!(barrier.wait_timeout(Duration::MAX)?);
    barrier.wait()?;
    if n < 2 {
        return Ok(());
    }
    if comm.backend() == spmd::Backend::Mpi {
        // MPI cannot cancel a collective: the barrier that timed out stays
        // posted, and the next barrier call waits for it again.
        if me == 0 {
            timed_out("barrier_timeout alone", comm.barrier_timeout(SHORT));
            timed_out("barrier_timeout alone, again", comm.barrier_timeout(SHORT));
            for r in 1..n {
                comm.send_with_tag(&(), r, 11)?;
            }
            comm.barrier()?;
        } else {
            comm.receive_with_tag::<()>(0, 11)?;
            comm.barrier_timeout(LONG)?;
        }
        comm.barrier()?;
    } else if me == 0 {
        timed_out("barrier_timeout alone", comm.barrier_timeout(SHORT));
        for r in 1..n {
            comm.send_with_tag(&(), r, 11)?;
        }
        match comm.barrier() {
            Err(Error::CollectivesBroken { .. }) => {}
            other => panic!("the collective after a timed-out barrier gave {other:?}"),
        }
    } else {
        comm.receive_with_tag::<()>(0, 11)?;
        match comm.barrier_timeout(LONG) {
            Err(Error::CollectiveFailed { rank: 0, detail }) => assert!(detail.contains("barrier"), "{detail}"),
            other => panic!("rank {me}: a barrier after rank 0's timed out gave {other:?}"),
        }
    }
    // Point-to-point calls go on working.
    let next = (me + 1) % n;
    let from: usize = comm.sendrecv(&me, next, (me + n - 1) % n)?;
    assert_eq!(from, (me + n - 1) % n);
    Ok(())
}
