//! The smallest job: initialize, one barrier, finalize. `spmdrun -n 4` of it
//! measures launch, start-up and shut-down together.
//!
//! Run: `spmdrun -n 4 target/release/examples/launch`

fn main() -> Result<(), spmd::Error> {
    let world = spmd::init()?;
    world.barrier()?;
    world.finalize()
}
