//! A rank's keys for its connections to the other ranks: one per pair of
//! ranks, derived from the job's secret and the pair's two ranks. spmdrun
//! gives each rank only the keys of its own pairs, so a rank can prove to
//! each peer who it is, and cannot pass for another rank (it holds no key
//! of a pair it is not in), where one secret shared by the whole job would
//! let any rank claim any rank's place.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{SECRET_LEN, Secret};

/// One pair's key.
pub(super) type PairKey = [u8; SECRET_LEN];

/// A rank's keys, by peer rank (its own place holds no key). Its `Debug`
/// output never shows the bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairKeys {
    me: u32,
    keys: Vec<PairKey>,
}

impl fmt::Debug for PairKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PairKeys(rank {} of {}, ..)", self.me, self.keys.len())
    }
}

impl PairKeys {
    /// Rank `me`'s keys in job `job` of `size` ranks, from the job's
    /// `secret` (which only spmdrun and its agents hold).
    pub fn derive(secret: &Secret, job: u64, me: u32, size: u32) -> PairKeys {
        // The HMAC keyed once, cloned for each pair.
        let keyed = secret.keyed();
        let keys = (0..size)
            .map(|peer| {
                if peer == me {
                    [0; SECRET_LEN]
                } else {
                    pair_key(&keyed, job, me, peer)
                }
            })
            .collect();
        PairKeys { me, keys }
    }

    /// The keys as lowercase hex, one after another (for tests that look
    /// for them where they must not be).
    pub fn to_hex(&self) -> String {
        self.keys.iter().flatten().map(|b| format!("{b:02x}")).collect()
    }

    /// The rank these keys belong to.
    pub fn rank(&self) -> u32 {
        self.me
    }

    /// The key of this rank's pair with `peer`; `None` for a rank the job
    /// does not have, and for this rank itself.
    pub(super) fn with(&self, peer: u32) -> Option<&PairKey> {
        (peer != self.me).then(|| self.keys.get(peer as usize)).flatten()
    }
}

#[cfg(test)]
impl PairKeys {
    /// The same keys under another rank's name (an impostor's).
    pub(super) fn claiming(mut self, rank: u32) -> PairKeys {
        self.me = rank;
        self
    }
}

impl Secret {
    /// An HMAC-SHA256 keyed with the secret.
    fn keyed(&self) -> Hmac<Sha256> {
        // A key of any length is valid for HMAC, so this cannot fail.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }
}

/// The key of the pair of ranks `a` and `b` (in either order) in job
/// `job`, from the HMAC keyed with the job's secret.
fn pair_key(keyed: &Hmac<Sha256>, job: u64, a: u32, b: u32) -> PairKey {
    let mut m = keyed.clone();
    m.update(b"spmd-pair");
    m.update(&job.to_le_bytes());
    m.update(&a.min(b).to_le_bytes());
    m.update(&a.max(b).to_le_bytes());
    m.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ranks_of_a_pair_and_no_other_hold_its_key() {
        let s = Secret::from_bytes([3; SECRET_LEN]);
        let keys: Vec<PairKeys> = (0..4).map(|r| PairKeys::derive(&s, 9, r, 4)).collect();
        assert_eq!(keys[1].with(2), keys[2].with(1));
        assert!(keys[1].with(2).is_some());
        // Rank 3 holds no key equal to the pair (1, 2)'s.
        let theirs = keys[1].with(2).copied();
        assert!((0..4).all(|p| keys[3].with(p).copied() != theirs));
        assert_eq!(keys[1].with(1), None);
        assert_eq!(keys[1].with(4), None);
        // Another job, other keys.
        assert_ne!(PairKeys::derive(&s, 10, 1, 4).with(2), keys[1].with(2));
        assert_eq!(format!("{:?}", keys[1]), "PairKeys(rank 1 of 4, ..)");
    }
}
