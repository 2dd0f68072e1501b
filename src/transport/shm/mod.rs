//! Shared memory between the ranks of one node: each rank owns a segment
//! (see [`segment`]) holding one single-producer ring per sender on the
//! node, and a doorbell word it sleeps on with a futex when it has nothing
//! to do. Segments travel between ranks as file descriptors, through the
//! launcher, over the ranks' private control channels.
//!
//! A ring is a byte stream (the frames of [`super::stream`] flow through it
//! unchanged), so large messages are pipelined through it: the sender copies
//! in while the receiver copies out.
//!
//! Waiting follows the job's [`WaitMode`]: a rank polls its rings for a
//! short while (spinning, or yielding its core between polls when ranks
//! outnumber cores, or while a peer polls on the same core and so most
//! likely waits for it), then sets its doorbell to SLEEPING, checks once
//! more, and sleeps on the futex. Whoever writes into its rings, or frees
//! room in a ring it writes to, rings the doorbell.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::wire::control::{SingleCopy, WaitMode};

mod doorbell;
mod endpoint;
mod fastbox;
mod link;
mod prefetch;
mod ring;
mod segment;
mod single_copy;
mod straight;
mod waiting;

use super::peers::Peers;
use super::stream::Peer;
use super::{Delivery, Sleeping, Wait};
pub(crate) use endpoint::ShmEndpoint;
pub(crate) use fastbox::Boxed;
use link::RingLink;
use segment::{CLOSED, LOOKED, Segment};
pub(crate) use straight::Straight;
pub(crate) use waiting::sleep_on;

/// Up to this many ranks on a node, a link's look that finds nothing fetches
/// the line its next frame will start in (see `RingLink::without_prefetch`).
const PREFETCH_RANKS: usize = 8;

/// How long a finalizing rank waits for a word from peers that have not
/// said Bye (see `ShmMesh::finish`).
const FINISH_QUIET: Duration = Duration::from_millis(100);
/// How long a finalizing rank reads on in all, however much keeps coming.
const FINISH_LIMIT: Duration = Duration::from_secs(1);
/// Who is on a node, in local order, and where this rank is among them.
#[derive(Debug, Clone)]
pub(crate) struct NodeRanks {
    /// The global ranks on the node, in rank order (local index order).
    pub ranks: Vec<usize>,
    /// This rank's local index.
    pub me: usize,
}

/// The region the node-wide collectives share: the same bytes on every
/// rank of the node, in the node leader's segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Region {
    pub base: *mut u8,
    pub len: usize,
}

/// The shared-memory links of one rank to all the others on its node.
#[derive(Debug)]
pub(crate) struct ShmMesh {
    pub peers: Peers<RingLink>,
    own: Segment,
    /// The peers' segments, by local index (`None` for this rank); the
    /// links point into them.
    mapped: Vec<Option<Segment>>,
    node: NodeRanks,
    /// The node-wide collective region (in the leader's segment).
    region: Option<Region>,
    wait: WaitMode,
    /// This rank's wake-up socket, and its node peers' by local index
    /// (when the job spans nodes; the links ring through them).
    own_wake: Option<OwnedFd>,
    peer_wakes: Vec<Option<OwnedFd>>,
    /// The count of the peers' state changes (`Segment::state_changes`)
    /// when this rank last looked at their states.
    state_changes_seen: u32,
}

// SAFETY: the raw pointers point into mappings owned by the mesh itself.
unsafe impl Send for ShmMesh {}

