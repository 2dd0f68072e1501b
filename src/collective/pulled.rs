//! Alltoall of large parts copied straight out of the other ranks' send
//! buffers (`process_vm_readv`, where the kernel lets every rank of the
//! node read every other): each byte is copied once, where the windows
//! copy it in and out. The call's first node-wide step, which checks the
//! lengths, also carries each rank's word on it (whether it may read every
//! other rank, and where its send buffer is), so every rank takes the same
//! way; one more step at the end keeps each send buffer in place until
//! every rank has read its part.
//!
//! Against the windows, on 2 cores, 128 KiB parts (`osu_alltoall`, 5
//! interleaved rounds, medians): 8 ranks 766 -> 527 µs, 4 ranks 152 ->
//! 100, 2 ranks 21.7 -> 9.9 (Open MPI, which copies the same way, 598,
//! 109 and 10.2 in the same rounds; 562 against this build's 542 on 8
//! ranks in 9 rounds later).

use crate::error::{Error, Result};
use crate::transport::shm::ShmMesh;

use super::node::Node;
use super::region::{PART_MAX, Parts};
use super::window::WindowRun;

/// The bytes of a rank's word after its claim: 1 if it may read every
/// other rank, then its send buffer's address.
const OFFER: usize = 9;

/// Every rank's send buffer, agreed in the first step: none unless every
/// rank may read every other.
pub(super) struct Addresses(Vec<u64>);

impl Addresses {
    /// The addresses of an agreed result (see [`agree`]), if the ranks
    /// copy straight.
    pub(super) fn of(agreed: &[u8]) -> Option<Addresses> {
        let (&yes, rest) = agreed.split_first()?;
        if yes != 1 || rest.len() % 8 != 0 {
            return None;
        }
        let words = rest.chunks_exact(8).map(|w| {
            let mut b = [0; 8];
            b.copy_from_slice(w);
            u64::from_le_bytes(b)
        });
        Some(Addresses(words.collect()))
    }
}

/// The result of the first step from every rank's claim and word: 1 and
/// every address if each rank said it may read every other, else 0. (Each
/// part passed the claims' check: 8 bytes of claim, then the word.)
pub(super) fn agree(parts: &Parts) -> Vec<u8> {
    let n = parts.len();
    let words: Vec<&[u8]> = (0..n).filter_map(|r| parts.get(r).get(8..)).collect();
    let all = words.len() == n && 8 * n < PART_MAX && words.iter().all(|w| w.len() == OFFER && w[0] == 1);
    if !all {
        return vec![0];
    }
    let mut agreed = vec![1];
    for w in words {
        agreed.extend_from_slice(&w[1..]);
    }
    agreed
}

