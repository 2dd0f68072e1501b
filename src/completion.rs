//! Waiting on several requests at once, of any kinds: `wait_any`,
//! `wait_some`, `test_any`, `test_all`, and requests grouped in tuples.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::communicator::Job;
use crate::error::Result;
use crate::request::Request;

thread_local! {
    /// How many tests on this thread found a receive that only this rank
    /// could complete (from itself, or from anyone while alone in its
    /// communicator) not yet complete; see [`note_only_this_rank_sends`].
    static ONLY_THIS_RANK: Cell<usize> = const { Cell::new(0) };
    /// True if the last look at several requests found every one of them
    /// waiting on such a receive.
    static ALL_ON_THIS_RANK: Cell<bool> = const { Cell::new(false) };
}

/// Called by a test that finds its receive waiting for a message only this
/// rank could send: a wait with no end on requests that all do so would
/// wait for ever, and fails instead (a test, or a wait with a deadline,
/// goes on: this rank may yet send it).
pub(crate) fn note_only_this_rank_sends() {
    ONLY_THIS_RANK.with(|n| n.set(n.get().wrapping_add(1)));
}

/// The error of a wait with no end for messages that only this rank could
/// send (from itself, or from anyone while alone in its communicator) and
/// has not: it would wait for ever.
pub(crate) fn never_sent() -> crate::Error {
    crate::Error::InvalidArgument(
        "this rank waits for a message that only it could send (from itself, or from anyone while alone in its \
         communicator) and has not sent; this would wait for ever"
            .into(),
    )
}

/// Tests `request`: whether it is complete, and whether it waits on a
/// receive only this rank could complete.
fn test_noting(request: &mut dyn Pending) -> Result<(bool, bool)> {
    let before = ONLY_THIS_RANK.with(Cell::get);
    let done = request.is_complete()?;
    Ok((done, !done && ONLY_THIS_RANK.with(Cell::get) != before))
}

/// A request that can be tested without naming what it yields, so that
/// sends and receives of any types go in one slice for [`wait_any`] and its
/// kin. Every [`Request`] is one.
pub trait Pending {
    /// Makes progress without waiting; true once the request is complete
    /// (its `wait` returns at once).
    fn is_complete(&mut self) -> Result<bool>;
}

impl<R: Request> Pending for R {
    fn is_complete(&mut self) -> Result<bool> {
        self.test()
    }
}

/// Waits until one of `requests` is complete and returns its index (the
/// lowest, if several are); `wait` on it then returns at once. An error of
/// any request (its peer has gone, say) is returned instead. A request that
/// is complete stays complete: leave it out of the next call.
///
/// ```no_run
/// use spmd::{Match, Request};
/// # let world = spmd::init().unwrap();
/// let mut send = world.immediate_send(&1u8, 1)?;
/// let mut receive = world.immediate_receive_matching::<String>(Match::any())?;
/// match spmd::wait_any(&mut [&mut send, &mut receive])? {
///     0 => send.wait()?,
///     _ => println!("got {}", receive.wait()?.0),
/// }
/// # Ok::<(), spmd::Error>(())
/// ```
pub fn wait_any(requests: &mut [&mut dyn Pending]) -> Result<usize> {
    let found = wait_until(requests, None, |r| first_complete(r))?;
    Ok(found.expect("the wait ends when a request is complete"))
}

/// [`wait_any`] that gives up after `timeout`: `None` if no request
/// completed by then (the requests go on, to wait on again).
pub fn wait_any_timeout(requests: &mut [&mut dyn Pending], timeout: Duration) -> Result<Option<usize>> {
    wait_until(requests, Instant::now().checked_add(timeout), |r| first_complete(r))
}

/// Waits until at least one of `requests` is complete and returns the
/// indexes of all that are, in order.
pub fn wait_some(requests: &mut [&mut dyn Pending]) -> Result<Vec<usize>> {
    let found = wait_until(requests, None, some_complete)?;
    Ok(found.expect("the wait ends when a request is complete"))
}

/// [`wait_some`] that gives up after `timeout`: empty if no request
/// completed by then.
pub fn wait_some_timeout(requests: &mut [&mut dyn Pending], timeout: Duration) -> Result<Vec<usize>> {
    Ok(wait_until(requests, Instant::now().checked_add(timeout), some_complete)?.unwrap_or_default())
}

