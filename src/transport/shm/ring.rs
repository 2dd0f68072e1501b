//! One ring: a byte stream from one rank to another through the receiver's
//! segment. A single producer advances `head`, a single consumer `tail`;
//! both count bytes since the start. Each side checks every value the
//! other side wrote before it uses it: a head that runs ahead of what the
//! ring can hold, or a tail that goes back or passes the head, is an error
//! naming the peer, never a read outside the ring.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

use super::segment::{RingMemory, ring_control};

impl RingMemory {
    /// The ring whose control block, with `slots` fastboxes, starts at
    /// `control`, its `capacity` bytes right after the block.
    ///
    /// # Panics
    /// If `capacity` or `slots` is not a power of two (every ring's size
    /// is one: see [`super::segment::ring_bytes`]; so is every count of
    /// fastboxes: see [`super::fastbox::slots_for`]).
    ///
    /// # Safety
    /// `control` is valid for [`ring_control`]`(slots)` + `capacity`
    /// bytes.
    pub(super) unsafe fn new(control: *mut u8, capacity: usize, slots: usize) -> RingMemory {
        assert!(capacity.is_power_of_two(), "a ring of {capacity} bytes");
        assert!(slots.is_power_of_two(), "{slots} fastboxes");
        RingMemory {
            control,
            // SAFETY: the data follows the control block, inside the
            // memory the caller vouches for.
            data: unsafe { control.add(ring_control(slots)) },
            capacity,
            slots,
        }
    }

    /// Where stream position `at` lies in the ring's data.
    #[inline]
    pub(super) fn offset(&self, at: u64) -> usize {
        (at & (self.capacity as u64 - 1)) as usize
    }

    fn head(&self) -> &AtomicU64 {
        // SAFETY: the first word of the control block, aligned, inside a
        // mapping the mesh keeps alive as long as its links.
        unsafe { &*self.control.cast::<AtomicU64>() }
    }

    fn tail(&self) -> &AtomicU64 {
        // SAFETY: the first word of the control block's second line.
        unsafe { &*self.control.add(64).cast::<AtomicU64>() }
    }

    /// The fastbox area of the same pair (see [`super::fastbox`]).
    pub(super) fn fastboxes(&self) -> *mut u8 {
        // SAFETY: the fastboxes follow head and tail inside the block.
        unsafe { self.control.add(128) }
    }

    /// Publishes that `head` bytes have been written (sender).
    pub(super) fn publish_head(&self, head: u64) {
        self.head().store(head, Ordering::Release);
    }

    /// Publishes that `tail` bytes have been read (receiver).
    pub(super) fn publish_tail(&self, tail: u64) {
        self.tail().store(tail, Ordering::Release);
    }

    /// The head the sender published, checked against what the receiver
    /// knows: it never goes back (`last`) and never runs more than a ring
    /// ahead of the receiver's `tail`.
    pub(super) fn load_head(&self, tail: u64, last: u64, peer: &str) -> Result<u64> {
        let head = self.head().load(Ordering::Acquire);
        if head < last || head.checked_sub(tail).is_none_or(|ahead| ahead > self.capacity as u64) {
            return Err(Error::protocol(
                peer,
                "ring head",
                format!(
                    "{head}, with {tail} bytes read, {last} seen before and a ring of {} bytes",
                    self.capacity
                ),
            ));
        }
        Ok(head)
    }

    /// The tail the receiver published, checked against what the sender
    /// knows: it never goes back (`last`) and never passes `head`.
    pub(super) fn load_tail(&self, head: u64, last: u64, peer: &str) -> Result<u64> {
        let tail = self.tail().load(Ordering::Acquire);
        if tail < last || tail > head {
            return Err(Error::protocol(
                peer,
                "ring tail",
                format!("{tail}, with {head} bytes written and {last} seen read before"),
            ));
        }
        Ok(tail)
    }

    /// True if the sender has published a head other than `tail`.
    pub(super) fn has_bytes(&self, tail: u64) -> bool {
        self.head().load(Ordering::Acquire) != tail
    }

