//! Any text as a config file: parsing and validation give a config or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vigil::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = Config::from_toml(text) {
            let _ = cfg.validate();
        }
    }
});
