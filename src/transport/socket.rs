//! A mesh of stream sockets between the ranks, driven by one `poll` loop:
//! no thread per peer.
//!
//! Over Unix-domain sockets, the launcher makes a socket pair for every
//! pair of ranks and hands each rank its ends over the rank's private
//! control channel, as it does the shared-memory segments: no rank
//! listens, so there is nothing anyone could connect to, no name to find
//! or squat, and nothing left behind. Over TCP, the ranks connect to each
//! other at start-up and prove the job's secret (`super::tcp`). After
//! start-up every socket is non-blocking and only
//! [`SocketMesh::progress`] touches it.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, sendmsg};

use crate::error::{Error, Result};
use crate::wire::WaitMode;

use super::peers::Peers;
use super::stream::{Io, Link, Peer};
use super::{Delivery, Sleeping, Wait};

/// How long a finalizing rank reads on for the Byes of peers that have
/// not said it (see `SocketMesh::finish`).
const FINISH_WAIT: Duration = Duration::from_millis(100);

/// Waits in `poll` on `fds` until one is ready or `timeout` passes (`None`:
/// no limit); the `revents` say which.
pub(crate) fn poll_descriptors(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> Result<()> {
    // Rounded up, so that a wait until a deadline does not end just before.
    let ms = timeout.map_or(-1, |t| {
        let ms = t.as_millis() + u128::from(t.subsec_nanos() % 1_000_000 != 0);
        ms.min(i32::MAX as u128) as i32
    });
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::io("waiting for peers (poll)", e));
        }
    }
    Ok(())
}

/// A connected stream socket (Unix-domain, or TCP) to one peer.
#[derive(Debug)]
pub(crate) struct SocketLink {
    fd: OwnedFd,
    /// Over TCP: when to look next whether the peer has shut down its
    /// side (see [`Link::peer_hung_up`]); `None` over Unix sockets.
    next_hangup_look: Option<Instant>,
}

/// How often a sender over TCP looks whether its peer is finalizing. A
/// message sent before the look reaches the peer while it still reads
/// (for `FINISH_WAIT` after it shuts down its side), and is read or
/// reported there; one sent after it fails with `PeerGone`.
const HANGUP_LOOK: Duration = Duration::from_millis(10);

/// How long a finalizing rank's last look at a TCP link waits for more
/// bytes before it counts the link as read to its end.
const LAST_LOOK_QUIET: Duration = Duration::from_millis(20);

impl SocketLink {
    /// A link over a socket the launcher made (or start-up connected, over
    /// TCP), after checking that it is a connected stream socket.
    fn new(fd: OwnedFd, name: &str) -> Result<SocketLink> {
        let bad = |why: String| Error::protocol("the launcher", "links", format!("the link to {name} {why}"));
        let kind = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SockType)
            .map_err(|e| bad(format!("is not a socket ({e})")))?;
        if kind != nix::sys::socket::SockType::Stream {
            return Err(bad(format!("is a {kind:?} socket, not a stream")));
        }
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
            .map_err(|e| Error::io(format!("configuring the connection to {name}"), e.into()))?;
        let tcp = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(fd.as_raw_fd())
            .is_ok_and(|a| a.as_unix_addr().is_none());
        Ok(SocketLink {
            fd,
            next_hangup_look: tcp.then(Instant::now),
        })
    }

    /// True for a TCP connection.
    fn is_tcp(&self) -> bool {
        self.next_hangup_look.is_some()
    }
}

