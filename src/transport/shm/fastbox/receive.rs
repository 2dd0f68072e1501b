//! The receiving side of the fastboxes: a peer's messages read out of its
//! boxes in this rank's segment, checked field by field, and the count of
//! boxes taken published back (see the parent module for the layout).

use std::mem::MaybeUninit;
use std::sync::atomic::Ordering;

use crate::envelope::{Envelope, Format};
use crate::error::{Error, Result};
use crate::matching::{Arrived, Sink};
use crate::wire::{Context, Header, Kind};

use super::super::super::Delivery;
use super::{
    AHEAD, CALL_FOLLOWS, FASTBOX_DATA, MIN_SLOTS, PADDED, boxes_for, further_at, publish_every, slot, stamp,
    taken_counter,
};

/// The receiving side of the fastboxes from one peer (in this rank's
/// segment).
#[derive(Debug)]
pub(in crate::transport::shm) struct FastboxRx {
    base: *mut u8,
    /// The boxes of the area ([`super::slots_for`] the node).
    slots: usize,
    /// Boxes taken so far.
    taken: u64,
}

/// A message read out of a fastbox: what its header says, and its
/// payload.
#[derive(Debug)]
pub(crate) struct Boxed {
    pub head: Arrived,
    /// The payload's length: its first `len` bytes of `bytes` are written
    /// (by [`FastboxRx::peek_into`], which sets `len` only after it wrote
    /// them).
    len: usize,
    /// The boxes the message took.
    boxes: u64,
    /// Not cleared first: every receive makes a `Boxed`, and clearing
    /// this many bytes cost it a call of `memset` (38 instructions).
    bytes: [MaybeUninit<u8>; PADDED],
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
            boxes: 0,
            bytes: [MaybeUninit::uninit(); PADDED],
        }
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        let written = &self.bytes[..self.len];
        // SAFETY: the first `len` bytes are written (see `len`), and
        // `MaybeUninit<u8>` has the layout of `u8`.
        unsafe { std::slice::from_raw_parts(written.as_ptr().cast::<u8>(), written.len()) }
    }
}

/// Writes `from` into `bytes` from `at` on.
#[inline]
fn put(bytes: &mut [MaybeUninit<u8>], at: usize, from: &[u8]) {
    for (to, b) in bytes[at..at + from.len()].iter_mut().zip(from) {
        *to = MaybeUninit::new(*b);
    }
}

/// Whether the next fastbox from one peer holds a message, seen without
/// the mesh: for a wait that polls it while it holds the engine. Valid
/// while the mesh it came from is, and until that box is taken.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FastboxWatch {
    base: *mut u8,
    slots: usize,
    next: u64,
}

impl FastboxWatch {
    /// True if the box holds its message.
    pub fn ready(&self) -> bool {
        slot(self.base, self.slots, self.next)[0].load(Ordering::Acquire) as u32 == stamp(self.next)
    }
}

impl FastboxRx {
    /// The receiver's view of the fastbox area of `slots` boxes (a power
    /// of two, at least [`MIN_SLOTS`]) at `base` (in this rank's segment).
    pub(in crate::transport::shm) fn new(base: *mut u8, slots: usize) -> FastboxRx {
        assert!(slots.is_power_of_two() && slots >= MIN_SLOTS, "{slots} fastboxes");
        FastboxRx { base, slots, taken: 0 }
    }

    /// True if the next fastbox holds a message.
    pub(in crate::transport::shm) fn ready(&self) -> bool {
        self.watch().ready()
    }

    /// The message in the next fastbox from rank `from`, checked, into
    /// `out` (untouched if the box is empty; partly written, and to be
    /// dropped, on an error): true if there was one.
    /// It stays there until [`FastboxRx::take_one`]. A malformed box is an
    /// error naming the peer and the field. A caller that takes many
    /// reuses one `Boxed` and moves none.
    #[inline(always)]
    pub(in crate::transport::shm) fn peek_into(&self, from: usize, out: &mut Boxed) -> Result<bool> {
        let n = self.taken;
        let words = slot(self.base, self.slots, n);
        // The sender stored every other word before its Release of this one.
        let head = words[0].load(Ordering::Acquire);
        if head as u32 != stamp(n) {
            return Ok(false);
        }
        let fields = (head >> 32) as u32;
        let (kind, len, with_call, element) = (
            (fields & 0xf) as u8,
            ((fields >> 4) & 0x7ff) as usize,
            fields & CALL_FOLLOWS != 0,
            (fields >> 16) as u16,
        );
        let peer = || format!("rank {from}");
        let kind = match Kind::from_byte(kind) {
            Some(k) if k.is_message() => k,
            _ => return Err(Error::protocol(peer(), "kind", format!("fastbox kind {kind}"))),
        };
        let [tag_context, third, fourth] = [1, 2, 3].map(|w| words[w].load(Ordering::Relaxed));
        let header = Header {
            kind,
            element,
            source: from as u32,
            tag: tag_context as u32,
            context: Context((tag_context >> 32) as u32),
            call: if with_call { third as u32 } else { 0 },
            len: len as u64,
        };
        header.check(peer, FASTBOX_DATA as u64)?;
        // Into memory of this rank's own first (no allocation: a message
        // that lands in a receive's buffer needs none), whole words.
        let bytes = &mut out.bytes;
        if with_call {
            put(bytes, 0, &((third >> 32) as u32).to_le_bytes());
            put(bytes, 4, &fourth.to_le_bytes());
        } else {
            put(bytes, 0, &third.to_le_bytes());
            put(bytes, 8, &fourth.to_le_bytes());
        }
        let boxes = boxes_for(len, with_call);
        // A message of two boxes (17 to 44 bytes, 13 to 40 with a call
        // number) reads its second box at an offset the compiler knows,
        // with no loop and no bounds checks.
        match (boxes, with_call) {
            (1, _) => {}
            (2, false) => self.further_into(n, 1, bytes, further_at(1, false), &peer)?,
            (2, true) => self.further_into(n, 1, bytes, further_at(1, true), &peer)?,
            _ => {
                for b in 1..boxes as usize {
                    self.further_into(n, b, bytes, further_at(b, with_call), &peer)?;
                }
            }
        }
        out.boxes = boxes;
        out.len = len;
        out.head = Arrived::of_header(from, &header);
        Ok(true)
    }

