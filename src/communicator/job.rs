//! What every communicator of a job shares (the progress engine, the
//! launcher's settings, the rank's place).

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use super::ContextIds;
use crate::error::{Error, Result};
use crate::progress::{Engine, EngineGuard, EngineLock};
use crate::wire::Settings;

/// What every communicator of a job shares: the progress engine (none on
/// the MPI backend, where MPI moves the messages) and what the launcher
/// said about this rank.
#[derive(Debug)]
pub(crate) struct Job {
    engine: Option<EngineLock>,
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

/// The process's job, once `init` has made it (for the calls that wait on
/// requests without a communicator at hand).
static CURRENT: OnceLock<Weak<Job>> = OnceLock::new();

impl Job {
    pub fn new(engine: Engine, settings: Option<Settings>, local_rank: usize, local_size: usize, node: usize) -> Job {
        Job {
            managed: engine.managed(),
            size: engine.size,
            engine: Some(EngineLock::new(engine)),
            settings,
            local_rank,
            local_size,
            node,
            ids: Mutex::new(ContextIds::default()),
        }
    }

    /// The engine, held by this thread until the guard drops; an error
    /// if this thread holds it already (spmd called from inside spmd), or
    /// if the rank has finalized: every call that needs the engine fails
    /// with [`Error::Finalized`] then, whatever path it takes (cleanup in a
    /// `Drop` uses [`Job::engine_for_cleanup`] instead).
    #[inline(always)]
    pub fn engine(&self) -> Result<EngineGuard<'_>> {
        match &self.engine {
            Some(engine) => {
                let guard = engine.lock()?;
                guard.check_open()?;
                Ok(guard)
            }
            None => Err(Error::InvalidArgument(
                "this call is not available on the MPI backend yet (see README, \"Running on a cluster\")".into(),
            )),
        }
    }

    /// The job of a rank on the MPI backend.
    #[cfg(feature = "mpi")]
    pub fn on_mpi(size: usize, local_rank: usize, local_size: usize, node: usize) -> Job {
        Job {
            engine: None,
            managed: true,
            size,
            settings: None,
            local_rank,
            local_size,
            node,
            ids: Mutex::new(ContextIds::default()),
        }
    }

    /// False on the MPI backend.
    pub fn has_engine(&self) -> bool {
        self.engine.is_some()
    }

    /// Makes `job` the one [`Job::current`] returns.
    pub fn make_current(job: &Arc<Job>) {
        let _ = CURRENT.set(Arc::downgrade(job));
    }

    /// The process's job, while any handle of it lives.
    pub fn current() -> Option<Arc<Job>> {
        CURRENT.get()?.upgrade()
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
        self.engine.as_ref()?.lock().ok()
    }
}
