//! Large messages between two ranks whichever way they travel: `spmd-check
//! single-copy [undumpable | rank-1-undumpable]` sends slices of 256 KiB
//! to 16 MiB both ways (received into the caller's buffer and into a
//! vector), and alltoalls of parts of 256 KiB and 4 MiB, and checks every
//! element, then says whether rank 0 may read rank 1's memory, as a
//! single-copy transfer would. With `undumpable`, every rank first makes
//! itself non-dumpable (as hardened programs do), which forbids that to
//! anyone but root; with `rank-1-undumpable` only rank 1 does, so that
//! rank 1 may read rank 0 but not the other way round (an alltoall must
//! still take one way on both).

use spmd::{Error, World};

/// Makes this process non-dumpable: the kernel then refuses other
/// processes of the same user (without `CAP_SYS_PTRACE`) its memory.
pub fn make_undumpable() {
    // SAFETY: a plain prctl with constant arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_DUMPABLE: {}", std::io::Error::last_os_error());
}

/// What the mode's argument asks of this rank before `init`, which looks
/// at who may read whom.
pub fn before_init(arg: Option<&str>) {
    let rank = std::env::var("SPMD_RANK").unwrap_or_default();
    match arg {
        Some("undumpable") => make_undumpable(),
        Some("rank-1-undumpable") if rank == "1" => make_undumpable(),
        _ => {}
    }
}

fn pattern(len: usize, from: usize, round: usize) -> Vec<u32> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) ^ (from * 1000 + round) as u32)
        .collect()
}

pub fn run(world: &World) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    assert_eq!(n, 2, "single-copy runs on 2 ranks");
    let peer = 1 - me;
    let mut round = 0;
    for len in [64 << 10, 1 << 20, 4 << 20] {
        for _ in 0..3 {
            round += 1;
            let mine = pattern(len, me, round);
            let expected = pattern(len, peer, round);
            // Rank 0 sends first, so one side always receives while the
            // other sends; both forms of receive.
            let mut into = vec![0u32; len];
            if me == 0 {
                world.send_slice(&mine, peer)?;
                world.receive_into(&mut into, peer)?;
                world.send_slice(&mine, peer)?;
            } else {
                world.receive_into(&mut into, peer)?;
                world.send_slice(&mine, peer)?;
            }
            assert!(into == expected, "round {round}: {len} elements received into a buffer");
            if me == 1 {
                let got: Vec<u32> = world.receive_vec(peer)?;
                assert!(got == expected, "round {round}: {len} elements received as a vector");
            }
        }
    }
    // Alltoalls of large parts, which copy straight out of the other
    // rank's send buffer only if each rank may read the other.
    for part in [64 << 10, 1 << 20] {
        for _ in 0..3 {
            round += 1;
            let send: Vec<u32> = [pattern(part, me * 2, round), pattern(part, me * 2 + 1, round)].concat();
            let mut recv = vec![0u32; 2 * part];
            world.alltoall_into(&send, &mut recv)?;
            let want: Vec<u32> = [pattern(part, me, round), pattern(part, 2 + me, round)].concat();
            assert!(recv == want, "round {round}: alltoall of {part} elements a part");
        }
    }
    // Can rank 0 read rank 1's memory, as the kernel would let spmd?
    let probe = vec![0x5a5a_5a5au32; 1024];
    let mut place = (std::process::id(), probe.as_ptr() as u64);
    world.broadcast(&mut place, 1)?;
    let (pid, address) = place;
    if me == 0 {
        let mut copy = vec![0u32; probe.len()];
        let local = libc::iovec {
            iov_base: copy.as_mut_ptr().cast(),
            iov_len: copy.len() * 4,
        };
        let remote = libc::iovec {
            iov_base: address as usize as *mut libc::c_void,
            iov_len: copy.len() * 4,
        };
        // SAFETY: the local iovec is `copy`; the kernel checks the remote one.
        let got = unsafe { libc::process_vm_readv(pid as i32, &local, 1, &remote, 1, 0) };
        let readable = got == (copy.len() * 4) as isize && copy == probe;
        println!(
            "single-copy: rank 1's memory readable: {}",
            if readable { "yes" } else { "no" }
        );
        println!("single-copy: all checks passed");
    }
    world.barrier()
}
