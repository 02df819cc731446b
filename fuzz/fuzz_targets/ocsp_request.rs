//! Any bytes as a POST body: decoding gives a request or an error, never a panic, and a
//! decoded request respects the limits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vigil::ocsp::request::{RequestLimits, decode_request};

fuzz_target!(|data: &[u8]| {
    let limits = RequestLimits::default();
    if let Ok(req) = decode_request(data, &limits) {
        assert!(!req.certs.is_empty() && req.certs.len() <= limits.max_cert_ids);
        for c in &req.certs {
            assert!(!c.serial.as_der_content().is_empty());
        }
    }
});
