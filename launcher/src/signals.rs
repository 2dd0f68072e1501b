//! The signals spmdrun reacts to, read from a descriptor in its event loop:
//! SIGINT, SIGTERM and SIGHUP end the job as a failing rank would; SIGCHLD
//! says a child has ended. SIGTTIN is blocked and never read.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

fn watched() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set.add(Signal::SIGCHLD);
    set
}

/// Blocks the watched signals (call it before any other thread starts, so
/// every thread inherits the mask) and returns a descriptor to read them
/// from. Children get an empty mask back when they are spawned.
pub fn open() -> Result<SignalFd, String> {
    let set = watched();
    // SIGTTIN too (not watched): a read of the terminal from the
    // background then fails instead of stopping spmdrun.
    let mut blocked = set;
    blocked.add(Signal::SIGTTIN);
    blocked
        .thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("cannot watch signals: {e}"))
}

/// The signals that arrived since the last call.
pub fn take(fd: &SignalFd) -> Vec<Signal> {
    let mut got = Vec::new();
    while let Ok(Some(info)) = fd.read_signal() {
        if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
            got.push(sig);
        }
    }
    got
}
