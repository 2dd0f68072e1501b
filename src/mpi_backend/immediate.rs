//! The `immediate_` collectives on the MPI backend: each is a chain of
//! stages of non-blocking MPI calls (`live.rs`), the next posted as soon as
//! this rank tests, waits or blocks anywhere in spmd. A barrier and a built-in reduction are one stage
//! (`MPI_Ibarrier`, `MPI_Iallreduce`), started in the call as MPI requires
//! of collectives. Values of a length only the sender knows (serde
//! values, and whatever a closure folds on rank 0) take more stages, which
//! ranks reach in different orders, so they travel point-to-point on the
//! private communicator under a tag of their own, drawn when the call
//! starts (when every rank agrees). MPI only ever reads or writes buffers
//! the chain owns, and the chain owns all it touches: the caller's buffer
//! or value is written by the request's `wait`, so a request that is
//! leaked (`mem::forget`) leaves a chain that still ends.

use std::os::raw::c_int;

use bytemuck::Pod;
use serde::Serialize;
use serde::de::DeserializeOwned;

use mpi::ffi;

use super::collective::{self, Body, Header};
use super::comm::{Handle, MpiComm, PendingBarrier};
use super::live::{self, Chain, Shared, Stage};
use super::{check_open, datatype, failure, numbers, typed};
use crate::envelope::Format;
use crate::error::{Error, Result};
use crate::message;
use crate::op::{Builtin, Op};

/// The caller's part of a collective's end: its result made from the
/// chain's, written where the caller asked.
type Finish<'c, T> = Box<dyn FnOnce(Body) -> Result<T> + 'c>;

/// An `immediate_` collective running on MPI: its chain, and what the
/// caller gets from the chain's result.
pub(crate) struct MpiCollective<'c, T> {
    chain: Shared,
    finish: Option<Finish<'c, T>>,
}

impl<'c, T> MpiCollective<'c, T> {
    /// A chain of point-to-point stages on `comm`, which need this rank to
    /// move from one to the next: the progress thread runs while it does.
    fn new(comm: Handle, stage: Result<Stage>, finish: impl FnOnce(Body) -> Result<T> + 'c) -> Result<Self> {
        Ok(MpiCollective {
            chain: Chain::start(comm.0, stage, true)?,
            finish: Some(Box::new(finish)),
        })
    }

    /// One of MPI's own non-blocking collectives on `comm`: MPI moves it
    /// on inside any MPI call, so no thread is started for it.
    fn in_mpi(comm: Handle, stage: Result<Stage>, finish: impl FnOnce(Body) -> Result<T> + 'c) -> Result<Self> {
        Ok(MpiCollective {
            chain: Chain::start(comm.0, stage, false)?,
            finish: Some(Box::new(finish)),
        })
    }

    /// Moves this chain on, and every other live one: true once this one
    /// is over (`Finalized` once MPI is: finalize ended every chain).
    pub(crate) fn test(&mut self) -> Result<bool> {
        check_open()?;
        let over = live::advance_one(&self.chain);
        live::advance_all();
        Ok(over)
    }

    pub(crate) fn wait(mut self) -> Result<T> {
        self.wait_until(None)?;
        self.end()
    }

    pub(crate) fn wait_timeout(&mut self, timeout: std::time::Duration) -> Result<bool> {
        self.wait_until(std::time::Instant::now().checked_add(timeout))
    }

    fn wait_until(&mut self, deadline: Option<std::time::Instant>) -> Result<bool> {
        loop {
            if self.test()? {
                return Ok(true);
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Ok(false);
            }
            std::thread::yield_now();
        }
    }

    /// The caller's result, once the chain is over.
    fn end(&mut self) -> Result<T> {
        let result = self.chain.lock().unwrap_or_else(|e| e.into_inner()).take_result();
        let body = result.expect("a chain at its end has its result")?;
        let finish = self.finish.take().expect("a collective ends once");
        finish(body)
    }
}

