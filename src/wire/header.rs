//! The fixed 32-byte header at the start of every frame, and the checks
//! that every decoder makes before it trusts one.

use crate::error::{Error, Result};

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"SPMD";
/// The protocol version this build speaks.
pub const VERSION: u8 = 4;
/// The size of a frame header in bytes.
pub const HEADER_LEN: usize = 32;

/// The tag of the Bye of a rank that ends without calling `finalize` (its
/// `World` was dropped: its `main` may be returning an error that its
/// launcher is about to report). A peer that finds it gone then gives the
/// launcher time to end the job before it fails itself, as it does for a
/// peer that died, so that the report names the rank that failed first.
pub const BYE_UNFINALIZED: u32 = 1;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A user or collective message whose payload is a bincode-encoded value.
    Serde = 1,
    /// A user or collective message whose payload is raw plain-number bytes
    /// (the header's `element` says of which type).
    Raw = 2,
    /// A control message between a rank and the launcher.
    Control = 3,
    /// First handshake frame: the connector's identity and nonce.
    Hello = 4,
    /// Second handshake frame: the acceptor's nonce and proof.
    Challenge = 5,
    /// Third handshake frame: the connector's proof.
    Proof = 6,
    /// The sender has finalized and will send nothing more. Its tag is 0,
    /// or [`BYE_UNFINALIZED`].
    Bye = 7,
    /// A message whose payload stays in the sender's memory, for the
    /// receiver to copy from there (shared memory only): the header is the
    /// message's (tag, context, call; `element` 0 for a serde value, else
    /// the raw element type), and the payload is an [`Offer`].
    Offer = 8,
    /// The receiver has copied the payload of the oldest offer it had not
    /// yet taken: the sender may reuse that memory.
    Taken = 9,
}

impl Kind {
    /// The kind with this byte, if any.
    pub fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Serde,
            2 => Kind::Raw,
            3 => Kind::Control,
            4 => Kind::Hello,
            5 => Kind::Challenge,
            6 => Kind::Proof,
            7 => Kind::Bye,
            8 => Kind::Offer,
            9 => Kind::Taken,
            _ => return None,
        })
    }

    /// True for the kinds that carry a message for the matching engine.
    pub fn is_message(self) -> bool {
        matches!(self, Kind::Serde | Kind::Raw)
    }

    /// True for the kinds whose header has a message's tag, context and
    /// call: the messages and the offers of one.
    pub fn is_addressed(self) -> bool {
        self.is_message() || self == Kind::Offer
    }
}

/// The payload of an [`Kind::Offer`] frame: where the message's bytes are
/// in the sender's memory, and how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// The address of the first byte in the sender's address space.
    pub address: u64,
    /// The length of the message in bytes.
    pub len: u64,
}

impl Offer {
    /// The size of an encoded offer.
    pub const LEN: usize = 16;

