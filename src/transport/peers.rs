//! The table of a rank's framed streams to all its peers: queueing frames
//! (owned or borrowed), and the state of each peer as the engine asks it.

use crate::error::{Error, Result};
use crate::matching::ReceiveId;
use crate::wire::{BYE_UNFINALIZED, Header, Kind};

use super::SendTicket;
use super::stream::{Link, Payload, Peer, PeerState, Target};

/// The framed streams of one rank to all its peers, indexed by rank.
#[derive(Debug)]
pub(crate) struct Peers<L> {
    pub me: usize,
    pub list: Vec<Option<Peer<L>>>,
    pub max_message: u64,
    /// Bye has been queued to every peer.
    pub said_bye: bool,
    /// The Bye says this rank ends without calling finalize
    /// ([`BYE_UNFINALIZED`]).
    pub unfinalized: bool,
}

impl<L: Link> Peers<L> {
    fn peer(&mut self, rank: usize) -> &mut Peer<L> {
        match self.list[rank].as_mut() {
            Some(p) => p,
            None => unreachable!("rank {} has no link to itself", self.me),
        }
    }

    /// Queues a frame for `dest` and tries to write it at once; `None` if
    /// it was written in full at once (nothing to wait for or to own).
    pub fn queue(&mut self, dest: usize, header: Header, payload: Vec<u8>) -> Result<Option<SendTicket>> {
        self.push_and_flush(dest, header, Payload::Owned(payload))
    }

    /// Queues a frame and tries to write it at once; `None` if it was
    /// written in full (as a frame, or beside the stream) and so is done
    /// and borrows nothing. On an error the frame is made owned, so
    /// nothing keeps borrowing the caller's memory.
    #[inline]
    fn push_and_flush(&mut self, dest: usize, header: Header, payload: Payload) -> Result<Option<SendTicket>> {
        let peer = self.peer(dest);
        if !peer.hung_up && peer.notice_hang_up() {
            // What was queued for it is lost too: those sends fail (their
            // waits see it), and so does this one.
            let _ = peer.drop_queue();
        }
        if peer.cannot_send() {
            return Err(Error::PeerGone { rank: dest });
        }
        if peer.try_send_beside(&header, payload.bytes())? {
            return Ok(None);
        }
        self.push_framed(dest, header, payload)
    }

    /// [`Peers::push_and_flush`] of a frame that does not go beside the
    /// stream (out of line: a stream of small messages goes beside it).
    #[inline(never)]
    fn push_framed(&mut self, dest: usize, header: Header, payload: Payload) -> Result<Option<SendTicket>> {
        let peer = self.peer(dest);
        let Some(seq) = peer.push_or_write(&header, payload)? else {
            return Ok(None);
        };
        let ticket = SendTicket { dest, seq };
        if let Err(e) = peer.flush() {
            // The link failed: nobody copies from an offer any more.
            self.own(ticket);
            return Err(e);
        }
        // Written in full, and not as an offer the peer has yet to take
        // (one left for a peer that finalized is let go of here).
        if self.is_sent(ticket) {
            self.own(ticket);
            return Ok(None);
        }
        Ok(Some(ticket))
    }

    /// Queues a frame whose payload stays in the caller's memory, and tries
    /// to write it at once.
    ///
    /// # Safety
    ///
    /// If a ticket comes back, `payload` must stay valid until the frame
    /// is sent ([`Peers::is_sent`]) or [`Peers::own`] has returned true for
    /// the ticket; `None` means the frame borrows nothing any more.
    #[inline]
    pub unsafe fn queue_borrowed(&mut self, dest: usize, header: Header, payload: &[u8]) -> Result<Option<SendTicket>> {
        self.push_and_flush(dest, header, Payload::Borrowed(payload.as_ptr(), payload.len()))
    }

    /// Redirects a claimed message still being read into a buffer of its
    /// own (copying what has landed), so the receive's buffer is free again.
    pub fn detach(&mut self, id: ReceiveId) {
        for p in self.list.iter_mut().flatten() {
            let Some(inc) = p.incoming.as_mut() else { continue };
            if let Target::Landing(l) = inc.target {
                if l.id == id {
                    // SAFETY: the buffer is still valid (the receive is
                    // detaching before it ends) and `filled` bytes landed.
                    let landed = unsafe { std::slice::from_raw_parts(l.ptr, inc.filled) };
                    inc.target = match crate::pool::take(inc.len) {
                        Some(mut owned) => {
                            owned[..inc.filled].copy_from_slice(landed);
                            Target::Owned(owned)
                        }
                        // The rest is read and dropped, and the loss reported.
                        None => Target::Discard,
                    };
                }
            }
        }
    }

