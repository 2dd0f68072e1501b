//! A rank's own end of shared memory, made before it registers with the
//! launcher: its segment and, in a job that spans nodes, its wake-up socket.

use std::os::fd::{BorrowedFd, OwnedFd};

use super::segment::{self, Segment};
use crate::error::{Error, Result};

/// This rank's own segment, made before it registers with the launcher.
#[derive(Debug)]
pub(crate) struct ShmEndpoint {
    pub(super) segment: Segment,
    pub(super) ring: usize,
    pub(super) region: usize,
    /// How the rank's node peers wake it when it sleeps in `poll` (its job
    /// spans nodes: it waits on sockets too).
    pub(super) wake: Option<WakeSocket>,
}

/// A rank's wake-up socket: a pair of datagram sockets, the end it polls
/// and drains, and the end its node peers get and send a byte on. A send
/// with `MSG_DONTWAIT` never blocks, whatever the descriptor's flags (which
/// the rank shares with every holder: an eventfd's `O_NONBLOCK` could be
/// cleared by its owner, and its next write block a peer for ever).
#[derive(Debug)]
pub(super) struct WakeSocket {
    pub(super) polled: OwnedFd,
    given: OwnedFd,
}

impl ShmEndpoint {
    /// Makes the segment of rank `rank`, local index `local_index` of a
    /// node of `local` ranks; the node leader's holds a collective region
    /// of `region` bytes. With `polling`, also the wake-up socket, for a
    /// rank that will wait on sockets as well.
    pub fn create(rank: usize, local_index: usize, local: usize, region: usize, polling: bool) -> Result<ShmEndpoint> {
        let ring = segment::ring_bytes(local);
        let own_region = if local_index == 0 { region } else { 0 };
        let segment = Segment::create(local, ring, own_region, &format!("rank {rank}"))?;
        let wake = if polling { Some(wake_socket()?) } else { None };
        Ok(ShmEndpoint {
            segment,
            ring,
            region,
            wake,
        })
    }

    /// The segment's descriptor, for the launcher to pass on.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.segment.fd()
    }

    /// The end of the wake-up socket the node peers send on, for the
    /// launcher to pass on beside the segment.
    pub fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.wake.as_ref().map(|w| w.given.as_fd())
    }
}

/// A new wake-up socket pair, both ends non-blocking.
fn wake_socket() -> Result<WakeSocket> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (polled, given) = socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::io("making a wake-up socket", std::io::Error::from(e)))?;
    Ok(WakeSocket { polled, given })
}
