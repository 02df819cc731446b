//! Any text as a config file: parsing (which checks everything) gives a config or a typed
//! error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vigil::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text);
    }
});
