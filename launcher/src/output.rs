//! Forwards the ranks' output whole line by whole line, so two ranks never
//! share a line, optionally prefixed with the rank; and never loses any of
//! it, however slow the reader of spmdrun's output.
//!
//! The event loop reads the ranks' pipes and cuts lines; one writer thread
//! per stream (standard output, standard error) writes them out. Memory is
//! bounded twice: a line longer than [`MAX_LINE`] is passed on in pieces,
//! each but the last marked as continued; and when [`MAX_QUEUED`] bytes
//! wait to be written, the loop stops reading the pipes until the writer
//! catches up, so a rank that prints faster than the reader reads waits in
//! its `write`, as it would without spmdrun.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The longest piece of a line passed on at once.
pub const MAX_LINE: usize = 64 << 10;
/// The most bytes that wait for a writer before reading pauses.
const MAX_QUEUED: usize = 1 << 20;
/// What ends a piece of a line that goes on in the next one.
const CONTINUED: &[u8] = b" [spmdrun: line continues]\n";

/// Which of the launcher's streams a rank's stream goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Default)]
struct Queue {
    chunks: VecDeque<Vec<u8>>,
    bytes: usize,
    closed: bool,
    /// The error that stopped the writer, and the bytes it could not write.
    failed: Option<(String, u64)>,
}

/// One of spmdrun's output streams, written by a thread of its own.
pub struct Writer {
    shared: Arc<(Mutex<Queue>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub fn new(stream: Stream) -> Writer {
        let shared = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
        let inner = Arc::clone(&shared);
        let thread = std::thread::spawn(move || write_all(stream, &inner));
        Writer {
            shared,
            thread: Some(thread),
        }
    }

    /// Queues bytes (whole lines) to be written.
    pub fn push(&self, bytes: Vec<u8>) {
        let (lock, ready) = &*self.shared;
        let mut q = lock.lock().unwrap_or_else(|p| p.into_inner());
        q.bytes += bytes.len();
        q.chunks.push_back(bytes);
        ready.notify_all();
    }

    /// True while the queue has room for more.
    pub fn has_room(&self) -> bool {
        let (lock, _) = &*self.shared;
        let q = lock.lock().unwrap_or_else(|p| p.into_inner());
        q.bytes < MAX_QUEUED || q.failed.is_some()
    }

    /// Writes everything queued and stops the thread; the error that lost
    /// output, if one did, with the number of bytes lost.
    pub fn finish(mut self) -> Option<(String, u64)> {
        {
            let (lock, ready) = &*self.shared;
            let mut q = lock.lock().unwrap_or_else(|p| p.into_inner());
            q.closed = true;
            ready.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let (lock, _) = &*self.shared;
        let q = lock.lock().unwrap_or_else(|p| p.into_inner());
        q.failed.clone()
    }
}

fn write_all(stream: Stream, shared: &(Mutex<Queue>, Condvar)) {
    let (lock, ready) = shared;
    loop {
        let chunk = {
            let mut q = lock.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(c) = q.chunks.pop_front() {
                    q.bytes -= c.len();
                    break Some((c, q.failed.is_some()));
                }
                if q.closed {
                    break None;
                }
                q = ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let Some((chunk, failed)) = chunk else { return };
        if failed {
            let mut q = lock.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, lost)) = q.failed.as_mut() {
                *lost += chunk.len() as u64;
            }
            continue;
        }
        let result = match stream {
            Stream::Stdout => std::io::stdout()
                .lock()
                .write_all(&chunk)
                .and_then(|_| std::io::stdout().flush()),
            Stream::Stderr => std::io::stderr().lock().write_all(&chunk),
        };
        if let Err(e) = result {
            let mut q = lock.lock().unwrap_or_else(|p| p.into_inner());
            q.failed = Some((e.to_string(), chunk.len() as u64));
        }
    }
}

/// Cuts one rank's stream into whole lines.
pub struct LineCutter {
    prefix: Vec<u8>,
    partial: Vec<u8>,
    /// The last complete line, kept for the report of a failure.
    pub last_line: Vec<u8>,
}

impl LineCutter {
    pub fn new(rank: usize, tag: bool) -> LineCutter {
        LineCutter {
            prefix: if tag {
                format!("[{rank}] ").into_bytes()
            } else {
                Vec::new()
            },
            partial: Vec::new(),
            last_line: Vec::new(),
        }
    }

    fn emit(&mut self, line: &[u8], end: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(line);
        out.extend_from_slice(end);
        self.last_line.clear();
        self.last_line.extend_from_slice(&line[..line.len().min(512)]);
    }

    /// Takes bytes read from the rank; returns what is ready to be written
    /// (whole lines, and pieces of lines too long to hold).
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            match bytes.iter().position(|b| *b == b'\n') {
                Some(i) if self.partial.len() + i <= MAX_LINE => {
                    let mut line = std::mem::take(&mut self.partial);
                    line.extend_from_slice(&bytes[..i]);
                    self.emit(&line, b"\n", &mut out);
                    bytes = &bytes[i + 1..];
                }
                _ => {
                    let take = (MAX_LINE - self.partial.len()).min(bytes.len());
                    self.partial.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.partial.len() == MAX_LINE {
                        let piece = std::mem::take(&mut self.partial);
                        self.emit(&piece, CONTINUED, &mut out);
                    }
                }
            }
        }
        out
    }

    /// The stream has ended: a last line without a newline gets one.
    pub fn end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line, b"\n", &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_whole_prefixed_and_long_ones_come_in_marked_pieces() {
        let mut c = LineCutter::new(3, true);
        assert_eq!(c.feed(b"ab"), b"");
        assert_eq!(c.feed(b"c\nd\ne"), b"[3] abc\n[3] d\n");
        assert_eq!(c.end(), b"[3] e\n");
        let mut c = LineCutter::new(0, false);
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let out = c.feed(&long);
        assert_eq!(out.len(), 2 * (MAX_LINE + CONTINUED.len()));
        assert!(out.ends_with(CONTINUED));
        assert_eq!(c.feed(b"\n"), b"xxxxx\n");
        assert_eq!(c.end(), b"");
    }
}
