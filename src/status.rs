//! The rank's side of its status page (see [`crate::wire::status`]): what
//! the current wait is, kept in private memory at every slow wait, and
//! written to the page only when the wait is about to sleep, so that fast
//! waits never touch the shared page.

use std::cell::Cell;
use std::time::Instant;

use crate::selector::Selector;
use crate::wire::status::{BUSY_IN_SPMD, LATEST_DEADLINE, OTHER_THREADS_OUTSIDE, Page, Phase, WaitOp, Waiting, now_ns};

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

    /// A wait for a message `sel` selects (a receive or a probe), giving
    /// up at `deadline` if it does.
    pub fn selected(op: WaitOp, sel: Selector, deadline: Option<Instant>) -> WaitOn {
        WaitOn {
            deadline,
            ..WaitOn::p2p(op, sel.pattern.source_rank(), sel.pattern.tag_value(), sel.context.0)
        }
    }
}

/// How long a wait goes on without sleeping before the page says so: a
/// wait that keeps finding messages to move (a steady stream, faster than
/// its polling) never sleeps, and its rank would read as computing outside
/// spmd. The page is written again this often while it lasts.
const BUSY_AFTER_NS: u64 = 500_000_000;

/// The steps of a wait between two looks at the clock for that (a look
/// costs more than a step that finds nothing).
const BUSY_LOOK_EVERY: u32 = 256;

thread_local! {
    /// The calling thread's wait under way, and since when it has been
    /// blocked in it (ns; `None` until it first sleeps, or is first told
    /// busy): each thread of a rank has its own.
    static PENDING: Cell<Option<(WaitOn, Option<u64>)>> = const { Cell::new(None) };
    /// The steps of that wait since it last slept (or began), and the
    /// clock at the first look at them, or at the last time the page was
    /// told the wait is busy (ns; 0 before the first look).
    static BUSY: Cell<(u32, u64)> = const { Cell::new((0, 0)) };
    /// The engine's count of moves (`Engine::moves`) when the calling
    /// thread last went to sleep in that wait, or when it began.
    static SLEPT_AT: Cell<u64> = const { Cell::new(0) };
}

/// A thread asleep in a wait, as the page may name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Asleep {
    pub on: WaitOn,
    /// Since when the thread has slept in this wait (ns).
    pub since: u64,
}

/// What the page says about the rank as a whole, beside the wait it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Whole {
    /// Every thread of the process sleeps in spmd; the earliest deadline
    /// of their waits, if any has one.
    Waits(Option<Instant>),
    /// Every thread of the process sleeps in spmd, but something moved in
    /// the rank since the one going to sleep now last slept in its wait:
    /// it sleeps only between messages that keep coming, and is as busy as
    /// a wait that never sleeps (its next sleep with nothing moved since
    /// says [`Whole::Waits`] again).
    Moving,
    /// Some thread of the process is outside spmd: it may yet send what
    /// the others wait for, so this is no deadlock.
    OthersOutside,
}

/// The rank's status page.
#[derive(Debug)]
pub(crate) struct StatusWriter {
    page: Page,
    /// The page says "waiting".
    published: Cell<bool>,
}

impl StatusWriter {
    pub fn new(page: Page) -> StatusWriter {
        StatusWriter {
            page,
            published: Cell::new(false),
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.page.set_phase(phase);
    }

    /// The rank has finalized: the page says so, with its final counts.
    pub fn finalized(&self, sent: u64, arrived: u64) {
        self.page.set_finalized(sent, arrived);
    }

    /// Notes a step of the calling thread's wait under way (private memory
    /// only). Once the wait has gone on for [`BUSY_AFTER_NS`] without
    /// sleeping, returns it, to be published as busy
    /// ([`StatusWriter::publish_busy`]), and again as often while it lasts.
    /// `moves` is the engine's count of moves (`Engine::moves`).
    pub fn note(&self, on: WaitOn, moves: u64) -> Option<Asleep> {
        let since = match PENDING.get() {
            Some((before, since)) if before == on => since,
            _ => {
                PENDING.set(Some((on, None)));
                BUSY.set((0, 0));
                SLEPT_AT.set(moves);
                return None;
            }
        };
        let (steps, last) = BUSY.get();
        let steps = steps.wrapping_add(1);
        BUSY.set((steps, last));
        // The first look is at the wait's first step after the one that
        // noted it: a wait that ends at once reads no clock.
        if steps != 1 && steps % BUSY_LOOK_EVERY != 0 {
            return None;
        }
        let now = now_ns();
        if last == 0 {
            BUSY.set((steps, now));
            return None;
        }
        if now.saturating_sub(last) < BUSY_AFTER_NS {
            return None;
        }
        // Blocked since it first slept, or since the first look.
        let since = since.unwrap_or(last);
        PENDING.set(Some((on, Some(since))));
        BUSY.set((steps, now));
        Some(Asleep { on, since })
    }

    /// The calling thread is about to sleep in the wait it noted: the wait
    /// and since when (now, on its first sleep in it).
    pub fn asleep(&self) -> Option<Asleep> {
        let (on, since) = PENDING.get()?;
        let since = since.unwrap_or_else(now_ns);
        PENDING.set(Some((on, Some(since))));
        BUSY.set((0, 0));
        Some(Asleep { on, since })
    }

    /// True if anything moved (`moves`, the engine's count) since the
    /// calling thread last went to sleep in the wait it noted (or since
    /// the wait began), which it is about to do again now.
    pub fn moved_since_last_sleep(&self, moves: u64) -> bool {
        SLEPT_AT.replace(moves) != moves
    }

    /// The page names `wait`, which its thread has not slept in for a
    /// while: it is blocked but busy (see [`BUSY_IN_SPMD`]).
    pub fn publish_busy(&self, wait: Asleep, sent: u64, arrived: u64) {
        self.write(wait, BUSY_IN_SPMD, sent, arrived);
    }

    /// The page names `wait` (the oldest of the rank's threads asleep), and
    /// says how the rank waits as a whole.
    pub fn publish(&self, wait: Asleep, whole: Whole, sent: u64, arrived: u64) {
        let until_ns = match whole {
            Whole::OthersOutside => OTHER_THREADS_OUTSIDE,
            Whole::Moving => BUSY_IN_SPMD,
            Whole::Waits(None) => 0,
            Whole::Waits(Some(d)) => {
                let left = d.saturating_duration_since(Instant::now());
                now_ns()
                    .saturating_add(left.as_nanos().min(u64::MAX as u128) as u64)
                    .clamp(1, LATEST_DEADLINE)
            }
        };
        self.write(wait, until_ns, sent, arrived);
    }

    fn write(&self, wait: Asleep, until_ns: u64, sent: u64, arrived: u64) {
        let on = wait.on;
        let waiting = Waiting {
            op: on.op,
            peer: on.peer.and_then(|p| u32::try_from(p).ok()),
            tag: on.tag,
            context: on.context,
            call: on.call,
            sig: on.sig,
            since_ns: wait.since,
            until_ns,
        };
        self.page.set_waiting(&waiting, sent, arrived);
        self.published.set(true);
    }

    /// The calling thread's wait is over; the page says running (until a
    /// thread still asleep looks again, see `progress::lock`).
    pub fn done(&self, sent: u64, arrived: u64) {
        PENDING.set(None);
        if self.published.replace(false) {
            self.page.set_running(sent, arrived);
        }
    }
}
