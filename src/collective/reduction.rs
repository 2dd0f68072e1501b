//! Reductions of slices of plain numbers (`reduce_into`, `allreduce_into`,
//! `scan_into`), element by element, in rank order: over shared memory
//! node-wide in place (at most 4 KiB) or through the shared windows
//! (more); otherwise over messages, with a ring for large vectors under a
//! commutative operator.

use bytemuck::Pod;

use crate::communicator::Communicator;
use crate::error::{Error, Result};
use crate::message;
use crate::op::Op;

use super::algorithm::{RawCodec, Step};
use super::call::Kind;
use super::node::{NodeStep, node_claim};
use super::numbers::{check_len, copy_result};
use super::region::{PART_MAX, Parts};
use super::ring;
use super::window::WindowJob;

/// Which operand of the operator an accumulator is: the lower ranks' side
/// (`acc op other`) or the higher ranks' (`other op acc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Lower,
    Upper,
}

/// Combines the plain numbers in `other` into those in `acc`, element by
/// element and in place. Both hold the same number of bytes.
fn combine_into<E: Pod, O: Op<E>>(op: &O, acc: &mut [u8], other: &[u8], acc_is: Side) {
    let combine = |x: &E, y: &E| match acc_is {
        Side::Lower => op.combine(x, y),
        Side::Upper => op.combine(y, x),
    };
    crate::progress::combining(|| {
        match (
            bytemuck::try_cast_slice_mut::<u8, E>(acc),
            bytemuck::try_cast_slice::<u8, E>(other),
        ) {
            // One loop per side, the side chosen outside it: with the test
            // inside, the loop did one number at a time (its reload of the
            // side kept it from being vectorized; 1 MiB allreduce on 8
            // ranks took twice as long).
            (Ok(a), Ok(b)) => match acc_is {
                Side::Lower => a.iter_mut().zip(b).for_each(|(x, y)| *x = op.combine(x, y)),
                Side::Upper => a.iter_mut().zip(b).for_each(|(x, y)| *x = op.combine(y, x)),
            },
            // Buffers not aligned for E: go through typed copies.
            _ => {
                let a: Vec<E> = typed(acc);
                let b: Vec<E> = typed(other);
                let c: Vec<E> = a.iter().zip(&b).map(|(x, y)| combine(x, y)).collect();
                acc.copy_from_slice(bytemuck::cast_slice(&c));
            }
        }
    })
}

/// Plain numbers copied out of bytes that may not be aligned for them.
fn typed<E: Pod>(bytes: &[u8]) -> Vec<E> {
    let mut out = vec![E::zeroed(); bytes.len() / std::mem::size_of::<E>().max(1)];
    bytemuck::cast_slice_mut::<E, u8>(&mut out).copy_from_slice(bytes);
    out
}

fn same_length(what: &str, a: usize, b: usize) -> Result<()> {
    if a == b {
        Ok(())
    } else {
        Err(Error::CollectiveMismatch {
            detail: format!("{what}: ranks gave slices of different lengths ({a} and {b} bytes)"),
        })
    }
}

/// Combines two byte buffers of plain numbers, in place in the lower one;
/// the upper one goes back to the pool.
pub(super) fn elementwise<'a, E: Pod, O: Op<E>>(
    op: &'a O,
    what: &'static str,
) -> impl Fn(Vec<u8>, Vec<u8>) -> Result<Vec<u8>> + 'a {
    move |mut lower, upper| {
        same_length(what, lower.len(), upper.len())?;
        combine_into(op, &mut lower, &upper, Side::Lower);
        crate::pool::give(upper);
        Ok(lower)
    }
}

/// Folds every rank's plain numbers for a node-wide collective, in rank
/// order.
fn node_fold<'a, E: Pod, O: Op<E>>(op: &'a O, what: &'static str) -> impl FnMut(&Parts) -> Result<Vec<u8>> + 'a {
    move |parts| {
        if parts.len() == 0 {
            return Ok(Vec::new());
        }
        let mut acc = parts.get(0).to_vec();
        for i in 1..parts.len() {
            same_length(what, acc.len(), parts.get(i).len())?;
            combine_into(op, &mut acc, parts.get(i), Side::Lower);
        }
        Ok(acc)
    }
}

impl Communicator {
    /// Plain-number reduce, element by element, in rank order: the root's
    /// `recv` (of `send.len()` elements) gets the combination of every
    /// rank's `send`. Ranks that pass different lengths all get an error.
    pub fn reduce_into<E: Pod>(&self, send: &[E], recv: &mut [E], op: &impl Op<E>, root: usize) -> Result<()> {
        self.check_rank(root)?;
        crate::communicator::on_mpi!(self, |m| m.reduce_slices(
            crate::mpi_backend::Reduction::Reduce(root),
            send,
            recv,
            op,
            "reduce_into"
        ));
        let what = "reduce_into";
        let is_root = self.rank() == root;
        let bytes = std::mem::size_of_val(send);
        let (element, code) = (std::mem::size_of::<E>(), crate::element::code_of::<E>());
        self.sized_collective(Kind::ReduceInto, root, bytes > PART_MAX, |call| {
            if bytes > PART_MAX {
                let recv_ok = if is_root {
                    check_len(what, "the receive buffer", recv.len(), send.len())
                } else {
                    Ok(())
                };
                let mut combine = |acc: &mut [u8], next: &[u8]| combine_into(op, acc, next, Side::Lower);
                let job = WindowJob::Reduce {
                    send: message::pod_bytes(send),
                    out: (is_root && recv_ok.is_ok()).then(|| bytemuck::cast_slice_mut(recv)),
                    element,
                    combine: &mut combine,
                };
                if let Some(done) = self.large(call, what, bytes, code, recv_ok, job) {
                    return done.map(Ok);
                }
            } else {
                let mut fold = node_fold(op, what);
                let claim = node_claim(bytes, code);
                if let Some(result) = self.node_step(call, NodeStep::Reduce, claim, message::pod_bytes(send), &mut fold)
                {
                    // A root whose receive buffer is wrong fails the call:
                    // the others learn it at their next collective.
                    let result = result?;
                    return if is_root {
                        copy_result(result, recv, what)
                    } else {
                        Ok(())
                    }
                    .map(Ok);
                }
            }
            let codec = RawCodec(message::raw::<E>());
            let combine = elementwise(op, what);
            let ordered = !op.is_commutative();
            match self.reduce_value(call, &codec, message::pod_copy(send), &combine, root, ordered)? {
                Some(result) => copy_result(result, recv, what).map(Ok),
                None => Ok(Ok(())),
            }
        })?
    }

