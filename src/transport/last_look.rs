//! A finalizing rank's last look at a link, once it has closed it (a peer's
//! write from then on fails, or, over shared memory, learns that it was not
//! seen): every message a peer finished writing is counted for the report
//! of messages never received, so that no send that succeeded goes
//! unaccounted for, while the payloads are dropped (nothing is kept beyond
//! the queue bound, and no offer is copied: an offer not taken counts as
//! sent for its sender, reported here).

use crate::envelope::{Envelope, Format};
use crate::error::{Error, Result};
use crate::wire::{HEADER_LEN, Header, Kind};

use super::Delivery;
use super::stream::{Incoming, Io, Link, Peer, PeerState, Target};

impl<L: Link> Peer<L> {
    /// Reads the link to its end and delivers each whole message in it as
    /// an envelope without payload (its source, tag and context are what
    /// the report needs). The message being read when the link closed is
    /// counted if the rest of it is there; a message cut off by the close
    /// is not: writing it failed, so its sender got `PeerGone`. Called
    /// again (shared memory: after a fastbox message), it goes on where it
    /// stopped. True if the link has reached its end (the peer closed its
    /// side), false if it only has nothing more to read now.
    pub(super) fn last_look(&mut self, max_message: u64, deliver: &mut Delivery<'_>) -> Result<bool> {
        if self.state == PeerState::Gone {
            return Ok(true);
        }
        self.parked = None;
        // The frame being read; its payload is skipped, not kept.
        let mut current = self.incoming.take();
        loop {
            if let Some(frame) = current.as_mut() {
                let skip = (frame.len - frame.filled).min(self.staged.len());
                self.staged.start += skip;
                frame.filled += skip;
                if frame.filled == frame.len {
                    deliver.deliver(self.unreceived(&frame.header));
                    current = None;
                    continue;
                }
            } else if self.staged.len() >= HEADER_LEN {
                let mut bytes = [0u8; HEADER_LEN];
                bytes.copy_from_slice(&self.staging[self.staged.start..self.staged.start + HEADER_LEN]);
                self.staged.start += HEADER_LEN;
                let header = self.check_header(&bytes, max_message)?;
                match header.kind {
                    Kind::Bye => self.state = PeerState::Finished,
                    // What this rank offered counts as sent once it has
                    // closed: nothing waits for the acknowledgement.
                    Kind::Taken => {}
                    _ => {
                        let len = usize::try_from(header.len).map_err(|_| {
                            Error::protocol(&self.name, "length", "larger than this machine's address space")
                        })?;
                        current = Some(Incoming {
                            header,
                            target: Target::Discard,
                            len,
                            filled: 0,
                        });
                    }
                }
                continue;
            }
            // Read on: what is staged is consumed up to a partial header.
            self.staging.copy_within(self.staged.clone(), 0);
            self.staged = 0..self.staged.len();
            let end = self.staged.end;
            // SAFETY: a link writes only bytes.
            let ended = match self
                .link
                .read(unsafe { super::link::as_uninit(&mut self.staging[end..]) })?
            {
                Io::Done(n) => {
                    self.staged.end += n;
                    continue;
                }
                Io::WouldBlock => false,
                Io::Closed => true,
            };
            // A frame cut off here stays begun, and a partial header stays
            // staged, for a look after this one.
            self.incoming = current;
            return Ok(ended);
        }
    }

    /// The envelope, without payload, of a message this rank will never
    /// receive (an offer carries its message's header).
    fn unreceived(&self, header: &Header) -> Envelope {
        let format = Format::of(header.kind, header.element);
        let mut env = Envelope::new(self.rank, header.tag, header.context, format, Vec::new());
        env.call = header.call;
        env
    }
}
