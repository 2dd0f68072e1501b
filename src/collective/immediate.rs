//! The `immediate_` (non-blocking) collectives: `immediate_barrier`,
//! `immediate_broadcast` and `immediate_allreduce`, with `_into` forms for
//! plain numbers. Each returns a [`CollectiveRequest`] at once and runs as a
//! schedule the rank's engine carries on whenever this rank waits or polls
//! in spmd (see `progress/schedule.rs`).
//!
//! The algorithms: a dissemination barrier (`log2 n` rounds), a binomial
//! tree from the root for broadcast, and for allreduce a binomial tree
//! that combines in rank order to rank 0 and a broadcast of the result, so
//! that every rank gets the same bits and a non-commutative operator is
//! fine.

use bytemuck::Pod;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::algorithm::own_envelope;
use super::call::Kind;
use crate::communicator::{Communicator, on_mpi};
use crate::error::{Error, Result};
use crate::message;
use crate::op::Op;
use crate::progress::{Fold, Part, Plan, Step};
use crate::request::Request;
use crate::wire::Context;

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
    comm: &'c Communicator,
    id: Option<u64>,
    finish: Option<Finish<'c, T>>,
    /// On the MPI backend: the collective as MPI runs it.
    #[cfg(feature = "mpi")]
    mpi: Option<crate::mpi_backend::MpiCollective<'c, T>>,
}

type Finish<'c, T> = Box<dyn FnOnce(Part) -> Result<T> + 'c>;

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
        let part = self.comm.engine()?.wait_schedule(id);
        let part = self.comm.ranked(part).inspect_err(|e| self.comm.immediate_failed(e))?;
        self.comm.ranked(finish(part))
    }

    fn test(&mut self) -> Result<bool> {
        #[cfg(feature = "mpi")]
        if let Some(chain) = &mut self.mpi {
            return chain.test();
        }
        let Some(id) = self.id else { return Ok(true) };
        let done = self.comm.engine()?.test_schedule(id);
        self.comm.ranked(done).inspect_err(|e| self.comm.immediate_failed(e))
    }

    fn wait_timeout(&mut self, timeout: std::time::Duration) -> Result<bool> {
        #[cfg(feature = "mpi")]
        if let Some(chain) = &mut self.mpi {
            return chain.wait_timeout(timeout);
        }
        let Some(id) = self.id else { return Ok(true) };
        let deadline = std::time::Instant::now().checked_add(timeout);
        let done = self.comm.engine()?.wait_schedule_until(id, deadline);
        self.comm.ranked(done).inspect_err(|e| self.comm.immediate_failed(e))
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
        let Some(part) = self
            .comm
            .engine_for_cleanup()
            .map(|mut engine| engine.wait_schedule(id))
        else {
            return;
        };
        match part.and_then(|part| self.finish.take().map_or(Ok(()), |finish| finish(part).map(|_| ()))) {
            Ok(()) | Err(Error::Finalized) => {}
            Err(e) => self.comm.immediate_failed(&e),
        }
    }
}

/// Folds the plain numbers in `upper` into those in `lower`, element by
/// element, in place (the bytes need not be aligned for `E`).
fn fold_numbers<E: Pod>(op: &impl Op<E>, lower: &mut [u8], upper: &[u8]) {
    let size = std::mem::size_of::<E>();
    if size == 0 {
        return;
    }
    crate::progress::combining(|| {
        for (a, b) in lower.chunks_exact_mut(size).zip(upper.chunks_exact(size)) {
            let x: E = bytemuck::pod_read_unaligned(a);
            let y: E = bytemuck::pod_read_unaligned(b);
            a.copy_from_slice(bytemuck::bytes_of(&op.combine(&x, &y)));
        }
    });
}

/// The rank `v` positions after `root`, and back.
fn relative(rank: usize, root: usize, n: usize) -> usize {
    (rank + n - root) % n
}

/// A dissemination barrier: in round `k`, send to `me + 2^k` and hear
/// from `me - 2^k`.
fn barrier_steps(me: usize, n: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut d = 1;
    while d < n {
        steps.push(Step::Send((me + d) % n));
        steps.push(Step::Take((me + n - d) % n));
        d *= 2;
    }
    steps
}