impl ShmMesh {
    /// Maps the segments of the other ranks of the node (`segments`, by
    /// global rank) after checking each, and links this rank to them.
    /// `size` is the number of ranks in the job.
    pub fn connect(
        own: ShmEndpoint,
        size: usize,
        node: NodeRanks,
        segments: Vec<(usize, OwnedFd, Option<OwnedFd>)>,
        max_message: u64,
        wait: WaitMode,
        single_copy: SingleCopy,
    ) -> Result<ShmMesh> {
        let local = node.ranks.len();
        let me = node.ranks[node.me];
        let mut mapped: Vec<Option<Segment>> = (0..local).map(|_| None).collect();
        let mut peer_wakes: Vec<Option<OwnedFd>> = (0..local).map(|_| None).collect();
        for (rank, fd, wake) in segments {
            let Some(index) = node.ranks.iter().position(|r| *r == rank).filter(|i| *i != node.me) else {
                return Err(Error::protocol(
                    "the launcher",
                    "segments",
                    format!("a segment for rank {rank}, which is not another rank of this node"),
                ));
            };
            let region = if index == 0 { own.region } else { 0 };
            let who = format!("rank {rank}");
            if mapped[index].is_some() {
                return Err(Error::protocol(
                    "the launcher",
                    "segments",
                    format!("two segments for {who}"),
                ));
            }
            mapped[index] = Some(Segment::open(fd, local, own.ring, region, &who)?);
            if own.wake.is_some() != wake.is_some() {
                return Err(Error::protocol(
                    "the launcher",
                    "segments",
                    format!("{who}'s wake-up descriptor came where none was due, or none came where one was"),
                ));
            }
            if let Some(wake) = &wake {
                doorbell::check_wake(wake, &who)?;
            }
            peer_wakes[index] = wake;
        }
        let mut list: Vec<Option<Peer<RingLink>>> = (0..size).map(|_| None).collect();
        for (index, &rank) in node.ranks.iter().enumerate() {
            if index == node.me {
                continue;
            }
            let Some(peer) = mapped[index].as_ref() else {
                return Err(Error::protocol(
                    "the launcher",
                    "segments",
                    format!("no segment for rank {rank}, which shares this node"),
                ));
            };
            // Can this rank copy straight from the peer's memory? Only if
            // it finds the peer's segment where the peer says it mapped it.
            let (pid, address, identity) = peer.identity();
            let pull_from =
                (single_copy != SingleCopy::Off && single_copy::can_read(pid, address, &identity)).then_some(pid);
            let mut link = RingLink::new(
                format!("rank {rank}"),
                peer.ring(node.me),
                own.segment.ring(index),
                peer.doorbell(),
                peer.state(),
                pull_from,
                single_copy == SingleCopy::Always,
            );
            if let Some(wake) = &peer_wakes[index] {
                link.set_peer_wake(wake.as_raw_fd());
            }
            if node.ranks.len() > PREFETCH_RANKS {
                link.without_prefetch();
            }
            list[rank] = Some(Peer::new(me, rank, link));
        }
        let leader = if node.me == 0 {
            Some(&own.segment)
        } else {
            mapped[0].as_ref()
        };
        let region = leader.and_then(Segment::region).map(|(base, len)| Region { base, len });
        Ok(ShmMesh {
            peers: Peers {
                me,
                list,
                max_message,
                said_bye: false,
                unfinalized: false,
            },
            own: own.segment,
            mapped,
            node,
            region,
            wait,
            own_wake: own.wake.map(|w| w.polled),
            peer_wakes,
            state_changes_seen: 0,
        })
    }

    /// The region the node-wide collectives share.
    pub fn region(&self) -> Option<Region> {
        self.region
    }

    /// The process of job rank `rank` on this node, if this rank may copy
    /// straight out of its memory.
    pub fn pull_pid(&self, rank: usize) -> Option<i32> {
        self.peers.list.get(rank)?.as_ref()?.link.pull_from()
    }

    /// Copies `into.len()` bytes at `address` in process `pid` (job rank
    /// `rank`, which [`ShmMesh::pull_pid`] gave) into `into`: a part of an
    /// alltoall. Needs no mesh, so the caller need not hold the engine
    /// while the kernel copies.
    pub fn pull_part(pid: i32, rank: usize, address: u64, into: &mut [u8]) -> Result<()> {
        // SAFETY: the kernel writes only bytes.
        let into = unsafe { crate::transport::link::as_uninit(into) };
        single_copy::pull(
            pid,
            address,
            into,
            &format!("rank {rank}"),
            single_copy::Pulled::AlltoallPart,
        )
    }

    /// The ranks of the node.
    pub fn node(&self) -> &NodeRanks {
        &self.node
    }

    /// True if every rank shares its node (and so the region).
    pub fn whole_job(&self) -> bool {
        self.node.ranks.len() == self.peers.list.len()
    }

    /// Wakes every other rank of the node that sleeps.
    pub fn wake_node(&self) {
        let bells =
            self.mapped.iter().zip(&self.peer_wakes).filter_map(|(segment, wake)| {
                Some((segment.as_ref()?.doorbell(), wake.as_ref().map(|w| w.as_raw_fd())))
            });
        doorbell::ring_all(bells);
    }

    /// True if `rank` (on this node) has finalized.
    pub fn has_closed(&self, rank: usize) -> bool {
        self.peers.list[rank].as_ref().is_some_and(|p| p.link.peer_closed())
    }

