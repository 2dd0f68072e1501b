//! How much CPU ranks use while they wait: rank 0 sleeps for a while (5 s by
//! default) while every other rank is blocked in a receive, then releases
//! them; rank 0 prints the CPU time the waiting ranks used, in all and
//! by rank.
//!
//! Run: `spmdrun -n 4 target/release/examples/idle_cpu [seconds]`

mod common;

use spmd::op;

fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

fn main() -> Result<(), spmd::Error> {
    let world = spmd::init()?;
    let seconds: f64 = common::arg(&world, 1, "seconds", 5.0);
    world.barrier()?;
    let before = cpu_seconds();
    if world.rank() == 0 {
        std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
        for r in 1..world.size() {
            world.send(&(), r)?;
        }
    } else {
        world.receive::<()>(0)?;
    }
    let used = if world.rank() == 0 { 0.0 } else { cpu_seconds() - before };
    if let Some(total) = world.reduce(&used, &op::Sum, 0)? {
        println!(
            "{} ranks blocked in a receive for {seconds} s used {total:.4} CPU-seconds in all",
            world.size() - 1
        );
    }
    // Each rank's own, with its node: a rank on rank 0's node waits on
    // shared memory, one on another node on a socket.
    if let Some(each) = world.gather(&(used, world.node()), 0)? {
        for (rank, (used, node)) in each.iter().enumerate().skip(1) {
            println!("  rank {rank} (node {node}): {used:.4} CPU-seconds");
        }
    }
    world.finalize()
}
