//! Fastboxes: one-cache-line mailboxes per pair of ranks on a node,
//! beside the ring, for messages of at most [`FASTBOX_DATA`] bytes. A
//! message of up to 44 bytes crosses between cores as one cache line, a
//! longer one in as many consecutive boxes as it needs (at most
//! [`MOST_BOXES`]), where the ring needs its head, the frame header, the
//! payload, and a copy out of the ring before the message can be read.
//!
//! A message's first box holds its sequence number (stamped last), its
//! fields and the start of its payload; each further box holds 0 in that
//! word (never a sequence number, so a box is never taken for the start of
//! a message it only continues) and the next 60 bytes. The receiver counts
//! boxes taken, not messages.
//!
//! Order with the ring: the sender puts a message in a fastbox only when it
//! has nothing queued and the receiver has read every ring byte, so ring
//! bytes the receiver has not read were all written after every fastbox
//! message still waiting. The receiver empties the fastboxes before it
//! reads the ring, and trusts a newly loaded ring head only if no fastbox
//! is full after loading it: bytes written after a fastbox message make
//! that message visible to whoever sees them (Release, then Acquire).
//!
//! A slot is read and written as 32-bit atomic words only, and every field
//! is checked like a frame header's before it is used.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::envelope::{Envelope, Format};
use crate::error::{Error, Result};
use crate::matching::Arrived;
use crate::wire::{Context, Header, Kind};

use super::super::Delivery;

/// Fastboxes per pair and direction: a sender can be this many boxes (one
/// per message of up to 44 bytes) ahead of its receiver before it falls
/// back to the ring. A
/// window of 64 small sends (OSU's `osu_bw`) fits: with 8, the rest of
/// each window went through the ring, and 8 B streaming ran at 0.75 of
/// this (4 KiB more per pair).
pub(super) const SLOTS: usize = 64;
/// How many boxes ahead of the one it writes a sender asks for its line
/// (see `prefetch.rs`): 4 and 8 did equally well.
const AHEAD: u64 = 4;
/// The receiver publishes how many boxes it has taken every this many.
const PUBLISH_EVERY: u64 = SLOTS as u64 / 2;
/// One fastbox: a cache line.
const LINE: usize = 64;
/// The bytes of the fastbox area of one pair: the receiver's count of
/// boxes taken (a line of its own), then the slots.
pub(super) const AREA: usize = LINE + SLOTS * LINE;
/// The words of a message's first box after its sequence number: kind,
/// length and element (one word: 4, 12 and 16 bits), tag, context, call;
/// then the payload.
const FIELDS: usize = 4;
/// The payload bytes in a message's first box.
const FIRST_DATA: usize = LINE - 4 * (1 + FIELDS);
/// The payload bytes in each further box (all but its first word, 0).
const MORE_DATA: usize = LINE - 4;
/// The most boxes one message takes. Two serve a 64-byte message in a
/// latency test (0.52 -> 0.21 us here) and a stream alike; with five (up to
/// 284 bytes) 128- and 256-byte messages went at half the latency, but a
/// stream of them, three or five boxes each, ran out of boxes a third of
/// the way through a window of 64 and went on through the ring, and on
/// this machine in its slow state moved a third less than through the
/// ring alone.
pub(super) const MOST_BOXES: usize = 2;
/// The largest payload the fastboxes carry (104 bytes).
pub(crate) const FASTBOX_DATA: usize = FIRST_DATA + (MOST_BOXES - 1) * MORE_DATA;
const WORDS: usize = LINE / 4;
const _: () = assert!(FASTBOX_DATA < 1 << 12, "the length has 12 bits");
const _: () = assert!(MOST_BOXES <= SLOTS / 4, "a long message must leave room for others");

/// The boxes a payload of `len` bytes (at most [`FASTBOX_DATA`]) takes.
fn boxes_for(len: usize) -> u64 {
    if len <= FIRST_DATA {
        1
    } else {
        1 + (len - FIRST_DATA).div_ceil(MORE_DATA) as u64
    }
}

/// Stores `bytes` as the words of box `n` from word `from` on: whole words
/// from plain loads (a copy of a length the compiler does not know would
/// be a call per word), then the last few bytes, padded.
fn store_words(base: *mut u8, n: u64, from: usize, bytes: &[u8]) {
    let words = bytes.chunks_exact(4);
    let rest = words.remainder();
    let whole = words.len();
    for (i, chunk) in words.enumerate() {
        let value = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        word(base, n, from + i).store(value, Ordering::Relaxed);
    }
    if !rest.is_empty() {
        let mut b = [0u8; 4];
        for (to, from) in b.iter_mut().zip(rest) {
            *to = *from;
        }
        word(base, n, from + whole).store(u32::from_le_bytes(b), Ordering::Relaxed);
    }
}

