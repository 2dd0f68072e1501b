//! The engine's mutex, owned by the first thread that takes it: that
//! thread takes and lets go of it with plain stores (no atomic
//! read-modify-write, which on x86 waits for every store before it), until
//! another thread asks for it; from then on every thread takes a real
//! mutex.
//!
//! A program that calls spmd from one thread, the usual case, pays two
//! plain stores and two loads a call where a mutex costs two locked
//! instructions (about 15% of the rate of 8-byte messages in a stream).
//!
//! The hand-over is Dekker's: the owner stores `active` then loads
//! `revoked`; the thread taking over stores `revoked` then loads `active`.
//! Each side's store must be seen before its load, which on x86 takes a
//! fence. The owner, which runs often, gets only a compiler fence; the
//! thread taking over, once in the process's life, calls
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which makes every
//! running thread of the process execute a full fence. Where that call is
//! refused (an old kernel, a seccomp filter) or unknown (Miri), there is no
//! owner: every thread takes the mutex from the start.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, compiler_fence};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::time::Duration;

/// `membarrier(2)` commands (linux/membarrier.h).
const MEMBARRIER_CMD_QUERY: libc::c_long = 0;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

fn membarrier(cmd: libc::c_long) -> libc::c_long {
    // SAFETY: membarrier takes two integer arguments and no memory.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_long, 0 as libc::c_long) }
}

/// True if this process can make all its threads fence
/// (`MEMBARRIER_CMD_PRIVATE_EXPEDITED`, registered here once).
fn process_fence_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if cfg!(miri) {
            return false;
        }
        let supported = membarrier(MEMBARRIER_CMD_QUERY);
        let wanted = MEMBARRIER_CMD_PRIVATE_EXPEDITED | MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED;
        supported >= 0 && supported & wanted == wanted && membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0
    })
}

thread_local! {
    /// Its address names the thread (two live threads never share it).
    static THREAD: u8 = const { 0 };
}

/// A name of the calling thread that is never 0.
#[inline]
fn this_thread() -> usize {
    THREAD.with(|t| t as *const u8 as usize)
}

/// A mutex with an owning thread (see the module's words). It guards no
/// data itself: its user keeps the data beside it.
#[derive(Debug)]
pub(super) struct OwnedMutex {
    mutex: Mutex<()>,
    /// The owning thread ([`this_thread`]), 0 until one takes the mutex.
    owner: AtomicUsize,
    /// The owner holds the mutex without having locked `mutex`.
    active: AtomicBool,
    /// Nobody owns the mutex any more: every thread locks `mutex`.
    revoked: AtomicBool,
}

/// The mutex, held by the calling thread until this drops (it must not
/// move to another thread: the marker makes it `!Send`, as the guard of a
/// std mutex is).
#[must_use]
pub(super) enum Held<'a> {
    Owner(&'a OwnedMutex, PhantomData<*const ()>),
    Locked(#[expect(dead_code, reason = "held for its drop")] MutexGuard<'a, ()>),
}

impl Drop for Held<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Held::Owner(m, _) = self {
            // What the owner wrote is seen by the thread that takes over
            // once it sees this (Acquire there).
            m.active.store(false, Ordering::Release);
        }
    }
}

impl OwnedMutex {
    pub fn new() -> OwnedMutex {
        OwnedMutex {
            mutex: Mutex::new(()),
            owner: AtomicUsize::new(0),
            active: AtomicBool::new(false),
            revoked: AtomicBool::new(!process_fence_available()),
        }
    }

    /// The mutex if the calling thread owns it (or is the first to take
    /// it, and so becomes its owner) and nobody has asked for it since.
    #[inline]
    fn take_owned(&self) -> Option<Held<'_>> {
        if self.revoked.load(Ordering::Relaxed) {
            return None;
        }
        let me = this_thread();
        let owner = self.owner.load(Ordering::Relaxed);
        if owner != me {
            // Only the very first taker becomes the owner.
            let first = owner == 0
                && self
                    .owner
                    .compare_exchange(0, me, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok();
            if !first {
                return None;
            }
        }
        // Acquire pairs with the last release of a thread that ended and
        // whose thread-local address this thread now has (free on x86).
        let busy = self.active.load(Ordering::Acquire);
        debug_assert!(!busy, "the owner took the engine's mutex twice");
        self.active.store(true, Ordering::Relaxed);
        // The store before the load: the thread taking over fences this
        // thread with membarrier (see the module's words).
        compiler_fence(Ordering::SeqCst);
        if self.revoked.load(Ordering::Relaxed) {
            self.active.store(false, Ordering::Release);
            return None;
        }
        Some(Held::Owner(self, PhantomData))
    }

