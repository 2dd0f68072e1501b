//! The matcher as a transport's sink: what a transport hands arrived
//! messages to, and where each lands (the posted receive that gets it,
//! straight into its buffer where it can).

use super::landed::Landed;
use super::{Claimed, Matcher, Posted, QUEUED_IN_ALL, QUEUED_PER_PEER, ReceiveId, remove_at};
use crate::envelope::{Envelope, Format, Landing, Room};
use crate::selector::Selector;
use crate::wire::Context;

/// What a transport hands arrived messages to.
pub(crate) trait Sink {
    /// A whole message, to be matched.
    fn deliver(&mut self, env: Envelope);
    /// Asked when a message's header arrives: if the receive that will get
    /// it has room for it (a buffer of at least `len` bytes, for raw numbers
    /// of the same type), claims that receive and returns where to write
    /// the payload.
    fn claim(&mut self, source: usize, tag: u32, context: Context, format: Format, len: u64) -> Option<Landing>;
    /// A claimed message is complete.
    fn landed(&mut self, id: ReceiveId, env: Envelope);
    /// The messages that have arrived so far, for the status page (0 for a
    /// sink that does not count them).
    fn arrived(&self) -> u64 {
        0
    }
    /// A whole message in hand (a fastbox's, or a frame whose bytes are all
    /// staged; `head` describes it): lands it in the receive that gets it,
    /// as [`Sink::claim`] then [`Sink::landed`] would; false (and nothing
    /// done) if that receive has no room for it.
    fn land_whole(&mut self, head: &Arrived, payload: &[u8]) -> bool {
        let len = payload.len() as u64;
        let Some(landing) = self.claim(head.source, head.tag, head.context, head.format, len) else {
            return false;
        };
        // SAFETY: a claimed landing has room for `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), landing.ptr, payload.len()) };
        self.landed(landing.id, Envelope::of_landed(head, len));
        true
    }
    /// Whether to read more from `source` now: false when this rank holds
    /// as much as it keeps of messages nobody has asked for, and no posted
    /// receive could take one from `source`.
    fn wants(&self, _source: usize) -> bool {
        true
    }
    /// From now on, keep to the queue bound whatever this rank waits for:
    /// finalize's last reads, once nobody waits on this rank, take what
    /// arrives only up to the bound.
    fn keep_to_bound(&mut self) {}
    /// The engine's matcher itself, if this sink is one: a transport's loop
    /// over many small messages (the fastboxes') calls it directly, with
    /// its landing in line, instead of through the trait once a message.
    fn as_matcher(&mut self) -> Option<&mut Matcher> {
        None
    }
}

/// What a message's header says, for [`Sink::land_whole`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrived {
    pub source: usize,
    pub tag: u32,
    pub context: Context,
    pub format: Format,
    pub call: u32,
}

impl Arrived {
    /// What the checked header `h` of a message from job rank `source`
    /// says.
    pub fn of_header(source: usize, h: &crate::wire::Header) -> Arrived {
        Arrived {
            source,
            tag: h.tag,
            context: h.context,
            format: Format::of(h.kind, h.element),
            call: h.call,
        }
    }
}

impl Matcher {
    /// The receive that gets a message of `len` bytes in `format` from
    /// `source` (the earliest posted one that accepts it: only that one may
    /// take it), if the message can land in its room: its place among the
    /// posted receives, where to write the message and the buffer made for
    /// it (a fresh room). The receive stays posted: the caller takes it
    /// out (`remove_at`) once it has used the room, so that nothing as
    /// large as a receive is moved on the way.
    fn find_landing(
        &self,
        source: usize,
        tag: u32,
        context: Context,
        format: Format,
        len: u64,
    ) -> Option<(usize, *mut u8, Option<crate::envelope::FreshBuffer>)> {
        if format == Format::Serde {
            return None;
        }
        let accepts = |p: &Posted| p.sel.accepts_from(source, tag, context);
        // The front one, in a stream of receives each taking the next
        // message: no search.
        let (i, p) = match self.posted.front() {
            Some(p) if accepts(p) => (0, p),
            _ => self.posted.iter().enumerate().find(|(_, p)| accepts(p))?,
        };
        let (ptr, fresh) = p.room.as_ref()?.landing(format, len)?;
        Some((i, ptr, fresh))
    }

