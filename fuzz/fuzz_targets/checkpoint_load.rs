//! Any bytes as a checkpoint file: loading gives a view or an error (the replica then
//! bootstraps from the feed), never a panic and never an allocation beyond the named bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("checkpoint.vcp");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(Some(loaded)) = vigil::feed::checkpoint::load(&path) {
        assert_eq!(loaded.view.len(), loaded.certificates);
    }
});
