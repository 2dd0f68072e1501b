//! Collectives done in place in shared memory by all the ranks of a node at
//! once: each rank writes its part into its slot in rank 0's segment, then
//! either
//! - every rank waits until all parts are there and folds them itself, in
//!   rank order (when each rank has a core: one wait, nothing shared is
//!   written twice), or
//! - it arrives on a shared counter; the last to arrive folds the parts,
//!   publishes the result and wakes the others (when ranks outnumber
//!   cores: the others sleep instead of polling for parts one by one).
//!
//! Every rank waits once, instead of once per round of a tree.

use std::sync::atomic::Ordering;

use crate::error::{Error, Result};

use super::Delivery;
use super::segment::{Area, SLOT_DATA, ring_doorbells};
use super::shm::ShmMesh;

/// The most bytes a rank may contribute to a node-wide collective.
pub(crate) const NODE_PART_MAX: usize = SLOT_DATA;

/// Combines the parts of all ranks, in rank order, into the result.
pub(crate) type Fold<'a> = dyn FnMut(&[&[u8]]) -> Result<Vec<u8>> + 'a;

/// Which collective a rank's part is for: ranks that meet in a node-wide
/// collective with different calls (a user error) all get an error saying
/// so, instead of folding parts that do not belong together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum NodeCall {
    Barrier = 1,
    Broadcast = 2,
    Reduce = 3,
    Allreduce = 4,
    /// The check of lengths that starts a collective through the windows.
    WindowStart = 5,
    /// A barrier between the steps of a collective through the windows.
    WindowStep = 6,
}

impl NodeCall {
    const ALL: [NodeCall; 6] = [
        NodeCall::Barrier,
        NodeCall::Broadcast,
        NodeCall::Reduce,
        NodeCall::Allreduce,
        NodeCall::WindowStart,
        NodeCall::WindowStep,
    ];

    fn name(self) -> &'static str {
        match self {
            NodeCall::Barrier => "barrier",
            NodeCall::Broadcast => "broadcast_into of at most 4 KiB",
            NodeCall::Reduce => "reduce_into of at most 4 KiB",
            NodeCall::Allreduce => "allreduce_into of at most 4 KiB",
            NodeCall::WindowStart => "a collective of more than 4 KiB",
            NodeCall::WindowStep => "the middle of a collective of more than 4 KiB",
        }
    }

    /// The name of the call a slot is marked with.
    fn name_of(mark: u8) -> &'static str {
        Self::ALL
            .iter()
            .find(|c| **c as u8 == mark)
            .map_or("something unknown", |c| c.name())
    }
}

/// Folds the parts of all `n` ranks in `set`, after checking that every
/// part is marked with the same call; the error names rank 0's call and the
/// first rank's that differs.
fn fold_parts(area: &Area, set: usize, n: usize, fold: &mut Fold<'_>) -> Result<Vec<u8>> {
    let first = area.get(set, 0).0;
    let mut parts = Vec::with_capacity(n);
    for r in 0..n {
        let (call, bytes) = area.get(set, r);
        if call != first {
            return Err(Error::InvalidArgument(format!(
                "ranks called different collectives at the same point: rank 0 called {}, rank {r} called {} \
                 (every rank must call the same collectives in the same order, with the same lengths)",
                NodeCall::name_of(first),
                NodeCall::name_of(call)
            )));
        }
        parts.push(bytes);
    }
    fold(&parts)
}

impl ShmMesh {
    /// Runs one node-wide collective with this rank's part `mine` (at most
    /// [`NODE_PART_MAX`] bytes, which the caller checked); returns the
    /// folded result. Keeps moving
    /// point-to-point bytes while it waits, so a peer blocked in a send to
    /// this rank can finish and arrive.
    pub fn node_collective(
        &mut self,
        deliver: &mut Delivery<'_>,
        call: NodeCall,
        mine: &[u8],
        fold: &mut Fold<'_>,
    ) -> Result<Vec<u8>> {
        debug_assert!(
            mine.len() <= NODE_PART_MAX,
            "Transport::node_collective checks the size"
        );
        let n = self.peers.list.len() as u32;
        let set = self.calls as usize % 2;
        let target = self.calls.wrapping_add(1);
        self.calls = target;
        let area = self.area;
        area.put(set, self.peers.me, call as u8, mine);
        if self.every_rank_folds {
            return self.fold_here(deliver, set, target, fold);
        }
        if area.arrived().fetch_add(1, Ordering::AcqRel) + 1 == n {
            // Last to arrive: every part is written (the arrivals' Release
            // ordered them before our Acquire).
            let result = fold_parts(&area, set, n as usize, fold);
            match &result {
                Ok(bytes) if bytes.len() <= SLOT_DATA => area.put(set, n as usize, 0, bytes),
                Ok(_) => area.put_failed(set, "a node-wide collective's result is larger than its slot"),
                Err(Error::InvalidArgument(reason)) => area.put_failed(set, reason),
                Err(e) => area.put_failed(set, &e.to_string()),
            }
            area.arrived().store(0, Ordering::Relaxed);
            area.generation().store(target, Ordering::Release);
            // SAFETY: the doorbells point into mappings the mesh keeps alive.
            ring_doorbells(self.bells.iter().map(|b| unsafe { &**b }));
            return result;
        }
        let done = |mesh: &ShmMesh| mesh.area.generation().load(Ordering::Acquire) == target;
        while !done(self) {
            if !self.move_bytes(deliver)? {
                self.idle(None, &done);
            }
        }
        // The rank that folded failed with the reason it published.
        area.result(set).map(<[u8]>::to_vec).map_err(Error::InvalidArgument)
    }

    /// The way with a core per rank: stamps this rank's part (written in
    /// `set`) as belonging to call `target`, waits until every part is
    /// stamped so, and folds them all here. A set is written again two
    /// calls later, by which time every rank has read it: nobody finishes
    /// the call in between before every rank has written its part of it,
    /// which each does only after reading this one.
    fn fold_here(
        &mut self,
        deliver: &mut Delivery<'_>,
        set: usize,
        target: u32,
        fold: &mut Fold<'_>,
    ) -> Result<Vec<u8>> {
        let area = self.area;
        let n = self.peers.list.len();
        area.stamp(set, self.peers.me).store(target, Ordering::Release);
        // SAFETY: the doorbells point into mappings the mesh keeps alive.
        ring_doorbells(self.bells.iter().map(|b| unsafe { &**b }));
        let all_here = |mesh: &ShmMesh| (0..n).all(|r| mesh.area.stamp(set, r).load(Ordering::Acquire) == target);
        while !all_here(self) {
            if !self.move_bytes(deliver)? {
                self.idle(None, &all_here);
            }
        }
        fold_parts(&area, set, n, fold)
    }
}
