//! The shared-memory segments of one node's ranks (each with its rank's
//! wake-up socket when the job spans nodes), kept as the ranks register
//! and handed to each rank of the node after its table, so that no rank
//! ever opens anything by name. spmdrun does this for its own machine,
//! and the agent on each other host for that host.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use spmd::wire::control::MAX_FDS_PER_MESSAGE;
use spmd::wire::descriptors;
use spmd::wire::{Channel, ControlMessage};

/// What is wrong with the descriptors a rank sent with its card (its
/// segment, then its wake-up socket), if anything, in words for
/// "bad card: ...": the ranks of its node would map the one and send on
/// the other.
pub fn descriptor_fault(fds: &[OwnedFd]) -> Option<String> {
    let mut fds = fds.iter();
    let segment = fds.next().map(|fd| descriptors::check_segment(fd.as_fd()));
    let wake = fds.next().map(|fd| descriptors::check_wake_socket(fd.as_fd()));
    match (segment, wake) {
        (Some(Err(why)), _) => Some(format!("its segment is {why}")),
        (_, Some(Err(why))) => Some(format!("its wake-up descriptor is {why}")),
        _ => None,
    }
}

/// One registered rank's descriptors: its segment, and its wake-up socket.
struct Held {
    rank: u32,
    segment: OwnedFd,
    wake: Option<OwnedFd>,
}

/// The segments of one node's ranks.
#[derive(Default)]
pub struct NodeSegments {
    held: Vec<Held>,
}

impl NodeSegments {
    /// Keeps what rank `rank` sent with its registration: the segment, then
    /// (in a job that spans nodes) its wake-up socket.
    pub fn keep(&mut self, rank: u32, fds: Vec<OwnedFd>) {
        let mut fds = fds.into_iter();
        if let Some(segment) = fds.next() {
            self.held.push(Held {
                rank,
                segment,
                wake: fds.next(),
            });
        }
    }

    /// Sends rank `to` the segments of the other ranks of the node whose
    /// ranks are `node`, in as few messages as the descriptor limit allows.
    pub fn send(&self, to: u32, node: &[u32], channel: &mut Channel) -> spmd::Result<()> {
        let theirs: Vec<&Held> = self
            .held
            .iter()
            .filter(|h| h.rank != to && node.contains(&h.rank))
            .collect();
        // Either every segment has its wake-up socket, or none does.
        let wakes = theirs.iter().all(|h| h.wake.is_some()) && !theirs.is_empty();
        let per_message = if wakes {
            MAX_FDS_PER_MESSAGE / 2
        } else {
            MAX_FDS_PER_MESSAGE
        };
        for batch in theirs.chunks(per_message) {
            let msg = ControlMessage::Segments {
                ranks: batch.iter().map(|h| h.rank).collect(),
                wakes,
            };
            let fds: Vec<BorrowedFd<'_>> = batch
                .iter()
                .flat_map(|h| {
                    std::iter::once(h.segment.as_fd()).chain(h.wake.as_ref().filter(|_| wakes).map(|w| w.as_fd()))
                })
                .collect();
            channel.send(&msg, &fds)?;
        }
        Ok(())
    }

    /// Closes every descriptor held (every rank has its copies).
    pub fn clear(&mut self) {
        self.held.clear();
    }
}
