//! The straight path of a receive from one peer on the node: the peer's
//! next message, out of its fastbox or out of the ring in one copy, taken
//! without going round every peer and without the matching engine.
//!
//! A message waiting in a fastbox was written before every ring byte the
//! receiver has not read (see `fastbox.rs`), so when no offer is parked and
//! no frame is half read, the next fastbox holds the peer's next message;
//! with none there, the next frame in the ring is. Anything else (a frame
//! not all written yet or longer than [`RING_STRAIGHT`], one that is not a
//! message, a peer whose state changed, a message the receive does not
//! accept) is left for the general path, which reads it as it always does.

use std::sync::atomic::Ordering;

use super::ShmMesh;
use super::fastbox::{Boxed, FastboxWatch};
use crate::envelope::Format;
use crate::error::Result;
use crate::matching::Arrived;
use crate::wire::HEADER_LEN;

/// The longest payload taken straight out of the ring: one the sender may
/// have written at once. Longer ones are written and read in pieces, by
/// the general path.
const RING_STRAIGHT: usize = super::super::writing::WRITE_NOW_MAX;

/// What the straight path found at a peer.
#[derive(Debug)]
pub(crate) enum Straight {
    /// The peer's next message, taken out of its fastbox into the caller's
    /// [`Boxed`].
    Taken,
    /// The peer's next message is a whole frame in the ring of `len`
    /// payload bytes, with this header: [`ShmMesh::take_framed`] takes it.
    InRing {
        /// What its header says.
        head: Arrived,
        /// The payload's length.
        len: usize,
    },
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
        if p.link.fastbox_rx.peek_into(rank, out)? {
            if !accepts(&out.head) {
                return Ok(Straight::Elsewhere);
            }
            p.link.fastbox_rx.take_one(out);
            return Ok(Straight::Taken);
        }
        if !p.link.readable() {
            return Ok(Straight::Empty);
        }
        // With no fastbox message waiting, the next frame in the ring is
        // the peer's next message (`unread` stops before ring bytes that a
        // fastbox message filled meanwhile must come after).
        let unread = p.link.unread()?;
        if unread < HEADER_LEN {
            return Ok(Straight::Elsewhere);
        }
        let mut hb = [0u8; HEADER_LEN];
        p.link.look(0, &mut hb);
        // A header the peer's checks refuse is the general path's to read
        // and report (it closes the peer's stream as it does so).
        let Ok(header) = p.check_header(&hb, self.peers.max_message) else {
            return Ok(Straight::Elsewhere);
        };
        let len = header.len as usize;
        if !header.kind.is_message() || len > RING_STRAIGHT || unread - HEADER_LEN < len {
            return Ok(Straight::Elsewhere);
        }
        let head = Arrived {
            source: rank,
            tag: header.tag,
            context: header.context,
            format: Format::of(header.kind, header.element),
            call: header.call,
        };
        if !accepts(&head) {
            return Ok(Straight::Elsewhere);
        }
        Ok(Straight::InRing { head, len })
    }

    /// Takes the frame [`ShmMesh::take_straight`] found in the ring from
    /// job rank `rank`: its payload into `into` (exactly its length), and
    /// its bytes count as read. Nothing may look at the peer in between.
    pub fn take_framed(&mut self, rank: usize, into: &mut [u8]) {
        if let Some(p) = self.peers.list.get_mut(rank).and_then(Option::as_mut) {
            p.link.look(HEADER_LEN, into);
            p.link.consume(HEADER_LEN + into.len());
        }
    }

    /// Watches the next fastbox from job rank `rank` (see
    /// [`FastboxWatch`]).
    pub fn watch_straight(&self, rank: usize) -> Option<FastboxWatch> {
        let p = self.peers.list.get(rank)?.as_ref()?;
        Some(p.link.fastbox_rx.watch())
    }
}
