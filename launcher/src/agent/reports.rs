//! What the agent tells the launcher of its ranks on their own: their
//! exits, once their last words are in, and what their status pages say.

use std::os::fd::AsFd;
use std::time::Instant;

use spmd::wire::status::now_ns;

use super::protocol::{Outbox, Up};
use super::{Agent, LINGER, Local};
use crate::nonblocking::{held_bytes, read_held};
use crate::process_state::{self, ProcessState};

impl Agent {
    /// Reports the exits of ranks whose channel has closed or never
    /// carried a word (what they wrote read), or that exited more than
    /// [`LINGER`] ago.
    pub(super) fn report_exits(&mut self, now: Instant, outbox: &Outbox) {
        for i in 0..self.locals.len() {
            let Some((at, how)) = self.locals[i].ended else {
                continue;
            };
            // What it wrote on its channel is there once it has exited. A
            // rank that never said a word there (a program that does not
            // call `init`) has no last words to wait for, whatever process
            // it left holds the channel open; one that did says its last
            // before the channel closes.
            if self.locals[i].channel.is_some() {
                self.on_channel(i, outbox);
            }
            let l = &self.locals[i];
            if l.channel.is_some() && l.spoke && now < at + LINGER {
                continue;
            }
            // All it wrote is in its pipes once it has exited: that goes
            // up before its exit, and no more (a process it left may hold
            // the pipes open, and write on: that follows as output).
            for stream in 0..2 {
                self.forward_held(i, stream, outbox);
            }
            let l = &mut self.locals[i];
            l.ended = None;
            // Its page as it ended (a finalize's counts, without which the
            // job's totals never match again), unseen by the last look.
            if let Some(up) = status_change(l) {
                outbox.send(&up);
            }
            outbox.send(&Up::Exited {
                rank: l.place.rank as u32,
                how,
            });
        }
    }

    /// Forwards what rank `i`'s stdout (0) or stderr (1) holds now, then
    /// reads once more, which finds the pipe's end if nothing else holds
    /// it (its end then goes up before the exit).
    fn forward_held(&mut self, i: usize, stream: usize, outbox: &Outbox) {
        let Some(fd) = self.locals[i].out[stream].as_ref() else {
            return;
        };
        let held = held_bytes(fd.as_fd());
        read_held(held, || self.on_output(i, stream, outbox));
    }

    /// Tells the launcher what each running rank's status page says, when
    /// that changed: it reports hangs and deadlocks across hosts as on its
    /// own machine.
    pub(super) fn report_status(&mut self, outbox: &Outbox) {
        for l in self.locals.iter_mut().filter(|l| !l.exited) {
            if let Some(up) = status_change(l) {
                outbox.send(&up);
            }
        }
    }
}

/// What rank `l`'s status page says, if that changed since it was last
/// reported.
pub(super) fn status_change(l: &mut Local) -> Option<Up> {
    let snapshot = l.status.as_ref()?.read();
    let joined = snapshot.map(|s| s.pid as i32).filter(|p| *p > 0);
    let seen = match l.exited {
        true => ProcessState::Running,
        false => ProcessState::of_rank(l.pid, joined, process_state::computing(snapshot.as_ref())),
    };
    // Writing is reported once two looks in a row find it: a rank that
    // prints a lot is caught in a write now and then, and would otherwise
    // flip its report at every look.
    let state = match seen {
        ProcessState::Writing { .. } if l.seen != seen => ProcessState::Running,
        _ => seen,
    };
    l.seen = seen;
    if l.reported == Some((snapshot, state)) {
        return None;
    }
    l.reported = Some((snapshot, state));
    Some(Up::Status {
        rank: l.place.rank as u32,
        snapshot,
        state,
        now_ns: now_ns(),
    })
}
