//! Tests of the shared-memory link, on two threads over ordinary memory:
//! a sender mixing fastbox messages and ring records, a receiver reading
//! them the way the mesh does (and closing the way a finalizing rank
//! does), each sleeping on its doorbell as a waiting rank does. Under Miri
//! this also checks the ring's, the fastboxes', the doorbells' and the
//! close's atomics for data races and weak-memory reorderings.

use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::envelope::{Envelope, Format, Landing};
use crate::matching::{ReceiveId, Sink};
use crate::transport::link::as_uninit;
use crate::transport::shm::segment::ring_control;
use crate::wire::{Context, Kind};

const RING: usize = 256;
/// The fewest fastboxes a pair has: a long run of messages fills them and
/// goes on through the ring.
const SLOTS: usize = 128;

/// The control block and ring of one direction, in ordinary memory.
struct Direction(Vec<u64>);

impl Direction {
    fn new() -> Direction {
        Direction(vec![0u64; (ring_control(SLOTS) + RING) / 8])
    }

    fn memory(&mut self) -> RingMemory {
        // SAFETY: the vector holds the control block and the ring's bytes.
        unsafe { RingMemory::new(self.0.as_mut_ptr().cast::<u8>(), RING, SLOTS) }
    }
}

/// Keeps the order in which messages came out, whichever path.
struct Order(Arc<Mutex<Vec<u32>>>);

/// The longest payload the tests send through fastboxes: every length
/// they take, or under Miri (slow), up to three boxes (64 bytes).
const LONGEST: usize = if cfg!(miri) { 64 } else { super::FASTBOX_DATA };

