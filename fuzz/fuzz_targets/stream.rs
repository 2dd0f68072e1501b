//! A byte stream from a peer, through the framed-stream parser.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    spmd::fuzzing::stream(data);
});
