//! The receive side of the progress engine: posting receives, waiting on
//! them, probing, and knowing when a message can no longer arrive.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::{Duration, Instant};

use super::{Check, Engine, EngineGuard};
use crate::envelope::{Envelope, Received, Room};
use crate::error::{Error, Result};
use crate::matching::{LandedSlot, ReceiveId};
use crate::selector::{Selector, Status};
use crate::status::WaitOn;
use crate::transport::Wait;
use crate::wire::status::WaitOp;

impl Engine {
    /// Posts a receive. With a `room`, a message of raw numbers of its type
    /// lands there (in a buffer allocated for it when its length is known,
    /// for [`Room::Fresh`]): one copy, like a receive into a buffer the
    /// caller gives.
    #[inline]
    pub fn post(&mut self, sel: Selector, room: Option<Room>) -> Result<ReceiveId> {
        self.check_open()?;
        if let Some(source) = sel.pattern.source_rank() {
            self.check_rank(source)?;
        }
        Ok(self.matcher.post_into(sel, room))
    }
}

/// The waits for receives: they sleep without the engine (see `lock.rs`).
impl EngineGuard<'_> {
    /// Receives the next message `sel` accepts, letting a message of raw
    /// numbers of type `element` that arrives after the receive is posted
    /// land straight in `buf`. One the straight path lands there comes
    /// back in a few words ([`Received::InBuffer`]); any other comes back
    /// in its envelope, which says whether it landed.
    pub fn receive_landing(
        &mut self,
        sel: Selector,
        buf: &mut [u8],
        element: u16,
        timeout: Option<Duration>,
    ) -> Result<Received> {
        let room = Room::given(buf, element);
        if let Some(got) = self.receive_straight(sel, Some(room), timeout.is_none())? {
            return Ok(got);
        }
        self.receive_posted(sel, buf, element, timeout, None)
            .map(Received::Held)
    }

    /// [`Engine::receive_landing`] for a collective, which checks `check` at
    /// every step and says it waits in `on` (so it takes no straight
    /// path); the envelope says whether the message landed.
    pub fn receive_landing_checked(
        &mut self,
        sel: Selector,
        buf: &mut [u8],
        element: u16,
        check: (WaitOn, &mut Check<'_>),
    ) -> Result<Envelope> {
        self.receive_posted(sel, buf, element, None, Some(check))
    }

    /// Posts a receive whose message may land in `buf` and waits for it; a
    /// failed or unwound wait withdraws it.
    fn receive_posted(
        &mut self,
        sel: Selector,
        buf: &mut [u8],
        element: u16,
        timeout: Option<Duration>,
        check: Option<(WaitOn, &mut Check<'_>)>,
    ) -> Result<Envelope> {
        let id = self.post(sel, Some(Room::given(buf, element)))?;
        let result = catch_unwind(AssertUnwindSafe(|| self.wait_receive_checked(id, timeout, check)));
        if !matches!(result, Ok(Ok(_))) {
            // `buf` is about to be released: nothing may write into it.
            self.abandon_receive(id);
        }
        result.unwrap_or_else(|panic| resume_unwind(panic))
    }

    /// Receives the next message `sel` accepts, within `timeout` (`None`:
    /// for ever); a raw message of the room's type lands in it.
    pub fn receive(&mut self, sel: Selector, room: Option<Room>, timeout: Option<Duration>) -> Result<Envelope> {
        if let Some(got) = self.receive_straight(sel, room, timeout.is_none())? {
            return Ok(got.into_envelope());
        }
        let id = self.post(sel, room)?;
        self.wait_receive(id, timeout)
    }

    /// Waits for a posted receive; `None` waits for ever.
    pub fn wait_receive(&mut self, id: ReceiveId, timeout: Option<Duration>) -> Result<Envelope> {
        self.wait_receive_checked(id, timeout, None)
    }

    /// Waits for a posted receive, running a collective's `check` at every
    /// step; the receive is withdrawn if the wait fails.
    pub fn wait_receive_checked(
        &mut self,
        id: ReceiveId,
        timeout: Option<Duration>,
        check: Option<(WaitOn, &mut Check<'_>)>,
    ) -> Result<Envelope> {
        self.wait_receive_until(id, timeout, check, None)?
            .ok_or_else(|| Error::InvalidArgument("this receive's message landed in a scope's buffer".into()))
    }

    /// Waits for a receive posted with [`Engine::post_lent`]: `None` when
    /// its message landed and `slot` says what it was.
    pub fn wait_lent_receive(&mut self, id: ReceiveId, slot: &LandedSlot) -> Result<Option<Envelope>> {
        self.wait_receive_until(id, None, None, Some(slot))
    }

    fn wait_receive_until(
        &mut self,
        id: ReceiveId,
        timeout: Option<Duration>,
        mut check: Option<(WaitOn, &mut Check<'_>)>,
        slot: Option<&LandedSlot>,
    ) -> Result<Option<Envelope>> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let landed = || slot.is_some_and(LandedSlot::is_landed);
        let result = (|| loop {
            if let Some(env) = self.matcher.take(id) {
                return Ok(Some(env));
            }
            self.step(Wait::No)?;
            if let Some(env) = self.matcher.take(id) {
                return Ok(Some(env));
            }
            if landed() {
                return Ok(None);
            }
            let Some(sel) = self.matcher.pending(id) else {
                // Landing: the message is on its way.
                self.pause(deadline, &landed)?;
                continue;
            };
            // Another rank's notice says more than its absence does.
            if let Some((_, check)) = check.as_mut() {
                check(&self.matcher)?;
            }
            self.check_can_arrive(sel, deadline.is_none())?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(timed_out(sel_text(Some(sel)), timeout));
            }
            let on = match &check {
                Some((on, _)) => *on,
                None => WaitOn::selected(WaitOp::Receive, sel, deadline),
            };
            self.sleep_step(on, deadline)?;
        })();
        self.settle();
        if result.is_err() {
            self.abandon_receive(id);
        }
        result
    }
}

impl Engine {
    /// Completes a receive if its message is here, without waiting.
    pub fn test_receive(&mut self, id: ReceiveId) -> Result<bool> {
        if !self.matcher.is_complete(id) {
            self.step(Wait::No)?;
        }
        if let Some(sel) = self.matcher.pending(id) {
            self.check_can_arrive(sel, false)?;
            self.tested = self.tested.and(sel);
        }
        Ok(self.matcher.is_complete(id))
    }
}

/// Probes, which may wait.
impl EngineGuard<'_> {
    /// Looks for a queued message; waits per `wait` if there is none.
    pub fn probe(&mut self, sel: Selector, wait: Option<Option<Duration>>) -> Result<Option<Status>> {
        self.check_open()?;
        if let Some(source) = sel.pattern.source_rank() {
            self.check_rank(source)?;
        }
        // A probe waits for its peers however much is queued.
        self.matcher.watch(sel);
        let result = self.probe_watched(sel, wait);
        self.matcher.unwatch(sel);
        result
    }

    fn probe_watched(&mut self, sel: Selector, wait: Option<Option<Duration>>) -> Result<Option<Status>> {
        self.step(Wait::No)?;
        let Some(timeout) = wait else {
            return Ok(self.matcher.probe(sel));
        };
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let on = WaitOn::selected(WaitOp::Probe, sel, deadline);
        let result = (|| loop {
            if let Some(status) = self.matcher.probe(sel) {
                return Ok(Some(status));
            }
            self.check_can_arrive(sel, deadline.is_none())?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(timed_out(sel_text(Some(sel)), timeout));
            }
            self.sleep_step(on, deadline)?;
        })();
        self.settle();
        result
    }
}

