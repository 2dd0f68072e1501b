//! A communicator: a group of the job's ranks with its own rank numbers and
//! its own matching space, over the one progress engine of the job.

use std::cell::Cell;
use std::sync::Arc;

use crate::collective::call::Calls;
use crate::collective::levels::LevelsCell;
use crate::collective::node::NodeState;
use crate::collective::pool::Pool;
use crate::control;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::selector::{Match, Selector, Status};
use crate::wire::control::abort_status;
use crate::wire::{Context, ControlMessage, Settings};

mod create;
mod group;
mod ids;
mod job;

use crate::progress::EngineGuard;
pub use create::KEEP_ORDER;
pub(crate) use group::Group;
pub(crate) use ids::ContextIds;
pub(crate) use job::Job;

/// A group of ranks that communicate among themselves: the world is one.
///
/// Every point-to-point call, request, scope and collective is a method of
/// a communicator, with ranks numbered `0..size()` within it. A
/// [`World`](crate::World) is the communicator of every rank of the job
/// (it dereferences to one), and the handle that ends the job.
///
/// ```
/// let world = spmd::init()?;
/// let comm: &spmd::Communicator = &world;
/// assert!(comm.rank() < comm.size());
/// # Ok::<(), spmd::Error>(())
/// ```
///
/// The thread level: a communicator may move to another thread (`Send`),
/// and threads that drive different communicators run at once; two
/// threads cannot use one communicator at once (it is not `Sync`):
///
/// ```compile_fail
/// fn shared_between_threads<T: Sync>() {}
/// shared_between_threads::<spmd::Communicator>();
/// ```
#[derive(Debug)]
pub struct Communicator {
    job: Arc<Job>,
    rank: usize,
    size: usize,
    /// The members, as ranks of the job.
    group: Group,
    /// The context id (0 for the world); see `ids.rs`.
    id: u32,
    /// Communicators made from this one so far (the same on every member).
    made: Cell<u64>,
    p2p: Context,
    coll: Context,
    calls: Calls,
    node_state: NodeState,
    /// How its ranks sit on the job's nodes (see `collective/levels.rs`).
    levels: LevelsCell,
    /// The region of the node's pool its node-wide collectives use, if it
    /// has one (see `collective/pool.rs`).
    pub(crate) pooled: Option<(Pool, usize)>,
    /// On the MPI backend, the MPI communicator every call goes to (the
    /// fields above then stay unused).
    #[cfg(feature = "mpi")]
    mpi: Option<crate::mpi_backend::MpiComm>,
}

/// Which runtime carries a job's messages (see README, "Running on a
/// cluster", for what differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// spmd's own: shared memory or sockets, started by spmdrun or alone.
    Native,
    /// The site's MPI, through rsmpi (the `mpi` feature).
    Mpi,
}

/// On the MPI backend, returns what `$body` makes of the communicator's
/// MPI side `$m`; on the native one, does nothing.
macro_rules! on_mpi {
    ($comm:expr, |$m:ident| $body:expr) => {
        #[cfg(feature = "mpi")]
        if let Some($m) = $comm.mpi_side() {
            // spmd called from inside a user's operator, as on the native
            // backend, is `Error::Reentered`.
            return crate::progress::check_not_combining().and_then(|()| $body);
        }
    };
}
pub(crate) use on_mpi;

impl Communicator {
    /// The communicator of every rank of `job`.
    pub(crate) fn world(job: Arc<Job>, rank: usize, size: usize) -> Communicator {
        Communicator {
            job,
            rank,
            size,
            group: Group::everyone(size),
            id: 0,
            made: Cell::new(0),
            p2p: Context::WORLD,
            coll: Context::WORLD_COLLECTIVE,
            calls: Calls::default(),
            node_state: NodeState::default(),
            levels: LevelsCell::default(),
            pooled: None,
            #[cfg(feature = "mpi")]
            mpi: None,
        }
    }

    /// A communicator on the MPI backend, of `mpi`'s ranks.
    #[cfg(feature = "mpi")]
    pub(crate) fn on_mpi(job: Arc<Job>, mpi: crate::mpi_backend::MpiComm) -> Communicator {
        let mut comm = Communicator::world(job, mpi.rank, mpi.size);
        comm.mpi = Some(mpi);
        comm
    }

    /// The MPI side of a communicator on the MPI backend.
    #[cfg(feature = "mpi")]
    #[inline]
    pub(crate) fn mpi_side(&self) -> Option<&crate::mpi_backend::MpiComm> {
        self.mpi.as_ref()
    }

