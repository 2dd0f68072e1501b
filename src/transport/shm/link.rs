//! The link between two ranks of one node: the ring this rank writes in the
//! peer's segment, the ring the peer writes in this rank's segment, and
//! the fastboxes beside each.

use std::cell::Cell;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::Result;
use crate::wire::{Header, Offer};

use super::super::stream::{Io, Link};
use super::doorbell;
use super::fastbox::{FASTBOX_DATA, FastboxRx, FastboxTx};
use super::segment::{CLOSED, RingMemory};
use super::single_copy;

/// A large write makes its bytes visible to the reader every this many
/// bytes, so that copying in and copying out overlap.
const PUBLISH_EVERY: usize = 4 << 10;
/// Messages of at least this many bytes go as offers, for the receiver to
/// copy from the sender's memory, where it can and while the receiver
/// lags (see `RingLink::offers`).
const OFFER_FROM: usize = 256 << 10;

/// The link to one peer on the node.
#[derive(Debug)]
pub(crate) struct RingLink {
    /// "rank N", for errors.
    peer: String,
    tx: RingMemory,
    rx: RingMemory,
    /// The peer's doorbell, rung after writing or after freeing room.
    peer_doorbell: *const AtomicU32,
    /// The peer's state word: [`CLOSED`] once it has finalized.
    peer_state: *const AtomicU32,
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
}

