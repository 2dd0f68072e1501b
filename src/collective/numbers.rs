//! Collectives that move slices of plain numbers (the `_into` forms of
//! broadcast, scatter, gather, allgather, alltoall): their bytes travel
//! raw, and over shared memory they run node-wide in place (at most 4 KiB)
//! or through the shared windows (more). Lengths are agreed before any data
//! moves, so ranks that disagree all get an error.

use bytemuck::Pod;

use crate::communicator::Communicator;
use crate::error::{Error, Result};
use crate::message;

use super::algorithm::{Codec, PodCodec, RawCodec, Step, own_envelope, part_mismatch};
use super::call::{Call, Kind};
use super::decode_all;
use super::node::{NodeStep, node_claim};
use super::region::PART_MAX;
use super::window::{WindowJob, WindowRun};

/// Names the call in an error about the arguments that came from below it.
pub(crate) fn in_call(what: &str, e: Error) -> Error {
    match e {
        Error::InvalidArgument(text) if !text.starts_with(what) => Error::InvalidArgument(format!("{what}: {text}")),
        Error::CollectiveMismatch { detail } if !detail.starts_with(what) => Error::CollectiveMismatch {
            detail: format!("{what}: {detail}"),
        },
        e => e,
    }
}

pub(super) fn check_len(what: &str, name: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what}: {name} has {got} elements, but must have {want}"
        )))
    }
}

/// Copies the result bytes of a collective into the caller's buffer.
pub(super) fn copy_result<E: Pod>(result: Vec<u8>, recv: &mut [E], what: &str) -> Result<()> {
    let out: &mut [u8] = bytemuck::cast_slice_mut(recv);
    if out.len() != result.len() {
        return Err(Error::InvalidArgument(format!(
            "{what}: the receive buffer has {} bytes, but the result has {}",
            out.len(),
            result.len()
        )));
    }
    out.copy_from_slice(&result);
    crate::pool::give(result);
    Ok(())
}

/// The error for parts of other lengths than this rank's: the ranks gave
/// slices of different lengths.
fn disagree(what: &str, detail: String) -> Error {
    Error::CollectiveMismatch {
        detail: format!("{what}: ranks gave slices of different lengths ({detail})"),
    }
}

/// Copies every rank's part (`part` elements each) into `out`, in rank
/// order; a part of another length is a disagreement between ranks.
fn copy_chunks<E: Pod>(chunks: Vec<Vec<E>>, out: &mut [E], part: usize, what: &str) -> Result<()> {
    for (rank, chunk) in chunks.iter().enumerate() {
        if chunk.len() != part {
            return Err(disagree(
                what,
                format!("rank {rank} gave {} elements, this rank {part}", chunk.len()),
            ));
        }
    }
    check_len(what, "the receive buffer", out.len(), part * chunks.len())?;
    for (rank, chunk) in chunks.into_iter().enumerate() {
        out[rank * part..(rank + 1) * part].copy_from_slice(&chunk);
    }
    Ok(())
}

/// What a rank claims in the agreement that starts a large collective: its
/// length in bytes and its element type's code (so that `f64`s meet no
/// `u64`s of the same length), or `u64::MAX` when its own buffers are
/// wrong.
fn claim(bytes: usize, element: u16, args: &Result<()>) -> u64 {
    if args.is_ok() {
        bytes as u64 | u64::from(element) << 48
    } else {
        u64::MAX
    }
}

/// A rank's [`claim`] (its 8 bytes), for errors.
pub(super) fn describe_claim(claimed: &[u8]) -> String {
    match <[u8; 8]>::try_from(claimed).map(u64::from_le_bytes) {
        Ok(u64::MAX) => "buffers that are wrong on that rank (its own error says how)".into(),
        Ok(c) => format!(
            "{} bytes of {}",
            c & ((1 << 48) - 1),
            crate::element::describe((c >> 48) as u16)
        ),
        Err(_) => format!("a claim of {} bytes, not 8", claimed.len()),
    }
}

