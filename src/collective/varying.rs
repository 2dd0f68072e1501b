//! The collectives with a count per rank, for plain numbers (MPI's
//! `gatherv`, `scatterv`, `allgatherv`, `alltoallv`), with `reduce_scatter`
//! and the exclusive scan. The parts of a rank sit one after another in
//! rank order in the long buffer (no displacements). They go as messages,
//! one per part, whatever the transport.
//!
//! A rank whose counts or buffers do not add up takes part and fails
//! inside the call, so that its notice ends the other ranks' waits: an
//! error on every rank, never a hang.

use bytemuck::Pod;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::algorithm::Body;
use super::call::{Call, Kind};
use super::numbers::check_len;
use crate::communicator::Communicator;
use crate::envelope::{Envelope, Format};
use crate::error::{Error, Result};
use crate::message;
use crate::op::Op;

/// Where each part starts in a buffer of parts of `counts` elements.
fn offsets(counts: &[usize]) -> Vec<usize> {
    counts
        .iter()
        .scan(0, |at, c| {
            let start = *at;
            *at += c;
            Some(start)
        })
        .collect()
}

/// Checks that `counts` has one count per rank and that they add up to
/// `len`, the length of the buffer `name` of `what`.
pub(crate) fn check_counts(what: &str, name: &str, counts: &[usize], n: usize, len: usize) -> Result<()> {
    check_len(what, "the counts", counts.len(), n)?;
    let Some(total) = counts.iter().try_fold(0usize, |sum, c| sum.checked_add(*c)) else {
        return Err(Error::InvalidArgument(format!(
            "{what}: the counts add up to more than usize::MAX"
        )));
    };
    check_len(what, name, len, total)
}

/// Copies the part rank `rank` sent (`env`) into `out`, which must be
/// exactly its length.
fn take_part<E: Pod>(what: &str, rank: usize, env: &Envelope, out: &mut [E]) -> Result<()> {
    let want = std::mem::size_of_val(out) as u64;
    if env.len() != want || env.format != message::raw::<E>() {
        let kind = |f: Format| crate::element::describe(f.element());
        return Err(Error::CollectiveMismatch {
            detail: format!(
                "{what}: rank {rank} sent {} bytes of {} where this rank expects {} elements ({want} bytes) of {}",
                env.len(),
                kind(env.format),
                out.len(),
                kind(message::raw::<E>())
            ),
        });
    }
    message::copy_into(env, out).map(|_| ())
}

/// Copies the parts `envs` (one from each rank, in rank order) into
/// `recv`, cut after `counts`.
fn take_parts<E: Pod>(what: &str, envs: &[Envelope], counts: &[usize], recv: &mut [E]) -> Result<()> {
    for (r, (env, at)) in envs.iter().zip(offsets(counts)).enumerate() {
        take_part(what, r, env, &mut recv[at..at + counts[r]])?;
    }
    Ok(())
}

/// The bodies of the parts of `send`, cut after `counts`.
fn bodies<E: Pod>(send: &[E], counts: &[usize]) -> Vec<Body> {
    offsets(counts)
        .into_iter()
        .zip(counts)
        .map(|(at, c)| body(&send[at..at + c]))
        .collect()
}

/// The body of a part.
fn body<E: Pod>(part: &[E]) -> Body {
    (message::raw::<E>(), message::pod_copy(part))
}

impl Communicator {
    /// Gather with a count per rank: rank `r`'s `send` (of `counts[r]`
    /// elements) lands in the root's `recv` after the parts of ranks
    /// `0..r`. `counts` and `recv` are read on the root only (pass `&[]`
    /// and `&mut []` elsewhere); a rank that sends another count than the
    /// root expects is an error on every rank.
    ///
    /// ```
    /// let world = spmd::init()?;
    /// let mine = vec![world.rank() as u32; world.rank() + 1]; // r + 1 elements
    /// let counts: Vec<usize> = (1..=world.size()).collect();
    /// let mut all = vec![0u32; counts.iter().sum()];
    /// world.gatherv_into(&mine, &mut all, &counts, 0)?;
    /// if world.rank() == 0 {
    ///     assert_eq!(all[..1], [0]);
    /// }
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn gatherv_into<E: Pod>(&self, send: &[E], recv: &mut [E], counts: &[usize], root: usize) -> Result<()> {
        self.check_rank(root)?;
        crate::communicator::on_mpi!(self, |m| m.gatherv_into("gatherv_into", send, recv, counts, root));
        let what = "gatherv_into";
        let is_root = self.rank() == root;
        let args = if is_root {
            check_counts(what, "the receive buffer", counts, self.size(), recv.len())
        } else {
            Ok(())
        };
        self.sized_collective(Kind::GathervInto, root, false, |call| {
            args?;
            let Some(envs) = self.gather_bodies(call, body(send), root)? else {
                return Ok(());
            };
            take_parts(what, &envs, counts, recv)
        })
    }

