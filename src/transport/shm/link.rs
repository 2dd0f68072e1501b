//! The link between two ranks of one node: the ring this rank writes in the
//! peer's segment, the ring the peer writes in this rank's segment, and
//! the fastboxes beside each.

use std::cell::Cell;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::wire::{Header, Offer};

use super::super::stream::{Io, Link};
use super::doorbell;
use super::fastbox::{FASTBOX_DATA, FastboxRx, FastboxTx};
use super::segment::{CLOSED, LOOKED, RingMemory};
use super::single_copy;

/// A large write makes its bytes visible to the reader every this many
/// bytes, so that copying in and copying out overlap.
const PUBLISH_EVERY: usize = 4 << 10;
/// Ring bytes past its head that a sender asks to have writable after
/// each write (see `prefetch.rs`): a few small messages' worth.
const WRITE_AHEAD: usize = 256;
/// Messages of at least this many bytes go as offers, for the receiver to
/// copy from the sender's memory, where it can and while the receiver
/// lags (see `RingLink::offers`).
const OFFER_FROM: usize = 256 << 10;

/// How long a writer that finds its peer closing waits for the peer's last
/// look at what it wrote (a pass over the rank's rings, unless the peer is
/// off its core) before it counts the bytes as lost (and the peer, should
/// it look after all, reports them too: counted twice, never lost).
const LAST_LOOK_WAIT: Duration = Duration::from_secs(10);

/// The link to one peer on the node.
#[derive(Debug)]
pub(crate) struct RingLink {
    /// "rank N", for errors.
    peer: String,
    tx: RingMemory,
    rx: RingMemory,
    /// The peer's doorbell, rung after writing or after freeing room.
    peer_doorbell: *const AtomicU32,
    /// The peer's wake-up socket (when the job spans nodes), through which
    /// the doorbell rings a peer that sleeps in `poll`.
    peer_wake: Option<RawFd>,
    /// The peer's state word: [`CLOSED`] once it has finalized (it reads
    /// nothing new, and takes a last look), then [`LOOKED`].
    peer_state: *const AtomicU32,
    /// The peer's state when this rank last looked (see
    /// [`RingLink::note_peer_state`]).
    peer_state_seen: Cell<u32>,
    tx_head: u64,
    /// The peer's tail when last read (checked).
    tx_tail_seen: u64,
    rx_tail: u64,
    /// How far this rank may read `rx`: its head when last seen with no
    /// fastbox message waiting (see [`super::fastbox`] for why).
    rx_head: u64,
    /// The fastboxes this rank writes in the peer's segment.
    fastbox_tx: FastboxTx,
    /// The fastboxes the peer writes in this rank's segment.
    pub(super) fastbox_rx: FastboxRx,
    /// The peer's process id, if this rank can copy from its memory (see
    /// [`single_copy`]): only then may it make offers.
    pull_from: Option<i32>,
    /// Every large message goes as an offer, where the peer can take it
    /// (`SPMD_SINGLE_COPY=always`).
    always_offer: bool,
    /// This rank has streamed large messages to the peer as offers.
    streamed: Cell<bool>,
    /// A look that finds nothing fetches the line the next frame starts in
    /// (see [`RingLink::readable`]).
    prefetch: bool,
}

impl RingLink {
    /// The process this rank may copy from straight, if any.
    pub(super) fn pull_from(&self) -> Option<i32> {
        self.pull_from
    }

