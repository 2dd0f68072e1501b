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
/// each on its own cache line.
pub(super) const RING_CONTROL: usize = 128;

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
    HEADER + size * (RING_CONTROL + ring)
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
