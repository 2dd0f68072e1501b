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

use super::algorithm::{decode_part, own_envelope};
use super::call::Kind;
use crate::communicator::{Communicator, on_mpi};
use crate::error::Result;
use crate::message;
use crate::op::Op;
use crate::progress::{Fold, Part, Plan, Step};
use crate::wire::Context;

mod request;
mod steps;

pub use request::CollectiveRequest;
use request::Finish;
use steps::{barrier_steps, broadcast_steps, pace_steps, reduce_steps};

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
        // The engine is held from here to the schedule's start: nothing
        // between can fail. Only the start can (a stray message of another
        // call here), and then the ranks no longer agree on where they
        // are: the collectives are broken, as after a blocking call.
        let (call, tag, node, mut engine) = self.immediate_call(kind, root)?;
        let mut steps = steps;
        if self.pace_due((call >> 16) as u16, kind, false) {
            steps.extend(pace_steps(self.rank(), self.size()));
        }
        let at = |r: usize| self.job_rank(r);
        let steps = steps
            .into_iter()
            .map(|s| match s {
                Step::Send(r) => Step::Send(at(r)),
                Step::Take(r) => Step::Take(at(r)),
                Step::Fold(r) => Step::Fold(at(r)),
                Step::Signal(r) => Step::Signal(at(r)),
                Step::Signaled(r) => Step::Signaled(at(r)),
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
        let id = self
            .ranked(engine.start_schedule(plan))
            .inspect_err(|e| self.immediate_failed(e))?;
        drop(engine);
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
                *value = decode_part(&own_envelope(root, (part.format, part.bytes)))?;
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
            let lower: T = decode_part(&own_envelope(0, (acc.format, bytes)))?;
            let upper: T = decode_part(&upper)?;
            let combined = crate::progress::combining(|| op.combine(&lower, &upper));
            (acc.format, acc.bytes) = message::encode(&combined)?;
            Ok(())
        });
        let finish: Finish<'_, T> = Box::new(|part| decode_part(&own_envelope(0, (part.format, part.bytes))));
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
