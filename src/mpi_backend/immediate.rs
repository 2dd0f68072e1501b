//! The `immediate_` collectives on the MPI backend: each is a chain of
//! stages of non-blocking MPI calls, the next posted as the request is
//! tested or waited on. A barrier and a built-in reduction are one stage
//! (`MPI_Ibarrier`, `MPI_Iallreduce`), started in the call as MPI requires
//! of collectives. Values of a length only the sender knows (serde
//! values, and whatever a closure folds on rank 0) take more stages, which
//! ranks reach in different orders, so they travel point-to-point on the
//! private communicator under a tag of their own, drawn when the call
//! starts (when every rank agrees). MPI only ever reads or writes buffers
//! the chain owns: the caller's buffer is written at the end, so a request
//! that is leaked (`mem::forget`) leaks its buffers with it.

use std::os::raw::c_int;

use bytemuck::Pod;
use serde::Serialize;
use serde::de::DeserializeOwned;

use mpi::ffi;

use super::collective::{self, Body, Header};
use super::comm::{MpiComm, PendingBarrier};
use super::{check, check_open, datatype, failure, numbers, typed};
use crate::error::{Error, Result};
use crate::message;
use crate::op::{Builtin, Op};

/// What to do once the posted stage completes: post the next, or finish.
type Then<'c, T> = Box<dyn FnOnce() -> Result<Stage<'c, T>> + 'c>;

/// Where a chain is.
pub(crate) enum Stage<'c, T> {
    /// MPI requests are in flight; `Then` runs once all have completed.
    Posted(Vec<ffi::MPI_Request>, Then<'c, T>),
    /// The collective is over, with this result.
    Done(T),
}

/// An `immediate_` collective running on MPI.
pub(crate) struct MpiCollective<'c, T> {
    requests: Vec<ffi::MPI_Request>,
    then: Option<Then<'c, T>>,
    result: Option<Result<T>>,
}

impl<'c, T> MpiCollective<'c, T> {
    fn new(stage: Result<Stage<'c, T>>) -> Result<Self> {
        let mut chain = MpiCollective {
            requests: Vec::new(),
            then: None,
            result: None,
        };
        chain.enter(stage?);
        Ok(chain)
    }

    fn enter(&mut self, stage: Stage<'c, T>) {
        match stage {
            Stage::Posted(requests, then) => {
                self.requests = requests;
                self.then = Some(then);
            }
            Stage::Done(value) => self.result = Some(Ok(value)),
        }
    }

    /// Moves the chain on as far as it goes without waiting (or, with
    /// `block`, to its end): true once it is over.
    fn advance(&mut self, block: bool) -> Result<bool> {
        while self.result.is_none() {
            check_open()?;
            let n = self.requests.len() as c_int;
            let mut done: c_int = 1;
            if n > 0 {
                let requests = self.requests.as_mut_ptr();
                // SAFETY: `requests` are the posted stage's active requests.
                if block {
                    check(
                        unsafe { ffi::MPI_Waitall(n, requests, ffi::RSMPI_STATUSES_IGNORE) },
                        "MPI_Waitall",
                    )?;
                } else {
                    check(
                        unsafe { ffi::MPI_Testall(n, requests, &mut done, ffi::RSMPI_STATUSES_IGNORE) },
                        "MPI_Testall",
                    )?;
                }
            }
            if done == 0 {
                return Ok(false);
            }
            self.requests.clear();
            let then = self.then.take().expect("a posted stage has what follows it");
            match then() {
                Ok(stage) => self.enter(stage),
                // The stages are built so that every rank that takes part
                // in a later stage knows of an error first (it travels in
                // place of the value): none is left waiting.
                Err(e) => self.result = Some(Err(e)),
            }
        }
        Ok(true)
    }

    pub(crate) fn test(&mut self) -> Result<bool> {
        self.advance(false)
    }

    pub(crate) fn wait(mut self) -> Result<T> {
        self.advance(true)?;
        self.result.take().expect("a chain at its end has its result")
    }

    pub(crate) fn wait_timeout(&mut self, timeout: std::time::Duration) -> Result<bool> {
        let deadline = std::time::Instant::now().checked_add(timeout);
        loop {
            if self.advance(false)? {
                return Ok(true);
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Ok(false);
            }
            std::thread::yield_now();
        }
    }
}

impl<T> Drop for MpiCollective<'_, T> {
    /// Completes the collective, as the other ranks need this rank's part
    /// (after `MPI_Finalize` there is nothing left to complete).
    fn drop(&mut self) {
        if self.then.is_some() && !super::finalized() {
            let _ = self.advance(true);
        }
    }
}

