//! Fastboxes: half-cache-line mailboxes beside the ring (1024 per pair of
//! ranks on a node and direction, 32 KiB, on a node of up to 8 ranks;
//! fewer on larger nodes: see [`slots_for`]), for messages of at most
//! [`FASTBOX_DATA`] bytes. A message takes as many consecutive boxes as
//! its fields and payload need (at most [`MOST_BOXES`]): one for up to 16
//! bytes (12 for a collective message, which carries a call number), so
//! that two small messages share a cache line and a stream its receiver
//! trails moves one line per two messages. The ring needs its head, the
//! frame header, the payload, and a copy out of the ring before the
//! message can be read.
//!
//! A message's first box holds its sequence number and, in the same
//! 8-byte word (stored last), kind, length and element; then tag, context,
//! the collective call number only if it has one, and the start of its
//! payload. Each further box holds 0 in its first 4 bytes, where a first
//! box has its number (never a sequence number, so a box is never taken
//! for the start of a message it only continues, whatever its payload),
//! and the next 28 bytes. The receiver counts boxes taken, not messages.
//!
//! Order with the ring: the sender puts a message in a fastbox only when it
//! has nothing queued and the receiver has read every ring byte, so ring
//! bytes the receiver has not read were all written after every fastbox
//! message still waiting. The receiver empties the fastboxes before it
//! reads the ring, and trusts a newly loaded ring head only if no fastbox
//! is full after loading it: bytes written after a fastbox message make
//! that message visible to whoever sees them (Release, then Acquire).
//!
//! A slot is read and written as 8-byte atomic words only (two 4-byte
//! fields each, the first lower), and every field is checked like a frame
//! header's before it is used.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::wire::Header;

/// One fastbox: half a cache line.
const BOX: usize = 32;
/// The 8-byte words of a box.
const BOX_WORDS: usize = BOX / 8;
/// Fastboxes per pair and direction on a node of `local` ranks (a power
/// of two): a sender can be this many boxes (one per message of up to 16
/// bytes, 12 with a call number) ahead of its receiver before it falls
/// back to the ring. With 1024 a window of 64 sends (OSU's `osu_bw`) of up
/// to 256 bytes (ten boxes) fits whole, where a window that runs out of
/// boxes goes on through the ring (with 128 boxes a window of 64-byte
/// messages did, two thirds of the way: `osu_bw` 64 B 480 against 650 MB/s
/// with 256). Every pair of a node has its boxes, reserved at start-up:
/// 32 KiB a pair and direction up to 8 ranks, 4 KiB from 33 ranks on
/// (about 16 MiB in all on a node of 64, where 256 boxes took 32).
pub(crate) fn slots_for(local: usize) -> usize {
    match local {
        0..=8 => 1024,
        9..=16 => 512,
        17..=32 => 256,
        _ => MIN_SLOTS,
    }
}
/// The fewest fastboxes of a pair and direction: enough for the longest
/// message ([`MOST_BOXES`]) to leave room for others.
const MIN_SLOTS: usize = 128;
/// How many boxes ahead of the one it writes a sender asks for its line
/// (see `prefetch.rs`).
const AHEAD: u64 = 8;
/// The receiver publishes how many boxes it has taken every quarter of
/// its boxes (each publication costs the sender's next look a line
/// transfer). A sender's view of the boxes taken lags by fewer than that,
/// so at least three quarters of them and one (769 of 1024) are free to
/// it once its receiver has taken everything: a window of 64 ten-box
/// messages.
fn publish_every(slots: usize) -> u64 {
    slots as u64 / 4
}
/// A cache line: the receiver's count of boxes taken has one of its own.
const LINE: usize = 64;
/// The bytes of a fastbox area of `slots` boxes (one pair and direction):
/// the receiver's count of boxes taken (a line of its own), then the
/// slots.
pub(super) fn area_bytes(slots: usize) -> usize {
    LINE + slots * BOX
}
/// The 4-byte fields of a message's first box before its payload: its sequence
/// number, kind with length and element (4, 11 and 16 bits, and
/// [`CALL_FOLLOWS`]), tag, context; then the call number if
/// [`CALL_FOLLOWS`] says so.
const HEAD_FIELDS: usize = 4;
/// The bit of the length field that says a call number follows the
/// context (a collective message's; every other message has none).
const CALL_FOLLOWS: u32 = 1 << 15;
/// The most boxes one message takes: ten, five cache lines (six from an
/// odd box), for a message of up to 264 bytes. Through the ring such a
/// message took half as long again one way in a latency test (0.37
/// against 0.26 µs at 128 bytes): the reader finds it through the ring's
/// head, on a line of its own, and publishes its tail on another. (Fastboxes of five whole
/// lines were tried when there were 4 KiB of them: a stream of 128-byte
/// messages ran out of boxes a third of the way through a window of 64
/// and went on through the ring, moving a third less than through the
/// ring alone.)
pub(super) const MOST_BOXES: usize = 10;
/// The payload bytes in each further box of a message (all but its first
/// 4 bytes, 0).
const MORE_DATA: usize = BOX - 4;
/// The largest payload the fastboxes carry (264 bytes): what
/// [`MOST_BOXES`] hold after the fields of a message with a call number.
pub(crate) const FASTBOX_DATA: usize = first_data(true) + (MOST_BOXES - 1) * MORE_DATA;
const _: () = assert!(FASTBOX_DATA < 1 << 11, "the length has 11 bits");
const _: () = assert!(MOST_BOXES <= MIN_SLOTS / 4, "a long message must leave room for others");

