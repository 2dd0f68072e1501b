//! How a rank waits for shared memory: it polls (spinning, or yielding its
//! core to a peer that needs it), then sleeps on its doorbell.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::segment::CLOSED;
use super::{ShmMesh, doorbell, single_copy};
use crate::wire::control::WaitMode;

/// How long a rank polls before it sleeps, when it has a core to itself.
const SPIN: Duration = Duration::from_millis(1);
/// How often a polling rank looks whether a peer waits for its core.
const CORE_CHECK: u32 = 128;

/// The core a rank polls on, plus one, published in its segment while it
/// polls (0 otherwise: a rank that computes, or sleeps, waits for nobody's
/// core, and a stale core would mislead its peers).
struct PollingMark<'a> {
    word: &'a AtomicU32,
    core: u32,
}

impl<'a> PollingMark<'a> {
    fn new(word: &'a AtomicU32) -> PollingMark<'a> {
        let mut mark = PollingMark { word, core: 0 };
        mark.update();
        mark
    }

    /// Publishes the core this rank runs on now (it may have moved).
    fn update(&mut self) -> u32 {
        // SAFETY: a plain call; it only reads this thread's state.
        let core = u32::try_from(unsafe { libc::sched_getcpu() }).map_or(0, |c| c.wrapping_add(1));
        if core != self.core {
            self.core = core;
            self.word.store(core, Ordering::Relaxed);
        }
        core
    }
}

impl Drop for PollingMark<'_> {
    fn drop(&mut self) {
        self.word.store(0, Ordering::Relaxed);
    }
}
/// How long a rank keeps yielding its core before it sleeps, when there are
/// more ranks than cores: handing the core to the peer it waits for costs a
/// few microseconds, a futex wake-up tens.
const YIELD: Duration = Duration::from_micros(500);
/// A rank that yields between polls looks at its peers' links every
/// `ranks on the node / PEERS_PER_SCAN` yields.
const PEERS_PER_SCAN: usize = 8;

impl ShmMesh {
    /// Waits, without moving bytes, until a link is ready, `woken` says so,
    /// or the deadline passes: polls a while (as the wait mode says), then
    /// calls `sleeping` and sleeps on the doorbell.
    pub fn idle(&self, deadline: Option<Instant>, woken: &dyn Fn() -> bool, sleeping: &dyn Fn()) {
        if self.poll_for_work(woken) {
            return;
        }
        sleeping();
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        doorbell::sleep_unless(self.own.doorbell(), &|| self.anything_ready() || woken(), timeout);
    }

    /// Polls, as the wait mode says, until a link is ready or `woken` says
    /// so (true), or the time to poll is up (false).
    pub fn poll_for_work(&self, woken: &dyn Fn() -> bool) -> bool {
        let ready = || self.anything_ready() || woken();
        let poll_for = match self.wait {
            // A peer copying this rank's offer needs a core for as long as
            // the copy takes (tens of microseconds at least). On a machine
            // with more runnable tasks than cores, polling would take that
            // time from it: sleep at once; its Taken rings the doorbell.
            _ if self.peers.awaits_taken() && single_copy::machine_is_busy() => None,
            WaitMode::Spin => Some(SPIN),
            WaitMode::Yield => Some(YIELD),
            WaitMode::Sleep => None,
        };
        let Some(poll_for) = poll_for else {
            return ready();
        };
        let always_yield = self.wait == WaitMode::Yield;
        // Looking at every peer's links costs a few cache lines (and
        // pages) each: with many peers, a rank that yields between polls
        // looks at them only every few yields, and at `woken` on every one.
        let scan_every = (self.mapped.len() / PEERS_PER_SCAN).max(1) as u32;
        // This rank polls on its core for as long as the wait lasts, and
        // says so, so that a peer stuck behind it on the same core can tell
        // (see `core_is_wanted`).
        let mut polling = PollingMark::new(self.own.core());
        let mut yielding = always_yield || self.core_is_wanted(polling.core);
        // Reading the clock costs more than a poll: not on every poll, and
        // not at all when the wait is short.
        let mut started = None;
        let mut polls = 0u32;
        loop {
            polls = polls.wrapping_add(1);
            if yielding {
                std::thread::yield_now();
                if woken() || (polls % scan_every == 0 && self.anything_ready()) {
                    return true;
                }
            } else {
                std::hint::spin_loop();
                if ready() {
                    return true;
                }
            }
            if yielding || polls % CORE_CHECK == 0 {
                let now = Instant::now();
                if now - *started.get_or_insert(now) >= poll_for {
                    return false;
                }
                yielding = always_yield || self.core_is_wanted(polling.update());
            }
        }
    }

