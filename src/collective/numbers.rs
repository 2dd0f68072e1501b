//! Collectives on slices of plain numbers (the `_into` forms): their bytes
//! travel raw, reductions combine element by element, and over shared
//! memory they run node-wide in place (at most 4 KiB) or through the shared
//! windows (more).

use bytemuck::Pod;

use crate::error::{Error, Result};
use crate::op::Op;
use crate::transport::{NodeCall, WindowJob};
use crate::wire::Kind;
use crate::world::World;

use super::algorithm::{Codec, PodCodec, RawCodec, own_envelope};
use super::decode_all;
use super::ring;

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
    match (
        bytemuck::try_cast_slice_mut::<u8, E>(acc),
        bytemuck::try_cast_slice::<u8, E>(other),
    ) {
        (Ok(a), Ok(b)) => {
            for (x, y) in a.iter_mut().zip(b) {
                *x = combine(x, y);
            }
        }
        // Buffers not aligned for E: go through typed copies.
        _ => {
            let a: Vec<E> = typed(acc);
            let b: Vec<E> = typed(other);
            let c: Vec<E> = a.iter().zip(&b).map(|(x, y)| combine(x, y)).collect();
            acc.copy_from_slice(bytemuck::cast_slice(&c));
        }
    }
}

fn same_length(what: &str, a: usize, b: usize) -> Result<()> {
    if a == b {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what}: ranks gave slices of different lengths ({a} and {b} bytes)"
        )))
    }
}

/// Combines two byte buffers of plain numbers, in place in the lower one;
/// the upper one goes back to the pool.
fn elementwise<'a, E: Pod, O: Op<E>>(
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

/// Combines a received chunk into this rank's chunk of plain numbers, in
/// place, for a commutative operator.
fn chunkwise<E: Pod, O: Op<E>>(op: &O) -> impl Fn(&mut [u8], &[u8]) + '_ {
    move |mine, theirs| combine_into(op, mine, theirs, Side::Upper)
}

/// Folds every rank's plain numbers for a node-wide collective, in rank
/// order starting at `first` (the root of a reduce, 0 otherwise), as the
/// tree algorithms do.
fn node_fold<'a, E: Pod, O: Op<E>>(
    op: &'a O,
    what: &'static str,
    first: usize,
) -> impl FnMut(&[&[u8]]) -> Result<Vec<u8>> + 'a {
    move |parts| {
        let n = parts.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let start = first % n;
        let mut acc = parts[start].to_vec();
        for part in (1..n).map(|i| parts[(start + i) % n]) {
            same_length(what, acc.len(), part.len())?;
            combine_into(op, &mut acc, part, Side::Lower);
        }
        Ok(acc)
    }
}

/// Plain numbers copied out of bytes that may not be aligned for them.
fn typed<E: Pod>(bytes: &[u8]) -> Vec<E> {
    let mut out = vec![E::zeroed(); bytes.len() / std::mem::size_of::<E>().max(1)];
    bytemuck::cast_slice_mut::<E, u8>(&mut out).copy_from_slice(bytes);
    out
}

/// Names the call in an error about the arguments that came from below it.
fn in_call(what: &str, e: Error) -> Error {
    match e {
        Error::InvalidArgument(text) => Error::InvalidArgument(format!("{what}: {text}")),
        e => e,
    }
}

/// Copies a reduction's result bytes into the caller's buffer.
fn copy_result<E: Pod>(result: Vec<u8>, recv: &mut [E], what: &str) -> Result<()> {
    let out: &mut [u8] = bytemuck::cast_slice_mut(recv);
    check_len(what, "the receive buffer (bytes)", out.len(), result.len())?;
    out.copy_from_slice(&result);
    crate::pool::give(result);
    Ok(())
}

fn check_len(what: &str, name: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what}: {name} has {got} elements, but must have {want}"
        )))
    }
}

fn copy_chunks<E: Pod>(chunks: Vec<Vec<E>>, out: &mut [E], what: &str) -> Result<()> {
    let mut at = 0;
    for (rank, chunk) in chunks.into_iter().enumerate() {
        let end = at + chunk.len();
        if end > out.len() {
            return Err(Error::InvalidArgument(format!(
                "{what}: rank {rank}'s part does not fit the receive buffer of {} elements",
                out.len()
            )));
        }
        out[at..end].copy_from_slice(&chunk);
        at = end;
    }
    check_len(what, "the receive buffer", out.len(), at)
}