impl<T> Drop for MpiCollective<'_, T> {
    /// Completes the collective (an `_into` buffer is written), as on the
    /// native backend. Unwinding, or after `MPI_Finalize`, it is left to
    /// end on its own.
    fn drop(&mut self) {
        if self.finish.is_some() && !super::finalized() && !std::thread::panicking() && self.wait_until(None).is_ok() {
            let _ = self.end();
        }
    }
}

/// Who takes part in the stages of one collective: the communicator they
/// travel on (the private one), this rank and the size. The stages keep a
/// copy, so that they need nothing borrowed.
#[derive(Debug, Clone, Copy)]
struct Peers {
    comm: Handle,
    rank: usize,
    size: usize,
}

/// Posts one non-blocking MPI call that fills in its request.
fn post(call: &'static str, start: impl FnOnce(*mut ffi::MPI_Request) -> c_int) -> Result<ffi::MPI_Request> {
    check_open()?;
    // SAFETY: a predefined handle, overwritten by the call.
    let mut request = unsafe { ffi::RSMPI_REQUEST_NULL };
    super::check(start(&mut request), call)?;
    Ok(request)
}

/// Posts a send of `bytes` (which must stay put until it completes).
fn send(comm: Handle, bytes: &[u8], dest: usize, tag: c_int) -> Result<ffi::MPI_Request> {
    let at = datatype::address(bytes);
    // SAFETY: the caller keeps `bytes` until the request completes; the
    // length fits (checked by `fits`).
    post("MPI_Isend", |r| unsafe {
        ffi::MPI_Isend(
            at,
            bytes.len() as c_int,
            datatype::bytes(),
            dest as c_int,
            tag,
            comm.0,
            r,
        )
    })
}

/// Posts a receive into `bytes` (which must stay put until it completes).
fn receive(comm: Handle, bytes: &mut [u8], source: usize, tag: c_int) -> Result<ffi::MPI_Request> {
    let n = bytes.len() as c_int;
    let at = datatype::address_mut(bytes);
    // SAFETY: as for `send`.
    post("MPI_Irecv", |r| unsafe {
        ffi::MPI_Irecv(at, n, datatype::bytes(), source as c_int, tag, comm.0, r)
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

impl Peers {
    /// The root's body to every rank, point-to-point under `tag` (its
    /// header, then its bytes), then `then` with it. A failure the root
    /// sends in place of its value is for `then` to report
    /// ([`failure::heard`]).
    fn broadcast_stages(
        self,
        tag: c_int,
        mine: Option<Body>,
        root: usize,
        then: impl FnOnce(Body) -> Result<Stage> + Send + 'static,
    ) -> Result<Stage> {
        let comm = self.comm;
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
                    then(mine)
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
                Ok(Stage::Posted(requests, Box::new(move || then((format, bytes)))))
            }),
        ))
    }

    /// Every rank's body on rank 0, point-to-point under `tag` (headers,
    /// then bytes), then `then` with them there (`None` elsewhere).
    fn gather_stages(
        self,
        tag: c_int,
        mine: Body,
        then: impl FnOnce(Option<Vec<Body>>) -> Result<Stage> + Send + 'static,
    ) -> Result<Stage> {
        let comm = self.comm;
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

    /// Every rank's body folded on rank 0 by `fold`, and the result to
    /// every rank. A rank whose part fails sends the failure in its place;
    /// a fold that fails on rank 0 reaches the others in place of the
    /// result, as `CollectiveFailed`.
    fn fold_stages(
        self,
        what: &'static str,
        tag: c_int,
        mine: Result<Body>,
        fold: impl FnOnce(Vec<Body>) -> Result<Body> + Send + 'static,
    ) -> Result<Stage> {
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
                Ok(Stage::Done(body))
            })
        })
    }

    /// A broadcast of the root's body (its encoding, which may have
    /// failed), ending with it on every rank.
    fn broadcast_checked(
        self,
        what: &'static str,
        tag: c_int,
        mine: Option<Result<Body>>,
        root: usize,
    ) -> Result<Stage> {
        let (mine, failure) = match mine {
            Some(mine) => {
                let (mine, failure) = fits(what, mine);
                (Some(mine), failure)
            }
            None => (None, None),
        };
        self.broadcast_stages(tag, mine, root, move |body| {
            if let Some(e) = failure {
                return Err(e);
            }
            failure::heard(what, self.rank, [(root, &body)])?;
            Ok(Stage::Done(body))
        })
    }
}

