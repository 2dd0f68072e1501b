//! Non-blocking sends on the MPI backend, on MPI requests. A send owns
//! its frame (and a copy of the payload, unless a scope lends it); the
//! requests of sends dropped before they completed wait among the orphans,
//! with their memory, until MPI is done with them.

use std::os::raw::{c_int, c_void};
use std::sync::Mutex;

use mpi::ffi;

use super::comm::MpiComm;
use super::point_to_point::{INLINE_LIMIT, PIECE};
use super::{check, check_open, datatype};
use super::{frames, header};
use crate::envelope::Format;
use crate::error::Result;

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
    /// Meanwhile it takes in what waits in MPI for this rank on `comm`
    /// (see [`MpiComm::take_in_waiting`]).
    fn wait_head(&mut self, comm: &MpiComm) -> Result<bool> {
        loop {
            if let Some(done) = self.test_head()? {
                return Ok(done);
            }
            comm.take_in_waiting(false)?;
        }
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
///
/// A frame larger than MPI's eager limit would go only once its receiver
/// received it: frames stay below the eager limits of both MPIs (see
/// `INLINE_LIMIT`), but every wait and test of a send takes in the frames
/// that wait in MPI for this rank on the communicator all the same, and
/// the wait for a lent body at a scope's end takes in bodies too ([`MpiComm::take_in_waiting`]):
/// two ranks that each wait for their send to the other before receiving
/// both go on.
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
    pub(crate) fn wait(&mut self, comm: &MpiComm) -> Result<()> {
        check_open()?;
        if let Some(r) = &mut self.pending {
            let done = r.wait_head(comm)?;
            self.went(done);
        }
        Ok(())
    }

    /// True once the send is complete for its caller (as for `wait`).
    pub(crate) fn test(&mut self, comm: &MpiComm) -> Result<bool> {
        check_open()?;
        let Some(r) = &mut self.pending else {
            return Ok(true);
        };
        match r.test_head()? {
            None => {
                comm.take_in_waiting(false)?;
                Ok(false)
            }
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
    /// go after it; nothing is left to wait for once MPI has finalized),
    /// taking in what waits for this rank on `comm` meanwhile, bodies
    /// included (the peer's scope may be waiting for its own).
    pub(crate) fn wait_body(mut self, comm: &MpiComm) -> Result<()> {
        let Some(mut r) = self.pending.take().filter(|_| !super::finalized()) else {
            return Ok(());
        };
        // An error while taking in (a peer's bad frame) is returned once
        // the requests are done: the memory they read must outlive them,
        // and the taking in goes on, since the peer may wait for it as
        // this rank does.
        let mut first = Ok(());
        loop {
            match r.test() {
                Ok(true) => return first,
                Ok(false) => {
                    if let Err(e) = comm.take_in_waiting(true) {
                        first = first.and(Err(e));
                    }
                }
                Err(e) => {
                    // MPI may still read the buffers: never freed nor
                    // reused (as a dropped send's).
                    std::mem::forget(r);
                    return Err(e);
                }
            }
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
}