    /// A communicator of `group` with context id `id`, which this rank has
    /// taken already; `None` if this rank is not a member.
    pub(crate) fn derived(&self, group: Group, id: u32) -> Option<Communicator> {
        let rank = group.rank_of(self.group.job_rank(self.rank))?;
        if !group.is_everyone() {
            let members: Arc<[usize]> = group.job_ranks().into();
            // Made inside a collective that held the engine and let go:
            // only a cleanup-style wait for it, never spmd inside spmd.
            self.engine_for_cleanup()?
                .set_members(Context::point_to_point(id), Some(members));
        }
        Some(Communicator {
            job: Arc::clone(&self.job),
            rank,
            size: group.size(),
            group,
            id,
            made: Cell::new(0),
            p2p: Context::point_to_point(id),
            coll: Context::collective(id),
            calls: Calls::default(),
            node_state: NodeState::default(),
            levels: LevelsCell::default(),
            pooled: None,
            #[cfg(feature = "mpi")]
            mpi: None,
        })
    }

    /// This process's rank in the communicator, `0..size()`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks in the communicator.
    pub fn size(&self) -> usize {
        self.size
    }

    /// This rank's index among the ranks of the job on the same node.
    pub fn local_rank(&self) -> usize {
        self.job.local_rank
    }

    /// The number of ranks of the job on this node.
    pub fn local_size(&self) -> usize {
        self.job.local_size
    }

    /// The index of this rank's node in the job's placement.
    pub fn node(&self) -> usize {
        self.job.node
    }

    /// Which backend carries this communicator's messages: spmd's own
    /// (under spmdrun, or alone) or MPI (started by `mpirun`, `mpiexec` or
    /// `srun`, with the `mpi` feature).
    ///
    /// ```
    /// let world = spmd::init()?;
    /// assert_eq!(world.backend(), spmd::Backend::Native);
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn backend(&self) -> Backend {
        #[cfg(feature = "mpi")]
        if self.mpi.is_some() {
            return Backend::Mpi;
        }
        Backend::Native
    }

    /// The name of the machine this rank runs on (MPI's processor name).
    pub fn processor_name(&self) -> String {
        crate::bootstrap::host_name()
    }

    pub(crate) fn job(&self) -> &Arc<Job> {
        &self.job
    }

