//! The ranks' output in the launcher: read from their pipes (or passed on
//! by the agents of other hosts), cut into lines and queued for spmdrun's
//! own standard output and error.

use std::os::fd::AsFd;
use std::time::Instant;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::{END_LIMIT, Job};
use crate::output::Stream;
use crate::rank::Pipe;

impl Job {
    /// Reads one chunk of a rank's pipe; how many bytes it read.
    pub(super) fn on_output(&mut self, rank: usize, stream: Stream) -> usize {
        let r = &mut self.ranks[rank];
        let pipe = match stream {
            Stream::Stdout => &mut r.stdout,
            Stream::Stderr => &mut r.stderr,
        };
        let Some(p) = pipe.as_mut() else { return 0 };
        let bytes = p.read();
        let read = bytes.as_ref().map_or(0, Vec::len);
        self.take_output(rank, stream == Stream::Stderr, bytes);
        read
    }

    /// Reads what a rank's pipe holds now (and no more: a process that
    /// holds the pipe too may keep writing), then once more, which finds
    /// the pipe's end if nothing else holds it (and so ends a last line
    /// without a newline).
    pub(super) fn on_output_now(&mut self, rank: usize, stream: Stream) {
        let r = &self.ranks[rank];
        let pipe = match stream {
            Stream::Stdout => &r.stdout,
            Stream::Stderr => &r.stderr,
        };
        let Some(fd) = pipe.as_ref().and_then(|p| p.fd.as_ref()) else {
            return;
        };
        let held = crate::nonblocking::held_bytes(fd.as_fd());
        crate::nonblocking::read_held(held, || self.on_output(rank, stream));
    }

    /// Output of a rank: bytes that arrived, or `None` at the end of the
    /// stream.
    pub(super) fn take_output(&mut self, rank: usize, stderr: bool, bytes: Option<Vec<u8>>) {
        let stream = if stderr { Stream::Stderr } else { Stream::Stdout };
        let r = &mut self.ranks[rank];
        let pipe = match stream {
            Stream::Stdout => &mut r.stdout,
            Stream::Stderr => &mut r.stderr,
        };
        let Some(p) = pipe.as_mut() else { return };
        let lines = match bytes {
            Some(bytes) => p.cutter.feed(&bytes),
            None => {
                let rest = p.cutter.end();
                if stream == Stream::Stderr {
                    r.last_words = p.cutter.last_line.clone();
                }
                *pipe = None;
                rest
            }
        };
        if stream == Stream::Stderr {
            if let Some(p) = &r.stderr {
                r.last_words = p.cutter.last_line.clone();
            }
        }
        if !lines.is_empty() {
            match stream {
                Stream::Stdout => self.out.push(lines),
                Stream::Stderr => self.err.push(lines),
            }
        }
    }

    /// Reads every pipe to its end (every process of the job is gone).
    pub(super) fn drain_output(&mut self) {
        let limit = Instant::now() + END_LIMIT;
        let piped = |p: &Option<Pipe>| p.as_ref().is_some_and(|p| p.fd.is_some());
        while self.ranks.iter().any(|r| piped(&r.stdout) || piped(&r.stderr)) && Instant::now() < limit {
            let mut fds = Vec::new();
            let mut who = Vec::new();
            for (rank, r) in self.ranks.iter().enumerate() {
                if let Some(fd) = r.stdout.as_ref().and_then(|p| p.fd.as_ref()) {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    who.push((rank, Stream::Stdout));
                }
                if let Some(fd) = r.stderr.as_ref().and_then(|p| p.fd.as_ref()) {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    who.push((rank, Stream::Stderr));
                }
            }
            let _ = poll(&mut fds, PollTimeout::from(100u16));
            let ready: Vec<(usize, Stream)> = fds
                .iter()
                .zip(who)
                .filter(|(fd, _)| fd.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, w)| w)
                .collect();
            for (rank, stream) in ready {
                self.on_output(rank, stream);
            }
        }
    }
}
