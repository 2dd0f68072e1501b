//! Allreduce of large vectors through shared windows in rank 0's segment,
//! piece by piece: every rank copies its piece of the vector into its
//! window; after a barrier each rank folds one share of the piece across
//! all windows, in rank order, into a shared result window; after a second
//! barrier every rank copies the result out. Each byte crosses between processes twice
//! (in, out), there are two waits per piece whatever the number of ranks,
//! and the rank-order fold gives every rank the same bits, for any
//! associative operator.
//!
//! The windows come in two sets, used by alternate pieces: a rank may start
//! writing a piece while others still copy the previous result out, and a
//! set is written again only after every rank has passed the barrier that
//! follows its last reading.

use crate::error::{Error, Result};

use super::Delivery;
use super::shm::ShmMesh;

/// The most bytes the windows take, whatever the number of ranks.
const WINDOWS_BUDGET: usize = 4 << 20;
/// The bounds of one rank's window.
const MIN_WINDOW: usize = 16 << 10;
const MAX_WINDOW: usize = 256 << 10;

/// Combines the second slice into the first, element by element, in place
/// (the first holds the fold of lower ranks).
pub(crate) type Combine<'a> = dyn FnMut(&mut [u8], &[u8]) + 'a;

/// The bytes of one window for a node of `size` ranks: two sets of one
/// window per rank and a result window, within [`WINDOWS_BUDGET`], a
/// multiple of 4 KiB.
pub(super) fn window_bytes(size: usize) -> usize {
    let fit = WINDOWS_BUDGET / (2 * (size + 1));
    (fit & !4095).clamp(MIN_WINDOW, MAX_WINDOW)
}

/// The bytes all the windows of a node of `size` ranks take.
pub(super) fn windows_len(size: usize) -> usize {
    2 * (size + 1) * window_bytes(size)
}

/// The windows of a mapped segment.
#[derive(Debug, Clone, Copy)]
pub(super) struct Windows {
    base: *mut u8,
    size: usize,
    pub(super) bytes: usize,
}

impl Windows {
    /// The windows that start at `base`, inside a mapping of at least
    /// [`windows_len`] bytes from there.
    pub(super) fn at(base: *mut u8, size: usize) -> Windows {
        Windows {
            base,
            size,
            bytes: window_bytes(size),
        }
    }

    /// Window `index` of `set` (index `size` is the result window).
    fn ptr(&self, set: usize, index: usize) -> *mut u8 {
        debug_assert!(set < 2 && index <= self.size);
        // SAFETY: inside the windows, as `at` was promised.
        unsafe { self.base.add((set * (self.size + 1) + index) * self.bytes) }
    }

    /// Copies `bytes` (at most a window) into window `index` of `set`.
    fn put(&self, set: usize, index: usize, bytes: &[u8]) {
        assert!(bytes.len() <= self.bytes, "a piece larger than its window");
        // SAFETY: within the window; only this rank writes it in this
        // phase, and nobody reads it until the next barrier.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr(set, index), bytes.len()) }
    }

    /// The bytes `range` of the result window of `set`, for the one rank
    /// that folds that share of the piece.
    #[allow(clippy::mut_from_ref)]
    fn result_share(&self, set: usize, range: std::ops::Range<usize>) -> &mut [u8] {
        assert!(range.end <= self.bytes, "a piece larger than its window");
        // SAFETY: within the result window; shares do not overlap, only the
        // rank that owns this share writes it, and nobody reads it until
        // the next barrier.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(set, self.size).add(range.start), range.len()) }
    }

    /// The bytes `range` of window `index` of `set`.
    fn get(&self, set: usize, index: usize, range: std::ops::Range<usize>) -> &[u8] {
        assert!(range.end <= self.bytes, "a piece larger than its window");
        // SAFETY: within the window; written before the barrier this rank
        // has passed, and not written again until the next one.
        unsafe { std::slice::from_raw_parts(self.ptr(set, index).add(range.start), range.len()) }
    }
}

/// The bytes of share `k` of `n` of a piece of `len` bytes made of
/// `element`-byte numbers (shares never split a number).
fn share(k: usize, n: usize, len: usize, element: usize) -> std::ops::Range<usize> {
    let part = crate::balance(len / element, n, k);
    part.start * element..part.end * element
}

impl ShmMesh {
    /// Allreduce of `send` into `out` (as long), numbers of `element` bytes
    /// each, through the windows. Every rank must call it with the same
    /// length; a rank that does not gets an error, as do the others.
    pub fn window_allreduce(
        &mut self,
        deliver: &mut Delivery<'_>,
        send: &[u8],
        out: &mut [u8],
        element: usize,
        combine: &mut Combine<'_>,
    ) -> Result<()> {
        let (n, me) = (self.peers.list.len(), self.peers.me);
        if out.len() != send.len() || element == 0 || send.len() % element != 0 {
            return Err(Error::InvalidArgument(format!(
                "allreduce_into: {} bytes to send, {} to receive, numbers of {element} bytes",
                send.len(),
                out.len()
            )));
        }
        // The first barrier also checks that every rank has the same length.
        let len = (send.len() as u64).to_le_bytes();
        let mut same_length = |parts: &[&[u8]]| {
            if parts.iter().all(|p| *p == len) {
                Ok(Vec::new())
            } else {
                Err(Error::InvalidArgument(
                    "allreduce_into: ranks gave slices of different lengths".into(),
                ))
            }
        };
        self.node_collective(deliver, &len, &mut same_length)?;
        let windows = self.windows;
        // Pieces are whole numbers of elements.
        let piece = windows.bytes / element * element;
        let mut offset = 0;
        while offset < send.len() {
            let w = piece.min(send.len() - offset);
            let set = self.window_pieces % 2;
            self.window_pieces = self.window_pieces.wrapping_add(1);
            windows.put(set, me, &send[offset..offset + w]);
            self.node_collective(deliver, &[], &mut |_| Ok(Vec::new()))?;
            // Fold this rank's share straight into the result window.
            let mine = share(me, n, w, element);
            let acc = windows.result_share(set, mine.clone());
            acc.copy_from_slice(windows.get(set, 0, mine.clone()));
            for r in 1..n {
                combine(acc, windows.get(set, r, mine.clone()));
            }
            self.node_collective(deliver, &[], &mut |_| Ok(Vec::new()))?;
            out[offset..offset + w].copy_from_slice(windows.get(set, n, 0..w));
            offset += w;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_fit_the_budget_and_shares_cover_a_piece() {
        for size in [2, 3, 8, 16, 64, 300] {
            let w = window_bytes(size);
            assert!(w % 4096 == 0 && (MIN_WINDOW..=MAX_WINDOW).contains(&w), "{size}: {w}");
            assert!(windows_len(size) <= WINDOWS_BUDGET || w == MIN_WINDOW, "{size}");
        }
        for (len, n, element) in [(0, 3, 8), (8, 3, 8), (4096, 8, 4), (1000, 7, 8)] {
            let mut next = 0;
            for k in 0..n {
                let s = share(k, n, len, element);
                assert_eq!(s.start, next);
                assert_eq!(s.start % element, 0);
                next = s.end;
            }
            assert_eq!(next, len / element * element);
        }
    }
}