    /// Box `b` of the message whose first box is `n`, a further one, into
    /// `bytes` from `at` on; a further box that carries a sequence number
    /// is an error naming the peer.
    #[inline(always)]
    fn further_into(
        &self,
        n: u64,
        b: usize,
        bytes: &mut [MaybeUninit<u8>; PADDED],
        at: usize,
        peer: &impl Fn() -> String,
    ) -> Result<()> {
        let words = slot(self.base, self.slots, n + b as u64);
        let start = words[0].load(Ordering::Relaxed);
        // A further box is never stamped: a number there means the
        // sender and this rank count boxes differently.
        if start as u32 != 0 {
            return Err(Error::protocol(
                peer(),
                "fastbox",
                "a message's further box carries a sequence number",
            ));
        }
        put(bytes, at, &((start >> 32) as u32).to_le_bytes());
        for (w, word) in words[1..].iter().enumerate() {
            put(bytes, at + 4 + 8 * w, &word.load(Ordering::Relaxed).to_le_bytes());
        }
        Ok(())
    }

    /// Takes the message [`FastboxRx::peek_into`] found: its boxes are free
    /// again.
    pub(in crate::transport::shm) fn take_one(&mut self, boxed: &Boxed) {
        let before = self.taken;
        self.taken += boxed.boxes;
        self.publish_past(before);
    }

    /// Publishes the count of boxes taken if it passed a multiple of
    /// [`publish_every`] since it was `before`: each store costs the
    /// sender's next read of the line a transfer between cores.
    fn publish_past(&self, before: u64) {
        let every = publish_every(self.slots);
        if self.taken / every != before / every {
            self.publish_taken();
        }
    }

    /// Watches the next fastbox, for a wait that polls it without the
    /// mesh (see [`FastboxWatch`]).
    pub(in crate::transport::shm) fn watch(&self) -> FastboxWatch {
        FastboxWatch {
            base: self.base,
            slots: self.slots,
            next: self.taken,
        }
    }

    /// Delivers every message waiting in the fastboxes from rank `from`, in
    /// order; true if there was any. A malformed box is an error naming the
    /// peer and the field.
    pub(in crate::transport::shm) fn drain(&mut self, from: usize, deliver: &mut Delivery<'_>) -> Result<bool> {
        if !self.ready() {
            return Ok(false);
        }
        match deliver.as_matcher() {
            Some(matcher) => self.drain_into(from, matcher),
            None => self.drain_into(from, deliver),
        }
    }

    /// [`FastboxRx::drain`] into a sink of a known type: the engine's
    /// matcher, whose landing is then in line in the loop, or any other.
    fn drain_into<S: Sink + ?Sized>(&mut self, from: usize, deliver: &mut S) -> Result<bool> {
        let start = self.taken;
        let mut boxed = Boxed::empty(from);
        while self.peek_into(from, &mut boxed)? {
            let (head, payload) = (&boxed.head, boxed.payload());
            if !deliver.land_whole(head, payload) {
                deliver.deliver(Envelope::of_arrived(head, payload.to_vec()));
            }
            self.taken += boxed.boxes;
            // A stream of messages of a line or more falls behind its
            // sender (reading each line costs a transfer from the sender's
            // core, writing one does not wait for it), so the line a few
            // boxes on is written already: asking for it now overlaps its
            // transfer with this work (`osu_bw` 32 B 519 -> 643 MB/s).
            // Not after a message of one box: a stream of those keeps up,
            // and asking takes the line from the sender before it writes
            // there (8 B 151 -> 120 MB/s when asked after every message).
            if boxed.boxes > 1 {
                super::super::prefetch::for_read(slot(self.base, self.slots, self.taken + AHEAD)[0].as_ptr().cast());
            }
        }
        if self.taken == start {
            return Ok(false);
        }
        self.publish_past(start);
        Ok(true)
    }

    /// Publishes the exact count of boxes taken.
    pub(in crate::transport::shm) fn publish_taken(&self) {
        taken_counter(self.base).store(self.taken, Ordering::Release);
    }
}