    /// A link writing `tx` (in the peer's segment) and reading `rx` (in this
    /// rank's), ringing the peer's `doorbell` and watching its `state`. The
    /// pointers must stay valid as long as the link. `pull_from` is the
    /// peer's process id if this rank can copy from its memory, which the
    /// link then tells the peer.
    pub(super) fn new(
        peer: String,
        tx: RingMemory,
        rx: RingMemory,
        doorbell: &AtomicU32,
        state: &AtomicU32,
        pull_from: Option<i32>,
        always_offer: bool,
    ) -> RingLink {
        rx.set_reader_pulls(pull_from.is_some());
        RingLink {
            peer,
            tx,
            rx,
            peer_doorbell: doorbell,
            peer_wake: None,
            peer_state: state,
            tx_head: 0,
            tx_tail_seen: 0,
            rx_tail: 0,
            rx_head: 0,
            fastbox_tx: FastboxTx::new(tx.fastboxes(), tx.slots),
            fastbox_rx: FastboxRx::new(rx.fastboxes(), rx.slots),
            peer_state_seen: Cell::new(state.load(Ordering::Acquire)),
            pull_from,
            always_offer,
            streamed: Cell::new(false),
            prefetch: true,
        }
    }

    /// Stops a look that finds nothing from fetching the next frame's line:
    /// on a node of many ranks, a rank that looks at every link would fetch
    /// a line per peer, nearly all for nothing.
    pub(super) fn without_prefetch(&mut self) {
        self.prefetch = false;
    }

    /// Rings the peer through `wake` when it sleeps in `poll`; the
    /// descriptor must stay open as long as the link.
    pub(super) fn set_peer_wake(&mut self, wake: RawFd) {
        self.peer_wake = Some(wake);
    }

    fn peer_doorbell(&self) -> &AtomicU32 {
        // SAFETY: points into the peer's mapping, which the mesh keeps as
        // long as this link.
        unsafe { &*self.peer_doorbell }
    }

    fn peer_state(&self) -> u32 {
        // SAFETY: as for the doorbell.
        unsafe { &*self.peer_state }.load(Ordering::Acquire)
    }

    /// True once the peer has finalized: it reads nothing new (only its
    /// last look is still to come).
    pub(super) fn peer_closed(&self) -> bool {
        self.peer_state() >= CLOSED
    }

    /// Notes the peer's state; true if it changed since the last note: a
    /// wait that depends on it (a send to it, an offer it has not taken)
    /// must look again, though no byte moved.
    pub(super) fn note_peer_state(&self) -> bool {
        let now = self.peer_state();
        now != self.peer_state_seen.replace(now)
    }