    /// Plain-number allreduce, element by element, in rank order, into
    /// `recv` (of `send.len()` elements) on every rank: every rank gets the
    /// same bits, for any associative operator.
    ///
    /// Ranks that pass different lengths or element types all get an
    /// error. A rank whose receive buffer alone is wrong fails the call:
    /// it gets an error, and so does every other rank (at once, or at its
    /// next collective on the communicator, which is then broken).
    ///
    /// ```no_run
    /// use spmd::op;
    /// # let world = spmd::init().unwrap();
    /// let local = [world.rank() as f64, 1.0];
    /// let mut total = [0.0; 2];
    /// world.allreduce_into(&local, &mut total, &op::Sum)?;
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn allreduce_into<E: Pod>(&self, send: &[E], recv: &mut [E], op: &impl Op<E>) -> Result<()> {
        crate::communicator::on_mpi!(self, |m| m.reduce_slices(
            crate::mpi_backend::Reduction::Allreduce,
            send,
            recv,
            op,
            "allreduce_into"
        ));
        let what = "allreduce_into";
        let bytes = std::mem::size_of_val(send);
        let (element, code) = (std::mem::size_of::<E>(), crate::element::code_of::<E>());
        let recv_ok = |recv: &[E]| check_len(what, "the receive buffer", recv.len(), send.len());
        self.sized_collective(Kind::AllreduceInto, 0, bytes > PART_MAX, |call| {
            if bytes > PART_MAX {
                let args = recv_ok(recv);
                let mut combine = |acc: &mut [u8], next: &[u8]| combine_into(op, acc, next, Side::Lower);
                let job = WindowJob::Reduce {
                    send: message::pod_bytes(send),
                    out: args.is_ok().then(|| bytemuck::cast_slice_mut(recv)),
                    element,
                    combine: &mut combine,
                };
                if let Some(done) = self.large(call, what, bytes, code, args, job) {
                    return done.map(Ok);
                }
            } else {
                // A rank with a wrong receive buffer still takes part, so
                // that the others do not wait for it, and fails the call
                // after: the others learn it at their next collective.
                let mut fold = node_fold(op, what);
                let claim = node_claim(bytes, code);
                let node = self.node_step(call, NodeStep::Allreduce, claim, message::pod_bytes(send), &mut fold);
                if let Some(result) = node {
                    let result = result?;
                    return recv_ok(recv).and_then(|()| copy_result(result, recv, what)).map(Ok);
                }
            }
            let local = recv_ok(recv);
            if op.is_commutative() && self.size() > 2 && bytes >= ring::RING_THRESHOLD && local.is_ok() {
                // In place in the caller's buffer: no copy but the first.
                recv.copy_from_slice(send);
                let chunkwise = |mine: &mut [u8], theirs: &[u8]| combine_into(op, mine, theirs, Side::Upper);
                self.ring_allreduce(
                    call,
                    bytemuck::cast_slice_mut(recv),
                    message::raw::<E>(),
                    element,
                    &chunkwise,
                )?;
                return Ok(Ok(()));
            }
            let codec = RawCodec(message::raw::<E>());
            let mine = message::pod_copy(send);
            let combine = elementwise(op, what);
            let result = self.allreduce_value(call, Step::Allreduce, &codec, mine, &combine, op.is_commutative())?;
            local.and_then(|()| copy_result(result, recv, what)).map(Ok)
        })?
    }

    /// Plain-number inclusive scan, element by element, into `recv`. A rank
    /// whose receive buffer is wrong fails the call, and every other rank
    /// gets an error too.
    pub fn scan_into<E: Pod>(&self, send: &[E], recv: &mut [E], op: &impl Op<E>) -> Result<()> {
        crate::communicator::on_mpi!(self, |m| m.reduce_slices(
            crate::mpi_backend::Reduction::Scan,
            send,
            recv,
            op,
            "scan_into"
        ));
        let what = "scan_into";
        let combine = elementwise(op, what);
        let codec = RawCodec(message::raw::<E>());
        let result = self.collective(Kind::ScanInto, 0, |call| {
            // A rank whose receive buffer is wrong fails the call before it
            // sends its part: its notice ends the others' wait for it.
            check_len(what, "the receive buffer", recv.len(), send.len())?;
            self.scan_value(call, &codec, message::pod_copy(send), &combine)
        })?;
        copy_result(result, recv, what)
    }
}
