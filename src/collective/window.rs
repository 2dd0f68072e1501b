//! Collectives of large vectors through shared windows in the node-wide
//! region, piece by piece. Allreduce and reduce: every rank copies its
//! piece into its window; after a barrier each rank folds one share of the
//! piece across all windows, in rank order, into a shared result window;
//! after a second barrier the ranks that want the result copy it out. Each
//! byte crosses between processes twice (in, out), there are two waits per
//! piece whatever the number of ranks, and the rank-order fold gives every
//! rank the same bits, for any associative operator. Broadcast, gather,
//! scatter and alltoall move each piece in, then out, with one wait.
//!
//! The windows come in two sets, used by alternate pieces: a rank may start
//! writing a piece while others still copy the previous one out, and a set
//! is written again only after every rank has passed the barrier that
//! follows its last reading. Bytes go in and out through raw copies only.

use crate::error::{Error, Result};

use super::call::Call;
use super::node::{Node, NodeStep};

/// The most bytes the windows take, whatever the number of ranks.
const WINDOWS_BUDGET: usize = 4 << 20;
/// The bounds of one rank's window.
const MIN_WINDOW: usize = 16 << 10;
const MAX_WINDOW: usize = 256 << 10;
/// The bytes a rank folds at a time, in memory of its own.
const FOLD_CHUNK: usize = 16 << 10;

/// Combines the second slice into the first, element by element, in place
/// (the first holds the fold of lower ranks).
pub(crate) type Combine<'a> = dyn FnMut(&mut [u8], &[u8]) + 'a;

/// The bytes of one window for a node of `size` ranks: two sets of one
/// window per rank and a result window, within [`WINDOWS_BUDGET`], a
/// multiple of 4 KiB.
fn window_bytes(size: usize) -> usize {
    let fit = WINDOWS_BUDGET / (2 * (size + 1));
    (fit & !4095).clamp(MIN_WINDOW, MAX_WINDOW)
}

/// The bytes all the windows of a node of `size` ranks take.
pub(crate) fn windows_len(size: usize) -> usize {
    2 * (size + 1) * window_bytes(size)
}

/// The windows of a region.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Windows {
    base: *mut u8,
    size: usize,
    pub(crate) bytes: usize,
}

impl Windows {
    /// The windows that start at `base`, inside a region of at least
    /// [`windows_len`] bytes from there.
    pub(super) fn at(base: *mut u8, size: usize) -> Windows {
        Windows {
            base,
            size,
            bytes: window_bytes(size),
        }
    }

    /// The start of `set`: its windows follow one another, the result
    /// window (index `size`) last.
    fn set_start(&self, set: usize) -> *mut u8 {
        debug_assert!(set < 2);
        // SAFETY: inside the windows, as `at` was promised.
        unsafe { self.base.add(set * self.set_bytes()) }
    }

    /// Copies `bytes` into window `index` of `set` from `offset` on. Only
    /// this rank writes there in this phase, and nobody reads it until the
    /// next barrier.
    fn put(&self, set: usize, index: usize, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.bytes, "a piece larger than its window");
        self.put_whole(set, index * self.bytes + offset, bytes);
    }

    /// Copies the bytes of window `index` of `set` from `offset` on into
    /// `out` (written before the barrier this rank has passed).
    fn get(&self, set: usize, index: usize, offset: usize, out: &mut [u8]) {
        assert!(offset + out.len() <= self.bytes, "a piece larger than its window");
        self.get_whole(set, index * self.bytes + offset, out);
    }

    /// The bytes of a whole set: all its windows, the result's included,
    /// one after another.
    fn set_bytes(&self) -> usize {
        (self.size + 1) * self.bytes
    }

    /// Copies `bytes` into `set`, taken as one area, from `offset` on (a
    /// collective with one writer needs no window per rank).
    fn put_whole(&self, set: usize, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.set_bytes(), "a piece larger than its set");
        // SAFETY: within the set.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.set_start(set).add(offset), bytes.len()) }
    }

    /// Copies the bytes of `set`, taken as one area, from `offset` on into
    /// `out`, memory of this rank's own.
    fn get_whole(&self, set: usize, offset: usize, out: &mut [u8]) {
        assert!(offset + out.len() <= self.set_bytes(), "a piece larger than its set");
        // SAFETY: within the set; copied into memory of this rank's own.
        unsafe { std::ptr::copy_nonoverlapping(self.set_start(set).add(offset), out.as_mut_ptr(), out.len()) }
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
    /// order; `out`, on the ranks that give one, gets the result.
    Reduce {
        send: &'a [u8],
        out: Option<&'a mut [u8]>,
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

impl WindowJob<'_> {
    /// True if the windows can move this job (a reduction's numbers must fit
    /// a window piece whole).
    pub fn fits(&self, windows: &Windows) -> bool {
        match self {
            WindowJob::Reduce { element, .. } => *element <= windows.bytes,
            _ => true,
        }
    }
}

/// Runs collectives through the windows of one node.
pub(crate) struct WindowRun<'w> {
    pub comm: &'w crate::communicator::Communicator,
    pub node: Node,
    pub call: &'w Call,
}

