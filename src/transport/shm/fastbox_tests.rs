//! Unit tests of the fastboxes: every length, long messages round the boxes, malformed boxes.

use super::*;
use crate::envelope::{Envelope, Format, Landing};
use crate::matching::{ReceiveId, Sink};
use crate::wire::{Context, Kind};

/// Keeps every message delivered to it; lands nothing.
#[derive(Default)]
struct Collect(Vec<Envelope>);

impl Sink for Collect {
    fn deliver(&mut self, env: Envelope) {
        self.0.push(env);
    }
    fn claim(&mut self, _: usize, _: u32, _: Context, _: Format, _: u64) -> Option<Landing> {
        None
    }
    fn landed(&mut self, _: ReceiveId, _: Envelope) {}
}

/// The boxes of the test areas: the fewest a pair has, so that long
/// messages fill them soonest.
const SLOTS: usize = 128;

/// A fastbox area in ordinary memory, aligned like the real one.
fn area() -> Vec<u64> {
    vec![0u64; area_bytes(SLOTS) / 8]
}

/// A fresh area (kept alive by the caller) and both sides of it.
fn boxes() -> (Vec<u64>, FastboxTx, FastboxRx) {
    let mut memory = area();
    let base = memory.as_mut_ptr().cast::<u8>();
    (memory, FastboxTx::new(base, SLOTS), FastboxRx::new(base, SLOTS))
}

fn header(tag: u32) -> Header {
    Header {
        kind: Kind::Raw,
        element: 5,
        source: 3,
        tag,
        context: Context(8),
        call: 0,
        len: 0,
    }
}

#[test]
fn messages_arrive_in_order_and_a_full_set_of_boxes_refuses_more() {
    let (_memory, mut tx, mut rx) = boxes();
    let mut got = Collect::default();
    let mut next = 0u32;
    for round in 0..10u32 {
        // Fill every box, then one more must be refused.
        let mut sent = 0;
        while tx
            .try_send(&header(next + sent), &(next + sent).to_le_bytes(), "p")
            .unwrap()
        {
            sent += 1;
        }
        assert!(sent >= 1 && sent <= SLOTS as u32, "round {round}: {sent} sent");
        assert!(
            !tx.try_send(&header(0), &[1; FASTBOX_DATA + 1], "p").unwrap(),
            "too long"
        );
        assert!(rx.drain(3, &mut got).unwrap());
        next += sent;
    }
    assert_eq!(got.0.len(), next as usize);
    for (i, env) in got.0.iter().enumerate() {
        assert_eq!((env.source, env.tag, env.context), (3, i as u32, Context(8)));
        assert_eq!(env.payload, (i as u32).to_le_bytes());
        assert_eq!(env.format, Format::Raw(5));
    }
    assert!(!rx.drain(3, &mut got).unwrap(), "nothing more");
    let full = [9u8; FASTBOX_DATA];
    assert!(tx.try_send(&header(1), &full, "p").unwrap());
    assert!(rx.drain(3, &mut got).unwrap());
    assert_eq!(got.0.last().map(|e| e.payload.clone()), Some(full.to_vec()));
}

#[test]
fn every_length_a_box_holds_arrives_whole() {
    let (_memory, mut tx, mut rx) = boxes();
    let mut got = Collect::default();
    for call in [0, 77] {
        for len in 0..=FASTBOX_DATA {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8 | 0x80).collect();
            let sent = Header {
                call,
                context: if call == 0 { Context(8) } else { Context::collective(8) },
                ..header(len as u32)
            };
            assert!(tx.try_send(&sent, &payload, "p").unwrap(), "{len} bytes refused");
            assert!(rx.drain(3, &mut got).unwrap(), "{len} bytes not seen");
            let last = got.0.last().map(|e| (e.tag, e.call, e.payload.clone()));
            assert_eq!(last, Some((len as u32, call, payload)), "{len} bytes, call {call}");
        }
    }
}

