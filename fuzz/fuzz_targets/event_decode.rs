//! Any bytes as a feed event: an event or an error; a decoded event re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vigil::status::Event;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Event::decode(data) {
        assert_eq!(e.to_bytes(), data);
    }
});
