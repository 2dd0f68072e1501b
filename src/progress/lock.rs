//! The lock on a rank's engine: one thread at a time holds it, and a thread
//! that waits lets go of it while it sleeps, so that the rank's other
//! threads go on with their own communicators meanwhile.

use std::cell::{Cell, UnsafeCell};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Engine;
use super::owned::{Held, OwnedMutex};
use crate::error::{Error, Result};
use crate::status::{Asleep, Whole};
use crate::transport::{Sleep, Wait};
use crate::wire::status::now_ns;

/// How often a thread asleep in a wait of a rank started by spmdrun looks
/// again whether every thread of the process waits (one may have started
/// or ended since), and how old the count of threads may be.
const RECOUNT: Duration = Duration::from_millis(200);

/// The last count of the process's threads, and when it was taken (ns on
/// the status pages' clock): reading `/proc` costs microseconds, too much
/// for every sleep.
static THREADS: AtomicU32 = AtomicU32::new(1);
static THREADS_AT: AtomicU64 = AtomicU64::new(0);

/// The threads of this process, counted at most [`RECOUNT`] ago. The
/// status page says the rank waits only when every one of them sleeps in a
/// wait: a thread that computes, or has not called spmd yet, may still
/// send what the others wait for.
fn process_threads() -> u32 {
    let now = now_ns();
    let at = THREADS_AT.load(Ordering::Relaxed);
    if at != 0 && now.saturating_sub(at) < RECOUNT.as_nanos() as u64 {
        return THREADS.load(Ordering::Relaxed);
    }
    let count = count_threads();
    THREADS.store(count, Ordering::Relaxed);
    THREADS_AT.store(now.max(1), Ordering::Relaxed);
    count
}

/// Counts the threads of this process in `/proc/self/stat` (1 if it
/// cannot be read).
fn count_threads() -> u32 {
    use std::io::Read;
    let mut buf = [0u8; 1024];
    let Ok(mut file) = std::fs::File::open("/proc/self/stat") else {
        return 1;
    };
    let Ok(n) = file.read(&mut buf) else { return 1 };
    let text = &buf[..n];
    // Field 20 (num_threads), counting from the state after the name's ')'.
    let Some(end) = text.iter().rposition(|&b| b == b')') else {
        return 1;
    };
    std::str::from_utf8(&text[end + 1..])
        .ok()
        .and_then(|rest| rest.split_ascii_whitespace().nth(17))
        .and_then(|f| f.parse().ok())
        .unwrap_or(1)
}

/// What spmd keeps of a thread that used it, until the thread ends.
struct ThreadMark {
    /// The eventfd that wakes the thread when it sleeps on descriptors
    /// (-1 until it first does).
    wake: Cell<RawFd>,
    /// The engine's count of moves (`Engine::moves`) when the thread's
    /// last sleep in its wait under way ended only to look at the threads
    /// again ([`RECOUNT`]), nobody having woken it: while nothing has moved
    /// since, the next sleep starts without polling (a wait that spins
    /// would otherwise spin five times a second for nothing).
    idle_at: Cell<Option<u64>>,
}

impl Drop for ThreadMark {
    fn drop(&mut self) {
        if self.wake.get() >= 0 {
            // SAFETY: the thread's own eventfd, closed once, here.
            unsafe { libc::close(self.wake.get()) };
        }
    }
}

thread_local! {
    /// The thread holds the engine: spmd was called from inside spmd (an
    /// operator's closure calling a collective, say) if it asks again.
    /// (Plain cells without a destructor: the cheapest thread-locals.)
    static HOLDING: Cell<bool> = const { Cell::new(false) };
    static MARK: ThreadMark = const {
        ThreadMark {
            wake: Cell::new(-1),
            idle_at: Cell::new(None),
        }
    };
}

/// The calling thread's wake-up eventfd, made on first use.
fn thread_wake_fd() -> Result<RawFd> {
    MARK.with(|t| {
        if t.wake.get() < 0 {
            // SAFETY: plain eventfd creation; the result is checked.
            let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if fd < 0 {
                return Err(Error::io(
                    "making a thread's wake-up descriptor",
                    std::io::Error::last_os_error(),
                ));
            }
            t.wake.set(fd);
        }
        Ok(t.wake.get())
    })
}

/// The calling thread's wait is over: its next one polls first again.
pub(super) fn end_idle() {
    MARK.with(|t| t.idle_at.set(None));
}

/// Empties the thread's wake-up eventfd after a sleep.
fn drain(fd: RawFd) {
    let mut count = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a live array; a counter at 0 gives
    // EAGAIN, which is fine.
    let _ = unsafe { libc::read(fd, count.as_mut_ptr().cast(), count.len()) };
}

