//! The plain-number collectives (`broadcast_into`, `scatter_into`, ...,
//! the forms with a count per rank) on the MPI backend: each part travels
//! as a raw body through MPI's collectives with its length, so that a rank
//! whose buffer disagrees with the others gets an error instead of MPI's
//! abort or a silent overrun, and never leaves the others waiting.

use bytemuck::Pod;

use super::collective::{Body, Reduction};
use super::comm::MpiComm;
use super::failure::{failed, heard};
use crate::collective::{check_counts, in_call, types_differ};
use crate::error::{Error, Result};
use crate::message;
use crate::op::Op;

pub(super) fn body<E: Pod>(data: &[E]) -> Body {
    (message::raw::<E>(), message::pod_copy(data))
}

fn disagree(what: &str, detail: String) -> Error {
    Error::CollectiveMismatch {
        detail: format!("{what}: ranks gave slices of different lengths ({detail})"),
    }
}

/// Copies a raw body of `E`s into `out`, which it must fill exactly.
pub(super) fn copy_body<E: Pod>(what: &str, from: usize, b: &Body, out: &mut [E]) -> Result<()> {
    if b.0 != message::raw::<E>() {
        return Err(in_call(what, types_differ(from, b.0, message::raw::<E>())));
    }
    if b.1.len() != std::mem::size_of_val(out) {
        return Err(disagree(
            what,
            format!(
                "rank {from} gave {} bytes where this rank takes {}",
                b.1.len(),
                std::mem::size_of_val(out)
            ),
        ));
    }
    bytemuck::cast_slice_mut::<E, u8>(out).copy_from_slice(&b.1);
    Ok(())
}

/// Copies `bodies` one after another into `out`, part `r` of `counts[r]`.
fn copy_parts<E: Pod>(what: &str, bodies: &[Body], counts: &[usize], out: &mut [E]) -> Result<()> {
    check_counts(what, "the receive buffer", counts, bodies.len(), out.len())?;
    let mut at = 0;
    for (r, (b, &c)) in bodies.iter().zip(counts).enumerate() {
        copy_body(what, r, b, &mut out[at..at + c])?;
        at += c;
    }
    Ok(())
}

/// `data` cut into parts of `counts[r]` elements, as bodies; `None` if the
/// counts do not cover `data` for `n` ranks.
fn cut<E: Pod>(data: &[E], counts: &[usize], n: usize) -> Option<Vec<Body>> {
    if counts.len() != n || counts.iter().sum::<usize>() != data.len() {
        return None;
    }
    let mut at = 0;
    Some(
        counts
            .iter()
            .map(|&c| {
                at += c;
                body(&data[at - c..at])
            })
            .collect(),
    )
}

impl MpiComm {
    pub(crate) fn broadcast_into<E: Pod>(&self, buf: &mut [E], root: usize) -> Result<()> {
        let mine = (self.rank == root).then(|| body(buf));
        let got = self.broadcast_body(mine, root)?;
        if self.rank != root {
            copy_body("broadcast_into", root, &got, buf)?;
        }
        Ok(())
    }

    pub(crate) fn scatterv_into<E: Pod>(
        &self,
        what: &str,
        send: &[E],
        counts: &[usize],
        recv: &mut [E],
        root: usize,
    ) -> Result<()> {
        if self.rank != root {
            let got = self.scatter_bodies(None, root)?;
            heard(what, self.rank, [(root, &got)])?;
            return copy_body(what, root, &got, recv);
        }
        match cut(send, counts, self.size) {
            Some(parts) => {
                let got = self.scatter_bodies(Some(parts), root)?;
                copy_body(what, root, &got, recv)
            }
            None => {
                // The others are already waiting for their parts: tell them.
                let e = Error::InvalidArgument(format!(
                    "{what}: the root's counts ({} of them, adding up to {}) do not cut its send buffer of {} for \
                     {} ranks",
                    counts.len(),
                    counts.iter().sum::<usize>(),
                    send.len(),
                    self.size
                ));
                self.scatter_bodies(Some(vec![failed(&e); self.size]), root)?;
                Err(e)
            }
        }
    }

    pub(crate) fn scatter_into<E: Pod>(&self, send: &[E], recv: &mut [E], root: usize) -> Result<()> {
        let counts = vec![recv.len(); self.size];
        self.scatterv_into("scatter_into", send, &counts, recv, root)
    }