    /// Scatter with a count per rank: the root's `send` is cut into parts
    /// of `counts[r]` elements, part `r` to rank `r`'s `recv` (of
    /// `counts[r]` elements). `send` and `counts` are read on the root only.
    ///
    /// ```
    /// let world = spmd::init()?;
    /// let counts: Vec<usize> = (1..=world.size()).collect();
    /// let all: Vec<u64> = (0..counts.iter().sum::<usize>() as u64).collect();
    /// let mut mine = vec![0u64; world.rank() + 1];
    /// world.scatterv_into(&all, &counts, &mut mine, 0)?;
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn scatterv_into<E: Pod>(&self, send: &[E], counts: &[usize], recv: &mut [E], root: usize) -> Result<()> {
        self.check_rank(root)?;
        crate::communicator::on_mpi!(self, |m| m.scatterv_into("scatterv_into", send, counts, recv, root));
        let what = "scatterv_into";
        let args = if self.rank() == root {
            check_counts(what, "the send buffer", counts, self.size(), send.len())
        } else {
            Ok(())
        };
        self.scatter_parts(what, send, counts, recv, root, args)
    }

    /// [`Communicator::scatterv_into`] with this rank's own check of its
    /// arguments, `args`, which fails the call on every rank.
    fn scatter_parts<E: Pod>(
        &self,
        what: &str,
        send: &[E],
        counts: &[usize],
        recv: &mut [E],
        root: usize,
        args: Result<()>,
    ) -> Result<()> {
        let is_root = self.rank() == root;
        self.sized_collective(Kind::ScattervInto, root, false, |call| {
            args?;
            let bodies = is_root.then(|| bodies(send, counts));
            let env = self.scatter_bodies(call, bodies, root)?;
            take_part(what, root, &env, recv)
        })
    }

    /// Allgather with a count per rank: every rank's `send` (of `counts[r]`
    /// elements on rank `r`) lands in every rank's `recv` in rank order.
    /// Every rank passes the same `counts`.
    ///
    /// ```
    /// let world = spmd::init()?;
    /// let counts: Vec<usize> = (1..=world.size()).collect();
    /// let mine = vec![world.rank() as i32; world.rank() + 1];
    /// let mut all = vec![0; counts.iter().sum()];
    /// world.allgatherv_into(&mine, &mut all, &counts)?;
    /// assert_eq!(all[0], 0);
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn allgatherv_into<E: Pod>(&self, send: &[E], recv: &mut [E], counts: &[usize]) -> Result<()> {
        crate::communicator::on_mpi!(self, |m| m.allgatherv_into("allgatherv_into", send, recv, counts));
        let what = "allgatherv_into";
        let args = check_counts(what, "the receive buffer", counts, self.size(), recv.len())
            .and_then(|()| check_len(what, "the send buffer", send.len(), counts[self.rank()]));
        self.sized_collective(Kind::AllgathervInto, 0, false, |call| {
            args?;
            let format = message::raw::<E>();
            let packed = self
                .gather_bodies(call, body(send), 0)?
                .map(|envs| (format, super::pack(&envs)));
            let (format, payload) = self.broadcast_body(call, packed, 0)?;
            let envs = super::unpack(format, &payload, self.size())?;
            take_parts(what, &envs, counts, recv)
        })
    }

    /// Alltoall with counts per rank: the first `send_counts[0]` elements
    /// of `send` go to rank 0, the next `send_counts[1]` to rank 1, and so
    /// on; `recv` gets `recv_counts[r]` elements from each rank `r`, in
    /// rank order. Rank `a`'s `send_counts[b]` must equal rank `b`'s
    /// `recv_counts[a]`.
    ///
    /// ```
    /// let world = spmd::init()?;
    /// let (me, n) = (world.rank(), world.size());
    /// // Rank r sends r + 1 elements to every rank.
    /// let send = vec![me as u8; n * (me + 1)];
    /// let send_counts = vec![me + 1; n];
    /// let recv_counts: Vec<usize> = (1..=n).collect();
    /// let mut recv = vec![0u8; recv_counts.iter().sum()];
    /// world.alltoallv_into(&send, &send_counts, &mut recv, &recv_counts)?;
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn alltoallv_into<E: Pod>(
        &self,
        send: &[E],
        send_counts: &[usize],
        recv: &mut [E],
        recv_counts: &[usize],
    ) -> Result<()> {
        crate::communicator::on_mpi!(self, |m| m.alltoallv_into(
            "alltoallv_into",
            send,
            send_counts,
            recv,
            recv_counts
        ));
        let what = "alltoallv_into";
        let n = self.size();
        let args = check_counts(what, "the send buffer", send_counts, n, send.len())
            .and_then(|()| check_counts(what, "the receive buffer", recv_counts, n, recv.len()));
        self.sized_collective(Kind::AlltoallvInto, 0, false, |call| {
            args?;
            let bodies = bodies(send, send_counts);
            let envs = self.alltoall_bodies(call, bodies)?;
            take_parts(what, &envs, recv_counts, recv)
        })
    }