    /// Copies `bytes` into the ring at stream position `at` (wrapping).
    pub(super) fn put(&self, at: u64, bytes: &[u8]) {
        debug_assert!(bytes.len() <= self.capacity);
        let start = self.offset(at);
        let first = bytes.len().min(self.capacity - start);
        // SAFETY: both pieces lie inside the ring's data area (the caller
        // writes at most the free room, which is at most the capacity);
        // only raw pointers touch the shared bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.data.add(start), first);
            std::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), self.data, bytes.len() - first);
        }
    }

    /// Copies `len` bytes out of the ring from stream position `at`
    /// (wrapping) to `out`, which may hold no initialized bytes yet.
    ///
    /// # Safety
    /// `out` is valid for writes of `len` bytes, and does not overlap the
    /// ring.
    pub(super) unsafe fn take(&self, at: u64, out: *mut u8, len: usize) {
        assert!(len <= self.capacity, "a take of more than the ring holds");
        let start = self.offset(at);
        let first = len.min(self.capacity - start);
        // SAFETY: both pieces lie inside the data area (the caller reads
        // at most a checked head minus its tail, at most the capacity),
        // and `out` has room for `len` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data.add(start), out, first);
            std::ptr::copy_nonoverlapping(self.data, out.add(first), len - first);
        }
    }

    /// Asks for the lines of the `len` bytes from stream position `at` to
    /// be made writable here ahead of the writes (see `prefetch.rs`).
    pub(super) fn prefetch_for_write(&self, at: u64, len: usize) {
        for offset in (0..len.min(self.capacity)).step_by(64) {
            let start = self.offset(at + offset as u64);
            // SAFETY: an offset inside the ring's data area.
            super::prefetch::for_write(unsafe { self.data.add(start) });
        }
    }

    /// Hints the processor to fetch the line holding stream position `at`.
    pub(super) fn prefetch(&self, at: u64) {
        let offset = self.offset(at);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch of an address inside the ring has no effect on
        // memory; it only warms the cache.
        unsafe {
            std::arch::x86_64::_mm_prefetch(self.data.add(offset).cast::<i8>(), std::arch::x86_64::_MM_HINT_T0);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fastboxes of the test rings.
    const SLOTS: usize = 128;

    fn ring(memory: &mut [u64], capacity: usize) -> RingMemory {
        assert!(memory.len() * 8 >= ring_control(SLOTS) + capacity);
        // SAFETY: the test memory holds the control block and the data.
        unsafe { RingMemory::new(memory.as_mut_ptr().cast::<u8>(), capacity, SLOTS) }
    }

    #[test]
    fn bytes_wrap_around_and_come_out_in_order() {
        let mut memory = vec![0u64; (ring_control(SLOTS) + 64) / 8];
        let r = ring(&mut memory, 64);
        let mut at = 0u64;
        for round in 0..50u8 {
            let bytes: Vec<u8> = (0..37).map(|i| round.wrapping_mul(31).wrapping_add(i)).collect();
            r.put(at, &bytes);
            r.publish_head(at + 37);
            assert_eq!(r.load_head(at, at, "p").unwrap(), at + 37);
            let mut out = [0u8; 37];
            // SAFETY: room for 37 bytes.
            unsafe { r.take(at, out.as_mut_ptr(), out.len()) };
            assert_eq!(out.as_slice(), bytes.as_slice());
            at += 37;
            r.publish_tail(at);
            assert_eq!(r.load_tail(at, at - 37, "p").unwrap(), at);
        }
    }

    #[test]
    fn heads_and_tails_that_cannot_be_are_errors_naming_the_field() {
        let mut memory = vec![0u64; (ring_control(SLOTS) + 64) / 8];
        let r = ring(&mut memory, 64);
        for (head, tail, last) in [(65, 0, 0), (u64::MAX, 0, 0), (5, 10, 0), (8, 0, 9)] {
            r.publish_head(head);
            match r.load_head(tail, last, "rank 4") {
                Err(Error::Protocol { field, peer, .. }) => assert_eq!((field, peer.as_str()), ("ring head", "rank 4")),
                other => panic!("head {head}: {other:?}"),
            }
        }
        for (tail, head, last) in [(11, 10, 0), (3, 10, 4), (u64::MAX, 10, 0)] {
            r.publish_tail(tail);
            match r.load_tail(head, last, "rank 4") {
                Err(Error::Protocol { field, .. }) => assert_eq!(field, "ring tail"),
                other => panic!("tail {tail}: {other:?}"),
            }
        }
    }
}
