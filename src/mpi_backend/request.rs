//! Non-blocking sends and receives on the MPI backend, on MPI requests.
//! A send owns its frame (and a copy of the payload, unless a scope lends
//! it); a receive posts `MPI_Irecv` of a frame and, once the header is in,
//! receives a large message's body into its room.

use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_void};
use std::sync::Mutex;

use mpi::ffi;

use super::comm::MpiComm;
use super::held::Held;
use super::point_to_point::{FRAME, INLINE_LIMIT, PIECE};
use super::{check, check_open, datatype};
use super::{frames, header};
use crate::envelope::{Envelope, Format, Room};
use crate::error::{Error, Result};
use crate::selector::Match;

/// A send's MPI requests (its frame's, and a large body's pieces'), with
/// the memory they read from until they complete.
#[derive(Debug)]
struct Requests {
    head: ffi::MPI_Request,
    body: Vec<ffi::MPI_Request>,
    frame: Vec<u8>,
    _payload: Vec<u8>,
}

// SAFETY: MPI requests may complete on any thread under
// MPI_THREAD_MULTIPLE; the buffers are owned.
unsafe impl Send for Requests {}

/// Sends whose requests were dropped before they completed: they keep
/// their buffers here until MPI is done with them.
static ORPHANS: Mutex<Vec<Requests>> = Mutex::new(Vec::new());

impl Requests {
    /// Waits for the frame's request; true if the body's are done too.
    fn wait_head(&mut self) -> Result<bool> {
        // SAFETY: a request this struct started (or a null one).
        check(
            unsafe { ffi::MPI_Wait(&mut self.head, ffi::RSMPI_STATUS_IGNORE) },
            "MPI_Wait",
        )?;
        self.body_done()
    }

    /// True once the frame's request is done; then true if the body's are.
    fn test_head(&mut self) -> Result<Option<bool>> {
        let mut done: c_int = 0;
        // SAFETY: as above.
        check(
            unsafe { ffi::MPI_Test(&mut self.head, &mut done, ffi::RSMPI_STATUS_IGNORE) },
            "MPI_Test",
        )?;
        if done == 0 {
            Ok(None)
        } else {
            self.body_done().map(Some)
        }
    }

    fn body_done(&mut self) -> Result<bool> {
        if self.body.is_empty() {
            return Ok(true);
        }
        let mut done: c_int = 0;
        // SAFETY: requests this struct started.
        check(
            unsafe {
                ffi::MPI_Testall(
                    self.body.len() as c_int,
                    self.body.as_mut_ptr(),
                    &mut done,
                    ffi::RSMPI_STATUSES_IGNORE,
                )
            },
            "MPI_Testall",
        )?;
        Ok(done != 0)
    }

    /// True once every request is done.
    fn test(&mut self) -> Result<bool> {
        Ok(self.test_head()? == Some(true))
    }

    fn wait(&mut self) -> Result<()> {
        // SAFETY: as above.
        unsafe {
            let head = check(ffi::MPI_Wait(&mut self.head, ffi::RSMPI_STATUS_IGNORE), "MPI_Wait");
            if self.body.is_empty() {
                return head;
            }
            let body = check(
                ffi::MPI_Waitall(
                    self.body.len() as c_int,
                    self.body.as_mut_ptr(),
                    ffi::RSMPI_STATUSES_IGNORE,
                ),
                "MPI_Waitall",
            );
            head.and(body)
        }
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        // Dropped once MPI is done with the frame (waited for, tested
        // done, or never started).
        frames::give(std::mem::take(&mut self.frame));
    }
}

/// Completes the orphaned sends that are done and frees their buffers.
fn reap_orphans(wait: bool) {
    let mut orphans = ORPHANS.lock().unwrap_or_else(|e| e.into_inner());
    orphans.retain_mut(|o| {
        if wait {
            o.wait().is_err()
        } else {
            !o.test().unwrap_or(true)
        }
    });
}