    /// Waits for a peer that closed to take its last look at what this
    /// rank wrote; false if it did not within [`LAST_LOOK_WAIT`].
    ///
    /// The peer stores CLOSED, fences, looks, then stores LOOKED. A writer
    /// publishes, fences (in `doorbell::ring`), then checks for CLOSED: so
    /// a write that the look missed is always followed by a check that
    /// sees CLOSED, and comes here to learn its fate.
    fn wait_for_last_look(&self) -> bool {
        let start = Instant::now();
        while self.peer_state() < LOOKED {
            let waited = start.elapsed();
            if waited >= LAST_LOOK_WAIT {
                return false;
            }
            // Briefly on the core, then off it: the peer may need the core
            // for its look (this is rare: only a write that met the close).
            if waited < Duration::from_micros(20) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        true
    }

    /// How many of the `wrote` ring bytes just written a peer that closed
    /// read in its last look: those count as delivered (it reports the
    /// messages among them), the rest are lost to it.
    fn read_before_close(&mut self, wrote: usize) -> usize {
        if !self.wait_for_last_look() {
            return 0;
        }
        let start = self.tx_head - wrote as u64;
        match self.tx.load_tail(self.tx_head, self.tx_tail_seen, &self.peer) {
            Ok(tail) => tail.saturating_sub(start).min(wrote as u64) as usize,
            Err(_) => 0,
        }
    }

    /// True if the peer has written ring bytes this rank has not read.
    pub(super) fn readable(&self) -> bool {
        let ready = self.rx.has_bytes(self.rx_tail);
        if !ready && self.prefetch {
            // Fetch the line the next frame will start in while waiting, so
            // that it travels alongside the head instead of after it.
            self.rx.prefetch(self.rx_tail);
        }
        ready
    }

    /// How many ring bytes this rank may read now, for a reader that takes
    /// whole frames straight out of the ring (see `straight.rs`): the same
    /// bound as [`Link::read`]'s, which stops before bytes written after a
    /// fastbox message that is still waiting.
    pub(super) fn unread(&mut self) -> Result<usize> {
        let head = self.rx.load_head(self.rx_tail, self.rx_head, &self.peer)?;
        if head != self.rx_head && !self.fastbox_rx.ready() {
            self.rx_head = head;
        }
        Ok((self.rx_head - self.rx_tail) as usize)
    }

    /// True if at least `n` bytes are unread, as [`RingLink::unread`]
    /// last said.
    pub(super) fn holds(&self, n: usize) -> bool {
        (self.rx_head - self.rx_tail) as usize >= n
    }

    /// Copies unread ring bytes from `skip` bytes past the read position
    /// into `out`, leaving them unread; the caller asks for no more than
    /// [`RingLink::unread`] said.
    pub(super) fn look(&self, skip: usize, out: &mut [u8]) {
        // SAFETY: a slice is valid for writes of its length.
        unsafe { self.look_raw(skip, out.as_mut_ptr(), out.len()) }
    }

    /// [`RingLink::look`] to memory that may hold no initialized bytes yet.
    ///
    /// # Safety
    /// `out` is valid for writes of `len` bytes.
    pub(super) unsafe fn look_raw(&self, skip: usize, out: *mut u8, len: usize) {
        assert!(self.holds(skip + len), "a look past the unread bytes");
        // SAFETY: the caller's promise; the bytes are inside what was
        // written and checked.
        unsafe { self.rx.take(self.rx_tail + skip as u64, out, len) };
    }

    /// Counts `n` unread bytes as read, and tells the peer they are free.
    pub(super) fn consume(&mut self, n: usize) {
        debug_assert!(n <= (self.rx_head - self.rx_tail) as usize);
        self.rx_tail += n as u64;
        self.rx.publish_tail(self.rx_tail);
        doorbell::ring(self.peer_doorbell(), self.peer_wake);
    }

    /// True if the peer has written something this rank has not read, in
    /// the ring or in a fastbox.
    pub(super) fn ready(&self) -> bool {
        self.fastbox_rx.ready() || self.readable()
    }

    /// True if the ring to the peer has room, or the peer has gone.
    pub(super) fn writable(&self) -> bool {
        self.tx
            .load_tail(self.tx_head, self.tx_tail_seen, &self.peer)
            .map_or(true, |tail| tail + (self.tx.capacity as u64) > self.tx_head)
            || self.peer_closed()
    }

    fn room(&mut self, wanted: usize) -> Result<usize> {
        let cap = self.tx.capacity as u64;
        if ((self.tx_tail_seen + cap - self.tx_head) as usize) < wanted {
            self.tx_tail_seen = self.tx.load_tail(self.tx_head, self.tx_tail_seen, &self.peer)?;
        }
        Ok((self.tx_tail_seen + cap - self.tx_head) as usize)
    }
}

// SAFETY: writes only bytes into what it reads into (see `Link`).
unsafe impl Link for RingLink {
    fn has_room_for(&mut self, wanted: usize) -> Result<bool> {
        Ok(!self.peer_closed() && self.room(wanted)? >= wanted)
    }

    fn write(&mut self, iov: &[IoSlice<'_>]) -> Result<Io> {
        let wanted: usize = iov.iter().map(|s| s.len()).sum();
        // A peer that has finalized reads nothing more: bytes written now
        // would be lost without a word.
        if wanted > 0 && self.peer_closed() {
            return Ok(Io::Closed);
        }
        let mut room = self.room(wanted)?;
        if room == 0 || wanted == 0 {
            // A peer that has finalized will never make room again.
            return Ok(if wanted > 0 && self.peer_closed() {
                Io::Closed
            } else {
                Io::WouldBlock
            });
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
                    self.tx.publish_head(self.tx_head + wrote as u64);
                    doorbell::ring(self.peer_doorbell(), self.peer_wake);
                    published = wrote;
                }
            }
            if room == 0 {
                break;
            }
        }
        self.tx_head += wrote as u64;
        if published != wrote {
            self.tx.publish_head(self.tx_head);
            doorbell::ring(self.peer_doorbell(), self.peer_wake);
        }
        // The next few small messages' lines, within the free room (the
        // first may still hold bytes the receiver has not read: a hint
        // that costs it a transfer at worst).
        self.tx.prefetch_for_write(self.tx_head, room.min(WRITE_AHEAD));
        if self.peer_closed() {
            // What the peer did not read is refused on the next write.
            return Ok(Io::Done(self.read_before_close(wrote)));
        }
        Ok(Io::Done(wrote))
    }