/// Runs a user's operator: spmd called from inside it (a collective in the
/// closure, say) is an [`Error::Reentered`] instead of a call that would
/// wait for ranks that are not calling it, or for this very rank.
#[inline]
pub(crate) fn combining<R>(combine: impl FnOnce() -> R) -> R {
    /// Puts the thread's mark back as it was, even if the operator panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            HOLDING.set(self.0);
        }
    }
    let _restore = Restore(HOLDING.replace(true));
    combine()
}

/// Fails with [`Error::Reentered`] if this thread is inside spmd already
/// (for calls that must refuse before they change anything, such as a
/// collective taking its number).
#[inline]
pub(crate) fn check_not_combining() -> Result<()> {
    if HOLDING.get() { Err(Error::Reentered) } else { Ok(()) }
}

/// A rank's engine behind its lock.
#[derive(Debug)]
pub(crate) struct EngineLock {
    /// Touched only by the thread that holds `mutex`.
    engine: UnsafeCell<Engine>,
    mutex: OwnedMutex,
    /// Threads waiting for the engine: a thread that polls while it holds
    /// the engine lets go when this is not 0.
    wanting: AtomicU32,
}

// SAFETY: the engine is reached only through an `EngineGuard`, which holds
// `mutex`, as in a `Mutex<Engine>`; and, as there, the engine may move
// between threads:
const _: fn() = || {
    fn moves_between_threads<T: Send>() {}
    moves_between_threads::<Engine>();
};
unsafe impl Sync for EngineLock {}

impl EngineLock {
    pub fn new(engine: Engine) -> EngineLock {
        EngineLock {
            engine: UnsafeCell::new(engine),
            mutex: OwnedMutex::new(),
            wanting: AtomicU32::new(0),
        }
    }

    /// The engine, held by this thread until the guard drops. A panic while
    /// it was held leaves it usable: every operation leaves the engine
    /// consistent before it calls anything that could panic.
    ///
    /// Fails if this thread holds it already: spmd was called from inside
    /// spmd (from an operator's closure, or a `Drop` run by one).
    #[inline]
    pub fn lock(&self) -> Result<EngineGuard<'_>> {
        if HOLDING.replace(true) {
            return Err(Error::Reentered);
        }
        Ok(EngineGuard {
            lock: self,
            held: Some(self.acquire()),
        })
    }

    #[inline]
    fn acquire(&self) -> Held<'_> {
        if let Some(held) = self.mutex.try_lock() {
            return held;
        }
        // Tell a holder that polls to let go.
        self.wanting.fetch_add(1, Ordering::Relaxed);
        let held = self.mutex.lock();
        self.wanting.fetch_sub(1, Ordering::Relaxed);
        held
    }
}

/// The engine, held by this thread until the guard drops (except while a
/// wait sleeps: see [`EngineGuard::pause`]).
pub(crate) struct EngineGuard<'a> {
    lock: &'a EngineLock,
    /// `None` only while the thread sleeps without the engine.
    held: Option<Held<'a>>,
}

impl std::ops::Deref for EngineGuard<'_> {
    type Target = Engine;
    #[inline]
    fn deref(&self) -> &Engine {
        assert!(self.held.is_some(), "the engine is held except inside `unlocked`");
        // SAFETY: this guard holds the engine's mutex.
        unsafe { &*self.lock.engine.get() }
    }
}

impl std::ops::DerefMut for EngineGuard<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut Engine {
        assert!(self.held.is_some(), "the engine is held except inside `unlocked`");
        // SAFETY: this guard holds the engine's mutex, and `&mut self`
        // makes this the only reference made through it.
        unsafe { &mut *self.lock.engine.get() }
    }
}

impl Drop for EngineGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        // What this thread queued and left unwritten (a socket that was
        // full), the threads asleep must see to: they watch what they
        // knew of when they went to sleep.
        if self.held.is_some() && self.sleepers != 0 {
            self.wake_sleepers();
        }
        // The engine is let go after the wake-ups (the field drops next).
        HOLDING.set(false);
    }
}