impl Communicator {
    /// Runs a collective of more than 4 KiB: through the shared windows if
    /// this communicator has them and they can move the job; otherwise it
    /// has every rank agree on the length first and returns `None` to go on
    /// with messages. `args` is this rank's check of its own buffers: a rank
    /// whose buffers are wrong still takes part, claiming a length no rank
    /// can have, so that every rank fails together instead of some waiting.
    pub(super) fn large(
        &self,
        call: &Call,
        what: &'static str,
        bytes: usize,
        element: u16,
        args: Result<()>,
        job: WindowJob<'_>,
    ) -> Option<Result<()>> {
        let claim = claim(bytes, element, &args);
        if let Some(node) = self.node_region() {
            if node.slots.has_windows() && job.fits(&node.slots.windows()) {
                let done = WindowRun { comm: self, node, call }.run(claim, job);
                return Some(args.and(done.map_err(|e| in_call(what, e))));
            }
        }
        if let Err(e) = self.agree_on_length(call, what, claim) {
            return Some(args.and(Err(e)));
        }
        args.err().map(Err)
    }

    /// Fails on every rank, before any data moves, unless every rank claims
    /// the same (see [`claim`]).
    fn agree_on_length(&self, call: &Call, what: &'static str, claim: u64) -> Result<()> {
        // The largest claim, and the complement of the smallest.
        let mine = message::pod_copy(&[claim, !claim]);
        let codec = RawCodec(message::raw::<u64>());
        let max = super::reduction::elementwise::<u64, _>(&crate::op::Max, what);
        let both = self.allreduce_value(call, Step::Agree, &codec, mine, &max, true)?;
        let [most, least]: [u64; 2] = match bytemuck::try_pod_read_unaligned(&both) {
            Ok(pair) => pair,
            Err(_) => {
                return Err(Error::CollectiveMismatch {
                    detail: format!("{what}: ranks disagree on lengths"),
                });
            }
        };
        if most != claim || !least != claim {
            return Err(Error::CollectiveMismatch {
                detail: format!(
                    "{what}: ranks gave slices of different lengths or types, or a receive buffer of the wrong \
                     length: one rank gave {}, another {}",
                    describe_claim(&(!least).to_le_bytes()),
                    describe_claim(&most.to_le_bytes())
                ),
            });
        }
        Ok(())
    }

    /// Plain-number broadcast: the root's `buf` is copied into every rank's
    /// `buf`, which must have the same length on every rank (ranks that
    /// disagree all get an error).
    pub fn broadcast_into<E: Pod>(&self, buf: &mut [E], root: usize) -> Result<()> {
        self.check_rank(root)?;
        crate::communicator::on_mpi!(self, |m| m.broadcast_into(buf, root));
        let what = "broadcast_into";
        let bytes = std::mem::size_of_val(buf);
        let element = crate::element::code_of::<E>();
        let me = self.rank();
        self.sized_collective(Kind::BroadcastInto, root, bytes > PART_MAX, |call| {
            if bytes > PART_MAX {
                let job = WindowJob::Broadcast {
                    buf: bytemuck::cast_slice_mut(buf),
                    root,
                };
                if let Some(done) = self.large(call, what, bytes, element, Ok(()), job) {
                    return done.map(Ok);
                }
            } else {
                let part: &[u8] = if me == root { bytemuck::cast_slice(buf) } else { &[] };
                let mut pick = |parts: &super::region::Parts| Ok(parts.get(root).to_vec());
                let claim = node_claim(bytes, element);
                if let Some(result) = self.node_step(call, NodeStep::Broadcast, claim, part, &mut pick) {
                    return copy_result(result?, buf, what).map(Ok);
                }
            }
            let mine = (me == root).then(|| (message::raw::<E>(), message::pod_copy(buf)));
            let (format, payload) = self.broadcast_body(call, mine, root)?;
            if me != root {
                let data: Vec<E> = PodCodec.decode(&own_envelope(root, (format, payload)))?;
                if data.len() != buf.len() {
                    let detail = format!("the root gave {} elements, this rank {}", data.len(), buf.len());
                    return Err(disagree(what, detail));
                }
                buf.copy_from_slice(&data);
            }
            Ok(Ok(()))
        })?
    }

