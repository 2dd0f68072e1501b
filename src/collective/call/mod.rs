//! One collective call: its number on its communicator and its signature
//! (which collective, which root), carried by every message it sends; the
//! notice by which a rank that fails in a collective tells every other
//! rank; and the check every collective wait makes, so that ranks that
//! call different collectives, or whose partner failed, get an error
//! instead of waiting for ever.
//!
//! A collective message carries `number << 16 | signature` in its header's
//! call field. While it waits, a rank looks at the collective messages
//! queued for it, and, on a shared node, at the call every other rank says
//! it is in: another rank's notice is an error; so is a message of this
//! call with another signature, or one of another call where this rank
//! waits for one of this call.
//!
//! A collective that fails other than in this rank's own buffers after it
//! completed breaks the communicator's collectives: ranks no longer agree on
//! where they are, so every later collective fails at once on this rank,
//! and every other rank learns of the failure at the collective where it
//! next waits (at the latest), from the notice. Point-to-point messages go
//! on working.

use std::cell::{Cell, RefCell};

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::Ordering;

use crate::communicator::Communicator;
use crate::envelope::{Envelope, Format};
use crate::error::{Error, Result};
use crate::matching::Matcher;
use crate::progress::{EngineGuard, Head};
use crate::status::WaitOn;
use crate::wire::Context;
use crate::wire::status::WaitOp;

use super::node::Node;

mod messages;
mod pace;
mod signature;

pub(crate) use signature::{Kind, describe, different, noticed, signature};

/// The tag of a notice: no algorithm uses it.
pub(crate) const NOTICE: u32 = u32::MAX;

/// What a communicator remembers of its collectives.
#[derive(Debug, Default)]
pub(crate) struct Calls {
    /// The number of the last call (wrapping).
    last: Cell<u16>,
    /// The number of the last call after which the ranks were in step
    /// (see `pace.rs`).
    paced: Cell<u16>,
    /// Why the collectives are broken, once one has failed.
    broken: RefCell<Option<String>>,
    /// The tag of the last `immediate_` collective (wrapping).
    immediate: Cell<u32>,
}

impl Calls {
    /// True until a collective fails.
    pub fn working(&self) -> bool {
        self.broken.borrow().is_none()
    }
}

/// True if call `a` came before call `b` (16-bit numbers that wrap).
pub(crate) fn before(a: u16, b: u16) -> bool {
    let d = b.wrapping_sub(a);
    d != 0 && d < 0x8000
}

/// One collective call under way.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call {
    pub number: u16,
    pub sig: u16,
    /// The context of the communicator's collectives.
    pub context: Context,
    /// The node region where every rank says which call it is in, when the
    /// ranks share one.
    peers: Option<Node>,
    /// When its waits give up (`barrier_timeout`).
    pub deadline: Option<std::time::Instant>,
}

impl Call {
    /// True if the ranks share a node, where each says which call it is in.
    pub fn shares_node(&self) -> bool {
        self.peers.is_some()
    }

    /// The call field of this call's messages.
    pub fn word(&self) -> u32 {
        u32::from(self.number) << 16 | u32::from(self.sig)
    }

    /// How the status page describes a wait of this call on `peer`.
    pub fn waiting(&self, peer: Option<usize>) -> WaitOn {
        WaitOn {
            op: WaitOp::Collective,
            peer,
            tag: None,
            context: self.context.0,
            call: u32::from(self.number),
            sig: self.sig,
            deadline: self.deadline,
        }
    }

    fn name(&self) -> String {
        format!("{} (collective call #{})", describe(self.sig), self.number)
    }

    /// The error for a message `env` of this communicator's collectives
    /// that is not this call's, if it tells of a failure or a mismatch. A
    /// message still queued (`received` false) of a later call is a rank
    /// ahead of this one, not an error.
    fn foreign(&self, env: &Envelope, received: bool) -> Option<Error> {
        let (number, sig) = ((env.call >> 16) as u16, env.call as u16);
        let earlier = before(number, self.number);
        if env.tag == NOTICE {
            if !(earlier || number == self.number) {
                return None;
            }
            let text = String::from_utf8_lossy(&env.payload);
            let when = if earlier {
                format!(" (call #{number}, whose part this rank had done)")
            } else {
                String::new()
            };
            return Some(Error::CollectiveFailed {
                rank: env.source,
                detail: format!("in {}{when}: {text}", describe(sig)),
            });
        }
        if number == self.number && sig != self.sig {
            return Some(different(self.number, env.source, sig, self.sig));
        }
        if earlier || (received && number != self.number) {
            let which = if earlier { "an earlier" } else { "a later" };
            return Some(Error::CollectiveMismatch {
                detail: format!(
                    "rank {} sent a message of {which} collective call, #{number} ({}), where this rank is in {}",
                    env.source,
                    describe(sig),
                    self.name()
                ),
            });
        }
        None
    }

