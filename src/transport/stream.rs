//! Frames over a byte stream: the state of each peer's stream and the
//! parser of incoming frames (the queue of outgoing ones is in
//! `writing.rs`, the table of peers in `peers.rs`). Shared by every
//! transport whose link to a peer is a stream of bytes (a socket, or a ring
//! in shared memory); each transport brings its own [`Link`] and its own way
//! of waiting.

use std::collections::VecDeque;
use std::mem::MaybeUninit;

use crate::envelope::{Envelope, Format, Landing};
use crate::error::{Error, Result};
use crate::matching::Arrived;
use crate::wire::{BYE_UNFINALIZED, HEADER_LEN, Header, Kind, Offer};

use super::Delivery;
pub(crate) use super::link::{Io, Link, as_uninit, copy_bytes};
pub(super) use super::outgoing::{Outgoing, Payload};

/// Bytes read from a link per call while parsing small frames; payloads
/// larger than this are read straight into their buffer.
const STAGING: usize = 64 << 10;
/// The most one call of `Peer::read_available` reads: a peer that keeps
/// writing does not keep this rank from its other peers and its caller.
const READ_SLICE: usize = 8 << 20;
/// Where an incoming payload goes.
#[derive(Debug)]
pub(super) enum Target {
    /// A buffer of its own, to deliver with the message.
    Owned(Vec<u8>),
    /// Straight into a claimed receive's buffer of at least `len` bytes.
    Landing(Landing),
    /// Nowhere: memory ran out for it; the bytes are read to keep the
    /// stream in step, and the loss is an error once the frame ends.
    Discard,
}

/// A frame being read: its header, and the payload so far.
#[derive(Debug)]
pub(super) struct Incoming {
    pub(super) header: Header,
    pub(super) target: Target,
    pub(super) len: usize,
    pub(super) filled: usize,
}

