//! A scope's waits for its own sends and receives: a look at a flag or a
//! landed slot when the operation is done already (a stream's usual
//! case), the engine otherwise.

use super::Scope;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::matching::LandedSlot;
use crate::selector::Status;

impl Scope<'_, '_> {
    /// Waits for listed send `index` (one written out when it started is
    /// not listed): a look at its flag when it was waited for already (it
    /// runs twice per send, in the caller's wait and in `finish`).
    #[inline]
    pub(super) fn wait_send(&self, index: usize) -> Result<()> {
        if self.lent.borrow().sends[index].2 {
            return Ok(());
        }
        self.wait_send_running(index)
    }

    /// [`Scope::wait_send`] of a send still running.
    #[inline(never)]
    fn wait_send_running(&self, index: usize) -> Result<()> {
        let (sent, dest, _) = self.lent.borrow().sends[index];
        #[cfg(feature = "mpi")]
        if let Some(m) = self.comm.mpi_side() {
            let send = self.lent.borrow_mut().mpi_sends[index].take();
            self.lent.borrow_mut().sends[index].2 = true;
            let Some(mut send) = send else { return Ok(()) };
            let result = send.wait(m);
            // A body MPI still reads from the lent buffer is waited for
            // before the scope ends, after its receives (see `MpiSend`).
            if send.running() {
                self.lent.borrow_mut().mpi_sends[index] = Some(send);
            }
            return result;
        }
        let mut engine = self.comm.engine()?;
        let result = self.comm.ranked(engine.wait_sent(sent, dest));
        engine.own_sent(sent);
        self.lent.borrow_mut().sends[index].2 = true;
        result
    }

    /// Receive `index`'s landed slot (every native receive has one:
    /// `next_slot` runs before each is added; receives on MPI have none).
    pub(super) fn slot(&self, index: usize) -> &LandedSlot {
        let slot: *const LandedSlot = self.lent.borrow().slot(index);
        // SAFETY: the chunk is boxed, never moved out or dropped before the
        // scope (which outlives `&self`), and only read through atomics.
        unsafe { &*slot }
    }

    /// The message of a withdrawn receive (a wait that failed, a body
    /// that failed) that had landed in its buffer, copied out of the
    /// buffer, for the caller to put back in the queue so that it is not
    /// lost.
    pub(super) fn landed_copy(&self, index: usize) -> Option<Envelope> {
        let (ptr, element) = {
            let lent = self.lent.borrow();
            (lent.receives[index].ptr, lent.receives[index].element)
        };
        let mut env = self.slot(index).envelope(element)?;
        let len = env.landed.take().unwrap_or(0) as usize;
        // SAFETY: the message landed in these `len` bytes of the lent
        // buffer, which the scope still borrows.
        env.payload = crate::pool::copy_of(unsafe { std::slice::from_raw_parts(ptr, len) });
        Some(env)
    }

    /// Waits for receive `index`: in line when its message has landed
    /// already, a stream's usual case (see [`Scope::landed_status`]).
    #[inline]
    pub(super) fn wait_receive(&self, index: usize) -> Result<Status> {
        match self.landed_status(index) {
            Some(status) => Ok(status),
            None => self.wait_receive_running(index),
        }
    }

    /// Receive `index`'s status if it is not done and its message has
    /// landed in its slot, marking it done: one look at the lists, no
    /// engine, and none of `finish`'s checks, which the landing made (a
    /// message lands only as whole elements of the buffer's type that fit
    /// it). A receive on MPI has no slot.
    #[inline]
    fn landed_status(&self, index: usize) -> Option<Status> {
        #[cfg(feature = "mpi")]
        if self.comm.mpi_side().is_some() {
            return None;
        }
        let mut lent = self.lent.borrow_mut();
        let r = &lent.receives[index];
        if r.done {
            return None;
        }
        let status = lent.slot(index).status(r.element)?;
        lent.receives[index].done = true;
        Some(status.with_source(self.comm.rank_of(status.source())))
    }

    /// [`Scope::wait_receive`] of a receive whose message has not landed,
    /// of every receive on the MPI backend, and of one waited for already
    /// (an error). It looks up the MPI side again: only the landed path
    /// runs per message in a stream.
    #[inline(never)]
    fn wait_receive_running(&self, index: usize) -> Result<Status> {
        let (id, ptr, len, element, finish) = {
            let lent = self.lent.borrow();
            let r = &lent.receives[index];
            if r.done {
                return Err(Error::InvalidArgument("this receive was already waited for".into()));
            }
            (r.id, r.ptr, r.len, r.element, r.finish)
        };
        #[cfg(feature = "mpi")]
        if let Some(m) = self.comm.mpi_side() {
            let receive = self.lent.borrow_mut().receives[index].mpi.take();
            self.lent.borrow_mut().receives[index].done = true;
            let Some(receive) = receive else {
                return Err(Error::InvalidArgument("this receive was already waited for".into()));
            };
            let env = receive.wait(m)?;
            let status = self.comm.status_of(&env);
            if let Err(e) = finish(&env, ptr, len) {
                if env.landed.is_none() {
                    m.requeue(env);
                }
                return Err(e);
            }
            return Ok(status);
        }
        let slot = self.slot(index);
        let env = match slot.envelope(element) {
            Some(env) => env,
            None => {
                let mut engine = self.comm.engine()?;
                let result = self.comm.ranked(engine.wait_lent_receive(id, slot));
                if result.is_err() {
                    // The failed wait withdrew the receive and put back a
                    // message it had taken from the queue; one that landed
                    // in the buffer meanwhile goes back from here.
                    if let Some(env) = self.landed_copy(index) {
                        engine.requeue(env);
                    }
                }
                drop(engine);
                // Done whatever the outcome: a second wait would find
                // nothing to wait for.
                self.lent.borrow_mut().receives[index].done = true;
                match result? {
                    Some(env) => env,
                    None => slot
                        .envelope(element)
                        .ok_or_else(|| Error::InvalidArgument("a landed receive lost its slot".into()))?,
                }
            }
        };
        self.lent.borrow_mut().receives[index].done = true;
        let status = self.comm.status_of(&env);
        if let Err(e) = finish(&env, ptr, len).map_err(|e| self.comm.in_ranks(e)) {
            // A message that did not land goes back to the queue for a
            // receive of the right type (one that landed fitted the buffer).
            if env.landed.is_none() {
                self.comm.engine()?.requeue(env);
            }
            return Err(e);
        }
        Ok(status)
    }
}
