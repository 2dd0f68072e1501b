//! How the engine ends: the error for a peer that left or died (after
//! giving the launcher time to end the job), the messages never received,
//! and finishing the rank at finalize.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::status::{WaitOn, Whole};
use crate::transport::{Delivery, Wait};
use crate::wire::Context;
use crate::wire::status::WaitOp;

use super::Engine;

/// How long a rank that lost a peer to a crash waits for the launcher to end
/// the job before it reports the loss itself. Without the wait, the rank's
/// own error exit could race the crashed rank's and be blamed for it.
pub(crate) const LAUNCHER_REACTION: Duration = Duration::from_secs(2);

impl Engine {
    /// The error for a peer that has gone. If it died and a launcher is
    /// watching, the launcher is about to end this rank: give it the time
    /// (once per peer: if the launcher did not end the job, the peer's end
    /// was not a failure, and later calls fail at once).
    pub(super) fn gone(&mut self, rank: usize) -> Error {
        if self.managed {
            // Whether it finalized or died, the last thing it wrote says
            // (its Bye, or the end of the link without one): read that
            // first, from every peer however full the queue.
            self.matcher.begin_read_all();
            let _ = self.transport.progress(&mut self.matcher, Wait::No, &|_| {});
            self.matcher.end_read_all();
            // So, too, if it ended without calling finalize: its `main` may
            // be returning an error, which the launcher reports.
            let ended = self.transport.died(rank) || self.transport.left_unfinalized(rank);
            if ended && !self.given_time.contains(&rank) {
                self.given_time.push(rank);
                std::thread::sleep(LAUNCHER_REACTION);
            }
        }
        Error::PeerGone { rank }
    }

    /// Passes on a transport error, first giving the launcher time to end
    /// the job if the error means a peer died (see [`LAUNCHER_REACTION`]).
    pub(super) fn lost(&mut self, e: Error) -> Error {
        match e {
            Error::PeerGone { rank } => self.gone(rank),
            e @ Error::Protocol { field: "stream", .. } => {
                if self.managed {
                    std::thread::sleep(LAUNCHER_REACTION);
                }
                e
            }
            e @ Error::Protocol { .. } => {
                // A peer broke the protocol: this rank is the witness, and
                // says so first, before the peer's view of its exit does.
                if self.managed {
                    crate::control::tell(&crate::wire::ControlMessage::Failed { message: e.to_string() }, false);
                }
                e
            }
            e => e,
        }
    }

    /// True if `rank` has gone: it finalized (and everything it sent has
    /// been read) or its link closed.
    pub fn has_left(&self, rank: usize) -> bool {
        rank != self.me && (self.transport.is_gone(rank) || self.transport.is_closed(rank))
    }

    /// The error for a collective that waits on `rank`, which has left.
    pub fn left(&mut self, rank: usize) -> Error {
        self.gone(rank)
    }

    /// Flushes every send and tells the peers this rank is done (`called`:
    /// by a call to finalize, not because its `World` was dropped); the
    /// status page says so.
    pub fn finish(&mut self, called: bool) -> Result<()> {
        self.finished = true;
        if !called {
            self.transport.end_unfinalized();
        }
        // Threads asleep in a wait end it with Error::Finalized as soon as
        // they have the engine back.
        self.wake_sleepers();
        if let Some(s) = &self.status {
            s.note(WaitOn::p2p(WaitOp::Finalize, None, None, 0), self.moves);
        }
        // The page counts what arrives meanwhile: the job's totals of
        // messages sent and arrived must match again for spmdrun to call a
        // later wait among the other ranks a deadlock.
        let (status, sent) = (&self.status, self.sent);
        let sleeping = |deliver: &Delivery<'_>| {
            if let Some(s) = status {
                if let Some(wait) = s.asleep() {
                    s.publish(wait, Whole::Waits(None), sent, deliver.arrived());
                }
            }
        };
        self.matcher.begin_read_all();
        let result = self.transport.finish(&mut self.matcher, &sleeping);
        self.settle();
        if let Some(s) = &self.status {
            s.finalized(self.sent, self.matcher.arrived());
        }
        result
    }

    /// The collective messages of `context` that arrived and were never
    /// taken: (source, whether it is another rank's notice of failure).
    pub fn unreceived_collective(&self, context: Context) -> Vec<(usize, bool)> {
        self.matcher
            .queued_in(context)
            .map(|e| (e.source, e.tag == crate::collective::call::NOTICE))
            .collect()
    }

    /// The point-to-point messages that arrived and were never received
    /// (for the warning at finalize): (source, tag) of each.
    pub fn unreceived(&self, contexts: &dyn Fn(Context) -> bool) -> Vec<(usize, u32)> {
        self.matcher
            .queued()
            .filter(|e| contexts(e.context))
            .map(|e| (e.source, e.tag))
            .collect()
    }
}
