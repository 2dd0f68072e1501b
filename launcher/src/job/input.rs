//! Standard input for rank 0 when it cannot simply inherit spmdrun's: on
//! another host, or when spmdrun's is a terminal (a rank in its own
//! process group reading it would be stopped). spmdrun reads its own and
//! passes it on (to the agent of rank 0's host, or into rank 0's pipe),
//! never more than [`AHEAD`] bytes before what the rank has taken, so a
//! rank that does not read costs no memory and a fast producer waits for a
//! slow reader.

use std::os::fd::BorrowedFd;

use crate::agent::protocol::Down;
use crate::input_pipe::InputPipe;
use crate::nonblocking::read_chunk;

/// The most bytes on their way to rank 0 and not yet taken by it.
const AHEAD: u64 = 1 << 20;

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
    /// Not yet at end of file.
    open: bool,
}

impl InputRelay {
    /// A relay to `target`.
    pub fn new(target: Target) -> InputRelay {
        InputRelay {
            target,
            ahead: 0,
            open: true,
        }
    }

    /// spmdrun's stdin, when it is to be read now: not at its end, room
    /// ahead of the rank, and not a terminal of which spmdrun is in the
    /// background (reading it would stop spmdrun, and with it the job).
    pub fn to_read(&self) -> Option<BorrowedFd<'static>> {
        if !self.open || self.ahead >= AHEAD || in_background() {
            return None;
        }
        Some(stdin())
    }

    /// True while input waits only for spmdrun to come to the foreground,
    /// which nothing signals: look again soon.
    pub fn held_by_terminal(&self) -> bool {
        self.open && self.ahead < AHEAD && in_background()
    }

    /// Reads what stdin holds (one read: poll said it would not block);
    /// returns the order for the agent, if the input goes to one.
    pub fn read(&mut self) -> Option<Down> {
        if !self.open {
            return None;
        }
        let order = match read_chunk(stdin()) {
            Some(bytes) if bytes.is_empty() => return None,
            Some(bytes) => {
                self.ahead += bytes.len() as u64;
                Down::Input { bytes }
            }
            // End of file, or stdin cannot be read (closed, or a terminal
            // gone): the rank sees the end.
            None => {
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
                self.ahead = self.ahead.saturating_sub(taken);
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
            self.ahead = self.ahead.saturating_sub(taken);
        }
    }

    /// The agent says rank 0 took `bytes`; false if that is more than was
    /// sent.
    pub fn taken(&mut self, bytes: u64) -> bool {
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
    pub(super) fn on_input_taken(&mut self, i: usize, bytes: u64) {
        let fits = match &mut self.input {
            Some(relay) if matches!(relay.target, Target::Agent(a) if a == i) => relay.taken(bytes),
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

/// spmdrun's standard input (descriptor 0).
fn stdin() -> BorrowedFd<'static> {
    // SAFETY: descriptor 0 is never closed by spmdrun; were it closed
    // before spmdrun started, poll and read report that, and the relay
    // ends.
    unsafe { BorrowedFd::borrow_raw(0) }
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
