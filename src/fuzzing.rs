//! Entry points for the fuzzers (built with the `fuzzing` feature): each
//! takes arbitrary bytes and feeds them to one decoder the way a peer, the
//! launcher or the environment would. None of them may panic, loop, or
//! allocate what a length asks for; an error is the right answer to
//! garbage. See `fuzz/` for the targets that call them.

use crate::envelope::{Envelope, Format, Landing};
use crate::error::Result;
use crate::matching::{ReceiveId, Sink};
use crate::transport::fuzz_links;
use crate::wire::{Context, HEADER_LEN, Header};

/// Keeps what it is given; lands nothing.
#[derive(Default)]
struct Collect(usize);

impl Sink for Collect {
    fn deliver(&mut self, env: Envelope) {
        self.0 += env.payload.len();
    }
    fn claim(&mut self, _: usize, _: u32, _: Context, _: Format, _: u64) -> Option<Landing> {
        None
    }
    fn landed(&mut self, _: ReceiveId, _: Envelope) {}
}

/// A frame header as a peer would send it.
pub fn frame_header(data: &[u8]) {
    if let Ok(b) = <[u8; HEADER_LEN]>::try_from(data.get(..HEADER_LEN).unwrap_or_default()) {
        if let Ok(h) = Header::decode(&b, "fuzz", 1 << 30) {
            assert_eq!(Header::decode(&h.encode(), "fuzz", 1 << 30).ok(), Some(h));
        }
    }
}

/// A byte stream from a peer, cut into reads of the sizes the first bytes
/// choose, through the framed-stream parser.
pub fn stream(data: &[u8]) {
    let (cuts, bytes) = data.split_at(data.len().min(8));
    let mut sink = Collect::default();
    let _ = fuzz_links::stream(bytes, cuts, &mut sink);
}

/// A control channel's bytes, as the launcher or a rank would read them.
pub fn control(data: &[u8]) {
    let _ = crate::wire::ControlMessage::decode(data, "fuzz");
    let _ = fuzz_links::control(data);
}

/// A peer's fastbox area and ring control words, as this rank reads them.
pub fn shared_memory(data: &[u8]) {
    let mut sink = Collect::default();
    let _ = fuzz_links::shared(data, &mut sink);
}

/// Handshake frames from a stranger, to both sides of a handshake.
pub fn handshake(data: &[u8]) {
    let secret = crate::auth::Secret::from_bytes([7; crate::auth::SECRET_LEN]);
    let keys = std::sync::Arc::new(crate::auth::PairKeys::derive(&secret, 1, 0, 2));
    let id = crate::auth::Identity { keys: &keys, job: 1 };
    for mut h in [
        crate::auth::Handshake::acceptor(id, "fuzz"),
        crate::auth::Handshake::connector(id, 1, "fuzz"),
    ]
    .into_iter()
    .flatten()
    {
        let mut rest = data;
        while !rest.is_empty() && h.wanted() > 0 {
            let n = h.wanted().min(rest.len());
            if h.input(&rest[..n]).is_err() {
                break;
            }
            rest = &rest[n..];
            let out = h.output().len();
            h.written(out);
        }
    }
}

/// The environment a rank starts with: lines of `NAME=value`.
pub fn environment(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let vars: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
    let _ = crate::bootstrap::placement(&get);
}

/// A status page's words, as the launcher reads them.
pub fn status_page(data: &[u8]) {
    let mut words = [0u64; crate::wire::status::SNAPSHOT_WORDS];
    for (w, chunk) in words.iter_mut().zip(data.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        *w = u64::from_le_bytes(b);
    }
    let _ = crate::wire::status::Snapshot::decode(&words);
}

/// The slots of the node-wide collectives' region, as written by peers.
pub fn node_slots(data: &[u8]) -> Result<()> {
    crate::collective::region::fuzz_slots(data)
}
