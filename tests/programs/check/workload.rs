//! Ranks kept busy for ever, for the fault-injection runs: `spmd-check
//! workload collectives` (large and small allreduces, broadcasts,
//! alltoalls, barriers) or `spmd-check workload transfers` (64 MiB
//! messages around the ring, blocking and immediate). Each rank prints
//! `pid RANK PID` first.

use std::io::Write;

use spmd::{Error, Match, Request, World, op};

pub fn run(world: &World, what: &str) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    println!("pid {me} {}", std::process::id());
    let _ = std::io::stdout().flush();
    let (right, left) = ((me + 1) % n, (me + n - 1) % n);
    let big = vec![me as f64; 1 << 17];
    let mut out = vec![0.0f64; 1 << 17];
    let parts = vec![1u8; n * (64 << 10)];
    let mut back = vec![0u8; n * (64 << 10)];
    // Only the transfers need these (64 MiB that a rank's death has to
    // free would be most of the time a collective job takes to end).
    let transfer_len = if what == "transfers" { 64 << 20 } else { 0 };
    let block = vec![me as u8; transfer_len];
    let mut incoming = vec![0u8; transfer_len];
    loop {
        if what == "transfers" {
            let send = world.immediate_send_slice_with_tag(&block, right, 1)?;
            world.receive_into_with_tag(&mut incoming, left, 1)?;
            send.wait()?;
            world.send_slice_with_tag(&block[..16 << 20], right, 2)?;
            let _: Vec<u8> = world.receive_vec_matching(Match::source(left).with_tag(2))?.0;
        } else {
            world.allreduce_into(&big, &mut out, &op::Sum)?;
            let _ = world.allreduce(&(me as u64), &op::Max)?;
            world.broadcast_into(&mut out[..32 << 10], 0)?;
            world.alltoall_into(&parts, &mut back)?;
            world.barrier()?;
        }
    }
}
