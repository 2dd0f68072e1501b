//! The ways of moving bytes between ranks, behind one handle. The rest of the
//! library sees only [`Transport`]; which flavour it is stays in here.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::matching::Envelope;
use crate::wire::Header;

mod socket;
mod stream;

pub(crate) use socket::Listener;
use socket::SocketMesh;

/// Receives each whole message a transport reads.
pub(crate) type Delivery<'a> = dyn FnMut(Envelope) + 'a;

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
}

impl Transport {
    /// Connects to all peers given their cards (indexed by rank).
    pub fn connect(
        listener: Listener,
        id: crate::auth::Identity<'_>,
        cards: &[crate::wire::Card],
        max_message: u64,
    ) -> Result<Transport> {
        SocketMesh::connect(listener, id, cards, max_message).map(Transport::Socket)
    }

    /// Queues one frame to another rank.
    pub fn queue(&mut self, dest: usize, header: Header, payload: Vec<u8>) -> Result<SendTicket> {
        match self {
            Transport::Alone => Err(Error::InvalidRank { rank: dest, size: 1 }),
            Transport::Socket(m) => m.peers.queue(dest, header, payload),
        }
    }

    /// True once the frame has left this process's queues.
    pub fn is_sent(&self, ticket: SendTicket) -> bool {
        match self {
            Transport::Alone => true,
            Transport::Socket(m) => m.peers.is_sent(ticket),
        }
    }

    /// True if `rank` will deliver no more messages.
    pub fn is_gone(&self, rank: usize) -> bool {
        match self {
            Transport::Alone => true,
            Transport::Socket(m) => m.peers.is_gone(rank),
        }
    }

    /// True if `rank` vanished without saying goodbye (it died).
    pub fn died(&self, rank: usize) -> bool {
        match self {
            Transport::Alone => false,
            Transport::Socket(m) => m.peers.died(rank),
        }
    }

    /// True if nothing more can be sent to `rank`.
    pub fn is_closed(&self, rank: usize) -> bool {
        match self {
            Transport::Alone => true,
            Transport::Socket(m) => m.peers.is_closed(rank),
        }
    }

    /// Moves bytes and delivers arrived messages; may sleep per `wait`.
    pub fn progress(&mut self, deliver: &mut Delivery<'_>, wait: Wait) -> Result<()> {
        match self {
            Transport::Alone => Ok(()),
            Transport::Socket(m) => m.progress(deliver, wait),
        }
    }

    /// Flushes everything and tells every peer this rank is done.
    pub fn finish(&mut self, deliver: &mut Delivery<'_>) -> Result<()> {
        match self {
            Transport::Alone => Ok(()),
            Transport::Socket(m) => m.finish(deliver),
        }
    }
}
