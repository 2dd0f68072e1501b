//! The frames a rank has queued for one peer: their bytes, owned or
//! borrowed from a caller that waits, and how far each is written.

use crate::wire::{HEADER_LEN, Offer};

/// The bytes of an outgoing frame: owned, or borrowed from a caller that
/// waits until they are written (see [`super::peers::Peers::queue_borrowed`]).
#[derive(Debug)]
pub(super) enum Payload {
    Owned(Vec<u8>),
    Borrowed(*const u8, usize),
}

impl Payload {
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Payload::Owned(v) => v,
            // SAFETY: a borrowed payload stays valid while it is queued: the
            // caller of `queue_borrowed` either waits until it is written or
            // calls `own` before its borrow ends.
            Payload::Borrowed(ptr, len) => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

/// One outgoing frame and how much of it has been written.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub(super) header: [u8; HEADER_LEN],
    pub(super) payload: Payload,
    pub(super) written: usize,
    /// Set when the message goes as an offer: the offer's header and body,
    /// written instead of `header` and the payload, which stays here
    /// until the receiver has taken it.
    pub(super) offer: Option<([u8; HEADER_LEN], [u8; Offer::LEN])>,
}

impl Outgoing {
    /// The header and the body that go on the wire.
    pub(super) fn wire(&self) -> (&[u8], &[u8]) {
        match &self.offer {
            Some((header, body)) => (header, body),
            None => (&self.header, self.payload.bytes()),
        }
    }

    pub(super) fn total(&self) -> usize {
        HEADER_LEN + self.wire().1.len()
    }

    /// Replaces a borrowed payload by a copy of the part not yet written;
    /// false if it cannot be: an offer the receiver may be copying from.
    pub(super) fn own_rest(&mut self) -> bool {
        if self.offer.is_some() {
            if self.written > 0 {
                return false;
            }
            // Not a byte of the offer is out: the message goes whole.
            self.offer = None;
        }
        if let Payload::Borrowed(..) = self.payload {
            let done = self.written.saturating_sub(HEADER_LEN);
            self.payload = Payload::Owned(crate::pool::copy_of(&self.payload.bytes()[done..]));
            self.written -= done;
        }
        true
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        if let Payload::Owned(v) = &mut self.payload {
            crate::pool::give(std::mem::take(v));
        }
    }
}
