//! The bytes exchanged between ranks and with the launcher, shared by the
//! library and `spmdrun`: frame headers ([`header`]), control messages
//! ([`control`]) and the control channel that carries them ([`channel`]).
//!
//! This module is public so that `spmdrun` speaks exactly the protocol the
//! library speaks; it is hidden from the documentation because programs
//! using spmd never need it.

use std::io::{Read, Write};

use crate::error::{Error, Result};

pub mod channel;
pub mod control;
pub mod descriptors;
pub mod header;
pub mod status;

pub use channel::Channel;
pub use control::{Access, Card, ControlMessage, Settings, SingleCopy, TransportKind, WaitMode};
pub use header::{BYE_UNFINALIZED, Context, HEADER_LEN, Header, Kind, MAGIC, Offer, VERSION};

/// The largest control message accepted (card tables included).
pub const MAX_CONTROL_LEN: u64 = 16 << 20;
/// The rank number used for the launcher in handshakes and control frames.
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
    /// The rank's control channel, inherited from the launcher:
    /// `fd:<descriptor>:<launcher pid>`.
    pub const CONTROL: &str = "SPMD_CONTROL";
    /// How ranks on one node talk: `shm` (the default) or `socket`. Read by
    /// the launcher, which tells every rank.
    pub const TRANSPORT: &str = "SPMD_TRANSPORT";
    /// How ranks wait over shared memory: `auto` (the default), `spin`,
    /// `yield` or `sleep`. Read by the launcher, which tells every rank.
    pub const WAIT: &str = "SPMD_WAIT";
    /// When ranks on one node copy large messages straight from the
    /// sender's memory: `auto` (the default), `always` or `off` (see
    /// [`super::control::SingleCopy`]). Read by the launcher, which tells
    /// every rank.
    pub const SINGLE_COPY: &str = "SPMD_SINGLE_COPY";
}

/// A blocking read of one whole frame, for handshakes. Checks the header
/// against `max_len` before allocating.
pub fn read_frame(r: &mut impl Read, peer: &str, max_len: u64) -> Result<(Header, Vec<u8>)> {
    let mut hb = [0u8; HEADER_LEN];
    r.read_exact(&mut hb).map_err(|e| read_error(peer, e))?;
    let header = Header::decode(&hb, peer, max_len)?;
    // `max_len` is small on these channels, so this allocation is bounded.
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
