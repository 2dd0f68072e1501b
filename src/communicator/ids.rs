//! The context ids of this rank's live communicators, and where a new
//! communicator looks for an id that none of its members uses.
//!
//! Id 0 is the world's. A communicator made from a parent takes the first
//! id, in a window of [`WINDOW`] ids, that every member of the parent has
//! free: each member says which ids of the window it has free, the
//! parent's collective ANDs the answers, and every member takes the same
//! lowest one. The window starts at a place every member of the parent
//! computes alike from the parent's id and how many communicators it has
//! made, spread over the [`LIMIT`] ids, so that an id freed by a drop is
//! taken again only much later (a message that a program left unreceived
//! in a dropped communicator does not land in the next one).

use std::collections::HashSet;

/// Ids are below this: a communicator's three contexts, `4 id` to
/// `4 id + 2`, fit the header's 32 bits.
pub(crate) const LIMIT: u32 = 1 << 30;

/// The ids one agreement looks at.
pub(crate) const WINDOW: u32 = 256;

/// The words of one window's mask.
pub(crate) const MASK_WORDS: usize = (WINDOW / 64) as usize;

/// The ids in use by this rank's live communicators, and those offered
/// by agreements in progress.
#[derive(Debug, Default)]
pub(crate) struct ContextIds {
    live: HashSet<u32>,
    /// Ids this rank has said are free in an agreement that is not over:
    /// an agreement on another thread at the same time must not offer them
    /// too, or both could take the same one.
    offered: HashSet<u32>,
}

/// The `i`-th id of the window that starts at `start` (ids wrap around
/// below [`LIMIT`], skipping the world's 0).
pub(crate) fn id_in_window(start: u32, i: u32) -> u32 {
    (start - 1 + i) % (LIMIT - 1) + 1
}

/// Where the `round`-th window of the `made`-th communicator made from the
/// communicator with id `parent` starts: the same on every member.
pub(crate) fn window_start(parent: u32, made: u64, round: u32) -> u32 {
    let mut x = u64::from(parent) << 32 ^ made ^ 0x9e37_79b9_7f4a_7c15;
    x = (x ^ x >> 30).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ x >> 27).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    id_in_window((x % u64::from(LIMIT - 1)) as u32 + 1, round.wrapping_mul(WINDOW))
}

impl ContextIds {
    /// Which ids of the window at `start` this rank has free (bit `i` of
    /// word `i / 64` for `id_in_window(start, i)`), reserving them until
    /// [`ContextIds::withdraw`]: no other agreement offers them meanwhile.
    pub fn offer(&mut self, start: u32) -> [u64; MASK_WORDS] {
        let mut mask = [0u64; MASK_WORDS];
        for i in 0..WINDOW {
            let id = id_in_window(start, i);
            if !self.live.contains(&id) && self.offered.insert(id) {
                mask[(i / 64) as usize] |= 1 << (i % 64);
            }
        }
        mask
    }

    /// Ends the reservation [`ContextIds::offer`] made (an id taken since
    /// stays taken).
    pub fn withdraw(&mut self, start: u32, mask: &[u64; MASK_WORDS]) {
        for i in 0..WINDOW {
            if mask[(i / 64) as usize] >> (i % 64) & 1 == 1 {
                self.offered.remove(&id_in_window(start, i));
            }
        }
    }

    /// Marks `id` as used by a live communicator of this rank.
    pub fn take(&mut self, id: u32) {
        self.offered.remove(&id);
        let fresh = self.live.insert(id);
        debug_assert!(fresh, "context id {id} taken twice");
    }

    /// Frees `id`: its communicator was dropped.
    pub fn release(&mut self, id: u32) {
        self.live.remove(&id);
    }
}

/// The first id of the window at `start` that every mask ANDed into
/// `mask` has free.
pub(crate) fn first_free(start: u32, mask: &[u64; MASK_WORDS]) -> Option<u32> {
    mask.iter()
        .enumerate()
        .find(|(_, w)| **w != 0)
        .map(|(i, w)| id_in_window(start, i as u32 * 64 + w.trailing_zeros()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_stay_in_range_and_skip_the_world() {
        for (parent, made) in [(0, 0), (1, 7), (LIMIT - 1, u64::MAX)] {
            for round in 0..4 {
                let start = window_start(parent, made, round);
                assert!((1..LIMIT).contains(&start));
                for i in 0..WINDOW {
                    assert!((1..LIMIT).contains(&id_in_window(start, i)));
                }
            }
        }
        assert_eq!(id_in_window(LIMIT - 1, 1), 1);
    }

    #[test]
    fn the_first_id_free_everywhere_is_taken() {
        let (mut a, mut b) = (ContextIds::default(), ContextIds::default());
        let start = window_start(0, 0, 0);
        a.take(start);
        b.take(id_in_window(start, 1));
        let (ma, mb) = (a.offer(start), b.offer(start));
        let both: Vec<u64> = ma.iter().zip(mb).map(|(x, y)| x & y).collect();
        let both: [u64; MASK_WORDS] = both.try_into().unwrap();
        assert_eq!(first_free(start, &both), Some(id_in_window(start, 2)));
        // While offered, the window's ids are not offered again.
        assert_eq!(a.offer(start), [0; MASK_WORDS]);
        a.take(id_in_window(start, 2));
        a.withdraw(start, &ma);
        assert_eq!(a.offer(start)[0] & 0b111, 0b010);
        assert_eq!(first_free(start, &[0; MASK_WORDS]), None);
        a.withdraw(start, &ma);
        a.release(start);
        assert_eq!(a.offer(start)[0] & 0b111, 0b011);
    }
}
