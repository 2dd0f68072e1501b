//! Helpers the examples share: their command-line arguments (a value, its
//! default when it is absent, or the whole job ended with a message naming
//! what was wrong), the `BENCH_REPEAT` factor, and the loops of the OSU
//! collective and streaming benchmarks.

use std::str::FromStr;

// Not every example uses every helper.
#[allow(dead_code)]
pub mod collective;
#[allow(dead_code)]
pub mod window;

/// Argument `index` (1-based) parsed as a `T`, `default` when it is absent.
/// Anything else ends the job with status 2 and a message that names the
/// argument.
pub fn arg<T: FromStr>(world: &spmd::Communicator, index: usize, name: &str, default: T) -> T {
    let Some(text) = std::env::args().nth(index) else {
        return default;
    };
    match text.parse() {
        Ok(value) => value,
        Err(_) => {
            let program = std::env::args().next().unwrap_or_default();
            let program = program.rsplit('/').next().unwrap_or("example");
            world.abort_with_message(2, &format!("{program}: {name} must be a number, got {text:?}"))
        }
    }
}

/// The communicator a benchmark runs on, as `BENCH_ON` says: `None` for
/// the world itself (`world`, or unset); a duplicate of the world (`dup`);
/// or every rank of the world in reverse order, a communicator whose ranks
/// are translated on every call (`reversed`).
#[allow(dead_code)]
pub fn bench_on(world: &spmd::World) -> Result<Option<spmd::Communicator>, spmd::Error> {
    match std::env::var("BENCH_ON").as_deref() {
        Err(_) | Ok("world") => Ok(None),
        Ok("dup") => world.dup().map(Some),
        Ok("reversed") => {
            let ranks: Vec<usize> = (0..world.size()).rev().collect();
            world.subset(&ranks)
        }
        Ok(other) => world.abort_with_message(2, &format!("BENCH_ON must be world, dup or reversed, got {other:?}")),
    }
}

/// The OSU-style benchmarks' (warm-up, timed) iterations for one size,
/// times `BENCH_REPEAT` (a whole number, 1 when unset): with more, each
/// figure covers more of the scheduler's time slices, which is what a
/// figure measured beside other work needs (`scripts/bench-vs-mpi --load`;
/// `bench/mpi_bench.c` reads the same variable).
#[allow(dead_code)]
pub fn repeated(world: &spmd::Communicator, (warmup, iters): (usize, usize)) -> (usize, usize) {
    let times = match std::env::var("BENCH_REPEAT") {
        Err(_) => 1,
        Ok(text) => match text.parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => world.abort_with_message(
                2,
                &format!("BENCH_REPEAT must be a whole number of at least 1, got {text:?}"),
            ),
        },
    };
    (warmup * times, iters * times)
}
