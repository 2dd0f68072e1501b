//! The node-wide collectives' slots, as peers write them.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = spmd::fuzzing::node_slots(data);
});