/// Waits for every orphaned send (before `MPI_Finalize`).
pub(super) fn finish_orphans() {
    reap_orphans(true);
}

/// A send in progress on the MPI backend.
///
/// A send is complete for its caller once its frame has gone and its
/// body, if it has one, is MPI's to send on its own time: a body MPI
/// sends only once the receiver has posted its receive for it, which the
/// receiver does in its wait for the message, so a program that waits for
/// its send before its own receive (as both ranks of an exchange may, and
/// may on the native backend) would wait for ever if the send waited for
/// the body. An owned body goes on among the orphans; a lent one (a
/// scope's) stays with the send, whose scope waits for it before it ends
/// ([`MpiSend::wait_body`]).
#[derive(Debug)]
pub(crate) struct MpiSend {
    pending: Option<Requests>,
    /// The body is the caller's memory (a scope's lent buffer).
    lent: bool,
}

impl MpiSend {
    /// Waits until the send is complete for its caller (above; `Finalized`
    /// once MPI is: it needs nothing any more). A lent send's body may
    /// still be running after it: see [`MpiSend::running`].
    pub(crate) fn wait(&mut self) -> Result<()> {
        check_open()?;
        if let Some(r) = &mut self.pending {
            let done = r.wait_head()?;
            self.went(done);
        }
        Ok(())
    }

    /// True once the send is complete for its caller (as for `wait`).
    pub(crate) fn test(&mut self) -> Result<bool> {
        check_open()?;
        let Some(r) = &mut self.pending else {
            return Ok(true);
        };
        match r.test_head()? {
            None => Ok(false),
            Some(done) => {
                self.went(done);
                Ok(true)
            }
        }
    }

    /// The frame has gone and the body is done (`done`) or not: an owned
    /// body not done goes on among the orphans.
    fn went(&mut self, done: bool) {
        if done {
            self.pending = None;
        } else if !self.lent {
            if let Some(r) = self.pending.take() {
                ORPHANS.lock().unwrap_or_else(|e| e.into_inner()).push(r);
            }
        }
    }

    /// True while MPI may still read a lent body.
    pub(crate) fn running(&self) -> bool {
        self.pending.is_some()
    }

    /// Waits until MPI no longer reads the body (a lent one's memory may
    /// go after it; nothing is left to wait for once MPI has finalized).
    pub(crate) fn wait_body(mut self) -> Result<()> {
        match self.pending.take().filter(|_| !super::finalized()) {
            Some(mut r) => r.wait(),
            None => Ok(()),
        }
    }
}

impl Drop for MpiSend {
    fn drop(&mut self) {
        // Dropping a send does not cancel it: MPI keeps reading the
        // buffers, which wait among the orphans until it is done. After
        // MPI_Finalize, MPI reads nothing and may not be called.
        if let Some(mut r) = self.pending.take().filter(|_| !super::finalized()) {
            match r.test() {
                Ok(true) => {}
                Ok(false) => ORPHANS.lock().unwrap_or_else(|e| e.into_inner()).push(r),
                // MPI may still read the buffers: they are never freed nor
                // reused (the frame would go back to the stock).
                Err(_) => std::mem::forget(r),
            }
        }
    }
}

impl MpiComm {
    /// Starts a send of `bytes`, copied (the caller may reuse them at once).
    pub(crate) fn isend(&self, dest: usize, tag: u32, format: Format, bytes: &[u8]) -> Result<MpiSend> {
        if bytes.len() <= INLINE_LIMIT {
            // SAFETY: the bytes go into the frame; no body.
            return unsafe { self.isend_from(dest, tag, format, bytes, bytes.as_ptr(), bytes.len(), Vec::new()) };
        }
        self.isend_owned(dest, tag, format, crate::pool::copy_of(bytes))
    }

