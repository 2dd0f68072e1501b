//! One message larger than 4 GiB: `spmd-check big GIB` sends GIB GiB of
//! `u8` from rank 0 to rank 1 twice, received once into the caller's buffer
//! (`receive_into`) and once into a vector spmd allocates (`receive_vec`),
//! and checks every byte. Rank 1 prints how long each receive took (the
//! receive alone: the caller's buffer is touched beforehand, the check
//! comes after).

use spmd::{Error, World};

/// The repeating pattern: a prime length, so that no power-of-two piece
/// boundary lines up with it.
const PERIOD: usize = 4093;

fn block() -> Vec<u8> {
    (0..PERIOD).map(|i| (i * 7 + 3) as u8).collect()
}

fn fill(buf: &mut [u8]) {
    let block = block();
    for chunk in buf.chunks_mut(PERIOD) {
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
}

fn intact(buf: &[u8]) -> bool {
    let block = block();
    buf.chunks(PERIOD).all(|chunk| chunk == &block[..chunk.len()])
}

pub fn run(world: &World, gib: f64) -> Result<(), Error> {
    let len = (gib * (1u64 << 30) as f64) as usize;
    match world.rank() {
        0 => {
            let mut data = vec![0u8; len];
            fill(&mut data);
            for _ in 0..2 {
                world.send_slice(&data, 1)?;
                let _: u8 = world.receive(1)?;
            }
        }
        1 => {
            let report = |way: &str, seconds: f64| {
                println!(
                    "big: {len} bytes ({gib} GiB) by {way}: {seconds:.2} s, {:.2} GB/s, every byte checked",
                    len as f64 / seconds / 1e9
                )
            };
            let mut buf = vec![1u8; len];
            let start = std::time::Instant::now();
            let status = world.receive_into(&mut buf, 0)?;
            let seconds = start.elapsed().as_secs_f64();
            assert_eq!(status.len(), len as u64, "the length received");
            assert!(intact(&buf), "the bytes received into the buffer");
            report("receive_into", seconds);
            drop(buf);
            world.send(&1u8, 0)?;
            let start = std::time::Instant::now();
            let got: Vec<u8> = world.receive_vec(0)?;
            let seconds = start.elapsed().as_secs_f64();
            assert_eq!(got.len(), len, "the length of the vector");
            assert!(intact(&got), "the bytes of the vector");
            report("receive_vec", seconds);
            world.send(&1u8, 0)?;
        }
        _ => {}
    }
    Ok(())
}
