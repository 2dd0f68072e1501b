//! Handshake frames from a stranger, to both sides.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    spmd::fuzzing::handshake(data);
});