fn some_complete(requests: &mut [&mut dyn Pending]) -> Result<Option<Vec<usize>>> {
    let done = all_complete(requests)?;
    Ok((!done.is_empty()).then_some(done))
}

/// The index of the first of `requests` that is complete, without
/// waiting; `None` if none is yet.
pub fn test_any(requests: &mut [&mut dyn Pending]) -> Result<Option<usize>> {
    first_complete(requests)
}

/// True if every one of `requests` is complete, without waiting.
pub fn test_all(requests: &mut [&mut dyn Pending]) -> Result<bool> {
    Ok(all_complete(requests)?.len() == requests.len())
}

fn first_complete(requests: &mut [&mut dyn Pending]) -> Result<Option<usize>> {
    let mut on_this_rank = 0;
    for (i, r) in requests.iter_mut().enumerate() {
        let (done, only_this_rank) = test_noting(*r)?;
        if done {
            return Ok(Some(i));
        }
        on_this_rank += usize::from(only_this_rank);
    }
    ALL_ON_THIS_RANK.with(|all| all.set(on_this_rank == requests.len()));
    Ok(None)
}

fn all_complete(requests: &mut [&mut dyn Pending]) -> Result<Vec<usize>> {
    let (mut done, mut on_this_rank) = (Vec::new(), 0);
    for (i, r) in requests.iter_mut().enumerate() {
        let (complete, only_this_rank) = test_noting(*r)?;
        if complete {
            done.push(i);
        }
        on_this_rank += usize::from(only_this_rank);
    }
    ALL_ON_THIS_RANK.with(|all| all.set(on_this_rank == requests.len()));
    Ok(done)
}

/// Tests `requests` with `look` until it finds something or `deadline`
/// passes (`Ok(None)`), sleeping in the rank's engine between looks (until
/// anything moves: a message arrives, a send drains, a peer leaves), so
/// that a rank waiting uses no CPU.
fn wait_until<T>(
    requests: &mut [&mut dyn Pending],
    deadline: Option<Instant>,
    mut look: impl FnMut(&mut [&mut dyn Pending]) -> Result<Option<T>>,
) -> Result<Option<T>> {
    if requests.is_empty() {
        return Err(crate::Error::InvalidArgument(
            "a wait on no requests would wait for ever".into(),
        ));
    }
    // On the MPI backend there is no engine to sleep on: MPI progresses
    // as the requests are tested.
    let job = Job::current().filter(|job| job.has_engine());
    let result = (|| loop {
        let moves = match &job {
            Some(job) => job.engine()?.begin_look(),
            None => 0,
        };
        ALL_ON_THIS_RANK.with(|all| all.set(false));
        if let Some(found) = look(requests)? {
            return Ok(Some(found));
        }
        if deadline.is_none() && ALL_ON_THIS_RANK.with(Cell::get) {
            return Err(never_sent());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
        match &job {
            Some(job) => job.engine()?.sleep_for_any(deadline, moves)?,
            // No job: requests complete by being tested.
            None => std::thread::yield_now(),
        }
    })();
    if let Some(job) = &job {
        job.engine()?.wait_over();
    }
    result
}

/// Waits until `request` is complete or `timeout` has passed: true if it
/// is complete (its `wait` then returns at once). See
/// [`Request::wait_timeout`].
pub(crate) fn wait_one_timeout(request: &mut dyn Pending, timeout: Duration) -> Result<bool> {
    let found = wait_until(&mut [request], Instant::now().checked_add(timeout), |r| {
        first_complete(r)
    })?;
    Ok(found.is_some())
}

/// Requests grouped in a tuple are one request: `(receive, send).wait()`
/// waits for both and returns both outputs, so that requests of different
/// kinds wait together.
macro_rules! tuple_request {
    ($($name:ident : $index:tt),+) => {
        impl<$($name: Request),+> Request for ($($name,)+) {
            type Output = ($($name::Output,)+);

            fn wait(self) -> Result<Self::Output> {
                Ok(($(self.$index.wait()?,)+))
            }

            fn test(&mut self) -> Result<bool> {
                let mut all = true;
                $(all &= self.$index.test()?;)+
                Ok(all)
            }
        }
    };
}

tuple_request!(A: 0, B: 1);
tuple_request!(A: 0, B: 1, C: 2);
tuple_request!(A: 0, B: 1, C: 2, D: 3);
