//! Shared memory between the ranks of one node: each rank owns a segment in
//! `/dev/shm` holding one single-producer ring per sender, and a doorbell
//! word it sleeps on with a futex when it has nothing to do.
//!
//! A ring is a byte stream (the frames of [`super::stream`] flow through it
//! unchanged), so large messages are pipelined through it: the sender copies
//! in while the receiver copies out.
//!
//! Waiting adapts: a rank polls its rings for a short while, then sets its
//! doorbell to SLEEPING, checks once more, and sleeps on the futex. Whoever
//! writes into its rings, or frees room in a ring it writes to, rings the
//! doorbell. Both sides put a SeqCst fence between their store and their
//! check, so a wake-up is never lost.

use std::fs::OpenOptions;
use std::io::IoSlice;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::wire::{Card, Header};

use super::segment::{
    AWAKE, Area, MAGIC, OFF_ATTACHED, OFF_MAGIC, OFF_RING_BYTES, Ring, SLEEPING, Segment, futex_wait, ring_bytes,
    ring_doorbell, segment_len, segment_path,
};

use super::fastbox::{FASTBOX_DATA, FastboxRx, FastboxTx};
use super::peers::Peers;
use super::stream::{Io, Link, Peer};
use super::window::Windows;
use super::{Delivery, Wait};

/// How long a rank polls before it sleeps, when it has a core to itself.
const SPIN: Duration = Duration::from_millis(1);
/// How long a rank keeps yielding its core before it sleeps, when there are
/// more ranks than cores: handing the core to the peer it waits for costs a
/// few microseconds, a futex wake-up tens.
const YIELD: Duration = Duration::from_micros(500);
/// A large write makes its bytes visible to the reader every this many
/// bytes, so that copying in and copying out overlap.
const PUBLISH_EVERY: usize = 4 << 10;
/// How long start-up waits for every peer to map this rank's segment.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

/// The link to one peer: the ring this rank writes in the peer's segment,
/// and the ring the peer writes in this rank's segment.
#[derive(Debug)]
pub(crate) struct RingLink {
    tx: Ring,
    rx: Ring,
    /// The peer's doorbell, rung after writing or after freeing room.
    peer_doorbell: *const AtomicU32,
    tx_head: u64,
    tx_tail_seen: u64,
    rx_tail: u64,
    /// How far this rank may read `rx`: its head when last seen with no
    /// fastbox message waiting (see [`super::fastbox`] for why).
    rx_head: u64,
    /// The fastboxes this rank writes in the peer's segment.
    fastbox_tx: FastboxTx,
    /// The fastboxes the peer writes in this rank's segment.
    pub(super) fastbox_rx: FastboxRx,
}

impl RingLink {
    fn peer_doorbell(&self) -> &AtomicU32 {
        // SAFETY: points into the peer's live mapping.
        unsafe { &*self.peer_doorbell }
    }

    /// True if the peer has written bytes this rank has not read.
    fn readable(&self) -> bool {
        let ready = self.rx.head().load(Ordering::Acquire) != self.rx_tail;
        if !ready {
            // Fetch the line the next frame will start in while waiting, so
            // that it travels alongside the head instead of after it.
            self.rx.prefetch(self.rx_tail);
        }
        ready
    }

    /// True if the peer has written something this rank has not read, in
    /// the ring or in a fastbox.
    fn ready(&self) -> bool {
        self.fastbox_rx.ready() || self.readable()
    }

    /// True if the ring to the peer has room.
    fn writable(&self) -> bool {
        self.tx.tail().load(Ordering::Acquire) + (self.tx.capacity as u64) > self.tx_head
    }
}

