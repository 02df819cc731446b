//! Any string as a GET path: decoding never panics, and whatever it yields goes through the
//! request decoder safely too.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vigil::ocsp::request::{RequestLimits, decode_get_path, decode_request};

fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data) {
        if let Ok(der) = decode_get_path(path) {
            assert!(der.len() <= path.len());
            let _ = decode_request(&der, &RequestLimits::default());
        }
    }
});