/// A binomial tree from `root`: hear from the parent, then send to the
/// children, farthest first.
fn broadcast_steps(me: usize, n: usize, root: usize) -> Vec<Step> {
    let v = relative(me, root, n);
    let mut steps = Vec::new();
    let mut mask = 1;
    while mask < n {
        if v & mask != 0 {
            steps.push(Step::Take((v - mask + root) % n));
            break;
        }
        mask <<= 1;
    }
    mask >>= 1;
    while mask > 0 {
        if v + mask < n {
            steps.push(Step::Send((v + mask + root) % n));
        }
        mask >>= 1;
    }
    steps
}

/// A binomial tree to rank 0 in which rank `v` holds ranks
/// `v..v + mask` and folds in `v + mask..v + 2 mask`: rank order.
fn reduce_steps(me: usize, n: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut mask = 1;
    while mask < n {
        if me & mask != 0 {
            steps.push(Step::Send(me - mask));
            break;
        }
        if me + mask < n {
            steps.push(Step::Fold(me + mask));
        }
        mask <<= 1;
    }
    steps
}

impl Communicator {
    /// Starts `steps` (in this communicator's ranks) on `value`.
    fn start_immediate<'c, T>(
        &'c self,
        kind: Kind,
        root: usize,
        steps: Vec<Step>,
        (value, len, fold): (Part, Option<usize>, Option<Fold>),
        finish: Finish<'c, T>,
    ) -> Result<CollectiveRequest<'c, T>> {
        let (call, tag, node) = self.immediate_call(kind, root)?;
        let at = |r: usize| self.job_rank(r);
        let steps = steps
            .into_iter()
            .map(|s| match s {
                Step::Send(r) => Step::Send(at(r)),
                Step::Take(r) => Step::Take(at(r)),
                Step::Fold(r) => Step::Fold(at(r)),
            })
            .collect();
        let plan = Plan {
            context: Context::immediate(self.coll_context().communicator()),
            tag,
            call,
            members: (0..self.size()).map(at).collect(),
            steps,
            value,
            len,
            fold,
            node,
        };
        let id = self.ranked(self.engine()?.start_schedule(plan))?;
        Ok(CollectiveRequest {
            comm: self,
            id: Some(id),
            finish: Some(finish),
            #[cfg(feature = "mpi")]
            mpi: None,
        })
    }

    /// The request of a collective the MPI backend runs.
    #[cfg(feature = "mpi")]
    fn collective_on_mpi<'c, T>(
        &'c self,
        chain: Result<crate::mpi_backend::MpiCollective<'c, T>>,
    ) -> Result<CollectiveRequest<'c, T>> {
        Ok(CollectiveRequest {
            comm: self,
            id: None,
            finish: None,
            mpi: Some(chain?),
        })
    }

    /// Starts a barrier and returns at once; the request completes once
    /// every rank has called `immediate_barrier`.
    ///
    /// ```
    /// use spmd::Request;
    /// let world = spmd::init()?;
    /// let barrier = world.immediate_barrier()?;
    /// // ... work that does not depend on the other ranks ...
    /// barrier.wait()?;
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn immediate_barrier(&self) -> Result<CollectiveRequest<'_, ()>> {
        on_mpi!(self, |m| self.collective_on_mpi(m.immediate_barrier()));
        let steps = barrier_steps(self.rank(), self.size());
        let empty = Part {
            format: crate::envelope::Format::Serde,
            bytes: Vec::new(),
        };
        self.start_immediate(
            Kind::ImmediateBarrier,
            0,
            steps,
            (empty, Some(0), None),
            Box::new(|_| Ok(())),
        )
    }

    /// Starts a broadcast of the root's `value` and returns at once: on the
    /// root it is read now (it may change afterwards), on the other ranks
    /// it is overwritten when the request completes.
    ///
    /// ```
    /// use spmd::Request;
    /// let world = spmd::init()?;
    /// let mut config = if world.rank() == 0 { "steps=100".to_string() } else { String::new() };
    /// world.immediate_broadcast(&mut config, 0)?.wait()?;
    /// assert_eq!(config, "steps=100");
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn immediate_broadcast<'c, T: Serialize + DeserializeOwned>(
        &'c self,
        value: &'c mut T,
        root: usize,
    ) -> Result<CollectiveRequest<'c, ()>> {
        self.check_rank(root)?;
        on_mpi!(self, |m| self.collective_on_mpi(m.immediate_broadcast(value, root)));
        let is_root = self.rank() == root;
        let (format, bytes) = if is_root {
            message::encode(&*value)?
        } else {
            (crate::envelope::Format::Serde, Vec::new())
        };
        let finish: Finish<'c, ()> = Box::new(move |part| {
            if !is_root {
                *value = message::decode(&own_envelope(root, (part.format, part.bytes)))?;
            }
            Ok(())
        });
        let steps = broadcast_steps(self.rank(), self.size(), root);
        let start = (Part { format, bytes }, None, None);
        self.start_immediate(Kind::ImmediateBroadcast, root, steps, start, finish)
    }

    /// Starts a broadcast of the root's `buf` into every rank's `buf` (of
    /// the same length on every rank) and returns at once; the other
    /// ranks' `buf` is written when the request completes.
    ///
    /// ```
    /// use spmd::Request;
    /// let world = spmd::init()?;
    /// let mut grid = vec![world.rank() as f64; 4];
    /// world.immediate_broadcast_into(&mut grid, 0)?.wait()?;
    /// assert_eq!(grid, [0.0; 4]);
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn immediate_broadcast_into<'c, E: Pod>(
        &'c self,
        buf: &'c mut [E],
        root: usize,
    ) -> Result<CollectiveRequest<'c, ()>> {
        self.check_rank(root)?;
        on_mpi!(self, |m| self.collective_on_mpi(m.immediate_broadcast_into(buf, root)));
        let is_root = self.rank() == root;
        let len = std::mem::size_of_val(buf);
        let bytes = if is_root { message::pod_copy(buf) } else { Vec::new() };
        let finish: Finish<'c, ()> = Box::new(move |part| {
            if !is_root {
                bytemuck::cast_slice_mut::<E, u8>(buf).copy_from_slice(&part.bytes);
                crate::pool::give(part.bytes);
            }
            Ok(())
        });
        let steps = broadcast_steps(self.rank(), self.size(), root);
        let value = Part {
            format: message::raw::<E>(),
            bytes,
        };
        self.start_immediate(
            Kind::ImmediateBroadcastInto,
            root,
            steps,
            (value, Some(len), None),
            finish,
        )
    }

    /// Starts an allreduce of `value` with `op` and returns at once; the
    /// request yields the combination of every rank's value, in rank order,
    /// the same bits on every rank. The operator is taken by value, as it
    /// runs later (the built-in ones are unit structs: `op::Sum`).
    ///
    /// ```
    /// use spmd::{Request, op};
    /// let world = spmd::init()?;
    /// let total = world.immediate_allreduce(&(world.rank() as u64), op::Sum)?;
    /// // ... work that does not need the total ...
    /// assert_eq!(total.wait()?, (0..world.size() as u64).sum());
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn immediate_allreduce<T, O>(&self, value: &T, op: O) -> Result<CollectiveRequest<'_, T>>
    where
        T: Serialize + DeserializeOwned + 'static,
        O: Op<T> + Send + 'static,
    {
        on_mpi!(self, |m| self.collective_on_mpi(m.immediate_allreduce(value, op)));
        let (format, bytes) = message::encode(value)?;
        let fold: Fold = Box::new(move |acc: &mut Part, upper| {
            let bytes = std::mem::take(&mut acc.bytes);
            let lower: T = message::decode(&own_envelope(0, (acc.format, bytes)))?;
            let upper: T = message::decode(&upper)?;
            let combined = crate::progress::combining(|| op.combine(&lower, &upper));
            (acc.format, acc.bytes) = message::encode(&combined)?;
            Ok(())
        });
        let finish: Finish<'_, T> = Box::new(|part| message::decode(&own_envelope(0, (part.format, part.bytes))));
        let (me, n) = (self.rank(), self.size());
        let steps = [reduce_steps(me, n), broadcast_steps(me, n, 0)].concat();
        let start = (Part { format, bytes }, None, Some(fold));
        self.start_immediate(Kind::ImmediateAllreduce, 0, steps, start, finish)
    }

    /// Starts an allreduce of plain numbers, element by element, from
    /// `send` into `recv` (of the same length as `send`, on every rank the
    /// same), and returns at once; `recv` is written when the request
    /// completes. The operator is taken by value, as it runs later.
    ///
    /// ```
    /// use spmd::{Request, op};
    /// let world = spmd::init()?;
    /// let mine = [world.rank() as f64, 1.0];
    /// let mut sums = [0.0; 2];
    /// world.immediate_allreduce_into(&mine, &mut sums, op::Sum)?.wait()?;
    /// assert_eq!(sums[1], world.size() as f64);
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn immediate_allreduce_into<'c, E, O>(
        &'c self,
        send: &[E],
        recv: &'c mut [E],
        op: O,
    ) -> Result<CollectiveRequest<'c, ()>>
    where
        E: Pod,
        O: Op<E> + Send + 'static,
    {
        on_mpi!(self, |m| self
            .collective_on_mpi(m.immediate_allreduce_into(send, recv, op)));
        if send.len() != recv.len() {
            return Err(crate::Error::InvalidArgument(format!(
                "immediate_allreduce_into: send holds {} elements but recv {}",
                send.len(),
                recv.len()
            )));
        }
        let fold: Fold = Box::new(move |acc: &mut Part, upper| {
            fold_numbers(&op, &mut acc.bytes, &upper.payload);
            Ok(())
        });
        let finish: Finish<'c, ()> = Box::new(move |part| {
            bytemuck::cast_slice_mut::<E, u8>(recv).copy_from_slice(&part.bytes);
            crate::pool::give(part.bytes);
            Ok(())
        });
        let (me, n) = (self.rank(), self.size());
        let steps = [reduce_steps(me, n), broadcast_steps(me, n, 0)].concat();
        let value = Part {
            format: message::raw::<E>(),
            bytes: message::pod_copy(send),
        };
        let len = value.bytes.len();
        self.start_immediate(
            Kind::ImmediateAllreduceInto,
            0,
            steps,
            (value, Some(len), Some(fold)),
            finish,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every send of a plan has its receive on the other side, and every
    /// rank ends up having heard (directly or not) from every other.
    fn check_pairs(steps_of: impl Fn(usize, usize) -> Vec<Step>) {
        for n in 1..=17 {
            let mut sends = Vec::new();
            let mut receives = Vec::new();
            for me in 0..n {
                for s in steps_of(me, n) {
                    match s {
                        Step::Send(d) => sends.push((me, d)),
                        Step::Take(f) | Step::Fold(f) => receives.push((f, me)),
                    }
                }
            }
            sends.sort();
            receives.sort();
            assert_eq!(sends, receives, "n = {n}");
        }
    }

    #[test]
    fn every_send_meets_its_receive() {
        check_pairs(barrier_steps);
        for root in 0..5 {
            check_pairs(|me, n| broadcast_steps(me, n, root % n));
        }
        check_pairs(|me, n| [reduce_steps(me, n), broadcast_steps(me, n, 0)].concat());
    }

    #[test]
    fn broadcast_reaches_every_rank_once() {
        for n in 1..=17 {
            for root in 0..n {
                let takes = (0..n)
                    .filter(|me| broadcast_steps(*me, n, root).iter().any(|s| matches!(s, Step::Take(_))))
                    .count();
                assert_eq!(takes, n - 1, "n = {n}, root = {root}");
            }
        }
    }

    #[test]
    fn reduce_folds_in_rank_order() {
        // Simulate: each rank's value is the list of ranks it covers.
        for n in 1..=17 {
            let mut held: Vec<Vec<usize>> = (0..n).map(|r| vec![r]).collect();
            let mut mask = 1;
            while mask < n {
                for me in (0..n).filter(|me| me % (2 * mask) == 0 && me + mask < n) {
                    assert!(reduce_steps(me, n).contains(&Step::Fold(me + mask)));
                    let upper = std::mem::take(&mut held[me + mask]);
                    held[me].extend(upper);
                }
                mask <<= 1;
            }
            assert_eq!(held[0], (0..n).collect::<Vec<_>>(), "n = {n}");
        }
    }
}
