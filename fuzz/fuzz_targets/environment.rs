//! The environment a rank starts with.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    spmd::fuzzing::environment(data);
});