    /// Starts a send of `payload`, which the send keeps until it is done.
    pub(crate) fn isend_owned(&self, dest: usize, tag: u32, format: Format, payload: Vec<u8>) -> Result<MpiSend> {
        let (ptr, len) = (payload.as_ptr(), payload.len());
        let inline: &[u8] = if len <= INLINE_LIMIT { &payload } else { &[] };
        let inline = inline.to_vec();
        // SAFETY: the payload moves into the requests, which own it (a
        // Vec's heap memory does not move with it).
        unsafe { self.isend_from(dest, tag, format, &inline, ptr, len, payload) }
    }

    /// Starts a send of `bytes` straight from the caller's memory, which
    /// must stay unchanged until MPI no longer reads it.
    ///
    /// # Safety
    /// The caller keeps `bytes` alive and unchanged until
    /// [`MpiSend::wait_body`] has returned (or the send tested done and
    /// not [`MpiSend::running`]).
    pub(crate) unsafe fn isend_lent(&self, dest: usize, tag: u32, format: Format, bytes: &[u8]) -> Result<MpiSend> {
        let inline = if bytes.len() <= INLINE_LIMIT { bytes } else { &[] };
        // SAFETY: the caller's promise.
        let mut send = unsafe { self.isend_from(dest, tag, format, inline, bytes.as_ptr(), bytes.len(), Vec::new()) }?;
        send.lent = true;
        Ok(send)
    }

    /// # Safety
    /// A large body (`len` over the inline limit) at `body` stays valid
    /// until the requests complete.
    #[allow(clippy::too_many_arguments)]
    unsafe fn isend_from(
        &self,
        dest: usize,
        tag: u32,
        format: Format,
        inline: &[u8],
        body: *const u8,
        len: usize,
        payload: Vec<u8>,
    ) -> Result<MpiSend> {
        check_open()?;
        reap_orphans(false);
        let body_tag = (len > INLINE_LIMIT).then(|| self.body_tag());
        let mut frame = frames::take();
        header::write_frame(&mut frame, format, body_tag, len, self.stamp(dest), inline);
        let mut pending = Requests {
            head: unsafe { ffi::RSMPI_REQUEST_NULL },
            body: Vec::new(),
            frame,
            _payload: payload,
        };
        let (dest, tag) = (dest as c_int, tag as c_int);
        // SAFETY: the frame is owned by `pending`; the body is valid by the
        // caller's promise; every request is completed before the memory
        // goes (by wait, test, or among the orphans).
        unsafe {
            let code = ffi::MPI_Isend(
                pending.frame.as_ptr().cast::<c_void>(),
                pending.frame.len() as c_int,
                datatype::bytes(),
                dest,
                tag,
                self.comm.0,
                &mut pending.head,
            );
            check(code, "MPI_Isend")?;
            if let Some(body_tag) = body_tag {
                let mut at = 0;
                while at < len {
                    let n = (len - at).min(PIECE);
                    let mut request = ffi::RSMPI_REQUEST_NULL;
                    let code = ffi::MPI_Isend(
                        body.add(at).cast::<c_void>(),
                        n as c_int,
                        datatype::bytes(),
                        dest,
                        body_tag as c_int,
                        self.private.0,
                        &mut request,
                    );
                    if let Err(e) = check(code, "MPI_Isend") {
                        let _ = pending.wait();
                        return Err(e);
                    }
                    pending.body.push(request);
                    at += n;
                }
            }
        }
        Ok(MpiSend {
            pending: Some(pending),
            lent: false,
        })
    }

    /// Posts a receive of what `pattern` accepts; a raw message of the
    /// room's type lands in it.
    pub(crate) fn ireceive(&self, pattern: Match, room: Option<Room>) -> Result<MpiReceive> {
        check_open()?;
        if let Some(held) = self.take_held(&pattern)? {
            return Ok(MpiReceive {
                state: State::Arrived(Box::new(held)),
                pattern,
                room,
                frame: Vec::new(),
            });
        }
        let mut frame = frames::take();
        let request = self.post_irecv(&pattern, &mut frame)?;
        Ok(MpiReceive {
            state: State::Posted(request),
            pattern,
            room,
            frame,
        })
    }

