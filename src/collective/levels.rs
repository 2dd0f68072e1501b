//! Collectives in two levels, for a communicator whose ranks span nodes
//! that share memory within: first within each node (over shared memory),
//! then among one leader per node (over TCP), then back within each node.
//! Each message between nodes then carries a node's part instead of a
//! rank's, and most hops stay on a node.
//!
//! The folds stay in rank order, and every rank gets the same bits: each
//! node folds its ranks in order on its leader; the leaders fold the
//! nodes' parts by recursive doubling (which gives every leader the same
//! bits); each leader hands the result to its node. When a node's ranks
//! are not one block of consecutive ranks (`--map-by node`), that order is
//! not rank order, and only an operator that commutes goes in two levels.

use std::cell::OnceCell;

use crate::communicator::Communicator;
use crate::envelope::Format;
use crate::error::Result;

use super::algorithm::{Among, Codec, Combine, RawCodec, Step, own_envelope};
use super::call::Call;

/// How a communicator's ranks sit on the job's nodes.
#[derive(Debug)]
pub(crate) struct Levels {
    /// The ranks of this rank's node, ascending: the first is its leader.
    node: Vec<usize>,
    /// This rank's place in `node`.
    in_node: usize,
    /// One leader per node, in the order of their ranks.
    leaders: Vec<usize>,
    /// Each node's ranks are consecutive, and the nodes come in order of
    /// their ranks: the two levels fold in rank order.
    in_rank_order: bool,
}

impl Levels {
    /// The levels of the ranks `members` (the communicator's, by rank, as
    /// job ranks) on `nodes` (each job rank's node), with this rank `me`;
    /// `None` if two levels gain nothing: every rank on one node, or no two
    /// on the same node.
    fn of(members: &[usize], nodes: &[u32], me: usize) -> Option<Levels> {
        let node_of = |r: usize| nodes.get(members[r]).copied();
        let mine = node_of(me)?;
        let mut order: Vec<u32> = Vec::new();
        let mut in_rank_order = true;
        for r in 0..members.len() {
            let n = node_of(r)?;
            match order.iter().position(|o| *o == n) {
                None => order.push(n),
                // A node met again after another one: not one block.
                Some(i) if i + 1 != order.len() => in_rank_order = false,
                Some(_) => {}
            }
        }
        let node: Vec<usize> = (0..members.len()).filter(|r| node_of(*r) == Some(mine)).collect();
        if order.len() < 2 || order.len() == members.len() {
            return None;
        }
        let leaders = order
            .iter()
            .filter_map(|n| (0..members.len()).find(|r| node_of(*r) == Some(*n)))
            .collect();
        let in_node = node.iter().position(|r| *r == me)?;
        Some(Levels {
            node,
            in_node,
            leaders,
            in_rank_order,
        })
    }
}

/// A communicator's levels, worked out at its first collective that can
/// use them.
pub(crate) type LevelsCell = OnceCell<Option<Levels>>;

impl Communicator {
    /// This communicator's two levels, if its ranks span nodes that share
    /// memory within and two levels gain something.
    pub(crate) fn levels(&self) -> Option<&Levels> {
        if let Some(known) = self.levels_cell().get() {
            return known.as_ref();
        }
        // Not remembered if the engine cannot be had now: every rank must
        // come to the same answer.
        let levels = {
            let engine = self.engine().ok()?;
            let members: Vec<usize> = (0..self.size()).map(|r| self.job_rank(r)).collect();
            engine
                .nodes()
                .and_then(|nodes| Levels::of(&members, nodes, self.rank()))
        };
        self.levels_cell().get_or_init(|| levels).as_ref()
    }

    /// This communicator's two levels, if it has them and an allreduce
    /// may fold in them: its operator `commutes`, or the nodes hold blocks
    /// of ranks in order.
    pub(crate) fn levels_for(&self, commutes: bool) -> Option<&Levels> {
        self.levels().filter(|l| l.in_rank_order || commutes)
    }

    /// A barrier in two levels, if this communicator has them: each node
    /// gathers on its leader, the leaders meet, each leader releases its
    /// node.
    pub(crate) fn barrier_by_levels(&self, call: &Call) -> Option<Result<()>> {
        let levels = self.levels()?;
        let codec = RawCodec(Format::Serde);
        let keep = |a: Vec<u8>, _: Vec<u8>| Ok(a);
        Some(
            self.allreduce_in_levels(call, levels, Step::Barrier, &codec, Vec::new(), &keep)
                .map(|_| ()),
        )
    }

    /// Allreduce in two levels (see the module's documentation).
    pub(crate) fn allreduce_in_levels<T>(
        &self,
        call: &Call,
        levels: &Levels,
        step: Step,
        codec: &dyn Codec<T>,
        value: T,
        combine: &Combine<'_, T>,
    ) -> Result<T> {
        let node = Among::some(&levels.node, levels.in_node);
        let body = match self.reduce_tree(call, node, codec, value, combine, 0)? {
            // This rank leads its node: its part goes to the other leaders.
            Some(part) => {
                let me = levels.leaders.iter().position(|r| *r == self.rank());
                let leaders = Among::some(&levels.leaders, me.unwrap_or(0));
                let all = self.allreduce_among(call, leaders, step, codec, part, combine)?;
                Some(codec.encode(&all)?)
            }
            None => None,
        };
        let body = self.broadcast_among(call, node, body, 0)?;
        codec.decode_owned(own_envelope(levels.node[0], body))
    }
}

#[cfg(test)]
mod tests {
    use super::Levels;

    #[test]
    fn levels_follow_the_nodes() {
        // Three nodes of two ranks each, by slot.
        let nodes = [0, 0, 1, 1, 2, 2];
        let all: Vec<usize> = (0..6).collect();
        let l = Levels::of(&all, &nodes, 3).expect("levels");
        assert_eq!((l.node.as_slice(), l.in_node), (&[2, 3][..], 1));
        assert_eq!(l.leaders, [0, 2, 4]);
        assert!(l.in_rank_order);
        // By node: the same leaders, not in rank order.
        let nodes = [0, 1, 2, 0, 1, 2];
        let l = Levels::of(&all, &nodes, 4).expect("levels");
        assert_eq!(l.node, [1, 4]);
        assert_eq!(l.leaders, [0, 1, 2]);
        assert!(!l.in_rank_order);
        // One node, or a node each: nothing to gain.
        assert!(Levels::of(&all, &[0; 6], 0).is_none());
        assert!(Levels::of(&all[..3], &[0, 1, 2], 0).is_none());
        // A communicator of some of the job's ranks: its own numbers.
        let l = Levels::of(&[1, 2, 3], &[0, 0, 1, 1], 0).expect("levels");
        assert_eq!(l.node, [0]);
        assert_eq!(l.leaders, [0, 1]);
        assert!(l.in_rank_order);
    }
}