    /// Plain-number scatter: the root's `send` (of `recv.len() * size`
    /// elements) is cut into equal parts, part `i` to rank `i`'s `recv`.
    pub fn scatter_into<E: Pod>(&self, send: &[E], recv: &mut [E], root: usize) -> Result<()> {
        self.check_rank(root)?;
        crate::communicator::on_mpi!(self, |m| m.scatter_into(send, recv, root));
        let what = "scatter_into";
        let (k, n) = (recv.len(), self.size());
        let bytes = std::mem::size_of_val(recv);
        // The error's detail, kept to make the error again where needed.
        let send_ok = if self.rank() == root {
            check_len(what, "the root's send buffer", send.len(), k * n).map_err(|e| match e {
                Error::InvalidArgument(detail) => detail,
                other => other.to_string(),
            })
        } else {
            Ok(())
        };
        self.sized_collective(Kind::ScatterInto, root, bytes > PART_MAX, |call| {
            if bytes > PART_MAX {
                let job = WindowJob::Scatter {
                    send: if send_ok.is_ok() { message::pod_bytes(send) } else { &[] },
                    recv: bytemuck::cast_slice_mut(recv),
                    root,
                };
                let args = send_ok
                    .as_ref()
                    .map(|_| ())
                    .map_err(|detail| Error::InvalidArgument(detail.clone()));
                if let Some(done) = self.large(call, what, bytes, crate::element::code_of::<E>(), args, job) {
                    return done.map(Ok);
                }
            }
            let bodies = if self.rank() == root {
                send_ok
                    .as_ref()
                    .map_err(|detail| Error::InvalidArgument(detail.clone()))?;
                Some(
                    (0..n)
                        .map(|i| (message::raw::<E>(), message::pod_copy(&send[i * k..(i + 1) * k])))
                        .collect(),
                )
            } else {
                None
            };
            let env = self.scatter_bodies(call, bodies, root)?;
            if env.format != message::raw::<E>() {
                return Err(part_mismatch::<E>(&env));
            }
            let got = env.len() as usize / std::mem::size_of::<E>().max(1);
            if got != k {
                return Err(disagree(
                    what,
                    format!("the root sent {got} elements, this rank takes {k}"),
                ));
            }
            message::copy_into(&env, recv)?;
            Ok(Ok(()))
        })?
    }

    /// Plain-number gather: every rank's `send` lands in the root's `recv`
    /// (of `send.len() * size` elements) in rank order. `recv` is written on
    /// the root only (pass `&mut []` elsewhere).
    pub fn gather_into<E: Pod>(&self, send: &[E], recv: &mut [E], root: usize) -> Result<()> {
        self.check_rank(root)?;
        crate::communicator::on_mpi!(self, |m| m.gather_into(send, recv, root));
        let is_root = self.rank() == root;
        let large = std::mem::size_of_val(send) > PART_MAX;
        self.sized_collective(Kind::GatherInto, root, large, |call| {
            if let Some(done) = self.window_gather(call, "gather_into", send, recv, is_root) {
                return done.map(Ok);
            }
            let body = (message::raw::<E>(), message::pod_copy(send));
            match self.gather_bodies(call, body, root)? {
                Some(envs) => {
                    let chunks: Vec<Vec<E>> = decode_all(&PodCodec, &envs)?;
                    copy_chunks(chunks, recv, send.len(), "gather_into").map(Ok)
                }
                None => Ok(Ok(())),
            }
        })?
    }

