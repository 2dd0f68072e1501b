//! Point-to-point messages on the MPI backend. Each message starts with a
//! header (`header.rs`) naming its format (serde or raw, and the element
//! type), so that a receive of the wrong kind is an error as on the native
//! backend, and its place among the sender's messages to this rank. A
//! small message is one MPI message, header and payload; a large one is
//! its header, then its body on the private communicator, straight from
//! and into the caller's memory, in pieces of at most 1 GiB (MPI counts
//! are `int`).

use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_void};
use std::time::{Duration, Instant};

use mpi::ffi;

use super::comm::MpiComm;
use super::frames;
use super::header::{self, Header};
use super::held::Held;
use super::{check, check_open, datatype};
use crate::envelope::{Envelope, Format, Room};
use crate::error::{Error, Result};
use crate::selector::{Match, Status};
use crate::wire::Context;

/// The largest payload that travels with its header; larger ones send a
/// body after it. A frame (header and payload) stays below the eager
/// limits of both MPIs over shared memory and TCP (Open MPI's shared
/// memory: 4 KiB, its own headers included), so that MPI sends it without
/// waiting for its receiver: with 4 KiB here, a send of 4,040 bytes waited
/// for before a receive hung under mpirun.openmpi.
pub(super) const INLINE_LIMIT: usize = 3840;

/// The largest payload a blocking send hands to `MPI_Send` from the
/// stack: well below the eager limits of Open MPI and MPICH, so that it
/// never waits for the receiver.
const EAGER_LIMIT: usize = 1024;

/// The largest piece of a body in one MPI call.
pub(super) const PIECE: usize = 1 << 30;

/// The largest frame: a header and an inline payload.
pub(super) const FRAME: usize = header::INLINE + INLINE_LIMIT;

/// How long a receive may wait.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    Forever,
    Until(Instant),
    Never,
}

impl Wait {
    pub(crate) fn after(timeout: Option<Duration>) -> Wait {
        // A timeout too long to add to the clock never ends.
        match timeout.and_then(|t| Instant::now().checked_add(t)) {
            None => Wait::Forever,
            Some(deadline) => Wait::Until(deadline),
        }
    }
}

fn source_and_tag(status: &ffi::MPI_Status) -> (usize, u32) {
    (status.MPI_SOURCE as usize, status.MPI_TAG as u32)
}

fn received_bytes(status: &ffi::MPI_Status) -> usize {
    let mut count: c_int = 0;
    // SAFETY: a status MPI filled in for a receive of bytes.
    unsafe { ffi::MPI_Get_count(status, datatype::bytes(), &mut count) };
    count.max(0) as usize
}

pub(super) fn mpi_source(pattern: &Match) -> c_int {
    pattern
        .source_rank()
        .map_or(unsafe { ffi::RSMPI_ANY_SOURCE }, |s| s as c_int)
}

pub(super) fn mpi_tag(pattern: &Match) -> c_int {
    pattern
        .tag_value()
        .map_or(unsafe { ffi::RSMPI_ANY_TAG }, |t| t as c_int)
}

/// Polls `request` until it completes or `deadline` passes (then cancels
/// it); true if it completed.
fn wait_until(request: &mut ffi::MPI_Request, status: &mut ffi::MPI_Status, deadline: Instant) -> Result<bool> {
    let mut pause = Duration::from_micros(1);
    loop {
        let mut done: c_int = 0;
        // SAFETY: an active request of this thread.
        check(unsafe { ffi::MPI_Test(request, &mut done, status) }, "MPI_Test")?;
        if done != 0 {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        // Short waits answer quickly; long ones do not spin.
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(1));
    }
    // SAFETY: cancel and complete the request, as MPI requires.
    unsafe {
        ffi::MPI_Cancel(request);
        check(ffi::MPI_Wait(request, status), "MPI_Wait")?;
    }
    let mut cancelled: c_int = 0;
    // SAFETY: the status of the completed request.
    unsafe { ffi::MPI_Test_cancelled(status, &mut cancelled) };
    Ok(cancelled == 0)
}

impl MpiComm {
    /// Sends `bytes` in `format` to rank `dest` with `tag`; returns once
    /// the message has left the caller's memory. A small message goes out
    /// at once (MPI sends it eagerly); a larger one from a buffer of its
    /// own that MPI sends on its own time, so that this never waits for the
    /// receiver to get to its receive (as on the native backend, and
    /// unlike MPI's standard-mode send).
    pub(crate) fn send(&self, dest: usize, tag: u32, format: Format, bytes: &[u8]) -> Result<()> {
        check_open()?;
        if self.eager(dest, bytes.len()) {
            return self.send_eager(dest, tag, format, bytes);
        }
        // Dropping a send that is not done leaves it to finish later.
        drop(self.isend(dest, tag, format, bytes)?);
        Ok(())
    }

