//! The layout of a shared-memory segment (a header with the doorbell, then
//! one ring per sender), the rings' byte-stream operations, and the futex
//! calls a rank sleeps and wakes with.

use std::fs::File;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::Duration;

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use crate::error::{Error, Result};

pub(super) const MAGIC: u64 = u64::from_le_bytes(*b"spmd-shm");
/// Bytes before the first ring: magic, ring size, doorbell, attach count.
pub(super) const HEADER: usize = 4096;
pub(super) const OFF_MAGIC: usize = 0;
pub(super) const OFF_RING_BYTES: usize = 8;
pub(super) const OFF_DOORBELL: usize = 64;
pub(super) const OFF_ATTACHED: usize = 128;
/// A ring's control block: `head` (bytes written) and `tail` (bytes read),
/// each on its own cache line, then the pair's fastboxes.
pub(super) const RING_CONTROL: usize = 128 + super::fastbox::AREA;

pub(super) const AWAKE: u32 = 0;
pub(super) const SLEEPING: u32 = 1;

/// The largest ring between two ranks.
const MAX_RING: usize = 1 << 20;
/// The smallest ring, whatever the number of ranks.
const MIN_RING: usize = 16 << 10;
/// The most a rank's segment holds in rings (64 MiB), however many ranks.
const SEGMENT_BUDGET: usize = 64 << 20;

/// The size of each ring in a job with `local` ranks on the node: 1 MiB,
/// less when there are so many ranks that a segment would pass 64 MiB
/// (512 KiB from 65 ranks, ..., 16 KiB at the least).
pub(super) fn ring_bytes(local: usize) -> usize {
    let fit = SEGMENT_BUDGET / local.max(1);
    let mut ring = MAX_RING;
    while ring > fit && ring > MIN_RING {
        ring /= 2;
    }
    ring
}

pub(super) fn segment_len(size: usize, ring: usize) -> usize {
    rings_end(size, ring) + area_len(size)
}

fn rings_end(size: usize, ring: usize) -> usize {
    HEADER + size * (RING_CONTROL + ring)
}

/// The node-wide collective area (used in rank 0's segment only): an
/// arrival counter (beside the flag saying which way the node folds, set
/// once at start-up) and a generation, each on its own cache line, then
/// two sets (alternating between calls) of one slot per rank and one result
/// slot. A slot is a 4-byte word (the length, and in the top byte which
/// collective the part is for), a 4-byte stamp (the call it belongs to,
/// when every rank folds) and up to [`SLOT_DATA`] bytes.
const AREA_CONTROL: usize = 128;
const SLOT: usize = 4096;
/// The most bytes a rank contributes to a node-wide collective.
pub(super) const SLOT_DATA: usize = SLOT - 8;
/// The call mark of a result slot whose collective failed.
pub(super) const FAILED: u8 = 0xff;

fn area_len(size: usize) -> usize {
    slots_end(size) + super::window::windows_len(size)
}

/// Where the windows for large collectives start in the area.
fn slots_end(size: usize) -> usize {
    AREA_CONTROL + 2 * (size + 1) * SLOT
}

/// The node-wide collective area of a mapped segment.
#[derive(Debug, Clone, Copy)]
pub(super) struct Area {
    base: *mut u8,
    size: usize,
}

impl Area {
    pub(super) fn arrived(&self) -> &AtomicU32 {
        // SAFETY: inside the mapping, aligned.
        unsafe { &*self.base.cast::<AtomicU32>() }
    }

    /// The windows for large collectives, after the slots.
    pub(super) fn windows(&self) -> super::window::Windows {
        // SAFETY: the windows follow the slots inside the area.
        super::window::Windows::at(unsafe { self.base.add(slots_end(self.size)) }, self.size)
    }

    fn every_rank_folds_flag(&self) -> &AtomicU32 {
        // SAFETY: inside the mapping, aligned, beside `arrived`.
        unsafe { &*self.base.add(4).cast::<AtomicU32>() }
    }

    /// Records, once at start-up, whether every rank folds the parts
    /// itself (see [`super::node`]); every rank then reads it from here, so
    /// all agree.
    pub(super) fn set_every_rank_folds(&self, yes: bool) {
        self.every_rank_folds_flag().store(u32::from(yes), Ordering::Release);
    }

    pub(super) fn every_rank_folds(&self) -> bool {
        self.every_rank_folds_flag().load(Ordering::Acquire) == 1
    }

