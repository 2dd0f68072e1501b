//! A mesh of authenticated stream sockets between all ranks, driven by one
//! `poll` loop: no thread per peer.
//!
//! Connections are made once at start-up: each rank connects to every lower
//! rank and accepts every higher one, so the dependency chain always points
//! down and start-up cannot deadlock. After the handshake every socket is
//! non-blocking and only [`SocketMesh::progress`] touches it.

use std::collections::VecDeque;
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
use crate::matching::Envelope;
use crate::wire::{Card, HEADER_LEN, Header, Kind};

use super::{Delivery, SendTicket, Wait};

/// How long start-up waits for a peer to connect or answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes read from a socket per `recv` while parsing small frames.
const STAGING: usize = 256 << 10;
/// Frames gathered into one `sendmsg`.
const MAX_IOVECS: usize = 64;

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

/// One outgoing frame and how much of it has been written.
#[derive(Debug)]
struct Outgoing {
    header: [u8; HEADER_LEN],
    payload: Vec<u8>,
    written: usize,
}

impl Outgoing {
    fn total(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// A frame being read: its header, and the payload so far.
#[derive(Debug)]
struct Incoming {
    header: Header,
    payload: Vec<u8>,
    filled: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerState {
    Open,
    /// The peer said Bye; the socket may still hold nothing more.
    Finished,
    /// The connection is closed.
    Gone,
}

#[derive(Debug)]
struct Peer {
    rank: usize,
    name: String,
    fd: OwnedFd,
    state: PeerState,
    /// The connection closed without a Bye: the peer died.
    died: bool,
    out: VecDeque<Outgoing>,
    /// Sequence number of the first frame in `out`; frames below it are sent.
    sent: u64,
    queued: u64,
    staging: Vec<u8>,
    staged: std::ops::Range<usize>,
    incoming: Option<Incoming>,
}

/// The socket mesh of one rank.
#[derive(Debug)]
pub(crate) struct SocketMesh {
    me: usize,
    peers: Vec<Option<Peer>>,
    max_message: u64,
}

impl SocketMesh {
    /// Connects to every other rank, proving the secret on each connection.
    pub fn connect(listener: Listener, id: Identity<'_>, cards: &[Card], max_message: u64) -> Result<SocketMesh> {
        let me = id.me as usize;
        let size = cards.len();
        let mut peers: Vec<Option<Peer>> = (0..size).map(|_| None).collect();
        for (rank, card) in cards.iter().enumerate().take(me) {
            let name = format!("rank {rank}");
            let Card::Unix { name: sock } = card;
            let addr = SocketAddr::from_abstract_name(sock.as_bytes())
                .map_err(|e| Error::io(format!("naming the socket of {name}"), e))?;
            let mut stream =
                UnixStream::connect_addr(&addr).map_err(|e| Error::io(format!("connecting to {name}"), e))?;
            set_timeouts(&stream, &name)?;
            auth::connect(&mut stream, id, rank as u32, &name)?;
            peers[rank] = Some(Peer::new(rank, name, stream)?);
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
            peers[rank] = Some(Peer::new(rank, format!("rank {rank}"), stream)?);
            missing -= 1;
        }
        Ok(SocketMesh { me, peers, max_message })
    }

    fn peer(&mut self, rank: usize) -> &mut Peer {
        match self.peers[rank].as_mut() {
            Some(p) => p,
            None => unreachable!("rank {} has no connection to itself", self.me),
        }
    }

    /// Queues a frame for `dest` and tries to write it at once.
    pub fn queue(&mut self, dest: usize, header: Header, payload: Vec<u8>) -> Result<SendTicket> {
        let peer = self.peer(dest);
        if peer.state == PeerState::Gone {
            return Err(Error::PeerGone { rank: dest });
        }
        let seq = peer.queued;
        peer.queued += 1;
        peer.out.push_back(Outgoing {
            header: header.encode(),
            payload,
            written: 0,
        });
        peer.flush()?;
        Ok(SendTicket { dest, seq })
    }

    /// True once the frame has been handed to the kernel in full.
    pub fn is_sent(&self, ticket: SendTicket) -> bool {
        self.peers[ticket.dest].as_ref().is_none_or(|p| ticket.seq < p.sent)
    }

    /// True if `rank` can send nothing more.
    pub fn is_gone(&self, rank: usize) -> bool {
        self.peers[rank]
            .as_ref()
            .is_none_or(|p| p.state != PeerState::Open && p.incoming.is_none() && p.staged.is_empty())
    }

    /// True if `rank`'s connection closed without a goodbye.
    pub fn died(&self, rank: usize) -> bool {
        self.peers[rank].as_ref().is_some_and(|p| p.died)
    }

    /// True if `rank`'s connection is closed, so nothing more can be sent to it.
    pub fn is_closed(&self, rank: usize) -> bool {
        self.peers[rank].as_ref().is_none_or(|p| p.state == PeerState::Gone)
    }

    /// Writes what it can, reads what has arrived, and hands whole messages
    /// to `deliver`. With [`Wait::Until`], sleeps in `poll` when there is
    /// nothing to do, until a socket is ready or the deadline passes.
    pub fn progress(&mut self, deliver: &mut Delivery<'_>, wait: Wait) -> Result<()> {
        let mut wrote = false;
        for p in self.peers.iter_mut().flatten() {
            wrote |= p.flush()?;
        }
        // Having written something is progress: the caller re-checks first.
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
            let mut fds = Vec::with_capacity(self.peers.len());
            let mut ranks = Vec::with_capacity(self.peers.len());
            for p in self.peers.iter().flatten() {
                if p.state == PeerState::Gone {
                    continue;
                }
                let mut ev = PollFlags::POLLIN;
                if !p.out.is_empty() {
                    ev |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(p.fd.as_fd(), ev));
                ranks.push(p.rank);
            }
            // Staged bytes are already here: do not sleep on them.
            let staged = self.peers.iter().flatten().any(|p| !p.staged.is_empty());
            let timeout = if staged { PollTimeout::ZERO } else { timeout };
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
        for p in self.peers.iter_mut().flatten() {
            if !p.staged.is_empty() && !ready.contains(&p.rank) {
                ready.push(p.rank);
            }
        }
        let max = self.max_message;
        for rank in ready {
            let p = self.peer(rank);
            p.flush()?;
            p.read_available(max, deliver)?;
        }
        Ok(())
    }

    /// Sends everything queued, says Bye to every peer and waits until the
    /// bytes are in the kernel. Messages still arriving are delivered.
    pub fn finish(&mut self, deliver: &mut Delivery<'_>) -> Result<()> {
        let me = self.me as u32;
        for p in self.peers.iter_mut().flatten() {
            if p.state != PeerState::Gone {
                p.out.push_back(Outgoing {
                    header: Header::plain(Kind::Bye, me, 0).encode(),
                    payload: Vec::new(),
                    written: 0,
                });
                p.queued += 1;
            }
        }
        while self
            .peers
            .iter()
            .flatten()
            .any(|p| p.state != PeerState::Gone && !p.out.is_empty())
        {
            self.progress(deliver, Wait::Until(None))?;
        }
        Ok(())
    }
}

impl Peer {
    fn new(rank: usize, name: String, stream: UnixStream) -> Result<Peer> {
        stream
            .set_nonblocking(true)
            .map_err(|e| Error::io(format!("configuring the connection to {name}"), e))?;
        Ok(Peer {
            rank,
            name,
            fd: OwnedFd::from(stream),
            state: PeerState::Open,
            died: false,
            out: VecDeque::new(),
            sent: 0,
            queued: 0,
            staging: vec![0; STAGING],
            staged: 0..0,
            incoming: None,
        })
    }

    /// Writes queued frames until the kernel's buffer is full; true if it
    /// wrote anything.
    fn flush(&mut self) -> Result<bool> {
        let mut wrote = false;
        while !self.out.is_empty() && self.state != PeerState::Gone {
            let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(2 * MAX_IOVECS.min(self.out.len()));
            for o in self.out.iter().take(MAX_IOVECS) {
                if o.written < HEADER_LEN {
                    iov.push(IoSlice::new(&o.header[o.written..]));
                    iov.push(IoSlice::new(&o.payload));
                } else {
                    iov.push(IoSlice::new(&o.payload[o.written - HEADER_LEN..]));
                }
            }
            let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
            let mut n = match sendmsg::<()>(self.fd.as_raw_fd(), &iov, &[], flags, None) {
                Ok(n) => n,
                Err(Errno::EAGAIN) => return Ok(wrote),
                Err(Errno::EINTR) => continue,
                Err(Errno::EPIPE | Errno::ECONNRESET) => {
                    // The peer has closed. Losing our Bye is fine (it has
                    // finished too); losing a message is not.
                    self.died |= self.state == PeerState::Open;
                    self.state = PeerState::Gone;
                    let lost_message = self.out.iter().any(|o| o.header[5] != Kind::Bye as u8);
                    self.out.clear();
                    self.sent = self.queued;
                    return if lost_message {
                        Err(Error::PeerGone { rank: self.rank })
                    } else {
                        Ok(wrote)
                    };
                }
                Err(e) => return Err(Error::io(format!("sending to {}", self.name), e.into())),
            };
            wrote = true;
            while n > 0 {
                let Some(front) = self.out.front_mut() else { break };
                let take = n.min(front.total() - front.written);
                front.written += take;
                n -= take;
                if front.written == front.total() {
                    self.out.pop_front();
                    self.sent += 1;
                }
            }
        }
        Ok(wrote)
    }

    /// Reads until the socket is empty, delivering every whole message.
    fn read_available(&mut self, max_message: u64, deliver: &mut Delivery<'_>) -> Result<()> {
        loop {
            self.parse(max_message, deliver)?;
            if self.state == PeerState::Gone {
                return Ok(());
            }
            // Large payloads are read straight into their buffer.
            let n = if let Some(inc) = self.incoming.as_mut().filter(|i| i.payload.len() - i.filled >= STAGING) {
                match recv(
                    self.fd.as_raw_fd(),
                    &mut inc.payload[inc.filled..],
                    MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(n) => {
                        inc.filled += n;
                        n
                    }
                    Err(e) => return self.read_failed(e),
                }
            } else {
                if self.staged.start > 0 {
                    self.staging.copy_within(self.staged.clone(), 0);
                    self.staged = 0..self.staged.len();
                }
                let end = self.staged.end;
                match recv(self.fd.as_raw_fd(), &mut self.staging[end..], MsgFlags::MSG_DONTWAIT) {
                    Ok(n) => {
                        self.staged.end += n;
                        n
                    }
                    Err(e) => return self.read_failed(e),
                }
            };
            if n == 0 {
                return self.closed();
            }
        }
    }

    fn read_failed(&mut self, e: Errno) -> Result<()> {
        match e {
            Errno::EAGAIN | Errno::EINTR => Ok(()),
            Errno::ECONNRESET => self.closed(),
            e => Err(Error::io(format!("receiving from {}", self.name), e.into())),
        }
    }

    /// The peer closed its end.
    fn closed(&mut self) -> Result<()> {
        let was = self.state;
        self.state = PeerState::Gone;
        self.died = was == PeerState::Open;
        if self.incoming.is_some() || !self.staged.is_empty() {
            self.incoming = None;
            self.staged = 0..0;
            return Err(Error::protocol(
                &self.name,
                "stream",
                "the connection closed in the middle of a message (the rank died?)",
            ));
        }
        if was == PeerState::Open && !self.out.is_empty() {
            return Err(Error::PeerGone { rank: self.rank });
        }
        Ok(())
    }

    /// Turns staged bytes into messages.
    fn parse(&mut self, max_message: u64, deliver: &mut Delivery<'_>) -> Result<()> {
        loop {
            if self.incoming.is_none() {
                if self.staged.len() < HEADER_LEN {
                    return Ok(());
                }
                let mut hb = [0u8; HEADER_LEN];
                hb.copy_from_slice(&self.staging[self.staged.start..self.staged.start + HEADER_LEN]);
                self.staged.start += HEADER_LEN;
                let header = match self.check_header(&hb, max_message) {
                    Ok(h) => h,
                    Err(e) => {
                        self.state = PeerState::Gone;
                        return Err(e);
                    }
                };
                if header.kind == Kind::Bye {
                    self.state = PeerState::Finished;
                    continue;
                }
                let len = usize::try_from(header.len)
                    .map_err(|_| Error::protocol(&self.name, "length", "larger than this machine's address space"))?;
                let mut payload = Vec::new();
                payload.try_reserve_exact(len).map_err(|_| {
                    Error::io(
                        format!("allocating {len} bytes for a message from {}", self.name),
                        std::io::Error::from(std::io::ErrorKind::OutOfMemory),
                    )
                })?;
                payload.resize(len, 0);
                self.incoming = Some(Incoming {
                    header,
                    payload,
                    filled: 0,
                });
            }
            if let Some(inc) = self.incoming.as_mut() {
                let take = (inc.payload.len() - inc.filled).min(self.staged.len());
                inc.payload[inc.filled..inc.filled + take]
                    .copy_from_slice(&self.staging[self.staged.start..self.staged.start + take]);
                inc.filled += take;
                self.staged.start += take;
                if inc.filled < inc.payload.len() {
                    return Ok(());
                }
            }
            if let Some(inc) = self.incoming.take() {
                deliver(Envelope {
                    source: self.rank,
                    tag: inc.header.tag,
                    context: inc.header.context,
                    kind: inc.header.kind,
                    payload: inc.payload,
                });
            }
            if self.staged.is_empty() {
                self.staged = 0..0;
            }
        }
    }

    fn check_header(&self, hb: &[u8; HEADER_LEN], max_message: u64) -> Result<Header> {
        let header = Header::decode(hb, &self.name, max_message)?;
        if header.source as usize != self.rank {
            return Err(Error::protocol(
                &self.name,
                "source",
                format!("the frame claims to come from rank {}", header.source),
            ));
        }
        if !header.kind.is_message() && header.kind != Kind::Bye {
            return Err(Error::protocol(
                &self.name,
                "kind",
                format!(
                    "{:?} frames are not expected between ranks after the handshake",
                    header.kind
                ),
            ));
        }
        if self.state != PeerState::Open {
            return Err(Error::protocol(
                &self.name,
                "kind",
                "a frame arrived after the peer said Bye",
            ));
        }
        Ok(header)
    }
}

fn set_timeouts(stream: &UnixStream, name: &str) -> Result<()> {
    stream
        .set_read_timeout(Some(CONNECT_TIMEOUT))
        .and_then(|_| stream.set_write_timeout(Some(CONNECT_TIMEOUT)))
        .map_err(|e| Error::io(format!("configuring the connection to {name}"), e))
}

fn wait_readable(listener: &UnixListener, deadline: Instant, peers: &[Option<Peer>], me: usize) -> Result<()> {
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
