//! Collectives done in place in shared memory by all the ranks of a node at
//! once: each rank writes its part into its slot of the shared region,
//! then either
//! - every rank waits until all parts are there and folds them itself, in
//!   rank order (when each rank has a core: one wait, nothing shared is
//!   written twice), or
//! - it arrives on a shared counter; the last to arrive folds the parts,
//!   publishes the result and wakes the others (when ranks outnumber
//!   cores: the others sleep instead of polling for parts one by one).
//!
//! Every rank waits once, instead of once per round of a tree. Each part is
//! marked with its step and its call's signature, so ranks that meet with
//! different calls all get an error instead of folding parts that do not
//! belong together; a rank that waits for a part from a rank that has
//! finalized gets an error instead of waiting for ever.

use std::cell::{Cell, OnceCell, RefCell};
use std::sync::atomic::Ordering;

use crate::communicator::Communicator;
use crate::error::{Error, Result};
use crate::wire::WaitMode;

use super::call::{Call, describe};
use super::region::{FAILED, PART_MAX, Parts, Slots};

/// Combines the parts of all ranks, in rank order, into the result.
pub(crate) type Fold<'a> = dyn FnMut(&Parts) -> Result<Vec<u8>> + 'a;

/// Which step of a collective a rank's part is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum NodeStep {
    Barrier = 1,
    Broadcast = 2,
    Reduce = 3,
    Allreduce = 4,
    /// The check of lengths that starts a collective through the windows.
    WindowStart = 5,
    /// A barrier between the steps of a collective through the windows.
    WindowStep = 6,
    /// The barrier that ends a call now and then (see `call/pace.rs`).
    Pace = 7,
}

impl NodeStep {
    const ALL: [NodeStep; 7] = [
        NodeStep::Barrier,
        NodeStep::Broadcast,
        NodeStep::Reduce,
        NodeStep::Allreduce,
        NodeStep::WindowStart,
        NodeStep::WindowStep,
        NodeStep::Pace,
    ];

    /// What the step adds to its call's description (which already says
    /// whether the call is of more than 4 KiB).
    fn name(self) -> &'static str {
        match self {
            NodeStep::WindowStep => " (between two of its steps)",
            NodeStep::Pace => " (the barrier that ends it)",
            _ => "",
        }
    }
}

/// A part's mark: its step, its call's signature, and the low byte of its
/// call's number (so that parts of different calls never fold together).
fn mark(step: NodeStep, call: &Call) -> u32 {
    step as u32 | u32::from(call.sig) << 8 | u32::from(call.number as u8) << 24
}

/// What a rank brings to a node-wide step: the length of its buffer in
/// bytes (at most [`PART_MAX`]) and its element type's code, which must
/// be the same on every rank (0 for a step that moves nothing).
pub(crate) fn node_claim(bytes: usize, element: u16) -> u32 {
    debug_assert!(bytes <= PART_MAX);
    bytes as u32 | u32::from(element) << 16
}

/// A rank's [`node_claim`], for errors.
fn describe_claim(claim: u32) -> String {
    format!(
        "{} bytes of {}",
        claim & 0xffff,
        crate::element::describe((claim >> 16) as u16)
    )
}

fn describe_mark(mark: u32) -> String {
    let step = NodeStep::ALL.iter().find(|s| **s as u32 == mark & 0xff);
    format!(
        "{}{} (collective call #{} or one 256 calls apart)",
        describe((mark >> 8) as u16),
        step.map_or(" (an unknown step)", |s| s.name()),
        mark >> 24
    )
}

/// What this rank knows of the node-wide collectives it took part in.
#[derive(Debug, Default)]
pub(crate) struct NodeState {
    /// Node-wide steps so far (the same on every rank of the node).
    steps: Cell<u32>,
    /// Pieces moved through the windows so far (the same on every rank).
    pub pieces: Cell<usize>,
    /// The parts of the last fold, kept for their memory.
    parts: RefCell<Parts>,
    /// Where the communicator's node-wide collectives run, once looked up
    /// (see [`Communicator::node_region`]): it never changes.
    region: OnceCell<Option<Node>>,
}

/// Where the node-wide collectives of a communicator run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Node {
    pub slots: Slots,
    pub n: usize,
    pub me: usize,
    /// Every rank folds the parts itself (a core per rank).
    every_rank_folds: bool,
}

