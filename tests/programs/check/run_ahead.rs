//! Collectives where some ranks only send, called thousands of times in
//! a row while the ranks that receive start late: the ranks that send must
//! be held back within 64 calls (else they would run ahead by more calls
//! than a call number tells apart), and every call must still get the
//! right value.

use std::time::Duration;

use spmd::{Communicator, Error, Request, op};

/// The collectives, each with the side that runs ahead: `true` where the
/// root only sends (and the scans, whose rank 0 only sends), `false` where
/// the other ranks do.
const KINDS: [(&str, bool); 12] = [
    ("broadcast", true),
    ("scatter", true),
    ("scan", true),
    ("broadcast_into", true),
    ("scatterv_into", true),
    ("exscan_into", true),
    ("immediate_broadcast", true),
    ("immediate_broadcast_into", true),
    ("reduce", false),
    ("gather", false),
    ("reduce_into", false),
    ("gatherv_into", false),
];

/// The tag of the reports of the ranks that run ahead: how many calls
/// they have made, every [`EVERY`] calls, and [`ALL`] at the end.
const PROGRESS: u32 = 77;
const EVERY: u64 = 16;
const ALL: u64 = u64::MAX;

/// How far ahead a rank may get: spmd holds a rank back 64 calls after
/// the ranks were last in step.
const BOUND: u64 = 64;

