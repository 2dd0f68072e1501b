//! The `immediate_` collectives in flight in this process (their chains of
//! non-blocking MPI calls), and the thread that moves them on. A chain's
//! next stage may need this rank (rank 0 folds the parts, say) while the
//! rank waits elsewhere: in a `barrier`, a `receive`, or a computation.
//! MPI's blocking calls cannot move spmd's chains, and a blocking
//! collective cannot be swapped for its non-blocking form on one rank only
//! (MPI does not match the two). So while any chain is live, one thread of
//! the process tests them, backing off to a millisecond between rounds
//! while no stage ends; it ends 50 ms after the last chain. The owner's
//! `test` and `wait` move its chain on too, unless the thread is at it.

use std::os::raw::c_int;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mpi::ffi;

use super::collective::Body;
use super::{check, check_open};
use crate::error::Result;

/// What to do once the posted stage completes: post the next, or finish.
/// It owns everything it touches, so that a chain can be moved on from
/// any spmd call, and even after its request was leaked.
pub(super) type Then = Box<dyn FnOnce() -> Result<Stage> + Send>;

/// Where a chain is.
pub(super) enum Stage {
    /// MPI requests are in flight; `Then` runs once all have completed.
    Posted(Vec<ffi::MPI_Request>, Then),
    /// The collective is over, with this result.
    Done(Body),
}

/// One `immediate_` collective's chain of stages.
pub(super) struct Chain {
    requests: Vec<ffi::MPI_Request>,
    then: Option<Then>,
    result: Option<Result<Body>>,
    /// The communicator its messages travel on.
    comm: ffi::MPI_Comm,
    /// How many stages have ended.
    stages: u64,
}

// SAFETY: MPI requests and communicators may be used from any thread
// under MPI_THREAD_MULTIPLE; the chain owns its buffers and closures, which
// are `Send`.
unsafe impl Send for Chain {}

/// A chain shared between its request and the list of live chains.
pub(super) type Shared = Arc<Mutex<Chain>>;

/// The chains not yet over.
static LIVE: Mutex<Vec<Shared>> = Mutex::new(Vec::new());

/// How many chains `LIVE` holds, read without the lock.
static LIVE_COUNT: AtomicUsize = AtomicUsize::new(0);

/// The thread that moves the live chains on.
struct Mover {
    /// True from its start until it decides, under this lock, to end.
    running: bool,
    /// Set by `finish_all`: end now, without lingering.
    stop: bool,
    thread: Option<JoinHandle<()>>,
}

static MOVER: Mutex<Mover> = Mutex::new(Mover {
    running: false,
    stop: false,
    thread: None,
});

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Chain {
    /// Starts a chain at `stage` (on `comm`) and, unless it is over
    /// already, makes it live, and starts the progress thread if
    /// `needs_thread` (its stages need this rank to move on).
    pub(super) fn start(comm: ffi::MPI_Comm, stage: Result<Stage>, needs_thread: bool) -> Result<Shared> {
        let mut chain = Chain {
            requests: Vec::new(),
            then: None,
            result: None,
            comm,
            stages: 0,
        };
        chain.enter(stage?);
        let live = chain.result.is_none();
        let shared = Arc::new(Mutex::new(chain));
        if live {
            let mut all = lock(&LIVE);
            all.push(shared.clone());
            LIVE_COUNT.store(all.len(), Ordering::Release);
            drop(all);
            if needs_thread {
                start_mover()?;
            }
        }
        Ok(shared)
    }

    fn enter(&mut self, stage: Stage) {
        match stage {
            Stage::Posted(requests, then) => {
                self.requests = requests;
                self.then = Some(then);
            }
            Stage::Done(body) => self.result = Some(Ok(body)),
        }
    }

    /// Moves the chain on as far as it goes without waiting: true once it
    /// is over (with its result, or an error, to take).
    pub(super) fn advance(&mut self) -> bool {
        while self.then.is_some() {
            match self.posted_done() {
                Ok(false) => return false,
                Ok(true) => {
                    self.requests.clear();
                    self.stages += 1;
                    let then = self.then.take().expect("the loop's condition");
                    match then() {
                        Ok(stage) => self.enter(stage),
                        // The stages are built so that every rank that
                        // takes part in a later stage knows of an error
                        // first (it travels in place of the value): none
                        // is left waiting.
                        Err(e) => self.result = Some(Err(e)),
                    }
                }
                // MPI is finalized (its other errors end the job).
                Err(e) => {
                    self.then = None;
                    self.result = Some(Err(e));
                }
            }
        }
        true
    }

    /// Whether the posted stage's requests have all completed.
    fn posted_done(&mut self) -> Result<bool> {
        check_open()?;
        let n = self.requests.len() as c_int;
        let mut done: c_int = 1;
        if n > 0 {
            // SAFETY: the posted stage's active requests.
            check(
                unsafe { ffi::MPI_Testall(n, self.requests.as_mut_ptr(), &mut done, ffi::RSMPI_STATUSES_IGNORE) },
                "MPI_Testall",
            )?;
        }
        Ok(done != 0)
    }

    /// The result, once the chain is over.
    pub(super) fn take_result(&mut self) -> Option<Result<Body>> {
        self.result.take()
    }
}

