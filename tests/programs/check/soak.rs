//! The soak: every rank sends its share of MESSAGES messages of random
//! sizes (0 B to 1 MiB, mostly small) with random tags to random ranks, by
//! blocking, immediate and scoped sends, and receives by any-source,
//! probed, immediate and scoped receives, interleaved. Every rank knows the
//! whole plan (drawn from the seed), so every message is checked: it
//! arrives exactly once, in order for its (source, tag), with exactly the
//! bytes sent. `spmd-check soak SEED MESSAGES`. Rank 0 prints the count
//! and every rank's peak memory.

use std::collections::HashMap;

use spmd::{Error, Match, Request, Status, World};

use crate::rng::Rng;

const TAGS: u32 = 8;
const MAX: usize = 1 << 20;

/// The size of one message: mostly small, some medium, a few large.
fn size(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0 => rng.below(MAX + 1),
        1..=9 => rng.below(64 << 10),
        10..=14 => 0,
        _ => rng.below(65),
    }
}

/// One rank's plan: (destination, tag, size) of each message it sends.
fn plan(seed: u64, rank: usize, n: usize, count: usize) -> Vec<(usize, u32, usize)> {
    let mut rng = Rng::new(seed ^ (rank as u64 + 1).wrapping_mul(0x9e37_79b9));
    (0..count)
        .map(|_| {
            let dest = rng.below(n);
            (dest, rng.below(TAGS as usize) as u32, size(&mut rng))
        })
        .collect()
}

/// The bytes of message `seq` from `source` with `tag`.
fn content(source: usize, tag: u32, seq: usize, len: usize) -> Vec<u8> {
    let mut x = (source as u64) << 48 ^ u64::from(tag) << 40 ^ seq as u64;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

/// What this rank still expects from each (source, tag): the sizes, in
/// order, and how many it has received.
struct Expected {
    sizes: HashMap<(usize, u32), Vec<usize>>,
    next: HashMap<(usize, u32), usize>,
    left: usize,
}

impl Expected {
    fn check(&mut self, status: Status, bytes: &[u8]) {
        let key = (status.source(), status.tag());
        let seq = *self.next.get(&key).unwrap_or(&0);
        let want = self.sizes.get(&key).and_then(|s| s.get(seq)).copied();
        let Some(len) = want else {
            panic!(
                "a message from rank {} with tag {} that was never sent (or twice)",
                key.0, key.1
            );
        };
        assert_eq!(bytes.len(), len, "message {seq} from {key:?}: length");
        assert!(
            bytes == content(key.0, key.1, seq, len).as_slice(),
            "message {seq} from {key:?}: contents"
        );
        self.next.insert(key, seq + 1);
        self.left -= 1;
    }
}

/// The soak with rank `slow`, if given, falling behind: it sleeps 2 ms
/// every 100 messages it sends.
pub fn run_with(world: &World, seed: u64, total: usize, slow: Option<usize>) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    let count = total / n;
    let mine = plan(seed, me, n, count);
    let mut expected = Expected {
        sizes: HashMap::new(),
        next: HashMap::new(),
        left: 0,
    };
    for source in 0..n {
        for (dest, tag, len) in plan(seed, source, n, count) {
            if dest == me {
                expected.sizes.entry((source, tag)).or_default().push(len);
                expected.left += 1;
            }
        }
    }
    let mut sent_seq: HashMap<(usize, u32), usize> = HashMap::new();
    let mut rng = Rng::new(seed ^ 0xfeed ^ me as u64);
    let mut pending = Vec::new();
    let mut buf = vec![0u8; MAX];
    for (i, &(dest, tag, len)) in mine.iter().enumerate() {
        let seq = sent_seq.entry((dest, tag)).or_insert(0);
        let data = content(me, tag, *seq, len);
        *seq += 1;
        match rng.below(4) {
            0 => world.send_slice_with_tag(&data, dest, tag)?,
            1 => world.send_with_tag(&data, dest, tag)?,
            2 => pending.push(world.immediate_send_slice_with_tag(&data, dest, tag)?),
            _ => world.scope(|s| s.immediate_send_slice_with_tag(&data, dest, tag)?.wait())?,
        }
        if pending.len() >= 32 {
            spmd::wait_all(pending.drain(..))?;
        }
        if slow == Some(me) && i % 100 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        // Take what has arrived, a different way each time.
        while expected.left > 0 && i % 2 == 0 {
            if !receive_one(world, &mut expected, &mut rng, &mut buf, false)? {
                break;
            }
        }
    }
    spmd::wait_all(pending)?;
    while expected.left > 0 {
        receive_one(world, &mut expected, &mut rng, &mut buf, true)?;
    }
    let peak = peak_kib();
    let peaks = world.gather(&peak, 0)?;
    world.barrier()?;
    if let Some(peaks) = peaks {
        let all: Vec<String> = peaks.iter().map(|k| format!("{:.1}", *k as f64 / 1024.0)).collect();
        println!(
            "soak: {} messages, every one once, in order, intact; peak MiB by rank: {}",
            count * n,
            all.join(" ")
        );
    }
    Ok(())
}

/// Receives one message if one is there (or, with `block`, waits for
/// one from anybody), by one of the receive forms chosen at random; false
/// if none was there.
fn receive_one(
    world: &World,
    expected: &mut Expected,
    rng: &mut Rng,
    buf: &mut [u8],
    block: bool,
) -> Result<bool, Error> {
    let pattern = if block {
        Match::any()
    } else {
        // Probed first, then that very message is received.
        match world.try_probe(Match::any())? {
            Some(status) => Match::source(status.source()).with_tag(status.tag()),
            None => return Ok(false),
        }
    };
    match rng.below(4) {
        0 => {
            let (bytes, status) = world.receive_vec_matching::<u8>(pattern)?;
            expected.check(status, &bytes);
        }
        1 => {
            let (bytes, status) = world.immediate_receive_vec_matching::<u8>(pattern)?.wait()?;
            expected.check(status, &bytes);
        }
        2 => {
            let status = world.scope(|s| s.immediate_receive_into_matching(&mut buf[..], pattern)?.wait())?;
            expected.check(status, &buf[..status.len() as usize]);
        }
        _ => {
            let status = world.receive_into_matching(&mut buf[..], pattern)?;
            expected.check(status, &buf[..status.len() as usize]);
        }
    }
    Ok(true)
}

/// This process's peak resident memory, in KiB.
fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A sender flooding a slow receiver: rank 0 sends `mib` MiB in messages of
/// 64 KiB to rank 1 as fast as it can, while rank 1 first sleeps, then
/// receives them slowly. Rank 1 prints its peak memory.
pub fn flood(world: &World, mib: usize) -> Result<(), Error> {
    let me = world.rank();
    let block = vec![5u8; 64 << 10];
    let count = mib * 16;
    if me == 0 {
        for _ in 0..count {
            world.send_slice(&block, 1)?;
        }
    } else if me == 1 {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let mut buf = vec![0u8; 64 << 10];
        for i in 0..count {
            world.receive_into(&mut buf, 0)?;
            if i % 64 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        assert!(buf.iter().all(|b| *b == 5));
        println!(
            "flood: {mib} MiB received; peak MiB of the receiver: {:.1}",
            peak_kib() as f64 / 1024.0
        );
    }
    world.barrier()
}
