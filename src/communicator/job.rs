//! What every communicator of a job shares (the progress engine, the
//! launcher's settings, the rank's place), and the guard through which one
//! thread at a time holds the engine.

use std::cell::Cell;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use super::ContextIds;
use crate::progress::Engine;
use crate::wire::Settings;

/// What every communicator of a job shares: the progress engine and what
/// the launcher said about this rank.
#[derive(Debug)]
pub(crate) struct Job {
    engine: Mutex<Engine>,
    /// Started by a launcher, which watches the rank.
    pub managed: bool,
    /// The number of ranks in the job.
    pub size: usize,
    /// What the launcher decided for every rank (`None` without one).
    pub settings: Option<Settings>,
    pub local_rank: usize,
    pub local_size: usize,
    pub node: usize,
    /// The context ids of this rank's live communicators.
    ids: Mutex<ContextIds>,
    /// Held while a communicator is made (see `create.rs`).
    creating: Mutex<()>,
}

/// The process's job, once `init` has made it (for the calls that wait on
/// requests without a communicator at hand).
static CURRENT: OnceLock<Weak<Job>> = OnceLock::new();

thread_local! {
    /// True while this thread holds the engine: spmd called from inside
    /// spmd (an operator's closure calling a collective, say) is found here
    /// instead of waiting for itself for ever.
    static HOLDING: Cell<bool> = const { Cell::new(false) };
}

/// The engine, held by this thread until the guard drops.
pub(crate) struct EngineGuard<'a> {
    guard: MutexGuard<'a, Engine>,
}

impl std::ops::Deref for EngineGuard<'_> {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.guard
    }
}

impl std::ops::DerefMut for EngineGuard<'_> {
    fn deref_mut(&mut self) -> &mut Engine {
        &mut self.guard
    }
}

impl Drop for EngineGuard<'_> {
    fn drop(&mut self) {
        HOLDING.with(|h| h.set(false));
    }
}

impl Job {
    pub fn new(engine: Engine, settings: Option<Settings>, local_rank: usize, local_size: usize, node: usize) -> Job {
        Job {
            managed: engine.managed(),
            size: engine.size,
            engine: Mutex::new(engine),
            settings,
            local_rank,
            local_size,
            node,
            ids: Mutex::new(ContextIds::default()),
            creating: Mutex::new(()),
        }
    }

    /// The engine. A panic while it was held leaves it usable: every
    /// operation leaves the engine consistent before it calls anything that
    /// could panic.
    ///
    /// # Panics
    ///
    /// If this thread holds it already: spmd was called from inside spmd.
    pub fn engine(&self) -> EngineGuard<'_> {
        if HOLDING.with(|h| h.replace(true)) {
            panic!(
                "spmd was called from inside spmd (from an operator's closure, or a Drop run by one): an \
                 operator must only combine its two values"
            );
        }
        EngineGuard {
            guard: self.engine.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Makes `job` the one [`Job::current`] returns.
    pub fn make_current(job: &Arc<Job>) {
        let _ = CURRENT.set(Arc::downgrade(job));
    }

    /// The process's job, while any handle of it lives.
    pub fn current() -> Option<Arc<Job>> {
        CURRENT.get()?.upgrade()
    }

    /// This thread's turn to make a communicator: from the look at the
    /// free ids to the taking of one, no other thread of the rank makes one.
    pub fn creating(&self) -> MutexGuard<'_, ()> {
        self.creating.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The context ids of this rank's live communicators.
    pub fn ids(&self) -> MutexGuard<'_, ContextIds> {
        self.ids.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The engine for a cleanup that must run (a `Drop` withdrawing a
    /// buffer the engine points into): waits for another thread that holds
    /// it, and is `None` only if this thread holds it already (spmd called
    /// from inside spmd, where the outer call still owns the engine).
    pub fn engine_for_cleanup(&self) -> Option<EngineGuard<'_>> {
        if HOLDING.with(|h| h.get()) {
            return None;
        }
        Some(self.engine())
    }
}
