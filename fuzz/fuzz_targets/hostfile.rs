//! A hostfile, in either format.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = spmdrun::hostfile::parse(&String::from_utf8_lossy(data), "fuzz");
});
