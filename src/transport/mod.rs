//! The ways of moving bytes between ranks, behind one handle. The rest of the
//! library sees only [`Transport`]; which flavour it is stays in here.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::matching::{ReceiveId, Sink};
use crate::wire::Header;

mod fastbox;
mod node;
mod peers;
mod segment;
mod shm;
mod socket;
mod stream;
mod window;

pub(crate) use node::{Fold, NODE_PART_MAX, NodeCall};
use shm::{ShmListener, ShmMesh};
use socket::{Listener, SocketMesh};
pub(crate) use window::WindowJob;

/// Where a rank can be reached, opened before it registers: the first half
/// of a transport.
#[derive(Debug)]
pub(crate) enum Endpoint {
    Socket(Listener),
    Shm(ShmListener),
}

impl Endpoint {
    /// Opens this rank's endpoint for the transport `kind` names (`shm`, the
    /// default, or `socket`).
    pub fn open(kind: Option<&str>, p: &crate::bootstrap::Placement) -> Result<Endpoint> {
        match kind.unwrap_or("shm") {
            "shm" => ShmListener::open(p.job, p.rank, p.size, p.local_size).map(Endpoint::Shm),
            "socket" => Listener::open(p.job, p.rank).map(Endpoint::Socket),
            other => Err(Error::Bootstrap(format!(
                "{}={other:?}: expected \"shm\" or \"socket\"",
                crate::wire::env::TRANSPORT
            ))),
        }
    }

    /// The card that tells peers how to reach this endpoint.
    pub fn card(&self) -> &crate::wire::Card {
        match self {
            Endpoint::Socket(l) => l.card(),
            Endpoint::Shm(l) => l.card(),
        }
    }
}

/// Receives each whole message a transport reads.
pub(crate) type Delivery<'a> = dyn Sink + 'a;

/// Whether [`Transport::progress`] may sleep when nothing is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Do what can be done now and return.
    No,
    /// Sleep until something is ready, or until the deadline if there is one.
    Until(Option<Instant>),
}

/// Identifies one queued frame, to ask whether it has been sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SendTicket {
    dest: usize,
    seq: u64,
}

/// The transport of one rank.
#[derive(Debug)]
pub(crate) enum Transport {
    /// A job of one rank: there is nobody to talk to.
    Alone,
    /// Stream sockets between all ranks.
    Socket(SocketMesh),
    /// Rings in shared memory between all ranks (one node).
    Shm(ShmMesh),
}

impl Transport {
    /// Connects to all peers given their cards (indexed by rank).
    pub fn connect(
        endpoint: Endpoint,
        id: crate::auth::Identity<'_>,
        cards: &[crate::wire::Card],
        max_message: u64,
    ) -> Result<Transport> {
        match endpoint {
            Endpoint::Socket(l) => SocketMesh::connect(l, id, cards, max_message).map(Transport::Socket),
            Endpoint::Shm(l) => ShmMesh::connect(l, id.me as usize, cards, max_message).map(Transport::Shm),
        }
    }

    /// Queues one frame to another rank.
    pub fn queue(&mut self, dest: usize, header: Header, payload: Vec<u8>) -> Result<SendTicket> {
        match self {
            Transport::Alone => Err(Error::InvalidRank { rank: dest, size: 1 }),
            Transport::Socket(m) => m.peers.queue(dest, header, payload),
            Transport::Shm(m) => m.peers.queue(dest, header, payload),
        }
    }

    /// Queues a frame whose payload stays in the caller's memory.
    ///
    /// # Safety
    ///
    /// As for `Peers::queue_borrowed`: `payload` must stay valid until the
    /// frame is sent or [`Transport::own`] has been called for the ticket.
    pub unsafe fn queue_borrowed(&mut self, dest: usize, header: Header, payload: &[u8]) -> Result<SendTicket> {
        match self {
            Transport::Alone => Err(Error::InvalidRank { rank: dest, size: 1 }),
            // SAFETY: passed on from the caller.
            Transport::Socket(m) => unsafe { m.peers.queue_borrowed(dest, header, payload) },
            // SAFETY: passed on from the caller.
            Transport::Shm(m) => unsafe { m.peers.queue_borrowed(dest, header, payload) },
        }
    }

