//! spmd: an MPI-style SPMD message-passing runtime.
//!
//! One program runs as N processes, the *ranks*. Each knows its rank and the
//! world size, and the ranks exchange typed messages: any serde value, or
//! slices of plain numbers as raw bytes. Start a job with the `spmdrun`
//! launcher; a program started on its own is a job of one rank.
//!
//! The classic ring: rank 0 starts a message, every rank appends its name
//! and passes it on, and it comes back to rank 0.
//!
//! ```no_run
//! fn main() -> Result<(), spmd::Error> {
//!     let world = spmd::init()?;
//!     let (rank, size) = (world.rank(), world.size());
//!     println!("I am rank {rank} of {size} on node {}", world.processor_name());
//!     if rank == 0 {
//!         world.send(&"P0".to_string(), 1 % size)?;
//!         let msg: String = world.receive(size - 1)?;
//!         println!("Processor 0 received message {msg:?} from rank {}", size - 1);
//!     } else {
//!         let mut msg: String = world.receive(rank - 1)?;
//!         msg.push_str(&format!("P{rank}"));
//!         world.send(&msg, (rank + 1) % size)?;
//!     }
//!     world.finalize()
//! }
//! ```
//!
//! Run it with `spmdrun -n 4 target/release/examples/ring`.
//!
//! # Naming
//!
//! Blocking calls have plain names (`send`, `receive`, `allreduce`);
//! `_with_tag` adds a tag, `_matching` takes a [`Match`] for any source or
//! any tag and returns a [`Status`], `_timeout` gives up after a duration,
//! `try_` never waits, `_slice`/`_into`/`_vec` move plain numbers without
//! serialization (`_into` fills the caller's buffer), and `immediate_`
//! calls return a [`Request`] to `wait` on or `test`. See [`World`] and
//! [`Communicator`].
//!
//! # Errors
//!
//! Every fallible call returns [`Result<_, Error>`](Error). A rank that
//! panics, exits or is killed ends the whole job: spmdrun stops the other
//! ranks and names the one that failed.

#![deny(missing_docs)]

#[doc(hidden)]
pub mod auth;
mod bootstrap;
mod collective;
mod communicator;
mod completion;
mod control;
mod element;
mod envelope;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod matching;
mod message;
#[cfg(feature = "mpi")]
mod mpi_backend;
pub mod op;
mod point_to_point;
mod pool;
mod progress;
mod request;
mod scope;
mod selector;
mod short_copy;
mod status;
mod transport;
#[doc(hidden)]
pub mod wire;
mod world;

/// Names a collective's signature as a status page carries it
/// ("broadcast (root 3)"), for spmdrun's hang reports.
#[doc(hidden)]
pub fn describe_collective(sig: u16) -> String {
    collective::call::describe(sig)
}

/// The shared memory the ranks of a node of `local` ranks need in all, in
/// bytes: what spmdrun checks is free before it starts them.
#[doc(hidden)]
pub fn shared_memory_per_node(local: usize) -> u64 {
    transport::node_shared_bytes(local, collective::node_region_len(local))
}

/// The `bytemuck` crate, re-exported so that a program can derive `Pod`
/// for its own plain structs and send slices of them raw, without a
/// dependency of its own (the derive needs to be told where the crate is).
///
/// ```
/// use spmd::bytemuck::{Pod, Zeroable};
///
/// #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
/// #[bytemuck(crate = "spmd::bytemuck")]
/// #[repr(C)]
/// struct Particle {
///     x: f64,
///     y: f64,
/// }
///
/// let world = spmd::init()?;
/// let me = world.rank();
/// world.send_slice(&[Particle { x: 1.0, y: 2.0 }], me)?;
/// let back: Vec<Particle> = world.receive_vec(me)?;
/// assert_eq!(back, [Particle { x: 1.0, y: 2.0 }]);
/// # Ok::<(), spmd::Error>(())
/// ```
pub use bytemuck;
pub use collective::CollectiveRequest;
pub use communicator::{Backend, Communicator, KEEP_ORDER};
pub use completion::{Pending, test_all, test_any, wait_any, wait_any_timeout, wait_some, wait_some_timeout};
pub use error::{Error, Result};
pub use request::{ReceiveRequest, Request, SendRequest, wait_all, wait_each};
pub use scope::{LentReceive, LentSend, Scope};
pub use selector::{MAX_TAG, Match, Status};
pub use world::{World, init, wtime};

/// PyPar's `balance`: the range of items `0..n` that rank `rank` of `size`
/// handles, splitting `n` items into contiguous blocks whose lengths differ
/// by at most one (the first `n % size` ranks get one more).
///
/// ```
/// assert_eq!(spmd::balance(10, 4, 0), 0..3);
/// assert_eq!(spmd::balance(10, 4, 1), 3..6);
/// assert_eq!(spmd::balance(10, 4, 2), 6..8);
/// assert_eq!(spmd::balance(10, 4, 3), 8..10);
/// ```
///
/// # Panics
///
/// If `size` is 0 or `rank >= size`.
pub fn balance(n: usize, size: usize, rank: usize) -> std::ops::Range<usize> {
    assert!(size > 0 && rank < size, "balance: rank {rank} is not below size {size}");
    let (base, extra) = (n / size, n % size);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    start..start + len
}

#[cfg(test)]
mod tests {
    use super::balance;

    #[test]
    fn the_handle_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<super::World>();
        send::<super::Communicator>();
    }

    #[test]
    fn balance_covers_everything_once_and_evenly() {
        for n in 0..50 {
            for size in 1..9 {
                let parts: Vec<_> = (0..size).map(|r| balance(n, size, r)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[size - 1].end, n);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let lens: Vec<_> = parts.iter().map(|p| p.len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
            }
        }
    }
}
