//! A peer's fastboxes and ring control words.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    spmd::fuzzing::shared_memory(data);
});
