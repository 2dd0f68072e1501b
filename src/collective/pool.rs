//! The pool of small regions, in the node's shared region, that serve the
//! node-wide collectives of communicators other than the world: a
//! communicator whose ranks share the node claims one when it is made (its
//! first rank claims it and tells the others which), and the last of its
//! ranks to drop it gives it back. A communicator made while every region
//! of the pool is taken does its collectives by messages.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::communicator::Communicator;
use crate::envelope::Format;
use crate::error::{Error, Result};
use crate::progress::Head;
use crate::selector::{Match, Selector};
use crate::transport::Region;

use super::region::{Slots, pool_start, slots_end};

/// The regions of the pool (at most 64: one bit each in the claim word).
pub(crate) const POOL: usize = 16;

/// The pool's control line: the word of claimed regions.
const POOL_CONTROL: usize = 64;

/// The tag, in the new communicator's collective context, of the message
/// that tells its members which region their first rank claimed. No
/// collective step uses it (their tags are a step and a round, and
/// [`super::call::NOTICE`] is `u32::MAX`).
const POOL_TAG: u32 = u32::MAX - 1;

/// What the first rank sends when no region was free.
const NONE_FREE: u32 = u32::MAX;

/// The bytes of one pooled region of a node of `n` ranks (a communicator of
/// the node has at most `n`), a multiple of 64.
fn region_bytes(n: usize) -> usize {
    slots_end(n).next_multiple_of(64)
}

/// The bytes of the pool of a node of `n` ranks.
pub(crate) fn pool_len(n: usize) -> usize {
    POOL_CONTROL + POOL * region_bytes(n)
}

/// The pool of a node's region.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pool {
    base: *mut u8,
    /// The ranks of the node.
    n: usize,
}

// SAFETY: as for `Slots`: shared memory mapped while the engine lives,
// touched only through atomics and the slots' checked copies.
unsafe impl Send for Pool {}

impl Pool {
    /// The pool of `region`, the shared region of a node of `n` ranks.
    pub fn of(region: Region, n: usize) -> Option<Pool> {
        let start = pool_start(n);
        if region.len < start + pool_len(n) {
            return None;
        }
        // SAFETY: inside the region, just checked.
        Some(Pool {
            base: unsafe { region.base.add(start) },
            n,
        })
    }

    fn claims(&self) -> &AtomicU64 {
        // SAFETY: the first word of the pool's control line, aligned (the
        // pool starts on a multiple of 64), shared by the node's ranks.
        unsafe { &*self.base.cast::<AtomicU64>() }
    }

    /// The slots of region `index` for a communicator of `members` ranks.
    pub fn slots(&self, index: usize, members: usize) -> Slots {
        debug_assert!(index < POOL && members <= self.n);
        // SAFETY: region `index` of the pool holds `region_bytes(n)` bytes,
        // at least `slots_end(members)`, 64-byte aligned.
        unsafe { Slots::unwindowed(self.base.add(POOL_CONTROL + index * region_bytes(self.n)), members) }
    }

    /// Claims a free region for a communicator of `members` ranks, cleared
    /// of what its last user left, with `members` holders.
    pub fn claim(&self, members: usize) -> Option<usize> {
        let claims = self.claims();
        let mut seen = claims.load(Ordering::Acquire);
        loop {
            let index = (!seen).trailing_zeros() as usize;
            if index >= POOL {
                return None;
            }
            match claims.compare_exchange_weak(seen, seen | 1 << index, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    let slots = self.slots(index, members);
                    slots.reset();
                    slots.spare().store(members as u32, Ordering::Release);
                    return Some(index);
                }
                Err(now) => seen = now,
            }
        }
    }

    /// One holder of region `index` lets go; the last gives it back.
    pub fn release(&self, index: usize, members: usize) {
        if self.slots(index, members).spare().fetch_sub(1, Ordering::AcqRel) == 1 {
            self.claims().fetch_and(!(1 << index), Ordering::Release);
        }
    }
}

impl Communicator {
    /// Gives a communicator just made (by every member, at once) a region
    /// of the pool, if its ranks share the node's region: its first rank
    /// claims one and tells the others which.
    pub(crate) fn share_pooled_region(&mut self) -> Result<()> {
        if self.size() < 2 || self.id() == 0 {
            return Ok(());
        }
        let pool = {
            let mut engine = self.engine()?;
            let Some(mesh) = engine.node() else {
                return Ok(());
            };
            let n = mesh.node().ranks.len();
            mesh.region().and_then(|region| Pool::of(region, n))
        };
        let Some(pool) = pool else {
            return Ok(());
        };
        let context = self.coll_context();
        let leader = self.job_rank(0);
        let index = if self.rank() == 0 {
            let index = pool.claim(self.size());
            let word = index.map_or(NONE_FREE, |i| i as u32).to_le_bytes().to_vec();
            let head = Head::user(context, POOL_TAG, Format::Serde);
            for member in 1..self.size() {
                self.send_bytes(self.job_rank(member), head, word.clone())?;
            }
            index
        } else {
            let sel = Selector::new(context, Match::source(leader).with_tag(POOL_TAG));
            let env = self.receive_envelope(sel, None, None)?;
            let word: [u8; 4] = env.payload[..].try_into().map_err(|_| {
                Error::protocol(
                    format!("rank {leader}"),
                    "pooled region",
                    format!("{} bytes where 4 were due", env.payload.len()),
                )
            })?;
            match u32::from_le_bytes(word) {
                NONE_FREE => None,
                i if (i as usize) < POOL => Some(i as usize),
                i => {
                    return Err(Error::protocol(
                        format!("rank {leader}"),
                        "pooled region",
                        format!("region {i} of a pool of {POOL}"),
                    ));
                }
            }
        };
        self.pooled = index.map(|i| (pool, i));
        Ok(())
    }

    /// The slots of this communicator's pooled region, if it has one.
    pub(crate) fn pooled_slots(&self) -> Option<Slots> {
        self.pooled.map(|(pool, index)| pool.slots(index, self.size()))
    }

    /// Gives back this communicator's share of its pooled region (when it
    /// drops).
    pub(crate) fn release_pooled_region(&mut self) {
        if let Some((pool, index)) = self.pooled.take() {
            pool.release(index, self.size());
        }
    }
}