impl Communicator {
    /// True if this communicator's small collectives (parts up to 4 KiB)
    /// run in place in the node's shared memory; false if they go as
    /// messages. The world's do when the job runs over shared memory on
    /// one node; another communicator's do if one of the node's 16
    /// pooled regions was free when it was made. The large collectives of the world also use the shared
    /// windows; those of other communicators go as messages.
    ///
    /// ```
    /// let world = spmd::init()?;
    /// let dup = world.dup()?;
    /// // Both, or neither (alone, or over sockets).
    /// assert_eq!(dup.node_collectives(), world.node_collectives());
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn node_collectives(&self) -> bool {
        self.node_region().is_some()
    }

    /// The node-wide collectives' region, if this communicator can use it:
    /// the world's own when every rank of the job is on this node, over
    /// shared memory; a region of the pool for another communicator that
    /// got one when it was made.
    pub(crate) fn node_region(&self) -> Option<Node> {
        if self.size() < 2 {
            return None;
        }
        // Looked up once: a collective of 8 bytes spent a sixth of its
        // instructions on it.
        if let Some(node) = self.node_state().region.get() {
            return *node;
        }
        // Not remembered if the engine cannot be had now (this thread
        // holds it, or the rank finalized): every rank of the communicator
        // must come to the same answer, and the engine's is the answer.
        let found = self.find_node_region().ok()?;
        *self.node_state().region.get_or_init(|| found)
    }

    /// [`Communicator::node_region`], looked up; `Err` if the engine
    /// cannot be had now to say.
    fn find_node_region(&self) -> Result<Option<Node>> {
        let Some(settings) = self.settings() else {
            return Ok(None);
        };
        let every_rank_folds = settings.wait == WaitMode::Spin;
        if let Some(slots) = self.pooled_slots() {
            return Ok(Some(Node {
                slots,
                n: self.size(),
                me: self.rank(),
                every_rank_folds,
            }));
        }
        if !self.node_wide() {
            return Ok(None);
        }
        let mut engine = self.engine()?;
        let Some(mesh) = engine.node() else { return Ok(None) };
        let (n, me) = (mesh.node().ranks.len(), mesh.node().me);
        let slots = mesh.region().and_then(|region| Slots::of(region, n));
        Ok(slots.map(|slots| Node {
            slots,
            n,
            me,
            every_rank_folds,
        }))
    }

    /// How many node-wide steps this rank has taken on this communicator.
    /// Each waits until every rank of the node has arrived, so a call that
    /// took one kept every rank in step.
    pub(crate) fn node_steps(&self) -> u32 {
        self.node_state().steps.get()
    }

    /// Runs one node-wide step of `call` with this rank's part `mine` (at
    /// most [`PART_MAX`] bytes) and its [`node_claim`], which must be the
    /// same on every rank; returns the folded result. `None` if this
    /// communicator has no node-wide path.
    pub(crate) fn node_step(
        &self,
        call: &Call,
        step: NodeStep,
        claim: u32,
        mine: &[u8],
        fold: &mut Fold<'_>,
    ) -> Option<Result<Vec<u8>>> {
        let node = self.node_region()?;
        Some(self.node_step_on(node, call, step, claim, mine, fold))
    }

