//! Scoped non-blocking operations that lend the caller's buffers instead of
//! copying them: a send reads straight from the caller's slice and a
//! receive lands straight in the caller's buffer. The scope does not end
//! until every operation started in it has completed, so the buffers
//! outlive every use, even if a request is dropped or forgotten.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use bytemuck::Pod;

use crate::communicator::Communicator;
use crate::envelope::Envelope;
use crate::error::Result;
use crate::matching::SlotRef;
use crate::message;
use crate::selector::Match;

mod lent;
mod requests;
mod waits;

use lent::{Lent, LentBuffer, with_room};

pub use requests::{LentReceive, LentSend};

/// Non-blocking operations on buffers borrowed for the scope; see
/// [`Communicator::scope`].
#[derive(Debug)]
pub struct Scope<'scope, 'env: 'scope> {
    comm: &'env Communicator,
    lent: RefCell<Lent>,
    scope: PhantomData<&'scope mut &'scope ()>,
    env: PhantomData<&'env mut &'env ()>,
}

impl Communicator {
    /// Runs `body` with a [`Scope`] whose `immediate_` calls borrow the
    /// caller's buffers instead of copying them. Returns once every
    /// operation started in the scope has completed (those not waited for
    /// are waited for at the end; the first error is returned).
    ///
    /// If `body` returns an error or panics, the scope does not wait: its
    /// receives that have not completed are withdrawn (a message that had
    /// already landed in a buffer is copied out and stays queued in its
    /// place, or goes to a receive posted since that accepts it), and its
    /// sends copy what they have not written yet and go on without the
    /// buffers. The error is returned, or the panic goes on.
    ///
    /// ```no_run
    /// use spmd::Request;
    /// # let world = spmd::init().unwrap();
    /// let data = vec![1.0f64; 1 << 20];
    /// let mut incoming = vec![0.0f64; 1 << 20];
    /// let (me, n) = (world.rank(), world.size());
    /// world.scope(|s| {
    ///     let recv = s.immediate_receive_into(&mut incoming, (me + n - 1) % n)?;
    ///     let send = s.immediate_send_slice(&data, (me + 1) % n)?;
    ///     send.wait()?;
    ///     recv.wait()?;
    ///     Ok(())
    /// })?;
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn scope<'env, T, F>(&'env self, body: F) -> Result<T>
    where
        F: for<'scope> FnOnce(&'scope Scope<'scope, 'env>) -> Result<T>,
    {
        let scope = Scope {
            comm: self,
            lent: RefCell::new(Lent::spare()),
            scope: PhantomData,
            env: PhantomData,
        };
        let result = catch_unwind(AssertUnwindSafe(|| body(&scope)));
        // Whatever the body did, nothing may still use a lent buffer once
        // this returns.
        let outcome = match result {
            // A panic while finishing (a bug, or memory running out) must
            // not leave the engine holding the buffers either.
            Ok(Ok(value)) => match catch_unwind(AssertUnwindSafe(|| scope.finish())) {
                Ok(Ok(())) => Ok(value),
                // A wait that failed (the rank finalized meanwhile, say)
                // may leave a receive posted or a send not yet owned.
                Ok(Err(e)) => {
                    scope.release();
                    Err(e)
                }
                Err(panic) => {
                    scope.release();
                    resume_unwind(panic)
                }
            },
            Ok(Err(e)) => {
                scope.release();
                Err(e)
            }
            Err(panic) => {
                scope.release();
                resume_unwind(panic)
            }
        };
        // Every receive completed or was withdrawn, every send is done or
        // owns its payload: the engine holds no slot of the scope's.
        scope.lent.take().recycle();
        outcome
    }
}

impl<'scope, 'env> Scope<'scope, 'env> {
    /// Starts sending `data` to `dest` with tag 0; the data is read in
    /// place until the send completes.
    pub fn immediate_send_slice<T: Pod>(
        &'scope self,
        data: &'scope [T],
        dest: usize,
    ) -> Result<LentSend<'scope, 'env>> {
        self.immediate_send_slice_with_tag(data, dest, 0)
    }

