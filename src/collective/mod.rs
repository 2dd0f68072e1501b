//! Collective operations on serde values: barrier, broadcast, scatter,
//! gather, allgather, reduce, allreduce, scan, alltoall (the forms for
//! slices of plain numbers are in `numbers.rs` and `reduction.rs`). Every
//! rank of the job must make the same collective calls in the same order,
//! with the same root; each call is numbered (see `call/mod.rs`), so ranks
//! that do not all get an error instead of waiting for ever.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::communicator::{Communicator, on_mpi};
use crate::envelope::{Envelope, Format};
use crate::error::{Error, Result};
use crate::op::Op;

mod algorithm;
#[cfg(feature = "mpi")]
pub(crate) use algorithm::{decode_part, types_differ};
pub(crate) mod call;
mod immediate;
pub(crate) mod levels;
pub(crate) mod node;
mod numbers;
mod pulled;
#[cfg(feature = "mpi")]
pub(crate) use numbers::in_call;
pub(crate) mod pool;
mod reduction;
pub(crate) mod region;
mod ring;
mod varying;
#[cfg(feature = "mpi")]
pub(crate) use varying::check_counts;
pub(crate) mod window;

pub use immediate::CollectiveRequest;

use algorithm::{Body, Codec, PodCodec, SerdeCodec, Step, own_envelope};
use call::Kind;
use node::NodeStep;

/// The bytes of the region a node of `local` ranks shares for its
/// node-wide collectives.
pub(crate) fn node_region_len(local: usize) -> usize {
    region::region_len(local)
}