    /// The check a wait of this call runs at every step: the queue (other
    /// ranks' notices, messages of other calls), and which call every rank
    /// of the node says it is in.
    pub fn check(&self) -> impl FnMut(&Matcher) -> Result<()> + '_ {
        move |matcher| {
            let found = matcher
                .queued_in(self.context)
                .filter(|e| e.tag == NOTICE || e.call != self.word())
                .find_map(|e| self.foreign(e, false));
            if let Some(e) = found {
                return Err(e);
            }
            let immediate = Context::immediate(self.context.communicator());
            // An immediate call's message with this call's number, or a
            // notice of a failure in this call or an earlier one.
            let here = |e: &&Envelope| {
                let number = (e.call >> 16) as u16;
                number == self.number || (e.tag == NOTICE && before(number, self.number))
            };
            if let Some(e) = matcher.queued_in(immediate).find(here) {
                if e.tag == NOTICE {
                    return Err(noticed(e));
                }
                return Err(different(self.number, e.source, e.call as u16, self.sig));
            }
            self.check_peers()
        }
    }

    /// A rank of the node in this call under another signature is an error.
    fn check_peers(&self) -> Result<()> {
        let Some(node) = self.peers else { return Ok(()) };
        for r in (0..node.n).filter(|r| *r != node.me) {
            let said = node.slots.current(r).load(Ordering::Acquire);
            if said >> 63 == 0 {
                continue;
            }
            let (number, sig) = ((said >> 16) as u16, said as u16);
            if number == self.number && sig != self.sig {
                return Err(different(self.number, r, sig, self.sig));
            }
        }
        Ok(())
    }
}

impl Communicator {
    /// Numbers an `immediate_` collective among all the communicator's
    /// collectives: (its call field, its tag, the shared region the
    /// communicator's blocking collectives use, if any, and the engine, held
    /// for the call to start its schedule with), or the error that the
    /// collectives are broken or the engine cannot be had.
    pub(crate) fn immediate_call(
        &self,
        kind: Kind,
        root: usize,
    ) -> Result<(u32, u32, Option<super::node::Node>, EngineGuard<'_>)> {
        // Before it takes a number: a call refused takes none.
        crate::progress::check_not_combining()?;
        let calls = self.calls();
        if let Some(why) = calls.broken.borrow().as_ref() {
            return Err(Error::CollectivesBroken { detail: why.clone() });
        }
        let number = calls.last.get().wrapping_add(1);
        calls.last.set(number);
        let tag = calls.immediate.get().wrapping_add(1) % NOTICE;
        calls.immediate.set(tag);
        let word = u32::from(number) << 16 | u32::from(signature(kind, root, false));
        // On a shared node, a rank in a blocking collective of this number
        // sees this call there, as it would a blocking one; a rank that
        // has finalized fails first, before its slot says it is in a call.
        // The region first: the first look for it takes the engine.
        let node = self.node_region();
        let engine = self.engine()?;
        if let Some(node) = node {
            node.slots
                .current(node.me)
                .store(1 << 63 | u64::from(word), Ordering::Release);
        }
        Ok((word, tag, node, engine))
    }

    /// Remembers that an `immediate_` collective failed with `e`: the
    /// ranks no longer agree on where they are, as after a blocking one.
    pub(crate) fn immediate_failed(&self, e: &Error) {
        if matches!(e, Error::Finalized) {
            return;
        }
        let mut broken = self.calls().broken.borrow_mut();
        if broken.is_none() {
            *broken = Some(format!("in an immediate collective: {e}"));
        }
    }

