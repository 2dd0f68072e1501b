//! Standard input for rank 0 when it cannot simply inherit spmdrun's: on
//! another host, or when spmdrun's is a terminal (a rank in its own
//! process group reading it would be stopped). spmdrun reads its own and
//! passes it on (to the agent of rank 0's host, or into rank 0's pipe),
//! never more than [`AHEAD`] bytes before what the rank has taken, so a
//! rank that does not read costs no memory and a fast producer waits for a
//! slow reader.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::{Mode, SFlag, fstat};

use crate::agent::protocol::Down;
use crate::input_pipe::InputPipe;

/// The most bytes on their way to rank 0 and not yet taken by it (one
/// read more may pass it).
const AHEAD: u64 = 1 << 20;
/// The most one read takes.
const CHUNK: usize = 64 << 10;

/// Where rank 0's input goes.
pub(super) enum Target {
    /// To the agent with this index, rank 0's host's.
    Agent(usize),
    /// Into rank 0's stdin pipe (rank 0 is on this machine).
    Here(InputPipe),
}

/// spmdrun's standard input, passed on to rank 0.
pub(super) struct InputRelay {
    pub target: Target,
    /// Bytes sent and not yet reported taken.
    ahead: u64,
    /// Not yet at end of file, and rank 0 still takes input.
    open: bool,
    /// A nonblocking description of stdin of spmdrun's own, when stdin is
    /// a terminal or a pipe: a read never waits (a terminal's line can be
    /// gone between poll and read, flushed by Ctrl-C), and the description
    /// the shell shares keeps its flags.
    own: Option<OwnedFd>,
}

impl InputRelay {
    /// A relay to `target`.
    pub fn new(target: Target) -> InputRelay {
        InputRelay {
            target,
            ahead: 0,
            open: true,
            own: reopen_stdin(),
        }
    }

    /// spmdrun's stdin, when it is to be read now: not at its end, room
    /// ahead of the rank, and not a terminal of which spmdrun is in the
    /// background (reading it would stop spmdrun, and with it the job).
    pub fn to_read(&self) -> Option<BorrowedFd<'_>> {
        if !self.open || self.ahead >= AHEAD || in_background() {
            return None;
        }
        Some(self.source())
    }

    /// True while input waits only for spmdrun to come to the foreground,
    /// which nothing signals: look again soon.
    pub fn held_by_terminal(&self) -> bool {
        self.open && self.ahead < AHEAD && in_background()
    }

    fn source(&self) -> BorrowedFd<'_> {
        match &self.own {
            Some(fd) => fd.as_fd(),
            // SAFETY: descriptor 0 stays open for spmdrun's life (the Rust
            // runtime opens /dev/null there if it was closed at start).
            None => unsafe { BorrowedFd::borrow_raw(0) },
        }
    }

    /// Reads what stdin holds now; returns the order for the agent, if
    /// the input goes to one.
    pub fn read(&mut self) -> Option<Down> {
        // spmdrun may have gone to the background since the poll began;
        // SIGTTIN is blocked, so a read then fails (EIO) instead of
        // stopping spmdrun, and that is not the end of the input.
        if !self.open || in_background() {
            return None;
        }
        let mut buf = vec![0u8; CHUNK];
        let order = match nix::unistd::read(self.source(), &mut buf) {
            Ok(0) => {
                self.open = false;
                Down::InputEnd
            }
            Ok(n) => {
                buf.truncate(n);
                self.ahead += n as u64;
                Down::Input { bytes: buf }
            }
            Err(Errno::EAGAIN | Errno::EINTR) => return None,
            Err(Errno::EIO) if in_background() => return None,
            // stdin cannot be read (a terminal hung up): the rank sees
            // the end.
            Err(_) => {
                self.open = false;
                Down::InputEnd
            }
        };
        let Target::Here(pipe) = &mut self.target else {
            return Some(order);
        };
        match order {
            Down::Input { bytes } => {
                let taken = pipe.push(bytes);
                self.taken_here(taken);
            }
            _ => pipe.end(),
        }
        None
    }

    /// Rank 0's pipe (on this machine), while bytes wait for room in it.
    pub fn pipe_waiting(&self) -> Option<BorrowedFd<'_>> {
        match &self.target {
            Target::Here(pipe) => pipe.waiting(),
            Target::Agent(_) => None,
        }
    }

    /// Rank 0's pipe has room: what it takes is written.
    pub fn on_room(&mut self) {
        if let Target::Here(pipe) = &mut self.target {
            let taken = pipe.write();
            self.taken_here(taken);
        }
    }

    fn taken_here(&mut self, taken: u64) {
        self.ahead = self.ahead.saturating_sub(taken);
        if let Target::Here(pipe) = &self.target {
            // Rank 0 closed its stdin: nothing more is read for it.
            self.open &= !pipe.is_closed();
        }
    }

    /// Rank 0 has exited: its pipe (on this machine) is closed, so that a
    /// process it left sees the end, and nothing more is read.
    pub fn rank_exited(&mut self) {
        self.open = false;
        if let Target::Here(pipe) = &mut self.target {
            pipe.close();
        }
    }

    /// The agent says rank 0 took `bytes` (and whether its stdin is
    /// closed now); false if that is more than was sent.
    pub fn taken(&mut self, bytes: u64, closed: bool) -> bool {
        self.open &= !closed;
        match self.ahead.checked_sub(bytes) {
            Some(left) => {
                self.ahead = left;
                true
            }
            None => false,
        }
    }
}

impl super::Job {
    /// spmdrun's stdin is readable: what it holds goes on to rank 0.
    pub(super) fn on_input(&mut self) {
        let Some(relay) = &mut self.input else { return };
        if let (Some(order), Target::Agent(i)) = (relay.read(), &relay.target) {
            self.agents[*i].outbox.send(&order);
        }
    }

    /// Agent `i` says rank 0 took `bytes` of its input.
    pub(super) fn on_input_taken(&mut self, i: usize, bytes: u64, closed: bool) {
        let fits = match &mut self.input {
            Some(relay) if matches!(relay.target, Target::Agent(a) if a == i) => relay.taken(bytes, closed),
            _ => false,
        };
        if !fits {
            let who = self.agents[i].describe();
            self.fail(
                format!("the agent on {who} reported {bytes} bytes of input taken, which were never sent to it"),
                1,
            );
        }
    }
}

/// True when spmdrun's stdin is a terminal.
pub(super) fn is_terminal() -> bool {
    // SAFETY: a plain query on descriptor 0.
    unsafe { libc::isatty(0) == 1 }
}

/// stdin opened again, nonblocking, when it is a terminal or a pipe (a
/// file is read where the shell left it, and never blocks).
fn reopen_stdin() -> Option<OwnedFd> {
    // SAFETY: as in `source`.
    let stdin = unsafe { BorrowedFd::borrow_raw(0) };
    let kind = SFlag::from_bits_truncate(fstat(stdin).ok()?.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFIFO && kind != SFlag::S_IFCHR {
        return None;
    }
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    open("/proc/self/fd/0", flags, Mode::empty()).ok()
}

/// True when stdin is spmdrun's controlling terminal and spmdrun is not in
/// its foreground process group.
fn in_background() -> bool {
    // SAFETY: plain queries on descriptor 0 and this process.
    let (foreground, ours) = unsafe { (libc::tcgetpgrp(0), libc::getpgrp()) };
    // -1: not a terminal, or not spmdrun's controlling one; reading it
    // never stops spmdrun.
    foreground != -1 && foreground != ours
}
