//! Frames and control messages: the bytes exchanged between ranks and with
//! the launcher, shared by the library and `spmdrun`.
//!
//! Every frame starts with a fixed 32-byte little-endian [`Header`]:
//!
//! | offset | size | field                                   |
//! |-------:|-----:|-----------------------------------------|
//! | 0      | 4    | magic `b"SPMD"`                         |
//! | 4      | 1    | version ([`VERSION`])                   |
//! | 5      | 1    | kind ([`Kind`])                         |
//! | 6      | 2    | flags (must be 0)                       |
//! | 8      | 4    | source rank                             |
//! | 12     | 4    | tag                                     |
//! | 16     | 4    | context ([`Context`])                   |
//! | 20     | 4    | reserved (must be 0)                    |
//! | 24     | 8    | payload length in bytes                 |
//!
//! [`Header::decode`] checks every field before anything trusts it, and
//! never lets a length through that exceeds the caller's limit.
//!
//! This module is public so that `spmdrun` speaks exactly the protocol the
//! library speaks; programs using spmd never need it.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"SPMD";
/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// The size of a frame header in bytes.
pub const HEADER_LEN: usize = 32;
/// The largest control message accepted (card tables included).
pub const MAX_CONTROL_LEN: u64 = 16 << 20;
/// The rank number used for the launcher in handshakes.
pub const LAUNCHER_ID: u32 = u32::MAX;

/// The environment variables through which `spmdrun` tells a rank its place.
pub mod env {
    /// The rank of this process, `0..size`.
    pub const RANK: &str = "SPMD_RANK";
    /// The number of ranks in the job.
    pub const SIZE: &str = "SPMD_SIZE";
    /// The rank among the ranks on this node.
    pub const LOCAL_RANK: &str = "SPMD_LOCAL_RANK";
    /// The number of ranks on this node.
    pub const LOCAL_SIZE: &str = "SPMD_LOCAL_SIZE";
    /// The index of this node in the job's placement.
    pub const NODE: &str = "SPMD_NODE";
    /// The job id, 16 hex digits.
    pub const JOB: &str = "SPMD_JOB";
    /// The launcher's control address, `host:port`.
    pub const CONTROL: &str = "SPMD_CONTROL";
    /// The job secret, hex. Passed only through the environment, never on a
    /// command line.
    pub const SECRET: &str = "SPMD_SECRET";
    /// How ranks on one node talk: `shm` (the default) or `socket`.
    pub const TRANSPORT: &str = "SPMD_TRANSPORT";
}

/// The name (in /dev/shm) of rank `rank`'s shared-memory segment in job
/// `job`. Every segment of a job starts with [`segment_prefix`].
pub fn segment_name(job: u64, rank: usize) -> String {
    format!("{}{rank}", segment_prefix(job))
}

/// The common start of the names of a job's shared-memory segments, so that
/// the launcher can remove whatever a crashed job left behind.
pub fn segment_prefix(job: u64) -> String {
    format!("spmd-{job:016x}-")
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A user or collective message whose payload is a bincode-encoded value.
    Serde = 1,
    /// A user or collective message whose payload is raw plain-number bytes.
    Raw = 2,
    /// A [`ControlMessage`] between a rank and the launcher.
    Control = 3,
    /// First handshake frame: the connector's identity and nonce.
    Hello = 4,
    /// Second handshake frame: the acceptor's nonce and proof.
    Challenge = 5,
    /// Third handshake frame: the connector's proof.
    Proof = 6,
    /// The sender has finalized and will send nothing more.
    Bye = 7,
}

impl Kind {
    pub(crate) fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Serde,
            2 => Kind::Raw,
            3 => Kind::Control,
            4 => Kind::Hello,
            5 => Kind::Challenge,
            6 => Kind::Proof,
            7 => Kind::Bye,
            _ => return None,
        })
    }

    /// True for the kinds that carry a message for the matching engine.
    pub fn is_message(self) -> bool {
        matches!(self, Kind::Serde | Kind::Raw)
    }
}

/// Which communication space a message belongs to. Collectives never match
/// user receives because they travel in their own context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Context {
    /// Point-to-point messages of the program.
    User = 0,
    /// Messages of the collective operations.
    Collective = 1,
}

impl Context {
    pub(crate) fn from_u32(v: u32) -> Option<Context> {
        match v {
            0 => Some(Context::User),
            1 => Some(Context::Collective),
            _ => None,
        }
    }
}

/// The fixed header at the start of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the frame carries.
    pub kind: Kind,
    /// The rank that sent it.
    pub source: u32,
    /// The message tag (0 for non-message frames).
    pub tag: u32,
    /// The communication context.
    pub context: Context,
    /// The length of the payload that follows, in bytes.
    pub len: u64,
}

