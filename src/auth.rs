//! The job secret and the handshake by which both ends of every connection
//! prove they know it, without ever sending it.
//!
//! The connector opens with [`Kind::Hello`] (job id, its rank, a fresh
//! nonce); the acceptor answers [`Kind::Challenge`] (its id, its nonce, and
//! an HMAC-SHA256 over both nonces); the connector checks that proof and
//! answers [`Kind::Proof`] with its own HMAC. Each side is convinced of the
//! other, and a recorded exchange cannot be replayed because the nonces are
//! fresh on both sides.

use std::fmt;
use std::io::{Read, Write};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::wire::{Header, Kind, read_frame, write_frame};

/// Length of the job secret in bytes.
pub const SECRET_LEN: usize = 32;
const NONCE_LEN: usize = 32;
const MAC_LEN: usize = 32;
const HELLO_LEN: usize = 8 + 4 + NONCE_LEN;
const CHALLENGE_LEN: usize = 4 + NONCE_LEN + MAC_LEN;

/// The random secret of one job. Its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
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

    /// The secret as lowercase hex, for the rank's environment.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses the hex form; the error never echoes the input.
    pub fn from_hex(s: &str) -> Result<Secret> {
        let bad = || Error::Bootstrap(format!("SPMD_SECRET must be {} hex digits", SECRET_LEN * 2));
        if s.len() != SECRET_LEN * 2 || !s.is_ascii() {
            return Err(bad());
        }
        let mut b = [0u8; SECRET_LEN];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Secret(b))
    }

    fn mac(&self, role: &[u8], job: u64, connector: u32, acceptor: u32, first: &[u8], second: &[u8]) -> Hmac<Sha256> {
        // A key of any length is valid for HMAC, so this cannot fail.
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(role);
        m.update(&job.to_le_bytes());
        m.update(&connector.to_le_bytes());
        m.update(&acceptor.to_le_bytes());
        m.update(first);
        m.update(second);
        m
    }
}

/// Who is on the other end of a handshake, and what the job is.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The job's secret.
    pub secret: &'a Secret,
    /// The job's id.
    pub job: u64,
    /// This side's rank ([`crate::wire::LAUNCHER_ID`] for the launcher).
    pub me: u32,
}

/// Runs the connector's side. `expected` is the id the acceptor must have.
pub fn connect<S: Read + Write>(stream: &mut S, id: Identity<'_>, expected: u32, peer: &str) -> Result<()> {
    let mut nonce_c = [0u8; NONCE_LEN];
    random_bytes(&mut nonce_c)?;
    let mut hello = Vec::with_capacity(HELLO_LEN);
    hello.extend_from_slice(&id.job.to_le_bytes());
    hello.extend_from_slice(&id.me.to_le_bytes());
    hello.extend_from_slice(&nonce_c);
    write_frame(
        stream,
        &Header::plain(Kind::Hello, id.me, HELLO_LEN as u64),
        &hello,
        peer,
    )?;

    let payload = expect_frame(stream, Kind::Challenge, CHALLENGE_LEN, peer)?;
    let acceptor = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
    if acceptor != expected {
        return Err(Error::Authentication {
            peer: peer.to_string(),
            detail: format!("reached id {acceptor}, expected {expected}"),
        });
    }
    let nonce_a = &payload[4..4 + NONCE_LEN];
    let proof_a = &payload[4 + NONCE_LEN..];
    id.secret
        .mac(b"spmd-accept", id.job, id.me, acceptor, &nonce_c, nonce_a)
        .verify_slice(proof_a)
        .map_err(|_| Error::Authentication {
            peer: peer.to_string(),
            detail: "the peer does not know this job's secret".into(),
        })?;
    let proof_c = id
        .secret
        .mac(b"spmd-connect", id.job, id.me, acceptor, nonce_a, &nonce_c)
        .finalize()
        .into_bytes();
    write_frame(
        stream,
        &Header::plain(Kind::Proof, id.me, MAC_LEN as u64),
        &proof_c,
        peer,
    )
}

