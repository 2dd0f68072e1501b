//! A mesh of authenticated Unix-domain stream sockets between the ranks of
//! a node, driven by one `poll` loop: no thread per peer.
//!
//! Each rank listens on a socket in the job's private directory (mode 0700,
//! made by the launcher), so no other user can connect, or even learn the
//! names. Connections are made once at start-up (see [`super::connect`]):
//! each rank dials every lower rank and accepts every higher one, so the
//! dependency chain always points down and start-up cannot deadlock. After
//! the handshakes the listener is closed and its name removed, every socket
//! is non-blocking, and only [`SocketMesh::progress`] touches it.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, recv, sendmsg};

use crate::auth::Identity;
use crate::error::{Error, Result};
use crate::wire::Card;

use super::connect::{Refused, connect_all};
use super::peers::Peers;
use super::stream::{Io, Link, Peer};
use super::{Delivery, Wait};

/// A rank's listening socket, opened before it registers with the launcher.
#[derive(Debug)]
pub(crate) struct SocketEndpoint {
    listener: UnixListener,
    path: PathBuf,
}

impl SocketEndpoint {
    /// Listens on `dir/<rank>.sock`, after checking that `dir` is a
    /// directory of this user's that nobody else can enter.
    pub fn open(dir: &Path, rank: usize) -> Result<SocketEndpoint> {
        let meta = std::fs::symlink_metadata(dir)
            .map_err(|e| Error::io(format!("inspecting the job directory {}", dir.display()), e))?;
        let uid = nix::unistd::geteuid().as_raw();
        if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
            return Err(Error::Bootstrap(format!(
                "the job directory {} is not a directory of user {uid} closed to others (mode {:o})",
                dir.display(),
                meta.permissions().mode() & 0o7777
            )));
        }
        let path = dir.join(format!("{rank}.sock"));
        let listener =
            UnixListener::bind(&path).map_err(|e| Error::io(format!("listening on {}", path.display()), e))?;
        Ok(SocketEndpoint { listener, path })
    }

    /// Tells peers where to connect.
    pub fn fill(&self, card: &mut Card) {
        card.unix = Some(self.path.display().to_string());
    }
}

impl Drop for SocketEndpoint {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        // The last rank to let go of its name removes the directory (it
        // fails while another name is in it), so that nothing is left even
        // if spmdrun does not live to remove it.
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A connected Unix-domain socket to one peer.
#[derive(Debug)]
pub(crate) struct UnixLink {
    fd: OwnedFd,
}

impl UnixLink {
    fn new(stream: UnixStream, name: &str) -> Result<UnixLink> {
        stream
            .set_nonblocking(true)
            .map_err(|e| Error::io(format!("configuring the connection to {name}"), e))?;
        Ok(UnixLink {
            fd: OwnedFd::from(stream),
        })
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
    /// Connects to every other rank in `ranks` (whose cards are in `cards`,
    /// indexed by rank), proving the secret on each connection. `size` is
    /// the number of ranks in the job.
    pub fn connect(
        endpoint: SocketEndpoint,
        id: Identity<'_>,
        cards: &[Card],
        ranks: &[usize],
        max_message: u64,
    ) -> Result<SocketMesh> {
        let me = id.me as usize;
        let mut dial = Vec::new();
        for &rank in ranks.iter().filter(|r| **r < me) {
            let Some(path) = cards.get(rank).and_then(|c| c.unix.as_ref()) else {
                return Err(Error::protocol(
                    "the launcher",
                    "table",
                    format!("rank {rank} has no socket card"),
                ));
            };
            dial.push((rank, PathBuf::from(path)));
        }
        let expect: Vec<usize> = ranks.iter().copied().filter(|r| *r > me).collect();
        let (streams, refused) = connect_all(&endpoint.listener, id, dial, &expect)?;
        // Everybody is here: the name is not needed any more.
        drop(endpoint);
        report(me, refused);
        let mut list: Vec<Option<Peer<UnixLink>>> = (0..cards.len()).map(|_| None).collect();
        for (rank, stream) in streams {
            list[rank] = Some(Peer::new(rank, UnixLink::new(stream, &format!("rank {rank}"))?));
        }
        Ok(SocketMesh {
            peers: Peers { me, list, max_message },
        })
    }

    /// Writes what it can, reads what has arrived, and hands whole messages
    /// to `deliver`. With [`Wait::Until`], sleeps in `poll` when there is
    /// nothing to do, until a socket is ready or the deadline passes.
    pub fn progress(&mut self, deliver: &mut Delivery<'_>, wait: Wait, sleeping: &dyn Fn()) -> Result<()> {
        // Having written something is progress: the caller re-checks first.
        let wrote = self.peers.flush_all()?;
        let wait = if wrote { Wait::No } else { wait };
        let timeout = match wait {
            Wait::No => PollTimeout::ZERO,
            Wait::Until(None) => PollTimeout::NONE,
            Wait::Until(Some(deadline)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32 + 1).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut ready = Vec::new();
        {
            let mut fds = Vec::with_capacity(self.peers.list.len());
            let mut ranks = Vec::with_capacity(self.peers.list.len());
            for (rank, p) in self.peers.list.iter().enumerate() {
                let Some(p) = p.as_ref().filter(|p| p.is_open()) else {
                    continue;
                };
                let mut ev = PollFlags::POLLIN;
                if p.has_output() {
                    ev |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(p.link.fd.as_fd(), ev));
                ranks.push(rank);
            }
            // With no open connection there is nothing to wait for.
            if !fds.is_empty() {
                if timeout != PollTimeout::ZERO {
                    sleeping();
                }
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(Error::io("waiting for peers (poll)", e.into())),
                }
            }
            for (fd, rank) in fds.iter().zip(ranks) {
                if fd.revents().is_some_and(|r| !r.is_empty()) {
                    ready.push(rank);
                }
            }
        }
        let max = self.peers.max_message;
        for rank in ready {
            if let Some(p) = self.peers.list[rank].as_mut() {
                p.flush()?;
                p.read_available(max, deliver)?;
            }
        }
        Ok(())
    }

    /// Sends everything queued, says Bye to every peer and waits until the
    /// bytes are in the kernel. Messages still arriving are delivered.
    pub fn finish(&mut self, deliver: &mut Delivery<'_>, sleeping: &dyn Fn()) -> Result<()> {
        self.peers.queue_byes();
        let mut first = Ok(());
        while self.peers.pending_output() {
            // A peer that has gone does not keep the others from their Bye.
            if let Err(e) = self.progress(deliver, Wait::Until(None), sleeping) {
                first = first.and(Err(e));
            }
        }
        first
    }
}

/// One line on standard error when strangers knocked during start-up.
fn report(me: usize, refused: Refused) {
    if refused.other_users + refused.failed > 0 {
        eprintln!(
            "spmd: rank {me}: refused {} connections from other users and {} that failed the handshake during start-up",
            refused.other_users, refused.failed
        );
    }
}
