//! The MPI backend (the `mpi` feature): a rank of a job that `mpirun`,
//! `mpiexec` or `srun` started runs every call on the site's MPI through
//! rsmpi's bindings, with spmd's own checks kept on top.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use mpi::ffi;

use crate::bootstrap::MpiLauncher;
use crate::error::{Error, Result};
use crate::selector::MAX_TAG;

mod collective;
mod comm;
mod datatype;
mod failure;
mod frames;
mod header;
mod held;
mod immediate;
mod live;
mod numbers;
mod point_to_point;
mod receive_request;
mod send_request;
mod typed;

pub(crate) use collective::Reduction;
pub(crate) use comm::MpiComm;
pub(crate) use immediate::MpiCollective;
pub(crate) use point_to_point::Wait;
pub(crate) use receive_request::MpiReceive;
pub(crate) use send_request::MpiSend;

/// Set once `MPI_Finalize` has run: a communicator kept beyond it neither
/// communicates nor frees its MPI handles.
static FINALIZED: AtomicBool = AtomicBool::new(false);

/// This process's rank in `MPI_COMM_WORLD`, for the panic hook's line.
static WORLD_RANK: AtomicI32 = AtomicI32::new(-1);

/// What `init` learnt from MPI about this rank.
#[derive(Debug)]
pub(crate) struct MpiStart {
    pub size: usize,
    pub local_rank: usize,
    pub local_size: usize,
    pub node: usize,
    pub world: MpiComm,
}

/// An error unless MPI returned `MPI_SUCCESS`.
#[inline]
pub(crate) fn check(code: c_int, call: &'static str) -> Result<()> {
    if code == ffi::MPI_SUCCESS as c_int {
        Ok(())
    } else {
        Err(mpi_error(code, call))
    }
}

/// The error MPI's `code` from `call` stands for.
#[cold]
#[inline(never)]
fn mpi_error(code: c_int, call: &'static str) -> Error {
    let mut text = vec![0 as c_char; ffi::MPI_MAX_ERROR_STRING as usize + 1];
    let mut len: c_int = 0;
    // SAFETY: the buffer holds MPI_MAX_ERROR_STRING characters and a nul.
    unsafe { ffi::MPI_Error_string(code, text.as_mut_ptr(), &mut len) };
    // SAFETY: MPI wrote a nul-terminated string (the buffer was zeroed).
    let detail = unsafe { CStr::from_ptr(text.as_ptr()) }.to_string_lossy().into_owned();
    Error::Mpi { call, detail }
}

/// `Err(Finalized)` once MPI has been finalized.
pub(crate) fn check_open() -> Result<()> {
    if FINALIZED.load(Ordering::Acquire) {
        Err(Error::Finalized)
    } else {
        Ok(())
    }
}

/// True once MPI has been finalized.
pub(crate) fn finalized() -> bool {
    FINALIZED.load(Ordering::Acquire)
}

