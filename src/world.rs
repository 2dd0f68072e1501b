//! The communicator handle: how a program starts, who it is, and how it ends.

use std::cell::{Cell, RefCell, RefMut};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::auth::Identity;
use crate::bootstrap::{self, Launch};
use crate::control;
use crate::error::{Error, Result};
use crate::progress::Engine;
use crate::transport::{Endpoint, Transport};
use crate::wire::ControlMessage;

/// The largest single message accepted from a peer, in bytes (1 TiB). The
/// receive buffer is only allocated once a length has passed this check.
pub(crate) const MAX_MESSAGE: u64 = 1 << 40;

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// The handle to the job: every communication goes through it.
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
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
    node: usize,
    engine: RefCell<Engine>,
    managed: bool,
    finalized: Cell<bool>,
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
        Launch::Alone => Ok(World {
            rank: 0,
            size: 1,
            local_rank: 0,
            local_size: 1,
            node: 0,
            engine: RefCell::new(Engine::new(0, 1, Transport::Alone, false)),
            managed: false,
            finalized: Cell::new(false),
        }),
        Launch::Spmdrun(p) => {
            let kind = std::env::var(crate::wire::env::TRANSPORT).ok();
            let endpoint = Endpoint::open(kind.as_deref(), &p)?;
            let (cards, _nodes) = control::register(&p, endpoint.card().clone())?;
            control::install_panic_hook();
            let id = Identity {
                secret: &p.secret,
                job: p.job,
                me: p.rank as u32,
            };
            let transport = Transport::connect(endpoint, id, &cards, MAX_MESSAGE)?;
            Ok(World {
                rank: p.rank,
                size: p.size,
                local_rank: p.local_rank,
                local_size: p.local_size,
                node: p.node,
                engine: RefCell::new(Engine::new(p.rank, p.size, transport, true)),
                managed: true,
                finalized: Cell::new(false),
            })
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

/// The name of the machine this process runs on.
pub(crate) fn host_name() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".to_string())
}

impl World {
    /// This process's rank, `0..size()`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks in the job.
    pub fn size(&self) -> usize {
        self.size
    }

    /// This rank's index among the ranks on the same node.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// The number of ranks on this node.
    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// The index of this rank's node in the job's placement.
    pub fn node(&self) -> usize {
        self.node
    }

    /// The name of the machine this rank runs on (MPI's processor name).
    pub fn processor_name(&self) -> String {
        host_name()
    }

    pub(crate) fn engine(&self) -> RefMut<'_, Engine> {
        self.engine.borrow_mut()
    }

    /// The engine, unless it is borrowed already (for use in `Drop`).
    pub(crate) fn engine_try(&self) -> std::result::Result<RefMut<'_, Engine>, std::cell::BorrowMutError> {
        self.engine.try_borrow_mut()
    }

    pub(crate) fn check_rank(&self, rank: usize) -> Result<()> {
        if rank < self.size {
            Ok(())
        } else {
            Err(Error::InvalidRank { rank, size: self.size })
        }
    }

    /// Ends the whole job at once: spmdrun stops every rank and exits with
    /// `code`. Use it when a rank finds an error the others cannot recover
    /// from. It does not return.
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

    /// [`World::abort`] with a reason that spmdrun prints in its one line
    /// about the failure (and that is printed on standard error when there
    /// is no launcher).
    ///
    /// ```no_run
    /// # let world = spmd::init().unwrap();
    /// world.abort_with_message(2, "input.dat is missing");
    /// ```
    pub fn abort_with_message(&self, code: i32, message: &str) -> ! {
        if !self.managed && !message.is_empty() {
            eprintln!("abort({code}): {message}");
        }
        control::tell(
            &ControlMessage::Abort {
                code,
                message: message.to_string(),
            },
            true,
        );
        std::process::exit(code)
    }

    /// Flushes every pending send, tells the peers and the launcher this
    /// rank is done, and closes its connections. Dropping the handle does the
    /// same but cannot report an error.
    pub fn finalize(self) -> Result<()> {
        self.finalize_inner()
    }

    fn finalize_inner(&self) -> Result<()> {
        if self.finalized.replace(true) {
            return Ok(());
        }
        let flushed = self.engine().finish();
        if self.managed {
            control::tell(&ControlMessage::Finalized, true);
        }
        flushed
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // A panicking rank must not look finalized: the launcher reports it.
        if std::thread::panicking() {
            return;
        }
        if let Err(e) = self.finalize_inner() {
            eprintln!("spmd: rank {}: finalize failed: {e}", self.rank);
        }
    }
}