    pub(crate) fn gatherv_into<E: Pod>(
        &self,
        what: &str,
        send: &[E],
        recv: &mut [E],
        counts: &[usize],
        root: usize,
    ) -> Result<()> {
        match self.gather_bodies(body(send), root)? {
            Some(bodies) => {
                heard(what, self.rank, bodies.iter().enumerate())?;
                copy_parts(what, &bodies, counts, recv)
            }
            None => Ok(()),
        }
    }

    pub(crate) fn gather_into<E: Pod>(&self, send: &[E], recv: &mut [E], root: usize) -> Result<()> {
        let counts = vec![send.len(); self.size];
        self.gatherv_into("gather_into", send, recv, &counts, root)
    }

    pub(crate) fn allgatherv_into<E: Pod>(
        &self,
        what: &str,
        send: &[E],
        recv: &mut [E],
        counts: &[usize],
    ) -> Result<()> {
        let wrong = check_counts(what, "the receive buffer", counts, self.size, recv.len()).err();
        let mine = wrong.as_ref().map_or_else(|| body(send), failed);
        let bodies = self.allgather_bodies(mine)?;
        if let Some(e) = wrong {
            return Err(e);
        }
        heard(what, self.rank, bodies.iter().enumerate())?;
        copy_parts(what, &bodies, counts, recv)
    }

    pub(crate) fn allgather_into<E: Pod>(&self, send: &[E], recv: &mut [E]) -> Result<()> {
        let counts = vec![send.len(); self.size];
        self.allgatherv_into("allgather_into", send, recv, &counts)
    }

    pub(crate) fn alltoallv_into<E: Pod>(
        &self,
        what: &str,
        send: &[E],
        send_counts: &[usize],
        recv: &mut [E],
        recv_counts: &[usize],
    ) -> Result<()> {
        let wrong = match cut(send, send_counts, self.size) {
            None => Err(Error::InvalidArgument(format!(
                "{what}: the send counts ({} of them, adding up to {}) do not cut the send buffer of {} for {} ranks",
                send_counts.len(),
                send_counts.iter().sum::<usize>(),
                send.len(),
                self.size
            ))),
            Some(parts) => check_counts(what, "the receive buffer", recv_counts, self.size, recv.len()).map(|()| parts),
        };
        let parts = match &wrong {
            Ok(parts) => parts.clone(),
            Err(e) => vec![failed(e); self.size],
        };
        let got = self.alltoall_bodies(parts)?;
        wrong?;
        heard(what, self.rank, got.iter().enumerate())?;
        copy_parts(what, &got, recv_counts, recv)
    }

    pub(crate) fn alltoall_into<E: Pod>(&self, send: &[E], recv: &mut [E]) -> Result<()> {
        let k = send.len() / self.size.max(1);
        let send_counts = if k * self.size == send.len() {
            vec![k; self.size]
        } else {
            Vec::new()
        };
        let recv_counts = vec![recv.len() / self.size.max(1); self.size];
        self.alltoallv_into("alltoall_into", send, &send_counts, recv, &recv_counts)
    }

    /// A reduction of the whole vector, of which this rank keeps its part
    /// (`counts[rank]` elements).
    pub(crate) fn reduce_scatter_into<E: Pod>(
        &self,
        send: &[E],
        recv: &mut [E],
        counts: &[usize],
        op: &impl Op<E>,
    ) -> Result<()> {
        let what = "reduce_scatter_into";
        let ok = counts.len() == self.size && counts.iter().sum::<usize>() == send.len();
        let wrong = (!ok || recv.len() != counts[self.rank]).then(|| {
            Error::InvalidArgument(format!(
                "{what}: counts {counts:?} do not cut the send buffer of {} for {} ranks, or the receive buffer of \
                 {} is not this rank's count",
                send.len(),
                self.size,
                recv.len()
            ))
        });
        // Every rank learns of a rank with wrong counts before the
        // reduction, whose lengths would otherwise disagree.
        // The largest of `size - rank` is the lowest rank that is wrong.
        let mut first_wrong = [0u64];
        let mine = [wrong.as_ref().map_or(0, |_| (self.size - self.rank) as u64)];
        self.allreduce_max(&mine, &mut first_wrong)?;
        if let Some(e) = wrong {
            return Err(e);
        }
        if first_wrong[0] != 0 {
            let rank = self.size - first_wrong[0] as usize;
            return Err(Error::CollectiveFailed {
                rank,
                detail: format!("in {what}: its counts do not cut its buffers"),
            });
        }
        let mut full = send.to_vec();
        self.reduce_slices(Reduction::Allreduce, send, &mut full, op, what)?;
        let at: usize = counts[..self.rank].iter().sum();
        recv.copy_from_slice(&full[at..at + recv.len()]);
        Ok(())
    }
}
