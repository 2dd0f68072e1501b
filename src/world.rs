//! The handle to the job: how a program starts, who it is, and how it ends.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::bootstrap::{self, Launch, Placement};
use crate::communicator::{Communicator, Job};
use crate::control::{self, Welcome};
use crate::error::{Error, Result};
use crate::progress::{Engine, LAUNCHER_REACTION};
use crate::status::StatusWriter;
use crate::transport::{self, Endpoint, Transport};
use crate::wire::{Channel, ControlMessage, Settings};

/// The largest single message accepted from a peer, in bytes (1 TiB). The
/// receive buffer is only allocated once a length has passed this check.
pub(crate) const MAX_MESSAGE: u64 = 1 << 40;

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// The handle to the job: the communicator of every rank (it dereferences
/// to a [`Communicator`], so every communication call works on it), and
/// what ends the job.
///
/// Get it once with [`init`]. It finalizes when dropped, or explicitly with
/// [`World::finalize`], which reports errors.
///
/// # Naming
///
/// All calls follow one scheme:
///
/// | form | meaning |
/// |------|---------|
/// | `send`, `receive`, `broadcast`, ... | blocking, tag 0, serde values |
/// | `..._with_tag` | the same with an explicit tag |
/// | `..._matching` | takes a [`Match`](crate::Match) (any source / any tag) and returns a [`Status`](crate::Status) |
/// | `..._timeout` | gives up with [`Error::Timeout`] after a duration |
/// | `try_...` | never waits; `None` when nothing is there yet |
/// | `..._slice`, `..._into`, `..._vec` | plain numbers (`bytemuck::Pod`) as raw bytes; `_into` writes into the caller's buffer |
/// | `immediate_...` | non-blocking: returns a request to `wait` or `test` |
#[derive(Debug)]
pub struct World {
    comm: Communicator,
    finalized: Cell<bool>,
}

impl std::ops::Deref for World {
    type Target = Communicator;
    fn deref(&self) -> &Communicator {
        &self.comm
    }
}

/// Starts this rank: reads how the process was launched, connects to the
/// launcher and to every peer, and returns the handle.
///
/// A program started without a launcher is a job of one rank. Call it once
/// per process; a second call returns [`Error::AlreadyInitialized`].
///
/// ```
/// let world = spmd::init()?;
/// println!("rank {} of {}", world.rank(), world.size());
/// world.finalize()?;
/// # Ok::<(), spmd::Error>(())
/// ```
pub fn init() -> Result<World> {
    if INITIALIZED.swap(true, Ordering::SeqCst) {
        return Err(Error::AlreadyInitialized);
    }
    let _ = wtime();
    match bootstrap::detect()? {
        Launch::Alone => Ok(World::new(0, 1, 0, 1, 0, Transport::Alone, None, None)),
        Launch::Spmdrun(p) => {
            let (channel, welcome) = control::join(&p)?;
            control::install_panic_hook();
            start(&p, welcome, channel)
        }
        #[cfg(feature = "mpi")]
        Launch::Mpi(launcher) => {
            let s = crate::mpi_backend::start(launcher)?;
            let job = Arc::new(Job::on_mpi(s.size, s.local_rank, s.local_size, s.node));
            Job::make_current(&job);
            Ok(World {
                comm: Communicator::on_mpi(job, s.world),
                finalized: Cell::new(false),
            })
        }
    }
}

/// Connects a rank that has joined its launcher to its peers. A failure is
/// reported to the launcher as this rank's own, unless it is the echo of
/// a peer's (which the launcher reports instead).
fn start(p: &Placement, welcome: Welcome, mut channel: Channel) -> Result<World> {
    let result = (|| {
        let region = crate::collective::node_region_len(p.local_size);
        let settings = &welcome.settings;
        let access = welcome.access.as_ref();
        let local = (p.local_rank, p.local_size, p.size);
        let endpoint = Endpoint::open(settings, access, p.rank, local, region)?;
        let table = control::register(&mut channel, p, settings, endpoint.card(), endpoint.fds())?;
        let table = transport::Table {
            nodes: &table.nodes,
            segments: table.segments,
            links: table.links,
            addresses: table.addresses,
            access,
        };
        Transport::connect(endpoint, p.rank, table, &welcome.settings, MAX_MESSAGE)
    })();
    match result {
        Ok(transport) => {
            control::keep(channel);
            let status = Some(StatusWriter::new(welcome.status));
            Ok(World::new(
                p.rank,
                p.size,
                p.local_rank,
                p.local_size,
                p.node,
                transport,
                status,
                Some(welcome.settings),
            ))
        }
        Err(e) => {
            // Waiting for ranks that never joined counts as theirs too.
            if e.blames_a_peer() || matches!(e, Error::Timeout { .. }) {
                // The launcher is about to end this rank because of the
                // peer; its report names the peer, not this rank.
                std::thread::sleep(LAUNCHER_REACTION);
            }
            control::tell_failure(&mut channel, &e);
            Err(e)
        }
    }
}

/// Seconds elapsed since an arbitrary fixed point in this process (the
/// first call, or `init`), from a monotonic clock: subtract two readings to
/// time something.
///
/// ```
/// let t0 = spmd::wtime();
/// let dt = spmd::wtime() - t0;
/// assert!(dt >= 0.0);
/// ```
pub fn wtime() -> f64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

