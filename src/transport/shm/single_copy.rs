//! Single-copy transfers between the ranks of a node: the receiver copies
//! a large message straight out of the sender's memory with
//! `process_vm_readv` (Linux's cross-memory attach), instead of the sender
//! copying it into a ring and the receiver copying it out again.
//!
//! The kernel allows it where the receiver may trace the sender: the same
//! user, and no Yama policy, container profile or `PR_SET_DUMPABLE` that
//! forbids it. Each rank tries once per peer at start-up ([`can_read`]),
//! by reading the peer's segment header through the peer's own address
//! space and comparing it with its own mapping of that header; only a
//! peer it can read is told that it may offer (see
//! [`crate::wire::Kind::Offer`]); every other pair sends through the ring.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::transport::link::as_uninit;

/// How long the machine's load, once read, is taken as still true.
const LOAD_FRESH: Duration = Duration::from_millis(10);

/// True if the machine has more runnable tasks than online cores now (as
/// `/proc/loadavg` counts them, read at most every [`LOAD_FRESH`]): two
/// ranks then seldom run at the same time.
pub(super) fn machine_is_busy() -> bool {
    thread_local! {
        static LAST: Cell<Option<(Instant, bool)>> = const { Cell::new(None) };
    }
    LAST.with(|last| match last.get() {
        Some((at, busy)) if at.elapsed() < LOAD_FRESH => busy,
        _ => {
            let busy = runnable_tasks().is_some_and(|n| n > online_cores());
            last.set(Some((Instant::now(), busy)));
            busy
        }
    })
}

/// The number of runnable tasks on the machine, this one included: the
/// fourth field of `/proc/loadavg` is `running/total`.
fn runnable_tasks() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().nth(3)?.split('/').next()?.parse().ok()
}

fn online_cores() -> usize {
    // SAFETY: a plain query with no arguments to check.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// The most one system call copies: the kernel copies in pieces anyway,
/// and a bound keeps the length far from what `isize` can hold.
const PIECE: usize = 1 << 30;

/// True if this process can read `expected.len()` bytes at `address` in
/// process `pid` and finds exactly `expected` there.
pub(super) fn can_read(pid: i32, address: u64, expected: &[u8]) -> bool {
    let mut seen = vec![0u8; expected.len()];
    // SAFETY: the kernel writes only bytes.
    read(pid, address, unsafe { as_uninit(&mut seen) }).is_ok_and(|()| seen == expected)
}

/// What a pull copies, for its errors: a message's offer, or a part of
/// an alltoall.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pulled {
    Offer,
    AlltoallPart,
}

/// Copies `into.len()` bytes from `address` in process `pid` (the rank
/// `peer`, named in errors) into `into`.
pub(super) fn pull(
    pid: i32,
    address: u64,
    into: &mut [std::mem::MaybeUninit<u8>],
    peer: &str,
    what: Pulled,
) -> Result<()> {
    let (thing, field) = match what {
        Pulled::Offer => ("its offer", "offer address"),
        Pulled::AlltoallPart => ("its send buffer in an alltoall", "alltoall address"),
    };
    read(pid, address, into).map_err(|e| match e {
        // The sender died mid-message, as when a stream ends inside a
        // frame: the same field, so that this rank leaves the report to
        // the launcher, which names the death.
        nix::errno::Errno::ESRCH => Error::protocol(
            peer,
            "stream",
            format!("the process vanished while this rank copied {thing} (the rank died?)"),
        ),
        e => Error::protocol(
            peer,
            field,
            format!(
                "cannot copy {} bytes at {address:#x} from its memory: {}",
                into.len(),
                std::io::Error::from(e)
            ),
        ),
    })
}

fn read(pid: i32, address: u64, into: &mut [std::mem::MaybeUninit<u8>]) -> std::result::Result<(), nix::errno::Errno> {
    let mut done = 0;
    while done < into.len() {
        let n = (into.len() - done).min(PIECE);
        let local = libc::iovec {
            iov_base: into[done..].as_mut_ptr().cast(),
            iov_len: n,
        };
        let remote = libc::iovec {
            iov_base: (address + done as u64) as usize as *mut libc::c_void,
            iov_len: n,
        };
        // SAFETY: the local iovec is inside `into`, which we hold mutably;
        // the kernel checks the remote one against the other process's
        // mappings and fails rather than touching anything else.
        let got = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        match got {
            // A short copy stops at a page the other process does not map.
            0 => return Err(nix::errno::Errno::EFAULT),
            n if n > 0 => done += n as usize,
            _ => match nix::errno::Errno::last() {
                nix::errno::Errno::EINTR => {}
                e => return Err(e),
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_memory_and_names_a_bad_address() {
        let pid = std::process::id() as i32;
        let source: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let mut copy = vec![0u8; source.len()];
        // SAFETY: the kernel writes only bytes.
        pull(
            pid,
            source.as_ptr() as u64,
            unsafe { as_uninit(&mut copy) },
            "rank 1",
            Pulled::Offer,
        )
        .unwrap();
        assert_eq!(copy, source);
        assert!(can_read(pid, source.as_ptr() as u64, &source[..64]));
        assert!(!can_read(pid, source.as_ptr() as u64, &[1u8; 64]));
        // SAFETY: as above.
        match pull(pid, 8, unsafe { as_uninit(&mut copy) }, "rank 1", Pulled::Offer) {
            Err(Error::Protocol { field, peer, .. }) => assert_eq!((field, peer.as_str()), ("offer address", "rank 1")),
            other => panic!("{other:?}"),
        }
    }
}
