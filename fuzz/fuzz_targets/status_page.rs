//! A rank's status page, as spmdrun reads it.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    spmd::fuzzing::status_page(data);
});
