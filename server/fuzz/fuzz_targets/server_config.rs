//! The server's HCL config reader on arbitrary text: it refuses bad input with an error
//! naming the key and line, and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = server::config::ServerConfig::parse(text, "fuzz.hcl");
    }
});
