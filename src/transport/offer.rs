//! Offers, from the receiving side: a message whose payload stays in the
//! sender's memory until the receiver copies it from there (see
//! [`crate::wire::Kind::Offer`]), taken at once by a receive that claims
//! it, parked a while for one to be posted, or copied into a buffer of its
//! own like any unexpected message; and the sender's side of `Taken`.

use crate::envelope::{Envelope, Format};
use crate::error::{Error, Result};
use crate::wire::{Header, Kind, Offer};

use super::Delivery;
use super::link::Link;
use super::outgoing::Payload;
use super::stream::{Peer, PeerState, allocate};

/// How long an offer of raw numbers that no receive has claimed stays in
/// the sender's memory while this rank is busy (not waiting in spmd): a
/// receive posted meanwhile takes it with one copy, straight into its
/// buffer. After this, or as soon as this rank waits, it is copied into a
/// buffer of its own like any unexpected message, so that the sender,
/// which may be waiting for it to go, never waits on a rank that polls.
pub(super) const PARK_LIMIT: std::time::Duration = std::time::Duration::from_millis(1);

impl<L: Link> Peer<L> {
    /// Copies the message of an offer from the peer's memory, into the
    /// receive that claims it or into a buffer of its own, delivers it,
    /// and tells the peer that its memory is free again. False if it
    /// leaves the offer parked instead (see `PARK_LIMIT`).
    pub(super) fn take_offer(
        &mut self,
        h: Header,
        body: &[u8],
        max_message: u64,
        deliver: &mut Delivery<'_>,
        waiting: bool,
    ) -> Result<bool> {
        let offer = Offer::decode(body, &self.name, max_message)?;
        let len = usize::try_from(offer.len)
            .map_err(|_| Error::protocol(&self.name, "offer length", "larger than this machine's address space"))?;
        let format = Format::of(h.kind, h.element);
        let mut env = Envelope::new(self.rank, h.tag, h.context, format, Vec::new());
        env.call = h.call;
        match deliver.claim(self.rank, h.tag, h.context, format, offer.len) {
            Some(landing) => {
                // SAFETY: as for `Incoming::rest`: the claimed buffer holds
                // at least `len` bytes (perhaps never written: a fresh
                // one) and stays valid while it is claimed.
                let into =
                    unsafe { std::slice::from_raw_parts_mut(landing.ptr.cast::<std::mem::MaybeUninit<u8>>(), len) };
                self.link.pull(&offer, into, &self.name)?;
                env.landed = Some(offer.len);
                deliver.landed(landing.id, env);
            }
            // A serde value is decoded from a copy anyway: nothing to wait for.
            None if format != Format::Serde
                && !waiting
                && self.parked.is_none_or(|since| since.elapsed() < PARK_LIMIT) =>
            {
                return Ok(false);
            }
            None => {
                let mut payload = allocate(len, &self.name)?;
                // SAFETY: a link writes only bytes.
                self.link
                    .pull(&offer, unsafe { super::link::as_uninit(&mut payload) }, &self.name)?;
                env.payload = payload;
                deliver.deliver(env);
            }
        }
        self.push(&Header::plain(Kind::Taken, self.me, 0), Payload::Owned(Vec::new()));
        // The sender may be waiting for this to go on: write it now.
        self.flush().map(|_| true)
    }