    /// Posts an `MPI_Irecv` of a header frame (and a small message's
    /// payload) into `frame`'s capacity, which must stay put until it
    /// completes or is cancelled (`MpiComm::arrived` then reads the bytes
    /// that came). Not zeroed: a zeroed 4 KiB allocation per receive was
    /// half of the receiver's instructions in a stream of small messages.
    fn post_irecv(&self, pattern: &Match, frame: &mut Vec<u8>) -> Result<ffi::MPI_Request> {
        frame.clear();
        frame.reserve_exact(FRAME);
        let mut request = unsafe { ffi::RSMPI_REQUEST_NULL };
        let (source, tag) = (
            super::point_to_point::mpi_source(pattern),
            super::point_to_point::mpi_tag(pattern),
        );
        // SAFETY: the frame's heap memory stays with the receive until the
        // request completes or is cancelled.
        check(
            unsafe {
                ffi::MPI_Irecv(
                    frame.spare_capacity_mut().as_mut_ptr().cast::<c_void>(),
                    FRAME as c_int,
                    datatype::bytes(),
                    source,
                    tag,
                    self.comm.0,
                    &mut request,
                )
            },
            "MPI_Irecv",
        )?;
        Ok(request)
    }
}

#[derive(Debug)]
enum State {
    Posted(ffi::MPI_Request),
    /// Boxed: the usual receive goes from posted to taken in one `wait`,
    /// and a small state is cheaper to move.
    Arrived(Box<Held>),
    Taken,
}

/// A receive in progress on the MPI backend.
#[derive(Debug)]
pub(crate) struct MpiReceive {
    state: State,
    /// What it accepts, to look among the messages given back since it
    /// was posted.
    pattern: Match,
    room: Option<Room>,
    frame: Vec<u8>,
}

// SAFETY: as for `Requests`; the room points into memory the request's
// owner keeps for it.
unsafe impl Send for MpiReceive {}

impl MpiReceive {
    /// True once the header has arrived (a large body is then received at
    /// once, by `wait`).
    pub(crate) fn test(&mut self, comm: &MpiComm) -> Result<bool> {
        check_open()?;
        self.take_given_back(comm)?;
        let request = match &mut self.state {
            State::Posted(request) => request,
            State::Arrived(_) => return Ok(true),
            State::Taken => return Err(no_message()),
        };
        let mut done: c_int = 0;
        let mut status = MaybeUninit::<ffi::MPI_Status>::zeroed();
        // SAFETY: the request posted in `ireceive`.
        check(
            unsafe { ffi::MPI_Test(request, &mut done, status.as_mut_ptr()) },
            "MPI_Test",
        )?;
        if done == 0 {
            return Ok(false);
        }
        // SAFETY: filled in by MPI_Test.
        // Not into the room: the receive may still be withdrawn, and its
        // message given to another.
        let held = comm.arrived(&mut self.frame, unsafe { status.assume_init_ref() }, None);
        // MPI is done with the request either way: a frame that does not
        // parse leaves nothing to cancel.
        match held {
            Ok(held) => self.state = State::Arrived(Box::new(held)),
            Err(e) => {
                self.state = State::Taken;
                return Err(e);
            }
        }
        Ok(true)
    }

    /// Waits for the message and returns it, its body received.
    pub(crate) fn wait(mut self, comm: &MpiComm) -> Result<Envelope> {
        check_open()?;
        // Nothing is given back while this thread waits in MPI: only this
        // thread uses the communicator's held messages.
        self.take_given_back(comm)?;
        let held = match std::mem::replace(&mut self.state, State::Taken) {
            State::Posted(mut request) => {
                let mut status = MaybeUninit::<ffi::MPI_Status>::zeroed();
                // SAFETY: the request posted in `ireceive`.
                let waited = check(unsafe { ffi::MPI_Wait(&mut request, status.as_mut_ptr()) }, "MPI_Wait");
                if let Err(e) = waited {
                    // Still MPI's: dropping the receive cancels it.
                    self.state = State::Posted(request);
                    return Err(e);
                }
                // SAFETY: filled in by MPI_Wait. Into the room: the message
                // is this receive's from here on.
                comm.arrived(&mut self.frame, unsafe { status.assume_init_ref() }, self.room)?
            }
            State::Arrived(held) => *held,
            State::Taken => return Err(no_message()),
        };
        comm.complete(held, self.room)
    }