/// The payload of fastbox message `seq`, `len` bytes long: its number,
/// then its low byte over and over (cheap to make and check under Miri).
fn boxed_payload(seq: u32, len: usize) -> Vec<u8> {
    let mut payload = vec![seq as u8; len];
    let n = len.min(4);
    payload[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
    payload
}

impl Sink for Order {
    fn deliver(&mut self, env: Envelope) {
        // A fastbox message (anything but a ring record's 8 bytes of
        // sequence and 0xabcd) carries its pattern whole.
        let record = [env.tag.to_le_bytes(), 0xabcd_u32.to_le_bytes()].concat();
        if env.payload != record {
            assert_eq!(
                env.payload,
                boxed_payload(env.tag, env.payload.len()),
                "message {}",
                env.tag
            );
        }
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
        context: Context(8),
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

/// The sender's link and the receiver's, over `forth` (sender to
/// receiver) and `back`. The receiver sleeps on `bells[0]` and its state
/// is `states[0]` (what the sender watches); the sender's are `bells[1]`
/// and `states[1]`.
fn pair(
    forth: &mut Direction,
    back: &mut Direction,
    bells: &[AtomicU32; 2],
    states: &[AtomicU32; 2],
) -> (Sendable, Sendable) {
    let sender = RingLink::new(
        "rank 0".into(),
        forth.memory(),
        back.memory(),
        &bells[0],
        &states[0],
        None,
        false,
    );
    let receiver = RingLink::new(
        "rank 1".into(),
        back.memory(),
        forth.memory(),
        &bells[1],
        &states[1],
        None,
        false,
    );
    (Sendable(sender), Sendable(receiver))
}

/// Writes the 8-byte record of message `seq` through the ring, sleeping
/// on the sender's `bell` while the ring is full; false if the receiver
/// closed before all of it was written.
fn send_record(link: &mut RingLink, bell: &AtomicU32, seq: u32) -> bool {
    let record = [seq.to_le_bytes(), 0xabcd_u32.to_le_bytes()].concat();
    let mut at = 0;
    while at < record.len() {
        match link.write(&[IoSlice::new(&record[at..])]).unwrap() {
            Io::Done(n) => at += n,
            Io::Closed => return false,
            Io::WouldBlock => sleep(bell, &|| link.writable(), "room in the ring"),
        }
    }
    true
}

#[test]
fn fastbox_and_ring_messages_from_one_sender_come_out_in_order() {
    let messages: u32 = if cfg!(miri) { 200 } else { 1_000_000 };
    let (mut forth, mut back) = (Direction::new(), Direction::new());
    let bells = [AtomicU32::new(0), AtomicU32::new(0)];
    let states = [AtomicU32::new(0), AtomicU32::new(0)];
    let (sender, receiver) = pair(&mut forth, &mut back, &bells, &states);
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
                // Mostly small messages of every length the fastboxes
                // take (one box or several; the fastbox when it may),
                // runs of ring records in between.
                let len = (random >> 8) as usize % (LONGEST + 1);
                if random % 4 != 0 && link.try_send_beside(&header(seq), &boxed_payload(seq, len)).unwrap() {
                    continue;
                }
                assert!(send_record(&mut link, &bells[1], seq), "the ring closed");
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
                        // SAFETY: a link writes only bytes.
                        if let Io::Done(n) = link.read(unsafe { as_uninit(&mut buf) }).unwrap() {
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

/// The receiver closes at a random moment while the sender keeps
/// sending, then takes its last look as a finalizing rank does: every
/// message whose send succeeded (a fastbox taken, or a record written
/// whole) is one the receiver got, and no other.
#[test]
fn a_receiver_that_closes_gets_every_message_whose_send_succeeded() {
    let rounds = if cfg!(miri) { 3 } else { 1500 };
    let mut random = 0x2545_f491u32;
    for round in 0..rounds {
        random ^= random << 13;
        random ^= random >> 17;
        random ^= random << 5;
        let close_after = (random % if cfg!(miri) { 20 } else { 300 }) as usize;
        let (mut forth, mut back) = (Direction::new(), Direction::new());
        let bells = [AtomicU32::new(0), AtomicU32::new(0)];
        let states = [AtomicU32::new(0), AtomicU32::new(0)];
        let (sender, receiver) = pair(&mut forth, &mut back, &bells, &states);
        let (bells, states) = (&bells, &states);
        let (sent, got) = std::thread::scope(|s| {
            let sending = s.spawn(move || {
                let mut link = sender.into_link();
                let mut sent = Vec::new();
                for seq in 0u32.. {
                    let payload = boxed_payload(seq, seq as usize * 37 % (LONGEST + 1));
                    if seq % 3 != 0 && link.try_send_beside(&header(seq), &payload).unwrap() {
                        sent.push(seq);
                        continue;
                    }
                    if !send_record(&mut link, &bells[1], seq) {
                        return sent;
                    }
                    sent.push(seq);
                }
                sent
            });
            let mut link = receiver.into_link();
            let order = Arc::new(Mutex::new(Vec::new()));
            let mut sink = Order(Arc::clone(&order));
            let mut pending = Vec::new();
            let mut buf = [0u8; 64];
            // Reads as the mesh does until `close_after` messages came,
            // then (closed) until the ring and the fastboxes are empty.
            let mut read_all = |link: &mut RingLink, sink: &mut Order| loop {
                link.fastbox_rx.drain(1, sink).unwrap();
                // SAFETY: a link writes only bytes.
                while let Io::Done(n) = link.read(unsafe { as_uninit(&mut buf) }).unwrap() {
                    pending.extend_from_slice(&buf[..n]);
                    while pending.len() >= 8 {
                        let seq = u32::from_le_bytes(pending[..4].try_into().unwrap());
                        assert_eq!(&pending[4..8], &0xabcd_u32.to_le_bytes(), "a torn record");
                        sink.0.lock().unwrap().push(seq);
                        pending.drain(..8);
                    }
                }
                if !link.fastbox_rx.ready() {
                    break;
                }
            };
            // Closing right after making room, while the sender
            // writes into it, lands in its write now and then.
            while order.lock().unwrap().len() < close_after {
                read_all(&mut link, &mut sink);
            }
            states[0].store(CLOSED, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            read_all(&mut link, &mut sink);
            link.fastbox_rx.publish_taken();
            states[0].store(LOOKED, Ordering::Release);
            doorbell::ring(&bells[1], None);
            let sent = sending.join().unwrap();
            let mut got = order.lock().unwrap().clone();
            got.sort_unstable();
            (sent, got)
        });
        assert_eq!(
            sent, got,
            "round {round}: sent (left) against received before closing (right)"
        );
    }
}
