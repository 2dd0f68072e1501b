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
use crate::error::Result;
use crate::matching::Arrived;
use crate::wire::HEADER_LEN;

/// The longest payload taken straight out of the ring: the longest the
/// sender writes with one call (`Peer::push_or_write`; it publishes the
/// frame in pieces of 4 KiB, and a frame found half written goes the
/// general way). Longer ones always go the general way.
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
    /// fastbox and `accepts` takes it, or finds it whole at the front of
    /// the ring (for [`ShmMesh::take_framed`] to take). (The caller writes
    /// queued output first, as every look for messages does.)
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
        if !header.kind.is_message() || header.len > RING_STRAIGHT as u64 {
            return Ok(Straight::Elsewhere);
        }
        let len = header.len as usize;
        if unread - HEADER_LEN < len {
            return Ok(Straight::Elsewhere);
        }
        let head = Arrived::of_header(rank, &header);
        if !accepts(&head) {
            return Ok(Straight::Elsewhere);
        }
        Ok(Straight::InRing { head, len })
    }

    /// Takes the frame of `len` payload bytes that
    /// [`ShmMesh::take_straight`] found in the ring from job rank `rank`:
    /// its payload to `into`, and its bytes count as read. False, with
    /// nothing taken, if the frame is not there whole (nothing may read
    /// from the peer in between, so it always is).
    ///
    /// # Safety
    /// `into` is valid for writes of `len` bytes (it need not hold
    /// initialized bytes).
    pub unsafe fn take_framed(&mut self, rank: usize, into: *mut u8, len: usize) -> bool {
        let Some(p) = self.peers.list.get_mut(rank).and_then(Option::as_mut) else {
            return false;
        };
        if !p.link.holds(HEADER_LEN + len) {
            return false;
        }
        // SAFETY: the caller's promise, and the bytes are unread.
        unsafe { p.link.look_raw(HEADER_LEN, into, len) };
        p.link.consume(HEADER_LEN + len);
        true
    }

    /// Watches the next fastbox from job rank `rank` (see
    /// [`FastboxWatch`]).
    pub fn watch_straight(&self, rank: usize) -> Option<FastboxWatch> {
        let p = self.peers.list.get(rank)?.as_ref()?;
        Some(p.link.fastbox_rx.watch())
    }
}
