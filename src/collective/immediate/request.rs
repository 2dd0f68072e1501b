//! The request an `immediate_` collective returns: waited on, tested, or completed when dropped.

use crate::communicator::Communicator;
use crate::error::{Error, Result};
use crate::progress::Part;
use crate::request::Request;

/// An `immediate_` collective in progress: [`Request::wait`] for its
/// result, [`Request::test`] to look without waiting; it also goes in
/// [`wait_any`](crate::wait_any) and its kin beside point-to-point requests.
///
/// The collective moves on whenever this rank waits or polls in spmd (any
/// blocking receive, wait, test or collective), not while it only
/// computes: a rank that computes for a long time between calls holds up
/// the ranks that wait for its part. Dropping the request waits for the
/// collective to end, as the other ranks need this rank's part. On the MPI
/// backend, a thread of the process moves the serde and closure forms on
/// while they are in flight, so they also move while the rank computes
/// (README, "Running on a cluster").
#[must_use = "wait on the request to complete the collective"]
pub struct CollectiveRequest<'c, T> {
    pub(super) comm: &'c Communicator,
    pub(super) id: Option<u64>,
    pub(super) finish: Option<Finish<'c, T>>,
    /// On the MPI backend: the collective as MPI runs it.
    #[cfg(feature = "mpi")]
    pub(super) mpi: Option<crate::mpi_backend::MpiCollective<'c, T>>,
}

pub(super) type Finish<'c, T> = Box<dyn FnOnce(Part) -> Result<T> + 'c>;

impl<T> std::fmt::Debug for CollectiveRequest<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectiveRequest").field("id", &self.id).finish()
    }
}

impl<T> Request for CollectiveRequest<'_, T> {
    type Output = T;

    fn wait(mut self) -> Result<T> {
        #[cfg(feature = "mpi")]
        if let Some(chain) = self.mpi.take() {
            return chain.wait();
        }
        let (Some(id), Some(finish)) = (self.id.take(), self.finish.take()) else {
            unreachable!("a collective request is waited on once, by value")
        };
        let part = noting_panic(self.comm, || self.comm.engine()?.wait_schedule(id));
        let part = self.comm.ranked(part).inspect_err(|e| self.comm.immediate_failed(e))?;
        self.comm.ranked(finish(part))
    }

    fn test(&mut self) -> Result<bool> {
        #[cfg(feature = "mpi")]
        if let Some(chain) = &mut self.mpi {
            return chain.test();
        }
        let Some(id) = self.id else { return Ok(true) };
        let done = noting_panic(self.comm, || self.comm.engine()?.test_schedule(id));
        self.comm.ranked(done).inspect_err(|e| self.comm.immediate_failed(e))
    }

    fn wait_timeout(&mut self, timeout: std::time::Duration) -> Result<bool> {
        #[cfg(feature = "mpi")]
        if let Some(chain) = &mut self.mpi {
            return chain.wait_timeout(timeout);
        }
        let Some(id) = self.id else { return Ok(true) };
        let deadline = std::time::Instant::now().checked_add(timeout);
        let done = noting_panic(self.comm, || self.comm.engine()?.wait_schedule_until(id, deadline));
        self.comm.ranked(done).inspect_err(|e| self.comm.immediate_failed(e))
    }
}

/// Runs `look` (a wait or test of a schedule, which hands on its
/// operator's panic): a panic there breaks the communicator's collectives
/// before it goes on, as any failure of the call does (and as a blocking
/// collective's panic does), so that this rank's next collective on it is
/// refused instead of meeting the others' messages of a call they know
/// failed.
fn noting_panic<R>(comm: &Communicator, look: impl FnOnce() -> Result<R>) -> Result<R> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(look)) {
        Ok(result) => result,
        Err(panic) => {
            let text = crate::progress::panic_text(&*panic);
            comm.immediate_failed(&Error::InvalidArgument(format!(
                "its operator panicked on this rank: {text}"
            )));
            std::panic::resume_unwind(panic)
        }
    }
}

impl<T> Drop for CollectiveRequest<'_, T> {
    /// Waits for the collective and completes it (an `_into` buffer is
    /// written), as the other ranks need this rank's part.
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        // Unwinding, the rank is on its way out: waiting could only delay
        // the end of the job.
        if std::thread::panicking() {
            return;
        }
        let waited = noting_panic(self.comm, || match self.comm.engine_for_cleanup() {
            Some(mut engine) => engine.wait_schedule(id).map(Some),
            None => Ok(None),
        });
        let part = match waited {
            Ok(Some(part)) => Ok(part),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        match part.and_then(|part| self.finish.take().map_or(Ok(()), |finish| finish(part).map(|_| ()))) {
            Ok(()) | Err(Error::Finalized) => {}
            Err(e) => self.comm.immediate_failed(&e),
        }
    }
}
