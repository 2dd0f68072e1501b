//! Forwards the ranks' output whole line by whole line, so two ranks never
//! share a line, optionally prefixed with the rank.

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::mpsc::Sender;
use std::thread;

/// Which of the launcher's streams a rank's stream goes to.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Copies `source` to the launcher's `stream` line by line on a thread, and
/// sends `()` on `done` when the source closes.
pub fn forward(source: impl Read + Send + 'static, stream: Stream, rank: usize, tag: bool, done: Sender<()>) {
    thread::spawn(move || {
        let mut reader = BufReader::with_capacity(64 << 10, source);
        let prefix = if tag { format!("[{rank}] ") } else { String::new() };
        let mut line = Vec::with_capacity(256);
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if line.last() != Some(&b'\n') {
                        line.push(b'\n');
                    }
                    write_line(stream, prefix.as_bytes(), &line);
                }
            }
        }
        let _ = done.send(());
    });
}

fn write_line(stream: Stream, prefix: &[u8], line: &[u8]) {
    // One locked write per line keeps lines whole.
    let _ = match stream {
        Stream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(prefix)
                .and_then(|_| out.write_all(line))
                .and_then(|_| out.flush())
        }
        Stream::Stderr => {
            let mut out = std::io::stderr().lock();
            out.write_all(prefix)
                .and_then(|_| out.write_all(line))
                .and_then(|_| out.flush())
        }
    };
}