/// Posts one non-blocking MPI call that fills in its request.
fn post(call: &'static str, start: impl FnOnce(*mut ffi::MPI_Request) -> c_int) -> Result<ffi::MPI_Request> {
    check_open()?;
    // SAFETY: a predefined handle, overwritten by the call.
    let mut request = unsafe { ffi::RSMPI_REQUEST_NULL };
    check(start(&mut request), call)?;
    Ok(request)
}

/// Posts a send of `bytes` (which must stay put until it completes).
fn send(comm: ffi::MPI_Comm, bytes: &[u8], dest: usize, tag: c_int) -> Result<ffi::MPI_Request> {
    let at = datatype::address(bytes);
    // SAFETY: the caller keeps `bytes` until the request completes; the
    // length fits (checked by `fits`).
    post("MPI_Isend", |r| unsafe {
        ffi::MPI_Isend(at, bytes.len() as c_int, datatype::bytes(), dest as c_int, tag, comm, r)
    })
}

/// Posts a receive into `bytes` (which must stay put until it completes).
fn receive(comm: ffi::MPI_Comm, bytes: &mut [u8], source: usize, tag: c_int) -> Result<ffi::MPI_Request> {
    let n = bytes.len() as c_int;
    let at = datatype::address_mut(bytes);
    // SAFETY: as for `send`.
    post("MPI_Irecv", |r| unsafe {
        ffi::MPI_Irecv(at, n, datatype::bytes(), source as c_int, tag, comm, r)
    })
}

/// `body` if it was made and MPI can carry it in one message, else the
/// failure to send in its place and the error.
fn fits(what: &str, body: Result<Body>) -> (Body, Option<Error>) {
    failure::or_failed(body.and_then(|body| match c_int::try_from(body.1.len()) {
        Ok(_) => Ok(body),
        Err(_) => Err(Error::InvalidArgument(format!(
            "{what}: {} bytes in one call; the MPI backend carries at most 2 GiB - 1 per immediate collective",
            body.1.len()
        ))),
    }))
}