/// Loads `out.len()` bytes from the words of box `n` from word `from` on
/// (whole words as plain stores, then the last few bytes).
fn load_words(base: *mut u8, n: u64, from: usize, out: &mut [u8]) {
    let mut words = out.chunks_exact_mut(4);
    let mut i = 0;
    for chunk in words.by_ref() {
        let [a, b, c, d] = word(base, n, from + i).load(Ordering::Relaxed).to_le_bytes();
        (chunk[0], chunk[1], chunk[2], chunk[3]) = (a, b, c, d);
        i += 1;
    }
    let rest = words.into_remainder();
    if !rest.is_empty() {
        let bytes = word(base, n, from + i).load(Ordering::Relaxed).to_le_bytes();
        for (to, from) in rest.iter_mut().zip(bytes) {
            *to = from;
        }
    }
}

/// The sending side of the fastboxes from this rank to one peer (in the
/// peer's segment).
#[derive(Debug)]
pub(super) struct FastboxTx {
    base: *mut u8,
    /// Boxes written so far.
    sent: u64,
    /// The receiver's count of boxes taken, when last read.
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

/// A message read out of a fastbox: what its header says, and its
/// payload.
#[derive(Debug)]
pub(crate) struct Boxed {
    pub head: Arrived,
    len: usize,
    bytes: [u8; FASTBOX_DATA],
}

impl Boxed {
    /// Nothing yet, for [`FastboxRx::peek_into`] to fill.
    pub fn empty(from: usize) -> Boxed {
        Boxed {
            head: Arrived {
                source: from,
                tag: 0,
                context: Context(0),
                format: Format::Raw(0),
                call: 0,
            },
            len: 0,
            bytes: [0; FASTBOX_DATA],
        }
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Whether the next fastbox from one peer holds a message, seen without
/// the mesh: for a wait that polls it while it holds the engine. Valid
/// while the mesh it came from is, and until that box is taken.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FastboxWatch {
    base: *mut u8,
    next: u64,
}

impl FastboxWatch {
    /// True if the box holds its message.
    pub fn ready(&self) -> bool {
        word(self.base, self.next, 0).load(Ordering::Acquire) == stamp(self.next)
    }
}

/// The area's count of boxes taken.
fn taken_counter<'a>(base: *mut u8) -> &'a AtomicU64 {
    // SAFETY: the first line of a fastbox area, aligned, inside a mapping
    // that outlives the link holding `base` (and so the caller's use).
    unsafe { &*base.cast::<AtomicU64>() }
}

/// Word `w` of the slot of box `n`.
fn word<'a>(base: *mut u8, n: u64, w: usize) -> &'a AtomicU32 {
    debug_assert!(w < WORDS);
    // SAFETY: slot n % SLOTS lies inside the area; words are aligned.
    unsafe { &*base.add(LINE + (n as usize % SLOTS) * LINE + 4 * w).cast::<AtomicU32>() }
}

/// The number a message's first box `n` carries (counting boxes from 0):
/// never 0, so
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
    /// is free; `Ok(false)` if it must go through the ring. The caller has
    /// made sure the ring holds nothing the receiver has not read. A count
    /// of taken messages that cannot be is an error naming `peer`.
    pub(super) fn try_send(&mut self, header: &Header, payload: &[u8], peer: &str) -> Result<bool> {
        if payload.len() > FASTBOX_DATA {
            return Ok(false);
        }
        let boxes = boxes_for(payload.len());
        if self.sent + boxes - self.taken_seen > SLOTS as u64 {
            let taken = taken_counter(self.base).load(Ordering::Acquire);
            if taken < self.taken_seen || taken > self.sent {
                return Err(Error::protocol(
                    peer,
                    "fastbox taken",
                    format!(
                        "{taken}, with {} sent and {} seen taken before",
                        self.sent, self.taken_seen
                    ),
                ));
            }
            self.taken_seen = taken;
            if self.sent + boxes - taken > SLOTS as u64 {
                return Ok(false);
            }
        }
        let n = self.sent;
        let (start, more) = payload.split_at(payload.len().min(FIRST_DATA));
        // The further boxes first: all of it is seen once the first box's
        // number is (Release).
        for (b, chunk) in more.chunks(MORE_DATA).enumerate() {
            let m = n + 1 + b as u64;
            word(self.base, m, 0).store(0, Ordering::Relaxed);
            store_words(self.base, m, 1, chunk);
        }
        let first = header.kind as u32 | (payload.len() as u32) << 4 | u32::from(header.element) << 16;
        let fields = [first, header.tag, header.context.0, header.call];
        for (w, value) in fields.into_iter().enumerate() {
            word(self.base, n, 1 + w).store(value, Ordering::Relaxed);
        }
        store_words(self.base, n, 1 + FIELDS, start);
        word(self.base, n, 0).store(stamp(n), Ordering::Release);
        self.sent += boxes;
        // The box a few on, if the receiver is done with it.
        if self.sent + AHEAD - self.taken_seen <= SLOTS as u64 {
            super::prefetch::for_write(word(self.base, self.sent - 1 + AHEAD, 0).as_ptr().cast());
        }
        Ok(true)
    }

