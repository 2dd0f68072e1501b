//! Output is never lost and never grows spmdrun without bound: a slow
//! reader gets every byte; an endless line comes in marked pieces while
//! spmdrun's memory stays small; a closed output is reported.

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::spmdrun;

#[test]
fn a_slow_reader_gets_every_line() {
    // 2 ranks × 20,000 lines of 10 bytes, read at about 64 KiB/s.
    let script = "i=0; while [ $i -lt 20000 ]; do echo \"r$SPMD_RANK $(printf %06d $i)\"; i=$((i+1)); done";
    let mut child = spmdrun(&["-n", "2", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spmdrun starts");
    let mut out = child.stdout.take().expect("piped");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let started = Instant::now();
    loop {
        match out.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("reading spmdrun's output: {e}"),
        }
        std::thread::sleep(Duration::from_millis(60));
    }
    let status = child.wait().expect("spmdrun ends");
    assert!(status.success(), "{status:?}");
    let text = String::from_utf8_lossy(&got);
    for rank in 0..2 {
        let mine: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("r{rank} "))).collect();
        assert_eq!(mine.len(), 20_000, "rank {rank}'s lines");
        for (i, l) in mine.iter().enumerate() {
            assert_eq!(*l, format!("r{rank} {i:06}"), "in order and whole");
        }
    }
    assert!(started.elapsed() > Duration::from_secs(2), "the reader was not slow");
}

#[test]
fn an_endless_line_comes_in_marked_pieces_and_spmdrun_stays_small() {
    let mut child = spmdrun(&["-n", "1", "sh", "-c", "head -c 200000000 /dev/zero | tr '\\0' x"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spmdrun starts");
    let pid = child.id();
    let mut out = child.stdout.take().expect("piped");
    let (mut xs, mut marks, mut newlines) = (0u64, 0u64, 0u64);
    let mut peak = 0;
    let mut chunk = vec![0u8; 1 << 20];
    let mut tail = Vec::new();
    loop {
        let n = out.read(&mut chunk).expect("reading");
        if n == 0 {
            break;
        }
        peak = peak.max(common::status_kib(pid as i32, "VmHWM").unwrap_or(0));
        for &b in &chunk[..n] {
            match b {
                b'x' => xs += 1,
                b'\n' => newlines += 1,
                _ => {}
            }
        }
        tail.extend_from_slice(&chunk[..n]);
        let keep = tail.len().saturating_sub(64);
        marks += tail[..keep].windows(16).filter(|w| *w == b"line continues]\n").count() as u64;
        tail.drain(..keep.saturating_sub(16));
    }
    assert!(child.wait().expect("ends").success());
    assert_eq!(xs, 200_000_000, "every byte");
    assert!(marks >= 200_000_000 / (64 << 10) - 1, "{marks} marked pieces");
    assert_eq!(newlines, 200_000_000 / (64 << 10) + 1, "a newline after every piece");
    assert!(peak < 48 * 1024, "spmdrun grew to {peak} KiB while passing on one line");
}

#[test]
fn a_closed_output_is_reported_and_fails_the_job() {
    let mut child = spmdrun(&["-n", "2", "sh", "-c", "yes spmd | head -c 20000000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spmdrun starts");
    let mut out = child.stdout.take().expect("piped");
    let mut first = [0u8; 100];
    out.read_exact(&mut first).expect("some output");
    drop(out);
    let status = child.wait().expect("ends");
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut err)
        .expect("stderr");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot write the ranks' output") && err.contains("were lost"),
        "{err}"
    );
}
