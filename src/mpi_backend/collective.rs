//! Collectives on the MPI backend, on MPI's own: the library's tuned
//! algorithms. Serde values travel as messages with a 16-byte header each
//! (format and length), exchanged first; plain numbers with a built-in
//! operator reduce in MPI; any other operator folds in rank order on one
//! rank, which gives the result to the others (the same bits everywhere).

use std::os::raw::{c_int, c_void};

use mpi::ffi;

use super::comm::{MpiComm, PendingBarrier};
use super::failure::{failed, heard, or_failed};
use super::{check, check_open, datatype};
use crate::envelope::Format;
use crate::error::{Error, Result};
use crate::op::Builtin;

/// A serde value or raw numbers, encoded.
pub(crate) type Body = (Format, Vec<u8>);

/// The header of one body in a collective: its format and length.
pub(super) type Header = [u64; 2];

pub(super) fn header_of(body: &Body) -> Header {
    [u64::from(body.0.element()), body.1.len() as u64]
}

pub(super) fn format_of(h: &Header) -> Format {
    match h[0] as u16 {
        0 => Format::Serde,
        e => Format::Raw(e),
    }
}

/// An MPI count, or an error naming what is too large.
fn count(bytes: usize, what: &str) -> Result<c_int> {
    c_int::try_from(bytes).map_err(|_| {
        Error::InvalidArgument(format!(
            "{what}: {bytes} bytes in one collective call; the MPI backend carries at most 2 GiB - 1 per call"
        ))
    })
}

/// Counts and displacements of `lens` bytes laid end to end.
pub(super) fn layout(lens: &[usize], what: &str) -> Result<(Vec<c_int>, Vec<c_int>)> {
    let counts = lens.iter().map(|&l| count(l, what)).collect::<Result<Vec<_>>>()?;
    let mut displs = Vec::with_capacity(lens.len());
    let mut at = 0usize;
    for &l in lens {
        displs.push(count(at, what)?);
        at += l;
    }
    count(at, what)?;
    Ok((counts, displs))
}

fn ptr(bytes: &[u8]) -> *const c_void {
    datatype::address(bytes)
}

fn ptr_mut(bytes: &mut [u8]) -> *mut c_void {
    datatype::address_mut(bytes)
}

/// Cuts `all` into pieces of `lens` bytes.
pub(super) fn cut(all: &[u8], lens: &[usize], formats: impl Iterator<Item = Format>) -> Vec<Body> {
    let mut at = 0;
    lens.iter()
        .zip(formats)
        .map(|(&l, f)| {
            let piece = all[at..at + l].to_vec();
            at += l;
            (f, piece)
        })
        .collect()
}

impl MpiComm {
    /// `MPI_Barrier`, or the end of the barrier a `barrier_timeout` left
    /// posted.
    pub(crate) fn barrier(&self) -> Result<()> {
        check_open()?;
        if let Some(PendingBarrier(mut request)) = self.pending_barrier.take() {
            // SAFETY: the barrier's active request.
            return check(
                unsafe { ffi::MPI_Wait(&mut request, ffi::RSMPI_STATUS_IGNORE) },
                "MPI_Wait",
            );
        }
        // SAFETY: a valid communicator; every member calls it.
        check(unsafe { ffi::MPI_Barrier(self.comm.0) }, "MPI_Barrier")
    }

