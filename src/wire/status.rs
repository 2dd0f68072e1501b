//! The status page: one page of memory per rank, made by the launcher and
//! written by the rank, saying whether the rank is blocked inside spmd and
//! on what, and how many messages it has sent and seen arrive. The launcher
//! reads it without the rank's help (a blocked rank sleeps), to report
//! hangs and to recognise a deadlock.
//!
//! The rank writes it only when a wait is about to sleep and when that wait
//! ends, so the fast paths never touch it. Writes are bracketed by a
//! sequence number (odd while writing); the launcher retries a read that
//! saw the number change, and checks every field it reads.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The size of a status page.
pub const PAGE_LEN: usize = 4096;
const MAGIC: u64 = u64::from_le_bytes(*b"spmd-st1");
const WORDS: usize = 14;
const W_MAGIC: usize = 0;
const W_SEQ: usize = 1;
const W_PHASE: usize = 2;
const W_OP: usize = 3;
const W_SINCE: usize = 4;
const W_PEER: usize = 5;
const W_TAG: usize = 6;
const W_CONTEXT: usize = 7;
const W_CALL: usize = 8;
const W_SIG: usize = 9;
const W_SENT: usize = 10;
const W_ARRIVED: usize = 11;
const W_PID: usize = 12;
const W_UNTIL: usize = 13;

/// Where a rank is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// It has not finished `init` (it may not have called it).
    Starting = 0,
    /// Between `init` and `finalize`.
    Running = 1,
    /// It has finalized.
    Finalized = 2,
}

/// What a blocked rank waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitOp {
    /// A receive (blocking, or a request's wait).
    Receive = 1,
    /// A probe.
    Probe = 2,
    /// A send waiting for room (the receiver is not reading).
    Send = 3,
    /// A collective (which one: the signature).
    Collective = 4,
    /// `finalize`, flushing what it sent.
    Finalize = 5,
}

impl WaitOp {
    fn from_word(w: u64) -> Option<WaitOp> {
        Some(match w {
            1 => WaitOp::Receive,
            2 => WaitOp::Probe,
            3 => WaitOp::Send,
            4 => WaitOp::Collective,
            5 => WaitOp::Finalize,
            _ => return None,
        })
    }
}

/// One wait, as the rank describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// What it waits in.
    pub op: WaitOp,
    /// The rank it waits on (`None`: any rank, or several).
    pub peer: Option<u32>,
    /// The tag it waits for (`None`: any tag).
    pub tag: Option<u32>,
    /// The context (communicator) of the wait.
    pub context: u32,
    /// For a collective: its call number on its communicator.
    pub call: u32,
    /// For a collective: which one (see `collective::Signature`).
    pub sig: u16,
    /// When the wait began (CLOCK_MONOTONIC, nanoseconds).
    pub since_ns: u64,
    /// When the wait gives up (CLOCK_MONOTONIC, nanoseconds); 0 for never;
    /// [`OTHER_THREADS_OUTSIDE`] when another thread of the rank is outside
    /// spmd; [`BUSY_IN_SPMD`] when the waiting thread keeps moving
    /// messages.
    pub until_ns: u64,
}

/// What a status page said at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Where the rank is in its life.
    pub phase: Phase,
    /// What it waits on, if it is blocked inside spmd.
    pub waiting: Option<Waiting>,
    /// Messages it has sent (handed to a transport) so far.
    pub sent: u64,
    /// Messages it has seen arrive so far.
    pub arrived: u64,
    /// The process that wrote the page.
    pub pid: u32,
}

/// The number of words of a page that a snapshot reads.
pub const SNAPSHOT_WORDS: usize = WORDS;

impl Snapshot {
    /// The snapshot the words of a page describe; `None` if they were never
    /// written or say something that cannot be.
    pub fn decode(w: &[u64; WORDS]) -> Option<Snapshot> {
        if w[W_MAGIC] != MAGIC {
            return None;
        }
        let phase = match w[W_PHASE] {
            0 => Phase::Starting,
            1 => Phase::Running,
            2 => Phase::Finalized,
            _ => return None,
        };
        let small = |v: u64| (v != u64::MAX).then(|| u32::try_from(v).ok()).flatten();
        let waiting = WaitOp::from_word(w[W_OP]).map(|op| Waiting {
            op,
            peer: small(w[W_PEER]),
            tag: small(w[W_TAG]),
            context: w[W_CONTEXT] as u32,
            call: w[W_CALL] as u32,
            sig: w[W_SIG] as u16,
            since_ns: w[W_SINCE],
            until_ns: w[W_UNTIL],
        });
        Some(Snapshot {
            phase,
            waiting,
            sent: w[W_SENT],
            arrived: w[W_ARRIVED],
            pid: w[W_PID] as u32,
        })
    }
}

