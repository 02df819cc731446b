//! Any bytes as a CRL fetched from a region's Redis: the lint parser (which every replica runs
//! before serving a CRL) gives a parsed CRL or an error, never a panic. CRL request paths need no
//! target of their own: they are exact map lookups, nothing is parsed from them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if vigil::crl::lint::parse(data).is_ok() {
        let _ = vigil::crl::lint::number_of(data);
        let _ = vigil::crl::lint::read_entries(data);
    }
});
