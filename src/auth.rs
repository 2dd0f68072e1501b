//! The job secret, the keys of each pair of ranks derived from it, and the
//! handshake by which both ends of every connection between ranks prove
//! they hold their pair's key, without ever sending it.
//!
//! The connector opens with [`Kind::Hello`] (job id, its rank, a fresh
//! nonce); the acceptor answers [`Kind::Challenge`] (its id, its nonce, and
//! an HMAC-SHA256 over both nonces); the connector checks that proof and
//! answers [`Kind::Proof`] with its own HMAC. Each HMAC is keyed with the
//! key of the pair of ranks the two ends claim to be ([`PairKeys`]), which
//! only those two ranks hold: each side is convinced the other is the rank
//! it claims, and a recorded exchange cannot be replayed because the
//! nonces are fresh on both sides.
//!
//! [`Handshake`] is the exchange as a state machine that does no I/O, so
//! that one thread can drive many handshakes at once without blocking on
//! any of them; [`connect`] and [`accept`] drive one over a blocking stream.
//!
//! A job on one machine needs none of this: spmdrun hands its ranks their
//! channel and their links to each other, and nothing of the job can be
//! connected to. The handshake is for the connections that must be made
//! over a network, between hosts, where a listener cannot be avoided.

mod keys;

use std::fmt;
use std::io::{Read, Write};
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::wire::{HEADER_LEN, Header, Kind};

use keys::PairKey;
pub use keys::PairKeys;

/// Length of the job secret in bytes.
pub const SECRET_LEN: usize = 32;
const NONCE_LEN: usize = 32;
const MAC_LEN: usize = 32;
const HELLO_LEN: usize = 8 + 4 + NONCE_LEN;
const CHALLENGE_LEN: usize = 4 + NONCE_LEN + MAC_LEN;

/// The random secret of one job. Its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret([u8; SECRET_LEN]);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Fills `buf` from the kernel's random source.
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| Error::io("reading /dev/urandom", e))
}

impl Secret {
    /// A fresh random secret.
    pub fn random() -> Result<Secret> {
        let mut b = [0u8; SECRET_LEN];
        random_bytes(&mut b)?;
        Ok(Secret(b))
    }

    /// A secret of these bytes (for the fuzzers and tests).
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Secret {
        Secret(bytes)
    }

    /// The secret as lowercase hex (for tests that look for it where it
    /// must not be).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The HMAC of one step of a handshake, keyed with its pair's key.
fn mac(
    key: &PairKey,
    role: &[u8],
    job: u64,
    connector: u32,
    acceptor: u32,
    first: &[u8],
    second: &[u8],
) -> Hmac<Sha256> {
    // A key of any length is valid for HMAC, so this cannot fail.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(role);
    m.update(&job.to_le_bytes());
    m.update(&connector.to_le_bytes());
    m.update(&acceptor.to_le_bytes());
    m.update(first);
    m.update(second);
    m
}

/// Who this side of a handshake is, and what the job is.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// This side's keys (which say its rank).
    pub keys: &'a Arc<PairKeys>,
    /// The job's id.
    pub job: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Connector: Hello sent (or queued), waiting for the Challenge.
    AwaitChallenge { expected: u32 },
    /// Acceptor: waiting for the Hello.
    AwaitHello,
    /// Acceptor: Challenge queued, waiting for the Proof.
    AwaitProof { connector: u32 },
    /// Both sides are convinced; the value is the peer's id.
    Done { peer: u32 },
}

/// One side of one handshake, as a state machine without I/O: write what
/// [`Handshake::output`] holds, read exactly [`Handshake::wanted`] bytes and
/// give them to [`Handshake::input`], until [`Handshake::peer`] is known.
/// It never reads past its last frame, so the stream can carry other
/// frames straight after.
#[derive(Debug)]
pub struct Handshake {
    keys: Arc<PairKeys>,
    job: u64,
    me: u32,
    peer_name: String,
    nonce: [u8; NONCE_LEN],
    peer_nonce: [u8; NONCE_LEN],
    step: Step,
    out: Vec<u8>,
    inbox: Vec<u8>,
}

impl Handshake {
    /// The connector's side, which expects to reach the acceptor with id
    /// `expected`. Its Hello is ready in the output at once.
    pub fn connector(id: Identity<'_>, expected: u32, peer: impl Into<String>) -> Result<Handshake> {
        let mut h = Handshake::new(id, peer, Step::AwaitChallenge { expected })?;
        let mut hello = Vec::with_capacity(HELLO_LEN);
        hello.extend_from_slice(&id.job.to_le_bytes());
        hello.extend_from_slice(&id.keys.rank().to_le_bytes());
        hello.extend_from_slice(&h.nonce);
        h.queue(Kind::Hello, &hello);
        Ok(h)
    }

