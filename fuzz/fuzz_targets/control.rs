//! Control messages, as a rank or the launcher reads them.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    spmd::fuzzing::control(data);
});