    /// Reduce, element by element in rank order, then scatter: `send`
    /// holds `counts.iter().sum()` elements on every rank, and rank `r`'s
    /// `recv` (of `counts[r]` elements) gets part `r` of the combination.
    /// Two collectives: a `reduce_into` to rank 0 and a `scatterv_into`.
    ///
    /// ```
    /// use spmd::op;
    /// let world = spmd::init()?;
    /// let n = world.size();
    /// let send = vec![1u64; 2 * n]; // two elements for every rank
    /// let mut mine = [0u64; 2];
    /// world.reduce_scatter_into(&send, &mut mine, &vec![2; n], &op::Sum)?;
    /// assert_eq!(mine, [n as u64; 2]);
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn reduce_scatter_into<E: Pod>(
        &self,
        send: &[E],
        recv: &mut [E],
        counts: &[usize],
        op: &impl Op<E>,
    ) -> Result<()> {
        crate::communicator::on_mpi!(self, |m| m.reduce_scatter_into(send, recv, counts, op));
        let what = "reduce_scatter_into";
        // Every rank checks its own counts; a rank whose counts are wrong
        // fails the second call, and every rank hears of it.
        let args = check_counts(what, "the send buffer", counts, self.size(), send.len())
            .and_then(|()| check_len(what, "the receive buffer", recv.len(), counts[self.rank()]));
        let mut full = vec![E::zeroed(); if self.rank() == 0 { send.len() } else { 0 }];
        self.reduce_into(send, &mut full, op, 0)?;
        self.scatter_parts(what, &full, counts, recv, 0, args)
    }

    /// Plain-number exclusive scan, element by element: rank `r`'s `recv`
    /// gets the combination of ranks `0..r`'s `send`; rank 0's `recv` is
    /// left as it is (there is nothing before it).
    ///
    /// ```
    /// use spmd::op;
    /// let world = spmd::init()?;
    /// let mut before = [0u64];
    /// world.exscan_into(&[1u64], &mut before, &op::Sum)?;
    /// assert_eq!(before, [world.rank() as u64]);
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn exscan_into<E: Pod>(&self, send: &[E], recv: &mut [E], op: &impl Op<E>) -> Result<()> {
        crate::communicator::on_mpi!(self, |m| m.reduce_slices(
            crate::mpi_backend::Reduction::Exscan,
            send,
            recv,
            op,
            "exscan_into"
        ));
        let mut upto = vec![E::zeroed(); send.len()];
        self.scan_into(send, &mut upto, op)?;
        let what = "exscan_into";
        let args = check_len(what, "the receive buffer", recv.len(), send.len());
        self.sized_collective(Kind::Exscan, 0, false, |call| {
            args?;
            match self.shift(call, body(&upto))? {
                Some(env) => take_part(what, self.rank() - 1, &env, recv),
                None => Ok(()),
            }
        })
    }

    /// Exclusive scan of any values: rank `r` gets the combination of ranks
    /// `0..r`'s values, in rank order; rank 0 gets `None`.
    ///
    /// ```
    /// use spmd::op;
    /// let world = spmd::init()?;
    /// let before = world.exscan(&1u64, &op::Sum)?;
    /// assert_eq!(before, (world.rank() > 0).then_some(world.rank() as u64));
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn exscan<T: Serialize + DeserializeOwned + Clone>(&self, value: &T, op: &impl Op<T>) -> Result<Option<T>> {
        crate::communicator::on_mpi!(self, |m| m.scan(value, op, true));
        let upto = self.scan(value, op)?;
        let mine = message::encode(&upto)?;
        let env = self.sized_collective(Kind::Exscan, 0, false, |call| self.shift(call, mine))?;
        match env {
            Some(env) => Ok(Some(super::algorithm::decode_part(&env)?)),
            None => Ok(None),
        }
    }

    /// Sends `body` to the next rank and returns what the previous one
    /// sent (`None` on rank 0).
    fn shift(&self, call: &Call, body: Body) -> Result<Option<Envelope>> {
        let (r, n) = (self.rank(), self.size());
        let sent = if r + 1 < n {
            Some((self.call_send(call, r + 1, 0, body)?, r + 1))
        } else {
            None
        };
        let got = if r > 0 {
            Some(self.call_receive(call, r - 1, 0)?)
        } else {
            None
        };
        if let Some((sent, dest)) = sent {
            self.engine()?.wait_sent(sent, self.job_rank(dest))?;
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_the_counts() {
        assert_eq!(offsets(&[2, 0, 3, 1]), [0, 2, 2, 5]);
        assert!(offsets(&[]).is_empty());
    }
}