impl RingLink {
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
            peer_state: state,
            tx_head: 0,
            tx_tail_seen: 0,
            rx_tail: 0,
            rx_head: 0,
            fastbox_tx: FastboxTx::new(tx.fastboxes()),
            fastbox_rx: FastboxRx::new(rx.fastboxes()),
            pull_from,
            always_offer,
            streamed: Cell::new(false),
        }
    }

    fn peer_doorbell(&self) -> &AtomicU32 {
        // SAFETY: points into the peer's mapping, which the mesh keeps as
        // long as this link.
        unsafe { &*self.peer_doorbell }
    }

    /// True once the peer has finalized: it reads nothing more.
    pub(super) fn peer_closed(&self) -> bool {
        // SAFETY: as for the doorbell.
        unsafe { &*self.peer_state }.load(Ordering::Acquire) == CLOSED
    }

    /// True if the peer has written ring bytes this rank has not read.
    pub(super) fn readable(&self) -> bool {
        let ready = self.rx.has_bytes(self.rx_tail);
        if !ready {
            // Fetch the line the next frame will start in while waiting, so
            // that it travels alongside the head instead of after it.
            self.rx.prefetch(self.rx_tail);
        }
        ready
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

impl Link for RingLink {
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
                    doorbell::ring(self.peer_doorbell());
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
            doorbell::ring(self.peer_doorbell());
        }
        Ok(Io::Done(wrote))
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<Io> {
        // Bytes written after a fastbox message that is still waiting must
        // wait for it: see the head move only when no fastbox is full. (If
        // one fills after this check, it was written after these bytes.)
        let head = self.rx.load_head(self.rx_tail, self.rx_head, &self.peer)?;
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
        self.rx.publish_tail(self.rx_tail);
        doorbell::ring(self.peer_doorbell());
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

    fn pull(&mut self, offer: &Offer, into: &mut [u8], peer: &str) -> Result<()> {
        match self.pull_from {
            Some(pid) => single_copy::pull(pid, offer.address, into, peer),
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
        doorbell::ring(self.peer_doorbell());
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    //! The real link on two threads over ordinary memory: a sender mixing
    //! fastbox messages and ring records, a receiver reading them the way
    //! the mesh does, each sleeping on its doorbell as a waiting rank does.
    //! Under Miri this also checks the ring's, the fastboxes' and the
    //! doorbells' atomics for data races and weak-memory reorderings.

    use std::sync::atomic::AtomicU32;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::envelope::{Envelope, Format, Landing};
    use crate::matching::{ReceiveId, Sink};
    use crate::transport::shm::segment::RING_CONTROL;
    use crate::wire::{Context, Kind};

    const RING: usize = 256;

    /// The control block and ring of one direction, in ordinary memory.
    struct Direction(Vec<u64>);

    impl Direction {
        fn new() -> Direction {
            Direction(vec![0u64; (RING_CONTROL + RING) / 8])
        }

        fn memory(&mut self) -> RingMemory {
            let control = self.0.as_mut_ptr().cast::<u8>();
            RingMemory {
                control,
                // SAFETY: the ring's bytes follow the control block.
                data: unsafe { control.add(RING_CONTROL) },
                capacity: RING,
            }
        }
    }

    /// Keeps the order in which messages came out, whichever path.
    struct Order(Arc<Mutex<Vec<u32>>>);

    impl Sink for Order {
        fn deliver(&mut self, env: Envelope) {
            self.0.lock().unwrap().push(env.tag);
        }
        fn claim(&mut self, _: usize, _: u32, _: Context, _: Format, _: u64) -> Option<Landing> {
            None
        }
        fn landed(&mut self, _: ReceiveId, _: Envelope) {}
    }

    fn header(tag: u32) -> Header {
        Header {
            kind: Kind::Raw,
            element: 5,
            source: 1,
            tag,
            context: Context(6),
            call: 0,
            len: 0,
        }
    }

    // Raw pointers into memory both threads own for the test's length.
    struct Sendable(RingLink);
    // SAFETY: each link is used by one thread at a time; the memory it
    // points into outlives both threads (they are scoped).
    unsafe impl Send for Sendable {}

    impl Sendable {
        // A method, so that a closure takes the whole value (and its Send).
        fn into_link(self) -> RingLink {
            self.0
        }
    }

    /// Sleeps on `bell` the way a waiting rank does, failing if the peer
    /// never rings it although it made `ready` true (a lost wake-up).
    fn sleep(bell: &AtomicU32, ready: &dyn Fn() -> bool, what: &str) {
        let limit = Duration::from_secs(20);
        let start = Instant::now();
        doorbell::sleep_unless(bell, ready, Some(limit));
        assert!(
            start.elapsed() < limit,
            "a lost wake-up: nobody rang while waiting for {what}"
        );
    }

    #[test]
    fn fastbox_and_ring_messages_from_one_sender_come_out_in_order() {
        let messages: u32 = if cfg!(miri) { 200 } else { 1_000_000 };
        let (mut forth, mut back) = (Direction::new(), Direction::new());
        let bells = [AtomicU32::new(0), AtomicU32::new(0)];
        let states = [AtomicU32::new(0), AtomicU32::new(0)];
        let sender = Sendable(RingLink::new(
            "rank 0".into(),
            forth.memory(),
            back.memory(),
            &bells[0],
            &states[0],
            None,
            false,
        ));
        let receiver = Sendable(RingLink::new(
            "rank 1".into(),
            back.memory(),
            forth.memory(),
            &bells[1],
            &states[1],
            None,
            false,
        ));
        let order = Arc::new(Mutex::new(Vec::new()));
        let bells = &bells;
        std::thread::scope(|s| {
            s.spawn(move || {
                let mut link = sender.into_link();
                let mut random = 0x9e37_79b9u32;
                for seq in 0..messages {
                    random ^= random << 13;
                    random ^= random >> 17;
                    random ^= random << 5;
                    // Mostly small messages (the fastbox when it may),
                    // runs of ring records in between.
                    if random % 4 != 0 && link.try_send_beside(&header(seq), &seq.to_le_bytes()).unwrap() {
                        continue;
                    }
                    let record = [seq.to_le_bytes(), 0xabcd_u32.to_le_bytes()].concat();
                    let mut at = 0;
                    while at < record.len() {
                        match link.write(&[IoSlice::new(&record[at..])]).unwrap() {
                            Io::Done(n) => at += n,
                            _ => sleep(&bells[1], &|| link.writable(), "room in the ring"),
                        }
                    }
                }
            });
            let order = Arc::clone(&order);
            s.spawn(move || {
                let mut link = receiver.into_link();
                let mut sink = Order(Arc::clone(&order));
                let mut pending = Vec::new();
                let mut buf = [0u8; 64];
                let mut rounds = 0u32;
                while order.lock().unwrap().len() < messages as usize {
                    // As the mesh reads a peer (ShmMesh::move_bytes).
                    loop {
                        link.fastbox_rx.drain(1, &mut sink).unwrap();
                        // Now and then lose the core right here, as a rank
                        // can: the sender may add a fastbox message and
                        // ring bytes after it meanwhile.
                        rounds = rounds.wrapping_add(1);
                        if rounds % 4 == 0 {
                            std::thread::yield_now();
                        }
                        if link.readable() {
                            if let Io::Done(n) = link.read(&mut buf).unwrap() {
                                pending.extend_from_slice(&buf[..n]);
                                while pending.len() >= 8 {
                                    let seq = u32::from_le_bytes(pending[..4].try_into().unwrap());
                                    assert_eq!(&pending[4..8], &0xabcd_u32.to_le_bytes(), "a torn record");
                                    order.lock().unwrap().push(seq);
                                    pending.drain(..8);
                                }
                            }
                        }
                        if !link.fastbox_rx.ready() {
                            break;
                        }
                    }
                    let done = order.lock().unwrap().len() == messages as usize;
                    if !done && rounds % 2 == 0 {
                        sleep(&bells[0], &|| link.ready(), "a message");
                    }
                }
            });
        });
        let order = order.lock().unwrap();
        let first_wrong = order.iter().enumerate().find(|&(i, &seq)| seq != i as u32);
        assert_eq!(first_wrong, None, "messages out of order");
        assert_eq!(order.len(), messages as usize);
    }
}