impl World {
    /// Plain-number broadcast: the root's `buf` is copied into every rank's
    /// `buf`, which must have the same length.
    ///
    /// Every rank must pass the same length. Over shared memory, ranks that
    /// do not all get [`Error::InvalidArgument`]. Over sockets they do when
    /// every vector is larger than 4 KiB; the algorithm is chosen from the
    /// length, so there ranks on both sides of that limit, or with small
    /// vectors of different lengths, may not meet, and the call may hang.
    pub fn broadcast_into<E: Pod>(&self, buf: &mut [E], root: usize) -> Result<()> {
        self.check_rank(root)?;
        let bytes = std::mem::size_of_val(buf);
        if bytes > crate::transport::NODE_PART_MAX {
            let job = WindowJob::Broadcast {
                buf: bytemuck::cast_slice_mut(buf),
                root,
            };
            if let Some(done) = self.large_collective("broadcast_into", bytes, Ok(()), job) {
                return done;
            }
        }
        let part: &[u8] = if self.rank() == root {
            bytemuck::cast_slice(buf)
        } else {
            &[]
        };
        if bytes <= crate::transport::NODE_PART_MAX {
            let node = self
                .engine()
                .node_collective(NodeCall::Broadcast, part, &mut |parts| Ok(parts[root].to_vec()));
            if let Some(result) = node {
                return copy_result(result?, buf, "broadcast_into");
            }
        }
        let mine = if self.rank() == root {
            Some((Kind::Raw, crate::message::pod_copy(buf)))
        } else {
            None
        };
        let (kind, payload) = self.broadcast_body(mine, root)?;
        if self.rank() != root {
            let data: Vec<E> = PodCodec.decode(&own_envelope(root, (kind, payload)))?;
            check_len("broadcast_into", "the buffer", buf.len(), data.len())?;
            buf.copy_from_slice(&data);
        }
        Ok(())
    }

    /// Plain-number scatter: the root's `send` (of `recv.len() * size`
    /// elements) is cut into equal parts, part `i` to rank `i`'s `recv`.
    pub fn scatter_into<E: Pod>(&self, send: &[E], recv: &mut [E], root: usize) -> Result<()> {
        self.check_rank(root)?;
        let k = recv.len();
        let bytes = std::mem::size_of_val(recv);
        if bytes > crate::transport::NODE_PART_MAX {
            let send_ok = if self.rank() == root {
                check_len("scatter_into", "the root's send buffer", send.len(), k * self.size())
            } else {
                Ok(())
            };
            let job = WindowJob::Scatter {
                send: if send_ok.is_ok() {
                    crate::message::pod_bytes(send)
                } else {
                    &[]
                },
                recv: bytemuck::cast_slice_mut(recv),
                root,
            };
            if let Some(done) = self.large_collective("scatter_into", bytes, send_ok, job) {
                return done;
            }
        }
        let bodies = if self.rank() == root {
            check_len("scatter_into", "the root's send buffer", send.len(), k * self.size())?;
            Some(
                (0..self.size())
                    .map(|i| (Kind::Raw, crate::message::pod_copy(&send[i * k..(i + 1) * k])))
                    .collect(),
            )
        } else {
            None
        };
        let env = self.scatter_bodies(bodies, root)?;
        let n = crate::message::copy_into(&env, recv)?;
        check_len("scatter_into", "the receive buffer", k, n)
    }

    /// Plain-number gather: every rank's `send` lands in the root's `recv`
    /// (of `send.len() * size` elements) in rank order. `recv` is written on
    /// the root only (pass `&mut []` elsewhere).
    pub fn gather_into<E: Pod>(&self, send: &[E], recv: &mut [E], root: usize) -> Result<()> {
        self.check_rank(root)?;
        if let Some(done) = self.window_gather("gather_into", send, recv, self.rank() == root) {
            return done;
        }
        let body = (Kind::Raw, crate::message::pod_copy(send));
        if let Some(envs) = self.gather_bodies(body, root)? {
            let chunks: Vec<Vec<E>> = decode_all(&PodCodec, &envs)?;
            copy_chunks(chunks, recv, "gather_into")?;
        }
        Ok(())
    }

    /// Plain-number allgather: every rank's `send` lands in every rank's
    /// `recv` (of `send.len() * size` elements) in rank order.
    pub fn allgather_into<E: Pod>(&self, send: &[E], recv: &mut [E]) -> Result<()> {
        if let Some(done) = self.window_gather("allgather_into", send, recv, true) {
            return done;
        }
        let envs = self.allgather_envelopes((Kind::Raw, crate::message::pod_copy(send)))?;
        copy_chunks(decode_all(&PodCodec, &envs)?, recv, "allgather_into")
    }

