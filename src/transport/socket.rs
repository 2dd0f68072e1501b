//! A mesh of Unix-domain stream sockets between the ranks of a node,
//! driven by one `poll` loop: no thread per peer.
//!
//! The launcher makes a socket pair for every pair of ranks and hands each
//! rank its ends over the rank's private control channel, as it does the
//! shared-memory segments: no rank listens, so there is nothing anyone
//! could connect to, no name to find or squat, and nothing left behind.
//! After start-up every socket is non-blocking and only
//! [`SocketMesh::progress`] touches it.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, recv, sendmsg};

use crate::error::{Error, Result};

use super::peers::Peers;
use super::stream::{Io, Link, Peer};
use super::{Delivery, Wait};

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

/// A connected Unix-domain socket to one peer.
#[derive(Debug)]
pub(crate) struct UnixLink {
    fd: OwnedFd,
}

impl UnixLink {
    /// A link over a socket the launcher made, after checking that it is a
    /// connected Unix stream socket.
    fn new(fd: OwnedFd, name: &str) -> Result<UnixLink> {
        let bad = |why: String| Error::protocol("the launcher", "links", format!("the link to {name} {why}"));
        let kind = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SockType)
            .map_err(|e| bad(format!("is not a socket ({e})")))?;
        if kind != nix::sys::socket::SockType::Stream {
            return Err(bad(format!("is a {kind:?} socket, not a stream")));
        }
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
            .map_err(|e| Error::io(format!("configuring the connection to {name}"), e.into()))?;
        Ok(UnixLink { fd })
    }
}

impl Link for UnixLink {
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

    fn read(&mut self, buf: &mut [u8]) -> Result<Io> {
        loop {
            return match recv(self.fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
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
    pub peers: Peers<UnixLink>,
}

impl SocketMesh {
    /// The mesh of rank `me` of `size` over `links`: its ends of the socket
    /// pairs to the other ranks, by rank.
    pub fn from_links(me: usize, size: usize, links: Vec<(usize, OwnedFd)>, max_message: u64) -> Result<SocketMesh> {
        let mut list: Vec<Option<Peer<UnixLink>>> = (0..size).map(|_| None).collect();
        for (rank, fd) in links {
            if rank >= size || rank == me || list[rank].is_some() {
                return Err(Error::protocol(
                    "the launcher",
                    "links",
                    format!("a link to rank {rank}, which is not another rank of this job, or a second one"),
                ));
            }
            list[rank] = Some(Peer::new(me, rank, UnixLink::new(fd, &format!("rank {rank}"))?));
        }
        Ok(SocketMesh {
            peers: Peers { me, list, max_message },
        })
    }

    /// Writes what it can, reads what has arrived, and hands whole messages
    /// to `deliver`; true if anything moved. With [`Wait::Until`], sleeps in
    /// `poll` when there is nothing to do, until a socket is ready or the
    /// deadline passes.
    pub fn progress(&mut self, deliver: &mut Delivery<'_>, wait: Wait, sleeping: &dyn Fn()) -> Result<bool> {
        // Having written something is progress: the caller re-checks first.
        let wrote = self.peers.flush_all()?;
        let wait = if wrote { Wait::No } else { wait };
        let timeout = match wait {
            Wait::No | Wait::Once => Some(Duration::ZERO),
            Wait::Until(None) => None,
            Wait::Until(Some(deadline)) => Some(deadline.saturating_duration_since(Instant::now())),
        };
        let (mut fds, ranks) = self.watch_list(deliver);
        // With no open connection there is nothing to wait for.
        if !fds.is_empty() {
            if timeout != Some(Duration::ZERO) {
                sleeping();
            }
            poll_descriptors(&mut fds, timeout)?;
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

    /// Sends everything queued, says Bye to every peer and waits until the
    /// bytes are in the kernel. Messages still arriving are delivered; then
    /// it stops reading and counts what is left in each socket for the
    /// report (see `super::last_look`).
    pub fn finish(&mut self, deliver: &mut Delivery<'_>, sleeping: &dyn Fn()) -> Result<()> {
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
        while self.peers.any_may_send_more() && Instant::now() < until {
            if self.progress(deliver, Wait::Until(Some(until)), sleeping).is_err() {
                break;
            }
        }
        // Close, then take a last look: what a peer wrote before this rank
        // stopped reading is in the socket and counted here; a write after
        // it fails (EPIPE), and the peer's send with it.
        let max = self.peers.max_message;
        for p in self.peers.list.iter_mut().flatten() {
            if let Err(e) = nix::sys::socket::shutdown(p.link.fd.as_raw_fd(), nix::sys::socket::Shutdown::Read) {
                // Without it a write after the look would vanish unseen.
                first = first.and(Err(Error::io(
                    format!("closing the link to rank {}", p.rank()),
                    e.into(),
                )));
            }
            if let Err(e) = p.last_look(max, deliver) {
                first = first.and(Err(e));
            }
        }
        first
    }
}
