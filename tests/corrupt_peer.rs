//! No peer is trusted: another process writes garbage into a running
//! rank's shared-memory segment (through /proc, as the job's user or root
//! can) while two ranks exchange messages, and the job ends with a
//! protocol error naming the peer and the field, never a crash (a signal),
//! an out-of-bounds read, or a hang.
//!
//! The offsets follow the segment layout in src/transport/shm/segment.rs
//! (a 4096-byte header, then per sender a control block of head, tail and
//! fastboxes, the fastboxes starting with the count of boxes taken).

mod common;

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::{example, finish_reporting, start_reporting_pids};

/// The descriptor numbers of a process's mapped segments, lowest first (its
/// own segment is made before it receives its peers').
fn segments(pid: i32) -> Vec<u32> {
    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the rank's descriptors")
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("memfd:spmd-segment")))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    fds
}

/// Writes `value` at `offset` of rank `pid`'s own segment (`words` times
/// over, one word after another) over and over until the job ends (the
/// owner of the words may write them back meanwhile).
fn corrupt(pid: i32, offset: u64, value: u64, words: usize, child: &mut std::process::Child) {
    let own = segments(pid)[0];
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/fd/{own}"))
        .expect("opening the rank's segment");
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until && child.try_wait().expect("waiting works").is_none() {
        let _ = file.write_at(&value.to_le_bytes().repeat(words), offset);
        std::thread::sleep(Duration::from_micros(200));
    }
}

const HEADER: u64 = 4096;
/// A ring's control block: head, tail, then the fastboxes (a line counting
/// those taken, 1024 boxes of half a line on a node of 2 ranks).
const RING_CONTROL: u64 = 128 + 64 + 1024 * 32;
/// The ring of a job of 2 ranks.
const RING: u64 = 1 << 20;

#[test]
fn garbage_in_a_peers_segment_is_a_protocol_error_naming_the_peer_and_the_field() {
    // (whose segment, offset, value, words written, the rank that reads
    // it, the peer it names, the field, the exchange)
    let frames_from_1 = HEADER + RING_CONTROL + RING + RING_CONTROL;
    let cases = [
        (1, HEADER, u64::MAX - 5, 1, 1, 0, "ring head", ""),
        (1, HEADER + 64, u64::MAX - 5, 1, 0, 1, "ring tail", ""),
        (1, HEADER + 128, u64::MAX, 1, 0, 1, "fastbox taken", ""),
        // The frames rank 1 wrote and rank 0 has not read yet (rank 0
        // receives them from rank 1 by name, the straight way): all of
        // them, then one field of the first (its source, then its length).
        (0, frames_from_1, u64::MAX, 2048, 0, 1, "magic", "ring-frames"),
        (0, frames_from_1 + 8, 7, 1, 0, 1, "source", "ring-frames"),
        (0, frames_from_1 + 24, u64::MAX - 1, 1, 0, 1, "length", "ring-frames"),
    ];
    for (victim, offset, value, words, reader, named, field, how) in cases {
        let check = example("spmd-check");
        let args = ["-n", "2", "--timeout", "60", &check, "hang", "exchange", how];
        let (mut child, pids, reader_out) = start_reporting_pids(&args, 2);
        corrupt(pids[victim], offset, value, words, &mut child);
        let out = finish_reporting(child, reader_out);
        common::assert_all_gone(&pids);
        let report = out
            .stderr
            .lines()
            .find(|l| l.starts_with("spmdrun: rank"))
            .unwrap_or_default();
        assert_eq!(out.code(), Some(1), "{field}: {out:?}");
        assert!(
            report.starts_with(&format!("spmdrun: rank {reader} ")),
            "{field}: {out:?}"
        );
        assert!(
            report.contains(&format!("protocol error from rank {named}: bad {field}")),
            "{field}: {out:?}"
        );
    }
}
