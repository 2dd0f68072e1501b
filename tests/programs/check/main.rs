//! The rank program of the integration tests: `spmd-check MODE [ARGS]`
//! runs one group of checks, panicking (which fails the job) on any
//! mismatch. Rank 0 prints `MODE: all checks passed` at the end.

mod big;
mod collectives;
mod failures;
mod full_queue;
mod hangs;
mod numbers;
mod output;
mod p2p;
mod rng;
mod scoped;
mod single_copy;
mod sizes;
mod soak;
mod workload;

fn main() -> Result<(), spmd::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    let rest = &args[args.len().min(1)..];
    // Failure modes start their own world; so does `alone`.
    if let Some(result) = failures::run(mode, rest) {
        return result;
    }
    if mode == "chatter" {
        return output::chatter();
    }
    if mode == "nested" {
        // Started by a rank, not by spmdrun: init must refuse.
        return spmd::init().map(|_| ());
    }
    if mode == "single-copy" && rest.first().is_some_and(|a| a == "undumpable") {
        single_copy::make_undumpable();
    }
    let world = spmd::init()?;
    match mode {
        "p2p" => p2p::run(&world)?,
        "sizes" => sizes::run(&world)?,
        "scoped" => scoped::run(&world)?,
        "single-copy" => single_copy::run(&world)?,
        "soak" => {
            let seed = rest.first().and_then(|s| s.parse().ok()).unwrap_or(1);
            let messages = rest.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
            let slow = rest.get(2).and_then(|s| s.parse().ok());
            soak::run_with(&world, seed, messages, slow)?
        }
        "workload" => workload::run(&world, rest.first().map(String::as_str).unwrap_or("collectives"))?,
        "big" => big::run(&world, rest.first().and_then(|s| s.parse().ok()).unwrap_or(5.0))?,
        "flood" => soak::flood(&world, rest.first().and_then(|s| s.parse().ok()).unwrap_or(256))?,
        "hang" => {
            let arg = |i: usize| rest.get(i).map(String::as_str).unwrap_or("");
            return hangs::run(&world, arg(0), arg(1));
        }
        "full-queue" => return full_queue::run(&world, rest.first().map(String::as_str).unwrap_or("")),
        "collectives" => {
            let seed = rest.first().and_then(|s| s.parse().ok()).unwrap_or(1);
            let cases = rest.get(1).and_then(|s| s.parse().ok()).unwrap_or(40);
            collectives::run(&world, seed, cases)?
        }
        other => panic!("unknown mode {other:?}"),
    }
    if world.rank() == 0 {
        println!("{mode}: all checks passed on {} ranks", world.size());
    }
    world.finalize()
}