impl Incoming {
    /// The part of the payload still to be read (nothing to write into
    /// for a discarded one), as memory to write bytes into: a landing may
    /// be a fresh buffer that holds nothing yet. Only a [`Link`] and
    /// `copy_bytes` write into it, and they write only bytes.
    fn rest(&mut self) -> &mut [MaybeUninit<u8>] {
        match &mut self.target {
            Target::Discard => &mut [],
            // SAFETY: only bytes are written into it (see `Link::read`).
            Target::Owned(v) => unsafe { as_uninit(&mut v[self.filled..]) },
            // SAFETY: the receive that owns the buffer waits while it is
            // claimed, and detaches it (see `Peers::detach`) before it stops
            // waiting; the buffer has at least `len` bytes.
            Target::Landing(l) => unsafe {
                std::slice::from_raw_parts_mut(l.ptr.add(self.filled).cast::<MaybeUninit<u8>>(), self.len - self.filled)
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerState {
    Open,
    /// The peer said Bye: nothing more will come from it.
    Finished,
    /// The link is closed.
    Gone,
}

/// The framed stream to one peer.
#[derive(Debug)]
pub(crate) struct Peer<L> {
    /// This rank, as the source of the frames it makes itself.
    pub(super) me: u32,
    pub(super) rank: usize,
    pub(super) name: String,
    pub link: L,
    pub(super) state: PeerState,
    /// The link closed without a Bye: the peer died.
    pub(super) died: bool,
    /// Its Bye said it ends without calling finalize
    /// ([`crate::wire::BYE_UNFINALIZED`]).
    pub(super) unfinalized: bool,
    /// Reading is paused: this rank holds as much as it keeps of messages
    /// nobody asked for (see [`crate::matching::Sink::wants`]).
    pub(super) paused: bool,
    /// Writing failed (the peer closed its end): nothing more is sent, but
    /// what it sent before is still read, so that its Bye tells whether it
    /// finalized or died.
    pub(super) write_closed: bool,
    /// The peer shut its side down, seen beside the stream
    /// ([`Link::peer_hung_up`]): nothing more is sent to it.
    pub(super) hung_up: bool,
    pub(super) out: VecDeque<Outgoing>,
    /// Offers written in full whose payload the peer has not yet taken,
    /// oldest first, with their sequence numbers.
    pub(super) offered: VecDeque<(u64, Outgoing)>,
    /// Sequence number of the first frame in `out`; frames below are
    /// written (and sent, unless still in `offered`).
    pub(super) sent: u64,
    /// The first frame that was dropped unwritten because the peer closed:
    /// it and every later one are lost (their sends fail), whoever's call
    /// found the link closed.
    pub(super) lost_from: u64,
    pub(super) queued: u64,
    pub(super) staging: Vec<u8>,
    pub(super) staged: std::ops::Range<usize>,
    pub(super) incoming: Option<Incoming>,
    /// Since when the offer in `incoming` has waited for a receive to
    /// claim it; nothing after it from this peer is read meanwhile.
    pub(super) parked: Option<std::time::Instant>,
}

impl<L: Link> Peer<L> {
    /// The stream from rank `me` to rank `rank` over `link`.
    pub fn new(me: usize, rank: usize, link: L) -> Peer<L> {
        Peer {
            me: me as u32,
            rank,
            name: format!("rank {rank}"),
            link,
            state: PeerState::Open,
            died: false,
            unfinalized: false,
            paused: false,
            write_closed: false,
            hung_up: false,
            out: VecDeque::new(),
            offered: VecDeque::new(),
            sent: 0,
            lost_from: u64::MAX,
            queued: 0,
            staging: vec![0; STAGING],
            staged: 0..0,
            incoming: None,
            parked: None,
        }
    }

    /// The rank at the other end.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// True if something is queued and not yet written.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty() && self.state != PeerState::Gone && !self.write_closed && !self.hung_up
    }

    /// True if nothing more can be sent.
    pub fn cannot_send(&self) -> bool {
        self.state == PeerState::Gone || self.write_closed || self.hung_up
    }

    /// True if the link is still open.
    pub fn is_open(&self) -> bool {
        self.state != PeerState::Gone
    }

    /// True if the peer may still send: it has neither said Bye nor gone.
    pub fn may_send_more(&self) -> bool {
        self.state == PeerState::Open
    }

    /// True if an offer is out that the peer may still copy from: its
    /// payload must stay where it is.
    pub fn awaits_taken(&self) -> bool {
        !self.offered.is_empty() && self.state != PeerState::Gone && !self.write_closed && !self.link.peer_finalized()
    }

    /// True once the frame with sequence number `seq` has been written
    /// and, for an offer, taken, or left for a peer that finalized: an
    /// offer it did not take by then is one its last look counts for its
    /// report (see `super::last_look`).
    pub fn is_sent(&self, seq: u64) -> bool {
        seq < self.sent
            && seq < self.lost_from
            && (self.offered.binary_search_by_key(&seq, |o| o.0).is_err() || self.link.peer_finalized())
    }

    /// True if the frame `seq` will never be sent: the link closed before
    /// it was written.
    pub fn is_lost(&self, seq: u64) -> bool {
        seq < self.queued && !self.is_sent(seq) && self.cannot_send()
    }

    /// Lets go of the payload of the frame `seq` if it borrows the
    /// caller's memory: copies what is not written yet; false if it
    /// cannot, because the peer may be copying from it right now (wait
    /// until [`Peer::is_sent`], or until it cannot copy any more).
    pub(super) fn own(&mut self, seq: u64) -> bool {
        if let Ok(i) = self.offered.binary_search_by_key(&seq, |o| o.0) {
            if self.awaits_taken() {
                return false;
            }
            self.offered.remove(i);
            return true;
        }
        match seq.checked_sub(self.sent).and_then(|i| self.out.get_mut(i as usize)) {
            Some(o) => o.own_rest(),
            None => true,
        }
    }

    /// True if an offer waits for a receive to claim it (see `PARK_LIMIT`):
    /// reading this peer on can take it, even with no new bytes.
    pub fn has_parked(&self) -> bool {
        self.parked.is_some()
    }

    /// True if a message of `len` bytes queued now would go as an offer.
    pub fn would_offer(&self, len: usize) -> bool {
        self.link.offers(len, !self.out.is_empty())
    }

    /// True if no frame is half read.
    pub fn is_idle(&self) -> bool {
        self.incoming.is_none() && self.staged.is_empty()
    }

    /// Reads until the link is empty (or for READ_SLICE bytes, or up to
    /// the queue bound), delivering every whole message; true if it read
    /// anything. `waiting` says that this rank waits in spmd: an offer no
    /// receive claims is taken in at once (see `PARK_LIMIT`).
    pub fn read_available(&mut self, max_message: u64, deliver: &mut Delivery<'_>, waiting: bool) -> Result<bool> {
        let mut read = false;
        let mut bytes = 0;
        let mut drained = false;
        loop {
            let parked = self.parked.is_some();
            self.parse(max_message, deliver, waiting)?;
            read |= parked && self.parked.is_none();
            // A socket that gave less than was asked for had no more: the
            // next read would only say so (the next poll sees what comes).
            if drained {
                return Ok(read);
            }
            // Stop at the queue bound or after a slice even while the peer
            // keeps writing: a fast sender must not keep this rank reading
            // (and queueing) for as long as it likes.
            if self.state == PeerState::Gone || bytes >= READ_SLICE || !deliver.wants(self.rank()) {
                return Ok(read);
            }
            // Large payloads are read straight into their buffer.
            let direct = |i: &&mut Incoming| i.len - i.filled >= STAGING && !matches!(i.target, Target::Discard);
            let (io, asked) = if let Some(inc) = self.incoming.as_mut().filter(direct) {
                let rest = inc.rest();
                let asked = rest.len();
                let io = self.link.read(rest)?;
                if let Io::Done(n) = io {
                    inc.filled += n;
                }
                (io, asked)
            } else {
                if self.staged.start > 0 {
                    self.staging.copy_within(self.staged.clone(), 0);
                    self.staged = 0..self.staged.len();
                }
                let end = self.staged.end;
                let asked = self.staging.len() - end;
                // SAFETY: a link writes only bytes.
                let io = self.link.read(unsafe { as_uninit(&mut self.staging[end..]) })?;
                if let Io::Done(n) = io {
                    self.staged.end += n;
                }
                (io, asked)
            };
            match io {
                Io::Done(n) => {
                    read = true;
                    bytes += n;
                    drained = n < asked && self.link.short_read_drains();
                }
                Io::WouldBlock => return Ok(read),
                Io::Closed => {
                    self.closed()?;
                    return Ok(read);
                }
            }
        }
    }

    /// The peer closed its end.
    fn closed(&mut self) -> Result<()> {
        let was = self.state;
        self.state = PeerState::Gone;
        self.died = was == PeerState::Open;
        if self.incoming.is_some() || !self.staged.is_empty() {
            self.incoming = None;
            self.staged = 0..0;
            return Err(Error::protocol(
                &self.name,
                "stream",
                "the connection closed in the middle of a message (the rank died?)",
            ));
        }
        let unsent = !self.out.is_empty() || !self.offered.is_empty();
        self.offered.clear();
        if was == PeerState::Open && unsent {
            return Err(Error::PeerGone { rank: self.rank });
        }
        Ok(())
    }

    /// Turns staged bytes into messages.
    fn parse(&mut self, max_message: u64, deliver: &mut Delivery<'_>, waiting: bool) -> Result<()> {
        loop {
            if self.incoming.is_none() {
                if self.staged.len() < HEADER_LEN {
                    return Ok(());
                }
                let mut hb = [0u8; HEADER_LEN];
                hb.copy_from_slice(&self.staging[self.staged.start..self.staged.start + HEADER_LEN]);
                self.staged.start += HEADER_LEN;
                let header = match self.check_header(&hb, max_message) {
                    Ok(h) => h,
                    Err(e) => {
                        self.state = PeerState::Gone;
                        return Err(e);
                    }
                };
                match header.kind {
                    Kind::Bye => {
                        self.state = PeerState::Finished;
                        self.unfinalized = header.tag == BYE_UNFINALIZED;
                        continue;
                    }
                    Kind::Taken => {
                        self.taken()?;
                        continue;
                    }
                    _ => {}
                }
                let len = usize::try_from(header.len)
                    .map_err(|_| Error::protocol(&self.name, "length", "larger than this machine's address space"))?;
                let format = Format::of(header.kind, header.element);
                if header.kind != Kind::Offer && self.staged.len() >= len {
                    // All of it is here: delivered or landed at once.
                    self.whole(&header, format, len, deliver)?;
                    continue;
                }
                let target = if header.kind == Kind::Offer {
                    // The offer itself; its message is claimed once it is read.
                    Target::Owned(vec![0; len])
                } else {
                    match deliver.claim(self.rank, header.tag, header.context, format, header.len) {
                        Some(landing) => Target::Landing(landing),
                        None => Target::Owned(allocate(len, &self.name)?),
                    }
                };
                self.incoming = Some(Incoming {
                    header,
                    target,
                    len,
                    filled: 0,
                });
            }
            if let Some(inc) = self.incoming.as_mut() {
                let take = (inc.len - inc.filled).min(self.staged.len());
                if !matches!(inc.target, Target::Discard) {
                    copy_bytes(inc.rest(), &self.staging[self.staged.start..self.staged.start + take]);
                }
                inc.filled += take;
                self.staged.start += take;
                if inc.filled < inc.len {
                    return Ok(());
                }
            }
            if let Some(inc) = self.incoming.take() {
                let h = inc.header;
                let format = Format::of(h.kind, h.element);
                let (len, filled) = (inc.len, inc.filled);
                match inc.target {
                    Target::Owned(body) if h.kind == Kind::Offer => {
                        match self.take_offer(h, &body, max_message, deliver, waiting) {
                            Ok(true) => self.parked = None,
                            Ok(false) => {
                                self.parked.get_or_insert_with(std::time::Instant::now);
                                self.incoming = Some(Incoming {
                                    header: h,
                                    target: Target::Owned(body),
                                    len,
                                    filled,
                                });
                                return Ok(());
                            }
                            Err(e) => {
                                self.state = PeerState::Gone;
                                return Err(e);
                            }
                        }
                    }
                    Target::Owned(payload) => {
                        let mut env = Envelope::new(self.rank, h.tag, h.context, format, payload);
                        env.call = h.call;
                        deliver.deliver(env);
                    }
                    Target::Landing(l) => {
                        let mut env = Envelope::new(self.rank, h.tag, h.context, format, Vec::new());
                        env.call = h.call;
                        env.landed = Some(h.len);
                        deliver.landed(l.id, env);
                    }
                    Target::Discard => {
                        return Err(Error::io(
                            format!("keeping a message of {} bytes from {}", h.len, self.name),
                            std::io::Error::from(std::io::ErrorKind::OutOfMemory),
                        ));
                    }
                }
            }
            if self.staged.is_empty() {
                self.staged = 0..0;
            }
        }
    }

    /// Hands on a message whose `len` payload bytes are all staged.
    fn whole(&mut self, h: &Header, format: Format, len: usize, deliver: &mut Delivery<'_>) -> Result<()> {
        let payload = &self.staging[self.staged.start..self.staged.start + len];
        let head = Arrived::of_header(self.rank, h);
        if !deliver.land_whole(&head, payload) {
            let mut owned = allocate(len, &self.name)?;
            owned.copy_from_slice(payload);
            let mut env = Envelope::new(self.rank, h.tag, h.context, format, owned);
            env.call = h.call;
            deliver.deliver(env);
        }
        self.staged.start += len;
        Ok(())
    }

    pub(super) fn check_header(&self, hb: &[u8; HEADER_LEN], max_message: u64) -> Result<Header> {
        let header = Header::decode(hb, &self.name, max_message)?;
        if header.source as usize != self.rank {
            return Err(Error::protocol(
                &self.name,
                "source",
                format!("the frame claims to come from rank {}", header.source),
            ));
        }
        if !header.kind.is_addressed() && !matches!(header.kind, Kind::Bye | Kind::Taken) {
            return Err(Error::protocol(
                &self.name,
                "kind",
                format!(
                    "{:?} frames are not expected between ranks after the handshake",
                    header.kind
                ),
            ));
        }
        let fixed = match header.kind {
            Kind::Offer => Some(Offer::LEN as u64),
            Kind::Taken | Kind::Bye => Some(0),
            _ => None,
        };
        if fixed.is_some_and(|len| len != header.len) {
            return Err(Error::protocol(
                &self.name,
                "length",
                format!("a {:?} frame of {} bytes", header.kind, header.len),
            ));
        }
        // A rank that said Bye still takes what it was offered before.
        if self.state != PeerState::Open && header.kind != Kind::Taken {
            return Err(Error::protocol(
                &self.name,
                "kind",
                "a frame arrived after the peer said Bye",
            ));
        }
        Ok(header)
    }
}

/// A buffer of `len` bytes, or an error if memory runs out.
pub(super) fn allocate(len: usize, from: &str) -> Result<Vec<u8>> {
    crate::pool::take(len).ok_or_else(|| {
        Error::io(
            format!("allocating {len} bytes for a message from {from}"),
            std::io::Error::from(std::io::ErrorKind::OutOfMemory),
        )
    })
}

// SAFETY: borrowed payloads are only queued for the duration of a call on
// the thread that owns the engine; nothing else reaches them.
unsafe impl<L: Send> Send for Peer<L> {}
