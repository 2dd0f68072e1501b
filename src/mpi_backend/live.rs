//! The `immediate_` collectives in flight in this process (their chains of
//! non-blocking MPI calls), and the thread that moves them on. A chain's
//! next stage may need this rank (rank 0 folds the parts, say) while the
//! rank waits elsewhere: in a `barrier`, a `receive`, or a computation.
//! MPI's blocking calls cannot move spmd's chains, and a blocking
//! collective cannot be swapped for its non-blocking form on one rank only
//! (MPI does not match the two). So while any chain is live, one thread of
//! the process tests them, backing off to a millisecond between rounds;
//! it ends when the last chain does. The owner's `test` and `wait` move
//! its chain on too, without waiting for the thread.

use std::os::raw::c_int;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

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
    thread: Option<JoinHandle<()>>,
}

static MOVER: Mutex<Mover> = Mutex::new(Mover {
    running: false,
    thread: None,
});

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Chain {
    /// Starts a chain at `stage` (on `comm`) and, unless it is over
    /// already, makes it live.
    pub(super) fn start(comm: ffi::MPI_Comm, stage: Result<Stage>) -> Result<Shared> {
        let mut chain = Chain {
            requests: Vec::new(),
            then: None,
            result: None,
            comm,
        };
        chain.enter(stage?);
        let live = chain.result.is_none();
        let shared = Arc::new(Mutex::new(chain));
        if live {
            let mut all = lock(&LIVE);
            all.push(shared.clone());
            LIVE_COUNT.store(all.len(), Ordering::Release);
            drop(all);
            start_mover()?;
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
    /// True while this thread moves a chain on: a chain it holds then is
    /// its own, not one to wait for.
    static ADVANCING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Moves `chain` on (locked by the caller) as far as it goes without
/// waiting: true once it is over.
fn advance_held(chain: &mut Chain) -> bool {
    let was = ADVANCING.replace(true);
    let moved = chain.advance();
    ADVANCING.set(was);
    moved
}

/// Moves one chain on, waiting for its lock: true once it is over.
pub(super) fn advance_one(shared: &Shared) -> bool {
    advance_held(&mut lock(shared))
}

/// Moves every live chain on as far as it goes without waiting, and
/// forgets those that are over. A chain another thread is moving on is
/// left to it. No lock but the chain's is held while it moves: a stage
/// may drop what the user gave it (an operator that owns a communicator),
/// which comes back here.
pub(super) fn advance_all() {
    if LIVE_COUNT.load(Ordering::Acquire) == 0 {
        return;
    }
    let chains: Vec<Shared> = lock(&LIVE).clone();
    let mut over = Vec::new();
    for shared in &chains {
        let Ok(mut chain) = shared.try_lock() else { continue };
        if advance_held(&mut chain) {
            over.push(shared.clone());
        }
    }
    if !over.is_empty() {
        let mut all = lock(&LIVE);
        all.retain(|c| !over.iter().any(|o| Arc::ptr_eq(c, o)));
        LIVE_COUNT.store(all.len(), Ordering::Release);
    }
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
            Err(_) => !ADVANCING.get(),
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
    Ok(())
}

/// The mover's loop: rounds of `advance_all`, a pause between them that
/// grows while nothing moves, until no chain is live (or MPI is
/// finalized). It decides to end under `MOVER`'s lock, so a chain started
/// meanwhile either is seen here or starts a new mover.
fn move_on() {
    let mut pause = Duration::from_micros(1);
    loop {
        let before = LIVE_COUNT.load(Ordering::Acquire);
        advance_all();
        {
            let mut mover = lock(&MOVER);
            if LIVE_COUNT.load(Ordering::Acquire) == 0 || check_open().is_err() {
                mover.running = false;
                return;
            }
        }
        if LIVE_COUNT.load(Ordering::Acquire) < before {
            pause = Duration::from_micros(1);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}

/// Ends every live chain and the mover (before `MPI_Finalize`: no thread
/// may call MPI after it).
pub(super) fn finish_all() {
    finish_on(&[]);
    let thread = lock(&MOVER).thread.take();
    if let Some(thread) = thread {
        let _ = thread.join();
    }
}