impl Header {
    /// A header for a frame that is not a message (handshake, control, bye).
    pub fn plain(kind: Kind, source: u32, len: u64) -> Header {
        Header {
            kind,
            source,
            tag: 0,
            context: Context::User,
            len,
        }
    }

    /// The 32 bytes of this header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.kind as u8;
        // b[6..8]: flags, b[20..24]: reserved, both zero.
        b[8..12].copy_from_slice(&self.source.to_le_bytes());
        b[12..16].copy_from_slice(&self.tag.to_le_bytes());
        b[16..20].copy_from_slice(&(self.context as u32).to_le_bytes());
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
        let flags = u16::from_le_bytes([b[6], b[7]]);
        if flags != 0 {
            return Err(Error::protocol(peer, "flags", format!("must be 0, got {flags:#x}")));
        }
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let source = word(8);
        let tag = word(12);
        let context_raw = word(16);
        let context = Context::from_u32(context_raw)
            .ok_or_else(|| Error::protocol(peer, "context", format!("unknown context {context_raw}")))?;
        if !kind.is_message() && (tag != 0 || context != Context::User) {
            return Err(Error::protocol(
                peer,
                "tag",
                format!("a {kind:?} frame must have tag 0 and the user context"),
            ));
        }
        let reserved = word(20);
        if reserved != 0 {
            return Err(Error::protocol(
                peer,
                "reserved",
                format!("must be 0, got {reserved:#x}"),
            ));
        }
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(&b[24..32]);
        let len = u64::from_le_bytes(len_bytes);
        if len > max_len {
            return Err(Error::protocol(
                peer,
                "length",
                format!("{len} bytes is more than the limit of {max_len} bytes for a {kind:?} frame"),
            ));
        }
        Ok(Header {
            kind,
            source,
            tag,
            context,
            len,
        })
    }
}

/// A blocking read of one whole frame, for handshakes and the control
/// channel. Checks the header against `max_len` before allocating.
pub fn read_frame(r: &mut impl Read, peer: &str, max_len: u64) -> Result<(Header, Vec<u8>)> {
    let mut hb = [0u8; HEADER_LEN];
    r.read_exact(&mut hb).map_err(|e| read_error(peer, e))?;
    let header = Header::decode(&hb, peer, max_len)?;
    // `max_len` is at most MAX_CONTROL_LEN on these channels, so this
    // allocation is bounded.
    let mut payload = vec![0u8; header.len as usize];
    r.read_exact(&mut payload).map_err(|e| read_error(peer, e))?;
    Ok((header, payload))
}

fn read_error(peer: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::protocol(peer, "stream", "the connection closed in the middle of a frame")
    } else {
        Error::io(format!("reading from {peer}"), e)
    }
}

/// A blocking write of one whole frame.
pub fn write_frame(w: &mut impl Write, header: &Header, payload: &[u8], peer: &str) -> Result<()> {
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    buf.extend_from_slice(&header.encode());
    buf.extend_from_slice(payload);
    w.write_all(&buf)
        .and_then(|_| w.flush())
        .map_err(|e| Error::io(format!("writing to {peer}"), e))
}

/// How a rank can be reached by its peers: the "address card" each rank
/// registers with the launcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Card {
    /// A Unix-domain socket in the abstract namespace (same node only).
    Unix {
        /// The abstract socket name, without the leading NUL.
        name: String,
    },
    /// A shared-memory segment (same node only).
    Shm {
        /// The segment's path under /dev/shm.
        path: String,
    },
}

/// What a rank and the launcher say to each other once the handshake is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlMessage {
    /// Rank → launcher: "I am this rank, this process, reach me here".
    Register {
        /// The rank's number.
        rank: u32,
        /// Its process id.
        pid: u32,
        /// Its host name.
        host: String,
        /// How peers connect to it.
        card: Card,
    },
    /// Launcher → every rank, once all have registered: the cards of all
    /// ranks, indexed by rank, and which node each rank is on.
    Table {
        /// `cards[r]` is how to reach rank `r`.
        cards: Vec<Card>,
        /// `nodes[r]` is the node index of rank `r`.
        nodes: Vec<u32>,
    },
    /// Rank → launcher: the rank has finalized and is about to exit.
    Finalized,
    /// Rank → launcher: the program called `abort(code)`.
    Abort {
        /// The exit code it asked for.
        code: i32,
        /// An optional explanation.
        message: String,
    },
    /// Rank → launcher: the program panicked (the process exits next).
    Panic {
        /// The panic message and location.
        message: String,
    },
    /// Launcher → rank: the job is ending; stop now.
    Stop {
        /// Why the job is ending.
        reason: String,
    },
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ MAX_CONTROL_LEN as usize }>()
}

