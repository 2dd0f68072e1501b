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

use std::sync::atomic::Ordering;

use crate::communicator::Communicator;
use crate::envelope::{Envelope, Format};
use crate::error::{Error, Result};
use crate::matching::Matcher;
use crate::progress::Head;
use crate::selector::{Match, Selector};
use crate::status::WaitOn;
use crate::wire::Context;
use crate::wire::status::WaitOp;

use super::node::Node;

/// The tag of a notice: no algorithm uses it.
pub(crate) const NOTICE: u32 = u32::MAX;

/// Which collective a call is, for its signature and for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Barrier = 1,
    Broadcast,
    Scatter,
    Gather,
    Allgather,
    Reduce,
    Allreduce,
    Scan,
    Alltoall,
    BroadcastInto,
    ScatterInto,
    GatherInto,
    AllgatherInto,
    ReduceInto,
    AllreduceInto,
    ScanInto,
    AlltoallInto,
    /// The exchange that makes a new communicator (`dup`, `split`, ...).
    Create,
    ImmediateBarrier,
    ImmediateBroadcast,
    ImmediateBroadcastInto,
    ImmediateAllreduce,
    ImmediateAllreduceInto,
    GathervInto,
    ScattervInto,
    AllgathervInto,
    AlltoallvInto,
    Exscan,
}

const KINDS: [Kind; 28] = [
    Kind::Barrier,
    Kind::Broadcast,
    Kind::Scatter,
    Kind::Gather,
    Kind::Allgather,
    Kind::Reduce,
    Kind::Allreduce,
    Kind::Scan,
    Kind::Alltoall,
    Kind::BroadcastInto,
    Kind::ScatterInto,
    Kind::GatherInto,
    Kind::AllgatherInto,
    Kind::ReduceInto,
    Kind::AllreduceInto,
    Kind::ScanInto,
    Kind::AlltoallInto,
    Kind::Create,
    Kind::ImmediateBarrier,
    Kind::ImmediateBroadcast,
    Kind::ImmediateBroadcastInto,
    Kind::ImmediateAllreduce,
    Kind::ImmediateAllreduceInto,
    Kind::GathervInto,
    Kind::ScattervInto,
    Kind::AllgathervInto,
    Kind::AlltoallvInto,
    Kind::Exscan,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Barrier => "barrier",
            Kind::Broadcast => "broadcast",
            Kind::Scatter => "scatter",
            Kind::Gather => "gather",
            Kind::Allgather => "allgather",
            Kind::Reduce => "reduce",
            Kind::Allreduce => "allreduce",
            Kind::Scan => "scan",
            Kind::Alltoall => "alltoall",
            Kind::BroadcastInto => "broadcast_into",
            Kind::ScatterInto => "scatter_into",
            Kind::GatherInto => "gather_into",
            Kind::AllgatherInto => "allgather_into",
            Kind::ReduceInto => "reduce_into",
            Kind::AllreduceInto => "allreduce_into",
            Kind::ScanInto => "scan_into",
            Kind::AlltoallInto => "alltoall_into",
            Kind::Create => "the making of a communicator (dup, split, split_by_node or subset)",
            Kind::ImmediateBarrier => "immediate_barrier",
            Kind::ImmediateBroadcast => "immediate_broadcast",
            Kind::ImmediateBroadcastInto => "immediate_broadcast_into",
            Kind::ImmediateAllreduce => "immediate_allreduce",
            Kind::ImmediateAllreduceInto => "immediate_allreduce_into",
            Kind::GathervInto => "gatherv_into",
            Kind::ScattervInto => "scatterv_into",
            Kind::AllgathervInto => "allgatherv_into",
            Kind::AlltoallvInto => "alltoallv_into",
            Kind::Exscan => "the exchange of exscan or exscan_into",
        }
    }

    /// True for the collectives whose algorithm depends on the length.
    fn sized(self) -> bool {
        (Kind::BroadcastInto as u8..=Kind::AlltoallInto as u8).contains(&(self as u8))
    }

    /// True for the collectives that have a root.
    fn rooted(self) -> bool {
        matches!(
            self,
            Kind::Broadcast
                | Kind::Scatter
                | Kind::Gather
                | Kind::Reduce
                | Kind::BroadcastInto
                | Kind::ScatterInto
                | Kind::GatherInto
                | Kind::ReduceInto
                | Kind::ImmediateBroadcast
                | Kind::ImmediateBroadcastInto
                | Kind::GathervInto
                | Kind::ScattervInto
        )
    }
}