    /// The engine, held until the guard drops; an error if this thread
    /// holds it already (spmd called from an operator's closure).
    #[inline(always)]
    pub(crate) fn engine(&self) -> Result<EngineGuard<'_>> {
        self.job.engine()
    }

    /// The engine for a cleanup that must run (in `Drop`): waits for
    /// another thread that holds it; `None` only if this thread does.
    pub(crate) fn engine_for_cleanup(&self) -> Option<EngineGuard<'_>> {
        self.job.engine_for_cleanup()
    }

    /// The context of this communicator's collectives.
    pub(crate) fn coll_context(&self) -> Context {
        self.coll
    }

    /// What this communicator remembers of its collective calls.
    pub(crate) fn calls(&self) -> &Calls {
        &self.calls
    }

    /// How its ranks sit on the job's nodes, once worked out.
    pub(crate) fn levels_cell(&self) -> &LevelsCell {
        &self.levels
    }

    /// What this communicator knows of its node-wide collectives.
    pub(crate) fn node_state(&self) -> &NodeState {
        &self.node_state
    }

    /// What the launcher decided for every rank (`None` without one).
    pub(crate) fn settings(&self) -> Option<&Settings> {
        self.job.settings.as_ref()
    }

    pub(crate) fn check_rank(&self, rank: usize) -> Result<()> {
        if rank < self.size {
            Ok(())
        } else {
            Err(Error::InvalidRank { rank, size: self.size })
        }
    }

    /// The job rank of this communicator's rank `rank`, checked.
    #[inline]
    pub(crate) fn peer(&self, rank: usize) -> Result<usize> {
        self.check_rank(rank)?;
        Ok(self.group.job_rank(rank))
    }

    /// The job rank of this communicator's rank `rank` (below `size()`).
    #[inline]
    pub(crate) fn job_rank(&self, rank: usize) -> usize {
        self.group.job_rank(rank)
    }

    /// This communicator's rank of job rank `job_rank`, or the job rank
    /// itself if it is not a member (for messages about it).
    pub(crate) fn rank_of(&self, job_rank: usize) -> usize {
        self.group.rank_of(job_rank).unwrap_or(job_rank)
    }

    /// The number of ranks in the job.
    pub(crate) fn job_size(&self) -> usize {
        self.job.size
    }

    /// `e` with the ranks it names (job ranks, as the engine knows them)
    /// made ranks of this communicator.
    pub(crate) fn in_ranks(&self, e: Error) -> Error {
        if self.group.is_everyone() {
            return e;
        }
        let to = |rank: usize| self.rank_of(rank);
        match e {
            Error::PeerGone { rank } => Error::PeerGone { rank: to(rank) },
            Error::CollectiveFailed { rank, detail } => Error::CollectiveFailed { rank: to(rank), detail },
            Error::Decode {
                type_name,
                sender,
                tag,
                len,
                reason,
            } => Error::Decode {
                type_name,
                sender: to(sender),
                tag,
                len,
                reason,
            },
            Error::FormatMismatch {
                sender,
                tag,
                sent_as,
                received_as,
            } => Error::FormatMismatch {
                sender: to(sender),
                tag,
                sent_as,
                received_as,
            },
            Error::Truncated {
                sender,
                tag,
                message_bytes,
                buffer_bytes,
                element,
            } => Error::Truncated {
                sender: to(sender),
                tag,
                message_bytes,
                buffer_bytes,
                element,
            },
            e => e,
        }
    }

    /// `r` with the ranks its error names made this communicator's.
    pub(crate) fn ranked<T>(&self, r: Result<T>) -> Result<T> {
        r.map_err(|e| self.in_ranks(e))
    }

    /// The members of this communicator, as ranks of the job.
    pub(crate) fn group(&self) -> &Group {
        &self.group
    }

    /// This communicator's context id (0 for the world).
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// True if the node-wide collectives may serve this communicator: it is
    /// the world (id 0), whose ranks own the node's shared region.
    pub(crate) fn node_wide(&self) -> bool {
        self.id == 0
    }

    /// The head of a user's message with `tag` (checked) in `format`.
    #[inline]
    pub(crate) fn user_head(&self, tag: u32, format: crate::envelope::Format) -> Result<crate::progress::Head> {
        check_tag(tag)?;
        Ok(crate::progress::Head::user(self.p2p, tag, format))
    }

    /// A selector for this communicator's point-to-point messages, with the
    /// pattern's source checked and made a job rank.
    #[inline]
    pub(crate) fn user(&self, pattern: Match) -> Result<Selector> {
        if let Some(tag) = pattern.tag_value() {
            check_tag(tag)?;
        }
        let pattern = match pattern.source_rank() {
            Some(source) => pattern.with_source(self.peer(source)?),
            None => pattern,
        };
        Ok(Selector::new(self.p2p, pattern))
    }

    /// The status of a message received in this communicator.
    pub(crate) fn status_of(&self, env: &Envelope) -> Status {
        Status::of_source(env, self.rank_of(env.source))
    }

    /// Ends the whole job at once: spmdrun stops every rank and exits with
    /// `code` (a code outside 1 to 255, 0 included, exits with 1: an
    /// aborted job never reads as a success). Use it when a rank finds an
    /// error the others cannot recover from. It does not return.
    ///
    /// ```no_run
    /// # let world = spmd::init().unwrap();
    /// if std::path::Path::new("input.dat").exists() == false {
    ///     eprintln!("input.dat is missing");
    ///     world.abort(2);
    /// }
    /// ```
    pub fn abort(&self, code: i32) -> ! {
        self.abort_with_message(code, "")
    }

    /// [`Communicator::abort`] with a reason that spmdrun prints in its one
    /// line about the failure (and that is printed on standard error when
    /// there is no launcher).
    ///
    /// ```no_run
    /// # let world = spmd::init().unwrap();
    /// world.abort_with_message(2, "input.dat is missing");
    /// ```
    pub fn abort_with_message(&self, code: i32, message: &str) -> ! {
        #[cfg(feature = "mpi")]
        if self.mpi_side().is_some() {
            let text = if message.is_empty() {
                String::new()
            } else {
                format!(": {message}")
            };
            crate::mpi_backend::abort_job(abort_status(code), &format!("abort({code}){text}"));
        }
        if !self.job.managed && !message.is_empty() {
            eprintln!("abort({code}): {message}");
        }
        control::tell(
            &ControlMessage::Abort {
                code,
                message: message.to_string(),
            },
            true,
        );
        std::process::exit(abort_status(code))
    }
}

/// An error unless `tag` is at most [`MAX_TAG`](crate::MAX_TAG) (the
/// check in line on every send and receive, the error's text out of it).
#[inline(always)]
fn check_tag(tag: u32) -> Result<()> {
    if tag <= crate::MAX_TAG {
        return Ok(());
    }
    Err(tag_too_large(tag))
}

/// The error for a tag above [`MAX_TAG`](crate::MAX_TAG).
#[cold]
fn tag_too_large(tag: u32) -> Error {
    Error::InvalidArgument(format!(
        "tag {tag} is above spmd::MAX_TAG ({}), the largest tag on every backend",
        crate::MAX_TAG
    ))
}

impl Drop for Communicator {
    fn drop(&mut self) {
        self.release_pooled_region();
        if self.id != 0 {
            if !self.group.is_everyone() {
                if let Some(mut engine) = self.engine_for_cleanup() {
                    engine.set_members(self.p2p, None);
                }
            }
            self.job.ids().release(self.id);
        }
    }
}