#[test]
fn the_boxes_hold_what_the_layout_says_byte_by_byte() {
    // A peer of another build reads these bytes: the layout, not only a
    // round trip, is the contract.
    let mut memory = area();
    let base = memory.as_mut_ptr().cast::<u8>();
    let mut tx = FastboxTx::new(base, SLOTS);
    let plain = Header {
        tag: 0x0102_0304,
        context: Context(0x0506_0708),
        ..header(0)
    };
    let payload: Vec<u8> = (1..=30).collect();
    assert!(tx.try_send(&plain, &payload, "p").unwrap());
    let collective = Header {
        call: 0x0a0b_0c0d,
        context: Context::collective(2),
        ..plain
    };
    assert!(tx.try_send(&collective, &payload[..13], "p").unwrap());
    let bytes: Vec<u8> = memory.iter().flat_map(|w| w.to_le_bytes()).collect();
    let boxed = |n: usize| &bytes[LINE + n * BOX..LINE + (n + 1) * BOX];
    let le = |v: u32| v.to_le_bytes().to_vec();
    let fields = |len: u32, call: bool| Kind::Raw as u32 | len << 4 | if call { CALL_FOLLOWS } else { 0 } | 5 << 16;
    // Box 0: number 1, fields, tag, context, 16 payload bytes; box 1: 0,
    // then the other 14, padded with zeros.
    let want0 = [
        le(1),
        le(fields(30, false)),
        le(0x0102_0304),
        le(0x0506_0708),
        payload[..16].to_vec(),
    ]
    .concat();
    let want1 = [le(0), payload[16..].to_vec(), vec![0; 14]].concat();
    // Box 2: number 3, fields, tag, context, call number, 12 bytes; box 3:
    // 0, the 13th byte, zeros.
    let context = Context::collective(2).0;
    let want2 = [
        le(3),
        le(fields(13, true)),
        le(0x0102_0304),
        le(context),
        le(0x0a0b_0c0d),
        payload[..12].to_vec(),
    ]
    .concat();
    let want3 = [le(0), vec![13], vec![0; 27]].concat();
    assert_eq!(
        [boxed(0), boxed(1), boxed(2), boxed(3)],
        [&want0[..], &want1[..], &want2[..], &want3[..]]
    );
}

#[test]
fn long_messages_take_several_boxes_and_wait_for_enough_free_ones() {
    let (_memory, mut tx, mut rx) = boxes();
    let mut got = Collect::default();
    let mut expected = Vec::new();
    // Lengths of 1 to MOST_BOXES boxes, in a mix that wraps round the
    // slots many times.
    let lengths = [FASTBOX_DATA, 3, 17, 64, 16, FASTBOX_DATA - 1, 8];
    for round in 0..if cfg!(miri) { 8 } else { 40 } {
        let mut used = 0;
        for (k, &len) in lengths.iter().cycle().skip(round).enumerate() {
            let payload: Vec<u8> = (0..len).map(|i| (i + 3 * k + round) as u8).collect();
            if !tx.try_send(&header(k as u32), &payload, "p").unwrap() {
                // Refused only when the boxes it needs are not free.
                assert!(
                    used + boxes_for(len, false) > SLOTS as u64,
                    "round {round}: refused with {used} used"
                );
                break;
            }
            used += boxes_for(len, false);
            expected.push(payload);
        }
        assert!(rx.drain(3, &mut got).unwrap());
    }
    let payloads: Vec<Vec<u8>> = got.0.iter().map(|e| e.payload.clone()).collect();
    assert_eq!(payloads, expected);
    assert_eq!((boxes_for(16, false), boxes_for(17, false)), (1, 2));
    assert_eq!((boxes_for(12, true), boxes_for(13, true)), (1, 2));
    assert_eq!((boxes_for(44, false), boxes_for(45, false)), (2, 3));
    assert_eq!(boxes_for(FASTBOX_DATA, true), MOST_BOXES as u64);
}

#[test]
fn every_node_has_a_power_of_two_of_boxes_within_the_memory_said() {
    for local in 1..=300 {
        let slots = slots_for(local);
        assert!(slots.is_power_of_two() && slots >= 128, "{local} ranks: {slots}");
        assert!(MOST_BOXES as u64 <= publish_every(slots), "{local} ranks");
        // One area per ring (a segment has one per rank of the node):
        // 32 KiB of boxes up to 8 ranks, about 16 MiB in all up to 64.
        let all = local * local * area_bytes(slots);
        assert!(local > 8 || slots * BOX == 32 << 10, "{local} ranks");
        assert!(local > 64 || all <= 33 << 19, "{local} ranks: {all} bytes");
    }
}

