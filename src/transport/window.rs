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
use super::node::NodeCall;
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

    /// Copies `bytes` (at most a window) into window `index` of `set`
    /// (index `size` is the result window).
    fn put(&self, set: usize, index: usize, bytes: &[u8]) {
        self.put_at(set, index, 0, bytes);
    }

    /// Copies `bytes` into window `index` of `set` from `offset` on.
    fn put_at(&self, set: usize, index: usize, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.bytes, "a piece larger than its window");
        // SAFETY: within the window; only this rank writes it in this
        // phase, and nobody reads it until the next barrier.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr(set, index).add(offset), bytes.len()) }
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

/// A collective the windows can run.
pub(crate) enum WindowJob<'a> {
    /// Folds every rank's `send` (numbers of `element` bytes), in rank
    /// order starting at rank `first`; `out`, on the ranks that give one,
    /// gets the result.
    Reduce {
        send: &'a [u8],
        out: Option<&'a mut [u8]>,
        first: usize,
        element: usize,
        combine: &'a mut Combine<'a>,
    },
    /// Copies the root's `buf` into every rank's `buf`.
    Broadcast { buf: &'a mut [u8], root: usize },
    /// Copies every rank's `send` into `out` (as many times as long), in
    /// rank order, on the ranks that give one.
    Gather { send: &'a [u8], out: Option<&'a mut [u8]> },
    /// Copies part `r` of the root's `send` (as many parts as ranks, each
    /// as long as `recv`) into rank `r`'s `recv`.
    Scatter {
        send: &'a [u8],
        recv: &'a mut [u8],
        root: usize,
    },
    /// Copies part `d` of every rank `r`'s `send` into part `r` of rank
    /// `d`'s `recv` (both as many parts as ranks, `part` bytes each).
    Alltoall {
        send: &'a [u8],
        recv: &'a mut [u8],
        part: usize,
    },
}

impl ShmMesh {
    /// Runs `job` through the windows. `claim` is the length this rank
    /// brings, or `u64::MAX` if its own buffers are wrong: every rank must
    /// claim the same, or every rank gets an error before any data moves.
    pub fn window_collective(&mut self, deliver: &mut Delivery<'_>, claim: u64, job: WindowJob<'_>) -> Result<()> {
        let claimed = claim.to_le_bytes();
        let mut same_length = |parts: &[&[u8]]| {
            if parts.iter().all(|p| *p == claimed) {
                Ok(Vec::new())
            } else {
                Err(Error::InvalidArgument(
                    "ranks gave slices of different lengths, or a receive buffer of the wrong length".into(),
                ))
            }
        };
        self.node_collective(deliver, NodeCall::WindowStart, &claimed, &mut same_length)?;
        if claim == u64::MAX {
            // Every rank's buffers are wrong: each caller says how.
            return Err(Error::InvalidArgument("the buffers are wrong on every rank".into()));
        }
        match job {
            WindowJob::Reduce {
                send,
                out,
                first,
                element,
                combine,
            } => self.window_reduce(deliver, send, out, first, element, combine),
            WindowJob::Broadcast { buf, root } => self.window_broadcast(deliver, buf, root),
            WindowJob::Gather { send, out } => self.window_gather(deliver, send, out),
            WindowJob::Scatter { send, recv, root } => self.window_scatter(deliver, send, recv, root),
            WindowJob::Alltoall { send, recv, part } => self.window_alltoall(deliver, send, recv, part),
        }
    }

    fn window_barrier(&mut self, deliver: &mut Delivery<'_>) -> Result<()> {
        self.node_collective(deliver, NodeCall::WindowStep, &[], &mut |_| Ok(Vec::new()))
            .map(|_| ())
    }

    /// The set of windows the next piece uses.
    fn next_set(&mut self) -> usize {
        let set = self.window_pieces % 2;
        self.window_pieces = self.window_pieces.wrapping_add(1);
        set
    }

    fn window_reduce(
        &mut self,
        deliver: &mut Delivery<'_>,
        send: &[u8],
        mut out: Option<&mut [u8]>,
        first: usize,
        element: usize,
        combine: &mut Combine<'_>,
    ) -> Result<()> {
        let (n, me) = (self.peers.list.len(), self.peers.me);
        // The callers pass the bytes of slices of numbers, and `out` (when
        // given) as long as `send`: the lengths were agreed before.
        let element = element.max(1);
        debug_assert!(send.len() % element == 0 && out.as_ref().is_none_or(|o| o.len() == send.len()));
        let windows = self.windows;
        // Pieces are whole numbers of elements.
        let piece = windows.bytes / element * element;
        let mut offset = 0;
        while offset < send.len() {
            let w = piece.min(send.len() - offset);
            let set = self.next_set();
            windows.put(set, me, &send[offset..offset + w]);
            self.window_barrier(deliver)?;
            // Fold this rank's share straight into the result window.
            let mine = share(me, n, w, element);
            let acc = windows.result_share(set, mine.clone());
            acc.copy_from_slice(windows.get(set, first % n, mine.clone()));
            for r in (1..n).map(|i| (first + i) % n) {
                combine(acc, windows.get(set, r, mine.clone()));
            }
            self.window_barrier(deliver)?;
            if let Some(out) = out.as_deref_mut() {
                out[offset..offset + w].copy_from_slice(windows.get(set, n, 0..w));
            }
            offset += w;
        }
        Ok(())
    }