    fn read(&mut self, buf: &mut [MaybeUninit<u8>]) -> Result<Io> {
        // Bytes written after a fastbox message that is still waiting must
        // wait for it: see the head move only when no fastbox is full. (If
        // one fills after this check, it was written after these bytes.)
        let n = self.unread()?.min(buf.len());
        if n == 0 {
            return Ok(Io::WouldBlock);
        }
        // SAFETY: `buf` has room for `n` bytes.
        unsafe { self.look_raw(0, buf.as_mut_ptr().cast::<u8>(), n) };
        self.consume(n);
        Ok(Io::Done(n))
    }

    /// Through the ring a large message is copied twice, but by both ranks
    /// at once, in pieces: faster than the kernel's one copy (which runs
    /// at a third of `memcpy`'s speed) while both ranks have a core, and
    /// always when the ring is idle (a ping-pong: both ranks are awake).
    /// A stream of messages keeps the ring busy, and on a machine with
    /// more work than cores the two ranks seldom run together; there an
    /// offer is copied once, by the receiver alone, whenever it runs. A
    /// stream is a message behind others in the ring or the queue; once a
    /// link has streamed, every large message on it is offered while the
    /// machine stays busy (the first message of the next burst, through
    /// the ring, would hold up the offers queued behind it).
    fn offers(&self, len: usize, queued: bool) -> bool {
        if len < OFFER_FROM || !self.tx.reader_pulls() {
            return false;
        }
        let in_stream = || {
            queued
                || self.streamed.get()
                || self
                    .tx
                    .load_tail(self.tx_head, self.tx_tail_seen, &self.peer)
                    .map_or(true, |tail| tail != self.tx_head)
        };
        let offer = self.always_offer || (in_stream() && single_copy::machine_is_busy());
        if offer {
            self.streamed.set(true);
        }
        offer
    }

    fn pull(&mut self, offer: &Offer, into: &mut [MaybeUninit<u8>], peer: &str) -> Result<()> {
        match self.pull_from {
            Some(pid) => single_copy::pull(pid, offer.address, into, peer, single_copy::Pulled::Offer),
            None => Err(crate::error::Error::protocol(
                peer,
                "kind",
                "it made an offer, but this rank never said it could copy from it",
            )),
        }
    }

    fn peer_finalized(&self) -> bool {
        self.peer_closed()
    }

    #[inline]
    fn try_send_beside(&mut self, header: &Header, payload: &[u8]) -> Result<bool> {
        // Too long, or the peer finalized (the ring path says so).
        if payload.len() > FASTBOX_DATA || self.peer_closed() {
            return Ok(false);
        }
        // A fastbox may not overtake what is still in the ring.
        if self.tx_tail_seen != self.tx_head {
            self.tx_tail_seen = self.tx.load_tail(self.tx_head, self.tx_tail_seen, &self.peer)?;
            if self.tx_tail_seen != self.tx_head {
                return Ok(false);
            }
        }
        if !self.fastbox_tx.try_send(header, payload, &self.peer)? {
            return Ok(false);
        }
        doorbell::ring(self.peer_doorbell(), self.peer_wake);
        // Missed by the peer's last look: framed instead, it finds the
        // ring closed, and the sender gets PeerGone.
        Ok(!self.peer_closed() || (self.wait_for_last_look() && self.fastbox_tx.all_taken()))
    }
}

#[cfg(test)]
#[path = "link_tests.rs"]
mod tests;