    /// [`Scope::immediate_send_slice`] with tag `tag`.
    pub fn immediate_send_slice_with_tag<T: Pod>(
        &'scope self,
        data: &'scope [T],
        dest: usize,
        tag: u32,
    ) -> Result<LentSend<'scope, 'env>> {
        let dest = self.comm.peer(dest)?;
        let head = self.comm.user_head(tag, message::raw::<T>())?;
        #[cfg(feature = "mpi")]
        if let Some(m) = self.comm.mpi_side() {
            // SAFETY: as below: the scope waits for the send.
            let send = unsafe { m.isend_lent(dest, tag, message::raw::<T>(), message::pod_bytes(data))? };
            let mut lent = self.lent.borrow_mut();
            with_room(&mut lent.sends).push((None, dest, false));
            with_room(&mut lent.mpi_sends).push(Some(send));
            return Ok(LentSend {
                scope: self,
                index: Some(lent.sends.len() - 1),
            });
        }
        // SAFETY: `data` is borrowed for the scope, and the scope waits for
        // the send (or makes it owned) before it ends.
        let mut engine = self.comm.engine()?;
        let sent = unsafe { engine.send_lent(dest, head, message::pod_bytes(data)) };
        let sent = self.comm.ranked(sent)?;
        drop(engine);
        // A small message is usually written out at once and comes back
        // without a ticket: then the send is complete and borrows nothing,
        // so the scope does not list it, and waiting for it costs nothing
        // (no second visit to the engine per send in a window of them).
        if sent.is_none() {
            return Ok(LentSend {
                scope: self,
                index: None,
            });
        }
        let mut lent = self.lent.borrow_mut();
        with_room(&mut lent.sends).push((sent, dest, false));
        Ok(LentSend {
            scope: self,
            index: Some(lent.sends.len() - 1),
        })
    }

    /// Posts a receive of plain numbers into `buf` from rank `source` with
    /// tag 0; a message that arrives after this call is written straight
    /// into `buf`.
    pub fn immediate_receive_into<T: Pod>(
        &'scope self,
        buf: &'scope mut [T],
        source: usize,
    ) -> Result<LentReceive<'scope, 'env>> {
        self.immediate_receive_into_matching(buf, Match::source(source).with_tag(0))
    }

    /// [`Scope::immediate_receive_into`] with tag `tag`.
    pub fn immediate_receive_into_with_tag<T: Pod>(
        &'scope self,
        buf: &'scope mut [T],
        source: usize,
        tag: u32,
    ) -> Result<LentReceive<'scope, 'env>> {
        self.immediate_receive_into_matching(buf, Match::source(source).with_tag(tag))
    }

    /// Posts a receive of plain numbers into `buf`, from whichever rank and
    /// tag `pattern` accepts; a message that arrives after this call is
    /// written straight into `buf`.
    pub fn immediate_receive_into_matching<T: Pod>(
        &'scope self,
        buf: &'scope mut [T],
        pattern: Match,
    ) -> Result<LentReceive<'scope, 'env>> {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(buf);
        let (ptr, len) = (bytes.as_mut_ptr(), bytes.len());
        let element = crate::element::code_of::<T>();
        let sel = self.comm.user(pattern)?;
        #[cfg(feature = "mpi")]
        if let Some(m) = self.comm.mpi_side() {
            let buffer = crate::envelope::Buffer { ptr, len };
            let room = crate::envelope::Room::Given { buffer, element };
            let receive = m.ireceive(sel.pattern, Some(room))?;
            // No landed slot: on MPI the receive itself holds its message.
            let mut lent = self.lent.borrow_mut();
            with_room(&mut lent.receives).push(LentBuffer {
                id: crate::matching::ReceiveId::ELSEWHERE,
                mpi: Some(receive),
                ptr,
                len,
                element,
                finish: finish_into::<T>,
                done: false,
            });
            return Ok(LentReceive {
                scope: self,
                index: lent.receives.len() - 1,
            });
        }
        let slot = self.next_slot();
        // SAFETY: `buf` is borrowed mutably for the scope, and the scope
        // waits for the receive (or abandons it) before it ends and frees
        // the slot.
        let id = unsafe { self.comm.engine()?.post_lent(sel, ptr, len, element, slot) };
        let id = self.comm.ranked(id)?;
        let mut lent = self.lent.borrow_mut();
        with_room(&mut lent.receives).push(LentBuffer {
            id,
            #[cfg(feature = "mpi")]
            mpi: None,
            ptr,
            len,
            element,
            finish: finish_into::<T>,
            done: false,
        });
        Ok(LentReceive {
            scope: self,
            index: lent.receives.len() - 1,
        })
    }