    /// Moves `len` bytes a piece of at most `piece` bytes at a time, with
    /// one wait per piece: `write(set, offset, w)` fills windows of `set`,
    /// then after a barrier `read(set, offset, w)` empties them. A set is
    /// written again two pieces later, after every rank has passed the
    /// barrier that follows its reading.
    fn one_wait_pieces(
        &mut self,
        deliver: &mut Delivery<'_>,
        len: usize,
        piece: usize,
        mut write: impl FnMut(usize, usize, usize),
        mut read: impl FnMut(usize, usize, usize),
    ) -> Result<()> {
        let mut offset = 0;
        while offset < len {
            let w = piece.min(len - offset);
            let set = self.next_set();
            write(set, offset, w);
            self.window_barrier(deliver)?;
            read(set, offset, w);
            offset += w;
        }
        Ok(())
    }

    /// Each rank's piece into its window, a barrier, every piece out.
    fn window_gather(&mut self, deliver: &mut Delivery<'_>, send: &[u8], mut out: Option<&mut [u8]>) -> Result<()> {
        let (n, me) = (self.peers.list.len(), self.peers.me);
        let windows = self.windows;
        let part = send.len();
        debug_assert!(out.as_ref().is_none_or(|o| o.len() == n * part));
        self.one_wait_pieces(
            deliver,
            part,
            windows.bytes,
            |set, offset, w| windows.put(set, me, &send[offset..offset + w]),
            |set, offset, w| {
                if let Some(out) = out.as_deref_mut() {
                    for r in 0..n {
                        let at = r * part + offset;
                        out[at..at + w].copy_from_slice(windows.get(set, r, 0..w));
                    }
                }
            },
        )
    }

    /// The root puts each rank's piece in that rank's window, a barrier,
    /// each rank takes its own.
    fn window_scatter(&mut self, deliver: &mut Delivery<'_>, send: &[u8], recv: &mut [u8], root: usize) -> Result<()> {
        let (n, me) = (self.peers.list.len(), self.peers.me);
        let windows = self.windows;
        let part = recv.len();
        debug_assert!(me != root || send.len() == n * part);
        self.one_wait_pieces(
            deliver,
            part,
            windows.bytes,
            |set, offset, w| {
                if me == root {
                    for r in 0..n {
                        let at = r * part + offset;
                        windows.put(set, r, &send[at..at + w]);
                    }
                }
            },
            |set, offset, w| recv[offset..offset + w].copy_from_slice(windows.get(set, me, 0..w)),
        )
    }

    /// Each rank cuts its window into one sub-window per destination and
    /// puts there its piece of the part for that rank (its own part goes
    /// straight across); after a barrier each rank takes its sub-window
    /// from every other rank's window.
    fn window_alltoall(&mut self, deliver: &mut Delivery<'_>, send: &[u8], recv: &mut [u8], part: usize) -> Result<()> {
        let (n, me) = (self.peers.list.len(), self.peers.me);
        let windows = self.windows;
        debug_assert!(send.len() == n * part && recv.len() == n * part);
        let sub = windows.bytes / n;
        let own = me * part..(me + 1) * part;
        recv[own.clone()].copy_from_slice(&send[own]);
        self.one_wait_pieces(
            deliver,
            part,
            sub,
            |set, offset, w| {
                for d in (0..n).filter(|d| *d != me) {
                    let at = d * part + offset;
                    windows.put_at(set, me, d * sub, &send[at..at + w]);
                }
            },
            |set, offset, w| {
                for r in (0..n).filter(|r| *r != me) {
                    let at = r * part + offset;
                    recv[at..at + w].copy_from_slice(windows.get(set, r, me * sub..me * sub + w));
                }
            },
        )
    }

    /// The root's piece into the result window, a barrier, the others copy
    /// it out.
    fn window_broadcast(&mut self, deliver: &mut Delivery<'_>, buf: &mut [u8], root: usize) -> Result<()> {
        let (n, me) = (self.peers.list.len(), self.peers.me);
        let windows = self.windows;
        let len = buf.len();
        // The root only reads `buf`, the others only write it.
        let (source, mut target): (Option<&[u8]>, Option<&mut [u8]>) = if me == root {
            (Some(buf), None)
        } else {
            (None, Some(buf))
        };
        self.one_wait_pieces(
            deliver,
            len,
            windows.bytes,
            |set, offset, w| {
                if let Some(src) = source {
                    windows.put(set, n, &src[offset..offset + w]);
                }
            },
            |set, offset, w| {
                if let Some(dst) = target.as_deref_mut() {
                    dst[offset..offset + w].copy_from_slice(windows.get(set, n, 0..w));
                }
            },
        )
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
