//! Any bytes as a backup file (`vigil backup verify` / `restore`): the reader gives sections
//! and a checked manifest, or an error naming where the file broke; never a panic, never an
//! allocation beyond the named bounds (src/limits.rs).
//!
//! Random bytes almost never pass a section's SHA-256, so each input is also read a second
//! time with every section's checksum recomputed ("resealed"): that reaches the decoders
//! behind the checksums (header and CRL JSON, records) and the manifest's cross-checks.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vigil::backup::format::{Reader, Section, frame};

/// Reads to the end; a clean end must come with a manifest whose counts match what was read.
fn read(data: &[u8]) {
    let Ok(mut r) = Reader::new(data) else { return };
    let mut records = 0u64;
    loop {
        match r.next_section() {
            Ok(Some(Section::Records(s))) => records += s.records.len() as u64,
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => return,
        }
    }
    let m = r.manifest().expect("a clean end has a manifest");
    let counted: u64 = m
        .counts
        .values()
        .flat_map(|i| i.values())
        .map(|c| c.records)
        .sum();
    assert_eq!(counted, records);
}

/// The same framing with every section's checksum made right.
fn reseal(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = data.get(..10)?.to_vec();
    let mut at = 10;
    while let Some(head) = data.get(at..at + 5) {
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let end = (at + 5).saturating_add(len).min(data.len());
        let payload = &data[at + 5..end];
        let (h, sum) = frame(head[0], payload);
        out.extend_from_slice(&h);
        out.extend_from_slice(payload);
        out.extend_from_slice(&sum);
        at = end.saturating_add(32);
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    read(data);
    if let Some(sealed) = reseal(data) {
        read(&sealed);
    }
});