impl MpiComm {
    pub(crate) fn immediate_barrier(&self) -> Result<MpiCollective<'_, ()>> {
        let comm = self.comm.0;
        // A barrier a `barrier_timeout` left posted is the one to wait for.
        let request = match self.pending_barrier.take() {
            Some(PendingBarrier(request)) => request,
            // SAFETY: every member posts the barrier; it touches no buffer.
            None => post("MPI_Ibarrier", |r| unsafe { ffi::MPI_Ibarrier(comm, r) })?,
        };
        MpiCollective::new(Ok(Stage::Posted(vec![request], Box::new(|| Ok(Stage::Done(()))))))
    }

    /// The root's body to every rank, point-to-point under `tag` (its
    /// header, then its bytes), then `then` with it. A failure the root
    /// sends in place of its value is for `then` to report
    /// ([`collective::heard`]).
    fn broadcast_stages<'c, T: 'c>(
        &'c self,
        tag: c_int,
        mine: Option<Body>,
        root: usize,
        then: impl FnOnce(Body) -> Result<T> + 'c,
    ) -> Result<Stage<'c, T>> {
        let comm = self.private.0;
        if let Some(mine) = mine.filter(|_| self.rank == root) {
            let head: Box<Header> = Box::new(collective::header_of(&mine));
            let mut requests = Vec::with_capacity(2 * self.size);
            for r in (0..self.size).filter(|&r| r != root) {
                requests.push(send(comm, bytemuck::cast_slice(&head[..]), r, tag)?);
                if !mine.1.is_empty() {
                    requests.push(send(comm, &mine.1, r, tag)?);
                }
            }
            return Ok(Stage::Posted(
                requests,
                Box::new(move || {
                    let _sent = head;
                    then(mine).map(Stage::Done)
                }),
            ));
        }
        let mut head: Box<Header> = Box::new([0; 2]);
        let request = receive(comm, bytemuck::cast_slice_mut(&mut head[..]), root, tag)?;
        Ok(Stage::Posted(
            vec![request],
            Box::new(move || {
                let mut bytes = vec![0u8; head[1] as usize];
                let requests = match bytes.is_empty() {
                    true => Vec::new(),
                    false => vec![receive(comm, &mut bytes, root, tag)?],
                };
                let format = collective::format_of(&head);
                Ok(Stage::Posted(
                    requests,
                    Box::new(move || then((format, bytes)).map(Stage::Done)),
                ))
            }),
        ))
    }

    /// Every rank's body on rank 0, point-to-point under `tag` (headers,
    /// then bytes), then `then` with them there (`None` elsewhere).
    fn gather_stages<'c, T: 'c>(
        &'c self,
        tag: c_int,
        mine: Body,
        then: impl FnOnce(Option<Vec<Body>>) -> Result<Stage<'c, T>> + 'c,
    ) -> Result<Stage<'c, T>> {
        let comm = self.private.0;
        if self.rank != 0 {
            let head: Box<Header> = Box::new(collective::header_of(&mine));
            let mut requests = vec![send(comm, bytemuck::cast_slice(&head[..]), 0, tag)?];
            if !mine.1.is_empty() {
                requests.push(send(comm, &mine.1, 0, tag)?);
            }
            return Ok(Stage::Posted(
                requests,
                Box::new(move || {
                    let _sent = (head, mine);
                    then(None)
                }),
            ));
        }
        let mut heads: Vec<Header> = vec![[0; 2]; self.size];
        let mut requests = Vec::with_capacity(self.size);
        for r in 1..self.size {
            requests.push(receive(comm, bytemuck::cast_slice_mut(&mut heads[r..=r]), r, tag)?);
        }
        Ok(Stage::Posted(
            requests,
            Box::new(move || {
                let own_format = mine.0;
                let mut bodies = vec![mine.1];
                bodies.extend(heads[1..].iter().map(|h| vec![0u8; h[1] as usize]));
                let mut requests = Vec::with_capacity(bodies.len());
                for (r, body) in bodies.iter_mut().enumerate().skip(1) {
                    if !body.is_empty() {
                        requests.push(receive(comm, body, r, tag)?);
                    }
                }
                Ok(Stage::Posted(
                    requests,
                    Box::new(move || {
                        let formats = std::iter::once(own_format).chain(heads[1..].iter().map(collective::format_of));
                        then(Some(formats.zip(bodies).collect()))
                    }),
                ))
            }),
        ))
    }

    /// Every rank's body folded on rank 0 by `fold`, the result to every
    /// rank, then `then` with it. A rank whose part fails sends the
    /// failure in its place; a fold that fails on rank 0 reaches the
    /// others in place of the result, as `CollectiveFailed`.
    fn fold_stages<'c, T: 'c>(
        &'c self,
        what: &'static str,
        mine: Result<Body>,
        fold: impl FnOnce(Vec<Body>) -> Result<Body> + 'c,
        then: impl FnOnce(Body) -> Result<T> + 'c,
    ) -> Result<Stage<'c, T>> {
        let tag = self.immediate_tag();
        let (mine, own) = fits(what, mine);
        self.gather_stages(tag, mine, move |parts| {
            let (folded, failure) = match parts {
                None => (None, own),
                Some(bodies) => {
                    let result = match own {
                        Some(e) => Err(e),
                        None => failure::heard(what, 0, bodies.iter().enumerate()).and_then(|()| fold(bodies)),
                    };
                    let (folded, failure) = fits(what, result);
                    (Some(folded), failure)
                }
            };
            self.broadcast_stages(tag, folded, 0, move |body| {
                if let Some(e) = failure {
                    return Err(e);
                }
                failure::heard(what, self.rank, [(0, &body)])?;
                then(body)
            })
        })
    }

    /// A broadcast of the root's body (its encoding, which may have
    /// failed), then `then` with it on every rank.
    fn broadcast_checked<'c, T: 'c>(
        &'c self,
        what: &'static str,
        mine: Option<Result<Body>>,
        root: usize,
        then: impl FnOnce(Body) -> Result<T> + 'c,
    ) -> Result<MpiCollective<'c, T>> {
        let tag = self.immediate_tag();
        let (mine, failure) = match mine {
            Some(mine) => {
                let (mine, failure) = fits(what, mine);
                (Some(mine), failure)
            }
            None => (None, None),
        };
        MpiCollective::new(self.broadcast_stages(tag, mine, root, move |body| {
            if let Some(e) = failure {
                return Err(e);
            }
            failure::heard(what, self.rank, [(root, &body)])?;
            then(body)
        }))
    }

    pub(crate) fn immediate_broadcast<'c, T: Serialize + DeserializeOwned>(
        &'c self,
        value: &'c mut T,
        root: usize,
    ) -> Result<MpiCollective<'c, ()>> {
        let is_root = self.rank == root;
        let mine = is_root.then(|| message::encode(&*value));
        self.broadcast_checked("immediate_broadcast", mine, root, move |body| {
            if !is_root {
                *value = typed::decode(root, body)?;
            }
            Ok(())
        })
    }

    pub(crate) fn immediate_broadcast_into<'c, E: Pod>(
        &'c self,
        buf: &'c mut [E],
        root: usize,
    ) -> Result<MpiCollective<'c, ()>> {
        let is_root = self.rank == root;
        let mine = is_root.then(|| Ok(numbers::body(buf)));
        let what = "immediate_broadcast_into";
        self.broadcast_checked(what, mine, root, move |body| {
            if !is_root {
                numbers::copy_body(what, root, &body, buf)?;
            }
            Ok(())
        })
    }

    /// `send` reduced by `MPI_Iallreduce` as `how` says, then `then` with
    /// the bytes of the result.
    fn allreduce_stages<'c, T: 'c>(
        &'c self,
        send: Vec<u8>,
        how: Reducible,
        then: impl FnOnce(Vec<u8>) -> Result<T> + 'c,
    ) -> Result<Stage<'c, T>> {
        let comm = self.comm.0;
        let mut recv = vec![0u8; send.len()];
        let (from, into) = (datatype::address(&send), datatype::address_mut(&mut recv));
        // SAFETY: both Vecs hold `how.count` numbers and live in the next
        // stage.
        let request = post("MPI_Iallreduce", |r| unsafe {
            ffi::MPI_Iallreduce(from, into, how.count, how.datatype, how.op, comm, r)
        })?;
        Ok(Stage::Posted(
            vec![request],
            Box::new(move || {
                let _send = send;
                then(recv).map(Stage::Done)
            }),
        ))
    }

    pub(crate) fn immediate_allreduce<'c, T, O>(&'c self, value: &T, op: O) -> Result<MpiCollective<'c, T>>
    where
        T: Serialize + DeserializeOwned + 'static,
        O: Op<T> + Send + 'static,
    {
        if let Some(how) = message::number_code::<T>().and_then(|e| Reducible::new(e, op.builtin(), 1)) {
            let size = std::mem::size_of::<T>();
            // SAFETY: `T` is a plain number type (it has an element code):
            // its bytes are its value, and any bytes are a value of it.
            let send = unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size) }.to_vec();
            let read = |bytes: Vec<u8>| Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) });
            return MpiCollective::new(self.allreduce_stages(send, how, read));
        }
        let what = "immediate_allreduce";
        let fold = move |bodies: Vec<Body>| {
            let folded = typed::fold(typed::decode_all::<T>(bodies)?, &op);
            message::encode(&folded.expect("a communicator has at least one rank"))
        };
        MpiCollective::new(self.fold_stages(what, message::encode(value), fold, |body| typed::decode(0, body)))
    }

    pub(crate) fn immediate_allreduce_into<'c, E, O>(
        &'c self,
        send: &[E],
        recv: &'c mut [E],
        op: O,
    ) -> Result<MpiCollective<'c, ()>>
    where
        E: Pod,
        O: Op<E> + Send + 'static,
    {
        let what = "immediate_allreduce_into";
        if let Some(how) = Reducible::new(crate::element::code_of::<E>(), op.builtin(), send.len()) {
            // A `recv` of the wrong length takes part all the same, and
            // fails at the end.
            let write = move |bytes: Vec<u8>| {
                if std::mem::size_of_val(recv) != bytes.len() {
                    return Err(Error::InvalidArgument(format!(
                        "{what}: send holds {} elements but recv {}",
                        bytes.len() / std::mem::size_of::<E>().max(1),
                        recv.len()
                    )));
                }
                bytemuck::cast_slice_mut::<E, u8>(recv).copy_from_slice(&bytes);
                Ok(())
            };
            return MpiCollective::new(self.allreduce_stages(message::pod_copy(send), how, write));
        }
        let fold = move |bodies: Vec<Body>| {
            let parts: Vec<Vec<E>> = bodies.iter().map(|b| typed::numbers_of::<E>(&b.1)).collect();
            if let Some((r, p)) = parts.iter().enumerate().find(|(_, p)| p.len() != parts[0].len()) {
                return Err(Error::CollectiveFailed {
                    rank: r,
                    detail: format!(
                        "in {what}: it gave {} elements where rank 0 gave {}",
                        p.len(),
                        parts[0].len()
                    ),
                });
            }
            let folded = parts.iter().skip(1).fold(parts[0].clone(), |acc, p| {
                acc.iter()
                    .zip(p)
                    .map(|(x, y)| crate::progress::combining(|| op.combine(x, y)))
                    .collect()
            });
            Ok(numbers::body(&folded))
        };
        MpiCollective::new(self.fold_stages(what, Ok(numbers::body(send)), fold, move |body| {
            numbers::copy_body(what, 0, &body, recv)
        }))
    }
}

/// A reduction MPI can do itself: its datatype, operator and count.
struct Reducible {
    datatype: ffi::MPI_Datatype,
    op: ffi::MPI_Op,
    count: c_int,
}

impl Reducible {
    /// `count` numbers of element code `element` with the built-in `op`,
    /// if MPI has a datatype and an operator for them.
    fn new(element: u16, op: Option<Builtin>, count: usize) -> Option<Reducible> {
        let op = op?;
        Some(Reducible {
            datatype: datatype::of_element(element)?,
            op: datatype::operator(op, element)?,
            count: c_int::try_from(count).ok()?,
        })
    }
}