impl Link for RingLink {
    fn write(&mut self, iov: &[IoSlice<'_>]) -> Result<Io> {
        let cap = self.tx.capacity as u64;
        let wanted: usize = iov.iter().map(|s| s.len()).sum();
        if ((self.tx_tail_seen + cap - self.tx_head) as usize) < wanted {
            self.tx_tail_seen = self.tx.tail().load(Ordering::Acquire);
        }
        let mut room = (self.tx_tail_seen + cap - self.tx_head) as usize;
        if room == 0 || wanted == 0 {
            return Ok(Io::WouldBlock);
        }
        let mut wrote = 0;
        let mut published = 0;
        for slice in iov {
            let mut slice: &[u8] = slice;
            while room > 0 && !slice.is_empty() {
                // Publish large writes piece by piece, so the reader copies
                // out the start while the rest is still being copied in.
                let n = slice.len().min(room).min(PUBLISH_EVERY);
                self.tx.put(self.tx_head + wrote as u64, &slice[..n]);
                wrote += n;
                room -= n;
                slice = &slice[n..];
                if wrote - published >= PUBLISH_EVERY {
                    self.tx.head().store(self.tx_head + wrote as u64, Ordering::Release);
                    ring_doorbell(self.peer_doorbell());
                    published = wrote;
                }
            }
            if room == 0 {
                break;
            }
        }
        self.tx_head += wrote as u64;
        if published != wrote {
            self.tx.head().store(self.tx_head, Ordering::Release);
            ring_doorbell(self.peer_doorbell());
        }
        Ok(Io::Done(wrote))
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<Io> {
        // Bytes written after a fastbox message that is still waiting must
        // wait for it: see the head move only when no fastbox is full. (If
        // one fills after this check, it was written after these bytes.)
        let head = self.rx.head().load(Ordering::Acquire);
        if head != self.rx_head && !self.fastbox_rx.ready() {
            self.rx_head = head;
        }
        let avail = (self.rx_head - self.rx_tail) as usize;
        let n = avail.min(buf.len());
        if n == 0 {
            return Ok(Io::WouldBlock);
        }
        self.rx.take(self.rx_tail, &mut buf[..n]);
        self.rx_tail += n as u64;
        self.rx.tail().store(self.rx_tail, Ordering::Release);
        ring_doorbell(self.peer_doorbell());
        Ok(Io::Done(n))
    }

    fn try_send_beside(&mut self, header: &Header, payload: &[u8]) -> bool {
        if payload.len() > FASTBOX_DATA {
            return false;
        }
        // A fastbox may not overtake what is still in the ring.
        if self.tx_tail_seen != self.tx_head {
            self.tx_tail_seen = self.tx.tail().load(Ordering::Acquire);
            if self.tx_tail_seen != self.tx_head {
                return false;
            }
        }
        if !self.fastbox_tx.try_send(header, payload) {
            return false;
        }
        ring_doorbell(self.peer_doorbell());
        true
    }
}

/// This rank's own segment, created before it registers with the launcher.
#[derive(Debug)]
pub(crate) struct ShmListener {
    path: String,
    segment: Segment,
    ring: usize,
    card: Card,
}

impl ShmListener {
    /// Creates the segment of rank `rank` of `size` (mode 0600; it must not
    /// exist yet).
    pub fn open(job: u64, rank: usize, size: usize, local_size: usize) -> Result<ShmListener> {
        let path = segment_path(job, rank);
        let ring = ring_bytes(local_size);
        let len = segment_len(size, ring);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(format!("creating the shared-memory segment {path}"), e))?;
        file.set_len(len as u64)
            .map_err(|e| Error::io(format!("sizing {path} to {len} bytes (is /dev/shm full?)"), e))?;
        let segment = Segment::map(&file, len, &path)?;
        segment
            .at::<AtomicU64>(OFF_RING_BYTES)
            .store(ring as u64, Ordering::Relaxed);
        if rank == 0 {
            // Rank 0's segment holds the node-wide collective area. With a
            // core per rank, every rank folds the parts itself (one wait,
            // no shared counter); with more ranks than cores, the last to
            // arrive folds for all, so the others sleep instead of polling.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            segment.area(size, ring).set_every_rank_folds(local_size <= cores);
        }
        segment.at::<AtomicU64>(OFF_MAGIC).store(MAGIC, Ordering::Release);
        let card = Card::Shm { path: path.clone() };
        Ok(ShmListener {
            path,
            segment,
            ring,
            card,
        })
    }

    /// The card peers use to find this segment.
    pub fn card(&self) -> &Card {
        &self.card
    }
}

impl Drop for ShmListener {
    fn drop(&mut self) {
        // Once mapped by everyone (or on failure) the name is not needed.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The shared-memory links of one rank to all the others on its node.
#[derive(Debug)]
pub(crate) struct ShmMesh {
    pub peers: Peers<RingLink>,
    own: ShmListener,
    /// Keeps the peers' mappings alive for the links' pointers.
    _mapped: Vec<Segment>,
    /// The node-wide collective area, in rank 0's segment.
    pub(super) area: Area,
    /// Every peer's doorbell, rung when a node-wide collective completes.
    pub(super) bells: Vec<*const AtomicU32>,
    /// Node-wide collectives completed so far (the same on every rank).
    pub(super) calls: u32,
    /// Every rank folds the parts itself (see [`super::node`]).
    pub(super) every_rank_folds: bool,
    /// The windows for large collectives, in rank 0's segment.
    pub(super) windows: Windows,
    /// Pieces moved through the windows so far (the same on every rank).
    pub(super) window_pieces: usize,
    /// More ranks than cores: yield the core between polls (for [`YIELD`])
    /// instead of spinning on it (for [`SPIN`]).
    yield_between_polls: bool,
}

// SAFETY: the raw pointers point into mappings owned by the mesh itself.
unsafe impl Send for ShmMesh {}

impl ShmMesh {
    /// Maps every peer's segment, tells each peer so, and waits until every
    /// peer has mapped this rank's segment, which can then be unlinked.
    pub fn connect(own: ShmListener, me: usize, cards: &[Card], max_message: u64) -> Result<ShmMesh> {
        let size = cards.len();
        let mut mapped = Vec::with_capacity(size.saturating_sub(1));
        let mut list: Vec<Option<Peer<RingLink>>> = (0..size).map(|_| None).collect();
        let mut bells = Vec::with_capacity(size);
        let mut area = (me == 0).then(|| own.segment.area(size, own.ring));
        for (rank, card) in cards.iter().enumerate() {
            if rank == me {
                continue;
            }
            let Card::Shm { path } = card else {
                return Err(Error::protocol(
                    "the launcher",
                    "table",
                    format!("rank {rank} has no shared-memory card (mixed SPMD_TRANSPORT settings?)"),
                ));
            };
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| Error::io(format!("opening rank {rank}'s segment {path}"), e))?;
            let len = segment_len(size, own.ring);
            let actual = file.metadata().map(|m| m.len()).unwrap_or(0);
            if actual != len as u64 {
                return Err(Error::protocol(
                    format!("rank {rank}"),
                    "segment",
                    format!("{path} has {actual} bytes, expected {len}"),
                ));
            }
            let seg = Segment::map(&file, len, path)?;
            let magic = seg.at::<AtomicU64>(OFF_MAGIC).load(Ordering::Acquire);
            let ring = seg.at::<AtomicU64>(OFF_RING_BYTES).load(Ordering::Relaxed);
            if magic != MAGIC || ring != own.ring as u64 {
                return Err(Error::protocol(
                    format!("rank {rank}"),
                    "segment",
                    format!("{path} is not an spmd segment of this layout"),
                ));
            }
            let tx = seg.ring(me, own.ring);
            let rx = own.segment.ring(rank, own.ring);
            let link = RingLink {
                tx,
                rx,
                peer_doorbell: seg.doorbell() as *const AtomicU32,
                tx_head: 0,
                tx_tail_seen: 0,
                rx_tail: 0,
                rx_head: 0,
                fastbox_tx: FastboxTx::new(tx.fastboxes),
                fastbox_rx: FastboxRx::new(rx.fastboxes),
            };
            seg.at::<AtomicU32>(OFF_ATTACHED).fetch_add(1, Ordering::AcqRel);
            ring_doorbell(seg.doorbell());
            list[rank] = Some(Peer::new(rank, link));
            bells.push(seg.doorbell() as *const AtomicU32);
            if rank == 0 {
                area = Some(seg.area(size, own.ring));
            }
            mapped.push(seg);
        }
        // Wait until every peer has mapped this segment, then unlink it so
        // that nothing is left in /dev/shm even if the job crashes later.
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        let attached = own.segment.at::<AtomicU32>(OFF_ATTACHED);
        let want = (size - 1) as u32;
        while attached.load(Ordering::Acquire) < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    what: format!(
                        "{} ranks to map this rank's shared memory",
                        want - attached.load(Ordering::Acquire)
                    ),
                    seconds: ATTACH_TIMEOUT.as_secs_f64(),
                });
            }
            let bell = own.segment.doorbell();
            bell.store(SLEEPING, Ordering::SeqCst);
            if attached.load(Ordering::SeqCst) < want {
                futex_wait(bell, SLEEPING, Some(left.min(Duration::from_millis(10))));
            }
            bell.store(AWAKE, Ordering::Relaxed);
        }
        let _ = std::fs::remove_file(&own.path);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let Some(area) = area else {
            return Err(Error::protocol(
                "the launcher",
                "table",
                "rank 0 has no shared-memory segment",
            ));
        };
        Ok(ShmMesh {
            peers: Peers { me, list, max_message },
            own,
            _mapped: mapped,
            area,
            bells,
            calls: 0,
            every_rank_folds: area.every_rank_folds(),
            windows: area.windows(),
            window_pieces: 0,
            // With more ranks than cores, spinning would steal the core a
            // peer needs: yield it instead.
            yield_between_polls: size > cores,
        })
    }

    /// True if some peer has written, or a ring with queued output has room.
    fn anything_ready(&self) -> bool {
        self.peers
            .list
            .iter()
            .flatten()
            .any(|p| p.is_open() && (p.link.ready() || (p.has_output() && p.link.writable())))
    }

    pub(super) fn move_bytes(&mut self, deliver: &mut Delivery<'_>) -> Result<bool> {
        let mut moved = self.peers.flush_all()?;
        let max = self.peers.max_message;
        for p in self.peers.list.iter_mut().flatten() {
            // Fastbox messages first; the ring stops before any bytes
            // written after a fastbox message that is waiting, so go round
            // again while one is.
            while p.is_open() {
                moved |= p.link.fastbox_rx.drain(p.rank(), deliver)?;
                if p.link.readable() {
                    moved |= p.read_available(max, deliver)?;
                }
                if !p.link.fastbox_rx.ready() {
                    break;
                }
            }
        }
        Ok(moved)
    }

    /// Writes what it can and reads what has arrived. With [`Wait::Until`]
    /// and nothing to do, polls for a while and then sleeps on the doorbell
    /// until a peer rings it or the deadline passes.
    pub fn progress(&mut self, deliver: &mut Delivery<'_>, wait: Wait) -> Result<()> {
        let deadline = match wait {
            Wait::No => return self.move_bytes(deliver).map(|_| ()),
            Wait::Until(d) => d,
        };
        loop {
            if self.move_bytes(deliver)? {
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
            self.idle(deadline, &|_| false);
        }
    }

    /// Waits, without moving bytes, until a link is ready, `woken` says so,
    /// or the deadline passes: polls a while, then sleeps on the doorbell.
    pub(super) fn idle(&self, deadline: Option<Instant>, woken: &dyn Fn(&ShmMesh) -> bool) {
        let ready = || self.anything_ready() || woken(self);
        let poll_for = if self.yield_between_polls { YIELD } else { SPIN };
        // Reading the clock costs more than a poll: not on every poll, and
        // not at all when the wait is short.
        let mut poll_until = None;
        let mut polls = 0u32;
        loop {
            if self.yield_between_polls {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            if ready() {
                return;
            }
            polls = polls.wrapping_add(1);
            if self.yield_between_polls || polls % 128 == 0 {
                let now = Instant::now();
                if now >= *poll_until.get_or_insert(now + poll_for) {
                    break;
                }
            }
        }
        // Sleep until somebody rings.
        let bell = self.own.segment.doorbell();
        bell.store(SLEEPING, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !ready() {
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            futex_wait(bell, SLEEPING, timeout);
        }
        bell.store(AWAKE, Ordering::Relaxed);
    }

    /// Sends everything queued and says Bye to every peer.
    pub fn finish(&mut self, deliver: &mut Delivery<'_>) -> Result<()> {
        self.peers.queue_byes();
        while self.peers.pending_output() {
            self.progress(deliver, Wait::Until(None))?;
        }
        Ok(())
    }
}