    /// The landed slot of the next receive posted (the one at index
    /// `receives.len()`).
    fn next_slot(&self) -> SlotRef {
        SlotRef::new(self.lent.borrow_mut().next_slot())
    }

    /// Lets go of every lent buffer without waiting (the body failed):
    /// receives still running are withdrawn, and sends copy what they have
    /// not written. Never panics, so that it can run during unwinding.
    fn release(&self) {
        let Ok(mut lent) = self.lent.try_borrow_mut() else {
            // Cannot happen once the body and `finish` have unwound; if it
            // did, going on would leave the engine pointing into buffers
            // about to be freed.
            eprintln!("spmd: a scope's bookkeeping was still in use as it ended; aborting");
            std::process::abort();
        };
        let running = lent.receives.iter().any(|r| !r.done) || lent.sends.iter().any(|s| !s.2);
        // A send waited for on MPI may still have its body running.
        #[cfg(feature = "mpi")]
        let running = running || lent.mpi_sends.iter().any(Option::is_some);
        if !running {
            return;
        }
        #[cfg(feature = "mpi")]
        if let Some(m) = self.comm.mpi_side() {
            for r in lent.receives.iter_mut().filter(|r| !r.done) {
                if let Some(receive) = r.mpi.take() {
                    receive.withdraw(m);
                }
                r.done = true;
            }
            // The lent memory must outlive the sends: wait for them.
            for send in lent.mpi_sends.iter_mut().filter_map(Option::take) {
                let _ = send.wait_body(m);
            }
            return;
        }
        let Some(mut engine) = self.comm.engine_for_cleanup() else {
            // Only spmd called from inside spmd gets here. Going on would
            // leave the engine pointing into buffers about to be freed.
            eprintln!("spmd: a scope ended inside another spmd call and cannot withdraw its buffers; aborting");
            std::process::abort();
        };
        // The messages the withdrawn receives had (taken from the queue,
        // or landed) go back in arrival order, so that a receive posted
        // since gets the earliest.
        let withdrawn: Vec<usize> = (0..lent.receives.len()).filter(|&i| !lent.receives[i].done).collect();
        let mut back = Vec::new();
        for &i in &withdrawn {
            back.extend(engine.withdraw_receive(lent.receives[i].id));
            lent.receives[i].done = true;
        }
        for (sent, _, done) in lent.sends.iter_mut().filter(|s| !s.2) {
            engine.own_sent(*sent);
            *done = true;
        }
        drop(lent);
        back.extend(withdrawn.into_iter().filter_map(|i| self.landed_copy(i)));
        back.sort_by_key(|env| env.arrival);
        for env in back {
            engine.requeue(env);
        }
    }

    /// Completes every operation still running; the first error wins.
    fn finish(&self) -> Result<()> {
        let (sends, receives) = {
            let lent = self.lent.borrow();
            (lent.sends.len(), lent.receives.len())
        };
        let mut first = Ok(());
        for i in 0..receives {
            if !self.lent.borrow().receives[i].done {
                if let Err(e) = self.wait_receive(i) {
                    first = first.and(Err(e));
                }
            }
        }
        for i in 0..sends {
            if let Err(e) = self.wait_send(i) {
                first = first.and(Err(e));
            }
        }
        #[cfg(feature = "mpi")]
        if let Some(m) = self.comm.mpi_side() {
            let bodies: Vec<_> = self
                .lent
                .borrow_mut()
                .mpi_sends
                .iter_mut()
                .filter_map(Option::take)
                .collect();
            for body in bodies {
                if let Err(e) = body.wait_body(m) {
                    first = first.and(Err(e));
                }
            }
        }
        first
    }
}

/// Finishes a receive into a lent buffer of `T`s: checks a message that
/// landed, copies one that was already queued.
fn finish_into<T: Pod>(env: &Envelope, ptr: *mut u8, len: usize) -> Result<()> {
    if env.landed.is_some() {
        return message::check_raw::<T>(env, Some(len));
    }
    let count = len / std::mem::size_of::<T>().max(1);
    // SAFETY: the buffer was lent for the scope as a `&mut [T]` of `count`
    // elements at `ptr`, and nothing else uses it now.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr.cast::<T>(), count) };
    message::copy_into(env, buf).map(|_| ())
}