#[test]
fn a_window_of_64_messages_of_256_bytes_fits_the_boxes_of_a_small_node() {
    let slots = slots_for(2);
    let mut memory = vec![0u64; area_bytes(slots) / 8];
    let base = memory.as_mut_ptr().cast::<u8>();
    let (mut tx, mut rx) = (FastboxTx::new(base, slots), FastboxRx::new(base, slots));
    // The worst moment for a sender: its receiver took everything, but
    // last published its count just short of a quarter of the boxes ago
    // (a quarter, then all but one of the next quarter), so the window's
    // sender has to read that count to find room.
    let quarter = publish_every(slots);
    let mut got = Collect::default();
    for part in [quarter, quarter - 1] {
        for i in 0..part {
            assert!(tx.try_send(&header(i as u32), &[], "p").unwrap());
        }
        assert!(rx.drain(3, &mut got).unwrap());
    }
    assert_eq!(
        taken_counter(base).load(Ordering::Relaxed),
        quarter,
        "the count published"
    );
    let payload = [7u8; 256];
    assert_eq!(boxes_for(payload.len(), false), MOST_BOXES as u64);
    for i in 0..64 {
        assert!(
            tx.try_send(&header(i), &payload, "p").unwrap(),
            "message {i} of the window"
        );
    }
    assert_eq!(tx.taken_seen, quarter, "the sender read the count");
    assert!(rx.drain(3, &mut got).unwrap());
    let before = 2 * quarter as usize - 1;
    assert_eq!(got.0.len(), before + 64);
    assert!(got.0[before..].iter().all(|e| e.payload == payload));
}

/// Writes `value` into 4-byte field `field` of box `n`, as a peer could.
fn set_field(base: *mut u8, n: u64, field: usize, value: u32) {
    let word = &slot(base, SLOTS, n)[field / 2];
    let shift = 32 * (field % 2);
    let kept = word.load(Ordering::Relaxed) & !(u64::from(u32::MAX) << shift);
    word.store(kept | u64::from(value) << shift, Ordering::Relaxed);
}