    /// A gather of parts of more than 4 KiB through the shared windows (into
    /// `recv` where `wants` says so), if the transport can; `None` to go on
    /// with messages. Over sockets the lengths are agreed first.
    fn window_gather<E: Pod>(&self, what: &'static str, send: &[E], recv: &mut [E], wants: bool) -> Option<Result<()>> {
        let bytes = std::mem::size_of_val(send);
        if bytes <= crate::transport::NODE_PART_MAX {
            return None;
        }
        let recv_ok = if wants {
            check_len(what, "the receive buffer", recv.len(), send.len() * self.size())
        } else {
            Ok(())
        };
        let job = WindowJob::Gather {
            send: crate::message::pod_bytes(send),
            out: (wants && recv_ok.is_ok()).then(|| bytemuck::cast_slice_mut(recv)),
        };
        self.large_collective(what, bytes, recv_ok, job)
    }

    /// Runs a collective of more than 4 KiB: through the shared windows if
    /// the transport can; otherwise (over sockets) it has every rank agree
    /// on the length first and returns `None` to go on with messages.
    /// `args` is this rank's check of its own buffers: a rank whose buffers
    /// are wrong still takes part, claiming a length no rank can have, so
    /// that every rank fails together instead of some waiting.
    fn large_collective(
        &self,
        what: &'static str,
        bytes: usize,
        args: Result<()>,
        job: WindowJob<'_>,
    ) -> Option<Result<()>> {
        let claim = if args.is_ok() { bytes as u64 } else { u64::MAX };
        if let Some(done) = self.engine().window_collective(claim, job) {
            return Some(args.and(done.map_err(|e| in_call(what, e))));
        }
        if let Err(e) = self.agree_on_length(what, claim) {
            return Some(Err(e));
        }
        args.err().map(Err)
    }

    /// Plain-number reduce, element by element: the root's `recv` (of
    /// `send.len()` elements) gets the combination of every rank's `send`.
    ///
    /// Every rank must pass the same length. Over shared memory, ranks that
    /// do not all get [`Error::InvalidArgument`]. Over sockets they do when
    /// every vector is larger than 4 KiB; the algorithm is chosen from the
    /// length, so there ranks on both sides of that limit, or with small
    /// vectors of different lengths, may not meet, and the call may hang.
    pub fn reduce_into<E: Pod>(&self, send: &[E], recv: &mut [E], op: &impl Op<E>, root: usize) -> Result<()> {
        self.check_rank(root)?;
        let bytes = std::mem::size_of_val(send);
        if bytes > crate::transport::NODE_PART_MAX {
            let is_root = self.rank() == root;
            let recv_ok = if is_root {
                check_len("reduce_into", "the receive buffer", recv.len(), send.len())
            } else {
                Ok(())
            };
            let mut combine = |acc: &mut [u8], next: &[u8]| combine_into(op, acc, next, Side::Lower);
            let job = WindowJob::Reduce {
                send: crate::message::pod_bytes(send),
                out: (is_root && recv_ok.is_ok()).then(|| bytemuck::cast_slice_mut(recv)),
                first: root,
                element: std::mem::size_of::<E>(),
                combine: &mut combine,
            };
            if let Some(done) = self.large_collective("reduce_into", bytes, recv_ok, job) {
                return done;
            }
        }
        let mut fold = node_fold(op, "reduce_into", root);
        let node = self
            .engine()
            .node_collective(NodeCall::Reduce, crate::message::pod_bytes(send), &mut fold);
        if let Some(result) = node {
            let result = result?;
            return if self.rank() == root {
                copy_result(result, recv, "reduce_into")
            } else {
                Ok(())
            };
        }
        let combine = elementwise(op, "reduce_into");
        let mine = crate::message::pod_copy(send);
        if let Some(result) = self.reduce_value(&RawCodec, mine, &combine, root)? {
            copy_result(result, recv, "reduce_into")?;
        }
        Ok(())
    }