impl Engine {
    /// Fails a receive that can never complete: its only possible senders
    /// are gone. A `blocking` wait (no deadline, one request) also fails if
    /// only this rank could send its message and has not: it would wait for
    /// ever. A test or a timed wait does not: this rank may yet send it
    /// (after the test, or from another thread before the deadline).
    fn check_can_arrive(&mut self, sel: Selector, blocking: bool) -> Result<()> {
        if self.only_this_rank_sends(sel) {
            if blocking {
                return Err(crate::completion::never_sent());
            }
            // (For a wait on several requests, which fails if all do so.)
            crate::completion::note_only_this_rank_sends();
            return Ok(());
        }
        let me = self.me;
        match sel.pattern.source_rank() {
            Some(s) => self.any_can_send(std::iter::once(s)),
            None => match self.members.get(&sel.context.0).cloned() {
                None => self.any_can_send((0..self.size).filter(|r| *r != me)),
                Some(members) => self.any_can_send(members.iter().copied().filter(|r| *r != me)),
            },
        }
    }

    /// Fails a receive whose possible senders, `others` (at least one),
    /// have all gone.
    fn any_can_send(&mut self, mut others: impl Iterator<Item = usize> + Clone) -> Result<()> {
        match others.clone().next() {
            Some(first) if !others.any(|r| !self.transport.is_gone(r)) => Err(self.gone(first)),
            _ => Ok(()),
        }
    }

    /// True if only this rank could send what `sel` accepts: it names this
    /// rank, or any rank of a communicator this rank is alone in.
    fn only_this_rank_sends(&self, sel: Selector) -> bool {
        match sel.pattern.source_rank() {
            Some(s) => s == self.me,
            None => match self.members.get(&sel.context.0) {
                None => self.size == 1,
                Some(members) => members.iter().all(|r| *r == self.me),
            },
        }
    }
}

fn sel_text(sel: Option<Selector>) -> String {
    match sel {
        None => "a message".to_string(),
        Some(s) => pattern_text(&s.pattern),
    }
}

/// "a message from rank 3 with any tag", for errors.
pub(crate) fn pattern_text(pattern: &crate::selector::Match) -> String {
    let from = pattern
        .source_rank()
        .map_or("any rank".to_string(), |r| format!("rank {r}"));
    let tag = pattern
        .tag_value()
        .map_or("any tag".to_string(), |t| format!("tag {t}"));
    format!("a message from {from} with {tag}")
}

pub(crate) fn timed_out(what: String, timeout: Option<Duration>) -> Error {
    Error::Timeout {
        what,
        seconds: timeout.map_or(0.0, |t| t.as_secs_f64()),
    }
}