#[test]
fn a_malformed_box_is_an_error_naming_the_peer_and_the_field() {
    // (4-byte field, value, field named): field 1, the high half of the
    // first word, holds kind, length and element.
    let cases = [
        (1, 9u32, "kind"),
        (1, 1 | (FASTBOX_DATA as u32 + 1) << 4, "length"),
        (1, 1 | 0x7ff << 4, "length"),
        (1, 1 | 3 << 16, "element"),
        // A call number (the payload's first 4 bytes) on a message that may
        // have none.
        (1, Kind::Raw as u32 | 5 << 4 | CALL_FOLLOWS | 5 << 16, "call"),
    ];
    for (w, value, field) in cases {
        let mut memory = area();
        let base = memory.as_mut_ptr().cast::<u8>();
        let mut tx = FastboxTx::new(base, SLOTS);
        assert!(tx.try_send(&header(1), b"hello", "p").unwrap());
        set_field(base, 0, w, value);
        match FastboxRx::new(base, SLOTS).drain(5, &mut Collect::default()) {
            Err(Error::Protocol { peer, field: f, .. }) => assert_eq!((peer.as_str(), f), ("rank 5", field)),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn a_collective_message_carries_its_call_number() {
    let (_memory, mut tx, mut rx) = boxes();
    let mut got = Collect::default();
    let collective = Header {
        call: 41,
        context: Context::collective(9),
        ..header(3)
    };
    let bytes = |len: usize, from: u8| (0..len).map(|i| from.wrapping_add(i as u8)).collect::<Vec<u8>>();
    for len in [0, 12, 13, FASTBOX_DATA] {
        assert!(tx.try_send(&collective, &bytes(len, 100), "p").unwrap());
        assert!(tx.try_send(&header(4), &bytes(16, 1), "p").unwrap());
    }
    assert!(rx.drain(3, &mut got).unwrap());
    let seen: Vec<(u32, u32, Vec<u8>)> = got.0.iter().map(|e| (e.tag, e.call, e.payload.clone())).collect();
    let mut want = Vec::new();
    for len in [0, 12, 13, FASTBOX_DATA] {
        want.extend([(3, 41, bytes(len, 100)), (4, 0, bytes(16, 1))]);
    }
    assert_eq!(seen, want);
}

#[test]
fn a_further_box_with_a_sequence_number_is_an_error() {
    // Two boxes (read without a loop) and three (the last one stamped).
    for (len, stamped) in [(30, 1), (60, 2)] {
        let mut memory = area();
        let base = memory.as_mut_ptr().cast::<u8>();
        let mut tx = FastboxTx::new(base, SLOTS);
        assert!(tx.try_send(&header(1), &[7; 60][..len], "p").unwrap());
        set_field(base, stamped, 0, stamp(stamped));
        match FastboxRx::new(base, SLOTS).drain(5, &mut Collect::default()) {
            Err(Error::Protocol { peer, field, .. }) => assert_eq!((peer.as_str(), field), ("rank 5", "fastbox")),
            other => panic!("{len} bytes: {other:?}"),
        }
    }
}

#[test]
fn payload_that_looks_like_a_sequence_number_is_never_taken_for_one() {
    // Payload words that equal the numbers the boxes they land in would
    // carry as a message's first box, lap after lap: a box a long message
    // only continues must not pass for the start of the next.
    let (_memory, mut tx, mut rx) = boxes();
    let mut got = Collect::default();
    let mut expected = Vec::new();
    for lap in 0..6u64 {
        loop {
            let n = tx.sent;
            let payload: Vec<u8> = (0..FASTBOX_DATA / 4)
                .flat_map(|i| stamp(n + i as u64 / 7 + 1 + SLOTS as u64).to_le_bytes())
                .collect();
            if !tx.try_send(&header(lap as u32), &payload, "p").unwrap() {
                break;
            }
            expected.push(payload);
        }
        assert!(rx.drain(3, &mut got).unwrap());
        // A short message after the long ones: taken at once, whole.
        assert!(tx.try_send(&header(99), &[5; 3], "p").unwrap());
        expected.push(vec![5; 3]);
        assert!(rx.drain(3, &mut got).unwrap());
    }
    let payloads: Vec<Vec<u8>> = got.0.iter().map(|e| e.payload.clone()).collect();
    assert_eq!(payloads, expected);
}

#[test]
fn a_taken_count_that_cannot_be_is_an_error() {
    let mut memory = area();
    let base = memory.as_mut_ptr().cast::<u8>();
    let mut tx = FastboxTx::new(base, SLOTS);
    for i in 0..SLOTS as u32 {
        assert!(tx.try_send(&header(i), &[], "p").unwrap());
    }
    taken_counter(base).store(u64::MAX, Ordering::Relaxed);
    assert!(matches!(
        tx.try_send(&header(0), &[], "rank 2"),
        Err(Error::Protocol {
            field: "fastbox taken",
            ..
        })
    ));
}

#[test]
fn stamps_are_never_zero_and_differ_between_neighbours() {
    for n in [0u64, 1, 7, u32::MAX as u64 - 1, u32::MAX as u64, 1 << 40] {
        assert_ne!(stamp(n), 0);
        assert_ne!(stamp(n), stamp(n + SLOTS as u64), "n = {n}");
    }
}

/// Drained into the engine's own matcher (the loop's in-line path), each
/// message lands where the matcher says: in the front receive's lent
/// buffer, in a lent or given buffer further back, or in the queue.
#[test]
fn a_drain_into_a_matcher_lands_each_message_in_its_receive() {
    use crate::envelope::{Buffer, Room};
    use crate::matching::{LandedSlot, Matcher, SlotRef};
    use crate::selector::{Match, Selector};

    let (_memory, mut tx, mut rx) = boxes();
    let mut m = Matcher::default();
    let sel = |tag| Selector::new(Context(8), Match::source(3).with_tag(tag));
    let (mut given, mut lent, mut front) = ([0u8; 8], [0u8; 8], [0u8; 8]);
    let (lent_slot, front_slot) = (LandedSlot::default(), LandedSlot::default());
    let lent_room = |buf: &mut [u8; 8], slot| Room::Lent {
        buffer: Buffer {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        },
        element: 5,
        slot,
    };
    // Tag 2 into a given buffer first, then tag 1 into a lent one: tag 1's
    // message finds its receive behind the front.
    let given_id = m.post_into(sel(2), Some(Room::given(&mut given, 5)));
    m.post_into(sel(1), Some(lent_room(&mut lent, SlotRef::new(&lent_slot))));
    for (tag, byte) in [(1, 0x11u8), (2, 0x22), (9, 0x99)] {
        assert!(tx.try_send(&header(tag), &[byte; 8], "p").unwrap());
    }
    assert!(rx.drain(3, &mut m).unwrap());
    assert_eq!(lent, [0x11; 8]);
    let status = lent_slot.status(5).expect("tag 1 landed in its lent buffer");
    assert_eq!((status.source(), status.tag()), (3, 1));
    assert_eq!(given, [0x22; 8]);
    let env = m.take(given_id).expect("tag 2 landed in its given buffer");
    assert_eq!((env.source, env.tag, env.landed), (3, 2, Some(8)));
    assert!(m.probe(sel(9)).is_some(), "tag 9, with no receive, is queued");
    // A lent receive at the front takes the next message in line.
    m.post_into(sel(4), Some(lent_room(&mut front, SlotRef::new(&front_slot))));
    assert!(tx.try_send(&header(4), &[0x44; 8], "p").unwrap());
    assert!(rx.drain(3, &mut m).unwrap());
    assert_eq!(front, [0x44; 8]);
    assert_eq!(front_slot.status(5).map(|s| s.tag()), Some(4));
}