impl ControlMessage {
    /// Encodes this message as the payload of a [`Kind::Control`] frame.
    pub fn encode(&self) -> Vec<u8> {
        // Encoding a plain enum of strings and vectors into a Vec cannot fail
        // short of running out of memory.
        bincode::serde::encode_to_vec(self, bincode_config()).unwrap_or_default()
    }

    /// Decodes a control payload received from `peer`.
    pub fn decode(payload: &[u8], peer: &str) -> Result<ControlMessage> {
        let (msg, used) = bincode::serde::decode_from_slice(payload, bincode_config())
            .map_err(|e| Error::protocol(peer, "control message", e.to_string()))?;
        if used != payload.len() {
            return Err(Error::protocol(
                peer,
                "control message",
                format!("{} trailing bytes", payload.len() - used),
            ));
        }
        Ok(msg)
    }

    /// Sends this message as one frame from `source`.
    pub fn send(&self, w: &mut impl Write, source: u32, peer: &str) -> Result<()> {
        let payload = self.encode();
        write_frame(
            w,
            &Header::plain(Kind::Control, source, payload.len() as u64),
            &payload,
            peer,
        )
    }

    /// Receives one control frame and decodes it.
    pub fn receive(r: &mut impl Read, peer: &str) -> Result<ControlMessage> {
        let (header, payload) = read_frame(r, peer, MAX_CONTROL_LEN)?;
        if header.kind != Kind::Control {
            return Err(Error::protocol(
                peer,
                "kind",
                format!("expected a Control frame, got {:?}", header.kind),
            ));
        }
        ControlMessage::decode(&payload, peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header {
            kind: Kind::Raw,
            source: 7,
            tag: 99,
            context: Context::Collective,
            len: 5 << 32,
        };
        assert_eq!(Header::decode(&h.encode(), "rank 7", u64::MAX).unwrap(), h);
    }

    #[test]
    fn every_bad_field_is_named() {
        let good = Header::plain(Kind::Serde, 1, 10).encode();
        let cases: [(usize, u8, &str); 6] = [
            (0, b'X', "magic"),
            (4, 9, "version"),
            (5, 200, "kind"),
            (6, 1, "flags"),
            (16, 5, "context"),
            (20, 1, "reserved"),
        ];
        for (offset, value, field) in cases {
            let mut b = good;
            b[offset] = value;
            match Header::decode(&b, "rank 1", 1 << 20) {
                Err(Error::Protocol { field: f, peer, .. }) => {
                    assert_eq!(f, field);
                    assert_eq!(peer, "rank 1");
                }
                other => panic!("offset {offset}: expected a {field} error, got {other:?}"),
            }
        }
        match Header::decode(&good, "rank 1", 9) {
            Err(Error::Protocol { field: "length", .. }) => {}
            other => panic!("expected a length error, got {other:?}"),
        }
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
        for i in 0..200_000 {
            let mut b = [0u8; HEADER_LEN];
            b.iter_mut().for_each(|x| *x = noise(&mut seed));
            // Half the time start from a plausible header, so that the
            // checks after the magic are exercised too.
            if i % 2 == 0 {
                b[0..4].copy_from_slice(&MAGIC);
                b[4] = VERSION;
                b[5] %= 8;
                if i % 4 == 0 {
                    b[6..8].fill(0);
                    let context = u32::from(b[16] % 2);
                    b[16..20].copy_from_slice(&context.to_le_bytes());
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

    #[test]
    fn corrupted_control_messages_are_errors_not_panics() {
        let good = ControlMessage::Register {
            rank: 3,
            pid: 77,
            host: "node".into(),
            card: Card::Shm {
                path: "/dev/shm/x".into(),
            },
        }
        .encode();
        let mut seed = 11;
        for _ in 0..20_000 {
            let mut bytes = good.clone();
            let flips = 1 + noise(&mut seed) as usize % 4;
            for _ in 0..flips {
                let at = noise(&mut seed) as usize % bytes.len();
                bytes[at] = noise(&mut seed);
            }
            let cut = noise(&mut seed) as usize % (bytes.len() + 1);
            let _ = ControlMessage::decode(&bytes[..cut], "fuzz");
            let _ = ControlMessage::decode(&bytes, "fuzz");
        }
    }

    #[test]
    fn control_messages_round_trip_and_reject_garbage() {
        let m = ControlMessage::Abort {
            code: 3,
            message: "bad input".into(),
        };
        assert_eq!(ControlMessage::decode(&m.encode(), "x").unwrap(), m);
        assert!(ControlMessage::decode(&[0xff, 0xff, 0xff], "x").is_err());
    }
}