    /// Plain-number allreduce, element by element, into `recv` (of
    /// `send.len()` elements) on every rank.
    ///
    /// Every rank must pass the same length. Over shared memory, ranks that
    /// do not all get [`Error::InvalidArgument`]. Over sockets they do when
    /// every vector is larger than 4 KiB; the algorithm is chosen from the
    /// length, so there ranks on both sides of that limit, or with small
    /// vectors of different lengths, may not meet, and the call may hang.
    ///
    /// Over shared memory, large vectors go through windows shared by all
    /// the ranks, folded in rank order: every rank gets the same bits, for
    /// any associative operator.
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
        let bytes = std::mem::size_of_val(send);
        let recv_len = recv.len();
        let recv_ok = || check_len("allreduce_into", "the receive buffer", recv_len, send.len());
        if bytes > crate::transport::NODE_PART_MAX {
            let args = recv_ok();
            let mut combine = |acc: &mut [u8], next: &[u8]| combine_into(op, acc, next, Side::Lower);
            let job = WindowJob::Reduce {
                send: crate::message::pod_bytes(send),
                out: args.is_ok().then(|| bytemuck::cast_slice_mut(recv)),
                first: 0,
                element: std::mem::size_of::<E>(),
                combine: &mut combine,
            };
            if let Some(done) = self.large_collective("allreduce_into", bytes, args, job) {
                return done;
            }
        }
        // Over shared memory a rank with a wrong receive buffer still takes
        // part, so that the others do not wait for it, and fails after.
        let node = self.engine().node_collective(
            NodeCall::Allreduce,
            crate::message::pod_bytes(send),
            &mut node_fold(op, "allreduce_into", 0),
        );
        if let Some(result) = node {
            let result = result?;
            recv_ok()?;
            return copy_result(result, recv, "allreduce_into");
        }
        recv_ok()?;
        if op.is_commutative() && self.size() > 2 && bytes >= ring::RING_THRESHOLD {
            // In place in the caller's buffer: no copy but the first.
            recv.copy_from_slice(send);
            return self.ring_allreduce(bytemuck::cast_slice_mut(recv), std::mem::size_of::<E>(), &chunkwise(op));
        }
        let mine = crate::message::pod_copy(send);
        let result = self.allreduce_value(&RawCodec, mine, &elementwise(op, "allreduce_into"))?;
        copy_result(result, recv, "allreduce_into")
    }

    /// Fails on every rank, before any data moves, unless every rank claims
    /// the same length (`u64::MAX` for a rank whose own buffers are wrong).
    fn agree_on_length(&self, what: &'static str, len: u64) -> Result<()> {
        // The largest length, and the complement of the smallest.
        let mine = crate::message::pod_copy(&[len, !len]);
        let both = self.allreduce_value(&RawCodec, mine, &elementwise::<u64, _>(&crate::op::Max, what))?;
        let [most, least]: [u64; 2] = match bytemuck::try_pod_read_unaligned(&both) {
            Ok(pair) => pair,
            Err(_) => return Err(Error::InvalidArgument(format!("{what}: ranks disagree on lengths"))),
        };
        let least = !least;
        if most != len || least != len {
            return Err(Error::InvalidArgument(format!(
                "{what}: ranks gave slices of different lengths, or a receive buffer of the wrong length"
            )));
        }
        Ok(())
    }

    /// Plain-number inclusive scan, element by element, into `recv`.
    pub fn scan_into<E: Pod>(&self, send: &[E], recv: &mut [E], op: &impl Op<E>) -> Result<()> {
        check_len("scan_into", "the receive buffer", recv.len(), send.len())?;
        let combine = elementwise(op, "scan_into");
        let result = self.scan_value(&RawCodec, crate::message::pod_copy(send), &combine)?;
        copy_result(result, recv, "scan_into")
    }

    /// Plain-number alltoall: `send` and `recv` both hold `k * size`
    /// elements; part `i` of `send` goes to rank `i`, and part `j` of `recv`
    /// comes from rank `j`.
    pub fn alltoall_into<E: Pod>(&self, send: &[E], recv: &mut [E]) -> Result<()> {
        let n = self.size();
        let args_ok = check_len("alltoall_into", "the receive buffer", recv.len(), send.len()).and_then(|()| {
            if send.len() % n == 0 {
                Ok(())
            } else {
                Err(Error::InvalidArgument(format!(
                    "alltoall_into: {} elements do not split evenly among {n} ranks",
                    send.len()
                )))
            }
        });
        let bytes = std::mem::size_of_val(send);
        if bytes / n > crate::transport::NODE_PART_MAX {
            let job = WindowJob::Alltoall {
                send: crate::message::pod_bytes(send),
                recv: bytemuck::cast_slice_mut(recv),
                part: bytes / n,
            };
            if let Some(done) = self.large_collective("alltoall_into", bytes, args_ok, job) {
                return done;
            }
        } else {
            args_ok?;
        }
        let k = send.len() / n;
        let bodies = (0..n)
            .map(|i| (Kind::Raw, crate::message::pod_copy(&send[i * k..(i + 1) * k])))
            .collect();
        copy_chunks(
            decode_all(&PodCodec, &self.alltoall_bodies(bodies)?)?,
            recv,
            "alltoall_into",
        )
    }
}