/// Packs several message bodies of one format into one (for allgather).
fn pack(envs: &[Envelope]) -> Vec<u8> {
    let total: usize = envs.iter().map(|e| 8 + e.payload.len()).sum();
    let mut out = Vec::with_capacity(total);
    for e in envs {
        out.extend_from_slice(&(e.payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&e.payload);
    }
    out
}

/// Splits a packed body back into `count` envelopes, checking every length.
fn unpack(format: Format, packed: &[u8], count: usize) -> Result<Vec<Envelope>> {
    let bad = |detail: String| Error::protocol("the allgather root", "packed length", detail);
    let mut out = Vec::with_capacity(count);
    let mut at = 0usize;
    for source in 0..count {
        let Some(len_bytes) = packed.get(at..at + 8) else {
            return Err(bad(format!("the body ends before rank {source}'s part")));
        };
        let mut b = [0u8; 8];
        b.copy_from_slice(len_bytes);
        let len = usize::try_from(u64::from_le_bytes(b)).map_err(|_| bad("too large".into()))?;
        at += 8;
        let Some(payload) = packed.get(at..at.saturating_add(len)) else {
            return Err(bad(format!("rank {source}'s part of {len} bytes overruns the body")));
        };
        at += len;
        out.push(own_envelope(source, (format, payload.to_vec())));
    }
    if at != packed.len() {
        return Err(bad(format!("{} trailing bytes", packed.len() - at)));
    }
    Ok(out)
}

fn decode_all<T>(codec: &dyn Codec<T>, envs: &[Envelope]) -> Result<Vec<T>> {
    envs.iter().map(|e| codec.decode(e)).collect()
}

impl Communicator {
    /// The allgather that makes a communicator: every member's words, in
    /// rank order, under a signature of its own, so that a rank making a
    /// communicator never meets a rank in another collective unnoticed.
    pub(crate) fn creation_allgather(&self, mine: &[u64]) -> Result<Vec<Vec<u64>>> {
        self.collective(Kind::Create, 0, |call| {
            let format = crate::message::raw::<u64>();
            let body = (format, crate::message::pod_copy(mine));
            let packed = self.gather_bodies(call, body, 0)?.map(|envs| (format, pack(&envs)));
            let (format, payload) = self.broadcast_body(call, packed, 0)?;
            let envs = unpack(format, &payload, self.size())?;
            decode_all(&PodCodec, &envs)
        })
    }

    /// Waits until every rank has called `barrier`.
    pub fn barrier(&self) -> Result<()> {
        on_mpi!(self, |m| m.barrier());
        self.barrier_until(None)
    }

    /// [`Communicator::barrier`] that gives up with
    /// [`Error::Timeout`] after `timeout`. The ranks call `barrier_timeout`
    /// or `barrier` alike (each may pass its own timeout). A barrier that
    /// timed out has failed, as any collective that fails: this rank's
    /// later collectives on the communicator fail at once, and every other
    /// rank's collective fails with the reason when it next waits (its
    /// point-to-point calls go on working). For a check that the other
    /// ranks are alive that leaves the collectives usable, wait on an
    /// [`immediate_barrier`](Communicator::immediate_barrier) with
    /// [`Request::wait_timeout`](crate::Request::wait_timeout).
    ///
    /// On the MPI backend, which cannot cancel a collective, a barrier that
    /// timed out stays posted instead, and the next `barrier` or
    /// `barrier_timeout` on the communicator waits for it again.
    ///
    /// ```
    /// use std::time::Duration;
    /// let world = spmd::init()?;
    /// world.barrier_timeout(Duration::from_secs(60))?;
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn barrier_timeout(&self, timeout: std::time::Duration) -> Result<()> {
        on_mpi!(self, |m| m.barrier_timeout(timeout));
        self.barrier_until(Some(timeout))
    }

    /// A barrier as a step of `call`: node-wide (as `step`) where the
    /// communicator can, else by messages.
    pub(crate) fn barrier_in(&self, call: &call::Call, step: NodeStep) -> Result<()> {
        match self.node_step(call, step, 0, &[], &mut |_| Ok(Vec::new())) {
            Some(done) => done.map(|_| ()),
            None => self.barrier_messages(call),
        }
    }

    fn barrier_until(&self, timeout: Option<std::time::Duration>) -> Result<()> {
        // No deadline for a timeout too long to add to the clock.
        let deadline = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
        self.collective_until(Kind::Barrier, 0, false, deadline, |call| {
            let done = self.barrier_in(call, NodeStep::Barrier);
            // What the caller and the other ranks are told.
            done.map_err(|e| match (e, timeout) {
                (Error::Timeout { .. }, Some(t)) => Error::Timeout {
                    what: "the other ranks in a barrier".into(),
                    seconds: t.as_secs_f64(),
                },
                (e, _) => e,
            })
        })
    }

    /// Gives every rank the root's `value`: on the root it is read, on the
    /// other ranks it is overwritten.
    ///
    /// ```no_run
    /// # let world = spmd::init().unwrap();
    /// let mut config = String::new();
    /// if world.rank() == 0 {
    ///     config = "steps=100".to_string();
    /// }
    /// world.broadcast(&mut config, 0)?;
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn broadcast<T: Serialize + DeserializeOwned>(&self, value: &mut T, root: usize) -> Result<()> {
        self.check_rank(root)?;
        on_mpi!(self, |m| m.broadcast(value, root));
        // Encoded outside the call, failed inside it (`?` there), so that
        // the others hear of a value that does not encode.
        let mine = (self.rank() == root).then(|| Codec::<T>::encode(&SerdeCodec, value));
        let (format, payload) = self.collective(Kind::Broadcast, root, |call| {
            self.broadcast_body(call, mine.transpose()?, root)
        })?;
        if self.rank() != root {
            *value = SerdeCodec.decode(&own_envelope(root, (format, payload)))?;
        }
        Ok(())
    }

    /// mpi4py's shape of [`Communicator::broadcast`]: the root passes
    /// `Some(value)`, and every rank gets the value back, with no value to
    /// make up on the other ranks (what they pass is not read). A root
    /// that passes `None` is an error on every rank.
    ///
    /// ```
    /// let world = spmd::init()?;
    /// let config = (world.rank() == 0).then(|| "settings".to_string());
    /// let config: String = world.broadcast_value(config, 0)?;
    /// assert_eq!(config, "settings");
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn broadcast_value<T: Serialize + DeserializeOwned>(&self, value: Option<T>, root: usize) -> Result<T> {
        self.check_rank(root)?;
        on_mpi!(self, |m| m.broadcast_value(value, root));
        let is_root = self.rank() == root;
        let mine = match (&value, is_root) {
            (Some(v), true) => Some(Codec::<T>::encode(&SerdeCodec, v)),
            _ => None,
        };
        let (format, payload) = self.collective(Kind::Broadcast, root, |call| {
            let mine = mine.transpose()?;
            if is_root && mine.is_none() {
                // Inside the call, so that the others hear of it.
                return Err(Error::InvalidArgument(format!(
                    "broadcast_value: the root (rank {root}) passed None; it must pass the value"
                )));
            }
            self.broadcast_body(call, mine, root)
        })?;
        match value {
            Some(v) if is_root => Ok(v),
            _ => SerdeCodec.decode(&own_envelope(root, (format, payload))),
        }
    }

    /// The root gives `values[i]` to rank `i`; every rank returns its value.
    /// `values` is read on the root only (pass `&[]` elsewhere).
    pub fn scatter<T: Serialize + DeserializeOwned>(&self, values: &[T], root: usize) -> Result<T> {
        self.check_rank(root)?;
        on_mpi!(self, |m| m.scatter(values, root));
        let bodies = (self.rank() == root).then(|| {
            values
                .iter()
                .map(|v| SerdeCodec.encode(v))
                .collect::<Result<Vec<Body>>>()
        });
        let env = self.collective(Kind::Scatter, root, |call| {
            self.scatter_bodies(call, bodies.transpose()?, root)
        })?;
        SerdeCodec.decode(&env)
    }

    /// Collects every rank's `value` on the root, in rank order: `Some` on
    /// the root, `None` elsewhere.
    pub fn gather<T: Serialize + DeserializeOwned>(&self, value: &T, root: usize) -> Result<Option<Vec<T>>> {
        self.check_rank(root)?;
        on_mpi!(self, |m| m.gather(value, root));
        let body = SerdeCodec.encode(value);
        match self.collective(Kind::Gather, root, |call| self.gather_bodies(call, body?, root))? {
            Some(envs) => decode_all(&SerdeCodec, &envs).map(Some),
            None => Ok(None),
        }
    }

    /// Every rank's body, in rank order, on every rank: a gather to rank 0
    /// and a broadcast of the packed parts, in one call.
    fn allgather_envelopes(&self, kind: Kind, body: Result<Body>) -> Result<Vec<Envelope>> {
        let (format, payload) = self.collective(kind, 0, |call| {
            let body = body?;
            let format = body.0;
            let packed = self.gather_bodies(call, body, 0)?.map(|envs| (format, pack(&envs)));
            self.broadcast_body(call, packed, 0)
        })?;
        unpack(format, &payload, self.size())
    }

    /// Every rank gets every rank's `value`, in rank order.
    pub fn allgather<T: Serialize + DeserializeOwned>(&self, value: &T) -> Result<Vec<T>> {
        on_mpi!(self, |m| m.allgather(value));
        let envs = self.allgather_envelopes(Kind::Allgather, SerdeCodec.encode(value))?;
        decode_all(&SerdeCodec, &envs)
    }

    /// Combines every rank's `value` with `op` on the root: `Some(result)`
    /// on the root, `None` elsewhere.
    ///
    /// ```no_run
    /// use spmd::op;
    /// # let world = spmd::init().unwrap();
    /// let partial = (world.rank() as u128 + 1).pow(2);
    /// if let Some(total) = world.reduce(&partial, &op::Sum, 0)? {
    ///     println!("sum of squares: {total}");
    /// }
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn reduce<T: Serialize + DeserializeOwned + Clone>(
        &self,
        value: &T,
        op: &impl Op<T>,
        root: usize,
    ) -> Result<Option<T>> {
        self.check_rank(root)?;
        on_mpi!(self, |m| m.reduce(value, op, root));
        let combine = |a: T, b: T| Ok(crate::progress::combining(|| op.combine(&a, &b)));
        self.collective(Kind::Reduce, root, |call| {
            self.reduce_value(call, &SerdeCodec, value.clone(), &combine, root, !op.is_commutative())
        })
    }

    /// Combines every rank's `value` with `op`; every rank gets the same
    /// result, bit for bit.
    pub fn allreduce<T: Serialize + DeserializeOwned + Clone>(&self, value: &T, op: &impl Op<T>) -> Result<T> {
        on_mpi!(self, |m| m.allreduce(value, op));
        let combine = |a: T, b: T| Ok(crate::progress::combining(|| op.combine(&a, &b)));
        self.collective(Kind::Allreduce, 0, |call| {
            self.allreduce_value(
                call,
                Step::Allreduce,
                &SerdeCodec,
                value.clone(),
                &combine,
                op.is_commutative(),
            )
        })
    }

    /// Inclusive prefix reduction: rank `r` gets `value₀ op … op value_r`.
    pub fn scan<T: Serialize + DeserializeOwned + Clone>(&self, value: &T, op: &impl Op<T>) -> Result<T> {
        on_mpi!(self, |m| Ok(m
            .scan(value, op, false)?
            .expect("an inclusive scan gives every rank a value")));
        let combine = |a: T, b: T| Ok(crate::progress::combining(|| op.combine(&a, &b)));
        self.collective(Kind::Scan, 0, |call| {
            self.scan_value(call, &SerdeCodec, value.clone(), &combine)
        })
    }

    /// Rank `r` sends `values[i]` to rank `i` and gets back one value from
    /// every rank, in rank order. `values` has one entry per rank.
    pub fn alltoall<T: Serialize + DeserializeOwned>(&self, values: &[T]) -> Result<Vec<T>> {
        on_mpi!(self, |m| m.alltoall(values));
        let bodies = values
            .iter()
            .map(|v| SerdeCodec.encode(v))
            .collect::<Result<Vec<Body>>>();
        let envs = self.collective(Kind::Alltoall, 0, |call| self.alltoall_bodies(call, bodies?))?;
        decode_all(&SerdeCodec, &envs)
    }
}
