//! The typed collectives of the public API on the MPI backend: values
//! encoded as the native backend encodes them, combined by MPI where an
//! operator and an element type map onto MPI's, else folded in rank order
//! on one rank, which hands the result on (every rank gets the same bits).

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::collective::{Body, Numbers, Reduction};
use super::comm::MpiComm;
use super::{datatype, failure};
use crate::envelope::{Envelope, Format};
use crate::error::{Error, Result};
use crate::message;
use crate::op::Op;
use crate::wire::Context;

/// The element code that marks "the root passed no value".
const NO_VALUE: u16 = 0xffff;

/// Another rank's part of a collective (a part that does not decode is a
/// `CollectiveMismatch`, as on the native backend).
pub(super) fn decode<T: DeserializeOwned>(source: usize, body: Body) -> Result<T> {
    crate::collective::decode_part(&Envelope::new(source, 0, Context::WORLD, body.0, body.1))
}

pub(super) fn decode_all<T: DeserializeOwned>(bodies: Vec<Body>) -> Result<Vec<T>> {
    bodies.into_iter().enumerate().map(|(r, b)| decode(r, b)).collect()
}

/// Bytes as plain numbers (a whole number of them).
pub(super) fn numbers_of<E: bytemuck::Pod>(bytes: &[u8]) -> Vec<E> {
    let size = std::mem::size_of::<E>();
    let mut out = vec![E::zeroed(); bytes.len().checked_div(size).unwrap_or(0)];
    let whole = std::mem::size_of_val(out.as_slice());
    bytemuck::cast_slice_mut::<E, u8>(&mut out).copy_from_slice(&bytes[..whole]);
    out
}

/// Folds values in rank order with `op`.
pub(super) fn fold<T>(values: Vec<T>, op: &impl Op<T>) -> Option<T> {
    let mut values = values.into_iter();
    let first = values.next()?;
    Some(values.fold(first, |acc, v| crate::progress::combining(|| op.combine(&acc, &v))))
}

impl MpiComm {
    /// Reduces a single number `value` in MPI if `T` is a number type MPI
    /// knows and `op` a built-in operator: `Some(result)` (on the ranks
    /// that get one), `None` if MPI cannot.
    fn reduce_scalar<T: Clone>(&self, reduction: Reduction, value: &T, op: &impl Op<T>) -> Result<Option<Option<T>>> {
        let Some(builtin) = op.builtin() else {
            return Ok(None);
        };
        let Some(element) = message::number_code::<T>() else {
            return Ok(None);
        };
        let mut out = value.clone();
        let numbers = Numbers {
            send: (value as *const T).cast::<u8>(),
            recv: (&mut out as *mut T).cast::<u8>(),
            count: 1,
            element,
            op: builtin,
            _buffers: std::marker::PhantomData,
        };
        if !self.reduce_numbers(reduction, numbers)? {
            return Ok(None);
        }
        let gets = reduction.gives_result(self.rank);
        Ok(Some(gets.then_some(out)))
    }

    pub(crate) fn broadcast<T: Serialize + DeserializeOwned>(&self, value: &mut T, root: usize) -> Result<()> {
        if self.rank == root {
            // A value that does not encode still reaches the others, as
            // the failure.
            let (mine, failure) = failure::or_failed(message::encode(value));
            self.broadcast_body(Some(mine), root)?;
            return failure.map_or(Ok(()), Err);
        }
        let body = self.broadcast_body(None, root)?;
        failure::heard("broadcast", self.rank, [(root, &body)])?;
        *value = decode(root, body)?;
        Ok(())
    }

    pub(crate) fn broadcast_value<T: Serialize + DeserializeOwned>(&self, value: Option<T>, root: usize) -> Result<T> {
        let is_root = self.rank == root;
        let (mine, failure) = match (&value, is_root) {
            (Some(v), true) => {
                let (mine, failure) = failure::or_failed(message::encode(v));
                (Some(mine), failure)
            }
            (None, true) => (Some((Format::Raw(NO_VALUE), Vec::new())), None),
            _ => (None, None),
        };
        let body = self.broadcast_body(mine, root)?;
        failure.map_or(Ok(()), Err)?;
        failure::heard("broadcast_value", self.rank, [(root, &body)])?;
        if body.0 == Format::Raw(NO_VALUE) {
            let e = Error::InvalidArgument(format!(
                "broadcast_value: the root (rank {root}) passed None; it must pass the value"
            ));
            return Err(if is_root {
                e
            } else {
                Error::CollectiveFailed {
                    rank: root,
                    detail: format!("in broadcast_value: {e}"),
                }
            });
        }
        match value {
            Some(v) if is_root => Ok(v),
            _ => decode(root, body),
        }
    }

