//! Doorbells: a word in each rank's segment that the rank sleeps on with a
//! futex when it has nothing to do, and that its peers ring after writing
//! to it. Both sides put a SeqCst fence between their store and their
//! check, so a wake-up is never lost. A rank that also waits on sockets
//! (its job spans nodes) sleeps in `poll` instead, and says so on its
//! doorbell ([`POLLING`]): a peer then rings it by sending a byte on its
//! wake-up socket (a datagram socket, sent on without waiting), which
//! travelled to the peer beside its segment.

use std::os::fd::{AsFd, OwnedFd, RawFd};

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::time::Duration;

/// The owner is awake (or polling).
pub(super) const AWAKE: u32 = 0;
/// The owner is asleep, or about to be: ring it. The bit is set; the
/// other bits tell one announcement from the next (see [`announce`]).
pub(super) const SLEEPING: u32 = 1;

/// The owner sleeps in `poll`, not on the futex: ring it through its
/// wake-up socket.
pub(super) const POLLING: u32 = 2;

/// Tells apart the announcements of a rank's threads (see [`announce`]).
static ANNOUNCEMENTS: AtomicU32 = AtomicU32::new(0);

/// Wakes the owners of all the doorbells that sleep, after one fence; each
/// bell comes with its owner's wake-up socket, if this rank has it.
pub(super) fn ring_all<'a>(doorbells: impl Iterator<Item = (&'a AtomicU32, Option<RawFd>)>) {
    fence(Ordering::SeqCst);
    for (bell, wake) in doorbells {
        let value = bell.load(Ordering::Relaxed);
        if value & SLEEPING != 0 {
            bell.store(AWAKE, Ordering::Relaxed);
            match wake {
                Some(fd) if value & POLLING != 0 => send_wake(fd),
                _ => futex_wake(bell),
            }
        }
    }
}

/// Wakes the owner of `doorbell` if it sleeps (through `wake`, its
/// socket, if it sleeps in `poll`). The fence orders our preceding store
/// (a head, a tail, a fastbox) before the check.
pub(super) fn ring(doorbell: &AtomicU32, wake: Option<RawFd>) {
    ring_all(std::iter::once((doorbell, wake)));
}

/// Checks that `wake`, a peer's wake-up descriptor, is a datagram socket
/// (the launcher checks it too; this rank believes no one). `who` names
/// the peer. Rings send on it without ever waiting, whatever its flags.
pub(super) fn check_wake(wake: &OwnedFd, who: &str) -> Result<()> {
    crate::wire::descriptors::check_wake_socket(wake.as_fd())
        .map_err(|why| Error::protocol(who, "wake-up descriptor", format!("it is {why}")))
}

/// Sends a byte on a peer's wake-up socket (waking it in `poll`). It never
/// waits: a full socket is already readable, which is all a ring needs,
/// and a peer that closed its end is the peer's own affair.
fn send_wake(fd: RawFd) {
    let one = [1u8];
    // SAFETY: sends 1 byte from a live array on a descriptor this rank
    // holds open for as long as its links.
    let _ = unsafe {
        libc::send(
            fd,
            one.as_ptr().cast(),
            one.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
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
///
/// `polling` says the thread sleeps in `poll` on the rank's wake-up
/// socket (among others) rather than on the futex.
pub(super) fn announce(bell: &AtomicU32, polling: bool) -> u32 {
    let how = if polling { SLEEPING | POLLING } else { SLEEPING };
    let value = ANNOUNCEMENTS.fetch_add(1, Ordering::Relaxed) << 2 | how;
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