    /// Lands a whole message in the front posted receive if that one takes
    /// it and lent its buffer: a stream's usual case, done with nothing
    /// moved but the payload (see `land_in_any` for the rest).
    #[inline(always)]
    fn land_in_front_lent(&mut self, head: &Arrived, payload: &[u8]) -> bool {
        let len = payload.len() as u64;
        let Some(Posted {
            sel,
            room: Some(room @ Room::Lent { slot, .. }),
            ..
        }) = self.posted.front()
        else {
            return false;
        };
        if !sel.accepts_from(head.source, head.tag, head.context) {
            return false;
        }
        let Some((ptr, None)) = room.landing(head.format, len) else {
            return false;
        };
        let slot = *slot;
        // SAFETY: the receive's room has space for `len` bytes at `ptr`.
        unsafe { crate::short_copy::copy_short(payload, ptr) };
        let arrival = self.next_arrival();
        slot.land(&Landed::of_arrived(head, len, arrival));
        self.posted.pop_front();
        true
    }

    /// [`Sink::land_whole`] of a message the front receive does not take
    /// into a lent buffer: the receive that gets it, wherever it is among
    /// the posted ones, if the message can land in its room.
    #[inline(never)]
    fn land_in_any(&mut self, head: &Arrived, payload: &[u8]) -> bool {
        let len = payload.len() as u64;
        let Some((i, ptr, fresh)) = self.find_landing(head.source, head.tag, head.context, head.format, len) else {
            return false;
        };
        // SAFETY: the receive's room has space for `len` bytes at `ptr`.
        unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), ptr, payload.len()) };
        let arrival = self.next_arrival();
        // A lent room's scope learns of it from its slot (nothing to build).
        if let Some(Room::Lent { slot, .. }) = self.posted[i].room {
            slot.land(&Landed::of_arrived(head, len, arrival));
            remove_at(&mut self.posted, i);
            return true;
        }
        let Some(p) = remove_at(&mut self.posted, i) else {
            return false;
        };
        let mut env = Envelope::of_landed(head, len);
        env.fresh = fresh;
        env.arrival = arrival;
        self.completed.push((p.id, env, p.room));
        true
    }

    /// The next message's arrival number.
    fn next_arrival(&mut self) -> u64 {
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        arrival
    }
}

impl Sink for Matcher {
    fn deliver(&mut self, env: Envelope) {
        Matcher::deliver(self, env);
    }
    fn arrived(&self) -> u64 {
        Matcher::arrived(self)
    }

    fn claim(&mut self, source: usize, tag: u32, context: Context, format: Format, len: u64) -> Option<Landing> {
        let (i, ptr, fresh) = self.find_landing(source, tag, context, format, len)?;
        let p = remove_at(&mut self.posted, i)?;
        let arrival = self.next_arrival();
        self.landing.push(Claimed {
            id: p.id,
            source,
            room: p.room,
            fresh,
            arrival,
        });
        Some(Landing { id: p.id, ptr })
    }

    fn landed(&mut self, id: ReceiveId, mut env: Envelope) {
        if let Some(i) = self.landing.iter().position(|c| c.id == id) {
            let c = self.landing.swap_remove(i);
            env.fresh = c.fresh;
            env.arrival = c.arrival;
            match c.room {
                // The scope that lent the buffer learns of it from its slot.
                Some(Room::Lent { slot, .. }) => slot.land(&Landed::of(&env)),
                room => self.completed.push((id, env, room)),
            }
        }
    }

    /// In line where the caller knows the sink is a matcher (see
    /// [`Sink::as_matcher`]): a stream's usual case is the front receive's
    /// lent buffer; the rest is out of line.
    #[inline(always)]
    fn land_whole(&mut self, head: &Arrived, payload: &[u8]) -> bool {
        self.land_in_front_lent(head, payload) || self.land_in_any(head, payload)
    }

    fn keep_to_bound(&mut self) {
        self.bounded = true;
    }

    fn as_matcher(&mut self) -> Option<&mut Matcher> {
        Some(self)
    }

    fn wants(&self, source: usize) -> bool {
        // No peer holds more than all of them together: below one peer's
        // bound in all, nothing to look up (this runs for every peer at
        // every look for messages).
        if self.queued_total < QUEUED_PER_PEER || (self.reading_all > 0 && !self.bounded) {
            return true;
        }
        let mine = self.queued_bytes.get(&source).copied().unwrap_or(0);
        if mine < QUEUED_PER_PEER && self.queued_total < QUEUED_IN_ALL {
            return true;
        }
        let accepts = |sel: &Selector| sel.pattern.source_rank().is_none_or(|s| s == source);
        self.posted.iter().any(|p| accepts(&p.sel))
            || self.watched.iter().any(accepts)
            || self.landing.iter().any(|c| c.source == source)
    }
}