    /// Plain-number allgather: every rank's `send` lands in every rank's
    /// `recv` (of `send.len() * size` elements) in rank order.
    pub fn allgather_into<E: Pod>(&self, send: &[E], recv: &mut [E]) -> Result<()> {
        crate::communicator::on_mpi!(self, |m| m.allgather_into(send, recv));
        let large = std::mem::size_of_val(send) > PART_MAX;
        self.sized_collective(Kind::AllgatherInto, 0, large, |call| {
            if let Some(done) = self.window_gather(call, "allgather_into", send, recv, true) {
                return done;
            }
            let format = message::raw::<E>();
            let body = (format, message::pod_copy(send));
            // The parts go on packed under rank 0's format: each is checked
            // first (u64s must not be handed on as f64s).
            let packed = match self.gather_bodies(call, body, 0)? {
                Some(envs) => match envs.iter().find(|env| env.format != format) {
                    Some(other) => return Err(part_mismatch::<E>(other)),
                    None => Some((format, super::pack(&envs))),
                },
                None => None,
            };
            let (format, payload) = self.broadcast_body(call, packed, 0)?;
            let envs = super::unpack(format, &payload, self.size())?;
            copy_chunks(decode_all(&PodCodec, &envs)?, recv, send.len(), "allgather_into")
        })
    }

    /// A gather of parts of more than 4 KiB through the shared windows (into
    /// `recv` where `wants` says so), if this communicator has them; `None`
    /// to go on with messages (the lengths agreed first for large parts).
    fn window_gather<E: Pod>(
        &self,
        call: &Call,
        what: &'static str,
        send: &[E],
        recv: &mut [E],
        wants: bool,
    ) -> Option<Result<()>> {
        let bytes = std::mem::size_of_val(send);
        if bytes <= PART_MAX {
            return None;
        }
        let recv_ok = if wants {
            check_len(what, "the receive buffer", recv.len(), send.len() * self.size())
        } else {
            Ok(())
        };
        let job = WindowJob::Gather {
            send: message::pod_bytes(send),
            out: (wants && recv_ok.is_ok()).then(|| bytemuck::cast_slice_mut(recv)),
        };
        self.large(call, what, bytes, crate::element::code_of::<E>(), recv_ok, job)
    }

    /// Plain-number alltoall: `send` and `recv` both hold `k * size`
    /// elements; part `i` of `send` goes to rank `i`, and part `j` of `recv`
    /// comes from rank `j`.
    pub fn alltoall_into<E: Pod>(&self, send: &[E], recv: &mut [E]) -> Result<()> {
        crate::communicator::on_mpi!(self, |m| m.alltoall_into(send, recv));
        let what = "alltoall_into";
        let n = self.size();
        let args = check_len(what, "the receive buffer", recv.len(), send.len()).and_then(|()| {
            if send.len() % n == 0 {
                Ok(())
            } else {
                Err(Error::InvalidArgument(format!(
                    "{what}: {} elements do not split evenly among {n} ranks",
                    send.len()
                )))
            }
        });
        let bytes = std::mem::size_of_val(send);
        self.sized_collective(Kind::AlltoallInto, 0, bytes / n > PART_MAX, |call| {
            let job = WindowJob::Alltoall {
                send: message::pod_bytes(send),
                recv: bytemuck::cast_slice_mut(recv),
                part: bytes / n,
            };
            if bytes / n > PART_MAX {
                if let Some(done) = self.large(call, what, bytes, crate::element::code_of::<E>(), args, job) {
                    return done.map(Ok);
                }
            } else {
                // A rank with wrong buffers fails here, and its notice ends
                // the others' wait for its parts.
                args?;
            }
            let k = send.len() / n;
            let bodies = (0..n)
                .map(|i| (message::raw::<E>(), message::pod_copy(&send[i * k..(i + 1) * k])))
                .collect();
            let envs = self.alltoall_bodies(call, bodies)?;
            copy_chunks(decode_all(&PodCodec, &envs)?, recv, k, what).map(Ok)
        })?
    }
}
