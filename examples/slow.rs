//! Not a deadlock: rank 0 computes for a long time outside spmd while the
//! others wait for its result. spmdrun's hang report says that the others
//! wait on rank 0 and that rank 0 is computing, and lets the job finish.
//!
//! Run: `spmdrun -n 3 --hang-report 2 target/release/examples/slow [seconds]`

use std::time::{Duration, Instant};

mod common;

fn main() -> Result<(), spmd::Error> {
    let world = spmd::init()?;
    let seconds: f64 = common::arg(&world, 1, "seconds", 5.0);
    let mut result = 0u64;
    if world.rank() == 0 {
        // Busy, not asleep: a real computation.
        let until = Instant::now() + Duration::from_secs_f64(seconds);
        while Instant::now() < until {
            result = result.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
    }
    world.broadcast(&mut result, 0)?;
    println!("rank {} has the result after {seconds} s", world.rank());
    world.finalize()
}
