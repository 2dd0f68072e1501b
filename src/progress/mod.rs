//! The progress engine of one rank: the single path through which sends go
//! out, messages come in and waits complete. It joins the matching engine
//! to the transport, knows when a wait can never end, and keeps the rank's
//! status page saying what it waits on while it sleeps.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::envelope::{Buffer, Envelope, Format, Room};
use crate::error::{Error, Result};
use crate::matching::{Matcher, ReceiveId, SlotRef};
use crate::selector::Selector;
use crate::status::{Asleep, StatusWriter};
use crate::transport::{SendTicket, ShmMesh, Sleep, Transport, Wait};
use crate::wire::status::Phase;
use crate::wire::{Context, Header};

mod ending;
mod lock;
mod owned;
mod receive;
mod schedule;
mod straight;
mod waits;

pub(crate) use ending::LAUNCHER_REACTION;
pub(crate) use lock::{EngineGuard, EngineLock, check_not_combining, combining};
#[cfg(feature = "mpi")]
pub(crate) use receive::{pattern_text, timed_out};
pub(crate) use schedule::{Fold, Part, Plan, Step, panic_text};
use waits::Tested;

/// A queued send: `None` when it is done already (it went to this rank
/// itself, or was written in full at once).
pub(crate) type Sent = Option<SendTicket>;

/// Where an outgoing message goes within its destination, and how its
/// payload is encoded: everything of its header but the source and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub context: Context,
    pub tag: u32,
    /// The collective call it belongs to (0 for point-to-point).
    pub call: u32,
    pub format: Format,
}

impl Head {
    /// A point-to-point message in `context`.
    pub fn user(context: Context, tag: u32, format: Format) -> Head {
        Head {
            context,
            tag,
            call: 0,
            format,
        }
    }
}

/// A check a collective makes at every step of a wait (for another rank's
/// report of failure, or a message of another collective in its place).
pub(crate) type Check<'a> = dyn FnMut(&Matcher) -> Result<()> + 'a;

#[derive(Debug)]
pub(crate) struct Engine {
    pub me: usize,
    pub size: usize,
    matcher: Matcher,
    transport: Transport,
    /// Started by a launcher that ends the job when a rank dies.
    managed: bool,
    status: Option<StatusWriter>,
    /// Messages handed to the transport (or to this rank) so far.
    sent: u64,
    /// True once `finish` has run: nothing more goes out or is posted.
    finished: bool,
    /// The job ranks of each point-to-point context whose communicator is
    /// not every rank, for the check of whether an any-source receive can
    /// still be served.
    members: HashMap<u32, Arc<[usize]>>,
    /// The `immediate_` collectives under way, and how many were started.
    schedules: Vec<schedule::Schedule>,
    schedules_made: u64,
    /// Threads of this rank asleep without the engine (see `lock.rs`).
    sleepers: u32,
    /// The wake-up descriptors of those that sleep on descriptors (each
    /// thread has its own: see `lock.rs`).
    wake_fds: Vec<RawFd>,
    /// How many times something moved (see [`Engine::note_moved`]).
    moves: u64,
    /// The waits of the threads asleep: the status page names the oldest
    /// (see `lock.rs`).
    asleep: Vec<Asleep>,
    /// The peers found gone for which this rank gave the launcher time
    /// to end the job already (see [`Engine::gone`]): once is enough.
    given_time: Vec<usize>,
    /// Messages taken by the straight path since the last general step
    /// (see `straight.rs`).
    straight_run: u32,
    /// The receives a wait on requests found pending in its last look
    /// (see [`Engine::begin_look`]), to name the wait on the status page.
    tested: Tested,
}

impl Engine {
    pub fn new(me: usize, size: usize, transport: Transport, status: Option<StatusWriter>) -> Engine {
        if let Some(s) = &status {
            s.set_phase(Phase::Running);
        }
        Engine {
            me,
            size,
            matcher: Matcher::default(),
            transport,
            managed: status.is_some(),
            status,
            sent: 0,
            finished: false,
            members: HashMap::new(),
            schedules: Vec::new(),
            schedules_made: 0,
            sleepers: 0,
            wake_fds: Vec::new(),
            moves: 0,
            asleep: Vec::new(),
            given_time: Vec::new(),
            straight_run: 0,
            tested: Tested::Nothing,
        }
    }

    /// True if started by a launcher that ends the job when a rank dies.
    pub fn managed(&self) -> bool {
        self.managed
    }

    /// The header of a message from this rank.
    fn header(&self, head: Head, len: usize) -> Header {
        Header {
            kind: head.format.kind(),
            element: head.format.element(),
            source: self.me as u32,
            tag: head.tag,
            context: head.context,
            call: head.call,
            len: len as u64,
        }
    }