// SAFETY: writes only bytes into what it reads into (see `Link`).
unsafe impl Link for SocketLink {
    /// Over TCP a write succeeds even after the peer has closed (its
    /// kernel then drops the bytes), unlike over a Unix socket, where it
    /// fails: so a sender looks, now and then, whether the peer has shut
    /// down its side, which a finalizing rank does before it stops reading.
    /// Once it has, this side shuts its own down too: the peer reads to
    /// the end of what was sent (see `SocketMesh::finish`).
    fn peer_hung_up(&mut self) -> bool {
        let Some(next) = self.next_hangup_look else {
            return false;
        };
        let now = Instant::now();
        if now < next {
            return false;
        }
        self.next_hangup_look = Some(now + HANGUP_LOOK);
        let mut fd = [libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        }];
        let hung_up = poll_descriptors(&mut fd, Some(Duration::ZERO)).is_ok()
            && fd[0].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0;
        if hung_up {
            let _ = nix::sys::socket::shutdown(self.fd.as_raw_fd(), nix::sys::socket::Shutdown::Write);
        }
        hung_up
    }

    fn short_read_drains(&self) -> bool {
        true
    }

    fn write(&mut self, iov: &[IoSlice<'_>]) -> Result<Io> {
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        loop {
            return match sendmsg::<()>(self.fd.as_raw_fd(), iov, &[], flags, None) {
                Ok(0) => Ok(Io::WouldBlock),
                Ok(n) => Ok(Io::Done(n)),
                Err(Errno::EAGAIN) => Ok(Io::WouldBlock),
                Err(Errno::EINTR) => continue,
                Err(Errno::EPIPE | Errno::ECONNRESET) => Ok(Io::Closed),
                Err(e) => Err(Error::io("sending to a peer", e.into())),
            };
        }
    }

    fn read(&mut self, buf: &mut [std::mem::MaybeUninit<u8>]) -> Result<Io> {
        loop {
            // SAFETY: the kernel writes at most `buf.len()` bytes into it.
            let got = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            let got = usize::try_from(got).map_err(|_| Errno::last());
            return match got {
                Ok(0) => Ok(Io::Closed),
                Ok(n) => Ok(Io::Done(n)),
                Err(Errno::EAGAIN) => Ok(Io::WouldBlock),
                Err(Errno::EINTR) => continue,
                Err(Errno::ECONNRESET) => Ok(Io::Closed),
                Err(e) => Err(Error::io("receiving from a peer", e.into())),
            };
        }
    }
}

/// The socket mesh of one rank.
#[derive(Debug)]
pub(crate) struct SocketMesh {
    pub peers: Peers<SocketLink>,
    /// How a waiting rank polls its sockets before it sleeps.
    wait: WaitMode,
    /// The peers whose sockets the last [`SocketMesh::poll_for_work`]
    /// found ready, for the progress that follows it to read without
    /// asking the kernel again (a system call costs as much as a small
    /// message here).
    found_ready: std::cell::RefCell<Option<Vec<usize>>>,
}

/// How long a rank with a core of its own polls its sockets before it
/// sleeps: a message that comes within it is taken without the kernel's
/// wake-up, which costs tens of microseconds on a virtual machine.
const SPIN: Duration = Duration::from_millis(1);

/// How long a rank that shares its core polls, yielding between looks.
const YIELD: Duration = Duration::from_micros(500);

impl SocketMesh {
    /// The mesh of rank `me` of `size` over `links`: its ends of the socket
    /// pairs to the other ranks, by rank.
    pub fn from_links(
        me: usize,
        size: usize,
        links: Vec<(usize, OwnedFd)>,
        max_message: u64,
        wait: WaitMode,
    ) -> Result<SocketMesh> {
        let mut list: Vec<Option<Peer<SocketLink>>> = (0..size).map(|_| None).collect();
        for (rank, fd) in links {
            if rank >= size || rank == me || list[rank].is_some() {
                return Err(Error::protocol(
                    "the launcher",
                    "links",
                    format!("a link to rank {rank}, which is not another rank of this job, or a second one"),
                ));
            }
            list[rank] = Some(Peer::new(me, rank, SocketLink::new(fd, &format!("rank {rank}"))?));
        }
        Ok(SocketMesh {
            peers: Peers {
                me,
                list,
                max_message,
                said_bye: false,
                unfinalized: false,
            },
            wait,
            found_ready: std::cell::RefCell::new(None),
        })
    }

    /// Polls the sockets, as the wait mode says, until one is ready or
    /// `woken` says so (true), or the time to poll is up (false). Peers
    /// whose reading is paused are not looked at.
    pub fn poll_for_work(&self, woken: &dyn Fn() -> bool) -> bool {
        self.poll_for_work_every(woken, Duration::ZERO)
    }

    /// True if the last poll found sockets ready that have not been read.
    pub fn found_ready(&self) -> bool {
        self.found_ready.borrow().is_some()
    }

