//! The straight path of a receive from one peer on the node: the message in
//! that peer's next fastbox, taken without going round every peer and
//! without the matching engine, when it is the next message from the peer.
//!
//! A message waiting in a fastbox was written before every ring byte the
//! receiver has not read (see `fastbox.rs`), so when no offer is parked and
//! no frame is half read, the next fastbox holds the peer's next message.
//! Anything else (ring bytes, a peer whose state changed, a message the
//! receive does not accept) is left for the general path.

use std::sync::atomic::Ordering;

use super::ShmMesh;
use super::fastbox::{Boxed, FastboxWatch};
use crate::error::Result;
use crate::matching::Arrived;

/// What the straight path found at a peer.
#[derive(Debug)]
pub(crate) enum Straight {
    /// The peer's next message, taken out of its fastbox into the caller's
    /// [`Boxed`].
    Taken,
    /// Nothing from the peer yet.
    Empty,
    /// Something only the general path handles.
    Elsewhere,
}

impl ShmMesh {
    /// Takes the next message from job rank `rank` if it waits in a
    /// fastbox and `accepts` takes it. (The caller writes queued output
    /// first, as every look for messages does.)
    pub fn take_straight(
        &mut self,
        rank: usize,
        accepts: &dyn Fn(&Arrived) -> bool,
        out: &mut Boxed,
    ) -> Result<Straight> {
        if self.own.state_changes().load(Ordering::Acquire) != self.state_changes_seen {
            return Ok(Straight::Elsewhere);
        }
        let Some(p) = self.peers.list.get_mut(rank).and_then(Option::as_mut) else {
            return Ok(Straight::Elsewhere);
        };
        if !p.is_open() || p.has_parked() || !p.is_idle() {
            return Ok(Straight::Elsewhere);
        }
        if !p.link.fastbox_rx.peek_into(rank, out)? {
            return Ok(if p.link.readable() {
                Straight::Elsewhere
            } else {
                Straight::Empty
            });
        }
        if !accepts(&out.head) {
            return Ok(Straight::Elsewhere);
        }
        p.link.fastbox_rx.take_one(out);
        Ok(Straight::Taken)
    }

    /// Watches the next fastbox from job rank `rank` (see
    /// [`FastboxWatch`]).
    pub fn watch_straight(&self, rank: usize) -> Option<FastboxWatch> {
        let p = self.peers.list.get(rank)?.as_ref()?;
        Some(p.link.fastbox_rx.watch())
    }
}