thread_local! {
    /// The chains this thread is moving on, by address: one of them found
    /// locked is this thread's own, up the stack, not one to wait for.
    static ADVANCING: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Marks a chain as moved on by this thread until dropped (also when a
/// stage panics).
struct Advancing(usize);

impl Advancing {
    fn mark(shared: &Shared) -> Advancing {
        let at = Arc::as_ptr(shared) as usize;
        ADVANCING.with_borrow_mut(|a| a.push(at));
        Advancing(at)
    }
}

impl Drop for Advancing {
    fn drop(&mut self) {
        ADVANCING.with_borrow_mut(|a| {
            if let Some(i) = a.iter().rposition(|&x| x == self.0) {
                a.remove(i);
            }
        });
    }
}

/// True if this thread is moving `shared` on, further up its stack.
fn mine(shared: &Shared) -> bool {
    let at = Arc::as_ptr(shared) as usize;
    ADVANCING.with_borrow(|a| a.contains(&at))
}

/// Moves `chain` (`shared`, locked by the caller) on as far as it goes
/// without waiting: whether it is over, and whether a stage ended.
fn advance_held(shared: &Shared, chain: &mut Chain) -> (bool, bool) {
    let _mark = Advancing::mark(shared);
    let stages = chain.stages;
    let over = chain.advance();
    (over, chain.stages != stages)
}

/// Moves one chain on, unless another thread is at it: true once it is
/// over.
pub(super) fn advance_one(shared: &Shared) -> bool {
    match shared.try_lock() {
        Ok(mut chain) => advance_held(shared, &mut chain).0,
        Err(std::sync::TryLockError::Poisoned(e)) => advance_held(shared, &mut e.into_inner()).0,
        Err(std::sync::TryLockError::WouldBlock) => false,
    }
}

/// Moves every live chain on as far as it goes without waiting, and
/// forgets those that are over; true if any stage ended. A chain another
/// thread is moving on is left to it. No lock but the chain's is held
/// while it moves: a stage may drop what the user gave it (an operator
/// that owns a communicator), which comes back here.
pub(super) fn advance_all() -> bool {
    if LIVE_COUNT.load(Ordering::Acquire) == 0 {
        return false;
    }
    let chains: Vec<Shared> = lock(&LIVE).clone();
    let (mut over, mut moved) = (Vec::new(), false);
    for shared in &chains {
        let Ok(mut chain) = shared.try_lock() else { continue };
        let (done, stepped) = advance_held(shared, &mut chain);
        moved |= stepped;
        if done {
            over.push(shared.clone());
        }
    }
    if !over.is_empty() {
        let mut all = lock(&LIVE);
        all.retain(|c| !over.iter().any(|o| Arc::ptr_eq(c, o)));
        LIVE_COUNT.store(all.len(), Ordering::Release);
    }
    moved
}

/// Waits for the live chains on `comms` (on any communicator, if empty)
/// to end: before `MPI_Finalize`, or before a communicator is freed
/// (chains of leaked requests are still live).
pub(super) fn finish_on(comms: &[ffi::MPI_Comm]) {
    loop {
        advance_all();
        let chains: Vec<Shared> = lock(&LIVE).clone();
        let pending = chains.iter().any(|shared| match shared.try_lock() {
            Ok(chain) => comms.is_empty() || comms.contains(&chain.comm),
            // Held by another thread, which moves it on: wait for it; held
            // by this one, up the stack: it cannot end before this returns.
            Err(_) => !mine(shared),
        });
        if !pending || check_open().is_err() {
            return;
        }
        std::thread::yield_now();
    }
}

/// Starts the thread that moves the live chains on, unless it runs.
fn start_mover() -> Result<()> {
    let mut mover = lock(&MOVER);
    if mover.running {
        return Ok(());
    }
    // One that decided to end is on its way out.
    if let Some(old) = mover.thread.take() {
        let _ = old.join();
    }
    let thread = std::thread::Builder::new()
        .name("spmd-mpi-progress".into())
        .spawn(move_on)
        .map_err(|source| crate::error::Error::Io {
            context: "a thread to move the immediate collectives on".into(),
            source,
        })?;
    mover.thread = Some(thread);
    mover.running = true;
    mover.stop = false;
    Ok(())
}

/// How long the mover stays once no chain is live, so that a loop of
/// immediate collectives does not start a thread for each.
const LINGER: Duration = Duration::from_millis(50);

/// The mover's loop: rounds of `advance_all`, a pause between them that
/// starts again at 1 µs whenever a stage ends and doubles up to 1 ms
/// while none does, until no chain has been live for `LINGER` (or MPI is
/// finalized). It decides to end under `MOVER`'s lock, so a chain started
/// meanwhile either is seen here or starts a new mover.
fn move_on() {
    let mut pause = Duration::from_micros(1);
    let mut idle_since: Option<Instant> = None;
    loop {
        if advance_all() {
            pause = Duration::from_micros(1);
        }
        {
            let mut mover = lock(&MOVER);
            let idle = LIVE_COUNT.load(Ordering::Acquire) == 0;
            idle_since = if idle {
                idle_since.or(Some(Instant::now()))
            } else {
                None
            };
            let linger_over = idle_since.is_some_and(|t| mover.stop || t.elapsed() >= LINGER);
            if linger_over || check_open().is_err() {
                mover.running = false;
                return;
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}

/// Ends every live chain and the mover (before `MPI_Finalize`: no thread
/// may call MPI after it).
pub(super) fn finish_all() {
    finish_on(&[]);
    let thread = {
        let mut mover = lock(&MOVER);
        mover.stop = true;
        mover.thread.take()
    };
    if let Some(thread) = thread {
        let _ = thread.join();
    }
}
