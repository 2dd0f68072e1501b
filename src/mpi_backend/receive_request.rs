//! Non-blocking receives on the MPI backend, on MPI requests. A receive
//! posts `MPI_Irecv` of a frame and, once the header is in, receives a
//! large message's body into its room.

use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_void};

use mpi::ffi;

use super::comm::MpiComm;
use super::frames;
use super::held::Held;
use super::point_to_point::FRAME;
use super::{check, check_open, datatype};
use crate::envelope::{Envelope, Room};
use crate::error::{Error, Result};
use crate::selector::Match;

impl MpiComm {
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

// SAFETY: as for a send's `Requests` (`send_request.rs`); the room
// points into memory the request's owner keeps for it.
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
            if comm.only_this_rank_sends(&self.pattern) {
                crate::completion::note_only_this_rank_sends();
            }
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
        // A message only this rank could send and has not would keep the
        // wait in MPI for ever (dropped, the receive is cancelled).
        if matches!(self.state, State::Posted(_)) && comm.only_this_rank_sends(&self.pattern) && !self.test(comm)? {
            return Err(crate::completion::never_sent());
        }
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