    /// [`SocketMesh::poll_for_work`], looking at the sockets only once
    /// `every` has passed since the last look (`woken` on every round): a
    /// system call costs more than a look at shared memory.
    pub fn poll_for_work_every(&self, woken: &dyn Fn() -> bool, every: Duration) -> bool {
        let poll_for = match self.wait {
            WaitMode::Spin => SPIN,
            WaitMode::Yield => YIELD,
            WaitMode::Sleep => return woken(),
        };
        let (mut fds, ranks): (Vec<libc::pollfd>, Vec<usize>) = self
            .peers
            .list
            .iter()
            .flatten()
            .filter(|p| p.is_open())
            .filter_map(|p| {
                let mut events = if p.paused { 0 } else { libc::POLLIN };
                if p.has_output() {
                    events |= libc::POLLOUT;
                }
                let fd = libc::pollfd {
                    fd: p.link.fd.as_raw_fd(),
                    events,
                    revents: 0,
                };
                (events != 0).then_some((fd, p.rank()))
            })
            .unzip();
        if fds.is_empty() {
            return woken();
        }
        let started = Instant::now();
        let mut looked = started;
        let mut round = 0u32;
        loop {
            if woken() {
                return true;
            }
            // The clock is read every few rounds only: it costs more than a
            // round.
            round = round.wrapping_add(1);
            if !every.is_zero() && (round % 16 != 0 || looked.elapsed() < every) {
                std::hint::spin_loop();
                continue;
            }
            looked = Instant::now();
            if poll_descriptors(&mut fds, Some(Duration::ZERO)).is_err() {
                return true;
            }
            if fds.iter().any(|f| f.revents != 0) {
                let ready = fds.iter().zip(&ranks).filter(|(f, _)| f.revents != 0).map(|(_, r)| *r);
                *self.found_ready.borrow_mut() = Some(ready.collect());
                return true;
            }
            if started.elapsed() >= poll_for {
                return false;
            }
            if self.wait == WaitMode::Yield {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Writes what it can, reads what has arrived, and hands whole messages
    /// to `deliver`; true if anything moved. With [`Wait::Until`], sleeps in
    /// `poll` when there is nothing to do, until a socket is ready or the
    /// deadline passes.
    pub fn progress(&mut self, deliver: &mut Delivery<'_>, wait: Wait, sleeping: &Sleeping<'_>) -> Result<bool> {
        // Having written something is progress: the caller re-checks first.
        let wrote = self.peers.flush_all()?;
        let wait = if wrote { Wait::No } else { wait };
        let timeout = match wait {
            Wait::No | Wait::Once => Some(Duration::ZERO),
            Wait::Until(None) => None,
            Wait::Until(Some(deadline)) => Some(deadline.saturating_duration_since(Instant::now())),
        };
        let (mut fds, ranks) = self.watch_list(deliver);
        let found = self.found_ready.borrow_mut().take();
        match found {
            // Polled a moment ago, with nothing done since: those sockets
            // are ready (the others are looked at next time).
            Some(ready) if timeout == Some(Duration::ZERO) => {
                for (fd, rank) in fds.iter_mut().zip(&ranks) {
                    if ready.contains(rank) {
                        fd.revents = fd.events;
                    }
                }
            }
            // With no open connection there is nothing to wait for.
            _ if fds.is_empty() => {}
            _ => {
                if timeout != Some(Duration::ZERO) {
                    sleeping(deliver);
                }
                poll_descriptors(&mut fds, timeout)?;
            }
        }
        let max = self.peers.max_message;
        let mut moved = wrote;
        for (fd, rank) in fds.iter().zip(ranks) {
            let Some(p) = self.peers.list[rank].as_mut().filter(|_| fd.revents != 0) else {
                continue;
            };
            moved |= p.flush()?;
            if !p.paused {
                moved |= p.read_available(max, deliver, true)?;
            }
        }
        Ok(moved)
    }

    /// The sockets worth waiting on, each with what to wait for, and the
    /// rank of each. A peer this rank holds enough from is not read (nor
    /// polled for), until a receive for it is posted.
    fn watch_list(&mut self, deliver: &Delivery<'_>) -> (Vec<libc::pollfd>, Vec<usize>) {
        let mut fds = Vec::with_capacity(self.peers.list.len());
        let mut ranks = Vec::with_capacity(self.peers.list.len());
        for (rank, p) in self.peers.list.iter_mut().enumerate() {
            let Some(p) = p.as_mut().filter(|p| p.is_open()) else {
                continue;
            };
            p.paused = !deliver.wants(rank);
            let mut events = if p.paused { 0 } else { libc::POLLIN };
            if p.has_output() {
                events |= libc::POLLOUT;
            }
            if events != 0 {
                fds.push(libc::pollfd {
                    fd: p.link.fd.as_raw_fd(),
                    events,
                    revents: 0,
                });
                ranks.push(rank);
            }
        }
        (fds, ranks)
    }

    /// Gets ready to sleep without the engine held: the sockets to watch
    /// (maybe none), or `None` if something was written (the caller
    /// re-checks first).
    pub fn prepare_sleep(&mut self, deliver: &Delivery<'_>) -> Result<Option<Vec<libc::pollfd>>> {
        if self.peers.flush_all()? {
            return Ok(None);
        }
        // With no socket to watch (every peer held back by the queue
        // bound), the thread still sleeps, on its own wake-up descriptor
        // alone: another thread of the rank that posts a receive wakes it.
        let (fds, _) = self.watch_list(deliver);
        Ok(Some(fds))
    }

    /// Reads what peers that have not said Bye send, until `until` or until
    /// every peer has said it.
    fn read_on_until(&mut self, until: Instant, deliver: &mut Delivery<'_>, sleeping: &Sleeping<'_>) {
        while self.peers.any_may_send_more() && Instant::now() < until {
            if self.progress(deliver, Wait::Until(Some(until)), sleeping).is_err() {
                break;
            }
        }
    }

    /// Sends everything queued, says Bye to every peer and waits until the
    /// bytes are in the kernel. Messages still arriving are delivered; then
    /// it stops reading and counts what is left in each socket for the
    /// report (see `super::last_look`).
    pub fn finish(&mut self, deliver: &mut Delivery<'_>, sleeping: &Sleeping<'_>) -> Result<()> {
        self.peers.queue_byes();
        let mut first = Ok(());
        while self.peers.pending_output() {
            // A peer that has gone does not keep the others from their Bye.
            if let Err(e) = self.progress(deliver, Wait::Until(None), sleeping) {
                first = first.and(Err(e));
            }
        }
        // Read on until every peer has said Bye, for a while: a message
        // still in flight is then read whole (and reported if nobody
        // received it), not dropped with the socket. A peer that is not
        // finalizing sends nothing; after FINISH_WAIT this rank goes. What
        // arrives meanwhile is kept up to the queue bound.
        deliver.keep_to_bound();
        let until = Instant::now() + FINISH_WAIT;
        self.read_on_until(until, deliver, sleeping);
        // Over TCP a write into a connection about to close succeeds, and
        // its bytes would vanish uncounted: shut this side down first, so
        // that a peer still sending sees it beside the stream
        // (`Link::peer_hung_up`) within HANGUP_LOOK and gets `PeerGone`,
        // and read on for twice that, so that what it sent meanwhile is
        // counted.
        let mut shut_any = false;
        for p in self.peers.list.iter_mut().flatten() {
            if p.link.is_tcp() && p.is_open() && p.may_send_more() {
                let _ = nix::sys::socket::shutdown(p.link.fd.as_raw_fd(), nix::sys::socket::Shutdown::Write);
                shut_any = true;
            }
        }
        if shut_any {
            self.read_on_until(Instant::now() + 2 * HANGUP_LOOK, deliver, sleeping);
        }
        // Close, then take a last look: what a peer wrote before this rank
        // stopped reading is in the socket and counted here; a write after
        // it fails (EPIPE), and the peer's send with it.
        let max = self.peers.max_message;
        let mut reading_on = Vec::new();
        for p in self.peers.list.iter_mut().flatten() {
            // Not over TCP: a TCP socket shut for reading reads as ended at
            // once, and its peer's writes still succeed; that peer shuts
            // its own side down instead (see `Link::peer_hung_up`).
            if !p.link.is_tcp() {
                if let Err(e) = nix::sys::socket::shutdown(p.link.fd.as_raw_fd(), nix::sys::socket::Shutdown::Read) {
                    // Without it a write after the look would vanish unseen.
                    first = first.and(Err(Error::io(
                        format!("closing the link to rank {}", p.rank()),
                        e.into(),
                    )));
                }
            }
            match p.last_look(max, deliver) {
                Ok(false) if p.link.is_tcp() && p.may_send_more() => reading_on.push(p.rank()),
                Ok(_) => {}
                Err(e) => first = first.and(Err(e)),
            }
        }
        // Over TCP what a peer that has not said Bye wrote may still be in
        // its kernel, waiting for room in this side's: read on to the end
        // (the peer shuts its side down once it sees this one's), while
        // bytes keep coming, so that every send that succeeded is counted.
        let mut quiet_since = Instant::now();
        while !reading_on.is_empty() {
            let left = LAST_LOOK_QUIET.saturating_sub(quiet_since.elapsed());
            if left.is_zero() {
                break;
            }
            let mut fds: Vec<libc::pollfd> = reading_on
                .iter()
                .filter_map(|r| self.peers.list[*r].as_ref())
                .map(|p| libc::pollfd {
                    fd: p.link.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            if poll_descriptors(&mut fds, Some(left)).is_err() {
                break;
            }
            let ready: Vec<usize> = fds
                .iter()
                .zip(&reading_on)
                .filter(|(f, _)| f.revents != 0)
                .map(|(_, r)| *r)
                .collect();
            if !ready.is_empty() {
                quiet_since = Instant::now();
            }
            for rank in ready {
                let Some(p) = self.peers.list[rank].as_mut() else {
                    continue;
                };
                let ended = match p.last_look(max, deliver) {
                    Ok(ended) => ended,
                    Err(e) => {
                        first = first.and(Err(e));
                        true
                    }
                };
                if ended {
                    reading_on.retain(|r| *r != rank);
                }
            }
        }
        first
    }
}