    /// True if `rank` will deliver nothing more: it said Bye, or it has
    /// finalized and everything it wrote has been read.
    pub fn is_gone(&self, rank: usize) -> bool {
        self.peers.is_gone(rank)
            || self.peers.list[rank]
                .as_ref()
                .is_some_and(|p| p.link.peer_closed() && !p.link.ready() && p.is_idle())
    }

    /// True if some peer has written something this rank has not read.
    pub fn anything_arrived(&self) -> bool {
        self.peers.list.iter().flatten().any(|p| p.is_open() && p.link.ready())
    }

    /// True if some peer has written, a ring with queued output has room,
    /// or a peer's state changed since [`ShmMesh::move_bytes`] last looked.
    pub fn anything_ready(&self) -> bool {
        self.peer_state_changed()
            || self
                .peers
                .list
                .iter()
                .flatten()
                .any(|p| p.is_open() && ((p.link.ready() && !p.paused) || (p.has_output() && p.link.writable())))
    }

    /// Writes what it can and reads what has arrived, without waiting; true
    /// if anything moved. `waiting` says that this rank waits in spmd (it
    /// takes in every offer no receive has claimed; see
    /// [`Peer::read_available`]).
    pub fn move_bytes(&mut self, deliver: &mut Delivery<'_>, waiting: bool) -> Result<bool> {
        let mut moved = self.peers.flush_all()?;
        let max = self.peers.max_message;
        // A peer that closed (or finished its last look) changes what the
        // caller waits for, though no byte moved.
        let changes = self.own.state_changes().load(Ordering::Acquire);
        if changes != self.state_changes_seen {
            self.state_changes_seen = changes;
            for p in self.peers.list.iter().flatten() {
                moved |= p.link.note_peer_state();
            }
        }
        for p in self.peers.list.iter_mut().flatten() {
            p.paused = !deliver.wants(p.rank());
            // Fastbox messages first; the ring stops before any bytes
            // written after a fastbox message that is waiting, so go round
            // again while one is. Behind a parked offer, every fastbox
            // message came later: they wait for it.
            while p.is_open() && !p.paused {
                if !p.has_parked() {
                    moved |= p.link.fastbox_rx.drain(p.rank(), deliver)?;
                }
                if p.link.readable() || p.has_parked() {
                    moved |= p.read_available(max, deliver, waiting)?;
                }
                if p.has_parked() || !p.link.fastbox_rx.ready() {
                    break;
                }
            }
        }
        Ok(moved)
    }