/// Runs the acceptor's side and returns the connector's rank, which the
/// caller must check is one it expects.
pub fn accept<S: Read + Write>(stream: &mut S, id: Identity<'_>, peer: &str) -> Result<u32> {
    let hello = expect_frame(stream, Kind::Hello, HELLO_LEN, peer)?;
    let mut job_bytes = [0u8; 8];
    job_bytes.copy_from_slice(&hello[0..8]);
    let job = u64::from_le_bytes(job_bytes);
    if job != id.job {
        return Err(Error::Authentication {
            peer: peer.to_string(),
            detail: format!("it belongs to job {job:016x}, not {:016x}", id.job),
        });
    }
    let connector = u32::from_le_bytes([hello[8], hello[9], hello[10], hello[11]]);
    let nonce_c = &hello[12..];
    let mut nonce_a = [0u8; NONCE_LEN];
    random_bytes(&mut nonce_a)?;
    let proof_a = id
        .secret
        .mac(b"spmd-accept", id.job, connector, id.me, nonce_c, &nonce_a)
        .finalize()
        .into_bytes();
    let mut challenge = Vec::with_capacity(CHALLENGE_LEN);
    challenge.extend_from_slice(&id.me.to_le_bytes());
    challenge.extend_from_slice(&nonce_a);
    challenge.extend_from_slice(&proof_a);
    write_frame(
        stream,
        &Header::plain(Kind::Challenge, id.me, CHALLENGE_LEN as u64),
        &challenge,
        peer,
    )?;

    let proof_c = expect_frame(stream, Kind::Proof, MAC_LEN, peer)?;
    id.secret
        .mac(b"spmd-connect", id.job, connector, id.me, &nonce_a, nonce_c)
        .verify_slice(&proof_c)
        .map_err(|_| Error::Authentication {
            peer: format!("{peer} (claiming rank {connector})"),
            detail: "the peer does not know this job's secret".into(),
        })?;
    Ok(connector)
}

fn expect_frame(stream: &mut impl Read, kind: Kind, len: usize, peer: &str) -> Result<Vec<u8>> {
    let (header, payload) = read_frame(stream, peer, len as u64)?;
    if header.kind != kind || payload.len() != len {
        return Err(Error::protocol(
            peer,
            "kind",
            format!(
                "expected a {kind:?} frame of {len} bytes during the handshake, got {:?} of {} bytes",
                header.kind,
                payload.len()
            ),
        ));
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn run(secret_a: Secret, secret_c: Secret) -> (Result<()>, Result<u32>) {
        let (mut a, mut c) = UnixStream::pair().unwrap();
        let acceptor = std::thread::spawn(move || {
            let id = Identity {
                secret: &secret_a,
                job: 42,
                me: 0,
            };
            accept(&mut a, id, "test connector")
        });
        let id = Identity {
            secret: &secret_c,
            job: 42,
            me: 5,
        };
        let connected = connect(&mut c, id, 0, "test acceptor");
        drop(c);
        (connected, acceptor.join().unwrap())
    }

    #[test]
    fn same_secret_succeeds() {
        let s = Secret::random().unwrap();
        let (c, a) = run(s.clone(), s);
        c.unwrap();
        assert_eq!(a.unwrap(), 5);
    }

    #[test]
    fn wrong_secret_fails_on_both_sides() {
        let (c, a) = run(Secret::random().unwrap(), Secret::random().unwrap());
        assert!(matches!(c, Err(Error::Authentication { .. })), "{c:?}");
        assert!(a.is_err());
    }

    #[test]
    fn hex_round_trip_and_debug_hides_bytes() {
        let s = Secret::random().unwrap();
        assert_eq!(Secret::from_hex(&s.to_hex()).unwrap(), s);
        assert_eq!(format!("{s:?}"), "Secret(..)");
        assert!(Secret::from_hex("zz").is_err());
    }
}