    /// Gets ready to sleep on this rank's doorbell without the engine
    /// held: the doorbell says SLEEPING from now on, so a peer that writes
    /// rings it. The doorbell, or `None` if something is ready (or `ready`
    /// says so) after all.
    pub fn prepare_sleep(&self, ready: &dyn Fn() -> bool) -> Option<(*const AtomicU32, u32)> {
        let bell = self.own.doorbell();
        let announced = doorbell::announce(bell, false);
        if self.anything_ready() || ready() {
            return None;
        }
        Some((bell as *const AtomicU32, announced))
    }

    /// The last sleeping thread of the rank woke: the doorbell says awake.
    pub fn end_sleep(&self) {
        doorbell::awake(self.own.doorbell());
    }

    /// Gets ready to sleep in `poll` (among sockets) rather than on the
    /// futex: the doorbell says so, and a peer that writes from now on
    /// ring the returned wake-up socket. `None` if something is ready
    /// (or `ready` says so) after all, or this rank has no wake-up socket.
    pub fn prepare_poll_sleep(&self, ready: &dyn Fn() -> bool) -> Option<RawFd> {
        let wake = self.own_wake.as_ref()?.as_raw_fd();
        // Rings from before are old news: the look after the announce's
        // fence sees what they rang for. (Left queued, with another thread
        // of the rank still asleep, they would wake every poll at once.)
        self.drain_wake();
        doorbell::announce(self.own.doorbell(), true);
        if self.anything_ready() || ready() {
            doorbell::awake(self.own.doorbell());
            return None;
        }
        Some(wake)
    }

    /// The last thread that slept in `poll` woke: the doorbell says awake,
    /// and the wake-up socket is emptied.
    pub fn end_poll_sleep(&self) {
        doorbell::awake(self.own.doorbell());
        self.drain_wake();
    }

    /// Empties the wake-up socket.
    fn drain_wake(&self) {
        if let Some(wake) = &self.own_wake {
            // What the peers sent: a byte each ring. (A flood left behind
            // only wakes the next poll at once.)
            let mut buf = [0u8; 64];
            for _ in 0..256 {
                // SAFETY: receives at most 64 bytes into a live array from
                // this rank's own non-blocking socket.
                let n = unsafe { libc::recv(wake.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
                if n < 0 {
                    break;
                }
            }
        }
    }

    /// Wakes the threads of this rank that sleep on its doorbell.
    pub fn wake_sleepers(&self) {
        doorbell::wake_own(self.own.doorbell());
    }

    /// True if a peer is polling, or was when it lost its core, on `core`,
    /// the core this rank polls on: it most likely waits for this core now
    /// (more work than cores on the machine put both on one), so polling
    /// would only keep it out. A peer polling on another core is better
    /// waited for by polling: yielding would hand this core to some other
    /// program, not to the peer.
    fn core_is_wanted(&self, core: u32) -> bool {
        core != 0
            && self.mapped.iter().flatten().any(|peer| {
                peer.core().load(Ordering::Relaxed) == core && peer.state().load(Ordering::Relaxed) < CLOSED
            })
    }
}

/// Sleeps on a doorbell [`ShmMesh::prepare_sleep`] gave, until it is rung
/// or `timeout` passes.
pub(crate) fn sleep_on(bell: *const AtomicU32, announced: u32, timeout: Option<Duration>) {
    // SAFETY: the doorbell is in this rank's own segment, which stays
    // mapped as long as the engine lives, and the sleeping thread holds the
    // job (and so the engine) alive.
    doorbell::sleep_announced(unsafe { &*bell }, announced, timeout);
}