    /// The 16 bytes of this offer.
    pub fn encode(&self) -> [u8; Offer::LEN] {
        let mut b = [0u8; Offer::LEN];
        b[0..8].copy_from_slice(&self.address.to_le_bytes());
        b[8..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decodes the payload of an offer from `peer` (named in errors),
    /// checking the length against `max_len`.
    pub fn decode(b: &[u8], peer: &str, max_len: u64) -> Result<Offer> {
        let field = |i: usize| b.get(i..i + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
        let (Some(address), Some(len), Offer::LEN) = (field(0), field(8), b.len()) else {
            return Err(Error::protocol(
                peer,
                "offer",
                format!("an offer has {} bytes, {} expected", b.len(), Offer::LEN),
            ));
        };
        if len > max_len {
            return Err(Error::protocol(
                peer,
                "offer length",
                format!("{len} bytes is more than the limit of {max_len} bytes for a message"),
            ));
        }
        if address.checked_add(len).is_none() {
            return Err(Error::protocol(
                peer,
                "offer address",
                format!("{len} bytes at {address:#x} pass the end of the address space"),
            ));
        }
        Ok(Offer { address, len })
    }
}

/// The matching space a message belongs to. The communicator with id `id`
/// has three: `4 id` for point-to-point messages, `4 id + 1` for its
/// blocking collectives and `4 id + 2` for its `immediate_` collectives, so
/// collectives never match user receives and no communicator's messages
/// match another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Context(pub u32);

impl Context {
    /// The world's point-to-point messages.
    pub const WORLD: Context = Context(0);
    /// The world's collectives.
    pub const WORLD_COLLECTIVE: Context = Context(1);

    /// The point-to-point context of the communicator with id `id`.
    pub fn point_to_point(id: u32) -> Context {
        Context(id.wrapping_mul(4))
    }

    /// The context of the blocking collectives of the communicator with id
    /// `id`.
    pub fn collective(id: u32) -> Context {
        Context(id.wrapping_mul(4) | 1)
    }

    /// The context of the `immediate_` collectives of the communicator with
    /// id `id`.
    pub fn immediate(id: u32) -> Context {
        Context(id.wrapping_mul(4) | 2)
    }

    /// The id of the communicator this context belongs to.
    pub fn communicator(self) -> u32 {
        self.0 / 4
    }

    /// True for a context of collectives, blocking or immediate.
    pub fn is_collective(self) -> bool {
        self.0 & 3 != 0
    }
}

/// The fixed header at the start of every frame.
///
/// | offset | size | field                                                 |
/// |-------:|-----:|-------------------------------------------------------|
/// | 0      | 4    | magic `b"SPMD"`                                       |
/// | 4      | 1    | version ([`VERSION`])                                 |
/// | 5      | 1    | kind ([`Kind`])                                       |
/// | 6      | 2    | element type of a raw message (0 otherwise)           |
/// | 8      | 4    | source rank                                           |
/// | 12     | 4    | tag                                                   |
/// | 16     | 4    | context ([`Context`])                                 |
/// | 20     | 4    | call: which collective of its communicator (0 for point-to-point) |
/// | 24     | 8    | payload length in bytes                               |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the frame carries.
    pub kind: Kind,
    /// The element type of a raw message's numbers; 0 for other kinds.
    pub element: u16,
    /// The rank that sent it.
    pub source: u32,
    /// The message tag (0 for non-message frames).
    pub tag: u32,
    /// The communication context.
    pub context: Context,
    /// For a collective message, the number of the collective call it
    /// belongs to; 0 otherwise.
    pub call: u32,
    /// The length of the payload that follows, in bytes.
    pub len: u64,
}

impl Header {
    /// A header for a frame that is not a message (handshake, control, bye).
    pub fn plain(kind: Kind, source: u32, len: u64) -> Header {
        Header {
            kind,
            element: 0,
            source,
            tag: 0,
            context: Context::WORLD,
            call: 0,
            len,
        }
    }

    /// The 32 bytes of this header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.kind as u8;
        b[6..8].copy_from_slice(&self.element.to_le_bytes());
        b[8..12].copy_from_slice(&self.source.to_le_bytes());
        b[12..16].copy_from_slice(&self.tag.to_le_bytes());
        b[16..20].copy_from_slice(&self.context.0.to_le_bytes());
        b[20..24].copy_from_slice(&self.call.to_le_bytes());
        b[24..32].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Checks and decodes a header received from `peer` (named in errors).
    ///
    /// `max_len` is the largest payload the caller is prepared to accept for
    /// this kind of connection.
    pub fn decode(b: &[u8; HEADER_LEN], peer: &str, max_len: u64) -> Result<Header> {
        if b[0..4] != MAGIC {
            return Err(Error::protocol(
                peer,
                "magic",
                format!("expected {:?}, got {:?} (not an spmd peer?)", MAGIC, &b[0..4]),
            ));
        }
        if b[4] != VERSION {
            return Err(Error::protocol(
                peer,
                "version",
                format!(
                    "this build speaks version {VERSION}, the peer sent {} (mixed spmd builds?)",
                    b[4]
                ),
            ));
        }
        let kind = Kind::from_byte(b[5])
            .ok_or_else(|| Error::protocol(peer, "kind", format!("unknown frame kind {}", b[5])))?;
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let element = u16::from_le_bytes([b[6], b[7]]);
        let (source, tag, context, call) = (word(8), word(12), Context(word(16)), word(20));
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(&b[24..32]);
        let len = u64::from_le_bytes(len_bytes);
        let header = Header {
            kind,
            element,
            source,
            tag,
            context,
            call,
            len,
        };
        header.check(|| peer.to_string(), max_len)?;
        Ok(header)
    }

    /// The checks of [`Header::decode`] on decoded fields, for the paths
    /// that carry a header's fields in another layout (the fastboxes);
    /// `peer` names the sender, and is only called when a field is wrong.
    /// In line: a fastbox checks every message's header (the error is made
    /// out of line).
    #[inline]
    pub fn check(&self, peer: impl FnOnce() -> String, max_len: u64) -> Result<()> {
        let kind = self.kind;
        let tag_allowed = self.tag == 0 || (kind == Kind::Bye && self.tag == BYE_UNFINALIZED);
        let fault = if !matches!(kind, Kind::Raw | Kind::Offer) && self.element != 0 {
            Fault::Element
        } else if !kind.is_addressed() && (!tag_allowed || self.context != Context::WORLD) {
            Fault::Tag
        } else if self.call != 0 && !(kind.is_addressed() && self.context.is_collective()) {
            Fault::Call
        } else if self.len > max_len {
            Fault::Length
        } else {
            return Ok(());
        };
        Err(self.fault_error(fault, peer, max_len))
    }

    /// The error of a header whose field `fault` is wrong, from `peer`.
    #[cold]
    #[inline(never)]
    fn fault_error(&self, fault: Fault, peer: impl FnOnce() -> String, max_len: u64) -> Error {
        let kind = self.kind;
        let (field, detail) = match fault {
            Fault::Element => (
                "element",
                format!("a {kind:?} frame must have element 0, got {}", self.element),
            ),
            Fault::Tag => {
                let tags = if kind == Kind::Bye { "tag 0 or 1" } else { "tag 0" };
                ("tag", format!("a {kind:?} frame must have {tags} and context 0"))
            }
            Fault::Call => (
                "call",
                format!("only collective messages have a call number, got {}", self.call),
            ),
            Fault::Length => (
                "length",
                format!(
                    "{} bytes is more than the limit of {max_len} bytes for a {kind:?} frame",
                    self.len
                ),
            ),
        };
        Error::protocol(peer(), field, detail)
    }
}

/// Which field of a header [`Header::check`] found wrong.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Element,
    Tag,
    Call,
    Length,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header {
            kind: Kind::Raw,
            element: 9,
            source: 7,
            tag: 99,
            context: Context::collective(5),
            call: 12,
            len: 5 << 32,
        };
        assert_eq!(Header::decode(&h.encode(), "rank 7", u64::MAX).unwrap(), h);
    }

