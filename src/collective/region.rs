//! The layout of the region the node-wide collectives share (in the node
//! leader's segment): a control line (an arrival counter and a
//! generation), one line per rank saying which collective call it is in,
//! two sets of one slot per rank and a result slot, then the windows of
//! the large collectives.
//!
//! A slot holds a header of four 32-bit words (length, mark, stamp, spare)
//! and up to [`PART_MAX`] bytes. Every rank can write the region, so every
//! read of it is checked (a length past the slot, an unknown mark) and
//! copied out through raw pointers: no Rust reference ever points into it
//! except the atomic words.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::transport::Region;

use super::window::{Windows, windows_len};

const CONTROL: usize = 128;
const SLOT: usize = 4096;
const SLOT_HEADER: usize = 16;
/// The most bytes a rank contributes to a node-wide collective.
pub(crate) const PART_MAX: usize = SLOT - SLOT_HEADER;
/// The mark of a result slot whose collective failed.
pub(crate) const FAILED: u32 = 0xff;

/// The bytes of the region for a node of `n` ranks: the world's slots and
/// windows, then the pool of the other communicators' regions.
pub(crate) fn region_len(n: usize) -> usize {
    slots_end(n) + windows_len(n) + super::pool::pool_len(n)
}

/// Where the pool starts in the region of a node of `n` ranks.
pub(crate) fn pool_start(n: usize) -> usize {
    slots_end(n) + windows_len(n)
}

/// Where the slots start: after the control line and one line per rank.
fn slots_start(n: usize) -> usize {
    CONTROL + n * 64
}

/// Where the slots of a region for `n` ranks end (the bytes a region
/// without windows takes).
pub(crate) fn slots_end(n: usize) -> usize {
    slots_start(n) + 2 * (n + 1) * SLOT
}

/// The slots of a region, for a node of `n` ranks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slots {
    base: *mut u8,
    n: usize,
    /// The windows of the large collectives follow the slots (the world's
    /// region; the pooled ones have none).
    windowed: bool,
}

// SAFETY: the region is shared memory mapped for as long as the rank's
// engine lives, and every holder of slots holds the job (and so the engine)
// alive; every access to it goes through atomics or checked raw copies.
unsafe impl Send for Slots {}

impl Slots {
    /// The slots of `region`, if it is large enough for `n` ranks.
    pub fn of(region: Region, n: usize) -> Option<Slots> {
        (region.len >= region_len(n)).then_some(Slots {
            base: region.base,
            n,
            windowed: true,
        })
    }

    /// The slots of a region without windows for `n` ranks at `base`.
    ///
    /// # Safety
    ///
    /// `base` must start [`slots_end`]`(n)` bytes of a mapped region, 64-byte
    /// aligned, that stays mapped while the slots are used.
    pub unsafe fn unwindowed(base: *mut u8, n: usize) -> Slots {
        Slots {
            base,
            n,
            windowed: false,
        }
    }

    /// True if the windows of the large collectives follow the slots.
    pub fn has_windows(&self) -> bool {
        self.windowed
    }

    /// Clears what the last communicator that used these slots left: the
    /// counters, the calls the ranks were in, and every slot's header.
    pub fn reset(&self) {
        self.arrived().store(0, Ordering::Relaxed);
        self.generation().store(0, Ordering::Relaxed);
        for r in 0..self.n {
            self.current(r).store(0, Ordering::Relaxed);
        }
        for set in 0..2 {
            for index in 0..=self.n {
                let at = self.slot(set, index);
                for word in 0..4 {
                    self.word(at + 4 * word).store(0, Ordering::Relaxed);
                }
            }
        }
    }

    /// A word of the control line no collective uses (the pool keeps the
    /// count of the members that still hold a pooled region there).
    pub fn spare(&self) -> &AtomicU32 {
        self.word(32)
    }

