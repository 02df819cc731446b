//! Any bytes as an archive segment (`vigil archive verify`, a point-in-time restore, the
//! archive role reading its last segment): blocks, a torn tail or an error naming the block;
//! never a panic, never an allocation beyond the named bounds (src/limits.rs).
//!
//! Random bytes almost never carry a right chain value, so each input is also read with every
//! block's chain value recomputed ("rechained"): that reaches the decoders behind them
//! (header, mark and seal JSON, events, fill records) and the seal's checks.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vigil::archive::segment::{Block, GENESIS, SegmentError, SegmentReader, chain};

fn read(data: &[u8]) {
    let Ok(mut r) = SegmentReader::new(data, GENESIS) else {
        return;
    };
    loop {
        match r.next_block() {
            Ok(Some(Block::Seal(_))) => assert!(r.sealed()),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(SegmentError::Torn { offset, .. }) => {
                assert!(offset as usize <= data.len());
                return;
            }
            Err(_) => return,
        }
    }
    assert!(r.offset() as usize <= data.len());
}

/// The same framing with every block's chain value made right.
fn rechain(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = data.get(..10)?.to_vec();
    let mut at = 10;
    let mut prev = GENESIS;
    while let Some(head) = data.get(at..at + 5) {
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let end = (at + 5).saturating_add(len);
        let Some(payload) = data.get(at + 5..end) else {
            out.extend_from_slice(&data[at..]);
            return Some(out);
        };
        let (h, next) = chain(&prev, head[0], payload);
        out.extend_from_slice(&h);
        out.extend_from_slice(payload);
        out.extend_from_slice(&next);
        prev = next;
        at = end + 32;
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    read(data);
    if let Some(again) = rechain(data) {
        read(&again);
    }
});
