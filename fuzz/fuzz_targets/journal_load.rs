//! Any bytes as a journal file: readers never panic; a writer either refuses (corruption) or
//! leaves a file whose every record reads back, without losing the records read before.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vigil::journal::{JournalReader, JournalWriter};

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("journal.vj");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let before = JournalReader::new(&path).read_new();
    if let Ok(mut w) = JournalWriter::open(&path) {
        let _ = w.append(&[]);
        let after = JournalReader::new(&path)
            .read_new()
            .expect("a journal the writer accepted reads back");
        assert!(after.corrupt_at.is_none() && !after.torn_tail);
        if let Ok(b) = before {
            assert_eq!(b.events, after.events, "the writer kept every good record");
        }
    }
});