    /// The mutex, if this thread can have it without waiting: it owns it,
    /// or nobody does any more and `mutex` is free. `None` if another
    /// thread holds it, or may (an owner that is not this thread: only
    /// [`OwnedMutex::lock`] takes over).
    #[inline]
    pub fn try_lock(&self) -> Option<Held<'_>> {
        if let Some(held) = self.take_owned() {
            return Some(held);
        }
        if !self.revoked.load(Ordering::Relaxed) {
            return None;
        }
        match self.mutex.try_lock() {
            Ok(guard) => Some(Held::Locked(guard)),
            Err(TryLockError::Poisoned(p)) => Some(Held::Locked(p.into_inner())),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// The mutex, waiting for it as long as it takes (the caller tells an
    /// owner that polls with it held to let go).
    pub fn lock(&self) -> Held<'_> {
        if let Some(held) = self.take_owned() {
            return held;
        }
        let guard = self.mutex.lock().unwrap_or_else(PoisonError::into_inner);
        self.taken_over(guard)
    }

    /// `guard` holds `mutex`; if an owner may still hold the mutex its
    /// own way, ends ownership and waits until the owner lets go. Once in
    /// the process's life: from then on everyone locks `mutex`.
    fn taken_over<'a>(&'a self, guard: MutexGuard<'a, ()>) -> Held<'a> {
        if !self.revoked.load(Ordering::Relaxed) {
            self.revoked.store(true, Ordering::Relaxed);
            // Every thread of the process fences: from here on the owner
            // either sees `revoked`, or its `active` is seen below.
            // Registered, so it fails only for want of memory (a kernel
            // that allocates a cpumask for it): try again a while. Were it
            // to keep failing, the owner might not see `revoked`: stop
            // rather than share the data.
            let mut tries = 0;
            while membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 {
                tries += 1;
                if tries == 100 {
                    eprintln!(
                        "spmd: membarrier failed after it was registered ({}); stopping",
                        std::io::Error::last_os_error()
                    );
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let mut pause = Duration::from_micros(1);
            while self.active.load(Ordering::Acquire) {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(1));
            }
        }
        Held::Locked(guard)
    }

    /// True if a thread owns the mutex and takes it without locking.
    #[cfg(test)]
    pub fn is_owned(&self) -> bool {
        !self.revoked.load(Ordering::Relaxed) && self.owner.load(Ordering::Relaxed) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::UnsafeCell;
    use std::sync::Arc;

    struct Counter {
        mutex: OwnedMutex,
        value: UnsafeCell<u64>,
    }
    // SAFETY: `value` is touched only with `mutex` held.
    unsafe impl Sync for Counter {}

    fn add(c: &Counter, n: u64) {
        for _ in 0..n {
            let _held = c.mutex.lock();
            // SAFETY: the mutex is held.
            unsafe { *c.value.get() += 1 };
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri has no membarrier: no thread owns the mutex there")]
    fn the_first_thread_owns_it_until_another_takes_it() {
        let c = Arc::new(Counter {
            mutex: OwnedMutex::new(),
            value: UnsafeCell::new(0),
        });
        add(&c, 1000);
        // Linux has had the call since 4.14; a machine that refuses it runs
        // spmd with a plain mutex, and this test says so.
        assert!(
            process_fence_available(),
            "membarrier(PRIVATE_EXPEDITED) is refused here"
        );
        assert!(c.mutex.is_owned());
        // The owner keeps adding while three others take over and add.
        let others: Vec<_> = (0..3)
            .map(|_| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || add(&c, 100_000))
            })
            .collect();
        add(&c, 100_000);
        for t in others {
            t.join().expect("adder");
        }
        assert!(!c.mutex.is_owned());
        let _held = c.mutex.lock();
        // SAFETY: the mutex is held.
        assert_eq!(unsafe { *c.value.get() }, 401_000);
    }

    #[test]
    fn another_thread_waits_for_the_owner_then_takes_over() {
        let m = Arc::new(OwnedMutex::new());
        let held = m.lock();
        let other = Arc::clone(&m);
        assert!(
            std::thread::spawn(move || other.try_lock().is_none())
                .join()
                .expect("thread")
        );
        let other = Arc::clone(&m);
        let (tx, rx) = std::sync::mpsc::channel();
        let taker = std::thread::spawn(move || {
            let _held = other.lock();
            tx.send(()).expect("send");
            std::thread::sleep(Duration::from_millis(50));
        });
        // The taker waits while the first thread holds it.
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        drop(held);
        rx.recv_timeout(Duration::from_secs(10)).expect("the taker got it");
        assert!(m.try_lock().is_none(), "held by the taker");
        taker.join().expect("taker");
        assert!(m.try_lock().is_some());
        assert!(!m.is_owned());
    }
}