    #[test]
    fn a_bye_may_say_its_rank_did_not_call_finalize_and_nothing_else() {
        let mut bye = Header::plain(Kind::Bye, 3, 0);
        bye.tag = BYE_UNFINALIZED;
        assert_eq!(
            Header::decode(&bye.encode(), "rank 3", u64::MAX).unwrap().tag,
            BYE_UNFINALIZED
        );
        bye.tag = 2;
        let e = Header::decode(&bye.encode(), "rank 3", u64::MAX)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rank 3") && e.contains("tag") && e.contains("tag 0 or 1"),
            "{e}"
        );
        let mut taken = Header::plain(Kind::Taken, 3, 0);
        taken.tag = BYE_UNFINALIZED;
        assert!(Header::decode(&taken.encode(), "rank 3", u64::MAX).is_err());
    }

    #[test]
    fn contexts_pair_up_per_communicator() {
        assert_eq!(Context::point_to_point(0), Context::WORLD);
        assert_eq!(Context::collective(0), Context::WORLD_COLLECTIVE);
        assert!(Context::collective(9).is_collective() && !Context::point_to_point(9).is_collective());
        assert_ne!(Context::collective(3), Context::point_to_point(4));
        assert!(Context::immediate(7).is_collective() && Context::immediate(7).communicator() == 7);
        assert_eq!(Context::collective((1 << 30) - 1).communicator(), (1 << 30) - 1);
    }

    #[test]
    fn every_bad_field_is_named() {
        let good = Header::plain(Kind::Serde, 1, 10).encode();
        let cases: [(usize, u8, &str); 6] = [
            (0, b'X', "magic"),
            (4, 9, "version"),
            (5, 200, "kind"),
            (6, 1, "element"),
            (20, 1, "call"),
            (12, 1, "length"),
        ];
        for (offset, value, field) in cases {
            let mut b = good;
            b[offset] = value;
            if field == "length" {
                // A length past the limit.
                b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
            }
            match Header::decode(&b, "rank 1", 1 << 20) {
                Err(Error::Protocol { field: f, peer, .. }) => {
                    assert_eq!(f, field);
                    assert_eq!(peer, "rank 1");
                }
                other => panic!("offset {offset}: expected a {field} error, got {other:?}"),
            }
        }
        let mut control = Header::plain(Kind::Control, 1, 0).encode();
        control[16] = 2;
        assert!(matches!(
            Header::decode(&control, "x", 10),
            Err(Error::Protocol { field: "tag", .. })
        ));
    }

    /// A small deterministic generator for the decoder tests.
    fn noise(seed: &mut u64) -> u8 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 33) as u8
    }

    #[test]
    fn random_headers_never_panic_and_valid_ones_round_trip() {
        let mut seed = 7;
        let mut accepted = 0;
        for i in 0..if cfg!(miri) { 2_000 } else { 200_000 } {
            let mut b = [0u8; HEADER_LEN];
            b.iter_mut().for_each(|x| *x = noise(&mut seed));
            // Half the time start from a plausible header, so that the
            // checks after the magic are exercised too.
            if i % 2 == 0 {
                b[0..4].copy_from_slice(&MAGIC);
                b[4] = VERSION;
                b[5] = 1 + b[5] % 9;
                if i % 4 == 0 {
                    b[6..8].fill(0);
                    b[20..24].fill(0);
                }
            }
            if let Ok(h) = Header::decode(&b, "fuzz", u64::MAX) {
                accepted += 1;
                assert_eq!(h.encode(), b, "a header that decodes re-encodes to the same bytes");
            }
        }
        assert!(accepted > 0, "some plausible headers were accepted");
    }
}
