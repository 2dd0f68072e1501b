//! Where the matching engine reports a message that landed in a buffer a
//! scope lent: a slot the scope owns, which its wait reads without taking
//! the engine. A window of scoped receives then costs one engine visit per
//! receive (the post) instead of two.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::envelope::{Envelope, Format};
use crate::selector::Status;
use crate::wire::Context;

/// What a landed message was: written by the thread that holds the
/// engine, read by the thread that waits on the receive.
#[derive(Debug, Default)]
pub(crate) struct LandedSlot {
    /// 1 once the fields below say what landed (stored last, Release).
    landed: AtomicU32,
    source: AtomicU64,
    tag: AtomicU32,
    context: AtomicU32,
    call: AtomicU32,
    len: AtomicU64,
    arrival: AtomicU64,
}

impl LandedSlot {
    /// True once a message has landed.
    pub fn is_landed(&self) -> bool {
        self.landed.load(Ordering::Acquire) == 1
    }

    /// The landed message as an envelope (its payload in the buffer, of
    /// raw `element`s), if one has landed.
    pub fn envelope(&self, element: u16) -> Option<Envelope> {
        if !self.is_landed() {
            return None;
        }
        let load = |a: &AtomicU32| a.load(Ordering::Relaxed);
        let source = self.source.load(Ordering::Relaxed) as usize;
        let context = Context(load(&self.context));
        let mut env = Envelope::new(source, load(&self.tag), context, Format::Raw(element), Vec::new());
        env.call = load(&self.call);
        env.landed = Some(self.len.load(Ordering::Relaxed));
        env.arrival = self.arrival.load(Ordering::Relaxed);
        Some(env)
    }

    /// The landed message's status (its source a job rank), if one has
    /// landed: all a stream's receive needs, with no envelope made.
    #[inline]
    pub fn status(&self, element: u16) -> Option<Status> {
        if !self.is_landed() {
            return None;
        }
        let source = self.source.load(Ordering::Relaxed) as usize;
        let tag = self.tag.load(Ordering::Relaxed);
        Some(Status::new(source, tag, self.len.load(Ordering::Relaxed), element))
    }

    /// Empties the slot for another receive (nothing may refer to it).
    #[inline]
    pub fn clear(&self) {
        self.landed.store(0, Ordering::Relaxed);
    }

    /// Records what landed.
    fn land(&self, what: &Landed) {
        self.source.store(what.source as u64, Ordering::Relaxed);
        self.tag.store(what.tag, Ordering::Relaxed);
        self.context.store(what.context.0, Ordering::Relaxed);
        self.call.store(what.call, Ordering::Relaxed);
        self.len.store(what.len, Ordering::Relaxed);
        self.arrival.store(what.arrival, Ordering::Relaxed);
        self.landed.store(1, Ordering::Release);
    }
}

/// What a slot says of a message that landed.
pub(super) struct Landed {
    pub source: usize,
    pub tag: u32,
    pub context: Context,
    pub call: u32,
    pub len: u64,
    pub arrival: u64,
}

impl Landed {
    /// What a message described by `head`, of `len` bytes, arrival number
    /// `arrival`, is once landed.
    pub fn of_arrived(head: &super::Arrived, len: u64, arrival: u64) -> Landed {
        Landed {
            source: head.source,
            tag: head.tag,
            context: head.context,
            call: head.call,
            len,
            arrival,
        }
    }

    /// What `env` (landed, its length set) was.
    pub fn of(env: &Envelope) -> Landed {
        Landed {
            source: env.source,
            tag: env.tag,
            context: env.context,
            call: env.call,
            len: env.landed.unwrap_or(0),
            arrival: env.arrival,
        }
    }
}

/// A scope's slot, as the matching engine holds it while the receive is
/// posted or landing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotRef(NonNull<LandedSlot>);

// SAFETY: the slot is written only through atomics, and its scope keeps
// it alive until the receive has been waited for or withdrawn, after which
// the engine holds no copy of it.
unsafe impl Send for SlotRef {}

impl SlotRef {
    /// The slot at `slot`, which must outlive every use the engine makes
    /// of this value (until its receive completes or is withdrawn).
    pub fn new(slot: &LandedSlot) -> SlotRef {
        SlotRef(NonNull::from(slot))
    }

    /// Records that a message landed in the receive's buffer.
    pub(super) fn land(self, what: &Landed) {
        // SAFETY: see `new`: the slot outlives the receive, which is still
        // posted or landing (not withdrawn) when this is called.
        unsafe { self.0.as_ref() }.land(what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_gives_back_what_landed() {
        let slot = LandedSlot::default();
        assert!(slot.envelope(3).is_none());
        let mut env = Envelope::new(5, 7, Context(9), Format::Raw(3), Vec::new());
        env.call = 2;
        env.landed = Some(24);
        env.arrival = 11;
        SlotRef::new(&slot).land(&Landed::of(&env));
        let back = slot.envelope(3).expect("landed");
        assert_eq!(
            (
                back.source,
                back.tag,
                back.context,
                back.call,
                back.landed,
                back.arrival,
                back.format
            ),
            (5, 7, Context(9), 2, Some(24), 11, Format::Raw(3))
        );
    }
}