impl EngineGuard<'_> {
    /// Lets go of the engine while `f` runs (`f` must not touch it).
    fn unlocked<R>(&mut self, f: impl FnOnce() -> R) -> R {
        self.held = None;
        let result = f();
        self.held = Some(self.lock.acquire());
        result
    }

    /// One step of a wait that may sleep: moves bytes, and if none moved,
    /// waits for work ([`EngineGuard::wait_for_work`]). The caller checks
    /// what it waits for after each step.
    pub(super) fn pause(&mut self, deadline: Option<Instant>, ready: &dyn Fn() -> bool) -> Result<()> {
        if self.step_moved(Wait::Once)? {
            return Ok(());
        }
        self.wait_for_work(deadline, ready)
    }

    /// Waits, without moving bytes, until a link is ready, `ready` says so,
    /// or `deadline` passes: polls a while with the engine held (as the wait
    /// mode says; not at all if another thread wants the engine), then
    /// sleeps without it, until a peer or another thread of the rank wakes
    /// this one.
    pub(super) fn wait_for_work(&mut self, deadline: Option<Instant>, ready: &dyn Fn() -> bool) -> Result<()> {
        if ready() || deadline.is_some_and(|d| Instant::now() >= d) || self.poll_for_work(ready) {
            return Ok(());
        }
        self.sleep_unlocked(deadline, ready)
    }

    /// The first half of [`EngineGuard::wait_for_work`]: polls a while
    /// with the engine held, as the wait mode says; true if a link is
    /// ready or `ready` says so, false if it is time to sleep (at once if
    /// another thread wants the engine, or this one's last sleep found
    /// nothing to do).
    pub(super) fn poll_for_work(&mut self, ready: &dyn Fn() -> bool) -> bool {
        let wanting = &self.lock.wanting;
        let wanted = || wanting.load(Ordering::Relaxed) != 0;
        let idle = MARK.with(|t| t.idle_at.get()) == Some(self.moves);
        !idle && !wanted() && self.transport.poll_for_work(&|| ready() || wanted()) && !wanted()
    }

    /// This thread polled as long as the wait mode says and nothing came:
    /// its next sleep in this wait starts without polling again, unless
    /// something moves first.
    pub(super) fn polled_out(&self) {
        MARK.with(|t| t.idle_at.set(Some(self.moves)));
    }

    /// The second half of [`EngineGuard::wait_for_work`]: sleeps without
    /// the engine until a peer or another thread of the rank wakes this
    /// one, or `deadline` passes.
    pub(super) fn sleep_unlocked(&mut self, deadline: Option<Instant>, ready: &dyn Fn() -> bool) -> Result<()> {
        let wake = thread_wake_fd()?;
        self.sleepers += 1;
        let (mut mine, mut woken) = (None, false);
        let result = match self.prepare_sleep(ready, wake) {
            Ok(Some(mut sleep)) => {
                // Sleepers under spmdrun look again now and then: threads
                // start and end (see `Engine::publish_asleep`).
                let (mut until, mut recount) = (deadline, None);
                if self.status.is_some() {
                    mine = self.publish_asleep();
                    let at = Instant::now() + RECOUNT;
                    recount = Some(at).filter(|at| deadline.is_none_or(|d| *at < d));
                    until = Some(deadline.map_or(at, |d| d.min(at)));
                }
                let (slept, ended) = self.unlocked(|| (sleep.sleep(until), Instant::now()));
                // The wake-up descriptor is read only when it fired (it is
                // the last one polled; a doorbell sleep does not use it).
                woken = matches!(&sleep, Sleep::Descriptors(fds) if fds.last().is_some_and(|p| p.revents != 0));
                // Slept until the time to look again, and nobody woke it.
                let looked_again = recount.is_some_and(|at| ended >= at) && !woken;
                MARK.with(|t| t.idle_at.set(looked_again.then_some(self.moves)));
                slept
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        self.sleepers -= 1;
        if let Some(i) = mine.and_then(|m| self.asleep.iter().position(|a| *a == m)) {
            self.asleep.swap_remove(i);
        }
        self.end_sleep(wake);
        if woken {
            drain(wake);
        }
        result?;
        // Another thread may have finalized the rank meanwhile.
        self.check_open()
    }
}

impl Engine {
    /// The calling thread is about to sleep in the wait it noted: adds it to
    /// the waits of the rank's threads asleep (returned, to take out after
    /// the sleep). The status page names the oldest of them, with the
    /// earliest of their own deadlines, and says the rank waits as a whole
    /// only if every thread of the process sleeps in spmd, and nothing
    /// moved in the rank (by any thread) since this one last slept in its
    /// wait (else it is busy).
    fn publish_asleep(&mut self) -> Option<Asleep> {
        let status = self.status.as_ref()?;
        let mine = status.asleep()?;
        let moving = status.moved_since_last_sleep(self.moves);
        self.asleep.push(mine);
        let oldest = self.asleep.iter().min_by_key(|w| w.since).copied().unwrap_or(mine);
        let whole = if self.sleepers >= process_threads() {
            if moving {
                Whole::Moving
            } else {
                Whole::Waits(self.asleep.iter().filter_map(|w| w.on.deadline).min())
            }
        } else {
            Whole::OthersOutside
        };
        status.publish(oldest, whole, self.sent, self.matcher.arrived());
        Some(mine)
    }
}