    /// [`Communicator::node_step`] on a node already looked up.
    pub(crate) fn node_step_on(
        &self,
        node: Node,
        call: &Call,
        step: NodeStep,
        claim: u32,
        mine: &[u8],
        fold: &mut Fold<'_>,
    ) -> Result<Vec<u8>> {
        debug_assert!(mine.len() <= PART_MAX, "the callers check the size");
        let Node { slots, n, me, .. } = node;
        let state = self.node_state();
        let set = state.steps.get() as usize % 2;
        let target = state.steps.get().wrapping_add(1).max(1);
        state.steps.set(target);
        let mark = mark(step, call);
        slots.put(set, me, mark, claim, mine);
        slots.stamp(set, me).store(target, Ordering::Release);
        // As ranks of the job, for the checks of who has left.
        let missing = || -> Vec<usize> {
            (0..n)
                .filter(|r| slots.stamp(set, *r).load(Ordering::Acquire) != target)
                .map(|r| self.job_rank(r))
                .collect()
        };
        if node.every_rank_folds {
            self.wake_node();
            let ready = || (0..n).all(|r| slots.stamp(set, r).load(Ordering::Acquire) == target);
            self.node_wait(call, &ready, &missing)?;
            self.caught_up(call)?;
            return self.fold_parts(slots, set, n, fold);
        }
        if slots.arrived().fetch_add(1, Ordering::AcqRel) + 1 == n as u32 {
            // Last to arrive: every part is written (the arrivals' Release
            // ordered them before our Acquire).
            let result = self.caught_up(call).and_then(|()| self.fold_parts(slots, set, n, fold));
            match &result {
                Ok(bytes) if bytes.len() <= PART_MAX => slots.put(set, n, 0, 0, bytes),
                Ok(_) => slots.put_failed(set, "a node-wide collective's result is larger than its slot"),
                Err(Error::InvalidArgument(reason)) => slots.put_failed(set, reason),
                Err(Error::CollectiveMismatch { detail }) => slots.put_failed(set, detail),
                Err(e) => slots.put_failed(set, &e.to_string()),
            }
            slots.arrived().store(0, Ordering::Relaxed);
            slots.generation().store(target, Ordering::Release);
            self.wake_node();
            return result;
        }
        let done = || slots.generation().load(Ordering::Acquire) == target;
        self.node_wait(call, &done, &missing)?;
        self.caught_up(call)?;
        let mut out = Vec::new();
        match slots.get(set, n, &mut out, || "the rank that folded".into())?.0 {
            // The rank that folded failed with the reason it published.
            FAILED => Err(Error::CollectiveMismatch {
                detail: String::from_utf8_lossy(&out).into_owned(),
            }),
            _ => Ok(out),
        }
    }

    /// Copies every rank's part of `set` out of the region, checks that all
    /// belong to the same call and claim the same length, and folds them.
    fn fold_parts(&self, slots: Slots, set: usize, n: usize, fold: &mut Fold<'_>) -> Result<Vec<u8>> {
        let state = self.node_state();
        let Ok(mut parts) = state.parts.try_borrow_mut() else {
            // Only a fold that calls a collective from inside its operator
            // finds the parts taken.
            return Err(Error::Reentered);
        };
        parts.clear();
        let (mut first, mut first_claim) = (0, 0);
        for r in 0..n {
            let (m, claim) = slots.get(set, r, parts.buffer(), || format!("rank {r}"))?;
            parts.close();
            if r == 0 {
                (first, first_claim) = (m, claim);
            } else if m == first && claim != first_claim {
                return Err(Error::CollectiveMismatch {
                    detail: format!(
                        "ranks gave slices of different lengths or types to {}: rank 0 {}, rank {r} {}",
                        describe_mark(m),
                        describe_claim(first_claim),
                        describe_claim(claim)
                    ),
                });
            } else if m != first {
                return Err(Error::CollectiveMismatch {
                    detail: format!(
                        "ranks called different collectives at the same point: rank 0 called {}, rank {r} called {} \
                         (every rank must call the same collectives in the same order, with the same root and lengths)",
                        describe_mark(first),
                        describe_mark(m)
                    ),
                });
            }
        }
        fold(&parts)
    }

    /// After a node-wide rendezvous, what the other ranks sent before they
    /// arrived is in this rank's rings: a message of another call there
    /// means the ranks disagree (a rank that did its part of a collective
    /// without waiting for anyone learns it here).
    fn caught_up(&self, call: &Call) -> Result<()> {
        let mut engine = self.engine()?;
        engine.catch_up()?;
        engine.queued_check(&mut call.check())
    }

    fn wake_node(&self) {
        if let Some(mut engine) = self.engine_for_cleanup() {
            if let Some(mesh) = engine.node() {
                mesh.wake_node();
            }
        }
    }

    /// Waits until `ready`, checking the call's queue and that no rank
    /// `missing` names has left.
    fn node_wait(&self, call: &Call, ready: &dyn Fn() -> bool, missing: &dyn Fn() -> Vec<usize>) -> Result<()> {
        if ready() {
            return Ok(());
        }
        let mut check = call.check();
        let waiting = |peer| call.waiting(peer);
        self.engine()?.node_wait(ready, missing, &waiting, &mut check)
    }
}
