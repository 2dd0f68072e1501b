//! Checks for vectors and slices of plain numbers sent as serde values,
//! which travel as raw numbers: every way of sending them meets every way
//! of receiving them, whether the receive waits first or the message does,
//! and the errors for a mismatch.

use std::collections::VecDeque;
use std::time::Duration;

use spmd::{Communicator, Error, Match, Request};

fn values(len: usize, salt: usize) -> Vec<f64> {
    (0..len).map(|i| (i * 31 + salt) as f64 * 0.5 - 7.25).collect()
}

pub fn run(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    let partner = me ^ 1;
    if partner >= n {
        // The odd rank out meets the pairs' barrier.
        world.barrier()?;
    } else if me < partner {
        send_all(world, partner)?;
    } else {
        receive_all(world, partner)?;
    }
    timeout_then_arrival(world)?;
    dropped_request_keeps_its_message(world)?;
    world.barrier()?;
    if me == 0 {
        println!("ok vectors of numbers as serde values, every way in and out");
    }
    Ok(())
}

const LENGTHS: [usize; 6] = [0, 1, 6, 7, 100, 100_000];

fn send_all(world: &Communicator, to: usize) -> Result<(), Error> {
    for (i, &len) in LENGTHS.iter().enumerate() {
        let v = values(len, i);
        world.send_with_tag(&v, to, 1)?; // Vec<f64>
        world.send_with_tag(&v[..], to, 2)?; // [f64]
        world.send_slice_with_tag(&v, to, 3)?; // raw, received as a Vec
        world.send_with_tag(&&v, to, 4)?; // &Vec<f64>: through bincode
        world.send_with_tag(&v, to, 5)?; // received with receive_into
        world.immediate_send_with_tag(&v, to, 6)?.wait()?;
        let ints: Vec<i32> = (0..len as i32).map(|x| x * 3 - 1).collect();
        let back: Vec<i32> = world.sendrecv_with_tag(&ints, to, 7, to, 8)?;
        assert!(back == ints.iter().map(|x| x + 1).collect::<Vec<_>>(), "sendrecv {len}");
    }
    // Sent before the receive is posted: it waits as an unexpected message.
    world.send_with_tag(&values(1000, 9), to, 9)?;
    world.barrier()?;
    // Mismatches.
    world.send_with_tag(&vec![1u8; 7], to, 10)?;
    world.send_with_tag(&values(3, 0), to, 11)?;
    Ok(())
}

fn receive_all(world: &Communicator, from: usize) -> Result<(), Error> {
    for (i, &len) in LENGTHS.iter().enumerate() {
        let want = values(len, i);
        for tag in [1, 2, 3, 4] {
            let got: Vec<f64> = world.receive_with_tag(from, tag)?;
            assert!(got == want, "{len} values on tag {tag}");
        }
        let mut buf = vec![0.0f64; len + 1];
        let status = world.receive_into_with_tag(&mut buf, from, 5)?;
        assert_eq!(status.len(), 8 * len as u64, "receive_into length");
        assert!(buf[..len] == want[..], "receive_into {len}");
        let (got, status) = world.immediate_receive_with_tag::<Vec<f64>>(from, 6)?.wait()?;
        assert!(got == want && status.len() == 8 * len as u64, "immediate {len}");
        let ints: Vec<i32> = world.receive_with_tag(from, 7)?;
        let plus: Vec<i32> = ints.iter().map(|x| x + 1).collect();
        world.send_with_tag(&plus, from, 8)?;
    }
    world.barrier()?;
    let (got, _) = world.receive_vec_matching::<f64>(Match::source(from).with_tag(9))?;
    assert!(got == values(1000, 9), "unexpected message");
    // A receive of the wrong type fails and leaves the message queued for
    // a receive of the right one.
    match world.receive_with_tag::<Vec<f64>>(from, 10) {
        Err(Error::FormatMismatch {
            sent_as, received_as, ..
        }) => {
            assert!(
                sent_as.contains("u8") && received_as.contains("f64"),
                "{sent_as} / {received_as}"
            )
        }
        other => panic!("7 u8 received as Vec<f64> gave {:?}", other.map(|v| v.len())),
    }
    let bytes: Vec<u8> = world.receive_with_tag(from, 10)?;
    assert_eq!(bytes.len(), 7, "the u8 message kept after a receive of the wrong type");
    match world.receive_with_tag::<VecDeque<f64>>(from, 11) {
        Err(Error::FormatMismatch { .. }) => {}
        other => panic!("a Vec<f64> received as VecDeque<f64> gave {:?}", other.map(|v| v.len())),
    }
    let mut small = [0.0f64; 2];
    match world.receive_into_with_tag(&mut small, from, 11) {
        Err(Error::Truncated { buffer_bytes: 16, .. }) => {}
        other => panic!("a long Vec<f64> into 2 f64 gave {other:?}"),
    }
    let kept: Vec<f64> = world.receive_with_tag(from, 11)?;
    assert!(!kept.is_empty(), "the f64 message kept after two failed receives");
    Ok(())
}

/// A receive of a vector that times out leaves nothing behind: the message
/// sent later still arrives whole.
fn timeout_then_arrival(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    let (to, from) = ((me + 1) % n, (me + n - 1) % n);
    if n == 1 {
        return Ok(());
    }
    match world.receive_matching_timeout::<Vec<f64>>(Match::source(from).with_tag(30), Duration::from_millis(20)) {
        Err(Error::Timeout { .. }) => {}
        other => panic!(
            "a receive with nothing sent gave {:?}",
            other.map(|(v, status)| (v.len(), status))
        ),
    }
    world.barrier()?;
    world.send_with_tag(&values(5000, me), to, 30)?;
    let got: Vec<f64> = world.receive_with_tag(from, 30)?;
    assert!(got == values(5000, from), "the message after a timed-out receive");
    Ok(())
}

/// A vector that landed for a non-blocking receive whose request is then
/// dropped without waiting is not lost: the next receive gets it whole.
fn dropped_request_keeps_its_message(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    if n == 1 {
        return Ok(());
    }
    let (to, from) = ((me + 1) % n, (me + n - 1) % n);
    let mut request = world.immediate_receive_with_tag::<Vec<f64>>(from, 40)?;
    world.send_with_tag(&values(300, me), to, 40)?;
    while !request.test()? {
        std::thread::yield_now();
    }
    drop(request);
    let mut buf = vec![0.0f64; 300];
    let status = world.receive_into_with_tag(&mut buf, from, 40)?;
    assert_eq!(status.len(), 8 * 300, "the length of the message kept");
    assert!(
        buf == values(300, from),
        "the message kept after its request was dropped"
    );
    world.barrier()
}