/// A collective's signature: which one (5 bits), whether it moves more
/// than 4 KiB per rank (1 bit: the algorithms differ), and its root (the
/// low 10 bits).
pub(crate) fn signature(kind: Kind, root: usize, large: bool) -> u16 {
    let root = if kind.rooted() { root & 0x3ff } else { 0 };
    (kind as u16) << 11 | u16::from(large) << 10 | root as u16
}

/// Names a signature for messages: "broadcast_into of more than 4 KiB (root 3)".
pub(crate) fn describe(sig: u16) -> String {
    let code = (sig >> 11) as u8;
    let Some(kind) = KINDS.iter().find(|k| **k as u8 == code) else {
        return format!("an unknown collective ({code})");
    };
    let size = match (kind.sized(), sig & 0x400 != 0) {
        (false, _) => "",
        (true, true) => " of more than 4 KiB",
        (true, false) => " of at most 4 KiB",
    };
    let root = if kind.rooted() {
        format!(" (root {})", sig & 0x3ff)
    } else {
        String::new()
    };
    format!("{}{size}{root}", kind.name())
}

/// The error for rank `source`, which called collective `theirs` where
/// this rank called `ours`, both as call `number` of the communicator.
pub(crate) fn different(number: u16, source: usize, theirs: u16, ours: u16) -> Error {
    Error::CollectiveMismatch {
        detail: format!(
            "ranks called different collectives at collective call #{number}: rank {source} called {} where this \
             rank called {}",
            describe(theirs),
            describe(ours)
        ),
    }
}

/// The error another rank's notice of failure `env` tells of.
pub(crate) fn noticed(env: &Envelope) -> Error {
    Error::CollectiveFailed {
        rank: env.source,
        detail: format!(
            "in {}: {}",
            describe(env.call as u16),
            String::from_utf8_lossy(&env.payload)
        ),
    }
}