/// The 4-byte fields of the first box before the payload of a message with or
/// without a call number.
const fn head_fields(with_call: bool) -> usize {
    HEAD_FIELDS + with_call as usize
}

/// The payload bytes in the first box of a message with or without a call
/// number (12 or 16).
const fn first_data(with_call: bool) -> usize {
    BOX - 4 * head_fields(with_call)
}

/// The boxes a message of `len` payload bytes (at most [`FASTBOX_DATA`])
/// takes, with or without a call number.
fn boxes_for(len: usize, with_call: bool) -> u64 {
    let first = first_data(with_call);
    if len <= first {
        1
    } else {
        1 + (len - first).div_ceil(MORE_DATA) as u64
    }
}

/// A message's payload padded to whole boxes, in this rank's own memory:
/// the fastboxes are written and read a whole 8-byte word at a time from
/// and into it, with no copy of a length the compiler does not know per
/// box (the padding is zeros on the way out and ignored on the way in).
const PADDED: usize = MOST_BOXES * BOX;
const _: () = assert!(first_data(false) + (MOST_BOXES - 1) * MORE_DATA <= PADDED);

/// The 8 bytes of `bytes` from `at`, as a word.
fn word_at(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The 4 bytes of `bytes` from `at`, as a half word.
fn half_at(bytes: &[u8], at: usize) -> u32 {
    let mut w = [0; 4];
    w.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(w)
}

/// Two half words as one word, `low` first in memory.
fn pair(low: u32, high: u32) -> u64 {
    u64::from(low) | u64::from(high) << 32
}

/// Where a message's further box `b` (from 1) starts in its payload.
fn further_at(b: usize, with_call: bool) -> usize {
    first_data(with_call) + (b - 1) * MORE_DATA
}

/// The sending side of the fastboxes from this rank to one peer (in the
/// peer's segment).
#[derive(Debug)]
pub(super) struct FastboxTx {
    base: *mut u8,
    /// The boxes of the area ([`slots_for`] the node).
    slots: usize,
    /// Boxes written so far.
    sent: u64,
    /// The receiver's count of boxes taken, when last read.
    taken_seen: u64,
}

/// The area's count of boxes taken.
fn taken_counter<'a>(base: *mut u8) -> &'a AtomicU64 {
    // SAFETY: the first line of a fastbox area, aligned, inside a mapping
    // that outlives the link holding `base` (and so the caller's use).
    unsafe { &*base.cast::<AtomicU64>() }
}

/// The words of box `n` (counting from the first box ever; the count
/// goes round the area's `slots` boxes, a power of two).
#[inline]
fn slot<'a>(base: *mut u8, slots: usize, n: u64) -> &'a [AtomicU64; BOX_WORDS] {
    debug_assert!(slots.is_power_of_two());
    // SAFETY: slot n mod `slots` lies inside the area; its words are
    // 8-byte aligned (the area starts a control block, at a multiple of 64
    // in its segment, and boxes are 32 bytes).
    unsafe {
        &*base
            .add(LINE + (n as usize & (slots - 1)) * BOX)
            .cast::<[AtomicU64; BOX_WORDS]>()
    }
}

/// The number a message's first box `n` carries (counting boxes from 0):
/// never 0, so
/// a fresh (zeroed) slot holds nothing; it wraps, which is fine because a
/// slot is only ever compared with the one number expected next.
fn stamp(n: u64) -> u32 {
    (n as u32).wrapping_add(1).max(1)
}

impl FastboxTx {
    /// The sender's view of the fastbox area of `slots` boxes (a power of
    /// two, at least [`MIN_SLOTS`]) at `base` (in the peer's segment, which
    /// must stay mapped as long as this value is used).
    pub(super) fn new(base: *mut u8, slots: usize) -> FastboxTx {
        assert!(slots.is_power_of_two() && slots >= MIN_SLOTS, "{slots} fastboxes");
        FastboxTx {
            base,
            slots,
            sent: 0,
            taken_seen: 0,
        }
    }

    /// Writes a message into the next fastbox if the payload fits and a box
    /// is free; `Ok(false)` if it must go through the ring. The caller has
    /// made sure the ring holds nothing the receiver has not read. A count
    /// of taken boxes that cannot be is an error naming `peer`.
    ///
    /// In line: a stream sends every small message through it (a longer
    /// one's store, and a look at the receiver's count when the boxes seem
    /// full, are out of line).
    #[inline]
    pub(super) fn try_send(&mut self, header: &Header, payload: &[u8], peer: &str) -> Result<bool> {
        if payload.len() > FASTBOX_DATA {
            return Ok(false);
        }
        let with_call = header.call != 0;
        let boxes = boxes_for(payload.len(), with_call);
        let slots = self.slots as u64;
        if self.sent + boxes - self.taken_seen > slots && !self.room_after_all(boxes, peer)? {
            return Ok(false);
        }
        // A padded copy no longer than the message needs: zeroing the
        // longest one for every 8-byte message cost it 35 instructions.
        match boxes {
            1..=2 => self.store::<{ 2 * BOX }>(header, payload, boxes),
            _ => self.store_long(header, payload, boxes),
        }
        self.sent += boxes;
        // The box a few on, if the receiver is done with it.
        if self.sent + AHEAD - self.taken_seen <= slots {
            super::prefetch::for_write(slot(self.base, self.slots, self.sent - 1 + AHEAD)[0].as_ptr().cast());
        }
        Ok(true)
    }

    /// True if the receiver's count of boxes taken, read again, leaves room
    /// for `boxes` more; a count that cannot be is an error naming `peer`.
    #[inline(never)]
    fn room_after_all(&mut self, boxes: u64, peer: &str) -> Result<bool> {
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
        Ok(self.sent + boxes - taken <= self.slots as u64)
    }

    /// [`FastboxTx::store`] of a message of more than two boxes.
    #[inline(never)]
    fn store_long(&self, header: &Header, payload: &[u8], boxes: u64) {
        match boxes {
            3..=4 => self.store::<{ 4 * BOX }>(header, payload, boxes),
            _ => self.store::<PADDED>(header, payload, boxes),
        }
    }

    /// Stores a message of `boxes` boxes (at most `N / BOX`) from box
    /// `sent` on, through a copy of its payload padded to `N` bytes.
    #[inline]
    fn store<const N: usize>(&self, header: &Header, payload: &[u8], boxes: u64) {
        debug_assert!(boxes as usize * BOX <= N);
        let with_call = header.call != 0;
        let n = self.sent;
        let mut padded = [0; N];
        // SAFETY: `padded` has room for the payload (`boxes` of them do).
        unsafe { crate::short_copy::copy_short(payload, padded.as_mut_ptr()) };
        // Everything before the first word: all of it is seen once the
        // sequence number in that word is (Release). The further boxes
        // first: 0 where a first box has its number, then 28 bytes.
        // Two boxes (17 to 44 bytes, 13 to 40 with a call number): the
        // second at an offset the compiler knows, with no loop.
        match (boxes, with_call) {
            (1, _) => {}
            (2, false) => self.store_further(&padded, 1, further_at(1, false)),
            (2, true) => self.store_further(&padded, 1, further_at(1, true)),
            _ => {
                for b in 1..boxes as usize {
                    self.store_further(&padded, b, further_at(b, with_call));
                }
            }
        }
        let fields = header.kind as u32
            | (payload.len() as u32) << 4
            | if with_call { CALL_FOLLOWS } else { 0 }
            | u32::from(header.element) << 16;
        let words = slot(self.base, self.slots, n);
        words[1].store(pair(header.tag, header.context.0), Ordering::Relaxed);
        let (third, fourth) = if with_call {
            (pair(header.call, half_at(&padded, 0)), word_at(&padded, 4))
        } else {
            (word_at(&padded, 0), word_at(&padded, 8))
        };
        words[2].store(third, Ordering::Relaxed);
        words[3].store(fourth, Ordering::Relaxed);
        words[0].store(pair(stamp(n), fields), Ordering::Release);
    }

    /// Stores further box `b` of the message from box `sent` on: 0 where
    /// a first box has its number, then 28 bytes of `padded` from `at`.
    #[inline(always)]
    fn store_further<const N: usize>(&self, padded: &[u8; N], b: usize, at: usize) {
        let words = slot(self.base, self.slots, self.sent + b as u64);
        words[0].store(pair(0, half_at(padded, at)), Ordering::Relaxed);
        for (w, word) in words[1..].iter().enumerate() {
            word.store(word_at(padded, at + 4 + 8 * w), Ordering::Relaxed);
        }
    }

    /// True if the receiver's published count says it took every box
    /// written (it publishes the exact count when it finalizes).
    pub(super) fn all_taken(&self) -> bool {
        taken_counter(self.base).load(Ordering::Acquire) >= self.sent
    }
}

mod receive;

pub(super) use receive::FastboxRx;
pub(crate) use receive::{Boxed, FastboxWatch};

#[cfg(test)]
#[path = "fastbox_tests.rs"]
mod tests;
