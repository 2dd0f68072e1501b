//! The matching engine's unit tests: order, contexts, landing, withdrawal and
//! the queue bounds.

use super::*;
use crate::envelope::Format;
use crate::selector::Match;

const U8: Format = Format::Raw(1);

fn env(source: usize, tag: u32, byte: u8) -> Envelope {
    Envelope::new(source, tag, Context::WORLD, U8, vec![byte])
}

fn user(pattern: Match) -> Selector {
    Selector::new(Context::WORLD, pattern)
}

#[test]
fn posted_before_and_after_arrival_behave_the_same() {
    let mut m = Matcher::default();
    let early = m.post_into(user(Match::source(1)), None);
    m.deliver(env(1, 0, 10));
    m.deliver(env(1, 0, 11));
    let late = m.post_into(user(Match::source(1)), None);
    assert_eq!(m.take(early).unwrap().payload, vec![10]);
    assert_eq!(m.take(late).unwrap().payload, vec![11]);
}

#[test]
fn tags_and_contexts_separate_messages() {
    let mut m = Matcher::default();
    m.deliver(env(2, 5, 1));
    m.deliver(Envelope::new(2, 6, Context::WORLD_COLLECTIVE, U8, vec![2]));
    let coll = m.post_into(user(Match::tag(6)), None);
    assert!(!m.is_complete(coll));
    let five = m.post_into(user(Match::any()), None);
    assert_eq!(m.take(five).unwrap().payload, vec![1]);
    let c = m.post_into(
        Selector::new(Context::WORLD_COLLECTIVE, Match::source(2).with_tag(6)),
        None,
    );
    assert_eq!(m.take(c).unwrap().payload, vec![2]);
}

#[test]
fn a_message_landed_in_a_fresh_buffer_survives_its_receive_being_dropped() {
    let mut m = Matcher::default();
    let room = Room::Fresh {
        size: 8,
        align: 8,
        element: 7,
    };
    let id = m.post_into(user(Match::any()), Some(room));
    let other = m.post_into(user(Match::source(3)), None);
    assert!(!m.cancel(other), "nothing to give back");
    let landing = m.claim(2, 9, Context::WORLD, Format::Raw(7), 16).expect("claimed");
    // SAFETY: the landing has room for the 16 bytes claimed.
    unsafe { std::ptr::copy_nonoverlapping([7u8; 16].as_ptr(), landing.ptr, 16) };
    let mut e = Envelope::new(2, 9, Context::WORLD, Format::Raw(7), Vec::new());
    e.landed = Some(16);
    m.landed(landing.id, e);
    assert!(m.is_complete(id));
    assert!(m.cancel(id), "the landed message goes back");
    let next = m.post_into(user(Match::source(2)), None);
    let e = m.take(next).expect("the message is queued again");
    assert_eq!((e.landed, e.payload.as_slice()), (None, &[7u8; 16][..]));
    assert!(e.fresh.is_none());
}

#[test]
fn a_message_landed_in_a_given_buffer_is_copied_out_when_its_receive_is_cancelled_and_keeps_its_place() {
    let mut m = Matcher::default();
    let mut buf = [0u8; 4];
    let room = Room::given(&mut buf, 1);
    m.deliver(env(5, 0, 50));
    let id = m.post_into(user(Match::source(1)), Some(room));
    let landing = m.claim(1, 0, Context::WORLD, U8, 3).expect("claimed");
    // SAFETY: three bytes into the four-byte buffer.
    unsafe { std::ptr::copy_nonoverlapping([1u8, 2, 3].as_ptr(), landing.ptr, 3) };
    m.deliver(env(6, 0, 60));
    let mut e = Envelope::new(1, 0, Context::WORLD, U8, Vec::new());
    e.landed = Some(3);
    m.landed(landing.id, e);
    assert!(m.cancel(id), "the landed message goes back");
    buf.fill(0);
    let order: Vec<(usize, Vec<u8>)> = (0..3)
        .map(|_| {
            let r = m.post_into(user(Match::any()), None);
            let e = m.take(r).expect("queued");
            (e.source, e.payload.clone())
        })
        .collect();
    assert_eq!(order, [(5, vec![50]), (1, vec![1, 2, 3]), (6, vec![60])]);
}

#[test]
fn a_requeued_message_goes_back_to_its_place_and_rooms_take_only_their_type() {
    let mut m = Matcher::default();
    for b in 0..4 {
        m.deliver(env(1, 0, b));
    }
    let r = m.post_into(user(Match::any()), None);
    let first = m.take(r).unwrap();
    let r = m.post_into(user(Match::any()), None);
    let second = m.take(r).unwrap();
    m.requeue(second);
    m.requeue(first);
    let got: Vec<u8> = (0..4)
        .map(|_| {
            let r = m.post_into(user(Match::any()), None);
            m.take(r).unwrap().payload[0]
        })
        .collect();
    assert_eq!(got, [0, 1, 2, 3]);
    let mut buf = [0u8; 8];
    let room = Room::given(&mut buf, 5);
    m.post_into(user(Match::any()), Some(room));
    assert!(
        m.claim(1, 0, Context::WORLD, Format::Raw(7), 8).is_none(),
        "another type"
    );
    assert!(m.claim(1, 0, Context::WORLD, Format::Raw(5), 9).is_none(), "too long");
    assert!(m.claim(1, 0, Context::WORLD, Format::Raw(5), 8).is_some());
}

/// Waits and probes on several threads overlap: the one that ends
/// first must not undo what the others still need (reading every peer,
/// reading a probed peer past the queue bound).
#[test]
fn overlapping_waits_and_probes_each_keep_their_peers_read() {
    let mut m = Matcher::default();
    let big = vec![0u8; (QUEUED_PER_PEER / 2) as usize + 1];
    for _ in 0..2 {
        m.deliver(Envelope::new(1, 0, Context::WORLD, U8, big.clone()));
    }
    assert!(!m.wants(1), "past the bound, nobody waits on rank 1");
    m.begin_read_all();
    m.begin_read_all();
    m.end_read_all();
    assert!(m.wants(1), "one wait still reads every peer");
    m.end_read_all();
    assert!(!m.wants(1));
    let (from_1, from_2) = (user(Match::source(1)), user(Match::source(2)));
    m.watch(from_1);
    m.watch(from_2);
    m.unwatch(from_2);
    assert!(m.wants(1), "the probe of rank 1 still waits");
    m.unwatch(from_1);
    assert!(!m.wants(1));
    m.begin_read_all();
    m.keep_to_bound();
    assert!(!m.wants(1), "finalize's last reads keep to the bound");
}
