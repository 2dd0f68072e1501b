//! A rank between its own `spmd::init` and spmdrun on its control channel,
//! which changes what init says or looks at what it is told, for the
//! cases of `spmd-rogue` that need a rank that is a member of the job and
//! lies: `bad-wake` registers a pipe that no one reads where its wake-up
//! socket goes, while a thread keeps its doorbell saying "asleep, wake me
//! through the descriptor" (each message a peer on its node sends it then
//! writes 8 bytes into the pipe, and the 513th would block that peer for
//! ever, as it did before the descriptor was checked); `full-wake` a real
//! wake-up socket, full and made blocking; `impostor.rs` takes
//! the keys and table it is told.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};

use spmd::wire::{Channel, ControlMessage, LAUNCHER_ID, env};

/// The doorbell's place in a rank's segment (`transport/shm/segment.rs`),
/// and the value that says "asleep in poll: send on my wake-up socket".
const DOORBELL_AT: usize = 64;
const ASLEEP_IN_POLL: u32 = 3;

/// A change to what init says to spmdrun, with its descriptors.
pub type Up = Box<dyn FnMut(&mut ControlMessage, &mut Vec<OwnedFd>) + Send>;
/// A look at what spmdrun says to init, before init hears it.
pub type Down = Box<dyn FnMut(&ControlMessage) + Send>;

/// For `bad-wake` and `full-wake`: registers what `wake` makes (a pipe
/// no one reads; a real wake-up socket, full and made blocking) as the
/// wake-up descriptor, and holds the doorbell at "wake me through it".
pub fn register_as_wake(rank: u32, wake: fn() -> OwnedFd) {
    let up: Up = Box::new(move |msg, fds| {
        if matches!(msg, ControlMessage::Register { .. }) && fds.len() == 2 {
            hold_doorbell(&fds[0]);
            fds[1] = wake();
        }
    });
    start(rank, up, Box::new(|_| {}));
}

/// Set once the relay has started, and once it has passed on the last of
/// init's messages (init closed its end, as `finalize` does).
static STARTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
static PASSED_ALL: std::sync::OnceLock<()> = std::sync::OnceLock::new();

/// Waits (a few seconds at most) until the relay has passed on what init
/// said last, `Finalized` included: call after `finalize`, before the
/// process ends and takes the relay with it.
pub fn finish() {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while STARTED.get().is_some() && PASSED_ALL.get().is_none() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Puts a relay between this process's `spmd::init` and spmdrun, which
/// passes every message on after `up` or `down` has had it; call before
/// `spmd::init`.
pub fn start(rank: u32, mut up: Up, mut down: Down) {
    // init will use the relay's end instead.
    let upstream = inherited_channel();
    let (relay_end, init_end) = UnixStream::pair().expect("a socket pair");
    let init_end = OwnedFd::from(init_end).into_raw_fd();
    // init checks that the other end is the process the variable names:
    // here, this one. SAFETY: no other thread runs yet.
    unsafe { std::env::set_var(env::CONTROL, format!("fd:{init_end}:{}", std::process::id())) };
    let _ = STARTED.set(());
    let mut to_spmdrun = Channel::new(upstream, rank, LAUNCHER_ID, "spmdrun");
    let mut to_init = Channel::new(OwnedFd::from(relay_end), LAUNCHER_ID, rank, "init");
    std::thread::spawn(move || {
        loop {
            let mut polled = [
                libc::pollfd {
                    fd: to_spmdrun.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: to_init.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two live pollfds.
            unsafe { libc::poll(polled.as_mut_ptr(), 2, 1000) };
            if polled[1].revents != 0 && !pass_on(&mut to_init, &mut to_spmdrun, &mut |m, f| up(m, f)) {
                let _ = PASSED_ALL.set(());
                return;
            }
            if polled[0].revents != 0 && !pass_on(&mut to_spmdrun, &mut to_init, &mut |m, _| down(m)) {
                return;
            }
        }
    });
}

/// The control channel spmdrun gave this process, which it takes over
/// (nothing else in it may use it then).
pub fn inherited_channel() -> OwnedFd {
    let control = std::env::var(env::CONTROL).expect("SPMD_CONTROL");
    let fd: i32 = control
        .split(':')
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("fd:N:pid");
    // SAFETY: spmdrun gave this process the descriptor; the caller takes
    // it over.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Passes what `from` has to `to`, each message after `change`; false
/// once `from` is closed.
fn pass_on(
    from: &mut Channel,
    to: &mut Channel,
    change: &mut dyn FnMut(&mut ControlMessage, &mut Vec<OwnedFd>),
) -> bool {
    let open = from.read_available().unwrap_or(false);
    while let Ok(Some((mut msg, mut fds))) = from.next_message() {
        change(&mut msg, &mut fds);
        let fds: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        let _ = to.send(&msg, &fds);
    }
    open
}

/// Keeps the doorbell of `segment` at [`ASLEEP_IN_POLL`], from a thread.
fn hold_doorbell(segment: &OwnedFd) {
    // SAFETY: maps the first page of this rank's own segment.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            segment.as_raw_fd(),
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED, "mapping the segment");
    let address = page as usize + DOORBELL_AT;
    std::thread::spawn(move || {
        // SAFETY: an aligned word of a mapping never unmapped.
        let bell = unsafe { &*(address as *const AtomicU32) };
        loop {
            bell.store(ASLEEP_IN_POLL, Ordering::SeqCst);
            std::thread::yield_now();
        }
    });
}

/// One end of a datagram socket pair whose other end no one reads, full
/// and blocking.
pub fn full_blocking_socket() -> OwnedFd {
    let (unread, end) = std::os::unix::net::UnixDatagram::pair().expect("a pair");
    std::mem::forget(unread);
    end.set_nonblocking(true).expect("non-blocking");
    while end.send(&[1]).is_ok() {}
    end.set_nonblocking(false).expect("blocking again");
    OwnedFd::from(end)
}

/// The write end of a pipe of one page that no one reads (its read end
/// stays open, so writes block rather than fail).
pub fn unread_pipe() -> OwnedFd {
    let (read, write) = nix::unistd::pipe().expect("a pipe");
    std::mem::forget(read);
    // SAFETY: a plain fcntl on the pipe just made.
    unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    write
}