    /// The stamp of slot `index` of `set`: the call whose part it holds.
    pub(super) fn stamp(&self, set: usize, index: usize) -> &AtomicU32 {
        // SAFETY: the second word of a slot, aligned, inside the area.
        unsafe { &*self.slot_ptr(set, index).add(4).cast::<AtomicU32>() }
    }

    pub(super) fn generation(&self) -> &AtomicU32 {
        // SAFETY: inside the mapping, aligned, on its own cache line.
        unsafe { &*self.base.add(64).cast::<AtomicU32>() }
    }

    fn slot_ptr(&self, set: usize, index: usize) -> *mut u8 {
        debug_assert!(index <= self.size);
        // SAFETY: within the area: set < 2, index <= size.
        unsafe {
            self.base
                .add(AREA_CONTROL + ((set % 2) * (self.size + 1) + index) * SLOT)
        }
    }

    /// Writes `bytes` (at most SLOT_DATA) into slot `index` of `set`, marked
    /// with the call `call` (a number below [`FAILED`]); index `size` is the
    /// result slot.
    pub(super) fn put(&self, set: usize, index: usize, call: u8, bytes: &[u8]) {
        let len = bytes.len().min(SLOT_DATA);
        let p = self.slot_ptr(set, index);
        // SAFETY: the slot is inside the area and only its owner writes it
        // while the collective is in this phase.
        unsafe {
            p.cast::<u32>().write(len as u32 | u32::from(call) << 24);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.add(8), len);
        }
    }

    /// Marks the result slot of `set` as failed, with the reason.
    pub(super) fn put_failed(&self, set: usize, reason: &str) {
        let mut end = reason.len().min(SLOT_DATA);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.put(set, self.size, FAILED, &reason.as_bytes()[..end]);
    }

    /// The result of `set`, or the reason it failed.
    pub(super) fn result(&self, set: usize) -> std::result::Result<&[u8], String> {
        match self.get(set, self.size) {
            (FAILED, reason) => Err(String::from_utf8_lossy(reason).into_owned()),
            (_, bytes) => Ok(bytes),
        }
    }

    /// The call mark and the bytes in slot `index` of `set`.
    pub(super) fn get(&self, set: usize, index: usize) -> (u8, &[u8]) {
        let p = self.slot_ptr(set, index);
        // SAFETY: read after the Acquire that ordered the writer's Release;
        // the length is clamped to the slot.
        unsafe {
            let word = p.cast::<u32>().read();
            let len = ((word & 0xff_ffff) as usize).min(SLOT_DATA);
            ((word >> 24) as u8, std::slice::from_raw_parts(p.add(8), len))
        }
    }
}

/// The path of rank `rank`'s segment in job `job`.
pub(super) fn segment_path(job: u64, rank: usize) -> String {
    format!("/dev/shm/{}", crate::wire::segment_name(job, rank))
}

/// A mapped segment. The mapping lives as long as this value.
#[derive(Debug)]
pub(super) struct Segment {
    base: NonNull<u8>,
    len: usize,
}

impl Segment {
    pub(super) fn map(file: &File, len: usize, path: &str) -> Result<Segment> {
        let size = std::num::NonZeroUsize::new(len).ok_or_else(|| Error::InvalidArgument("empty segment".into()))?;
        // SAFETY: mapping a file we opened, shared, at a kernel-chosen address.
        let base = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                file,
                0,
            )
        }
        .map_err(|e| Error::io(format!("mapping {path}"), e.into()))?;
        Ok(Segment { base: base.cast(), len })
    }

    pub(super) fn at<T>(&self, offset: usize) -> &T {
        debug_assert!(offset + std::mem::size_of::<T>() <= self.len);
        // SAFETY: the offset is inside the mapping and aligned (every offset
        // used is a multiple of 8); atomics may alias shared memory.
        unsafe { &*self.base.as_ptr().add(offset).cast::<T>() }
    }

    pub(super) fn doorbell(&self) -> &AtomicU32 {
        self.at(OFF_DOORBELL)
    }

    /// The node-wide collective area of a segment laid out for `size` ranks
    /// with rings of `ring` bytes.
    pub(super) fn area(&self, size: usize, ring: usize) -> Area {
        let offset = rings_end(size, ring);
        assert!(
            offset + area_len(size) <= self.len,
            "the collective area is outside the segment"
        );
        Area {
            // SAFETY: inside the mapping, as just checked.
            base: unsafe { self.base.as_ptr().add(offset) },
            size,
        }
    }

    pub(super) fn ring(&self, slot: usize, ring: usize) -> Ring {
        let offset = HEADER + slot * (RING_CONTROL + ring);
        assert!(
            offset + RING_CONTROL + ring <= self.len,
            "ring {slot} is outside the segment"
        );
        // SAFETY: inside the mapping, as just checked.
        let control = unsafe { self.base.as_ptr().add(offset) };
        Ring {
            head: control.cast::<AtomicU64>(),
            // SAFETY: inside the control block.
            tail: unsafe { control.add(64) }.cast::<AtomicU64>(),
            // SAFETY: the fastboxes follow head and tail, inside the block.
            fastboxes: unsafe { control.add(128) },
            // SAFETY: the data follows the control block, inside the mapping.
            data: unsafe { control.add(RING_CONTROL) },
            capacity: ring,
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped; no reference into it
        // outlives the mesh that owns the segments.
        let _ = unsafe { munmap(self.base.cast(), self.len) };
    }
}

