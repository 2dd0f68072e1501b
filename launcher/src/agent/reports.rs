//! What the agent tells the launcher of its ranks on their own: their
//! exits, once their last words are in, and what their status pages say.

use std::time::Instant;

use spmd::wire::status::now_ns;

use super::protocol::{Outbox, Up};
use super::{Agent, LINGER, Local};

impl Agent {
    /// Reports the exits of ranks whose channel has closed (what they
    /// wrote read), or that exited more than [`LINGER`] ago.
    pub(super) fn report_exits(&mut self, now: Instant, outbox: &Outbox) {
        for i in 0..self.locals.len() {
            let Some((at, how)) = self.locals[i].ended else {
                continue;
            };
            // All it wrote is in its pipes once it has exited: that is read
            // now, not waited for to the pipes' end, which a process it
            // left may hold open (whose output still goes on after).
            let closed = self.locals[i].channel.is_none();
            if closed {
                for stream in 0..2 {
                    while self.on_output(i, stream, outbox) {}
                }
            }
            let l = &mut self.locals[i];
            if closed || now >= at + LINGER {
                l.ended = None;
                // Its page as it ended (a finalize's counts, without which
                // the job's totals never match again), unseen by the last look.
                if let Some(up) = status_change(l) {
                    outbox.send(&up);
                }
                outbox.send(&Up::Exited {
                    rank: l.place.rank as u32,
                    how,
                });
            }
        }
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
    let stopped = !l.exited && (crate::hang::stopped(l.pid) || joined.is_some_and(crate::hang::stopped));
    if l.reported == Some((snapshot, stopped)) {
        return None;
    }
    l.reported = Some((snapshot, stopped));
    Some(Up::Status {
        rank: l.place.rank as u32,
        snapshot,
        stopped,
        now_ns: now_ns(),
    })
}