    /// `MPI_Ibarrier`, waited for until `timeout` has passed. A barrier
    /// that times out stays posted, since MPI cannot cancel a collective:
    /// the next `barrier` or `barrier_timeout` here waits for it again.
    pub(crate) fn barrier_timeout(&self, timeout: std::time::Duration) -> Result<()> {
        check_open()?;
        let mut request = match self.pending_barrier.take() {
            Some(PendingBarrier(request)) => request,
            None => {
                let mut request = unsafe { ffi::RSMPI_REQUEST_NULL };
                // SAFETY: a valid communicator; every member calls a barrier.
                check(unsafe { ffi::MPI_Ibarrier(self.comm.0, &mut request) }, "MPI_Ibarrier")?;
                request
            }
        };
        let deadline = std::time::Instant::now().checked_add(timeout);
        let mut pause = std::time::Duration::from_micros(1);
        loop {
            let mut done: c_int = 0;
            // SAFETY: the barrier's active request.
            check(
                unsafe { ffi::MPI_Test(&mut request, &mut done, ffi::RSMPI_STATUS_IGNORE) },
                "MPI_Test",
            )?;
            if done != 0 {
                return Ok(());
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                self.pending_barrier.set(Some(PendingBarrier(request)));
                return Err(Error::Timeout {
                    what: "the other ranks in a barrier".into(),
                    seconds: timeout.as_secs_f64(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(1));
        }
    }

    /// The root's `buf` into every rank's `buf` (`MPI_Bcast`, in pieces of
    /// at most 1 GiB).
    pub(crate) fn broadcast_bytes(&self, buf: &mut [u8], root: usize) -> Result<()> {
        check_open()?;
        for piece in buf.chunks_mut(1 << 30) {
            // SAFETY: `piece` is valid for its length; every member calls it.
            check(
                unsafe {
                    ffi::MPI_Bcast(
                        ptr_mut(piece),
                        piece.len() as c_int,
                        datatype::bytes(),
                        root as c_int,
                        self.comm.0,
                    )
                },
                "MPI_Bcast",
            )?;
        }
        Ok(())
    }

    /// Words into every rank (`MPI_Bcast`).
    pub(super) fn broadcast_words(&self, words: &mut [u64], root: usize) -> Result<()> {
        self.broadcast_bytes(bytemuck::cast_slice_mut(words), root)
    }

    /// The root's body on every rank.
    pub(crate) fn broadcast_body(&self, mine: Option<Body>, root: usize) -> Result<Body> {
        let mut head: Header = mine.as_ref().map_or([0; 2], header_of);
        self.broadcast_words(&mut head, root)?;
        match mine {
            Some(body) if self.rank == root => {
                let mut bytes = body.1;
                self.broadcast_bytes(&mut bytes, root)?;
                Ok((body.0, bytes))
            }
            _ => {
                let mut bytes = vec![0u8; head[1] as usize];
                self.broadcast_bytes(&mut bytes, root)?;
                Ok((format_of(&head), bytes))
            }
        }
    }

    /// Every rank's words on every rank, in rank order (`MPI_Allgather`).
    pub(super) fn allgather_words<W: bytemuck::Pod>(&self, mine: &[W], all: &mut [W]) -> Result<()> {
        let n = count(std::mem::size_of_val(mine), "allgather")?;
        // SAFETY: `all` holds `size` times `mine`; every member calls it.
        check(
            unsafe {
                ffi::MPI_Allgather(
                    ptr(bytemuck::cast_slice(mine)),
                    n,
                    datatype::bytes(),
                    ptr_mut(bytemuck::cast_slice_mut(all)),
                    n,
                    datatype::bytes(),
                    self.comm.0,
                )
            },
            "MPI_Allgather",
        )
    }

    /// The largest of every rank's words, word by word (`MPI_Allreduce`).
    pub(super) fn allreduce_max(&self, mine: &[u64], out: &mut [u64]) -> Result<()> {
        // SAFETY: both hold `mine.len()` words.
        check(
            unsafe {
                ffi::MPI_Allreduce(
                    datatype::address(mine),
                    datatype::address_mut(out),
                    mine.len() as c_int,
                    ffi::RSMPI_UINT64_T,
                    ffi::RSMPI_MAX,
                    self.comm.0,
                )
            },
            "MPI_Allreduce",
        )
    }

    /// Every rank's body on the root, in rank order (`MPI_Gatherv`).
    pub(crate) fn gather_bodies(&self, mine: Body, root: usize) -> Result<Option<Vec<Body>>> {
        check_open()?;
        // A part past MPI's count goes as its failure; the root hears.
        let (mine, own) = or_failed(count(mine.1.len(), "gather").map(|_| mine));
        let head = header_of(&mine);
        let is_root = self.rank == root;
        let mut heads = vec![[0u64; 2]; if is_root { self.size } else { 0 }];
        let n = mine.1.len() as c_int;
        // SAFETY: the headers buffer holds `size` headers on the root.
        check(
            unsafe {
                ffi::MPI_Gather(
                    ptr(bytemuck::cast_slice(&head)),
                    16,
                    datatype::bytes(),
                    ptr_mut(bytemuck::cast_slice_mut(&mut heads)),
                    16,
                    datatype::bytes(),
                    root as c_int,
                    self.comm.0,
                )
            },
            "MPI_Gather",
        )?;
        let lens: Vec<usize> = heads.iter().map(|h| h[1] as usize).collect();
        let (counts, displs) = if is_root {
            // The others are sending their parts already: a root that
            // cannot take them all ends the job, saying why.
            layout(&lens, "gather").unwrap_or_else(|e| super::abort_job(1, &e.to_string()))
        } else {
            (Vec::new(), Vec::new())
        };
        let mut all = vec![0u8; lens.iter().sum()];
        // SAFETY: on the root `all` holds every rank's count at its
        // displacement; elsewhere only the send side is read.
        check(
            unsafe {
                ffi::MPI_Gatherv(
                    ptr(&mine.1),
                    n,
                    datatype::bytes(),
                    ptr_mut(&mut all),
                    counts.as_ptr(),
                    displs.as_ptr(),
                    datatype::bytes(),
                    root as c_int,
                    self.comm.0,
                )
            },
            "MPI_Gatherv",
        )?;
        own.map_or(Ok(()), Err)?;
        Ok(is_root.then(|| cut(&all, &lens, heads.iter().map(format_of))))
    }

    /// Every rank's body on every rank, in rank order (`MPI_Allgatherv`).
    pub(crate) fn allgather_bodies(&self, mine: Body) -> Result<Vec<Body>> {
        check_open()?;
        let head = header_of(&mine);
        let mut heads = vec![[0u64; 2]; self.size];
        self.allgather_words(&head, bytemuck::cast_slice_mut::<[u64; 2], u64>(&mut heads))?;
        let lens: Vec<usize> = heads.iter().map(|h| h[1] as usize).collect();
        let (counts, displs) = layout(&lens, "allgather")?;
        let mut all = vec![0u8; lens.iter().sum()];
        // SAFETY: `all` holds every rank's count at its displacement.
        check(
            unsafe {
                ffi::MPI_Allgatherv(
                    ptr(&mine.1),
                    counts[self.rank],
                    datatype::bytes(),
                    ptr_mut(&mut all),
                    counts.as_ptr(),
                    displs.as_ptr(),
                    datatype::bytes(),
                    self.comm.0,
                )
            },
            "MPI_Allgatherv",
        )?;
        Ok(cut(&all, &lens, heads.iter().map(format_of)))
    }

    /// The root's `bodies[i]` to rank `i` (`MPI_Scatterv`).
    pub(crate) fn scatter_bodies(&self, bodies: Option<Vec<Body>>, root: usize) -> Result<Body> {
        check_open()?;
        let is_root = self.rank == root;
        let bodies = bodies.filter(|_| is_root).unwrap_or_default();
        if is_root && bodies.len() != self.size {
            // The others are already waiting: tell them, then fail.
            let e = Error::InvalidArgument(format!(
                "scatter: the root passed {} values for {} ranks",
                bodies.len(),
                self.size
            ));
            self.scatter_bodies_checked(&vec![failed(&e); self.size], root)?;
            return Err(e);
        }
        let lens: Vec<usize> = bodies.iter().map(|b| b.1.len()).collect();
        if let (true, Err(e)) = (is_root, layout(&lens, "scatter")) {
            self.scatter_bodies_checked(&vec![failed(&e); self.size], root)?;
            return Err(e);
        }
        let mine = self.scatter_bodies_checked(&bodies, root)?;
        heard("scatter", self.rank, [(root, &mine)])?;
        Ok(mine)
    }

    fn scatter_bodies_checked(&self, bodies: &[Body], root: usize) -> Result<Body> {
        let heads: Vec<Header> = bodies.iter().map(header_of).collect();
        let mut head: Header = [0; 2];
        // SAFETY: the root's headers hold `size` headers.
        check(
            unsafe {
                ffi::MPI_Scatter(
                    ptr(bytemuck::cast_slice(&heads)),
                    16,
                    datatype::bytes(),
                    ptr_mut(bytemuck::cast_slice_mut(&mut head)),
                    16,
                    datatype::bytes(),
                    root as c_int,
                    self.comm.0,
                )
            },
            "MPI_Scatter",
        )?;
        let lens: Vec<usize> = bodies.iter().map(|b| b.1.len()).collect();
        let (counts, displs) = layout(&lens, "scatter")?;
        let all: Vec<u8> = bodies.iter().flat_map(|b| b.1.iter().copied()).collect();
        let mut mine = vec![0u8; head[1] as usize];
        let n = count(mine.len(), "scatter")?;
        // SAFETY: on the root `all` holds every count at its displacement.
        check(
            unsafe {
                ffi::MPI_Scatterv(
                    ptr(&all),
                    counts.as_ptr(),
                    displs.as_ptr(),
                    datatype::bytes(),
                    ptr_mut(&mut mine),
                    n,
                    datatype::bytes(),
                    root as c_int,
                    self.comm.0,
                )
            },
            "MPI_Scatterv",
        )?;
        Ok((format_of(&head), mine))
    }

    /// `bodies[i]` to rank `i`, and one body from every rank back
    /// (`MPI_Alltoallv`).
    pub(crate) fn alltoall_bodies(&self, bodies: Vec<Body>) -> Result<Vec<Body>> {
        check_open()?;
        if bodies.len() != self.size {
            // The others exchange with this rank all the same: tell them.
            let e = Error::InvalidArgument(format!("alltoall: {} values for {} ranks", bodies.len(), self.size));
            self.alltoall_bodies(vec![failed(&e); self.size])?;
            return Err(e);
        }
        let out_lens: Vec<usize> = bodies.iter().map(|b| b.1.len()).collect();
        if let Err(e) = layout(&out_lens, "alltoall") {
            // Too much to send in one call: the others hear, then fail.
            self.alltoall_bodies(vec![failed(&e); self.size])?;
            return Err(e);
        }
        let heads: Vec<Header> = bodies.iter().map(header_of).collect();
        let mut theirs = vec![[0u64; 2]; self.size];
        // SAFETY: both hold `size` headers.
        check(
            unsafe {
                ffi::MPI_Alltoall(
                    ptr(bytemuck::cast_slice(&heads)),
                    16,
                    datatype::bytes(),
                    ptr_mut(bytemuck::cast_slice_mut(&mut theirs)),
                    16,
                    datatype::bytes(),
                    self.comm.0,
                )
            },
            "MPI_Alltoall",
        )?;
        let in_lens: Vec<usize> = theirs.iter().map(|h| h[1] as usize).collect();
        let (send_counts, send_displs) = layout(&out_lens, "alltoall")?;
        // The others send already: a rank that cannot take it all ends
        // the job, saying why.
        let (recv_counts, recv_displs) =
            layout(&in_lens, "alltoall").unwrap_or_else(|e| super::abort_job(1, &e.to_string()));
        let out: Vec<u8> = bodies.iter().flat_map(|b| b.1.iter().copied()).collect();
        let mut all = vec![0u8; in_lens.iter().sum()];
        // SAFETY: both sides hold their counts at their displacements.
        check(
            unsafe {
                ffi::MPI_Alltoallv(
                    ptr(&out),
                    send_counts.as_ptr(),
                    send_displs.as_ptr(),
                    datatype::bytes(),
                    ptr_mut(&mut all),
                    recv_counts.as_ptr(),
                    recv_displs.as_ptr(),
                    datatype::bytes(),
                    self.comm.0,
                )
            },
            "MPI_Alltoallv",
        )?;
        Ok(cut(&all, &in_lens, theirs.iter().map(format_of)))
    }

    /// Which kind of reduction to run in MPI.
    pub(crate) fn reduce_numbers(&self, reduction: Reduction, numbers: Numbers<'_>) -> Result<bool> {
        check_open()?;
        let Some(datatype) = datatype::of_element(numbers.element) else {
            return Ok(false);
        };
        let Some(op) = datatype::operator(numbers.op, numbers.element) else {
            return Ok(false);
        };
        let Ok(n) = c_int::try_from(numbers.count) else {
            return Ok(false);
        };
        let send = numbers.send.cast::<c_void>();
        let recv = numbers.recv.cast::<c_void>();
        let comm = self.comm.0;
        // SAFETY: `send` holds `count` elements, `recv` (where it is read)
        // as many; every member calls the same reduction.
        let code = unsafe {
            match reduction {
                Reduction::Reduce(root) => ffi::MPI_Reduce(send, recv, n, datatype, op, root as c_int, comm),
                Reduction::Allreduce => ffi::MPI_Allreduce(send, recv, n, datatype, op, comm),
                Reduction::Scan => ffi::MPI_Scan(send, recv, n, datatype, op, comm),
                Reduction::Exscan => ffi::MPI_Exscan(send, recv, n, datatype, op, comm),
            }
        };
        check(code, "an MPI reduction")?;
        Ok(true)
    }
}

/// A reduction MPI can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reduction {
    Reduce(usize),
    Allreduce,
    Scan,
    Exscan,
}

impl Reduction {
    /// Whether rank `rank` gets a result: the root of a reduce, every rank
    /// but the first of an exclusive scan, every rank otherwise.
    pub(crate) fn gives_result(self, rank: usize) -> bool {
        match self {
            Reduction::Reduce(root) => rank == root,
            Reduction::Exscan => rank > 0,
            Reduction::Allreduce | Reduction::Scan => true,
        }
    }
}

/// Plain numbers to reduce: `count` elements of code `element` at `send`,
/// the result at `recv`, combined with `op`.
#[derive(Debug)]
pub(crate) struct Numbers<'a> {
    pub send: *const u8,
    pub recv: *mut u8,
    pub count: usize,
    pub element: u16,
    pub op: Builtin,
    pub _buffers: std::marker::PhantomData<&'a mut [u8]>,
}
