//! Messages the MPI backend took out of MPI before a receive asked for
//! them (a probe looked at them, a receive of the wrong type put them
//! back, a withdrawn receive had matched them), and the order among them
//! and the messages still in MPI. Each header carries the message's place
//! among its sender's messages to this rank, so that a receive takes the
//! oldest one it accepts from a sender, held or still in MPI, as MPI's
//! non-overtaking rule promises.

use std::collections::BTreeSet;

use super::comm::MpiComm;
use super::point_to_point::Wait;
use crate::envelope::Envelope;
use crate::error::Result;
use crate::selector::{Match, Status};

/// A message taken out of MPI before its receive: its envelope (with the
/// payload, if it came with the header; its place in its sender's order
/// as `arrival`) and, for a large message, its body still in MPI.
#[derive(Debug)]
pub(crate) struct Held {
    pub env: Envelope,
    /// The body's length and tag on the private communicator.
    pub body: Option<(u64, u32)>,
}

impl Held {
    /// A message that arrived `seq`-th among its sender's to this rank.
    pub(super) fn new(mut env: Envelope, body: Option<(u64, u32)>, seq: u64) -> Held {
        env.arrival = seq;
        Held { env, body }
    }

    pub(super) fn status(&self) -> Status {
        Status::new(
            self.env.source,
            self.env.tag,
            self.body.map_or(self.env.len(), |(len, _)| len),
            self.env.format.element(),
        )
    }

    fn matches(&self, pattern: &Match) -> bool {
        pattern.source_rank().is_none_or(|s| s == self.env.source)
            && pattern.tag_value().is_none_or(|t| t == self.env.tag)
    }
}

/// Which of one sender's messages have come out of MPI: every one below
/// `below`, and those in `above`. A message never received would keep
/// `below` where it is and grow `above` with every later one, so `above`
/// is forgotten past `ABOVE_LIMIT`: that only costs a look into MPI.
#[derive(Debug, Default)]
pub(super) struct Pulled {
    below: u64,
    above: BTreeSet<u64>,
}

/// The most places `Pulled::above` keeps.
const ABOVE_LIMIT: usize = 64;

impl Pulled {
    fn add(&mut self, seq: u64) {
        if seq != self.below {
            if self.above.len() >= ABOVE_LIMIT {
                self.above.clear();
            }
            self.above.insert(seq);
            return;
        }
        self.below += 1;
        while self.above.remove(&self.below) {
            self.below += 1;
        }
    }
}

impl MpiComm {
    /// Takes every message waiting in MPI for this rank on this
    /// communicator out of it and holds it for the receive that asks for
    /// it (in its place among its sender's messages, as a probe does). A
    /// rank calls this while it waits for a send of its own: the peer may
    /// be waiting for its send to this rank, whose frame (past MPI's eager
    /// limit) MPI moves only once this rank receives it. With `bodies`
    /// (at a scope's end, which waits for its lent bodies), the bodies of
    /// large messages held are received too, into memory of their own: a
    /// peer's scope waits for its lent body in the same way. Without, a
    /// body stays in MPI for its receive to land where it asks. A body this
    /// rank has no memory for stays in MPI too: nothing is lost.
    pub(super) fn take_in_waiting(&self, bodies: bool) -> Result<()> {
        while let Some(held) = self.arrive(&Match::any(), Wait::Never, None)? {
            self.held.borrow_mut().push_back(held);
        }
        if !bodies {
            return Ok(());
        }
        let mut at = 0;
        loop {
            let next = self.held.borrow().iter().skip(at).position(|h| h.body.is_some());
            let Some(i) = next.map(|p| p + at) else { return Ok(()) };
            let Some(mut held) = self.held.borrow_mut().remove(i) else {
                return Ok(());
            };
            // A body that came wrong (the sender broke the protocol) is
            // lost with its message, which the error names; any other goes
            // back in its place, whole or with its body still in MPI.
            self.take_body(&mut held)?;
            self.held.borrow_mut().insert(i, held);
            at = i + 1;
        }
    }

    /// Receives a held message's body into memory of its own, in place; a
    /// body this rank has no memory for stays in MPI.
    fn take_body(&self, held: &mut Held) -> Result<()> {
        let Some((len, body_tag)) = held.body else {
            return Ok(());
        };
        let Ok(len) = usize::try_from(len) else { return Ok(()) };
        let mut payload = Vec::new();
        if payload.try_reserve_exact(len).is_err() {
            return Ok(());
        }
        self.receive_body(&mut payload.spare_capacity_mut()[..len], held.env.source, body_tag)?;
        // SAFETY: the receive wrote every one of the `len` bytes.
        unsafe { payload.set_len(len) };
        held.env.payload = payload;
        held.body = None;
        Ok(())
    }

    /// Notes that message `seq` from `source` has come out of MPI.
    pub(super) fn pulled(&self, source: usize, seq: u64) {
        if let Some(p) = self.pulled.borrow_mut().get_mut(source) {
            p.add(seq);
        }
    }

    /// The place `seq` of the next message to `dest`, counted.
    pub(super) fn stamp(&self, dest: usize) -> u64 {
        let mut sent = self.sent.borrow_mut();
        let seq = sent[dest];
        sent[dest] = seq.wrapping_add(1);
        seq
    }

    /// Puts back a message a receive could not take.
    pub(crate) fn requeue(&self, env: Envelope) {
        if env.landed.is_some() && env.fresh.is_none() {
            // Landed in the caller's buffer: only a matching type lands,
            // so no receive rejects it.
            return;
        }
        let mut env = env;
        if let Some(fresh) = env.fresh.take() {
            env.unland(fresh);
        }
        self.held.borrow_mut().push_front(Held { env, body: None });
    }

    /// True if a held message is one `pattern` accepts.
    pub(super) fn holds(&self, pattern: &Match) -> bool {
        self.held.borrow().iter().any(|h| h.matches(pattern))
    }

    /// Takes the oldest held message `pattern` accepts (see
    /// [`MpiComm::oldest_held`]).
    #[inline]
    pub(super) fn take_held(&self, pattern: &Match) -> Result<Option<Held>> {
        if self.held.borrow().is_empty() {
            return Ok(None);
        }
        let Some(at) = self.oldest_held(pattern)? else {
            return Ok(None);
        };
        Ok(self.held.borrow_mut().remove(at))
    }

    /// Where the next message `pattern` accepts is among the held ones, if
    /// one of them is next. The first held message that `pattern` accepts
    /// names a sender, and the oldest held one from that sender is the
    /// answer, unless an older one from it may still be in MPI: then the
    /// first that MPI has from it for `pattern` is taken out too, and the
    /// older of the two is.
    pub(super) fn oldest_held(&self, pattern: &Match) -> Result<Option<usize>> {
        let source = match self.held.borrow().iter().find(|h| h.matches(pattern)) {
            Some(h) => h.env.source,
            None => return Ok(None),
        };
        let from_source = pattern.with_source(source);
        let oldest = || {
            self.held
                .borrow()
                .iter()
                .enumerate()
                .filter(|(_, h)| h.matches(&from_source))
                .min_by_key(|(_, h)| h.env.arrival)
                .map(|(at, h)| (at, h.env.arrival))
        };
        let Some((at, seq)) = oldest() else { return Ok(None) };
        let all_older_out = self.pulled.borrow().get(source).is_some_and(|p| seq < p.below);
        if all_older_out {
            return Ok(Some(at));
        }
        if let Some(in_mpi) = self.arrive(&from_source, Wait::Never, None)? {
            self.held.borrow_mut().push_back(in_mpi);
        }
        Ok(oldest().map(|(at, _)| at))
    }
}
