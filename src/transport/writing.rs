//! Writing to a peer: the queue of outgoing frames of one framed stream
//! (owned or borrowed payloads, offers), written in batches until the link
//! is full, and dropped, with the sends it holds failed, once the peer
//! reads no more.

use std::io::IoSlice;

use crate::error::{Error, Result};
use crate::wire::{HEADER_LEN, Header, Kind, Offer};

use super::stream::{Io, Link, Outgoing, Payload, Peer};

/// Frames gathered into one write.
const MAX_IOVECS: usize = 16;

/// The largest payload [`Peer::push_or_write`] writes at once (larger ones
/// gain nothing from skipping the queue, and may go as offers). A receiver
/// on the node takes whole frames up to it straight out of the ring
/// (`shm/straight.rs`).
pub(super) const WRITE_NOW_MAX: usize = 16 << 10;

impl<L: Link> Peer<L> {
    /// True once the peer has shut its side down, seen beside the stream
    /// ([`Link::peer_hung_up`]); from then on nothing is sent to it.
    pub(super) fn notice_hang_up(&mut self) -> bool {
        if !self.hung_up && self.link.peer_hung_up() {
            self.hung_up = true;
        }
        self.hung_up
    }

    /// Queues a frame; a message the peer can copy from this process goes
    /// as an offer.
    pub(super) fn push(&mut self, header: &Header, payload: Payload) -> u64 {
        let bytes = payload.bytes();
        let offer = (header.kind.is_message() && self.link.offers(bytes.len(), !self.out.is_empty())).then(|| {
            let offer = Offer {
                address: bytes.as_ptr() as u64,
                len: bytes.len() as u64,
            };
            let head = Header {
                kind: Kind::Offer,
                len: Offer::LEN as u64,
                ..*header
            };
            (head.encode(), offer.encode())
        });
        let seq = self.queued;
        self.queued += 1;
        self.out.push_back(Outgoing {
            header: header.encode(),
            payload,
            written: 0,
            offer,
        });
        seq
    }

    /// Queues a frame as [`Peer::push`] does, unless nothing is queued, the
    /// message is small and the link has room for the whole frame now:
    /// then it is written at once, with no queue entry and no gathering
    /// (a stream of small messages through the ring), and `None` says so:
    /// it is sent and borrows nothing. Otherwise the frame's number.
    pub(super) fn push_or_write(&mut self, header: &Header, payload: Payload) -> Result<Option<u64>> {
        let bytes = payload.bytes();
        let total = HEADER_LEN + bytes.len();
        if !self.out.is_empty() || bytes.len() > WRITE_NOW_MAX || !self.link.has_room_for(total)? {
            return Ok(Some(self.push(header, payload)));
        }
        let encoded = header.encode();
        let wrote = self.link.write(&[IoSlice::new(&encoded), IoSlice::new(bytes)])?;
        if wrote == Io::Done(total) {
            self.queued += 1;
            self.sent += 1;
            return Ok(None);
        }
        // The peer closed meanwhile: the frame is queued with what went,
        // and the caller's `flush` writes again, finds the link closed,
        // drops the queue and fails the send, as for any queued frame.
        let seq = self.push(header, payload);
        if let (Io::Done(n), Some(front)) = (wrote, self.out.front_mut()) {
            front.written = n;
        }
        Ok(Some(seq))
    }

    /// Sends a message beside the stream if the link can (see
    /// [`Link::try_send_beside`]); true if it did: the message is sent.
    #[inline]
    pub(super) fn try_send_beside(&mut self, header: &Header, payload: &[u8]) -> Result<bool> {
        if !self.out.is_empty() || !self.link.try_send_beside(header, payload)? {
            return Ok(false);
        }
        self.queued += 1;
        self.sent += 1;
        Ok(true)
    }

    /// Drops what is queued for a peer that reads no more. Losing our Bye
    /// is fine (it has finished too); losing a message is not: it is
    /// `PeerGone`. Otherwise true: nothing was written, but the queue is
    /// settled, so that a caller waiting for it looks again.
    pub(super) fn drop_queue(&mut self) -> Result<bool> {
        let lost_message = self
            .out
            .iter()
            .any(|o| Kind::from_byte(o.header[5]).is_some_and(Kind::is_message));
        self.out.clear();
        // Offers written in full were seen by the peer: taken, or counted
        // by its last look.
        self.offered.clear();
        self.lost_from = self.lost_from.min(self.sent);
        self.sent = self.queued;
        if lost_message {
            Err(Error::PeerGone { rank: self.rank })
        } else {
            Ok(true)
        }
    }

    /// Writes queued frames until the link is full; true if it wrote
    /// anything, or found the peer closed (and dropped what was queued).
    pub fn flush(&mut self) -> Result<bool> {
        let mut wrote = false;
        if self.has_output() && self.notice_hang_up() {
            // The peer is finalizing and will not read what comes now.
            return self.drop_queue();
        }
        while self.has_output() {
            let mut iov = [IoSlice::new(&[]); 2 * MAX_IOVECS];
            let mut used = 0;
            for o in self.out.iter().take(MAX_IOVECS) {
                let (header, body) = o.wire();
                if o.written < HEADER_LEN {
                    iov[used] = IoSlice::new(&header[o.written..]);
                    iov[used + 1] = IoSlice::new(body);
                    used += 2;
                } else {
                    iov[used] = IoSlice::new(&body[o.written - HEADER_LEN..]);
                    used += 1;
                }
            }
            let mut n = match self.link.write(&iov[..used])? {
                Io::Done(n) => n,
                Io::WouldBlock => return Ok(wrote),
                Io::Closed => {
                    // The peer has closed. Whether it finalized or died,
                    // its Bye (or its absence) says.
                    self.write_closed = true;
                    return self.drop_queue();
                }
            };
            wrote = true;
            while n > 0 {
                let Some(front) = self.out.front_mut() else { break };
                let take = n.min(front.total() - front.written);
                front.written += take;
                n -= take;
                if front.written == front.total() {
                    if let Some(o) = self.out.pop_front().filter(|o| o.offer.is_some()) {
                        self.offered.push_back((self.sent, o));
                    }
                    self.sent += 1;
                }
            }
        }
        Ok(wrote)
    }
}