/// Runs `calls` calls of each collective with root 0. The ranks that
/// receive first wait while the ranks that run ahead report progress (until
/// none has come for `late`): if those went on to the end, or got more than
/// [`BOUND`] calls ahead, nothing held them back, and the check fails.
/// Then every rank makes its calls, each checked. With `late` zero, every
/// rank starts at once and rank 0 prints the time until all are done.
/// `only` names one collective to run alone.
pub fn run(comm: &Communicator, calls: u64, late: Duration, only: Option<&str>) -> Result<(), Error> {
    let (me, n) = (comm.rank(), comm.size());
    let sum = (n * (n - 1) / 2) as u64;
    assert!(
        late.is_zero() || calls > 2 * BOUND,
        "run-ahead: too few calls to see a rank held back"
    );
    let chosen = KINDS.iter().filter(|(kind, _)| only.is_none_or(|o| o == *kind));
    for &(kind, root_runs) in chosen {
        let ahead: Vec<usize> = (0..n).filter(|r| (*r == 0) == root_runs).collect();
        let behind: Vec<usize> = (0..n).filter(|r| !ahead.contains(r)).collect();
        let reports = !late.is_zero();
        if reports && behind.contains(&me) {
            for &r in &ahead {
                let mut made = 0;
                loop {
                    match comm.receive_with_tag_timeout::<u64>(r, PROGRESS, late) {
                        Ok(ALL) => panic!("{kind}: rank {r} made all {calls} calls while rank {me} made none"),
                        Ok(m) => made = m,
                        Err(Error::Timeout { .. }) => break,
                        Err(e) => return Err(e),
                    }
                }
                if made > BOUND {
                    panic!("{kind}: rank {r} made {made} calls while rank {me} made none");
                }
            }
        }
        let began = std::time::Instant::now();
        for i in 0..calls {
            let fail = |what: String| -> Result<(), Error> { panic!("{kind} call {i} on rank {me}: {what}") };
            match kind {
                "broadcast" => {
                    let mut v = if me == 0 { i } else { 0 };
                    comm.broadcast(&mut v, 0)?;
                    if v != i {
                        fail(format!("got {v}"))?;
                    }
                }
                "scatter" => {
                    let all: Vec<u64> = (0..n as u64).map(|r| i + r).collect();
                    let v = comm.scatter(if me == 0 { &all[..] } else { &[] }, 0)?;
                    if v != i + me as u64 {
                        fail(format!("got {v}"))?;
                    }
                }
                "scan" => {
                    let v = comm.scan(&(me as u64), &op::Sum)?;
                    if v != (me * (me + 1) / 2) as u64 {
                        fail(format!("got {v}"))?;
                    }
                }
                "broadcast_into" => {
                    let mut v = [if me == 0 { i } else { 0 }; 3];
                    comm.broadcast_into(&mut v, 0)?;
                    if v != [i; 3] {
                        fail(format!("got {v:?}"))?;
                    }
                }
                "scatterv_into" => {
                    let counts: Vec<usize> = (1..=n).collect();
                    let all: Vec<u64> = (0..counts.iter().sum::<usize>() as u64).map(|k| k + i).collect();
                    let mut mine = vec![0u64; me + 1];
                    comm.scatterv_into(if me == 0 { &all[..] } else { &[] }, &counts, &mut mine, 0)?;
                    let first = (me * (me + 1) / 2) as u64 + i;
                    if mine[0] != first {
                        fail(format!("got {mine:?}"))?;
                    }
                }
                "exscan_into" => {
                    let mut before = [0u64];
                    comm.exscan_into(&[me as u64 + i], &mut before, &op::Sum)?;
                    let want = (me * (me.max(1) - 1) / 2) as u64 + i * me as u64;
                    if me > 0 && before[0] != want {
                        fail(format!("got {before:?}, want {want}"))?;
                    }
                }
                "immediate_broadcast" => {
                    let mut v = if me == 0 { i } else { 0 };
                    comm.immediate_broadcast(&mut v, 0)?.wait()?;
                    if v != i {
                        fail(format!("got {v}"))?;
                    }
                }
                "immediate_broadcast_into" => {
                    let mut v = [if me == 0 { i } else { 0 }; 2];
                    comm.immediate_broadcast_into(&mut v, 0)?.wait()?;
                    if v != [i; 2] {
                        fail(format!("got {v:?}"))?;
                    }
                }
                "reduce" => {
                    let v = comm.reduce(&(me as u64 + i), &op::Sum, 0)?;
                    if me == 0 && v != Some(sum + i * n as u64) {
                        fail(format!("got {v:?}"))?;
                    }
                }
                "gather" => {
                    let v = comm.gather(&(i + me as u64), 0)?;
                    let want = (me == 0).then(|| (0..n as u64).map(|r| i + r).collect::<Vec<_>>());
                    if v != want {
                        fail(format!("got {v:?}"))?;
                    }
                }
                "reduce_into" => {
                    let mut out = [0u64];
                    comm.reduce_into(&[me as u64 + i], &mut out, &op::Sum, 0)?;
                    if me == 0 && out[0] != sum + i * n as u64 {
                        fail(format!("got {out:?}"))?;
                    }
                }
                _ => {
                    let counts: Vec<usize> = vec![1; n];
                    let mut all = vec![0u64; if me == 0 { n } else { 0 }];
                    comm.gatherv_into(&[i + me as u64], &mut all, &counts, 0)?;
                    if me == 0 && all != (0..n as u64).map(|r| i + r).collect::<Vec<_>>() {
                        fail(format!("got {all:?}"))?;
                    }
                }
            }
            if reports && ahead.contains(&me) && (i + 1) % EVERY == 0 {
                for &r in &behind {
                    comm.send_with_tag(&(i + 1), r, PROGRESS)?;
                }
            }
        }
        if late.is_zero() {
            // Not checked: for the README's figures, the time until every
            // rank has made all its calls in a tight loop.
            comm.barrier()?;
            if me == 0 {
                println!("run-ahead {kind}: {calls} calls in {:?}", began.elapsed());
            }
        }
        if reports && ahead.contains(&me) {
            for &r in &behind {
                comm.send_with_tag(&ALL, r, PROGRESS)?;
            }
        } else if reports {
            // The reports sent after this rank stopped waiting.
            for &r in &ahead {
                while comm.receive_with_tag::<u64>(r, PROGRESS)? != ALL {}
            }
        }
    }
    if me == 0 {
        println!(
            "ok {calls} calls of each of {} collectives with the receivers late",
            KINDS.len()
        );
    }
    Ok(())
}

/// A program that counts on a broadcast root running ahead: the root
/// sends every other rank a message after each broadcast, which they
/// receive before theirs. The 64th call ends with a barrier that the
/// others never reach, and spmdrun must name the deadlock.
pub fn relied_on(comm: &Communicator) -> Result<(), Error> {
    let (me, n) = (comm.rank(), comm.size());
    for i in 0..200u64 {
        let mut v = i;
        if me == 0 {
            comm.broadcast(&mut v, 0)?;
            for r in 1..n {
                comm.send(&i, r)?;
            }
        } else {
            let got: u64 = comm.receive(0)?;
            assert_eq!(got, i, "rank {me}");
            comm.broadcast(&mut v, 0)?;
        }
    }
    panic!("rank {me}: 200 broadcasts went by with no barrier")
}