    /// The acceptor's side.
    pub fn acceptor(id: Identity<'_>, peer: impl Into<String>) -> Result<Handshake> {
        Handshake::new(id, peer, Step::AwaitHello)
    }

    fn new(id: Identity<'_>, peer: impl Into<String>, step: Step) -> Result<Handshake> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        Ok(Handshake {
            keys: Arc::clone(id.keys),
            job: id.job,
            me: id.keys.rank(),
            peer_name: peer.into(),
            nonce,
            peer_nonce: [0; NONCE_LEN],
            step,
            out: Vec::new(),
            inbox: Vec::new(),
        })
    }

    fn queue(&mut self, kind: Kind, payload: &[u8]) {
        self.out
            .extend_from_slice(&Header::plain(kind, self.me, payload.len() as u64).encode());
        self.out.extend_from_slice(payload);
    }

    /// Bytes waiting to be written.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Marks `n` bytes of the output as written.
    pub fn written(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// How many more bytes to read before the next step (0 when done).
    pub fn wanted(&self) -> usize {
        let payload = match self.step {
            Step::AwaitChallenge { .. } => CHALLENGE_LEN,
            Step::AwaitHello => HELLO_LEN,
            Step::AwaitProof { .. } => MAC_LEN,
            Step::Done { .. } => return 0,
        };
        HEADER_LEN + payload - self.inbox.len()
    }

    /// The peer's id once both sides are convinced (and the output is
    /// written).
    pub fn peer(&self) -> Option<u32> {
        match self.step {
            Step::Done { peer } if self.out.is_empty() => Some(peer),
            _ => None,
        }
    }

    /// Takes bytes read from the peer (at most [`Handshake::wanted`]).
    pub fn input(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() > self.wanted() {
            return Err(Error::InvalidArgument(
                "a handshake was given more bytes than it wanted".into(),
            ));
        }
        self.inbox.extend_from_slice(bytes);
        if self.wanted() > 0 {
            return Ok(());
        }
        let frame = std::mem::take(&mut self.inbox);
        match self.step {
            Step::AwaitChallenge { expected } => {
                let payload = self.payload(&frame, Kind::Challenge)?;
                let acceptor = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
                if acceptor != expected {
                    return Err(self.refused(format!("reached id {acceptor}, expected {expected}")));
                }
                self.peer_nonce.copy_from_slice(&payload[4..4 + NONCE_LEN]);
                let proof_a = &payload[4 + NONCE_LEN..];
                let key = self.key_with(acceptor)?;
                mac(
                    &key,
                    b"spmd-accept",
                    self.job,
                    self.me,
                    acceptor,
                    &self.nonce,
                    &self.peer_nonce,
                )
                .verify_slice(proof_a)
                .map_err(|_| {
                    self.refused(format!(
                        "the peer does not hold this job's key for rank {} and rank {acceptor}: it is not rank \
                             {acceptor} of this job",
                        self.me
                    ))
                })?;
                let proof_c = mac(
                    &key,
                    b"spmd-connect",
                    self.job,
                    self.me,
                    acceptor,
                    &self.peer_nonce,
                    &self.nonce,
                )
                .finalize()
                .into_bytes();
                self.queue(Kind::Proof, &proof_c);
                self.step = Step::Done { peer: acceptor };
            }
            Step::AwaitHello => {
                let payload = self.payload(&frame, Kind::Hello)?;
                let mut job_bytes = [0u8; 8];
                job_bytes.copy_from_slice(&payload[0..8]);
                let job = u64::from_le_bytes(job_bytes);
                if job != self.job {
                    return Err(self.refused(format!("it belongs to job {job:016x}, not {:016x}", self.job)));
                }
                let connector = u32::from_le_bytes([payload[8], payload[9], payload[10], payload[11]]);
                self.peer_nonce.copy_from_slice(&payload[12..]);
                let key = self.key_with(connector)?;
                let proof_a = mac(
                    &key,
                    b"spmd-accept",
                    self.job,
                    connector,
                    self.me,
                    &self.peer_nonce,
                    &self.nonce,
                )
                .finalize()
                .into_bytes();
                let mut challenge = Vec::with_capacity(CHALLENGE_LEN);
                challenge.extend_from_slice(&self.me.to_le_bytes());
                challenge.extend_from_slice(&self.nonce);
                challenge.extend_from_slice(&proof_a);
                self.queue(Kind::Challenge, &challenge);
                self.step = Step::AwaitProof { connector };
            }
            Step::AwaitProof { connector } => {
                let payload = self.payload(&frame, Kind::Proof)?;
                let key = self.key_with(connector)?;
                mac(
                    &key,
                    b"spmd-connect",
                    self.job,
                    connector,
                    self.me,
                    &self.nonce,
                    &self.peer_nonce,
                )
                .verify_slice(payload)
                .map_err(|_| Error::Authentication {
                    peer: format!("{} (claiming rank {connector})", self.peer_name),
                    detail: format!(
                        "the peer does not hold this job's key for rank {connector} and rank {}: it is not rank \
                             {connector} of this job",
                        self.me
                    ),
                })?;
                self.step = Step::Done { peer: connector };
            }
            Step::Done { .. } => {}
        }
        Ok(())
    }

    /// The key of this rank's pair with `peer`, which the peer claims to
    /// be; a rank the job does not have (or this rank itself) is refused.
    fn key_with(&self, peer: u32) -> Result<PairKey> {
        self.keys.with(peer).copied().ok_or_else(|| {
            self.refused(format!(
                "it claims to be rank {peer}, which has no place beside this rank"
            ))
        })
    }

    fn refused(&self, detail: String) -> Error {
        Error::Authentication {
            peer: self.peer_name.clone(),
            detail,
        }
    }

    /// Checks a whole frame's header and returns its payload.
    fn payload<'f>(&self, frame: &'f [u8], kind: Kind) -> Result<&'f [u8]> {
        let mut hb = [0u8; HEADER_LEN];
        hb.copy_from_slice(&frame[..HEADER_LEN]);
        let header = Header::decode(&hb, &self.peer_name, (frame.len() - HEADER_LEN) as u64)?;
        let payload = &frame[HEADER_LEN..];
        if header.kind != kind || header.len != payload.len() as u64 {
            return Err(Error::protocol(
                &self.peer_name,
                "kind",
                format!(
                    "expected a {kind:?} frame of {} bytes during the handshake, got {:?} of {} bytes",
                    payload.len(),
                    header.kind,
                    header.len
                ),
            ));
        }
        Ok(payload)
    }
}

