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
mod sink;

use std::collections::{HashMap, VecDeque};

pub(crate) use landed::{LandedSlot, SlotRef};
pub(crate) use sink::{Arrived, Sink};

use crate::envelope::{Envelope, Room};
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

/// Removes item `i` of `queue`: the front (the usual case) costs no moves.
#[inline]
fn remove_at<T>(queue: &mut VecDeque<T>, i: usize) -> Option<T> {
    if i == 0 { queue.pop_front() } else { queue.remove(i) }
}

#[cfg(test)]
mod tests;
