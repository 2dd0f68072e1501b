//! What every communicator of a job shares (the progress engine, the
//! launcher's settings, the rank's place), and the guard through which one
//! thread at a time holds the engine.

use std::cell::Cell;
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

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
}

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

    /// The context ids of this rank's live communicators.
    pub fn ids(&self) -> MutexGuard<'_, ContextIds> {
        self.ids.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The engine, unless this or another thread holds it (for `Drop`).
    pub fn engine_try(&self) -> Option<EngineGuard<'_>> {
        if HOLDING.with(|h| h.get()) {
            return None;
        }
        let guard = match self.engine.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        HOLDING.with(|h| h.set(true));
        Some(EngineGuard { guard })
    }
}
