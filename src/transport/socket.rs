//! A mesh of authenticated stream sockets between all ranks, driven by one
//! `poll` loop: no thread per peer.
//!
//! Connections are made once at start-up: each rank connects to every lower
//! rank and accepts every higher one, so the dependency chain always points
//! down and start-up cannot deadlock. After the handshake every socket is
//! non-blocking and only [`SocketMesh::progress`] touches it.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, recv, sendmsg};

use crate::auth::{self, Identity};
use crate::error::{Error, Result};
use crate::wire::Card;

use super::peers::Peers;
use super::stream::{Io, Link, Peer};
use super::{Delivery, Wait};

/// How long start-up waits for a peer to connect or answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// A rank's listening socket, opened before it registers with the launcher.
#[derive(Debug)]
pub(crate) struct Listener {
    listener: UnixListener,
    card: Card,
}

impl Listener {
    /// Listens on an abstract Unix socket named after the job and rank.
    pub fn open(job: u64, rank: usize) -> Result<Listener> {
        let name = format!("spmd.{job:016x}.{rank}");
        let addr = SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(|e| Error::io(format!("naming socket {name}"), e))?;
        let listener =
            UnixListener::bind_addr(&addr).map_err(|e| Error::io(format!("listening on abstract socket {name}"), e))?;
        Ok(Listener {
            listener,
            card: Card::Unix { name },
        })
    }

    /// The card peers use to reach this listener.
    pub fn card(&self) -> &Card {
        &self.card
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
    /// Connects to every other rank, proving the secret on each connection.
    pub fn connect(listener: Listener, id: Identity<'_>, cards: &[Card], max_message: u64) -> Result<SocketMesh> {
        let me = id.me as usize;
        let size = cards.len();
        let mut peers: Vec<Option<Peer<UnixLink>>> = (0..size).map(|_| None).collect();
        for (rank, card) in cards.iter().enumerate().take(me) {
            let name = format!("rank {rank}");
            let Card::Unix { name: sock } = card else {
                return Err(Error::protocol(
                    "the launcher",
                    "table",
                    format!("{name} has no socket card"),
                ));
            };
            let addr = SocketAddr::from_abstract_name(sock.as_bytes())
                .map_err(|e| Error::io(format!("naming the socket of {name}"), e))?;
            let mut stream =
                UnixStream::connect_addr(&addr).map_err(|e| Error::io(format!("connecting to {name}"), e))?;
            set_timeouts(&stream, &name)?;
            auth::connect(&mut stream, id, rank as u32, &name)?;
            peers[rank] = Some(Peer::new(rank, UnixLink::new(stream, &name)?));
        }
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        listener
            .listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("making the listener non-blocking", e))?;
        let mut missing = size - me - 1;
        while missing > 0 {
            let mut stream = match listener.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    wait_readable(&listener.listener, deadline, &peers, me)?;
                    continue;
                }
                Err(e) => return Err(Error::io("accepting a peer connection", e)),
            };
            stream
                .set_nonblocking(false)
                .map_err(|e| Error::io("configuring a peer connection", e))?;
            set_timeouts(&stream, "a connecting peer")?;
            // A connection that fails the handshake is dropped; a real peer
            // that never arrives is reported when the deadline passes.
            let Ok(rank) = auth::accept(&mut stream, id, "a connecting peer") else {
                continue;
            };
            let rank = rank as usize;
            if rank <= me || rank >= size || peers[rank].is_some() {
                continue;
            }
            peers[rank] = Some(Peer::new(rank, UnixLink::new(stream, &format!("rank {rank}"))?));
            missing -= 1;
        }
        Ok(SocketMesh {
            peers: Peers {
                me,
                list: peers,
                max_message,
            },
        })
    }

    /// Writes what it can, reads what has arrived, and hands whole messages
    /// to `deliver`. With [`Wait::Until`], sleeps in `poll` when there is
    /// nothing to do, until a socket is ready or the deadline passes.
    pub fn progress(&mut self, deliver: &mut Delivery<'_>, wait: Wait) -> Result<()> {
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
    pub fn finish(&mut self, deliver: &mut Delivery<'_>) -> Result<()> {
        self.peers.queue_byes();
        while self.peers.pending_output() {
            self.progress(deliver, Wait::Until(None))?;
        }
        Ok(())
    }
}

fn set_timeouts(stream: &UnixStream, name: &str) -> Result<()> {
    stream
        .set_read_timeout(Some(CONNECT_TIMEOUT))
        .and_then(|_| stream.set_write_timeout(Some(CONNECT_TIMEOUT)))
        .map_err(|e| Error::io(format!("configuring the connection to {name}"), e))
}

fn wait_readable(
    listener: &UnixListener,
    deadline: Instant,
    peers: &[Option<Peer<UnixLink>>],
    me: usize,
) -> Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        let missing: Vec<String> = (me + 1..peers.len())
            .filter(|r| peers[*r].is_none())
            .map(|r| r.to_string())
            .collect();
        return Err(Error::Timeout {
            what: format!("ranks {} to connect", missing.join(", ")),
            seconds: CONNECT_TIMEOUT.as_secs_f64(),
        });
    }
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, ms) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(e) => Err(Error::io("waiting for peers to connect", e.into())),
    }
}
