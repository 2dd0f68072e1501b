//! `spmdrun`, the spmd launcher, as a library: its command line and
//! hostfiles are here for the fuzzers; `main.rs` runs a job.

pub mod agent;
pub mod cli;
mod hang;
pub mod hostfile;
mod input_pipe;
pub mod job;
pub mod machine;
mod memory;
mod node_segments;
mod nonblocking;
mod output;
pub mod placement;
mod process_state;
mod rank;
mod shown;
pub mod signals;
pub mod spawn;