    /// Checks that this rank has not finalized and that job rank `rank`
    /// exists.
    pub fn check_rank(&self, rank: usize) -> Result<()> {
        self.check_open()?;
        if rank < self.size {
            Ok(())
        } else {
            Err(Error::InvalidRank { rank, size: self.size })
        }
    }

    /// Says which job ranks can send in `context` (`None`: every rank).
    pub fn set_members(&mut self, context: Context, members: Option<Arc<[usize]>>) {
        match members {
            Some(m) => self.members.insert(context.0, m),
            None => self.members.remove(&context.0),
        };
    }

    /// Checks that this rank has not finalized.
    #[inline]
    pub fn check_open(&self) -> Result<()> {
        if self.finished { Err(Error::Finalized) } else { Ok(()) }
    }

    /// Queues a message. A message to this rank is delivered at once.
    pub fn send(&mut self, dest: usize, head: Head, payload: Vec<u8>) -> Result<Sent> {
        self.check_rank(dest)?;
        self.sent += 1;
        if dest == self.me {
            let mut env = Envelope::new(dest, head.tag, head.context, head.format, payload);
            env.call = head.call;
            self.matcher.deliver(env);
            self.note_moved();
            return Ok(None);
        }
        let header = self.header(head, payload.len());
        self.transport.queue(dest, header, payload).map_err(|e| self.lost(e))
    }

    /// Starts a send that keeps borrowing `payload` until it is written (for
    /// scoped requests).
    ///
    /// # Safety
    ///
    /// `payload` must stay valid until the send is complete
    /// ([`Engine::is_sent`]) or [`Engine::own_sent`] was called for it.
    pub unsafe fn send_lent(&mut self, dest: usize, head: Head, payload: &[u8]) -> Result<Sent> {
        self.send_borrowed(dest, head, payload)
    }

    /// Posts a receive that may land straight in `len` bytes at `buf` (for
    /// scoped requests), if the message holds elements of type `element`;
    /// a message that lands is reported in `slot`, not kept for
    /// [`EngineGuard::wait_receive`].
    ///
    /// # Safety
    ///
    /// The buffer and the slot must stay valid until the receive completes
    /// or [`Engine::abandon_receive`] or [`Engine::withdraw_receive`] was
    /// called for it.
    #[inline]
    pub unsafe fn post_lent(
        &mut self,
        sel: Selector,
        buf: *mut u8,
        len: usize,
        element: u16,
        slot: SlotRef,
    ) -> Result<ReceiveId> {
        let buffer = Buffer { ptr: buf, len };
        self.post(sel, Some(Room::Lent { buffer, element, slot }))
    }

    /// Puts a message a receive took back in the queue, in its old place,
    /// or gives it to the earliest receive posted since that accepts it
    /// (see [`Matcher::requeue`]), waking the threads that sleep.
    /// After finalize nothing will receive it: it is named on standard
    /// error as finalize names the messages it found unreceived.
    pub fn requeue(&mut self, env: Envelope) {
        if self.finished {
            if !env.context.is_collective() {
                let line = crate::world::never_received(self.me, &[(env.source, env.tag)]);
                eprintln!("{line}: a scope that was still running gave it back");
            }
            return;
        }
        self.matcher.requeue(env);
        self.note_moved();
    }

    /// Withdraws a receive the engine posted for a collective; a message it
    /// had taken goes back (see [`Matcher::cancel`]), waking the threads
    /// that sleep, since one of their receives may accept it.
    fn cancel_posted(&mut self, id: ReceiveId) {
        if self.matcher.cancel(id) {
            self.note_moved();
        }
    }

    /// Delivers what has arrived over shared memory, if anything has (a
    /// few loads when nothing has).
    pub fn catch_up(&mut self) -> Result<()> {
        let Some(mesh) = self.transport.node() else {
            return Ok(());
        };
        if mesh.anything_arrived() {
            let moved = mesh.move_bytes(&mut self.matcher, false);
            // A peer found gone or broken is judged as in any wait.
            moved.map_err(|e| self.lost(e))?;
            self.advance_schedules();
            self.note_moved();
        }
        Ok(())
    }

    /// Runs a collective's check on the queue as it is.
    pub fn queued_check(&self, check: &mut Check<'_>) -> Result<()> {
        check(&self.matcher)
    }

    /// Withdraws a receive and stops anything from landing in its buffer; a
    /// message it had already taken goes back to the queue (one that landed
    /// in a scope's lent buffer is the scope's to put back: see
    /// [`crate::matching::LandedSlot`]).
    pub fn abandon_receive(&mut self, id: ReceiveId) {
        if let Some(env) = self.withdraw_receive(id) {
            // It may go to a receive another thread sleeps on.
            self.requeue(env);
        }
    }

