//! Message matching, independent of any transport: which receive gets which
//! message, the queue of messages that arrived before their receive, and
//! the posted receives waiting for a message.
//!
//! Rules (MPI's): a message goes to the earliest posted receive that matches
//! it; a new receive takes the earliest arrived message that matches it.
//! Since a transport delivers the messages of one sender in the order they
//! were sent, messages from one source with one tag are received in order.
//! A message that goes back to the queue (its receive was withdrawn, or
//! asked for another type) takes its old place in arrival order, or goes
//! to the earliest receive posted since that accepts it.

mod landed;

use std::collections::{HashMap, VecDeque};

use landed::Landed;
pub(crate) use landed::{LandedSlot, SlotRef};

use crate::envelope::{Envelope, Format, Landing, Room};
use crate::selector::{Selector, Status};
use crate::wire::Context;

/// The most bytes of messages nobody has asked for yet that a rank keeps
/// from one peer, and from all peers together, before it stops reading a
/// peer it is not waiting for (the peer's send then waits). A rank waits
/// for a peer while a receive or probe it posted accepts the peer or a
/// message from the peer is landing; while it waits in a send, a node-wide
/// collective or finalize it reads every peer, since what it waits for
/// may depend on a peer that in turn waits for it to read.
pub(crate) const QUEUED_PER_PEER: u64 = 8 << 20;
pub(crate) const QUEUED_IN_ALL: u64 = 64 << 20;
const _: () = assert!(QUEUED_PER_PEER <= QUEUED_IN_ALL, "Sink::wants relies on it");

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

/// Identifies one posted receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ReceiveId(u64);

impl ReceiveId {
    /// No receive of the engine's (one the MPI backend holds instead).
    #[cfg(feature = "mpi")]
    pub(crate) const ELSEWHERE: ReceiveId = ReceiveId(u64::MAX);
}

#[derive(Debug)]
struct Posted {
    id: ReceiveId,
    sel: Selector,
    room: Option<Room>,
}

/// A receive whose message is being written into its buffer.
#[derive(Debug)]
struct Claimed {
    id: ReceiveId,
    source: usize,
    room: Option<Room>,
    fresh: Option<crate::envelope::FreshBuffer>,
    arrival: u64,
}

/// The matching engine of one rank.
#[derive(Debug, Default)]
pub(crate) struct Matcher {
    /// Messages no receive has taken, in arrival order.
    unexpected: VecDeque<Envelope>,
    /// Receives waiting for a message, in the order they were posted: a
    /// deque, since the earliest is the one usually taken, and a window of
    /// 64 receives taken from the front of a vector moved the other 63
    /// each time (6% of `osu_bw`'s time at 8 B).
    posted: VecDeque<Posted>,
    landing: Vec<Claimed>,
    /// Receives that have their message but were not taken yet (few), with
    /// the room the message may have landed in. (A message that lands in a
    /// scope's lent buffer is not kept here: the scope's slot says so.)
    completed: Vec<(ReceiveId, Envelope, Option<Room>)>,
    next_id: u64,
    next_arrival: u64,
    /// Bytes of the queued messages, by source and in all.
    queued_bytes: HashMap<usize, u64>,
    queued_total: u64,
    /// What the blocking probes in progress wait for (one per probing
    /// thread).
    watched: Vec<Selector>,
    /// How many waits in progress read every peer, however much is queued
    /// (see [`QUEUED_PER_PEER`]); several threads may wait at once.
    reading_all: u32,
    /// Finalize's last reads keep to the queue bound whoever waits.
    bounded: bool,
}

impl Matcher {
    /// Messages seen so far (for the hang reports: what has arrived).
    pub fn arrived(&self) -> u64 {
        self.next_arrival
    }

    /// Hands an arrived message to the earliest posted receive that matches,
    /// or queues it as unexpected.
    pub fn deliver(&mut self, mut env: Envelope) {
        env.arrival = self.next_arrival;
        self.next_arrival += 1;
        let taker = self.posted.iter().position(|p| p.sel.accepts(&env));
        match taker.and_then(|i| remove_at(&mut self.posted, i)) {
            Some(p) => self.completed.push((p.id, env, p.room)),
            None => {
                self.count_in(&env);
                self.unexpected.push_back(env);
            }
        }
    }