/// `send` reduced by `MPI_Iallreduce` on `comm` as `how` says, ending with
/// the bytes of the result (their format is not looked at).
fn allreduce_stages(comm: Handle, send: Vec<u8>, how: Reducible) -> Result<Stage> {
    let mut recv = vec![0u8; send.len()];
    let (from, into) = (datatype::address(&send), datatype::address_mut(&mut recv));
    // SAFETY: both Vecs hold `how.count` numbers and live in the next
    // stage.
    let request = post("MPI_Iallreduce", |r| unsafe {
        ffi::MPI_Iallreduce(from, into, how.count, how.datatype, how.op, comm.0, r)
    })?;
    Ok(Stage::Posted(
        vec![request],
        Box::new(move || {
            let _send = send;
            Ok(Stage::Done((Format::Serde, recv)))
        }),
    ))
}

impl MpiComm {
    fn peers(&self) -> Peers {
        Peers {
            comm: self.private,
            rank: self.rank,
            size: self.size,
        }
    }

    pub(crate) fn immediate_barrier(&self) -> Result<MpiCollective<'_, ()>> {
        let comm = self.comm;
        // A barrier a `barrier_timeout` left posted is the one to wait for.
        let request = match self.pending_barrier.take() {
            Some(PendingBarrier(request)) => request,
            // SAFETY: every member posts the barrier; it touches no buffer.
            None => post("MPI_Ibarrier", |r| unsafe { ffi::MPI_Ibarrier(comm.0, r) })?,
        };
        let stage = Stage::Posted(vec![request], Box::new(|| Ok(Stage::Done((Format::Serde, Vec::new())))));
        MpiCollective::in_mpi(comm, Ok(stage), |_| Ok(()))
    }

    pub(crate) fn immediate_broadcast<'c, T: Serialize + DeserializeOwned>(
        &'c self,
        value: &'c mut T,
        root: usize,
    ) -> Result<MpiCollective<'c, ()>> {
        let is_root = self.rank == root;
        let mine = is_root.then(|| message::encode(&*value));
        let stages = self
            .peers()
            .broadcast_checked("immediate_broadcast", self.immediate_tag(), mine, root);
        MpiCollective::new(self.private, stages, move |body| {
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
        let stages = self.peers().broadcast_checked(what, self.immediate_tag(), mine, root);
        MpiCollective::new(self.private, stages, move |body| {
            if !is_root {
                numbers::copy_body(what, root, &body, buf)?;
            }
            Ok(())
        })
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
            let read = |body: Body| Ok(unsafe { std::ptr::read_unaligned(body.1.as_ptr().cast::<T>()) });
            return MpiCollective::in_mpi(self.comm, allreduce_stages(self.comm, send, how), read);
        }
        let what = "immediate_allreduce";
        let fold = move |bodies: Vec<Body>| {
            let folded = typed::fold(typed::decode_all::<T>(bodies)?, &op);
            message::encode(&folded.expect("a communicator has at least one rank"))
        };
        let stages = self
            .peers()
            .fold_stages(what, self.immediate_tag(), message::encode(value), fold);
        MpiCollective::new(self.private, stages, |body| typed::decode(0, body))
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
            let write = move |body: Body| {
                if std::mem::size_of_val(recv) != body.1.len() {
                    return Err(Error::InvalidArgument(format!(
                        "{what}: send holds {} elements but recv {}",
                        body.1.len() / std::mem::size_of::<E>().max(1),
                        recv.len()
                    )));
                }
                bytemuck::cast_slice_mut::<E, u8>(recv).copy_from_slice(&body.1);
                Ok(())
            };
            let stages = allreduce_stages(self.comm, message::pod_copy(send), how);
            return MpiCollective::in_mpi(self.comm, stages, write);
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
        let stages = self
            .peers()
            .fold_stages(what, self.immediate_tag(), Ok(numbers::body(send)), fold);
        MpiCollective::new(self.private, stages, move |body| {
            numbers::copy_body(what, 0, &body, recv)
        })
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