/// The `until_ns` of a wait in a rank some other thread of which is
/// outside spmd: that thread may yet send what the wait is for, so the
/// rank is blocked but in no deadlock.
pub const OTHER_THREADS_OUTSIDE: u64 = u64::MAX;

/// The `until_ns` of a wait whose thread has not slept in it for a while,
/// or sleeps only between messages that keep coming: messages keep moving
/// through the rank, so it is inside spmd and busy, in no deadlock.
pub const BUSY_IN_SPMD: u64 = u64::MAX - 1;

/// The latest deadline a page can say: the values above it are markers.
pub const LATEST_DEADLINE: u64 = u64::MAX - 2;

/// True if a wait's `until_ns` is a deadline: not 0 (none), nor a marker.
pub fn is_deadline(until_ns: u64) -> bool {
    until_ns != 0 && until_ns <= LATEST_DEADLINE
}

/// The current CLOCK_MONOTONIC time in nanoseconds (the clock the pages
/// use, shared by every process of a machine).
pub fn now_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC);
    t.map_or(0, |t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

/// A mapped status page.
#[derive(Debug)]
pub struct Page {
    base: NonNull<u64>,
}

// SAFETY: the mapping is owned by the page; it is reached through atomics.
unsafe impl Send for Page {}

impl Page {
    /// Makes a new page for a rank (the launcher's side): an anonymous
    /// memory file of one page, sealed so that the rank cannot shrink it
    /// under the launcher, mapped here for reading.
    pub fn create() -> Result<(Page, OwnedFd)> {
        // SAFETY: a plain system call with a valid C string.
        let fd = unsafe { libc::memfd_create(c"spmd-status".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        if fd < 0 {
            return Err(Error::io("creating a status page", std::io::Error::last_os_error()));
        }
        // SAFETY: just created, owned by nothing else.
        let file = unsafe { OwnedFd::from_raw_fd(fd) };
        nix::unistd::ftruncate(&file, PAGE_LEN as i64).map_err(|e| Error::io("sizing a status page", e.into()))?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: a plain fcntl on a descriptor we own.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(Error::io("sealing a status page", std::io::Error::last_os_error()));
        }
        let page = Page::map(&file)?;
        Ok((page, file))
    }

    /// Maps a page (the rank's side, with the descriptor the launcher sent;
    /// the launcher's, with its own), after checking its size and seals.
    pub fn map(file: &OwnedFd) -> Result<Page> {
        let bad = |d: &str| Error::protocol("the launcher", "status page", d);
        let size = nix::sys::stat::fstat(file).map_err(|e| Error::io("inspecting a status page", e.into()))?;
        // SAFETY: a plain fcntl on a descriptor we hold.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        if size.st_size != PAGE_LEN as i64 || seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(bad("not a sealed page"));
        }
        let len = std::num::NonZeroUsize::new(PAGE_LEN).ok_or_else(|| bad("empty"))?;
        // SAFETY: mapping a page-sized file we hold, shared.
        let base = unsafe {
            nix::sys::mman::mmap(
                None,
                len,
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
                file,
                0,
            )
        }
        .map_err(|e| Error::io("mapping a status page", e.into()))?;
        Ok(Page { base: base.cast() })
    }

    fn word(&self, w: usize) -> &AtomicU64 {
        debug_assert!(w < WORDS);
        // SAFETY: inside the mapped page, aligned; atomics may be written
        // by another process at the same time.
        unsafe { &*self.base.as_ptr().add(w).cast::<AtomicU64>() }
    }

    fn write(&self, f: impl FnOnce(&Page)) {
        let seq = self.word(W_SEQ).load(Ordering::Relaxed);
        self.word(W_SEQ).store(seq | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        f(self);
        self.word(W_SEQ).store((seq | 1).wrapping_add(1), Ordering::Release);
    }

    /// Records where the rank is in its life (the rank's side).
    pub fn set_phase(&self, phase: Phase) {
        self.write(|p| {
            p.word(W_MAGIC).store(MAGIC, Ordering::Relaxed);
            p.word(W_PID).store(u64::from(std::process::id()), Ordering::Relaxed);
            p.word(W_PHASE).store(phase as u64, Ordering::Relaxed);
        });
    }

    /// Records that the rank has finalized, having sent and seen arrive
    /// so many messages in all (with what arrived during its finalize).
    pub fn set_finalized(&self, sent: u64, arrived: u64) {
        self.write(|p| {
            p.word(W_PHASE).store(Phase::Finalized as u64, Ordering::Relaxed);
            p.word(W_SENT).store(sent, Ordering::Relaxed);
            p.word(W_ARRIVED).store(arrived, Ordering::Relaxed);
        });
    }

    /// Records that the rank is about to sleep in `waiting`, having sent
    /// and seen arrive so many messages (the rank's side).
    pub fn set_waiting(&self, waiting: &Waiting, sent: u64, arrived: u64) {
        self.write(|p| {
            p.word(W_OP).store(waiting.op as u64, Ordering::Relaxed);
            p.word(W_SINCE).store(waiting.since_ns, Ordering::Relaxed);
            p.word(W_PEER)
                .store(waiting.peer.map_or(u64::MAX, u64::from), Ordering::Relaxed);
            p.word(W_TAG)
                .store(waiting.tag.map_or(u64::MAX, u64::from), Ordering::Relaxed);
            p.word(W_CONTEXT).store(u64::from(waiting.context), Ordering::Relaxed);
            p.word(W_CALL).store(u64::from(waiting.call), Ordering::Relaxed);
            p.word(W_SIG).store(u64::from(waiting.sig), Ordering::Relaxed);
            p.word(W_UNTIL).store(waiting.until_ns, Ordering::Relaxed);
            p.word(W_SENT).store(sent, Ordering::Relaxed);
            p.word(W_ARRIVED).store(arrived, Ordering::Relaxed);
        });
    }

    /// Records that the rank is no longer blocked (the rank's side).
    pub fn set_running(&self, sent: u64, arrived: u64) {
        self.write(|p| {
            p.word(W_OP).store(0, Ordering::Relaxed);
            p.word(W_SENT).store(sent, Ordering::Relaxed);
            p.word(W_ARRIVED).store(arrived, Ordering::Relaxed);
        });
    }

    /// Reads the page (the launcher's side); `None` if the rank never wrote
    /// it, or kept writing while it was read, or wrote something that
    /// cannot be.
    pub fn read(&self) -> Option<Snapshot> {
        for _ in 0..100 {
            let before = self.word(W_SEQ).load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let mut w = [0u64; WORDS];
            for (i, word) in w.iter_mut().enumerate() {
                *word = self.word(i).load(Ordering::Relaxed);
            }
            fence(Ordering::Acquire);
            if self.word(W_SEQ).load(Ordering::Relaxed) != before {
                continue;
            }
            return Snapshot::decode(&w);
        }
        None
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the page `map` mapped.
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), PAGE_LEN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_rank_writes_the_launcher_reads() {
        let (launcher, fd) = Page::create().unwrap();
        assert_eq!(launcher.read(), None, "never written");
        let rank = Page::map(&fd).unwrap();
        rank.set_phase(Phase::Running);
        let w = Waiting {
            op: WaitOp::Receive,
            peer: Some(3),
            tag: None,
            context: 0,
            call: 0,
            sig: 0,
            since_ns: 42,
            until_ns: 0,
        };
        rank.set_waiting(&w, 5, 7);
        let s = launcher.read().unwrap();
        assert_eq!((s.phase, s.waiting, s.sent, s.arrived), (Phase::Running, Some(w), 5, 7));
        rank.set_running(6, 8);
        assert_eq!(launcher.read().unwrap().waiting, None);
        // Garbage is not a snapshot.
        launcher.word(W_PHASE).store(99, Ordering::Relaxed);
        assert_eq!(launcher.read(), None);
        assert!(nix::unistd::ftruncate(&fd, 0).is_err(), "sealed");
    }
}
