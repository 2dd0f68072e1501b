//! Doorbells: a word in each rank's segment that the rank sleeps on with a
//! futex when it has nothing to do, and that its peers ring after writing
//! to it. Both sides put a SeqCst fence between their store and their
//! check, so a wake-up is never lost.

use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::time::Duration;

/// The owner is awake (or polling).
pub(super) const AWAKE: u32 = 0;
/// The owner is asleep, or about to be: ring it. The bit is set; the
/// other bits tell one announcement from the next (see [`announce`]).
pub(super) const SLEEPING: u32 = 1;

/// Tells apart the announcements of a rank's threads (see [`announce`]).
static ANNOUNCEMENTS: AtomicU32 = AtomicU32::new(0);

/// Wakes the owners of all the doorbells that sleep, after one fence.
pub(super) fn ring_all<'a>(doorbells: impl Iterator<Item = &'a AtomicU32>) {
    fence(Ordering::SeqCst);
    for bell in doorbells {
        if bell.load(Ordering::Relaxed) & SLEEPING != 0 {
            bell.store(AWAKE, Ordering::Relaxed);
            futex_wake(bell);
        }
    }
}

/// Wakes the owner of `doorbell` if it sleeps. The fence orders our
/// preceding store (a head, a tail, a fastbox) before the check.
pub(super) fn ring(doorbell: &AtomicU32) {
    ring_all(std::iter::once(doorbell));
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32 in shared memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            0usize,
            0usize,
            0u32,
        );
    }
}

/// Sleeps on this rank's own doorbell `bell` unless `ready` is true once
/// the bell says SLEEPING: a peer that makes `ready` true after that check
/// sees SLEEPING when it rings, and wakes the rank. Returns when woken, or
/// after `timeout`.
pub(super) fn sleep_unless(bell: &AtomicU32, ready: &dyn Fn() -> bool, timeout: Option<Duration>) {
    bell.store(SLEEPING, Ordering::SeqCst);
    fence(Ordering::SeqCst);
    if !ready() {
        wait(bell, SLEEPING, timeout);
    }
    bell.store(AWAKE, Ordering::Relaxed);
}

/// Says this rank is about to sleep on `bell` (without its engine held):
/// a peer that writes after this sees SLEEPING and rings. The caller checks
/// once more that nothing is ready, then calls [`sleep_announced`] with
/// the value returned.
///
/// Each announcement writes its own value (SLEEPING with a count above
/// it): if a ring clears the bell and another thread of the rank announces
/// again before this one sleeps, this one's futex sees a value other than
/// its own and does not sleep through the ring.
pub(super) fn announce(bell: &AtomicU32) -> u32 {
    let value = ANNOUNCEMENTS.fetch_add(1, Ordering::Relaxed) << 1 | SLEEPING;
    bell.store(value, Ordering::SeqCst);
    fence(Ordering::SeqCst);
    value
}

/// Sleeps on `bell` after [`announce`] wrote `value`, until it is rung or
/// `timeout` passes. The bell stays as it is: the last of the rank's
/// sleeping threads to wake marks it awake ([`awake`]).
pub(super) fn sleep_announced(bell: &AtomicU32, value: u32, timeout: Option<Duration>) {
    wait(bell, value, timeout);
}

/// Marks the bell awake: no thread of the rank sleeps on it any more.
pub(super) fn awake(bell: &AtomicU32) {
    bell.store(AWAKE, Ordering::Relaxed);
}

/// Wakes every thread of this rank that sleeps on its own `bell` (another
/// thread moved bytes one of them may be waiting for).
pub(super) fn wake_own(bell: &AtomicU32) {
    bell.store(AWAKE, Ordering::SeqCst);
    futex_wake(bell);
}

/// Sleeps while `word` holds `expected`, until woken or `timeout` passes.
fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT on a valid, aligned u32; the timeout outlives the
    // call. EINTR, EAGAIN and ETIMEDOUT all just return to the caller.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            0usize,
            0u32,
        );
    }
}
