//! A deadlock on purpose: every rank receives from its right-hand
//! neighbour before it sends to it, so nobody ever sends. spmdrun sees
//! that every rank is blocked and nothing is in flight, names the cycle of
//! waits, and ends the job (status 125) instead of hanging.
//!
//! Run: `spmdrun -n 2 --hang-report 2 target/release/examples/deadlock`

fn main() -> Result<(), spmd::Error> {
    let world = spmd::init()?;
    let (me, n) = (world.rank(), world.size());
    let right = (me + 1) % n;
    println!("rank {me} waits for rank {right} before it sends to it");
    let greeting: String = world.receive_with_tag(right, 7)?;
    world.send_with_tag(&format!("hello from {me}"), right, 7)?;
    println!("rank {me} got {greeting:?}");
    world.finalize()
}