    /// The peer has taken the payload of this rank's oldest offer.
    pub(super) fn taken(&mut self) -> Result<()> {
        match self.offered.pop_front() {
            Some(_) => Ok(()),
            None => {
                self.state = PeerState::Gone;
                Err(Error::protocol(
                    &self.name,
                    "kind",
                    "it said it took an offer when none was outstanding",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! A receiving stream fed offers by hand, over a link that copies from
    //! this process's own memory as the kernel would from the sender's.

    use std::io::IoSlice;
    use std::mem::MaybeUninit;

    use super::super::link::copy_bytes;

    use super::*;
    use crate::envelope::Landing;
    use crate::matching::{ReceiveId, Sink};
    use crate::transport::link::Io;
    use crate::wire::{Context, HEADER_LEN};

    /// Frames to read, frames written back, and whether it can pull.
    struct Loopback {
        incoming: Vec<u8>,
        written: Vec<u8>,
        pulls: bool,
    }

    // SAFETY: writes only bytes into what it reads into (see `Link`).
    unsafe impl Link for Loopback {
        fn write(&mut self, iov: &[IoSlice<'_>]) -> Result<Io> {
            let n: usize = iov.iter().map(|s| s.len()).sum();
            iov.iter().for_each(|s| self.written.extend_from_slice(s));
            Ok(Io::Done(n))
        }

        fn read(&mut self, buf: &mut [MaybeUninit<u8>]) -> Result<Io> {
            let n = self.incoming.len().min(buf.len());
            if n == 0 {
                return Ok(Io::WouldBlock);
            }
            copy_bytes(buf, &self.incoming[..n]);
            self.incoming.drain(..n);
            Ok(Io::Done(n))
        }

        fn pull(&mut self, offer: &Offer, into: &mut [MaybeUninit<u8>], peer: &str) -> Result<()> {
            if !self.pulls {
                return Err(Error::protocol(peer, "kind", "cannot pull"));
            }
            // SAFETY: the tests offer the addresses of live vectors.
            let from = unsafe { std::slice::from_raw_parts(offer.address as *const u8, into.len()) };
            copy_bytes(into, from);
            Ok(())
        }
    }

    #[derive(Default)]
    struct Delivered(Vec<Envelope>);

    impl Sink for Delivered {
        fn deliver(&mut self, env: Envelope) {
            self.0.push(env);
        }
        fn claim(&mut self, _: usize, _: u32, _: Context, _: Format, _: u64) -> Option<Landing> {
            None
        }
        fn landed(&mut self, _: ReceiveId, _: Envelope) {}
    }

    /// An offer from rank 1 of `payload` as raw numbers of element 5 (or
    /// as a serde value with element 0).
    fn offer_frame(payload: &[u8], element: u16, tag: u32) -> Vec<u8> {
        let kind = Kind::Offer;
        let header = Header {
            kind,
            element,
            source: 1,
            tag,
            context: Context::WORLD,
            call: 0,
            len: Offer::LEN as u64,
        };
        let offer = Offer {
            address: payload.as_ptr() as u64,
            len: payload.len() as u64,
        };
        [header.encode().as_slice(), &offer.encode()].concat()
    }

    fn peer(incoming: Vec<u8>, pulls: bool) -> Peer<Loopback> {
        Peer::new(
            0,
            1,
            Loopback {
                incoming,
                written: Vec::new(),
                pulls,
            },
        )
    }

    /// The kinds of the frames the receiver wrote back.
    fn answers(p: &Peer<Loopback>) -> Vec<u8> {
        p.link.written.chunks(HEADER_LEN).map(|h| h[5]).collect()
    }

    #[test]
    fn an_unclaimed_offer_waits_while_the_rank_is_busy_then_is_copied_once_and_acknowledged() {
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut p = peer(offer_frame(&payload, 5, 7), true);
        let mut sink = Delivered::default();
        p.read_available(u64::MAX, &mut sink, false).unwrap();
        assert!(p.has_parked() && sink.0.is_empty() && answers(&p).is_empty());
        // Waiting in spmd, the rank takes it in and says so.
        p.read_available(u64::MAX, &mut sink, true).unwrap();
        assert!(!p.has_parked());
        assert_eq!(sink.0.len(), 1);
        assert_eq!((sink.0[0].tag, sink.0[0].format), (7, Format::Raw(5)));
        assert!(sink.0[0].payload == payload, "the payload arrives intact");
        assert_eq!(answers(&p), vec![Kind::Taken as u8]);
    }

    #[test]
    fn a_serde_offer_is_never_parked_and_one_left_too_long_is_taken() {
        let payload = vec![9u8; 1000];
        let mut p = peer(offer_frame(&payload, 0, 3), true);
        let mut sink = Delivered::default();
        p.read_available(u64::MAX, &mut sink, false).unwrap();
        assert_eq!(sink.0.len(), 1);
        assert_eq!(sink.0[0].format, Format::Serde);
        let mut p = peer(offer_frame(&payload, 5, 3), true);
        let mut sink = Delivered::default();
        p.read_available(u64::MAX, &mut sink, false).unwrap();
        assert!(p.has_parked());
        std::thread::sleep(PARK_LIMIT * 2);
        p.read_available(u64::MAX, &mut sink, false).unwrap();
        assert_eq!(sink.0.len(), 1, "a busy rank takes an offer in after PARK_LIMIT");
    }

    #[test]
    fn bad_offers_and_acknowledgements_are_errors_naming_the_peer_and_field() {
        let payload = vec![1u8; 64];
        let too_long = offer_frame(&payload, 5, 0);
        let mut no_offer = Header::plain(Kind::Taken, 1, 0).encode().to_vec();
        let mut long_taken = Header::plain(Kind::Taken, 1, 8).encode().to_vec();
        long_taken.extend_from_slice(&[0; 8]);
        let cases: [(Vec<u8>, bool, u64, &str); 4] = [
            (too_long, true, 32, "offer length"),
            (offer_frame(&payload, 5, 0), false, u64::MAX, "kind"),
            (std::mem::take(&mut no_offer), true, u64::MAX, "kind"),
            (long_taken, true, u64::MAX, "length"),
        ];
        for (bytes, pulls, max, field) in cases {
            let mut p = peer(bytes, pulls);
            match p.read_available(max, &mut Delivered::default(), true) {
                Err(Error::Protocol { field: f, peer, .. }) => assert_eq!((f, peer.as_str()), (field, "rank 1")),
                other => panic!("expected a {field} error, got {other:?}"),
            }
            assert!(!p.has_parked());
        }
    }
}
