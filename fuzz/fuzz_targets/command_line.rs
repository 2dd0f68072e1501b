//! spmdrun's command line.

#![no_main]

use libfuzzer_sys::fuzz_target;

/// Splits the bytes into arguments at NUL bytes.
fn command_line(data: &[u8]) {
    let mut argv = vec![std::ffi::OsString::from("spmdrun")];
    for word in data.split(|b| *b == 0).take(40) {
        argv.push(std::ffi::OsString::from(String::from_utf8_lossy(word).into_owned()));
    }
    let _ = spmdrun::cli::parse(argv);
}

fuzz_target!(|data: &[u8]| {
    command_line(data);
});