    pub(crate) fn scatter<T: Serialize + DeserializeOwned>(&self, values: &[T], root: usize) -> Result<T> {
        if self.rank != root {
            return decode(root, self.scatter_bodies(None, root)?);
        }
        match values.iter().map(message::encode).collect::<Result<Vec<Body>>>() {
            Ok(bodies) => decode(root, self.scatter_bodies(Some(bodies), root)?),
            Err(e) => {
                self.scatter_bodies(Some(vec![failure::failed(&e); self.size]), root)?;
                Err(e)
            }
        }
    }

    pub(crate) fn gather<T: Serialize + DeserializeOwned>(&self, value: &T, root: usize) -> Result<Option<Vec<T>>> {
        let (mine, own) = failure::or_failed(message::encode(value));
        let got = self.gather_bodies(mine, root)?;
        own.map_or(Ok(()), Err)?;
        match got {
            Some(bodies) => {
                failure::heard("gather", self.rank, bodies.iter().enumerate())?;
                decode_all(bodies).map(Some)
            }
            None => Ok(None),
        }
    }

    pub(crate) fn allgather<T: Serialize + DeserializeOwned>(&self, value: &T) -> Result<Vec<T>> {
        let (mine, own) = failure::or_failed(message::encode(value));
        let bodies = self.allgather_bodies(mine)?;
        own.map_or(Ok(()), Err)?;
        failure::heard("allgather", self.rank, bodies.iter().enumerate())?;
        decode_all(bodies)
    }

    pub(crate) fn alltoall<T: Serialize + DeserializeOwned>(&self, values: &[T]) -> Result<Vec<T>> {
        let (bodies, own) = match values.iter().map(message::encode).collect::<Result<Vec<Body>>>() {
            Ok(bodies) => (bodies, None),
            Err(e) => (vec![failure::failed(&e); values.len()], Some(e)),
        };
        let got = self.alltoall_bodies(bodies)?;
        own.map_or(Ok(()), Err)?;
        failure::heard("alltoall", self.rank, got.iter().enumerate())?;
        decode_all(got)
    }

    pub(crate) fn reduce<T: Serialize + DeserializeOwned + Clone>(
        &self,
        value: &T,
        op: &impl Op<T>,
        root: usize,
    ) -> Result<Option<T>> {
        if let Some(result) = self.reduce_scalar(Reduction::Reduce(root), value, op)? {
            return Ok(result);
        }
        let (mine, own) = failure::or_failed(message::encode(value));
        let got = self.gather_bodies(mine, root)?;
        own.map_or(Ok(()), Err)?;
        match got {
            Some(bodies) => {
                failure::heard("reduce", self.rank, bodies.iter().enumerate())?;
                Ok(fold(decode_all(bodies)?, op))
            }
            None => Ok(None),
        }
    }

    pub(crate) fn allreduce<T: Serialize + DeserializeOwned + Clone>(&self, value: &T, op: &impl Op<T>) -> Result<T> {
        if let Some(result) = self.reduce_scalar(Reduction::Allreduce, value, op)? {
            return Ok(result.expect("every rank gets an allreduce's result"));
        }
        // Every failure travels in place of a value: a rank's own encoding
        // to rank 0, rank 0's decoding and folding to every rank.
        let (mine, own) = failure::or_failed(message::encode(value));
        let (folded, failure) = match self.gather_bodies(mine, 0)? {
            Some(bodies) => {
                let folded = own.map_or(Ok(()), Err).and_then(|()| {
                    failure::heard("allreduce", 0, bodies.iter().enumerate())?;
                    let total = fold(decode_all(bodies)?, op).expect("a communicator has at least one rank");
                    message::encode(&total)
                });
                let (folded, failure) = failure::or_failed(folded);
                (Some(folded), failure)
            }
            None => (None, own),
        };
        let body = self.broadcast_body(folded, 0)?;
        if let Some(e) = failure {
            return Err(e);
        }
        failure::heard("allreduce", self.rank, [(0, &body)])?;
        decode(0, body)
    }

