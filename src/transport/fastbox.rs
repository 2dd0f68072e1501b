//! Fastboxes: a few one-cache-line mailboxes per pair of ranks on a node,
//! beside the ring, for messages of at most [`FASTBOX_DATA`] bytes. A
//! message in a fastbox crosses between cores as one cache line, where the
//! ring needs its head, the frame header and the payload.
//!
//! Order with the ring: the sender puts a message in a fastbox only when it
//! has nothing queued and the receiver has read every ring byte, so ring
//! bytes the receiver has not read were all written after every fastbox
//! message still waiting. The receiver empties the fastboxes before it
//! reads the ring, and trusts a newly loaded ring head only if no fastbox
//! is full after loading it: bytes written after a fastbox message make
//! that message visible to whoever sees them (Release, then Acquire).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::matching::Envelope;
use crate::wire::{Context, Header, Kind};

use super::Delivery;

/// Fastboxes per pair and direction: a sender can be this many small
/// messages ahead of its receiver before it falls back to the ring.
pub(super) const SLOTS: usize = 8;
/// The receiver publishes how many messages it has taken every this many.
const PUBLISH_EVERY: u64 = SLOTS as u64 / 2;
/// One fastbox: a cache line.
pub(super) const LINE: usize = 64;
/// The bytes of the fastbox area of one pair: the receiver's count of
/// messages taken (a line of its own), then the slots.
pub(super) const AREA: usize = LINE + SLOTS * LINE;
/// Where the payload starts in a slot: after the sequence number (4 bytes),
/// kind, context, length (a byte each), a spare byte, and the tag (4 bytes).
const DATA_AT: usize = 12;
/// The largest payload a fastbox carries.
pub(crate) const FASTBOX_DATA: usize = LINE - DATA_AT;

/// The sending side of the fastboxes from this rank to one peer (in the
/// peer's segment).
#[derive(Debug)]
pub(super) struct FastboxTx {
    base: *mut u8,
    /// Messages written so far.
    sent: u64,
    /// The receiver's count of messages taken, when last read.
    taken_seen: u64,
}

/// The receiving side of the fastboxes from one peer (in this rank's
/// segment).
#[derive(Debug)]
pub(super) struct FastboxRx {
    base: *mut u8,
    /// Messages taken so far.
    taken: u64,
}

fn taken_counter(base: *mut u8) -> &'static AtomicU64 {
    // SAFETY: the first line of a fastbox area, aligned, inside a mapping
    // that outlives the link holding `base`.
    unsafe { &*base.cast::<AtomicU64>() }
}

fn slot(base: *mut u8, n: u64) -> *mut u8 {
    // SAFETY: slot n % SLOTS lies inside the area.
    unsafe { base.add(LINE + (n as usize % SLOTS) * LINE) }
}

fn sequence(slot: *mut u8) -> &'static AtomicU32 {
    // SAFETY: the first word of a slot, aligned, inside the mapping.
    unsafe { &*slot.cast::<AtomicU32>() }
}

/// The number a slot carries for message `n` (counting from 0): never 0, so
/// a fresh (zeroed) slot holds nothing; it wraps, which is fine because a
/// slot is only ever compared with the one number expected next.
fn stamp(n: u64) -> u32 {
    (n as u32).wrapping_add(1).max(1)
}

impl FastboxTx {
    /// The sender's view of the fastbox area at `base` (in the peer's
    /// segment, which must stay mapped as long as this value is used).
    pub(super) fn new(base: *mut u8) -> FastboxTx {
        FastboxTx {
            base,
            sent: 0,
            taken_seen: 0,
        }
    }

    /// Writes a message into the next fastbox if the payload fits and a box
    /// is free; false if it must go through the ring. The caller has made
    /// sure the ring holds nothing the receiver has not read.
    pub(super) fn try_send(&mut self, header: &Header, payload: &[u8]) -> bool {
        if payload.len() > FASTBOX_DATA {
            return false;
        }
        if self.sent - self.taken_seen >= SLOTS as u64 {
            self.taken_seen = taken_counter(self.base).load(Ordering::Acquire);
            if self.sent - self.taken_seen >= SLOTS as u64 {
                return false;
            }
        }
        let s = slot(self.base, self.sent);
        // SAFETY: the slot is free (the receiver has taken the message that
        // was in it and will not read it until the new stamp is stored) and
        // the payload fits after DATA_AT.
        unsafe {
            s.add(4).write(header.kind as u8);
            s.add(5).write(header.context as u8);
            s.add(6).write(payload.len() as u8);
            s.add(8).cast::<[u8; 4]>().write(header.tag.to_le_bytes());
            std::ptr::copy_nonoverlapping(payload.as_ptr(), s.add(DATA_AT), payload.len());
        }
        sequence(s).store(stamp(self.sent), Ordering::Release);
        self.sent += 1;
        true
    }
}

impl FastboxRx {
    /// The receiver's view of the fastbox area at `base` (in this rank's
    /// segment).
    pub(super) fn new(base: *mut u8) -> FastboxRx {
        FastboxRx { base, taken: 0 }
    }

    /// True if the next fastbox holds a message.
    pub(super) fn ready(&self) -> bool {
        sequence(slot(self.base, self.taken)).load(Ordering::Acquire) == stamp(self.taken)
    }