    /// Writes what it can and reads what has arrived; true if anything
    /// moved. With [`Wait::Until`] and nothing to do, polls for a while and
    /// then sleeps on the doorbell until a peer rings it or the deadline
    /// passes.
    pub fn progress(&mut self, deliver: &mut Delivery<'_>, wait: Wait, sleeping: &Sleeping<'_>) -> Result<bool> {
        let deadline = match wait {
            Wait::No => return self.move_bytes(deliver, false),
            Wait::Once => return self.move_bytes(deliver, true),
            Wait::Until(d) => d,
        };
        loop {
            if self.move_bytes(deliver, true)? {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            self.idle(deadline, &|| false, &|| sleeping(deliver));
        }
    }

    /// Sends everything queued (to peers that still read) and says Bye to
    /// every peer, reads on for the peers' Byes, then closes (nobody waits
    /// for it to read or to make room any more) and takes a last look at
    /// what the peers wrote, counting it for the report (see
    /// `super::last_look`).
    pub fn finish(&mut self, deliver: &mut Delivery<'_>, sleeping: &Sleeping<'_>) -> Result<()> {
        self.peers.queue_byes();
        let mut result = Ok(());
        while self.peers.pending_output() {
            // A peer that has gone does not keep the others from their Bye.
            match self.move_bytes(deliver, true) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => result = result.and(Err(e)),
            }
            // Output can end without a byte moving: the peer closed (what
            // is left to it is settled), or an offer's reader finalized.
            // The peer's count of state changes shows both at once, and it
            // rings this rank's doorbell once it has taken its last look.
            self.idle(None, &|| !self.peers.pending_output(), &|| sleeping(deliver));
        }
        // Read on until every peer has said Bye, as long as bytes keep
        // coming: a message a peer is still writing is then read whole
        // (and reported below if nobody received it), not cut off when
        // this rank closes. A peer that is not finalizing (still working,
        // or waiting on this rank) sends nothing: give up on it after
        // FINISH_QUIET of silence. A peer that streams on is read up to
        // the queue bound and for FINISH_LIMIT at most; its sends then
        // fail with PeerGone.
        deliver.keep_to_bound();
        let start = Instant::now();
        let mut last = start;
        while self.peers.any_may_send_more() && last.elapsed() < FINISH_QUIET && start.elapsed() < FINISH_LIMIT {
            match self.move_bytes(deliver, true) {
                Ok(true) => last = Instant::now(),
                Ok(false) => std::thread::sleep(Duration::from_micros(200)),
                Err(_) => break,
            }
        }
        // What arrived meanwhile is delivered, for the report of messages
        // never received.
        let _ = self.move_bytes(deliver, true);
        // Offers taken among it are acknowledged, where the ring back has
        // room (an offer whose Taken does not fit counts as sent anyway
        // once this rank has closed: see `Peer::is_sent`).
        let _ = self.peers.flush_all();
        // Close, then take a last look: what a peer wrote before it saw
        // this rank closed is counted here; what it wrote after, it finds
        // refused (see `RingLink::wait_for_last_look`).
        self.own.state().store(CLOSED, Ordering::SeqCst);
        self.tell_state_change();
        fence(Ordering::SeqCst);
        let max = self.peers.max_message;
        for p in self.peers.list.iter_mut().flatten() {
            // Fastbox messages came before any ring bytes still unread;
            // ring bytes the reader will not take while a fastbox is full.
            let looked = (|| {
                loop {
                    p.link.fastbox_rx.drain(p.rank(), deliver)?;
                    p.last_look(max, deliver)?;
                    if !p.link.fastbox_rx.ready() {
                        return Ok(());
                    }
                }
            })();
            p.link.fastbox_rx.publish_taken();
            result = result.and(looked);
        }
        self.own.state().store(LOOKED, Ordering::Release);
        self.tell_state_change();
        self.wake_node();
        result
    }

    /// True if a peer's state changed since [`ShmMesh::move_bytes`] last
    /// looked at them.
    fn peer_state_changed(&self) -> bool {
        self.own.state_changes().load(Ordering::Acquire) != self.state_changes_seen
    }

    /// Tells every peer on the node that this rank's state changed (after
    /// it wrote the new state).
    fn tell_state_change(&self) {
        for segment in self.mapped.iter().flatten() {
            segment.state_changes().fetch_add(1, Ordering::Release);
        }
    }
}

/// The shared memory the ranks of a node of `local` ranks need in all, for
/// a collective region of `region` bytes: what the launcher checks is free
/// before it starts them.
pub(crate) fn node_bytes(local: usize, region: usize) -> u64 {
    let ring = segment::ring_bytes(local);
    (local as u64) * segment::segment_len(local, ring, 0) as u64 + region as u64
}

/// The fastbox area and a ring control block of a peer, filled with
/// fuzzer bytes, read as this rank reads them (see `crate::fuzzing`).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_shared(data: &[u8], sink: &mut Delivery<'_>) -> Result<()> {
    // Aligned memory the size of one control block (with 256 boxes, the
    // layout the seeds were made for) and a small ring.
    let (ring, slots) = (4096, 256);
    let mut memory = vec![0u64; (segment::ring_control(slots) + ring) / 8];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut memory);
    let n = data.len().min(bytes.len());
    bytes[..n].copy_from_slice(&data[..n]);
    // SAFETY: `memory` holds the control block and the ring's bytes.
    let rx = unsafe { segment::RingMemory::new(memory.as_mut_ptr().cast::<u8>(), ring, slots) };
    let mut fastboxes = fastbox::FastboxRx::new(rx.fastboxes(), slots);
    for _ in 0..4 {
        fastboxes.drain(1, sink)?;
    }
    let head = rx.load_head(0, 0, "fuzz")?;
    let mut out = vec![0u8; (head as usize).min(ring)];
    // SAFETY: `out` has room for its length.
    unsafe { rx.take(0, out.as_mut_ptr(), out.len()) };
    let mut tx = fastbox::FastboxTx::new(rx.fastboxes(), slots);
    let header = crate::wire::Header::plain(crate::wire::Kind::Serde, 0, 0);
    for _ in 0..10 {
        tx.try_send(&header, &[], "fuzz")?;
    }
    rx.load_tail(head, 0, "fuzz").map(|_| ())
}