impl WindowRun<'_> {
    /// Runs `job`. `claim` is the length this rank brings (with the job's
    /// element type, so that a job the windows cannot move is refused by
    /// every rank alike, and numbers of one type never meet another's), or
    /// `u64::MAX` if its own buffers are wrong: every rank must claim the
    /// same, or every rank gets an error before any data moves.
    pub fn run(&self, claim: u64, job: WindowJob<'_>) -> Result<()> {
        // An alltoall says, beside its claim, whether this rank may copy
        // straight out of every other rank's memory, and where its send
        // buffer is (see `pulled.rs`).
        let offer = match &job {
            WindowJob::Alltoall { send, .. } => Some(self.pull_offer(send)),
            _ => None,
        };
        let mut mine = claim.to_le_bytes().to_vec();
        mine.extend(offer.iter().flatten());
        let claim_of = |part: &[u8]| part.get(..8).map(<[u8]>::to_vec).unwrap_or_else(|| part.to_vec());
        let mut same_length = |parts: &super::region::Parts| {
            if let Some(r) = (1..parts.len()).find(|i| claim_of(parts.get(*i)) != claim_of(parts.get(0))) {
                return Err(Error::CollectiveMismatch {
                    detail: format!(
                        "ranks gave slices of different lengths or types, or a receive buffer of the wrong length: \
                         rank 0 gave {}, rank {r} {}",
                        super::numbers::describe_claim(&claim_of(parts.get(0))),
                        super::numbers::describe_claim(&claim_of(parts.get(r)))
                    ),
                });
            }
            Ok(match offer {
                Some(_) => super::pulled::agree(parts),
                None => Vec::new(),
            })
        };
        let comm = self.comm;
        let agreed = comm.node_step_on(self.node, self.call, NodeStep::WindowStart, 0, &mine, &mut same_length)?;
        if claim == u64::MAX {
            // Every rank's buffers are wrong: each caller says how.
            return Err(Error::InvalidArgument("the buffers are wrong on every rank".into()));
        }
        match job {
            WindowJob::Reduce {
                send,
                out,
                element,
                combine,
            } => self.reduce(send, out, element, combine),
            WindowJob::Broadcast { buf, root } => self.broadcast(buf, root),
            WindowJob::Gather { send, out } => self.gather(send, out),
            WindowJob::Scatter { send, recv, root } => self.scatter(send, recv, root),
            WindowJob::Alltoall { send, recv, part } => match super::pulled::Addresses::of(&agreed) {
                Some(addresses) => self.alltoall_pulled(send, recv, part, &addresses),
                None => self.alltoall(send, recv, part),
            },
        }
    }

    fn windows(&self) -> Windows {
        self.node.slots.windows()
    }

    /// A node-wide wait of the call's.
    pub(super) fn barrier(&self) -> Result<()> {
        self.comm
            .node_step_on(self.node, self.call, NodeStep::WindowStep, 0, &[], &mut |_| {
                Ok(Vec::new())
            })
            .map(|_| ())
    }

    /// The set of windows the next piece uses.
    fn next_set(&self) -> usize {
        let pieces = &self.comm.node_state().pieces;
        let set = pieces.get() % 2;
        pieces.set(pieces.get().wrapping_add(1));
        set
    }

    fn reduce(&self, send: &[u8], mut out: Option<&mut [u8]>, element: usize, combine: &mut Combine<'_>) -> Result<()> {
        let Node { n, me, .. } = self.node;
        // The callers pass the bytes of slices of numbers, and `out` (when
        // given) as long as `send`: the lengths were agreed before.
        let element = element.max(1);
        debug_assert!(send.len() % element == 0 && out.as_ref().is_none_or(|o| o.len() == send.len()));
        let windows = self.windows();
        // Pieces and folded chunks are whole numbers of elements.
        let piece = windows.bytes / element * element;
        let chunk = (FOLD_CHUNK / element).max(1) * element;
        let mut acc = vec![0u8; chunk.min(piece)];
        let mut other = vec![0u8; chunk.min(piece)];
        let mut offset = 0;
        while offset < send.len() {
            let w = piece.min(send.len() - offset);
            let set = self.next_set();
            windows.put(set, me, 0, &send[offset..offset + w]);
            self.barrier()?;
            // Fold this rank's share, a chunk at a time in memory of its own,
            // into the result window.
            let mine = share(me, n, w, element);
            let mut at = mine.start;
            while at < mine.end {
                let len = chunk.min(mine.end - at);
                let (acc, other) = (&mut acc[..len], &mut other[..len]);
                windows.get(set, 0, at, acc);
                for r in 1..n {
                    windows.get(set, r, at, other);
                    combine(acc, other);
                }
                windows.put(set, n, at, acc);
                at += len;
            }
            self.barrier()?;
            if let Some(out) = out.as_deref_mut() {
                windows.get(set, n, 0, &mut out[offset..offset + w]);
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
        &self,
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
            self.barrier()?;
            read(set, offset, w);
            offset += w;
        }
        Ok(())
    }

    /// Each rank's piece into its window, a barrier, every piece out.
    fn gather(&self, send: &[u8], mut out: Option<&mut [u8]>) -> Result<()> {
        let Node { n, me, .. } = self.node;
        let windows = self.windows();
        let part = send.len();
        debug_assert!(out.as_ref().is_none_or(|o| o.len() == n * part));
        self.one_wait_pieces(
            part,
            windows.bytes,
            |set, offset, w| windows.put(set, me, 0, &send[offset..offset + w]),
            |set, offset, w| {
                if let Some(out) = out.as_deref_mut() {
                    for r in 0..n {
                        let at = r * part + offset;
                        windows.get(set, r, 0, &mut out[at..at + w]);
                    }
                }
            },
        )
    }

    /// The root puts each rank's piece in that rank's window, a barrier,
    /// each rank takes its own.
    fn scatter(&self, send: &[u8], recv: &mut [u8], root: usize) -> Result<()> {
        let Node { n, me, .. } = self.node;
        let windows = self.windows();
        let part = recv.len();
        debug_assert!(me != root || send.len() == n * part);
        self.one_wait_pieces(
            part,
            windows.bytes,
            |set, offset, w| {
                if me == root {
                    for r in 0..n {
                        let at = r * part + offset;
                        windows.put(set, r, 0, &send[at..at + w]);
                    }
                }
            },
            |set, offset, w| windows.get(set, me, 0, &mut recv[offset..offset + w]),
        )
    }

    /// Each rank cuts its window into one sub-window per destination and
    /// puts there its piece of the part for that rank (its own part goes
    /// straight across); after a barrier each rank takes its sub-window
    /// from every other rank's window.
    fn alltoall(&self, send: &[u8], recv: &mut [u8], part: usize) -> Result<()> {
        let Node { n, me, .. } = self.node;
        let windows = self.windows();
        debug_assert!(send.len() == n * part && recv.len() == n * part);
        let sub = windows.bytes / n;
        let own = me * part..(me + 1) * part;
        recv[own.clone()].copy_from_slice(&send[own]);
        self.one_wait_pieces(
            part,
            sub,
            |set, offset, w| {
                for d in (0..n).filter(|d| *d != me) {
                    let at = d * part + offset;
                    windows.put(set, me, d * sub, &send[at..at + w]);
                }
            },
            |set, offset, w| {
                for r in (0..n).filter(|r| *r != me) {
                    let at = r * part + offset;
                    windows.get(set, r, me * sub, &mut recv[at..at + w]);
                }
            },
        )
    }

    /// The root's piece into a whole set (it is the only writer: every
    /// window of the set is its to fill, so a piece is as large as the set
    /// and there are as few barriers as can be), a barrier, the others copy
    /// it out.
    fn broadcast(&self, buf: &mut [u8], root: usize) -> Result<()> {
        let Node { me, .. } = self.node;
        let windows = self.windows();
        let len = buf.len();
        // The root only reads `buf`, the others only write it.
        let (source, mut target): (Option<&[u8]>, Option<&mut [u8]>) = if me == root {
            (Some(buf), None)
        } else {
            (None, Some(buf))
        };
        self.one_wait_pieces(
            len,
            windows.set_bytes(),
            |set, offset, w| {
                if let Some(src) = source {
                    windows.put_whole(set, 0, &src[offset..offset + w]);
                }
            },
            |set, offset, w| {
                if let Some(dst) = target.as_deref_mut() {
                    windows.get_whole(set, 0, &mut dst[offset..offset + w]);
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