    /// An inclusive (`exclusive` false) or exclusive prefix reduction: the
    /// prefixes are folded on rank 0 and scattered.
    pub(crate) fn scan<T: Serialize + DeserializeOwned + Clone>(
        &self,
        value: &T,
        op: &impl Op<T>,
        exclusive: bool,
    ) -> Result<Option<T>> {
        let reduction = if exclusive { Reduction::Exscan } else { Reduction::Scan };
        if let Some(result) = self.reduce_scalar(reduction, value, op)? {
            return Ok(result);
        }
        // Failures travel in place of values, as in `allreduce`.
        let (mine, own) = failure::or_failed(message::encode(value));
        let (prefixes, failure) = match self.gather_bodies(mine, 0)? {
            Some(bodies) => {
                let made = own.map_or(Ok(()), Err).and_then(|()| {
                    failure::heard("scan", 0, bodies.iter().enumerate())?;
                    let mut acc: Option<T> = None;
                    let mut out = Vec::with_capacity(self.size);
                    for v in decode_all::<T>(bodies)? {
                        let next = match &acc {
                            None => v,
                            Some(a) => crate::progress::combining(|| op.combine(a, &v)),
                        };
                        let shown = if exclusive {
                            acc.replace(next)
                        } else {
                            Some(acc.insert(next).clone())
                        };
                        out.push(message::encode(&shown)?);
                    }
                    Ok(out)
                });
                match made {
                    Ok(out) => (Some(out), None),
                    Err(e) => (Some(vec![failure::failed(&e); self.size]), Some(e)),
                }
            }
            None => (None, own),
        };
        let got = self.scatter_bodies(prefixes, 0);
        if let Some(e) = failure {
            return Err(e);
        }
        decode(0, got?)
    }
}

impl MpiComm {
    /// A plain-number reduction, element by element: in MPI when it can,
    /// else folded in rank order on one rank. A rank whose `recv` has the
    /// wrong length (where it gets a result) takes part with a buffer of
    /// its own, so that the others do not wait for it, and fails after.
    pub(crate) fn reduce_slices<E: bytemuck::Pod>(
        &self,
        reduction: Reduction,
        send: &[E],
        recv: &mut [E],
        op: &impl Op<E>,
        what: &str,
    ) -> Result<()> {
        let gets = reduction.gives_result(self.rank);
        let wrong = gets && recv.len() != send.len();
        let mut own = if wrong { send.to_vec() } else { Vec::new() };
        let out: &mut [E] = if wrong { &mut own } else { recv };
        if let Some(builtin) = op.builtin() {
            let numbers = Numbers {
                send: datatype::address(send).cast::<u8>(),
                recv: datatype::address_mut(out).cast::<u8>(),
                count: send.len(),
                element: crate::element::code_of::<E>(),
                op: builtin,
                _buffers: std::marker::PhantomData,
            };
            if self.reduce_numbers(reduction, numbers)? {
                return self.length_checked(wrong, what, recv.len(), send.len());
            }
        }
        let combine = |a: &[E], b: &[E]| -> Vec<E> {
            a.iter()
                .zip(b)
                .map(|(x, y)| crate::progress::combining(|| op.combine(x, y)))
                .collect()
        };
        let mine = (message::raw::<E>(), message::pod_copy(send));
        let root = match reduction {
            Reduction::Reduce(root) => root,
            _ => 0,
        };
        let parts: Option<Vec<Vec<E>>> = self
            .gather_bodies(mine, root)?
            .map(|bodies| bodies.into_iter().map(|(_, b)| numbers_of::<E>(&b)).collect());
        match reduction {
            Reduction::Reduce(_) => {
                if let Some(parts) = parts {
                    let total = parts
                        .iter()
                        .skip(1)
                        .fold(parts[0].clone(), |acc: Vec<E>, p| combine(&acc, p));
                    out.copy_from_slice(&total[..out.len().min(total.len())]);
                }
            }
            Reduction::Allreduce => {
                let total = parts.map(|parts| {
                    let total = parts
                        .iter()
                        .skip(1)
                        .fold(parts[0].clone(), |acc: Vec<E>, p| combine(&acc, p));
                    (message::raw::<E>(), message::pod_copy(&total))
                });
                let (_, bytes) = self.broadcast_body(total, 0)?;
                out.copy_from_slice(bytemuck::cast_slice(&bytes));
            }
            Reduction::Scan | Reduction::Exscan => {
                let prefixes = parts.map(|parts| {
                    let mut acc: Option<Vec<E>> = None;
                    let mut bodies = Vec::with_capacity(parts.len());
                    for p in &parts {
                        let next = acc.as_ref().map_or_else(|| p.clone(), |a| combine(a, p));
                        let shown = if reduction == Reduction::Exscan {
                            acc.replace(next)
                        } else {
                            Some(acc.insert(next).clone())
                        };
                        bodies.push((
                            message::raw::<E>(),
                            shown.map_or_else(Vec::new, |v| message::pod_copy(&v)),
                        ));
                    }
                    bodies
                });
                let (_, bytes) = self.scatter_bodies(prefixes, 0)?;
                if gets {
                    out.copy_from_slice(bytemuck::cast_slice(&bytes));
                }
            }
        }
        self.length_checked(wrong, what, recv.len(), send.len())
    }

    fn length_checked(&self, wrong: bool, what: &str, recv: usize, send: usize) -> Result<()> {
        if wrong {
            return Err(Error::InvalidArgument(format!(
                "{what}: the receive buffer holds {recv} elements, the send buffer {send}"
            )));
        }
        Ok(())
    }
}