    /// Runs one collective: numbers the call, runs `body`, and if it fails
    /// tells every other rank (unless the failure was another rank's
    /// notice) and remembers the failure.
    pub(crate) fn collective<T>(&self, kind: Kind, root: usize, body: impl FnOnce(&Call) -> Result<T>) -> Result<T> {
        self.sized_collective(kind, root, false, body)
    }

    /// [`Communicator::collective`] for a collective whose algorithm depends on
    /// whether it moves more than 4 KiB per rank (`large`): ranks on both
    /// sides of that line call different collectives.
    pub(crate) fn sized_collective<T>(
        &self,
        kind: Kind,
        root: usize,
        large: bool,
        body: impl FnOnce(&Call) -> Result<T>,
    ) -> Result<T> {
        self.collective_until(kind, root, large, None, body)
    }

    /// [`Communicator::sized_collective`] whose waits give up with
    /// [`Error::Timeout`] at `deadline`, which fails the call as any error
    /// does.
    pub(crate) fn collective_until<T>(
        &self,
        kind: Kind,
        root: usize,
        large: bool,
        deadline: Option<std::time::Instant>,
        body: impl FnOnce(&Call) -> Result<T>,
    ) -> Result<T> {
        // Before it takes a number: a call refused takes none.
        crate::progress::check_not_combining()?;
        let calls = self.calls();
        let number = calls.last.get().wrapping_add(1);
        calls.last.set(number);
        let peers = self.node_region();
        let call = Call {
            number,
            sig: signature(kind, root, large),
            context: self.coll_context(),
            peers,
            deadline,
        };
        if let Some(why) = calls.broken.borrow().as_ref() {
            return Err(Error::CollectivesBroken { detail: why.clone() });
        }
        // Another rank's failure that has arrived already ends this call
        // before it starts; a rank that has finalized fails here, before
        // its slot says it is in a call.
        let arrived = {
            let engine = self.engine()?;
            let immediate = Context::immediate(call.context.communicator());
            engine
                .queued_check(&mut call.check())
                .and_then(|()| engine.stray_immediate(immediate, number))
        };
        if let Some(node) = peers {
            node.slots
                .current(node.me)
                .store(1 << 63 | u64::from(call.word()), Ordering::Release);
        }
        let steps = self.node_steps();
        let mut result = match arrived {
            Ok(()) => match catch_unwind(AssertUnwindSafe(|| body(&call))) {
                Ok(Ok(value)) => self.keep_pace(&call, kind, steps).map(|()| value),
                Ok(result) => result,
                Err(panic) => {
                    // An operator (or a value's serde code) panicked: the
                    // others are told, as of any failure here, before the
                    // panic goes on; they would wait for this rank's part
                    // otherwise.
                    let text = crate::progress::panic_text(&*panic);
                    let e = Error::InvalidArgument(format!("{} panicked on this rank: {text}", call.name()));
                    *calls.broken.borrow_mut() = Some(format!("in {}: {e}", call.name()));
                    self.tell_others(&call, &e);
                    resume_unwind(panic);
                }
            },
            Err(e) => Err(e),
        };
        if let Err(Error::PeerGone { .. }) = &result {
            // A rank that failed this call tells the others before it goes:
            // its notice, read before its leaving, says more.
            if let Err(notice) = self.engine()?.queued_check(&mut call.check()) {
                result = Err(notice);
            }
        }
        if let Err(e) = &result {
            *calls.broken.borrow_mut() = Some(format!("in {}: {e}", call.name()));
            if !matches!(e, Error::CollectiveFailed { .. }) {
                self.tell_others(&call, e);
            }
        }
        self.ranked(result)
    }

    /// Sends a notice of this rank's failure in `call` to every other rank
    /// (best effort: a rank that has gone gets nothing).
    fn tell_others(&self, call: &Call, e: &Error) {
        let text = e.to_string().into_bytes();
        let head = Head {
            context: call.context,
            tag: NOTICE,
            call: call.word(),
            format: Format::Serde,
        };
        let Some(mut engine) = self.engine_for_cleanup() else {
            return;
        };
        for dest in (0..self.size()).filter(|d| *d != self.rank()).map(|d| self.job_rank(d)) {
            if !engine.has_left(dest) {
                let _ = engine.send(dest, head, text.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_numbers_wrap_and_stay_ordered() {
        assert!(before(1, 2));
        assert!(before(u16::MAX, 1));
        assert!(!before(2, 2));
        assert!(!before(3, 2));
    }
}
