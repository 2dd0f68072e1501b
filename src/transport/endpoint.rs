//! What a rank opens before it registers, the first half of its
//! transport: a shared-memory segment, a TCP listener, both, or nothing;
//! and the card and descriptors that tell the launcher and the peers what
//! it has.

use std::os::fd::BorrowedFd;

use crate::error::{Error, Result};
use crate::wire::{Access, Card, Settings, TransportKind};

use super::shm::ShmEndpoint;
use super::tcp::TcpEndpoint;

/// What a rank makes before it registers: the first half of a transport.
#[derive(Debug)]
pub(crate) enum Endpoint {
    /// Over sockets: nothing (the launcher makes the socket pairs).
    Socket,
    /// Over shared memory: this rank's segment.
    Shm(ShmEndpoint),
    /// Over TCP: this rank's listener for its peers.
    Tcp(TcpEndpoint),
    /// A job that spans nodes: a segment for the node, a listener for the
    /// other nodes.
    Mixed(ShmEndpoint, TcpEndpoint),
}

impl Endpoint {
    /// Opens the endpoint of rank `rank`, local index `local_index` of
    /// `local` ranks on its node in a job of `size`, as the job's settings
    /// say: a segment (the leader's holds a collective region of `region`
    /// bytes), a listener on the address in `access`, both (shared memory
    /// in a job that spans nodes), or nothing.
    pub fn open(
        settings: &Settings,
        access: Option<&Access>,
        rank: usize,
        (local_index, local, size): (usize, usize, usize),
        region: usize,
    ) -> Result<Endpoint> {
        let listen = || match access {
            Some(a) => TcpEndpoint::open(a.listen),
            None => Err(Error::protocol(
                "the launcher",
                "access",
                "a job over TCP, but no keys and address came with the welcome",
            )),
        };
        match settings.transport {
            TransportKind::Shm if local < size => Ok(Endpoint::Mixed(
                ShmEndpoint::create(rank, local_index, local, region, true)?,
                listen()?,
            )),
            TransportKind::Shm => ShmEndpoint::create(rank, local_index, local, region, false).map(Endpoint::Shm),
            TransportKind::Socket => Ok(Endpoint::Socket),
            TransportKind::Tcp => listen().map(Endpoint::Tcp),
        }
    }

    /// The card that tells the launcher and the peers what this rank has.
    pub fn card(&self) -> Card {
        Card {
            shm: matches!(self, Endpoint::Shm(_) | Endpoint::Mixed(..)),
            wake: matches!(self, Endpoint::Mixed(..)),
            tcp: match self {
                Endpoint::Tcp(t) | Endpoint::Mixed(_, t) => Some(t.address()),
                _ => None,
            },
        }
    }

    /// The descriptors that travel with the card: a segment, and the
    /// wake-up socket in a job that spans nodes.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        match self {
            Endpoint::Socket | Endpoint::Tcp(_) => Vec::new(),
            Endpoint::Shm(s) | Endpoint::Mixed(s, _) => std::iter::once(s.fd()).chain(s.wake_fd()).collect(),
        }
    }
}