    /// Withdraws a receive as [`Engine::abandon_receive`] does, but returns
    /// the message it had already taken instead of putting it back (see
    /// [`Matcher::withdraw`]).
    pub fn withdraw_receive(&mut self, id: ReceiveId) -> Option<Envelope> {
        self.transport.detach(id);
        self.matcher.withdraw(id)
    }

    /// Queues a frame that borrows `payload` (`None` if it is done already:
    /// a send to this rank copies it, and a frame written in full at once
    /// borrows nothing). The caller must make the frame owned, or see it
    /// sent, before `payload`'s borrow ends.
    #[inline]
    fn send_borrowed(&mut self, dest: usize, head: Head, payload: &[u8]) -> Result<Sent> {
        self.check_rank(dest)?;
        if dest == self.me {
            return self.send(dest, head, payload.to_vec());
        }
        self.sent += 1;
        let header = self.header(head, payload.len());
        // SAFETY: both callers make the frame owned, or wait until it is
        // sent, before they return.
        unsafe { self.transport.queue_borrowed(dest, header, payload) }.map_err(|e| self.lost(e))
    }

    pub fn is_sent(&mut self, sent: Sent) -> Result<bool> {
        match sent {
            None => Ok(true),
            Some(t) if self.transport.is_sent(t) => Ok(true),
            Some(t) => {
                self.step(Wait::No)?;
                if self.transport.is_lost(t) {
                    return Err(self.gone(t.dest));
                }
                let done = self.transport.is_sent(t);
                if !done {
                    // A wait on it is not a wait on one receive.
                    self.tested = Tested::Several;
                }
                Ok(done)
            }
        }
    }

    fn step(&mut self, wait: Wait) -> Result<()> {
        debug_assert_ne!(wait, Wait::Until(None), "waits sleep through `EngineGuard::pause`");
        self.step_moved(wait).map(|_| ())
    }

    /// Moves what can be moved now (per `wait`, [`Wait::No`] or
    /// [`Wait::Once`]); true if anything moved. Threads of the rank asleep
    /// without the engine are woken: what moved may be theirs.
    fn step_moved(&mut self, wait: Wait) -> Result<bool> {
        self.straight_run = 0;
        let moved = self.transport.progress(&mut self.matcher, wait, &|_| {});
        let moved = moved.map_err(|e| self.lost(e))?;
        if moved {
            self.advance_schedules();
            self.note_moved();
        }
        Ok(moved)
    }

    /// Something moved (a message arrived or was delivered, a send
    /// drained, a collective advanced): counts it for
    /// [`Engine::sleep_for_any`], and wakes the threads that sleep.
    fn note_moved(&mut self) {
        self.moves = self.moves.wrapping_add(1);
        self.wake_sleepers();
    }

    /// Wakes the threads of this rank that sleep without the engine, if
    /// any do.
    fn wake_sleepers(&self) {
        if self.sleepers == 0 || self.transport.wake_sleepers() {
            return;
        }
        for &fd in &self.wake_fds {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live array to an eventfd that
            // its sleeping thread keeps open. A full counter (EAGAIN) has
            // woken the thread already.
            let _ = unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
        }
    }

    /// Gets ready to sleep without the engine held (see `lock.rs`): what to
    /// sleep on, or `None` if there is work after all. A thread that sleeps
    /// on descriptors adds its own wake-up descriptor, `wake`, which another
    /// thread that moves bytes writes to.
    fn prepare_sleep(&mut self, ready: &dyn Fn() -> bool, wake: RawFd) -> Result<Option<Sleep>> {
        // Flushing before the sleep may find a peer gone: judged as in any
        // wait.
        let prepared = self.transport.prepare_sleep(&self.matcher, ready);
        let mut sleep = prepared.map_err(|e| self.lost(e))?;
        if let Some(Sleep::Descriptors(fds)) = &mut sleep {
            fds.push(libc::pollfd {
                fd: wake,
                events: libc::POLLIN,
                revents: 0,
            });
            self.wake_fds.push(wake);
        }
        Ok(sleep)
    }

    /// A thread that slept woke: it no longer needs waking.
    fn end_sleep(&mut self, wake: RawFd) {
        self.wake_fds.retain(|fd| *fd != wake);
        if self.sleepers == 0 {
            self.transport.end_sleep();
        }
    }

    /// A wait made of several sleeps is over.
    pub fn wait_over(&mut self) {
        self.settle();
    }

    /// A wait is over: the status page no longer says it waits.
    fn settle(&mut self) {
        lock::end_idle();
        if let Some(s) = &self.status {
            s.done(self.sent, self.matcher.arrived());
        }
    }

    /// The shared-memory mesh, when every rank shares this node (for the
    /// node-wide collectives).
    pub fn node(&mut self) -> Option<&mut ShmMesh> {
        self.transport.node()
    }

    /// Every rank's node, when the job spans nodes that share memory
    /// within.
    pub fn nodes(&self) -> Option<&[u32]> {
        self.transport.nodes()
    }
}
