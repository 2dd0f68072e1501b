//! The rank's side of its status page (see [`crate::wire::status`]): what
//! the current wait is, kept in private memory at every slow wait, and
//! written to the page only when the wait is about to sleep, so that fast
//! waits never touch the shared page.

use std::cell::Cell;
use std::time::Instant;

use crate::wire::status::{Page, Phase, WaitOp, Waiting, now_ns};

/// A wait as the engine describes it before it sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WaitOn {
    pub op: WaitOp,
    pub peer: Option<usize>,
    pub tag: Option<u32>,
    pub context: u32,
    pub call: u32,
    pub sig: u16,
    /// When the wait gives up, if it does.
    pub deadline: Option<Instant>,
}

impl WaitOn {
    /// A point-to-point wait.
    pub fn p2p(op: WaitOp, peer: Option<usize>, tag: Option<u32>, context: u32) -> WaitOn {
        WaitOn {
            op,
            peer,
            tag,
            context,
            call: 0,
            sig: 0,
            deadline: None,
        }
    }
}

/// The rank's status page and what it will say next.
#[derive(Debug)]
pub(crate) struct StatusWriter {
    page: Page,
    /// The wait under way, with the message counts at its last step.
    pending: Cell<Option<(WaitOn, u64, u64)>>,
    /// When the pending wait was first written to the page.
    since: Cell<Option<u64>>,
    /// The page says "waiting".
    published: Cell<bool>,
}

impl StatusWriter {
    pub fn new(page: Page) -> StatusWriter {
        StatusWriter {
            page,
            pending: Cell::new(None),
            since: Cell::new(None),
            published: Cell::new(false),
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.page.set_phase(phase);
    }

    /// Notes the wait under way (private memory only).
    pub fn note(&self, on: WaitOn, sent: u64, arrived: u64) {
        if self.pending.get().is_some_and(|(p, _, _)| p != on) {
            self.since.set(None);
        }
        self.pending.set(Some((on, sent, arrived)));
    }

    /// The transport is about to sleep: the page says what for.
    pub fn sleeping(&self) {
        let Some((on, sent, arrived)) = self.pending.get() else {
            return;
        };
        let since = match self.since.get() {
            Some(t) => t,
            None => {
                let t = now_ns();
                self.since.set(Some(t));
                t
            }
        };
        let until_ns = on.deadline.map_or(0, |d| {
            let left = d.saturating_duration_since(Instant::now());
            now_ns()
                .saturating_add(left.as_nanos().min(u64::MAX as u128) as u64)
                .max(1)
        });
        let waiting = Waiting {
            op: on.op,
            peer: on.peer.and_then(|p| u32::try_from(p).ok()),
            tag: on.tag,
            context: on.context,
            call: on.call,
            sig: on.sig,
            since_ns: since,
            until_ns,
        };
        self.page.set_waiting(&waiting, sent, arrived);
        self.published.set(true);
    }

    /// The wait goes on, but the rank is not waiting as a whole (another
    /// of its threads is doing something else): the page says running.
    pub fn not_sleeping(&self, sent: u64, arrived: u64) {
        self.since.set(None);
        if self.published.replace(false) {
            self.page.set_running(sent, arrived);
        }
    }

    /// The wait is over.
    pub fn done(&self, sent: u64, arrived: u64) {
        self.pending.set(None);
        self.since.set(None);
        if self.published.replace(false) {
            self.page.set_running(sent, arrived);
        }
    }
}
