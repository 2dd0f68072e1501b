//! The waits of a rank other than receives and immediate collectives:
//! until a send has left, until anything moves, and the node-wide
//! collectives' wait on the shared region.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::{Duration, Instant};

use super::{Check, Engine, EngineGuard, Head, Sent};
use crate::error::{Error, Result};
use crate::selector::Selector;
use crate::status::WaitOn;
use crate::transport::Wait;
use crate::wire::status::WaitOp;

/// A node-wide wait looks whether a rank it waits for has left before it
/// sleeps, and this often in a run of steps that do not sleep (a rank
/// flooded with messages may never sleep, and each of its steps may take
/// long).
const LEAVE_CHECK_EVERY: Duration = Duration::from_millis(1);

/// The waits other than receives: they sleep without the engine (see
/// `lock.rs`).
impl EngineGuard<'_> {
    /// Sends `payload` straight from the caller's memory and waits until it
    /// has left this process: no copy for a large message.
    #[inline]
    pub fn send_now(&mut self, dest: usize, head: Head, payload: &[u8]) -> Result<()> {
        let Some(ticket) = self.send_borrowed(dest, head, payload)? else {
            return Ok(());
        };
        // Whatever happens, even a panic, the queue must not keep pointing
        // into `payload` once this call ends.
        let result = catch_unwind(AssertUnwindSafe(|| self.wait_sent(Some(ticket), dest)));
        self.own_sent(Some(ticket));
        result.unwrap_or_else(|panic| resume_unwind(panic))
    }

    /// Starts a send without waiting: writes what fits now straight from
    /// `payload`, and copies only the rest to be written later. A message
    /// that goes as an offer is copied first, so that the receiver copies
    /// from memory the queue owns.
    pub fn send_eager(&mut self, dest: usize, head: Head, payload: &[u8]) -> Result<Sent> {
        if self.transport.would_offer(dest, payload.len()) {
            return self.send(dest, head, crate::pool::copy_of(payload));
        }
        let sent = self.send_borrowed(dest, head, payload)?;
        self.own_sent(sent);
        Ok(sent)
    }

    /// Copies what a lent send has not written yet, ending its borrow. A
    /// send that went as an offer cannot be copied while the receiver may
    /// be copying from it: this waits until the receiver has taken it, or
    /// has finalized or gone. Never panics, so that a scope can call it
    /// while unwinding.
    pub fn own_sent(&mut self, sent: Sent) {
        let Some(ticket) = sent else { return };
        // The common case (nothing offered) costs one look.
        if self.transport.own(ticket) {
            return;
        }
        let on = WaitOn::p2p(WaitOp::Send, Some(ticket.dest), None, 0);
        self.matcher.begin_read_all();
        while !self.transport.own(ticket) {
            // An error here is another's to report; the receiver's own
            // failure or end stops it from copying, which `own` sees.
            if self.sleep_step(on, None).is_err() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        self.matcher.end_read_all();
        // The wait is over: the page no longer says it (it may have slept).
        self.settle();
    }

    /// Waits until a send has left this process.
    pub fn wait_sent(&mut self, sent: Sent, dest: usize) -> Result<()> {
        let Some(ticket) = sent else { return Ok(()) };
        let on = WaitOn::p2p(WaitOp::Send, Some(dest), None, 0);
        self.matcher.begin_read_all();
        let result = (|| {
            while !self.transport.is_sent(ticket) {
                if self.transport.is_closed(dest) {
                    // It may have taken an offer just before it closed:
                    // read what it wrote last before giving up on it.
                    self.step(Wait::No)?;
                    if self.transport.is_sent(ticket) {
                        break;
                    }
                    return Err(self.gone(dest));
                }
                self.sleep_step(on, None)?;
            }
            Ok(())
        })();
        self.matcher.end_read_all();
        self.settle();
        result
    }

    /// One step that may sleep, with the status page ready to say on what.
    pub(super) fn sleep_step(&mut self, on: WaitOn, deadline: Option<Instant>) -> Result<()> {
        self.note_wait(on);
        self.pause(deadline, &|| false)
    }

    /// Notes a step of the wait on `on`; one that has gone on for long
    /// without sleeping goes on the status page as busy (see
    /// [`crate::status::StatusWriter::note`]).
    fn note_wait(&mut self, on: WaitOn) {
        if let Some(s) = &self.status {
            if let Some(busy) = s.note(on, self.moves) {
                s.publish_busy(busy, self.sent, self.matcher.arrived());
            }
        }
    }

    /// A wait on requests is about to look at them: the engine's count of
    /// moves (see [`Engine::sleep_for_any`]), and the receives it finds
    /// pending are noted afresh, to name the wait.
    pub fn begin_look(&mut self) -> u64 {
        self.tested = Tested::Nothing;
        self.moves
    }

    /// Sleeps until anything moves (a message arrives, a send drains, a
    /// peer leaves), with the status page saying this rank waits for any
    /// of several requests.
    ///
    /// Does not sleep if anything moved since `moves` ([`Engine::begin_look`]
    /// before the caller tested its requests): testing a later request may
    /// have completed an earlier one, which nothing would then wake.
    ///
    /// Every call is a step of the wait, noted for the status page, slept
    /// or not: a wait that keeps finding something moved is as busy as one
    /// that keeps moving messages itself.
    ///
    /// The wait is named by the receive its requests wait for, if the
    /// last look found one pending (or several with the same selector),
    /// else as a receive from any rank with any tag.
    pub fn sleep_for_any(&mut self, deadline: Option<Instant>, moves: u64) -> Result<()> {
        self.check_open()?;
        let on = match std::mem::take(&mut self.tested) {
            Tested::One(sel) => WaitOn::selected(WaitOp::Receive, sel, deadline),
            Tested::Nothing | Tested::Several => WaitOn {
                deadline,
                ..WaitOn::p2p(WaitOp::Receive, None, None, 0)
            },
        };
        self.note_wait(on);
        if self.moves != moves {
            return Ok(());
        }
        self.pause(deadline, &|| false)
    }

    /// The first of the ranks `missing` names, or the error that one of
    /// them has left.
    fn first_missing(&mut self, missing: &dyn Fn() -> Vec<usize>) -> Result<Option<usize>> {
        let absent = missing();
        match absent.iter().find(|r| self.has_left(**r)) {
            Some(&r) => Err(self.left(r)),
            None => Ok(absent.first().copied()),
        }
    }

    /// Waits until `ready` says so, moving point-to-point bytes meanwhile
    /// (so that a peer blocked in a send to this rank can finish and join
    /// the collective) and running `check` at every step; fails if a rank
    /// `missing` names (those not there yet) has left. Before it sleeps, the
    /// status page says `waiting(first missing rank)`. Only for a node-wide
    /// collective ([`Engine::node`]).
    pub fn node_wait(
        &mut self,
        ready: &dyn Fn() -> bool,
        missing: &dyn Fn() -> Vec<usize>,
        waiting: &dyn Fn(Option<usize>) -> WaitOn,
        check: &mut Check<'_>,
    ) -> Result<()> {
        self.matcher.begin_read_all();
        let deadline = waiting(None).deadline;
        let mut leave_checked = Instant::now();
        let result = (|| {
            while !ready() {
                check(&self.matcher)?;
                if ready() {
                    break;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(Error::Timeout {
                        what: "the other ranks of a node-wide collective".into(),
                        seconds: 0.0,
                    });
                }
                // Who is missing, and whether one of them has left, takes a
                // look at every rank: before each sleep, and now and then in
                // a long run of steps that do not sleep, not at every poll.
                if leave_checked.elapsed() >= LEAVE_CHECK_EVERY {
                    leave_checked = Instant::now();
                    let first_missing = self.first_missing(missing)?;
                    self.note_wait(waiting(first_missing));
                }
                let engine: &mut Engine = self;
                let Some(mesh) = engine.transport.node() else {
                    return Err(Error::InvalidArgument("a node-wide wait without shared memory".into()));
                };
                if mesh.move_bytes(&mut engine.matcher, true)? {
                    self.advance_schedules();
                    self.note_moved();
                    continue;
                }
                if ready() || self.poll_for_work(ready) {
                    continue;
                }
                let first_missing = self.first_missing(missing)?;
                self.note_wait(waiting(first_missing));
                self.sleep_unlocked(deadline, ready)?;
            }
            Ok(())
        })();
        self.matcher.end_read_all();
        self.settle();
        result.map_err(|e| self.lost(e))
    }
}

/// The receives a look at requests found pending: none, one selector
/// (however many receives have it), or several.
#[derive(Debug, Clone, Copy, Default)]
pub(super) enum Tested {
    #[default]
    Nothing,
    One(Selector),
    Several,
}

impl Tested {
    /// This, with a receive of `sel` found pending too.
    pub(super) fn and(self, sel: Selector) -> Tested {
        match self {
            Tested::Nothing => Tested::One(sel),
            Tested::One(before) if before == sel => self,
            _ => Tested::Several,
        }
    }
}
