//! The link between two ranks of one node: the ring this rank writes in the
//! peer's segment, the ring the peer writes in this rank's segment, and
//! the fastboxes beside each.

use std::io::IoSlice;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::Result;
use crate::wire::Header;

use super::super::stream::{Io, Link};
use super::doorbell;
use super::fastbox::{FASTBOX_DATA, FastboxRx, FastboxTx};
use super::segment::{CLOSED, RingMemory};

/// A large write makes its bytes visible to the reader every this many
/// bytes, so that copying in and copying out overlap.
const PUBLISH_EVERY: usize = 4 << 10;

/// The link to one peer on the node.
#[derive(Debug)]
pub(crate) struct RingLink {
    /// "rank N", for errors.
    peer: String,
    tx: RingMemory,
    rx: RingMemory,
    /// The peer's doorbell, rung after writing or after freeing room.
    peer_doorbell: *const AtomicU32,
    /// The peer's state word: [`CLOSED`] once it has finalized.
    peer_state: *const AtomicU32,
    tx_head: u64,
    /// The peer's tail when last read (checked).
    tx_tail_seen: u64,
    rx_tail: u64,
    /// How far this rank may read `rx`: its head when last seen with no
    /// fastbox message waiting (see [`super::fastbox`] for why).
    rx_head: u64,
    /// The fastboxes this rank writes in the peer's segment.
    fastbox_tx: FastboxTx,
    /// The fastboxes the peer writes in this rank's segment.
    pub(super) fastbox_rx: FastboxRx,
}

impl RingLink {
    /// A link writing `tx` (in the peer's segment) and reading `rx` (in this
    /// rank's), ringing the peer's `doorbell` and watching its `state`. The
    /// pointers must stay valid as long as the link.
    pub(super) fn new(
        peer: String,
        tx: RingMemory,
        rx: RingMemory,
        doorbell: &AtomicU32,
        state: &AtomicU32,
    ) -> RingLink {
        RingLink {
            peer,
            tx,
            rx,
            peer_doorbell: doorbell,
            peer_state: state,
            tx_head: 0,
            tx_tail_seen: 0,
            rx_tail: 0,
            rx_head: 0,
            fastbox_tx: FastboxTx::new(tx.fastboxes()),
            fastbox_rx: FastboxRx::new(rx.fastboxes()),
        }
    }

    fn peer_doorbell(&self) -> &AtomicU32 {
        // SAFETY: points into the peer's mapping, which the mesh keeps as
        // long as this link.
        unsafe { &*self.peer_doorbell }
    }

    /// True once the peer has finalized: it reads nothing more.
    pub(super) fn peer_closed(&self) -> bool {
        // SAFETY: as for the doorbell.
        unsafe { &*self.peer_state }.load(Ordering::Acquire) == CLOSED
    }

    /// True if the peer has written ring bytes this rank has not read.
    pub(super) fn readable(&self) -> bool {
        let ready = self.rx.has_bytes(self.rx_tail);
        if !ready {
            // Fetch the line the next frame will start in while waiting, so
            // that it travels alongside the head instead of after it.
            self.rx.prefetch(self.rx_tail);
        }
        ready
    }

    /// True if the peer has written something this rank has not read, in
    /// the ring or in a fastbox.
    pub(super) fn ready(&self) -> bool {
        self.fastbox_rx.ready() || self.readable()
    }

    /// True if the ring to the peer has room, or the peer has gone.
    pub(super) fn writable(&self) -> bool {
        self.tx
            .load_tail(self.tx_head, self.tx_tail_seen, &self.peer)
            .map_or(true, |tail| tail + (self.tx.capacity as u64) > self.tx_head)
            || self.peer_closed()
    }

    fn room(&mut self, wanted: usize) -> Result<usize> {
        let cap = self.tx.capacity as u64;
        if ((self.tx_tail_seen + cap - self.tx_head) as usize) < wanted {
            self.tx_tail_seen = self.tx.load_tail(self.tx_head, self.tx_tail_seen, &self.peer)?;
        }
        Ok((self.tx_tail_seen + cap - self.tx_head) as usize)
    }
}

impl Link for RingLink {
    fn write(&mut self, iov: &[IoSlice<'_>]) -> Result<Io> {
        let wanted: usize = iov.iter().map(|s| s.len()).sum();
        let mut room = self.room(wanted)?;
        if room == 0 || wanted == 0 {
            // A peer that has finalized will never make room again.
            return Ok(if wanted > 0 && self.peer_closed() {
                Io::Closed
            } else {
                Io::WouldBlock
            });
        }
        let mut wrote = 0;
        let mut published = 0;
        for slice in iov {
            let mut slice: &[u8] = slice;
            while room > 0 && !slice.is_empty() {
                // Publish large writes piece by piece, so the reader copies
                // out the start while the rest is still being copied in.
                let n = slice.len().min(room).min(PUBLISH_EVERY);
                self.tx.put(self.tx_head + wrote as u64, &slice[..n]);
                wrote += n;
                room -= n;
                slice = &slice[n..];
                if wrote - published >= PUBLISH_EVERY {
                    self.tx.publish_head(self.tx_head + wrote as u64);
                    doorbell::ring(self.peer_doorbell());
                    published = wrote;
                }
            }
            if room == 0 {
                break;
            }
        }
        self.tx_head += wrote as u64;
        if published != wrote {
            self.tx.publish_head(self.tx_head);
            doorbell::ring(self.peer_doorbell());
        }
        Ok(Io::Done(wrote))
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<Io> {
        // Bytes written after a fastbox message that is still waiting must
        // wait for it: see the head move only when no fastbox is full. (If
        // one fills after this check, it was written after these bytes.)
        let head = self.rx.load_head(self.rx_tail, self.rx_head, &self.peer)?;
        if head != self.rx_head && !self.fastbox_rx.ready() {
            self.rx_head = head;
        }
        let avail = (self.rx_head - self.rx_tail) as usize;
        let n = avail.min(buf.len());
        if n == 0 {
            return Ok(Io::WouldBlock);
        }
        self.rx.take(self.rx_tail, &mut buf[..n]);
        self.rx_tail += n as u64;
        self.rx.publish_tail(self.rx_tail);
        doorbell::ring(self.peer_doorbell());
        Ok(Io::Done(n))
    }

    fn try_send_beside(&mut self, header: &Header, payload: &[u8]) -> Result<bool> {
        if payload.len() > FASTBOX_DATA {
            return Ok(false);
        }
        // A fastbox may not overtake what is still in the ring.
        if self.tx_tail_seen != self.tx_head {
            self.tx_tail_seen = self.tx.load_tail(self.tx_head, self.tx_tail_seen, &self.peer)?;
            if self.tx_tail_seen != self.tx_head {
                return Ok(false);
            }
        }
        if !self.fastbox_tx.try_send(header, payload, &self.peer)? {
            return Ok(false);
        }
        doorbell::ring(self.peer_doorbell());
        Ok(true)
    }
}