/// The MPI library this program is linked to, as it names itself.
fn library_version() -> String {
    let mut text = vec![0 as c_char; ffi::MPI_MAX_LIBRARY_VERSION_STRING as usize + 1];
    let mut len: c_int = 0;
    // SAFETY: the buffer is large enough; may be called before MPI_Init.
    unsafe { ffi::MPI_Get_library_version(text.as_mut_ptr(), &mut len) };
    // SAFETY: nul-terminated (the buffer was zeroed).
    let full = unsafe { CStr::from_ptr(text.as_ptr()) }.to_string_lossy().into_owned();
    let first = full.split([',', '\n']).next().unwrap_or("");
    first.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The variable a rank on MPI sets to its pid, for the programs it starts:
/// they inherit the launcher's variables, and this tells them they are
/// not ranks.
const RANK_PID: &str = "SPMD_MPI_RANK_PID";

/// Starts MPI for a process `launcher` started, and checks that MPI sees
/// the job the launcher made.
pub(crate) fn start(launcher: MpiLauncher) -> Result<MpiStart> {
    // A program a rank starts inherits the launcher's variables (and, from
    // MPICH, the rank's PMI socket, where its MPI_Init would wait for
    // ever): it is not a rank.
    if let Some(parent) = std::env::var(RANK_PID)
        .ok()
        .filter(|p| *p != std::process::id().to_string())
    {
        return Err(Error::Bootstrap(format!(
            "this process was started by process {parent}, a rank of a job {} started, not by the launcher: a \
             program that a rank starts is not a rank",
            launcher.name
        )));
    }
    // Open MPI started by srun without PMIx fails inside MPI_Init, with
    // its own words: say what is wrong first.
    let library = library_version();
    let srun = launcher.name == "Slurm's srun";
    let plugin = launcher.plugin.as_deref();
    // srun exports SLURM_MPI_TYPE only for --mpi (or when the user sets it):
    // a site's MpiDefault=pmix shows in PMIx's own variables.
    let pmix = plugin.map_or(std::env::var_os("PMIX_RANK").is_some(), |p| p.starts_with("pmix"));
    if srun && library.starts_with("Open MPI") && !pmix {
        let given = plugin.map_or("no --mpi plugin".to_string(), |p| format!("--mpi={p}"));
        return Err(Error::WrongLauncher {
            launcher: launcher.name,
            problem: format!(
                "it was given {given} and is linked to {library}, which srun starts with --mpi=pmix (README \
                 \"Running on a cluster\")"
            ),
        });
    }
    // SAFETY: set once, in init, before MPI starts threads of its own and
    // before spmd starts any; a program calls init before its own threads
    // use the environment (as it must call MPI_Init_thread before its
    // threads use MPI).
    unsafe { std::env::set_var(RANK_PID, std::process::id().to_string()) };
    let mut provided: c_int = 0;
    // Threads may drive different communicators at once.
    // SAFETY: called once per process (init checks), with null arguments.
    let code = unsafe {
        ffi::MPI_Init_thread(
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            ffi::RSMPI_THREAD_MULTIPLE as c_int,
            &mut provided,
        )
    };
    check(code, "MPI_Init_thread")?;
    let world_handle = unsafe { ffi::RSMPI_COMM_WORLD };
    let (mut rank, mut size) = (0, 0);
    // SAFETY: MPI is initialized; the world communicator is valid.
    unsafe {
        ffi::MPI_Comm_rank(world_handle, &mut rank);
        ffi::MPI_Comm_size(world_handle, &mut size);
    }
    WORLD_RANK.store(rank, Ordering::Relaxed);
    if let Some(expected) = launcher.size.filter(|&n| n != size as usize) {
        let problem = if srun && library.starts_with("MPICH") && !plugin.is_some_and(|p| p.starts_with("pmi2")) {
            let given = plugin.map_or("no --mpi plugin".to_string(), |p| format!("--mpi={p}"));
            format!(
                "it was given {given} and is linked to {library}, which sees a job of {size} rank(s) where srun \
                 started {expected}: srun starts MPICH programs with --mpi=pmi2 (README \"Running on a cluster\")"
            )
        } else {
            format!(
                "it is linked to {library}, which sees a job of {size} rank(s) where the launcher started \
                 {expected}: it was built against another MPI than the launcher's (pick the MPI at build time \
                 with MPICC, README \"Running on a cluster\")"
            )
        };
        // Every rank is its own job here: end this one alone.
        // SAFETY: MPI is initialized.
        unsafe { ffi::MPI_Finalize() };
        FINALIZED.store(true, Ordering::Release);
        return Err(Error::WrongLauncher {
            launcher: launcher.name,
            problem,
        });
    }
    // SAFETY: a constant of MPI's.
    if provided < unsafe { ffi::RSMPI_THREAD_MULTIPLE } as c_int {
        abort_job(
            1,
            &format!(
                "{} gives no MPI_THREAD_MULTIPLE (level {provided}), which spmd's threads need",
                library_version()
            ),
        );
    }
    let tag_ub = tag_upper_bound(world_handle)?;
    if tag_ub < MAX_TAG as i64 {
        abort_job(
            1,
            &format!(
                "{} allows tags up to {tag_ub} (MPI_TAG_UB), below spmd's documented {MAX_TAG}",
                library_version()
            ),
        );
    }
    install_panic_hook();
    abort_at_exit();
    let world = MpiComm::duplicate(world_handle)?;
    let (local_rank, local_size, node) = world.node_place()?;
    Ok(MpiStart {
        size: size as usize,
        local_rank,
        local_size,
        node,
        world,
    })
}

/// `MPI_TAG_UB` of the world.
fn tag_upper_bound(world: ffi::MPI_Comm) -> Result<i64> {
    let mut value: *mut c_int = std::ptr::null_mut();
    let mut flag: c_int = 0;
    // SAFETY: MPI_TAG_UB's value is a pointer to an int owned by MPI.
    let code = unsafe {
        ffi::MPI_Comm_get_attr(
            world,
            ffi::MPI_TAG_UB as c_int,
            (&mut value as *mut *mut c_int).cast::<c_void>(),
            &mut flag,
        )
    };
    check(code, "MPI_Comm_get_attr(MPI_TAG_UB)")?;
    if flag == 0 || value.is_null() {
        return Ok(32767);
    }
    // SAFETY: set by MPI to a valid int for the life of the job.
    Ok(i64::from(unsafe { *value }))
}

/// Ends the whole job from this rank: one line on standard error naming
/// the rank, then `MPI_Abort`, which every MPI launcher turns into the end
/// of every rank.
pub(crate) fn abort_job(code: i32, message: &str) -> ! {
    let rank = WORLD_RANK.load(Ordering::Relaxed);
    if !message.is_empty() {
        // One write, so that the line is never cut in two.
        let line = format!("spmd: rank {rank}: {message}\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    }
    wait_for_launcher_to_read_output();
    // SAFETY: MPI_Abort may be called at any time after MPI_Init.
    unsafe { ffi::MPI_Abort(ffi::RSMPI_COMM_WORLD, code) };
    std::process::exit(code)
}

/// Waits (at most 200 ms) until the launcher has read what this rank
/// wrote to its standard output and error: MPICH's Hydra, told of an
/// abort, ends the job without reading the rest, and the line naming the
/// rank was lost with it. A pipe or socket says how much is still unread.
fn wait_for_launcher_to_read_output() {
    let unread = |fd: c_int| {
        let mut queued: c_int = 0;
        // SAFETY: FIONREAD (pipes) and SIOCOUTQ (sockets) write one int;
        // on other files they fail, which counts as nothing unread.
        let pipe = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) } == 0 && queued > 0;
        let socket = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) } == 0 && queued > 0;
        pipe || socket
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
    while (unread(1) || unread(2)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Ends the job when this process exits without having finalized (a
/// World dropped, an error returned from `main`, `process::exit`): by
/// then `main` has printed the error it returned, if any. Without this,
/// the other ranks would wait for this one for ever.
fn abort_at_exit() {
    extern "C" fn at_exit() {
        if !finalized() {
            abort_job(
                1,
                "exited without World::finalize (returned an error from main?); on the MPI backend that ends the job",
            );
        }
    }
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    if !REGISTERED.swap(true, Ordering::AcqRel) {
        // SAFETY: registers a plain function with no captured state.
        unsafe { libc::atexit(at_exit) };
    }
}

/// A panic on any thread ends the job (plain MPI would leave the other
/// ranks waiting for this one forever).
fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let (text, at) = crate::control::panic_text(info);
        let at = at.map(|(file, line)| format!(" at {file}:{line}")).unwrap_or_default();
        if !finalized() {
            abort_job(101, &format!("panicked{at}: {text}"));
        }
    }));
}

/// Finalizes MPI (once).
pub(crate) fn finalize() -> Result<()> {
    if finalized() {
        return Ok(());
    }
    live::finish_all();
    send_request::finish_orphans();
    FINALIZED.store(true, Ordering::Release);
    // SAFETY: MPI is initialized and not yet finalized.
    check(unsafe { ffi::MPI_Finalize() }, "MPI_Finalize")
}
