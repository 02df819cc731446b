//! Memory per certificate and checkpoint load time with 10 million certificates.
//!
//! `cargo bench --bench view_memory` (set `VIGIL_BENCH_CERTS` for another count). Prints the
//! resident memory the view adds per certificate, the checkpoint size, and the time to write
//! and to load it. Not a criterion bench: each number is one large measurement, and RSS must be
//! read around it.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Instant;

use vigil::feed::checkpoint;
use vigil::status::{CertRecord, EventKind, IssuerId, RevocationReason, Serial, StatusView};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("rss");
    pages * 4096
}

/// CPU time (user + system) this process has used, from `/proc/self/stat` (clock ticks of
/// 10 ms).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / 100.0
}

fn main() {
    let n: u64 = std::env::var("VIGIL_BENCH_CERTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let issuer = IssuerId([9; 32]);
    let issued = CertRecord::from_event(&EventKind::Issued {
        not_after: 1_900_000_000,
    });
    let revoked = issued.join(CertRecord::from_event(&EventKind::Revoked {
        time: 1_800_000_000,
        reason: RevocationReason::Superseded,
    }));

    let before = rss_bytes();
    let started = Instant::now();
    let cpu = cpu_secs();
    let view = StatusView::new();
    {
        let table = view.table(issuer);
        let mut batch = Vec::with_capacity(65_536);
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..n {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // 16-octet serials (CA/B BR: at least 64 bits of CSPRNG output).
            let mut octets = [0u8; 16];
            octets[..8].copy_from_slice(&state.to_be_bytes());
            octets[8..].copy_from_slice(&i.to_be_bytes());
            octets[0] = (octets[0] & 0x7F) | 0x01;
            let serial = Serial::from_der_content(&octets).expect("serial");
            batch.push((serial, if i % 20 == 0 { revoked } else { issued }));
            if batch.len() == batch.capacity() {
                table.merge_many(&batch);
                batch.clear();
            }
        }
        table.merge_many(&batch);
    }
    let built = rss_bytes();
    println!(
        "view: {} certificates built in {:.2} s ({:.2} s CPU); RSS +{:.1} MiB = {:.1} bytes per certificate",
        view.len(),
        started.elapsed().as_secs_f64(),
        cpu_secs() - cpu,
        (built - before) as f64 / 1048576.0,
        (built - before) as f64 / n as f64
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("checkpoint.vcp");
    let started = Instant::now();
    let cpu = cpu_secs();
    let written = checkpoint::write(&path, &view, &HashMap::new(), 1).expect("write");
    let size = std::fs::metadata(&path).expect("size").len();
    println!(
        "checkpoint: {written} certificates, {:.1} MiB, written in {:.2} s ({:.2} s CPU)",
        size as f64 / 1048576.0,
        started.elapsed().as_secs_f64(),
        cpu_secs() - cpu
    );
    drop(view);

    let before = rss_bytes();
    let started = Instant::now();
    let cpu = cpu_secs();
    let loaded = checkpoint::load(&path).expect("load").expect("present");
    let elapsed = started.elapsed();
    let cpu = cpu_secs() - cpu;
    let after = rss_bytes();
    println!(
        "checkpoint load: {} certificates in {:.2} s ({:.2} s CPU); RSS +{:.1} MiB = {:.1} bytes per certificate",
        loaded.certificates,
        elapsed.as_secs_f64(),
        cpu,
        after.saturating_sub(before) as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / n as f64
    );
}