impl World {
    #[allow(clippy::too_many_arguments)]
    fn new(
        rank: usize,
        size: usize,
        local_rank: usize,
        local_size: usize,
        node: usize,
        transport: Transport,
        status: Option<StatusWriter>,
        settings: Option<Settings>,
    ) -> World {
        let engine = Engine::new(rank, size, transport, status);
        let job = Arc::new(Job::new(engine, settings, local_rank, local_size, node));
        Job::make_current(&job);
        World {
            comm: Communicator::world(job, rank, size),
            finalized: Cell::new(false),
        }
    }

    /// Flushes every pending send, tells the peers and the launcher this
    /// rank is done, and closes its connections. Dropping the handle does the
    /// same but cannot report an error, and tells the peers that finalize
    /// was not called (`main` may be returning an error): a peer that needs
    /// this rank afterwards waits up to 2 s for spmdrun to report it before
    /// it fails with `PeerGone` itself.
    ///
    /// Messages that arrived and were never received are named in one line
    /// on standard error: in MPI's terms the program is erroneous, and a
    /// silent loss would hide the bug.
    pub fn finalize(self) -> Result<()> {
        self.finalize_inner(true)
    }

    /// Finalizes, on a call to `finalize` (`called`) or when the `World`
    /// is dropped without one.
    fn finalize_inner(&self, called: bool) -> Result<()> {
        if self.finalized.replace(true) {
            return Ok(());
        }
        #[cfg(feature = "mpi")]
        if self.mpi_side().is_some() {
            return crate::mpi_backend::finalize();
        }
        let mut engine = self.engine()?;
        // The other ranks may still need this rank's part of an
        // `immediate_` collective whose request was forgotten.
        engine.finish_schedules();
        let flushed = engine.finish(called);
        // Every communicator's point-to-point messages, in job ranks.
        let lost = engine.unreceived(&|c| !c.is_collective());
        let coll = self.coll_context();
        let mut stray = engine.unreceived_collective(coll);
        stray.extend(engine.unreceived_collective(crate::wire::Context::immediate(coll.communicator())));
        drop(engine);
        let mut result = flushed;
        // A World dropped without finalize (an error returned from `main`,
        // say) is failing: a collective message the others sent it since
        // is theirs going on without it, not a disagreement to report.
        if let Some((source, is_notice)) = stray.first().copied().filter(|_| called && self.calls().working()) {
            if is_notice {
                eprintln!(
                    "spmd: rank {}: rank {source} failed in a collective that this rank never called, or whose part \
                     it had done",
                    self.rank()
                );
            } else {
                // A collective message nobody took: the ranks disagreed on a
                // collective that ended here before anything showed it.
                let e = Error::CollectiveMismatch {
                    detail: format!(
                        "rank {source} sent a collective message that this rank never took: the ranks called \
                         different collectives, or the same one with different roots"
                    ),
                };
                eprintln!("spmd: rank {}: {e}", self.rank());
                result = result.and(Err(e));
            }
        }
        if !lost.is_empty() {
            eprintln!("{}", never_received(self.rank(), &lost));
        }
        if self.job().managed {
            control::tell(&ControlMessage::Finalized, true);
        }
        result
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // A panicking rank must not look finalized: the launcher reports it.
        if std::thread::panicking() {
            return;
        }
        // MPI cannot tell a rank that returns an error from `main` (and
        // drops the World on the way) from one that is done: its
        // MPI_Finalize would wait for the others forever, and they for it.
        // Only an explicit finalize finalizes there; this rank ends the
        // job when it exits, after `main` has printed its error.
        #[cfg(feature = "mpi")]
        if self.mpi_side().is_some() {
            return;
        }
        // The peers learn that this rank did not call finalize: if one of
        // them needs it, it leaves the launcher time to report this rank's
        // error first (see `Engine::gone`).
        if let Err(e) = self.finalize_inner(false) {
            eprintln!("spmd: rank {}: finalize failed: {e}", self.rank());
        }
    }
}

/// The line that names the messages rank `me` finalized without
/// receiving: how many in all, and how many from each source with each tag
/// (the first five such pairs).
pub(crate) fn never_received(me: usize, lost: &[(usize, u32)]) -> String {
    // Counted by source and tag, in the order each pair first came.
    let mut groups: Vec<((usize, u32), usize)> = Vec::new();
    let mut at = std::collections::HashMap::new();
    for pair in lost {
        let i = *at.entry(*pair).or_insert_with(|| {
            groups.push((*pair, 0));
            groups.len() - 1
        });
        groups[i].1 += 1;
    }
    let shown: Vec<String> = groups
        .iter()
        .take(5)
        .map(|((s, t), count)| match count {
            1 => format!("from rank {s} with tag {t}"),
            _ => format!("{count} from rank {s} with tag {t}"),
        })
        .collect();
    let more = if groups.len() > 5 { ", ..." } else { "" };
    format!(
        "spmd: rank {me} finalized with {} message(s) it never received ({}{more})",
        lost.len(),
        shown.join(", ")
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_never_received_are_counted_by_source_and_tag() {
        let lost = [(1, 0), (2, 5), (1, 0), (1, 0)];
        assert_eq!(
            super::never_received(0, &lost),
            "spmd: rank 0 finalized with 4 message(s) it never received (3 from rank 1 with tag 0, from rank 2 with tag 5)"
        );
        let many: Vec<(usize, u32)> = (0..7).map(|t| (3, t)).collect();
        assert!(super::never_received(0, &many).ends_with("(from rank 3 with tag 0, from rank 3 with tag 1, from rank 3 with tag 2, from rank 3 with tag 3, from rank 3 with tag 4, ...)"));
    }
}