/// Drives a handshake over a blocking stream to its end; the peer's id.
fn drive<S: Read + Write>(stream: &mut S, mut h: Handshake) -> Result<u32> {
    loop {
        if !h.output().is_empty() {
            let peer = h.peer_name.clone();
            stream
                .write_all(h.output())
                .and_then(|_| stream.flush())
                .map_err(|e| Error::io(format!("writing to {peer}"), e))?;
            let n = h.output().len();
            h.written(n);
        }
        if let Some(peer) = h.peer() {
            return Ok(peer);
        }
        let mut buf = vec![0u8; h.wanted()];
        stream.read_exact(&mut buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::protocol(&h.peer_name, "stream", "the connection closed during the handshake")
            } else {
                Error::io(format!("reading from {}", h.peer_name), e)
            }
        })?;
        h.input(&buf)?;
    }
}

/// Runs the connector's side over a blocking stream. `expected` is the id
/// the acceptor must have.
pub fn connect<S: Read + Write>(stream: &mut S, id: Identity<'_>, expected: u32, peer: &str) -> Result<()> {
    drive(stream, Handshake::connector(id, expected, peer)?).map(|_| ())
}

/// Runs the acceptor's side over a blocking stream and returns the
/// connector's rank, which the caller must check is one it expects.
pub fn accept<S: Read + Write>(stream: &mut S, id: Identity<'_>, peer: &str) -> Result<u32> {
    drive(stream, Handshake::acceptor(id, peer)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// The keys of rank `me` of 6 in job 42 from `secret`.
    fn keys(secret: &Secret, me: u32) -> Arc<PairKeys> {
        Arc::new(PairKeys::derive(secret, 42, me, 6))
    }

    /// Rank 0 accepts a connection from a connector holding `connector`.
    fn run(acceptor: Arc<PairKeys>, connector: Arc<PairKeys>) -> (Result<()>, Result<u32>) {
        let (mut a, mut c) = UnixStream::pair().unwrap();
        let accepted = std::thread::spawn(move || {
            let id = Identity {
                keys: &acceptor,
                job: 42,
            };
            accept(&mut a, id, "test connector")
        });
        let id = Identity {
            keys: &connector,
            job: 42,
        };
        let connected = connect(&mut c, id, 0, "test acceptor");
        drop(c);
        (connected, accepted.join().unwrap())
    }

    #[test]
    fn same_secret_succeeds() {
        let s = Secret::random().unwrap();
        let (c, a) = run(keys(&s, 0), keys(&s, 5));
        c.unwrap();
        assert_eq!(a.unwrap(), 5);
    }

    #[test]
    fn wrong_secret_fails_on_both_sides() {
        let (c, a) = run(keys(&Secret::random().unwrap(), 0), keys(&Secret::random().unwrap(), 5));
        assert!(matches!(c, Err(Error::Authentication { .. })), "{c:?}");
        assert!(a.is_err());
    }

    #[test]
    fn a_rank_of_the_job_cannot_pass_for_another() {
        // Rank 1 holds its own keys and claims to be rank 2: it cannot
        // check rank 0's challenge, and its proof, made with the keys it
        // has, does not convince rank 0.
        let s = Secret::random().unwrap();
        let own = PairKeys::derive(&s, 42, 1, 6);
        let (c, a) = run(keys(&s, 0), Arc::new(own.clone().claiming(2)));
        assert!(matches!(c, Err(Error::Authentication { .. })), "{c:?}");
        assert!(a.is_err(), "{a:?}");
        let mut acceptor = Handshake::acceptor(
            Identity {
                keys: &keys(&s, 0),
                job: 42,
            },
            "a connection",
        )
        .unwrap();
        let feed = |h: &mut Handshake, kind: Kind, payload: &[u8]| {
            let mut frame = Header::plain(kind, 2, payload.len() as u64).encode().to_vec();
            frame.extend_from_slice(payload);
            h.input(&frame)
        };
        let nonce = [9u8; NONCE_LEN];
        let hello = [&42u64.to_le_bytes()[..], &2u32.to_le_bytes(), &nonce].concat();
        feed(&mut acceptor, Kind::Hello, &hello).unwrap();
        let challenge = acceptor.output().to_vec();
        acceptor.written(challenge.len());
        let theirs = &challenge[HEADER_LEN + 4..HEADER_LEN + 4 + NONCE_LEN];
        let key = own.with(0).unwrap();
        let proof = mac(key, b"spmd-connect", 42, 2, 0, theirs, &nonce)
            .finalize()
            .into_bytes();
        match feed(&mut acceptor, Kind::Proof, &proof) {
            Err(Error::Authentication { peer, detail }) => {
                assert!(
                    peer.contains("claiming rank 2") && detail.contains("it is not rank 2"),
                    "{peer}: {detail}"
                )
            }
            other => panic!("the impostor was accepted: {other:?}"),
        }
        assert_eq!(acceptor.peer(), None);
        // Claiming a rank the job does not have, or the acceptor's own.
        for claim in [0, 6, u32::MAX] {
            let (_, a) = run(keys(&s, 0), Arc::new(own.clone().claiming(claim)));
            assert!(matches!(a, Err(Error::Authentication { .. })), "{claim}: {a:?}");
        }
    }

    #[test]
    fn state_machines_meet_without_io_and_never_read_past_their_frames() {
        let s = Secret::random().unwrap();
        let (k3, k1) = (
            Arc::new(PairKeys::derive(&s, 9, 3, 4)),
            Arc::new(PairKeys::derive(&s, 9, 1, 4)),
        );
        let mut c = Handshake::connector(Identity { keys: &k3, job: 9 }, 1, "acceptor").unwrap();
        let mut a = Handshake::acceptor(Identity { keys: &k1, job: 9 }, "connector").unwrap();
        // Pass bytes one at a time, as a slow network would.
        fn pass(from: &mut Handshake, to: &mut Handshake) {
            while !from.output().is_empty() && to.wanted() > 0 {
                let b = from.output()[0];
                from.written(1);
                to.input(&[b]).unwrap();
            }
        }
        for _ in 0..10 {
            pass(&mut c, &mut a);
            pass(&mut a, &mut c);
        }
        assert_eq!((c.peer(), a.peer()), (Some(1), Some(3)));
        assert_eq!((c.wanted(), a.wanted()), (0, 0));
        assert!(a.input(&[0]).is_err(), "a finished handshake wants nothing more");
    }

    #[test]
    fn debug_hides_the_secret() {
        let s = Secret::random().unwrap();
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }
}
