//! The classic PyPar ring: a message travels from rank 0 through every rank
//! and back, each rank appending its name.
//!
//! Run: `spmdrun -n 4 target/release/examples/ring`

fn main() -> Result<(), spmd::Error> {
    let world = spmd::init()?;
    let (rank, size) = (world.rank(), world.size());
    println!("I am rank {rank} of {size} on node {}", world.processor_name());

    if rank == 0 {
        let message = "P0".to_string();
        world.send(&message, 1 % size)?;
        let message: String = world.receive(size - 1)?;
        println!("Processor 0 received message {message:?} from rank {}", size - 1);
    } else {
        let mut message: String = world.receive(rank - 1)?;
        message.push_str(&format!("P{rank}"));
        world.send(&message, (rank + 1) % size)?;
    }
    world.finalize()
}
