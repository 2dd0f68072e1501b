//! A rank's standard input as a pipe its starter feeds (rank 0's, with
//! what spmdrun reads from its own): bytes queued and written as the rank
//! takes them, without ever waiting on it; each call says how many were
//! taken, so that the feeder keeps only a bounded amount on its way.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;

/// A rank's stdin pipe, fed by its starter.
pub struct InputPipe {
    /// The pipe to the rank; `None` once closed (input ended, the rank
    /// closed its end, or it exited).
    pipe: Option<OwnedFd>,
    queue: VecDeque<Vec<u8>>,
    /// How much of the queue's first chunk was written already.
    written: usize,
    /// spmdrun's input has ended: close the pipe once the queue is empty.
    ended: bool,
}

impl InputPipe {
    /// Input through `pipe` (nonblocking), or none if the rank did not
    /// start.
    pub fn new(pipe: Option<OwnedFd>) -> InputPipe {
        InputPipe {
            pipe,
            queue: VecDeque::new(),
            written: 0,
            ended: false,
        }
    }

    /// Bytes for the rank: written as far as the pipe takes them, the rest
    /// queued; returns how many were taken (all of them at once if its
    /// stdin is closed: they are dropped, as a pipe would).
    pub fn push(&mut self, bytes: Vec<u8>) -> u64 {
        if self.pipe.is_none() {
            return bytes.len() as u64;
        }
        if !bytes.is_empty() {
            self.queue.push_back(bytes);
        }
        self.write()
    }

    /// No more input: the rank sees end of file after what is queued.
    pub fn end(&mut self) {
        self.ended = true;
        self.close_if_done();
    }

    /// The rank has exited: its pipe is closed and what is queued
    /// dropped; returns how many bytes that dropped.
    pub fn close(&mut self) -> u64 {
        self.pipe = None;
        let dropped = self.queued();
        self.queue.clear();
        self.written = 0;
        dropped
    }

    /// True once the pipe is closed: the input ended, or the rank closed
    /// its stdin or exited (what comes after is dropped).
    pub fn is_closed(&self) -> bool {
        self.pipe.is_none()
    }

    /// The pipe to wait on (for room), while bytes wait for it.
    pub fn waiting(&self) -> Option<BorrowedFd<'_>> {
        self.pipe.as_ref().filter(|_| !self.queue.is_empty()).map(|p| p.as_fd())
    }

    /// Writes what the pipe takes now (call it when the pipe has room);
    /// returns how many bytes were taken (written, or dropped because the
    /// rank closed its stdin).
    pub fn write(&mut self) -> u64 {
        let mut taken = 0u64;
        while let (Some(pipe), Some(chunk)) = (self.pipe.as_ref(), self.queue.front()) {
            match nix::unistd::write(pipe, &chunk[self.written..]) {
                Ok(n) => {
                    taken += n as u64;
                    self.written += n;
                    if self.written == chunk.len() {
                        self.queue.pop_front();
                        self.written = 0;
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                // EPIPE: the rank closed its stdin (or exited); what it
                // did not take is dropped, as a local pipe would.
                Err(_) => taken += self.close(),
            }
        }
        self.close_if_done();
        taken
    }

    fn queued(&self) -> u64 {
        let all: usize = self.queue.iter().map(Vec::len).sum();
        (all - self.written) as u64
    }

    fn close_if_done(&mut self) {
        if self.ended && self.queue.is_empty() {
            self.pipe = None;
        }
    }
}