    /// Delivers every message waiting in the fastboxes from rank `from`, in
    /// order; true if there was any. A malformed box is an error naming the
    /// peer and the field.
    pub(super) fn drain(&mut self, from: usize, deliver: &mut Delivery<'_>) -> Result<bool> {
        let start = self.taken;
        while self.ready() {
            let s = slot(self.base, self.taken);
            // SAFETY: the slot's stamp was loaded with Acquire after the
            // sender wrote the fields with plain stores before its Release.
            let (kind, context, len, tag) = unsafe {
                (
                    s.add(4).read(),
                    s.add(5).read(),
                    s.add(6).read() as usize,
                    u32::from_le_bytes(s.add(8).cast::<[u8; 4]>().read()),
                )
            };
            let peer = || format!("rank {from}");
            let kind = match Kind::from_byte(kind) {
                Some(k) if k.is_message() => k,
                _ => return Err(Error::protocol(peer(), "kind", format!("fastbox kind {kind}"))),
            };
            let Some(context) = Context::from_u32(u32::from(context)) else {
                return Err(Error::protocol(peer(), "context", format!("fastbox context {context}")));
            };
            if len > FASTBOX_DATA {
                return Err(Error::protocol(
                    peer(),
                    "length",
                    format!("{len} bytes in a fastbox of {FASTBOX_DATA}"),
                ));
            }
            // SAFETY: `len` bytes of payload follow DATA_AT inside the line.
            let payload = unsafe { std::slice::from_raw_parts(s.add(DATA_AT), len) };
            match deliver.claim(from, tag, context, kind, len as u64) {
                Some(landing) => {
                    // SAFETY: a claimed landing has room for `len` bytes.
                    unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), landing.ptr, len) };
                    let mut env = Envelope::new(from, tag, context, kind, Vec::new());
                    env.landed = Some(len as u64);
                    deliver.landed(landing.id, env);
                }
                None => deliver.deliver(Envelope::new(from, tag, context, kind, payload.to_vec())),
            }
            self.taken += 1;
        }
        if self.taken == start {
            return Ok(false);
        }
        // Publish the count every half-round of slots: each store costs the
        // sender's next read of the line a transfer between cores.
        if self.taken / PUBLISH_EVERY != start / PUBLISH_EVERY {
            taken_counter(self.base).store(self.taken, Ordering::Release);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::{Landing, ReceiveId, Sink};

    /// Keeps every message delivered to it; lands nothing.
    #[derive(Default)]
    struct Collect(Vec<Envelope>);

    impl Sink for Collect {
        fn deliver(&mut self, env: Envelope) {
            self.0.push(env);
        }
        fn claim(&mut self, _: usize, _: u32, _: Context, _: Kind, _: u64) -> Option<Landing> {
            None
        }
        fn landed(&mut self, _: ReceiveId, _: Envelope) {}
    }

    /// A fastbox area in ordinary memory, aligned like the real one.
    fn area() -> Vec<u64> {
        vec![0u64; AREA / 8]
    }

    fn header(tag: u32) -> Header {
        Header {
            kind: Kind::Raw,
            source: 3,
            tag,
            context: Context::User,
            len: 0,
        }
    }

    #[test]
    fn messages_arrive_in_order_and_a_full_set_of_boxes_refuses_more() {
        let mut memory = area();
        let base = memory.as_mut_ptr().cast::<u8>();
        let (mut tx, mut rx) = (FastboxTx::new(base), FastboxRx::new(base));
        let mut got = Collect::default();
        let mut next = 0u32;
        for round in 0..10u32 {
            // Fill every box, then one more must be refused.
            let mut sent = 0;
            while tx.try_send(&header(next + sent), &(next + sent).to_le_bytes()) {
                sent += 1;
            }
            assert!(sent >= 1 && sent <= SLOTS as u32, "round {round}: {sent} sent");
            assert!(!tx.try_send(&header(0), &[1; FASTBOX_DATA + 1]), "too long");
            assert!(rx.drain(3, &mut got).unwrap());
            next += sent;
        }
        assert_eq!(got.0.len(), next as usize);
        for (i, env) in got.0.iter().enumerate() {
            assert_eq!((env.source, env.tag), (3, i as u32));
            assert_eq!(env.payload, (i as u32).to_le_bytes());
        }
        assert!(!rx.drain(3, &mut got).unwrap(), "nothing more");
    }

    #[test]
    fn a_malformed_box_is_an_error_naming_the_peer_and_the_field() {
        for (offset, value, field) in [(4, 9u8, "kind"), (5, 7, "context"), (6, 60, "length")] {
            let mut memory = area();
            let base = memory.as_mut_ptr().cast::<u8>();
            let mut tx = FastboxTx::new(base);
            assert!(tx.try_send(&header(1), b"hello"));
            // SAFETY: a byte inside the first slot of the area.
            unsafe { slot(base, 0).add(offset).write(value) };
            match FastboxRx::new(base).drain(5, &mut Collect::default()) {
                Err(Error::Protocol { peer, field: f, .. }) => assert_eq!((peer.as_str(), f), ("rank 5", field)),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn stamps_are_never_zero_and_differ_between_neighbours() {
        for n in [0u64, 1, 7, u32::MAX as u64 - 1, u32::MAX as u64, 1 << 40] {
            assert_ne!(stamp(n), 0);
            assert_ne!(stamp(n), stamp(n + SLOTS as u64), "n = {n}");
        }
    }
}