    /// Copies a borrowed payload that is still queued, so the caller's
    /// borrow can end; false if it cannot end yet: the frame went as an
    /// offer that the peer may be copying from (see [`Peer::own`]).
    pub fn own(&mut self, ticket: SendTicket) -> bool {
        self.list[ticket.dest].as_mut().is_none_or(|p| p.own(ticket.seq))
    }

    /// True if a message of `len` bytes to `dest` would go as an offer.
    pub fn would_offer(&self, dest: usize, len: usize) -> bool {
        self.list[dest].as_ref().is_some_and(|p| p.would_offer(len))
    }

    /// True once the frame has been written in full and, if it went as an
    /// offer, taken.
    pub fn is_sent(&self, ticket: SendTicket) -> bool {
        self.list[ticket.dest].as_ref().is_none_or(|p| p.is_sent(ticket.seq))
    }

    /// True if the frame will never be sent: its link closed first.
    pub fn is_lost(&self, ticket: SendTicket) -> bool {
        self.list[ticket.dest].as_ref().is_some_and(|p| p.is_lost(ticket.seq))
    }

    /// True if `rank` can send nothing more.
    pub fn is_gone(&self, rank: usize) -> bool {
        self.list[rank]
            .as_ref()
            .is_none_or(|p| p.state != PeerState::Open && p.incoming.is_none() && p.staged.is_empty())
    }

    /// True if `rank` vanished without saying goodbye: its link closed
    /// before a Bye, or it stopped reading before one arrived (a killed
    /// peer's socket refuses writes before its end of file is read).
    pub fn died(&self, rank: usize) -> bool {
        self.list[rank]
            .as_ref()
            .is_some_and(|p| p.died || (p.write_closed && p.state == PeerState::Open))
    }

    /// True if `rank` said Bye without calling finalize
    /// ([`BYE_UNFINALIZED`]).
    pub fn left_unfinalized(&self, rank: usize) -> bool {
        self.list[rank].as_ref().is_some_and(|p| p.unfinalized)
    }

    /// True if some peer may still send: it has neither said Bye nor gone.
    pub fn any_may_send_more(&self) -> bool {
        self.list.iter().flatten().any(Peer::may_send_more)
    }

    /// True if nothing more can be sent to `rank`.
    pub fn is_closed(&self, rank: usize) -> bool {
        self.list[rank].as_ref().is_none_or(|p| p.cannot_send())
    }

    /// Writes what can be written to every peer; true if anything was.
    /// A peer that has gone does not stop the others' output (their Bye
    /// included): the first error comes after every peer was written to.
    pub fn flush_all(&mut self) -> Result<bool> {
        let mut wrote = false;
        let mut first = Ok(());
        for p in self.list.iter_mut().flatten().filter(|p| p.has_output()) {
            match p.flush() {
                Ok(w) => wrote |= w,
                Err(e) => first = first.and(Err(e)),
            }
        }
        first.map(|()| wrote)
    }

    /// True if some open peer still has queued output, or an offer out
    /// that it may still take.
    pub fn pending_output(&self) -> bool {
        self.list.iter().flatten().any(|p| p.has_output() || p.awaits_taken())
    }

    /// True if some peer may still be copying an offer of this rank's.
    pub fn awaits_taken(&self) -> bool {
        self.list.iter().flatten().any(Peer::awaits_taken)
    }

    /// Queues a Bye to every peer whose link is open.
    pub fn queue_byes(&mut self) {
        if std::mem::replace(&mut self.said_bye, true) {
            return;
        }
        let mut bye = Header::plain(Kind::Bye, self.me as u32, 0);
        if self.unfinalized {
            bye.tag = BYE_UNFINALIZED;
        }
        for p in self.list.iter_mut().flatten() {
            if !p.cannot_send() {
                p.push(&bye, Payload::Owned(Vec::new()));
            }
        }
    }
}