    /// Stops writing a claimed message into the receive's buffer: what has
    /// arrived so far is copied out, and the rest arrives as usual.
    pub fn detach(&mut self, id: ReceiveId) {
        match self {
            Transport::Alone => {}
            Transport::Socket(m) => m.peers.detach(id),
            Transport::Shm(m) => m.peers.detach(id),
        }
    }

    /// Makes a queued frame's borrowed payload owned.
    pub fn own(&mut self, ticket: SendTicket) {
        match self {
            Transport::Alone => {}
            Transport::Socket(m) => m.peers.own(ticket),
            Transport::Shm(m) => m.peers.own(ticket),
        }
    }

    /// True once the frame has left this process's queues.
    pub fn is_sent(&self, ticket: SendTicket) -> bool {
        match self {
            Transport::Alone => true,
            Transport::Socket(m) => m.peers.is_sent(ticket),
            Transport::Shm(m) => m.peers.is_sent(ticket),
        }
    }

    /// True if `rank` will deliver no more messages.
    pub fn is_gone(&self, rank: usize) -> bool {
        match self {
            Transport::Alone => true,
            Transport::Socket(m) => m.peers.is_gone(rank),
            Transport::Shm(m) => m.peers.is_gone(rank),
        }
    }

    /// True if `rank` vanished without saying goodbye (it died).
    pub fn died(&self, rank: usize) -> bool {
        match self {
            Transport::Alone => false,
            Transport::Socket(m) => m.peers.died(rank),
            Transport::Shm(m) => m.peers.died(rank),
        }
    }

    /// True if nothing more can be sent to `rank`.
    pub fn is_closed(&self, rank: usize) -> bool {
        match self {
            Transport::Alone => true,
            Transport::Socket(m) => m.peers.is_closed(rank),
            Transport::Shm(m) => m.peers.is_closed(rank),
        }
    }

    /// Moves bytes and delivers arrived messages; may sleep per `wait`.
    pub fn progress(&mut self, deliver: &mut Delivery<'_>, wait: Wait) -> Result<()> {
        match self {
            Transport::Alone => Ok(()),
            Transport::Socket(m) => m.progress(deliver, wait),
            Transport::Shm(m) => m.progress(deliver, wait),
        }
    }

    /// Runs a node-wide collective in shared memory if this transport can
    /// (every rank on one node, over shared memory); `None` if it cannot.
    pub fn node_collective(
        &mut self,
        deliver: &mut Delivery<'_>,
        call: NodeCall,
        mine: &[u8],
        fold: &mut Fold<'_>,
    ) -> Option<Result<Vec<u8>>> {
        match self {
            Transport::Shm(m) if mine.len() <= NODE_PART_MAX => Some(m.node_collective(deliver, call, mine, fold)),
            _ => None,
        }
    }

    /// Runs a collective of large vectors through shared windows, if this
    /// transport can (every rank on one node, over shared memory); `None`
    /// if it cannot. See [`window::WindowJob`] for `claim`.
    pub fn window_collective(
        &mut self,
        deliver: &mut Delivery<'_>,
        claim: u64,
        job: WindowJob<'_>,
    ) -> Option<Result<()>> {
        match self {
            Transport::Shm(m) => Some(m.window_collective(deliver, claim, job)),
            _ => None,
        }
    }

    /// Flushes everything and tells every peer this rank is done.
    pub fn finish(&mut self, deliver: &mut Delivery<'_>) -> Result<()> {
        match self {
            Transport::Alone => Ok(()),
            Transport::Socket(m) => m.finish(deliver),
            Transport::Shm(m) => m.finish(deliver),
        }
    }
}