    /// True if a message of `len` bytes to `dest` goes out at once by
    /// `send_eager`. (MPICH's MPI_Send to oneself waits for the receive:
    /// never eager.)
    fn eager(&self, dest: usize, len: usize) -> bool {
        len <= EAGER_LIMIT && dest != self.rank
    }

    /// `MPI_Send` of a small message (`eager`), header and payload in one
    /// frame on the stack: MPI copies it out before it returns.
    fn send_eager(&self, dest: usize, tag: u32, format: Format, bytes: &[u8]) -> Result<()> {
        check_open()?;
        // The frame below holds no more.
        assert!(bytes.len() <= EAGER_LIMIT, "an eager send of {} bytes", bytes.len());
        // Not zeroed: only the bytes written here are sent.
        let mut frame = MaybeUninit::<[u8; header::INLINE + EAGER_LIMIT]>::uninit();
        let at = frame.as_mut_ptr().cast::<u8>();
        let head = header::inline(format, self.stamp(dest));
        // SAFETY: the frame has room for the header and up to
        // EAGER_LIMIT bytes after it.
        unsafe {
            std::ptr::copy_nonoverlapping(head.as_ptr(), at, header::INLINE);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), at.add(header::INLINE), bytes.len());
        }
        let len = (header::INLINE + bytes.len()) as c_int;
        // SAFETY: `frame` holds `len` bytes, all written; a valid
        // communicator.
        let code = unsafe {
            ffi::MPI_Send(
                at.cast::<c_void>(),
                len,
                datatype::bytes(),
                dest as c_int,
                tag as c_int,
                self.comm.0,
            )
        };
        check(code, "MPI_Send")
    }

    /// [`MpiComm::send`] of a payload the caller gives away (no copy).
    pub(crate) fn send_owned(&self, dest: usize, tag: u32, format: Format, payload: Vec<u8>) -> Result<()> {
        if self.eager(dest, payload.len()) {
            return self.send_eager(dest, tag, format, &payload);
        }
        drop(self.isend_owned(dest, tag, format, payload)?);
        Ok(())
    }

    /// Sends to `dest` and receives what `pattern` accepts at once, so that
    /// two ranks that exchange never wait for each other.
    pub(crate) fn sendrecv(
        &self,
        dest: usize,
        tag: u32,
        format: Format,
        bytes: &[u8],
        pattern: Match,
        room: Option<Room>,
    ) -> Result<Envelope> {
        check_open()?;
        let (dest, tag) = (dest as c_int, tag as c_int);
        let body_tag = (bytes.len() > INLINE_LIMIT).then(|| self.body_tag());
        let mut frame = frames::take();
        header::write_frame(
            &mut frame,
            format,
            body_tag,
            bytes.len(),
            self.stamp(dest as usize),
            bytes,
        );
        let mut requests = vec![unsafe { ffi::RSMPI_REQUEST_NULL }; 1];
        // SAFETY: `frame` and `bytes` outlive the requests, which are all
        // completed below before this returns (also on an error).
        unsafe {
            check(
                ffi::MPI_Isend(
                    frame.as_ptr().cast::<c_void>(),
                    frame.len() as c_int,
                    datatype::bytes(),
                    dest,
                    tag,
                    self.comm.0,
                    &mut requests[0],
                ),
                "MPI_Isend",
            )?;
            if let Some(body_tag) = body_tag {
                for piece in bytes.chunks(PIECE) {
                    let mut request = ffi::RSMPI_REQUEST_NULL;
                    let code = ffi::MPI_Isend(
                        piece.as_ptr().cast::<c_void>(),
                        piece.len() as c_int,
                        datatype::bytes(),
                        dest,
                        body_tag as c_int,
                        self.private.0,
                        &mut request,
                    );
                    requests.push(request);
                    if let Err(e) = check(code, "MPI_Isend") {
                        ffi::MPI_Waitall(
                            requests.len() as c_int,
                            requests.as_mut_ptr(),
                            ffi::RSMPI_STATUSES_IGNORE,
                        );
                        return Err(e);
                    }
                }
            }
        }
        let received = self.receive(pattern, room, Wait::Forever);
        // SAFETY: the requests started above.
        let sent = check(
            unsafe {
                ffi::MPI_Waitall(
                    requests.len() as c_int,
                    requests.as_mut_ptr(),
                    ffi::RSMPI_STATUSES_IGNORE,
                )
            },
            "MPI_Waitall",
        );
        if sent.is_ok() {
            frames::give(frame);
        } else {
            // MPI may still read it: never reused nor freed.
            std::mem::forget(frame);
        }
        let env = received?.expect("a receive without a deadline returns a message");
        sent.map(|()| env)
    }

    /// Receives the next message `pattern` accepts; a raw message of the
    /// room's type lands in it. `None` if `wait` ended first.
    pub(crate) fn receive(&self, pattern: Match, room: Option<Room>, wait: Wait) -> Result<Option<Envelope>> {
        check_open()?;
        let held = match self.take_held(&pattern)? {
            Some(held) => held,
            None => match self.arrive(&pattern, wait, room)? {
                Some(held) => held,
                None => return Ok(None),
            },
        };
        self.complete(held, room).map(Some)
    }

    /// The status of the next message `pattern` accepts, which stays to be
    /// received; `None` if `wait` ended first.
    pub(crate) fn probe(&self, pattern: Match, wait: Wait) -> Result<Option<Status>> {
        check_open()?;
        if let Some(at) = self.oldest_held(&pattern)? {
            return Ok(Some(self.held.borrow()[at].status()));
        }
        let Some(held) = self.arrive(&pattern, wait, None)? else {
            return Ok(None);
        };
        let status = held.status();
        self.held.borrow_mut().push_back(held);
        Ok(Some(status))
    }

    /// True if only this rank could send what `pattern` accepts: it names
    /// this rank, or any rank while this rank is alone.
    pub(crate) fn only_this_rank_sends(&self, pattern: &Match) -> bool {
        pattern.source_rank().map_or(self.size == 1, |s| s == self.rank)
    }

    /// Takes the next message `pattern` accepts out of MPI: its header,
    /// and its payload if it came along (straight into the room, if it
    /// may land there).
    pub(super) fn arrive(&self, pattern: &Match, wait: Wait, room: Option<Room>) -> Result<Option<Held>> {
        // Only this rank could send what it waits for: it is there already,
        // or a wait with no end would never end (a timed one waits: another
        // thread of this rank may send it meanwhile).
        if self.only_this_rank_sends(pattern) && matches!(wait, Wait::Forever) {
            return self
                .arrive(pattern, Wait::Never, room)?
                .map(Some)
                .ok_or_else(crate::completion::never_sent);
        }
        // Not zeroed: MPI writes the bytes that are read (a 4 KiB memset
        // per message was a tenth of an 8-byte ping-pong).
        let mut frame = MaybeUninit::<[u8; FRAME]>::uninit();
        let buf = frame.as_mut_ptr().cast::<c_void>();
        let cap = FRAME as c_int;
        let (source, tag) = (mpi_source(pattern), mpi_tag(pattern));
        let mut status = MaybeUninit::<ffi::MPI_Status>::zeroed();
        // SAFETY: `frame` holds `cap` bytes; a valid communicator; every
        // request is completed before `frame` goes.
        unsafe {
            match wait {
                Wait::Forever => check(
                    ffi::MPI_Recv(
                        buf,
                        cap,
                        datatype::bytes(),
                        source,
                        tag,
                        self.comm.0,
                        status.as_mut_ptr(),
                    ),
                    "MPI_Recv",
                )?,
                Wait::Never => {
                    let mut found: c_int = 0;
                    let mut message = ffi::RSMPI_MESSAGE_NULL;
                    check(
                        ffi::MPI_Improbe(source, tag, self.comm.0, &mut found, &mut message, status.as_mut_ptr()),
                        "MPI_Improbe",
                    )?;
                    if found == 0 {
                        return Ok(None);
                    }
                    check(
                        ffi::MPI_Mrecv(buf, cap, datatype::bytes(), &mut message, status.as_mut_ptr()),
                        "MPI_Mrecv",
                    )?;
                }
                Wait::Until(deadline) => {
                    let mut request = ffi::RSMPI_REQUEST_NULL;
                    check(
                        ffi::MPI_Irecv(buf, cap, datatype::bytes(), source, tag, self.comm.0, &mut request),
                        "MPI_Irecv",
                    )?;
                    if !wait_until(&mut request, &mut *status.as_mut_ptr(), deadline)? {
                        return Ok(None);
                    }
                }
            }
        }
        // SAFETY: MPI filled the status in, and the first bytes of the
        // frame, as many as the status says (at most the frame's size).
        let status = unsafe { status.assume_init_ref() };
        let count = received_bytes(status).min(FRAME);
        let received = unsafe { std::slice::from_raw_parts(frame.as_ptr().cast::<u8>(), count) };
        let (source, tag) = source_and_tag(status);
        self.parse(received, source, tag, room).map(Some)
    }

    /// The message whose frame MPI received into `frame`'s capacity, as
    /// `status` describes; a payload that may land in `room` is copied
    /// there.
    pub(super) fn arrived(&self, frame: &mut Vec<u8>, status: &ffi::MPI_Status, room: Option<Room>) -> Result<Held> {
        let (source, tag) = source_and_tag(status);
        // MPI may write at most FRAME bytes (see `post_irecv`).
        let count = received_bytes(status).min(FRAME).min(frame.capacity());
        // SAFETY: MPI wrote the first `count` bytes of the capacity.
        unsafe { frame.set_len(count) };
        self.parse(frame, source, tag, room)
    }

    /// Reads a header (and payload) that arrived from `source`; a payload
    /// that may land in `room` is copied there, not into a new buffer.
    fn parse(&self, frame: &[u8], source: usize, tag: u32, room: Option<Room>) -> Result<Held> {
        let bad = |field: &'static str, detail: String| Error::Protocol {
            peer: format!("rank {source}"),
            field,
            detail,
        };
        let read = header::read(frame, INLINE_LIMIT);
        // Out of MPI, even if what follows its place is wrong.
        let pulled = match &read {
            Ok((head, _)) => Some(head.seq),
            Err(_) => header::seq_of(frame),
        };
        if let Some(seq) = pulled {
            self.pulled(source, seq);
        }
        let (Header { format, seq, body }, payload) = read.map_err(|(field, detail)| bad(field, detail))?;
        if body.is_some() {
            let env = Envelope::new(source, tag, Context::WORLD, format, Vec::new());
            return Ok(Held::new(env, body, seq));
        }
        let len = payload.len() as u64;
        if let Some((at, fresh)) = room.and_then(|room| room.landing(format, len)) {
            // SAFETY: the room has at least `len` bytes at `at`.
            unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), at, payload.len()) };
            let mut env = Envelope::new(source, tag, Context::WORLD, format, Vec::new());
            env.landed = Some(len);
            env.fresh = fresh;
            return Ok(Held::new(env, None, seq));
        }
        let env = Envelope::new(source, tag, Context::WORLD, format, crate::pool::copy_of(payload));
        Ok(Held::new(env, None, seq))
    }

    /// A held message made whole: its body received, into the room if it
    /// may land there.
    pub(super) fn complete(&self, held: Held, room: Option<Room>) -> Result<Envelope> {
        let Held { mut env, body } = held;
        let Some((len, body_tag)) = body else {
            return Ok(env);
        };
        let source = env.source;
        let landing = room.and_then(|room| room.landing(env.format, len));
        match landing {
            Some((ptr, fresh)) => {
                // SAFETY: the room has at least `len` bytes at `ptr` (a
                // fresh room's bytes are uninitialized; only MPI writes them).
                let bytes = unsafe { std::slice::from_raw_parts_mut(ptr.cast::<MaybeUninit<u8>>(), len as usize) };
                self.receive_body(bytes, source, body_tag)?;
                env.landed = Some(len);
                env.fresh = fresh;
            }
            None => {
                let len = usize::try_from(len).map_err(|_| Error::Protocol {
                    peer: format!("rank {source}"),
                    field: "length",
                    detail: format!("{len} bytes do not fit this machine's memory"),
                })?;
                let mut payload = Vec::new();
                payload.try_reserve_exact(len).map_err(|_| Error::Io {
                    context: format!("a buffer for {len} bytes from rank {source}"),
                    source: std::io::Error::from(std::io::ErrorKind::OutOfMemory),
                })?;
                let spare = &mut payload.spare_capacity_mut()[..len];
                self.receive_body(spare, source, body_tag)?;
                // SAFETY: the receive wrote every one of the `len` bytes.
                unsafe { payload.set_len(len) };
                env.payload = payload;
            }
        }
        Ok(env)
    }

    /// Receives a body of exactly `into.len()` bytes from `source`, piece
    /// by piece, into memory that may never have been written.
    pub(super) fn receive_body(&self, into: &mut [MaybeUninit<u8>], source: usize, body_tag: u32) -> Result<()> {
        for piece in into.chunks_mut(PIECE) {
            let mut status = MaybeUninit::<ffi::MPI_Status>::zeroed();
            // SAFETY: `piece` is writable memory of its length.
            unsafe {
                check(
                    ffi::MPI_Recv(
                        piece.as_mut_ptr().cast::<c_void>(),
                        piece.len() as c_int,
                        datatype::bytes(),
                        source as c_int,
                        body_tag as c_int,
                        self.private.0,
                        status.as_mut_ptr(),
                    ),
                    "MPI_Recv",
                )?;
            }
            // SAFETY: filled in by MPI_Recv.
            let got = received_bytes(unsafe { status.assume_init_ref() });
            if got != piece.len() {
                return Err(Error::Protocol {
                    peer: format!("rank {source}"),
                    field: "body",
                    detail: format!("a piece of {got} bytes where {} were due", piece.len()),
                });
            }
        }
        Ok(())
    }
}