    fn count_in(&mut self, env: &Envelope) {
        *self.queued_bytes.entry(env.source).or_default() += env.len();
        self.queued_total += env.len();
    }

    fn count_out(&mut self, env: &Envelope) {
        if let Some(b) = self.queued_bytes.get_mut(&env.source) {
            *b = b.saturating_sub(env.len());
        }
        self.queued_total = self.queued_total.saturating_sub(env.len());
    }

    /// Posts a receive that may take its message straight into `room`; it
    /// completes at once if a matching message is queued.
    pub fn post_into(&mut self, sel: Selector, room: Option<Room>) -> ReceiveId {
        let id = ReceiveId(self.next_id);
        self.next_id += 1;
        if let Some(i) = self.unexpected.iter().position(|env| sel.accepts(env)) {
            if let Some(env) = self.unexpected.remove(i) {
                self.count_out(&env);
                self.completed.push((id, env, None));
            }
        } else {
            self.posted.push_back(Posted { id, sel, room });
        }
        id
    }

    /// True if nothing held here comes before the next message from
    /// `source` for a receive of `sel`: no queued message `sel` accepts, no
    /// posted receive that may take a message from `source`, and no message
    /// from it landing (see `progress/straight.rs`).
    pub fn nothing_before(&self, sel: Selector, source: usize) -> bool {
        let from_source = |p: &Posted| p.sel.pattern.source_rank().is_none_or(|s| s == source);
        !self.posted.iter().any(from_source)
            && !self.landing.iter().any(|c| c.source == source)
            && !self.unexpected.iter().any(|env| sel.accepts(env))
    }

    /// Counts a message that arrived without passing through here (the
    /// straight path): its arrival number.
    pub fn count_arrival(&mut self) -> u64 {
        self.next_arrival += 1;
        self.next_arrival - 1
    }

    /// The message of a completed receive, if it has completed.
    pub fn take(&mut self, id: ReceiveId) -> Option<Envelope> {
        let i = self.completed.iter().position(|(c, _, _)| *c == id)?;
        Some(self.completed.swap_remove(i).1)
    }

    /// True if the receive has completed.
    pub fn is_complete(&self, id: ReceiveId) -> bool {
        self.completed.iter().any(|(c, _, _)| *c == id)
    }

    /// The selector of a receive still waiting, if it is still waiting.
    pub fn pending(&self, id: ReceiveId) -> Option<Selector> {
        self.posted.iter().find(|p| p.id == id).map(|p| p.sel)
    }

    /// Withdraws a receive. A message it had already taken goes back to the
    /// queue in its old place, so it is not lost; one that had landed in
    /// the receive's buffer is copied out of it first. The transport must
    /// have stopped writing into the buffer, and the buffer must still be
    /// valid. (A message that landed in a scope's lent buffer is not here
    /// but in the scope's slot: the scope puts it back, see `scope.rs`.)
    ///
    /// Returns true if a message went back (the caller wakes whoever sleeps:
    /// a receive of theirs may have it now).
    pub fn cancel(&mut self, id: ReceiveId) -> bool {
        let Some(env) = self.withdraw(id) else {
            return false;
        };
        self.requeue(env);
        true
    }

    /// Withdraws a receive as [`Matcher::cancel`] does, but returns the
    /// message it had already taken (copied out of its buffer) instead of
    /// putting it back: the caller puts it back with [`Matcher::requeue`],
    /// in arrival order with others it withdraws.
    pub fn withdraw(&mut self, id: ReceiveId) -> Option<Envelope> {
        self.posted.retain(|p| p.id != id);
        self.landing.retain(|c| c.id != id);
        let i = self.completed.iter().position(|(c, _, _)| *c == id)?;
        let (_, mut env, room) = self.completed.swap_remove(i);
        if let Some(fresh) = env.fresh.take() {
            env.unland(fresh);
        } else if let (Some(len), Some(Room::Given { buffer, .. } | Room::Lent { buffer, .. })) = (env.landed, room) {
            // SAFETY: the message landed in these `len` bytes of the
            // caller's buffer, which the caller keeps valid until the
            // withdrawal returns.
            let landed = unsafe { std::slice::from_raw_parts(buffer.ptr, len as usize) };
            env.payload = crate::pool::copy_of(landed);
            env.landed = None;
        }
        Some(env)
    }