    /// Withdraws the receive; a message it had matched goes back to the
    /// communicator, first in line. After MPI_Finalize there is nothing to
    /// withdraw from, and nobody to give a message back to.
    pub(crate) fn withdraw(mut self, comm: &MpiComm) {
        if super::finalized() {
            self.state = State::Taken;
            return;
        }
        match std::mem::replace(&mut self.state, State::Taken) {
            // A frame that does not parse is dropped here: a withdrawal
            // has nobody to tell (a wait or test would have said).
            State::Posted(request) => drop(self.cancel_to_held(comm, request)),
            State::Arrived(held) => comm.held.borrow_mut().push_front(*held),
            State::Taken => {}
        }
    }

    /// Cancels the receive's request in MPI; a message MPI had already
    /// matched for it goes to the communicator's held messages (an error if
    /// its frame does not parse).
    fn cancel_to_held(&mut self, comm: &MpiComm, mut request: ffi::MPI_Request) -> Result<()> {
        let mut status = MaybeUninit::<ffi::MPI_Status>::zeroed();
        let mut cancelled: c_int = 0;
        // SAFETY: cancel and complete the request, as MPI requires.
        unsafe {
            ffi::MPI_Cancel(&mut request);
            ffi::MPI_Wait(&mut request, status.as_mut_ptr());
            ffi::MPI_Test_cancelled(status.as_ptr(), &mut cancelled);
        }
        if cancelled == 0 {
            // SAFETY: filled in by MPI_Wait.
            let held = comm.arrived(&mut self.frame, unsafe { status.assume_init_ref() }, None)?;
            comm.held.borrow_mut().push_front(held);
        }
        Ok(())
    }

    /// A receive still posted in MPI takes a message given back since it
    /// was posted (a withdrawn receive's, see [`MpiReceive::withdraw`]) if
    /// it accepts one: that message is older than any MPI can still match
    /// for it. Its request in MPI is cancelled (what MPI had matched for it
    /// is held in turn) and it takes the oldest held message it accepts.
    fn take_given_back(&mut self, comm: &MpiComm) -> Result<()> {
        let State::Posted(request) = self.state else {
            return Ok(());
        };
        if !comm.holds(&self.pattern) {
            return Ok(());
        }
        self.state = State::Taken;
        let taken = self
            .cancel_to_held(comm, request)
            .and_then(|()| comm.take_held(&self.pattern));
        match taken {
            Ok(Some(held)) => {
                self.state = State::Arrived(Box::new(held));
                Ok(())
            }
            // `None` cannot happen (a held message was accepted a moment
            // ago); after an error (a frame that does not parse) the
            // receive waits on in MPI, posted again, and the error is said.
            taken => {
                self.state = State::Posted(comm.post_irecv(&self.pattern, &mut self.frame)?);
                taken.map(|_| ())
            }
        }
    }
}

/// The error of a receive asked again after it failed for good (MPI could
/// not post it again).
fn no_message() -> Error {
    Error::InvalidArgument("this receive failed before and has no message to give".into())
}

impl Drop for MpiReceive {
    fn drop(&mut self) {
        // Only a receive that was never withdrawn nor waited for gets
        // here still posted (its communicator is gone): MPI must not
        // write into the frame after it is freed.
        if let State::Posted(request) = &mut self.state {
            if !super::finalized() {
                // SAFETY: cancel and complete the request.
                unsafe {
                    ffi::MPI_Cancel(request);
                    ffi::MPI_Wait(request, ffi::RSMPI_STATUS_IGNORE);
                }
            }
        }
        frames::give(std::mem::take(&mut self.frame));
    }
}