/// What a communicator remembers of its collectives.
#[derive(Debug, Default)]
pub(crate) struct Calls {
    /// The number of the last call (wrapping).
    last: Cell<u16>,
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
    /// communicator's blocking collectives use, if any), or the error that
    /// the collectives are broken.
    pub(crate) fn immediate_call(&self, kind: Kind, root: usize) -> Result<(u32, u32, Option<super::node::Node>)> {
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
        // sees this call there, as it would a blocking one.
        let node = self.node_region();
        if let Some(node) = node {
            node.slots
                .current(node.me)
                .store(1 << 63 | u64::from(word), Ordering::Release);
        }
        Ok((word, tag, node))
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
        if let Some(node) = peers {
            node.slots
                .current(node.me)
                .store(1 << 63 | u64::from(call.word()), Ordering::Release);
        }
        // Another rank's failure that has arrived already ends this call
        // before it starts.
        let arrived = {
            let engine = self.engine()?;
            let immediate = Context::immediate(call.context.communicator());
            engine
                .queued_check(&mut call.check())
                .and_then(|()| engine.stray_immediate(immediate, number))
        };
        let mut result = arrived.and_then(|()| body(&call));
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

    /// Receives the message of `call` that `source` sends with `tag`,
    /// checking the queue at every step of the wait.
    pub(crate) fn call_receive(&self, call: &Call, source: usize, tag: u32) -> Result<Envelope> {
        let source = self.peer(source)?;
        let sel = Selector::new(call.context, Match::source(source).with_tag(tag));
        let env = {
            let mut engine = self.engine()?;
            let id = engine.post(sel, None)?;
            let mut check = call.check();
            let timeout = call
                .deadline
                .map(|d| d.saturating_duration_since(std::time::Instant::now()));
            engine.wait_receive_checked(id, timeout, Some((call.waiting(Some(source)), &mut check)))?
        };
        self.judge_received(call, env)
    }

    /// Like [`Communicator::call_receive`], letting raw numbers of type `element`
    /// land straight in `buf`.
    pub(crate) fn call_receive_into(
        &self,
        call: &Call,
        source: usize,
        tag: u32,
        buf: &mut [u8],
        element: u16,
    ) -> Result<Envelope> {
        let source = self.peer(source)?;
        let sel = Selector::new(call.context, Match::source(source).with_tag(tag));
        let mut env = {
            let mut engine = self.engine()?;
            let mut check = call.check();
            engine.receive_landing_checked(sel, buf, element, Some((call.waiting(Some(source)), &mut check)))?
        };
        if env.call != call.word() {
            if let Some(len) = env.landed.take() {
                // Not this call's after all: out of the caller's buffer.
                env.payload = crate::pool::copy_of(&buf[..len as usize]);
            }
        }
        self.judge_received(call, env)
    }

    /// Checks that a message a receive of `call` got is this call's. One of
    /// another call is a sign that the ranks disagree; the error prefers
    /// what the queue says (another rank's notice, a message of another
    /// collective) to the message itself, which goes back to the queue.
    fn judge_received(&self, call: &Call, env: Envelope) -> Result<Envelope> {
        if env.call == call.word() {
            // Whatever the sender sent before this message has arrived: a
            // message of another call among it is a disagreement (seen here
            // by a rank that did its part of that call without waiting).
            self.engine()?.queued_check(&mut call.check())?;
            return Ok(env);
        }
        let wrong = call.foreign(&env, true).unwrap_or_else(|| Error::CollectiveMismatch {
            detail: format!("a message of another collective call reached {}", call.name()),
        });
        let mut engine = self.engine()?;
        engine.requeue(env);
        let queued = engine.queued_check(&mut call.check());
        Err(queued.err().unwrap_or(wrong))
    }

    /// Sends a message of `call` to `dest` with `tag`.
    pub(crate) fn call_send(
        &self,
        call: &Call,
        dest: usize,
        tag: u32,
        body: (Format, Vec<u8>),
    ) -> Result<crate::progress::Sent> {
        let head = Head {
            context: call.context,
            tag,
            call: call.word(),
            format: body.0,
        };
        self.engine()?.send(self.peer(dest)?, head, body.1)
    }

    /// Sends raw bytes of `call` straight from the caller's memory and waits
    /// until they have left.
    pub(crate) fn call_send_now(&self, call: &Call, dest: usize, tag: u32, format: Format, bytes: &[u8]) -> Result<()> {
        let head = Head {
            context: call.context,
            tag,
            call: call.word(),
            format,
        };
        self.engine()?.send_now(self.peer(dest)?, head, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_name_the_collective_and_its_root() {
        assert_eq!(describe(signature(Kind::Barrier, 5, false)), "barrier");
        assert_eq!(describe(signature(Kind::Broadcast, 3, false)), "broadcast (root 3)");
        assert_eq!(
            describe(signature(Kind::BroadcastInto, 3, true)),
            "broadcast_into of more than 4 KiB (root 3)"
        );
        assert_ne!(
            signature(Kind::Broadcast, 0, false),
            signature(Kind::Broadcast, 1, false)
        );
        assert_ne!(signature(Kind::ReduceInto, 0, false), signature(Kind::Reduce, 0, false));
        assert_ne!(
            signature(Kind::ReduceInto, 0, false),
            signature(Kind::ReduceInto, 0, true)
        );
        assert_eq!(describe(0), "an unknown collective (0)");
        for k in KINDS {
            assert_ne!(signature(k, 0, false), 0, "{k:?}");
        }
    }

    #[test]
    fn call_numbers_wrap_and_stay_ordered() {
        assert!(before(1, 2));
        assert!(before(u16::MAX, 1));
        assert!(!before(2, 2));
        assert!(!before(3, 2));
    }
}