    /// Puts a message that a receive took back in the queue, in its place
    /// in arrival order (a receive that failed because of the type it asked
    /// for leaves the message for a corrected receive), or gives it to the
    /// earliest receive posted since that accepts it: a receive that waits
    /// never has a queued message it would accept.
    pub fn requeue(&mut self, mut env: Envelope) {
        debug_assert!(env.landed.is_none() || env.fresh.is_some());
        if let Some(i) = self.posted.iter().position(|p| p.sel.accepts(&env)) {
            if let Some(fresh) = env.fresh.take() {
                env.unland(fresh);
            }
            if let Some(p) = remove_at(&mut self.posted, i) {
                self.completed.push((p.id, env, p.room));
                return;
            }
        }
        let at = self.unexpected.partition_point(|e| e.arrival < env.arrival);
        self.count_in(&env);
        self.unexpected.insert(at, env);
    }

    /// The status of the earliest queued message that `sel` accepts.
    pub fn probe(&self, sel: Selector) -> Option<Status> {
        self.unexpected.iter().find(|env| sel.accepts(env)).map(Status::of)
    }

    /// A blocking probe starts waiting for `sel`: its peers are read
    /// however much is queued, until [`Matcher::unwatch`].
    pub fn watch(&mut self, sel: Selector) {
        self.watched.push(sel);
    }

    /// A blocking probe for `sel` is done.
    pub fn unwatch(&mut self, sel: Selector) {
        if let Some(i) = self.watched.iter().position(|w| *w == sel) {
            self.watched.swap_remove(i);
        }
    }

    /// A wait starts that reads every peer however much is queued, until
    /// the matching [`Matcher::end_read_all`]; waits on several threads
    /// count up.
    pub fn begin_read_all(&mut self) {
        self.reading_all += 1;
    }

    /// A wait begun with [`Matcher::begin_read_all`] is done.
    pub fn end_read_all(&mut self) {
        self.reading_all = self.reading_all.saturating_sub(1);
    }

    /// Every queued message, in arrival order.
    pub fn queued(&self) -> impl Iterator<Item = &Envelope> {
        self.unexpected.iter()
    }

    /// The queued messages of one context, in arrival order.
    pub fn queued_in(&self, context: Context) -> impl Iterator<Item = &Envelope> {
        self.unexpected.iter().filter(move |e| e.context == context)
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
    /// moved but the payload (see `land_whole` for the rest).
    #[inline]
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
        unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), ptr, payload.len()) };
        let arrival = self.next_arrival();
        slot.land(&Landed::of_arrived(head, len, arrival));
        self.posted.pop_front();
        true
    }

    /// The next message's arrival number.
    fn next_arrival(&mut self) -> u64 {
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        arrival
    }
}

/// Removes item `i` of `queue`: the front (the usual case) costs no moves.
#[inline]
fn remove_at<T>(queue: &mut VecDeque<T>, i: usize) -> Option<T> {
    if i == 0 { queue.pop_front() } else { queue.remove(i) }
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

    fn land_whole(&mut self, head: &Arrived, payload: &[u8]) -> bool {
        let len = payload.len() as u64;
        if self.land_in_front_lent(head, payload) {
            return true;
        }
        let Some((i, ptr, fresh)) = self.find_landing(head.source, head.tag, head.context, head.format, len) else {
            return false;
        };
        // SAFETY: the receive's room has space for `len` bytes at `ptr`.
        unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), ptr, payload.len()) };
        let arrival = self.next_arrival();
        // A lent room's scope learns of it from its slot (the common case
        // of a stream: nothing to build).
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

    fn keep_to_bound(&mut self) {
        self.bounded = true;
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

#[cfg(test)]
mod tests;