impl WindowRun<'_> {
    /// This rank's word for the first step of an alltoall that sends
    /// `send`. Never an error: a rank that cannot look now (its engine is
    /// held, or it has finalized) says no, and still comes to the step, so
    /// that the others do not wait for it and any error comes where it
    /// came before.
    pub(super) fn pull_offer(&self, send: &[u8]) -> [u8; OFFER] {
        let mut word = [0; OFFER];
        word[0] = u8::from(matches!(self.pids(), Ok(Some(_))));
        word[1..].copy_from_slice(&(send.as_ptr() as u64).to_le_bytes());
        word
    }

    /// The process of every other rank of the node (by rank of the
    /// communicator; 0 for this one), if this rank may copy straight out
    /// of each one's memory.
    fn pids(&self) -> Result<Option<Vec<i32>>> {
        let Node { n, me, .. } = self.node;
        let mut engine = self.comm.engine()?;
        let Some(mesh) = engine.node() else { return Ok(None) };
        let pids: Option<Vec<i32>> = (0..n)
            .map(|r| {
                if r == me {
                    Some(0)
                } else {
                    mesh.pull_pid(self.comm.job_rank(r))
                }
            })
            .collect();
        Ok(pids)
    }

    /// Each rank copies its part of every other rank's `send` (at the
    /// agreed `addresses`) into `recv`, then waits until every rank has.
    pub(super) fn alltoall_pulled(
        &self,
        send: &[u8],
        recv: &mut [u8],
        part: usize,
        addresses: &Addresses,
    ) -> Result<()> {
        let Node { n, me, .. } = self.node;
        debug_assert!(send.len() == n * part && recv.len() == n * part);
        let own = me * part..(me + 1) * part;
        recv[own.clone()].copy_from_slice(&send[own]);
        let copied = self.pull_parts(recv, part, addresses);
        // Even after a failed copy: the others may still be reading this
        // rank's buffer.
        let waited = self.barrier();
        copied.and(waited)
    }

    fn pull_parts(&self, recv: &mut [u8], part: usize, addresses: &Addresses) -> Result<()> {
        let Node { n, me, .. } = self.node;
        // This rank said it may read every other (the agreement needs
        // every rank's yes), and what it may read is fixed at start-up.
        let Some(pids) = self.pids()? else {
            return Err(Error::protocol(
                "the node's region",
                "alltoall addresses",
                "this rank's word said it may read every other rank's memory, and it may not",
            ));
        };
        if addresses.0.len() != n {
            return Err(Error::protocol(
                "the node's region",
                "alltoall addresses",
                format!("{} addresses agreed for {n} ranks", addresses.0.len()),
            ));
        }
        // From the next rank on, so that the ranks do not all read the
        // same one at once.
        for k in 1..n {
            let r = (me + k) % n;
            let rank = self.comm.job_rank(r);
            // A part that would end past the address space is a bad word,
            // named before the kernel is asked.
            let at = addresses.0[r]
                .checked_add((me * part) as u64)
                .filter(|at| at.checked_add(part as u64).is_some())
                .ok_or_else(|| {
                    Error::protocol(
                        format!("rank {rank}"),
                        "alltoall address",
                        format!(
                            "{:#x} with {} parts of {part} bytes passes the end of memory",
                            addresses.0[r],
                            me + 1
                        ),
                    )
                })?;
            ShmMesh::pull_part(pids[r], rank, at, &mut recv[r * part..(r + 1) * part])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parts as the first step gives them: a claim, then each rank's word.
    fn parts(words: &[(u8, u64)]) -> Parts {
        let mut parts = Parts::default();
        for &(can, address) in words {
            parts.buffer().extend_from_slice(&77u64.to_le_bytes());
            parts.buffer().push(can);
            parts.buffer().extend_from_slice(&address.to_le_bytes());
            parts.close();
        }
        parts
    }

    #[test]
    fn the_ranks_copy_straight_only_if_every_one_may() {
        let all = agree(&parts(&[(1, 0x1000), (1, 0x2000), (1, 0x3000)]));
        assert_eq!(Addresses::of(&all).map(|a| a.0), Some(vec![0x1000, 0x2000, 0x3000]));
        // One rank that may not, whichever: the windows for every rank.
        for no in 0..3 {
            let mut words = vec![(1, 0x1000), (1, 0x2000), (1, 0x3000)];
            words[no].0 = 0;
            let agreed = agree(&parts(&words));
            assert_eq!(agreed, [0], "rank {no}");
            assert!(Addresses::of(&agreed).is_none());
        }
        // A word cut short, or a flag that is neither 0 nor 1.
        let mut short = parts(&[(1, 0x1000)]);
        short.buffer().extend_from_slice(&[0; 8]);
        short.close();
        assert_eq!(agree(&short), [0]);
        assert_eq!(agree(&parts(&[(1, 0x1000), (2, 0x2000)])), [0]);
        // More ranks than the result's slot has room for.
        let many = vec![(1, 0x1000); PART_MAX / 8];
        assert_eq!(agree(&parts(&many)), [0]);
        // What the others read back: anything but a yes and whole words
        // means the windows.
        assert!(Addresses::of(&[]).is_none());
        assert!(Addresses::of(&[1, 0, 0]).is_none());
        assert!(Addresses::of(&[2, 0, 0, 0, 0, 0, 0, 0, 0]).is_none());
    }
}