/// One ring in a segment: a single producer advances `head`, a single
/// consumer advances `tail`; both count bytes since the start.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ring {
    head: *const AtomicU64,
    tail: *const AtomicU64,
    /// The fastbox area of the same pair (see [`super::fastbox`]).
    pub(super) fastboxes: *mut u8,
    data: *mut u8,
    pub(super) capacity: usize,
}

impl Ring {
    pub(super) fn head(&self) -> &AtomicU64 {
        // SAFETY: points into a live mapping (the mesh owns the segments).
        unsafe { &*self.head }
    }

    pub(super) fn tail(&self) -> &AtomicU64 {
        // SAFETY: as above.
        unsafe { &*self.tail }
    }

    /// Copies `bytes` into the ring at stream position `at` (wrapping).
    pub(super) fn put(&self, at: u64, bytes: &[u8]) {
        let start = (at % self.capacity as u64) as usize;
        let first = bytes.len().min(self.capacity - start);
        // SAFETY: both pieces lie inside the ring's data area; the region is
        // free (between head and tail + capacity), so the reader is not
        // touching it.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.data.add(start), first);
            std::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), self.data, bytes.len() - first);
        }
    }

    /// Hints the processor to fetch the line holding stream position `at`.
    pub(super) fn prefetch(&self, at: u64) {
        let offset = (at % self.capacity as u64) as usize;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch of an address inside the ring has no effect on
        // memory; it only warms the cache.
        unsafe {
            std::arch::x86_64::_mm_prefetch(self.data.add(offset).cast::<i8>(), std::arch::x86_64::_MM_HINT_T0);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = offset;
    }

    /// Copies bytes out of the ring from stream position `at` (wrapping).
    pub(super) fn take(&self, at: u64, out: &mut [u8]) {
        let start = (at % self.capacity as u64) as usize;
        let first = out.len().min(self.capacity - start);
        // SAFETY: both pieces lie inside the data area and hold bytes the
        // writer published before its Release store of `head`.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data.add(start), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(self.data, out.as_mut_ptr().add(first), out.len() - first);
        }
    }
}

/// Wakes the owners of all the doorbells that sleep, after one fence.
pub(super) fn ring_doorbells<'a>(doorbells: impl Iterator<Item = &'a AtomicU32>) {
    fence(Ordering::SeqCst);
    for bell in doorbells {
        if bell.load(Ordering::Relaxed) == SLEEPING {
            bell.store(AWAKE, Ordering::Relaxed);
            futex_wake(bell);
        }
    }
}

/// Wakes the owner of `doorbell` if it sleeps. The fence orders our
/// preceding store (head or tail) before the check.
pub(super) fn ring_doorbell(doorbell: &AtomicU32) {
    fence(Ordering::SeqCst);
    if doorbell.load(Ordering::Relaxed) == SLEEPING {
        doorbell.store(AWAKE, Ordering::Relaxed);
        futex_wake(doorbell);
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32 in shared memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            0usize,
            0usize,
            0u32,
        );
    }
}

pub(super) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT on a valid, aligned u32; the timeout outlives the
    // call. EINTR, EAGAIN and ETIMEDOUT all just return to the caller.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            0usize,
            0u32,
        );
    }
}