    /// True if the receiver's published count says it took every box
    /// written (it publishes the exact count when it finalizes).
    pub(super) fn all_taken(&self) -> bool {
        taken_counter(self.base).load(Ordering::Acquire) >= self.sent
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
        self.watch().ready()
    }

    /// The message in the next fastbox from rank `from`, checked, into
    /// `out` (untouched if the box is empty; partly written, and to be
    /// dropped, on an error): true if there was one.
    /// It stays there until [`FastboxRx::take_one`]. A malformed box is an
    /// error naming the peer and the field. A caller that takes many
    /// reuses one `Boxed` and moves none.
    pub(super) fn peek_into(&self, from: usize, out: &mut Boxed) -> Result<bool> {
        if !self.ready() {
            return Ok(false);
        }
        let n = self.taken;
        // The stamp was loaded with Acquire after the sender stored the
        // words before its Release.
        let load = |w: usize| word(self.base, n, w).load(Ordering::Relaxed);
        let first = load(1);
        let (kind, len, element) = (
            (first & 0xf) as u8,
            ((first >> 4) & 0xfff) as usize,
            (first >> 16) as u16,
        );
        let peer = || format!("rank {from}");
        let kind = match Kind::from_byte(kind) {
            Some(k) if k.is_message() => k,
            _ => return Err(Error::protocol(peer(), "kind", format!("fastbox kind {kind}"))),
        };
        let header = Header {
            kind,
            element,
            source: from as u32,
            tag: load(2),
            context: Context(load(3)),
            call: load(4),
            len: len as u64,
        };
        header.check(peer, FASTBOX_DATA as u64)?;
        // Into memory of this rank's own first (no allocation: a message
        // that lands in a receive's buffer needs none).
        let (start, more) = out.bytes[..len].split_at_mut(len.min(FIRST_DATA));
        load_words(self.base, n, 1 + FIELDS, start);
        for (b, chunk) in more.chunks_mut(MORE_DATA).enumerate() {
            let m = n + 1 + b as u64;
            // A further box is never stamped: a number there means the
            // sender and this rank count boxes differently.
            if word(self.base, m, 0).load(Ordering::Relaxed) != 0 {
                return Err(Error::protocol(
                    peer(),
                    "fastbox",
                    "a message's further box carries a sequence number",
                ));
            }
            load_words(self.base, m, 1, chunk);
        }
        out.len = len;
        out.head = Arrived::of_header(from, &header);
        Ok(true)
    }

    /// Takes the message [`FastboxRx::peek_into`] found: its boxes are free
    /// again.
    pub(super) fn take_one(&mut self, boxed: &Boxed) {
        let before = self.taken;
        self.taken += boxes_for(boxed.len);
        if self.taken / PUBLISH_EVERY != before / PUBLISH_EVERY {
            self.publish_taken();
        }
    }

    /// Watches the next fastbox, for a wait that polls it without the
    /// mesh (see [`FastboxWatch`]).
    pub(super) fn watch(&self) -> FastboxWatch {
        FastboxWatch {
            base: self.base,
            next: self.taken,
        }
    }

    /// Delivers every message waiting in the fastboxes from rank `from`, in
    /// order; true if there was any. A malformed box is an error naming the
    /// peer and the field.
    pub(super) fn drain(&mut self, from: usize, deliver: &mut Delivery<'_>) -> Result<bool> {
        if !self.ready() {
            return Ok(false);
        }
        let start = self.taken;
        let mut boxed = Boxed::empty(from);
        while self.peek_into(from, &mut boxed)? {
            let (head, payload) = (&boxed.head, boxed.payload());
            if !deliver.land_whole(head, payload) {
                let mut env = Envelope::new(from, head.tag, head.context, head.format, payload.to_vec());
                env.call = head.call;
                deliver.deliver(env);
            }
            self.taken += boxes_for(boxed.len);
        }
        if self.taken == start {
            return Ok(false);
        }
        // Publish the count every half-round of slots: each store costs the
        // sender's next read of the line a transfer between cores.
        if self.taken / PUBLISH_EVERY != start / PUBLISH_EVERY {
            self.publish_taken();
        }
        Ok(true)
    }

    /// Publishes the exact count of boxes taken.
    pub(super) fn publish_taken(&self) {
        taken_counter(self.base).store(self.taken, Ordering::Release);
    }
}

#[cfg(test)]
#[path = "fastbox_tests.rs"]
mod tests;