    /// The collective call rank `r` is in: `1 << 63 | call word`, written
    /// when it enters each collective, so that a rank waiting in another
    /// collective at the same call sees the disagreement even when no
    /// message of one reaches the other.
    pub fn current(&self, r: usize) -> &AtomicU64 {
        debug_assert!(r < self.n);
        // SAFETY: the line of rank r, inside the region, aligned.
        unsafe { &*self.base.add(CONTROL + r * 64).cast::<AtomicU64>() }
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset % 4 == 0 && offset + 4 <= slots_end(self.n));
        // SAFETY: inside the region (checked in `of`), aligned; atomics
        // may be written by other processes at the same time.
        unsafe { &*self.base.add(offset).cast::<AtomicU32>() }
    }

    /// The arrival counter (when the last rank to arrive folds).
    pub fn arrived(&self) -> &AtomicU32 {
        self.word(0)
    }

    /// The number of the last call whose result is published.
    pub fn generation(&self) -> &AtomicU32 {
        self.word(64)
    }

    fn slot(&self, set: usize, index: usize) -> usize {
        debug_assert!(index <= self.n);
        slots_start(self.n) + ((set % 2) * (self.n + 1) + index) * SLOT
    }

    /// The stamp of slot `index` of `set`: the call whose part it holds.
    pub fn stamp(&self, set: usize, index: usize) -> &AtomicU32 {
        self.word(self.slot(set, index) + 8)
    }

    /// Writes `bytes` (at most [`PART_MAX`]) into slot `index` of `set`
    /// (index `n` is the result slot) with `mark` and the length `claim`
    /// of the caller's buffer. Only this rank writes the slot in this phase.
    pub fn put(&self, set: usize, index: usize, mark: u32, claim: u32, bytes: &[u8]) {
        let len = bytes.len().min(PART_MAX);
        let at = self.slot(set, index);
        // SAFETY: the data area of the slot holds PART_MAX bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(at + SLOT_HEADER), len) };
        self.word(at).store(len as u32, Ordering::Relaxed);
        self.word(at + 4).store(mark, Ordering::Relaxed);
        self.word(at + 12).store(claim, Ordering::Relaxed);
    }

    /// Marks the result slot of `set` as failed, with the reason.
    pub fn put_failed(&self, set: usize, reason: &str) {
        let mut end = reason.len().min(PART_MAX);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.put(set, self.n, FAILED, 0, &reason.as_bytes()[..end]);
    }

    /// Appends the bytes of slot `index` of `set` to `out` and returns its
    /// mark and claim. A length past the slot is an error naming `who`
    /// wrote it (called only then).
    pub fn get(&self, set: usize, index: usize, out: &mut Vec<u8>, who: impl FnOnce() -> String) -> Result<(u32, u32)> {
        let at = self.slot(set, index);
        let len = self.word(at).load(Ordering::Relaxed) as usize;
        let mark = self.word(at + 4).load(Ordering::Relaxed);
        let claim = self.word(at + 12).load(Ordering::Relaxed);
        if len > PART_MAX {
            return Err(Error::protocol(
                who(),
                "node slot length",
                format!("{len} bytes in a slot of {PART_MAX}"),
            ));
        }
        let start = out.len();
        out.resize(start + len, 0);
        // SAFETY: `len` bytes of the slot's data area, copied into memory
        // of this rank's own.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(at + SLOT_HEADER), out[start..].as_mut_ptr(), len) };
        Ok((mark, claim))
    }

    /// The windows that follow the slots (only where
    /// [`Slots::has_windows`]).
    pub fn windows(&self) -> Windows {
        debug_assert!(self.windowed, "a pooled region has no windows");
        // SAFETY: the windows follow the slots inside the region (its
        // length was checked in `of`).
        Windows::at(unsafe { self.base.add(slots_end(self.n)) }, self.n)
    }
}

/// The parts of every rank, copied out of the region, for a fold.
#[derive(Debug, Default)]
pub(crate) struct Parts {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Parts {
    /// Empties the parts, keeping their memory.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// The buffer the next part is appended to; [`Parts::close`] ends it.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Ends the part appended since the last one.
    pub fn close(&mut self) {
        self.ends.push(self.bytes.len());
    }

    /// The number of parts.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Part `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }
}

/// Reads every slot of a region for two ranks filled with fuzzer bytes, as
/// a rank folding the parts would (see `crate::fuzzing`). Only the slots
/// are made: the windows are not read.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_slots(data: &[u8]) -> Result<()> {
    let n = 2;
    let mut memory = vec![0u64; slots_end(n) / 8];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut memory);
    let len = data.len().min(bytes.len());
    bytes[..len].copy_from_slice(&data[..len]);
    let slots = Slots {
        base: memory.as_mut_ptr().cast::<u8>(),
        n,
        windowed: false,
    };
    let mut out = Vec::new();
    for set in 0..2 {
        for index in 0..=n {
            slots.get(set, index, &mut out, || "fuzz".into())?;
        }
    }
    Ok(())
}
