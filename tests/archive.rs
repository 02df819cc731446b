//! The revocation archive against real redis-server processes and the real `vigil` binary:
//! `vigil archive` follows two regions' streams into hash-chained segments, in stream order,
//! without gaps when a stream is trimmed past it; `vigil archive verify` names a damaged
//! segment and a restore refuses it; `vigil backup restore --archive --until` rebuilds the
//! state as of a time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vigil::archive::segment::Block;
use vigil::status::{CertRecord, CertStatus, Event, EventKind, RevocationReason, Serial};

const WAIT: Duration = Duration::from_secs(60);

/// A redis-server on a free port, without persistence. Small stream nodes, so `MAXLEN ~`
/// trims a short stream (it removes whole nodes only).
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start(root: &Path, name: &str) -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = root.join(format!("redis-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--stream-node-max-entries", "10"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let r = Redis { port, child };
        let deadline = Instant::now() + WAIT;
        while r.conn().is_err() {
            assert!(Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn conn(&self) -> redis::RedisResult<redis::Connection> {
        let mut c = redis::Client::open(self.url())?.get_connection()?;
        redis::cmd("PING").query::<String>(&mut c)?;
        Ok(c)
    }

    fn cmd<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        cmd.query(&mut self.conn().unwrap()).unwrap()
    }

    /// The encoded events of the region's stream, in order.
    fn stream_events(&self) -> Vec<Vec<u8>> {
        // Every event of every entry, in order: `e` fields hold one, a batch write's `p`
        // field many.
        type Entry = (String, Vec<(Vec<u8>, Vec<u8>)>);
        let r: Vec<Entry> = self.cmd(redis::cmd("XRANGE").arg("vigil:feed").arg("-").arg("+"));
        r.into_iter()
            .flat_map(|(_, fields)| fields)
            .flat_map(|(k, v)| {
                vigil::feed::field_events(&k, &v)
                    .map(|e| e.expect("well-formed field").to_vec())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The one issuer's snapshot: serial → record.
    fn snapshot(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let issuers: Vec<String> = self.cmd(redis::cmd("SMEMBERS").arg("vigil:issuers"));
        assert_eq!(issuers.len(), 1, "{issuers:?}");
        self.cmd(redis::cmd("HGETALL").arg(format!("vigil:snap:{}", issuers[0])))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `vigil archive`.
struct ArchiveRole {
    child: Child,
    metrics: String,
}

impl ArchiveRole {
    fn start(config: &Path, dir: &Path) -> ArchiveRole {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .args([
                "archive",
                "--segment-bytes",
                "4096",
                "--metrics-addr",
                "127.0.0.1:0",
                "--dir",
            ])
            .arg(dir)
            .env("VIGIL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let metrics = loop {
            let line = lines.next().expect("vigil archive exited").unwrap();
            if let Some(rest) = line.strip_prefix("vigil archive metrics on http://") {
                break rest.split('/').next().unwrap().to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        ArchiveRole { child, metrics }
    }

    fn metrics(&self) -> String {
        let r = get(self.metrics.parse().unwrap(), "/metrics", "");
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).unwrap()
    }
}

impl Drop for ArchiveRole {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two regions, a demo PKI, and a feed trimmed to `maxlen` entries.
struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    a: Redis,
    b: Redis,
    config: PathBuf,
}

fn setup(maxlen: u64) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    let out = Command::new(BIN)
        .arg("check-config")
        .env("VIGIL_DATA_DIR", root.join("pki"))
        .env_remove("VIGIL_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success());
    let pki = root.join("pki");
    let a = Redis::start(&root, "a");
    let b = Redis::start(&root, "b");
    let config = root.join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[status]\norigin = \"t\"\n[feed]\nquorum = 2\nmaxlen = {maxlen}\n\
             [[region]]\nname = \"a\"\nredis = {:?}\n[[region]]\nname = \"b\"\nredis = {:?}\n\
             [[issuer]]\nname = \"demo\"\ncertificate = {:?}\n\
             responder_certificate = {:?}\nresponder_key = {:?}\n",
            root.join("replica"),
            a.url(),
            b.url(),
            pki.join("ca.pem"),
            pki.join("responder.pem"),
            pki.join("responder.key"),
        ),
    )
    .unwrap();
    Setup {
        _tmp: tmp,
        root,
        a,
        b,
        config,
    }
}

impl Setup {
    fn import(&self, from: u32, to: u32) {
        let mut index = String::new();
        for i in from..=to {
            index.push_str(&format!("V\t300101000000Z\t\t{i:08X}\tunknown\t/CN=c{i}\n"));
        }
        let path = self.root.join("index.txt");
        std::fs::write(&path, index).unwrap();
        ok(&vigil_with(
            &self.config,
            &[
                "import",
                "--issuer",
                "demo",
                "--openssl-index",
                path.to_str().unwrap(),
            ],
        ));
    }

    fn revoke(&self, serial: u32) {
        ok(&vigil_with(
            &self.config,
            &[
                "revoke",
                "--issuer",
                "demo",
                "--serial",
                &format!("{serial:08X}"),
                "--reason",
                "keyCompromise",
            ],
        ));
    }
}

/// The archive's events of one region, in archive order, and its completed fills' records.
fn archived(dir: &Path, region: &str) -> (Vec<Vec<u8>>, Vec<(Serial, CertRecord)>) {
    let (mut events, mut fills) = (Vec::new(), Vec::new());
    vigil::archive::walk(dir, |_, b| {
        match b {
            Block::Events(e) if e.region == region => {
                events.extend(e.events.iter().map(|(_, v)| v.clone()))
            }
            Block::FillRecords(f) if f.region == region => fills.extend(f.records.iter().cloned()),
            _ => {}
        }
        Ok(())
    })
    .unwrap();
    (events, fills)
}

/// Waits (bounded) until the archive holds at least `n` events of `region`.
fn wait_for_events(dir: &Path, region: &str, n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = if vigil::archive::list_segments(dir).is_ok_and(|s| !s.is_empty()) {
            archived(dir, region).0.len()
        } else {
            0
        };
        if got >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the archive holds {got} of {n} events of region {region} after {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of an unlabelled gauge in a Prometheus text exposition.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn revoked_serials(records: impl IntoIterator<Item = (Serial, CertRecord)>) -> BTreeSet<String> {
    records
        .into_iter()
        .filter(|(_, r)| matches!(r.status(), CertStatus::Revoked(_)))
        .map(|(s, _)| vigil::status::hex(s.as_der_content()))
        .collect()
}

#[test]
fn archive_follows_both_streams_in_order_fills_a_trimmed_gap_and_names_a_damaged_segment() {
    let s = setup(1_000_000);
    let dir = s.root.join("archive");
    let role = ArchiveRole::start(&s.config, &dir);
    s.import(1, 300);
    for serial in [7, 3, 250, 1, 99] {
        s.revoke(serial);
    }
    // Every event of each region's stream, in the stream's order: nothing lost, nothing
    // reordered, nothing added.
    for r in [&s.a, &s.b] {
        let stream = r.stream_events();
        assert_eq!(stream.len(), 305);
        let name = if std::ptr::eq(r, &s.a) { "a" } else { "b" };
        wait_for_events(&dir, name, stream.len());
        let (events, fills) = archived(&dir, name);
        assert_eq!(events, stream, "region {name}");
        assert!(fills.is_empty());
    }
    let order: Vec<String> = archived(&dir, "a")
        .0
        .iter()
        .filter_map(|e| match Event::decode(e).unwrap().kind {
            EventKind::Revoked { reason, .. } => {
                assert_eq!(reason, RevocationReason::KeyCompromise);
                Some(Event::decode(e).unwrap().serial.to_string())
            }
            _ => None,
        })
        .collect();
    assert_eq!(order.len(), 5, "{order:?}");
    // The role reports its lag per region.
    let m = role.metrics();
    assert!(m.contains("vigil_archive_lag_seconds{region=\"a\"}"), "{m}");
    assert!(m.contains("vigil_archive_lag_seconds{region=\"b\"}"), "{m}");
    let text = ok(&vigil_cmd(
        &s.root,
        &["archive", "verify", dir.to_str().unwrap()],
    ));
    assert!(
        text.contains("ok: ") && text.contains(" 610 events"),
        "{text}"
    );

    // The role stops; meanwhile the streams are trimmed far past where it stood.
    drop(role);
    for r in [&s.a, &s.b] {
        let _: () = r.cmd(redis::cmd("XTRIM").arg("vigil:feed").arg("MAXLEN").arg(0));
    }
    s.import(301, 400);
    for serial in [320, 5] {
        s.revoke(serial);
    }
    for r in [&s.a, &s.b] {
        let _: () = r.cmd(redis::cmd("XTRIM").arg("vigil:feed").arg("MAXLEN").arg(1));
    }
    let role = ArchiveRole::start(&s.config, &dir);
    // The region's snapshot goes into the archive as a fill first; a revocation written
    // before the role took its fill's stream position would be in the fill and not after it,
    // so 398 is revoked once both fills are in.
    for name in ["a", "b"] {
        let deadline = Instant::now() + WAIT;
        while archived(&dir, name).1.is_empty() {
            assert!(Instant::now() < deadline, "no fill for {name}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    s.revoke(398);
    // After it: the fill, and the events after it.
    for (name, r) in [("a", &s.a), ("b", &s.b)] {
        let deadline = Instant::now() + WAIT;
        loop {
            let (events, fills) = archived(&dir, name);
            let last_is_398 = events
                .last()
                .is_some_and(|e| Event::decode(e).unwrap().serial.to_string() == "018E");
            if !fills.is_empty() && last_is_398 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no fill and new event for {name}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The archive alone (no backup) gives the region's whole state: no gap.
        let view = vigil::status::StatusView::new();
        let now = vigil::clock::Clock::system().now_ms() + 1;
        let rep = vigil::archive::replay::replay_until(&dir, now, &view).unwrap();
        assert!(rep.fill_records >= 400, "{}", rep.fill_records);
        let snap = r.snapshot();
        let mut mine = BTreeMap::new();
        for (_, t) in view.issuers() {
            t.for_each(|s, rec| {
                mine.insert(s.as_der_content().to_vec(), rec.to_bytes().to_vec());
            });
        }
        assert_eq!(mine.len(), 400);
        assert_eq!(mine, snap, "region {name}");
    }
    let text = ok(&vigil_cmd(
        &s.root,
        &["archive", "verify", dir.to_str().unwrap()],
    ));
    assert!(
        text.contains("gap filled: region a") && text.contains("gap filled: region b"),
        "{text}"
    );
    assert!(
        text.contains("trimmed past the archived position"),
        "{text}"
    );
    drop(role);

    // A backup to restore from, then a flipped byte in a sealed segment.
    let backup = s.root.join("b.vbk");
    ok(&vigil_with(
        &s.config,
        &["backup", "create", "--out", backup.to_str().unwrap()],
    ));
    let segments = vigil::archive::list_segments(&dir).unwrap();
    assert!(segments.len() >= 4, "{}", segments.len());
    let victim = &segments[2].1;
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x04;
    std::fs::write(victim, bytes).unwrap();
    let e = refused(&vigil_cmd(
        &s.root,
        &["archive", "verify", dir.to_str().unwrap()],
    ));
    assert!(
        e.contains("segment seg-0000000003.vga:") && e.contains("mismatch"),
        "{e}"
    );
    let until = vigil::clock::rfc3339_ms(vigil::clock::Clock::system().now_ms() + 1000);
    let before: u64 = s.a.cmd(&mut redis::cmd("DBSIZE"));
    let e = refused(&vigil_with(
        &s.config,
        &[
            "backup",
            "restore",
            backup.to_str().unwrap(),
            "--archive",
            dir.to_str().unwrap(),
            "--until",
            &until,
        ],
    ));
    assert!(e.contains("segment seg-0000000003.vga:"), "{e}");
    let after: u64 = s.a.cmd(&mut redis::cmd("DBSIZE"));
    assert_eq!(before, after, "a refused restore wrote nothing");
}

#[test]
fn point_in_time_restore_holds_exactly_the_revocations_before_its_time() {
    let s = setup(1_000_000);
    let dir = s.root.join("archive");
    let role = ArchiveRole::start(&s.config, &dir);
    s.import(1, 100);
    for serial in 1..=3 {
        s.revoke(serial);
    }
    let backup = s.root.join("b.vbk");
    let prom = s.root.join("backup.prom");
    let before_ms = vigil::clock::Clock::system().now_ms();
    ok(&vigil_with(
        &s.config,
        &[
            "backup",
            "create",
            "--out",
            backup.to_str().unwrap(),
            "--metrics-file",
            prom.to_str().unwrap(),
        ],
    ));
    // Backup health: the textfile for node_exporter, and the archive role's /metrics (read
    // back from the regions, where the backup recorded itself).
    let text = std::fs::read_to_string(&prom).unwrap();
    let at =
        gauge(&text, "vigil_backup_last_success_timestamp_seconds").expect("gauge in the file");
    assert!(at * 1000.0 >= before_ms as f64 - 1000.0, "{text}");
    assert!(
        text.contains("# TYPE vigil_backup_last_success_timestamp_seconds gauge"),
        "{text}"
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let m = role.metrics();
        if gauge(&m, "vigil_backup_last_success_timestamp_seconds")
            .is_some_and(|v| (v - at).abs() < 1.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the archive role does not report the backup: {m}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for serial in 4..=6 {
        s.revoke(serial);
    }
    std::thread::sleep(Duration::from_millis(20));
    let time = vigil::clock::rfc3339_ms(vigil::clock::Clock::system().now_ms());
    std::thread::sleep(Duration::from_millis(20));
    for serial in 7..=9 {
        s.revoke(serial);
    }
    wait_for_events(&dir, "a", 109);
    wait_for_events(&dir, "b", 109);
    drop(role);
    let hexes = |r: std::ops::RangeInclusive<u32>| -> BTreeSet<String> {
        r.map(|i| {
            vigil::status::hex(
                Serial::from_magnitude(&i.to_be_bytes())
                    .unwrap()
                    .as_der_content(),
            )
        })
        .collect()
    };
    let expected = hexes(1..=6);

    // As a file, to show an auditor.
    let pit = s.root.join("pit.vbk");
    let text = ok(&vigil_with(
        &s.config,
        &[
            "backup",
            "restore",
            backup.to_str().unwrap(),
            "--archive",
            dir.to_str().unwrap(),
            "--until",
            &time,
            "--out",
            pit.to_str().unwrap(),
        ],
    ));
    assert!(text.contains("100 certificates, 6 revoked"), "{text}");
    let mut r = vigil::backup::format::Reader::new(std::fs::File::open(&pit).unwrap()).unwrap();
    let mut records = Vec::new();
    while let Some(sec) = r.next_section().unwrap() {
        if let vigil::backup::format::Section::Records(rs) = sec {
            records.extend(rs.records);
        }
    }
    assert_eq!(records.len(), 100);
    assert_eq!(revoked_serials(records), expected);

    // Into both regions, after they lost everything.
    for r in [&s.a, &s.b] {
        let _: () = r.cmd(&mut redis::cmd("FLUSHALL"));
    }
    ok(&vigil_with(
        &s.config,
        &[
            "backup",
            "restore",
            backup.to_str().unwrap(),
            "--archive",
            dir.to_str().unwrap(),
            "--until",
            &time,
        ],
    ));
    for r in [&s.a, &s.b] {
        let snap = r.snapshot();
        assert_eq!(snap.len(), 100);
        let records = snap.into_iter().map(|(s, r)| {
            (
                Serial::from_der_content(&s).unwrap(),
                CertRecord::from_bytes(&r).unwrap(),
            )
        });
        assert_eq!(revoked_serials(records), expected);
    }

    // A time before the backup finished is refused: the archive cannot take revocations away.
    let early = vigil::clock::rfc3339_ms(vigil::clock::Clock::system().now_ms() - 3_600_000);
    let e = refused(&vigil_with(
        &s.config,
        &[
            "backup",
            "restore",
            backup.to_str().unwrap(),
            "--archive",
            dir.to_str().unwrap(),
            "--until",
            &early,
            "--out",
            pit.to_str().unwrap(),
        ],
    ));
    assert!(e.contains("older than its time"), "{e}");
}

#[test]
fn drill_restore_passes_on_a_good_backup_and_fails_naming_what_a_live_region_lost() {
    let s = setup(1_000_000);
    let scratch = Redis::start(&s.root, "scratch");
    s.import(1, 50);
    for serial in 1..=3 {
        s.revoke(serial);
    }
    let backup = s.root.join("b.vbk");
    ok(&vigil_with(
        &s.config,
        &["backup", "create", "--out", backup.to_str().unwrap()],
    ));
    // Every replica of the feed reports the last backup the regions record.
    let replica = Vigil::start(&s.root, Some(&s.config), &[]);
    let deadline = Instant::now() + WAIT;
    loop {
        let m = String::from_utf8(get(replica.addr, "/metrics", "").body).unwrap();
        if gauge(&m, "vigil_backup_last_success_timestamp_seconds").is_some_and(|v| v > 0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica does not report the backup: {m}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(replica);
    // Live moves on after the backup: one more revocation, five new certificates.
    s.revoke(4);
    s.import(51, 55);
    let url = scratch.url();
    let drill = |extra: &[&str]| {
        let mut args = vec![
            "drill",
            "restore",
            "--backup",
            backup.to_str().unwrap(),
            "--scratch-redis",
            &url,
        ];
        args.extend_from_slice(extra);
        vigil_with(&s.config, &args)
    };
    let json = s.root.join("drill.json");
    let text = ok(&drill(&["--json", json.to_str().unwrap()]));
    assert!(text.contains("PASS"), "{text}");
    assert!(
        text.contains("backup 50 certificates (3 revoked, 0 held"),
        "{text}"
    );
    assert!(text.contains("restored the same"), "{text}");
    for region in ["a", "b"] {
        assert!(
            text.contains(&format!("live region {region}: issuer ")),
            "{text}"
        );
    }
    assert!(
        text.contains("55 certificates; since the backup 1 changed and 5 new; 0 missing, 0 behind"),
        "{text}"
    );
    assert!(text.contains("timings: verify "), "{text}");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(doc["passed"], true);
    let restored: u64 = scratch.cmd(&mut redis::cmd("DBSIZE"));
    assert!(restored > 0);

    // Run again: the scratch holds the last drill's data, which is refused unless flushed.
    let out = drill(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--flush-scratch"));
    assert!(ok(&drill(&["--flush-scratch"])).contains("PASS"));

    // Region a loses a backed-up certificate and a revocation goes back to good (a rolled-back
    // or damaged Redis): the drill fails and names both.
    let issuers: Vec<String> = s.a.cmd(redis::cmd("SMEMBERS").arg("vigil:issuers"));
    let snap = format!("vigil:snap:{}", issuers[0]);
    let _: () =
        s.a.cmd(redis::cmd("HDEL").arg(&snap).arg([0x0Au8].as_slice()));
    let good =
        s.a.cmd::<Vec<u8>>(redis::cmd("HGET").arg(&snap).arg([0x09u8].as_slice()));
    let _: () = s.a.cmd(
        redis::cmd("HSET")
            .arg(&snap)
            .arg([0x02u8].as_slice())
            .arg(good),
    );
    let out = drill(&["--flush-scratch"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("FAIL"), "{text}");
    assert!(text.contains("1 missing (0A), 1 behind (02)"), "{text}");
    assert!(text.contains("failure: region a: issuer"), "{text}");
    assert!(!text.contains("failure: region b"), "{text}");

    // The scratch may never be a live region.
    let out = vigil_with(
        &s.config,
        &[
            "drill",
            "restore",
            "--backup",
            backup.to_str().unwrap(),
            "--scratch-redis",
            &s.a.url(),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is region a"));
}

#[test]
fn an_encrypted_backup_round_trips_with_its_identity_and_is_refused_with_another() {
    use secrecy::ExposeSecret;
    let s = setup(1_000_000);
    s.import(1, 40);
    for serial in [5, 6] {
        s.revoke(serial);
    }
    let mine = age::x25519::Identity::generate();
    let other = age::x25519::Identity::generate();
    let id = s.root.join("backup.key");
    let wrong = s.root.join("other.key");
    std::fs::write(&id, format!("{}\n", mine.to_string().expose_secret())).unwrap();
    std::fs::write(&wrong, format!("{}\n", other.to_string().expose_secret())).unwrap();
    let backup = s.root.join("b.vbk.age");
    let b = backup.to_str().unwrap();
    ok(&vigil_with(
        &s.config,
        &[
            "backup",
            "create",
            "--out",
            b,
            "--recipient",
            &mine.to_public().to_string(),
        ],
    ));
    let bytes = std::fs::read(&backup).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1"));
    assert!(
        !bytes.windows(12).any(|w| w == b"vigil-backup"),
        "plaintext in the file"
    );
    // Without an identity, or with another one: refused, saying why.
    let e = refused(&vigil_cmd(&s.root, &["backup", "verify", b]));
    assert!(e.contains("--identity"), "{e}");
    let e = refused(&vigil_cmd(
        &s.root,
        &["backup", "verify", b, "--identity", wrong.to_str().unwrap()],
    ));
    assert!(e.contains("encrypted to another recipient"), "{e}");
    let text = ok(&vigil_cmd(
        &s.root,
        &["backup", "verify", b, "--identity", id.to_str().unwrap()],
    ));
    assert!(text.contains("40 certificates, 2 revoked"), "{text}");
    // A flipped byte inside the ciphertext is refused too.
    let mut damaged = bytes.clone();
    let at = damaged.len() / 2;
    damaged[at] ^= 1;
    let d = s.root.join("damaged.age");
    std::fs::write(&d, damaged).unwrap();
    refused(&vigil_cmd(
        &s.root,
        &[
            "backup",
            "verify",
            d.to_str().unwrap(),
            "--identity",
            id.to_str().unwrap(),
        ],
    ));
    // Restore: the wrong identity writes nothing; the right one brings every record back.
    for r in [&s.a, &s.b] {
        let _: () = r.cmd(&mut redis::cmd("FLUSHALL"));
    }
    let e = refused(&vigil_with(
        &s.config,
        &[
            "backup",
            "restore",
            b,
            "--identity",
            wrong.to_str().unwrap(),
        ],
    ));
    assert!(e.contains("encrypted to another recipient"), "{e}");
    let n: u64 = s.a.cmd(&mut redis::cmd("DBSIZE"));
    assert_eq!(n, 0);
    ok(&vigil_with(
        &s.config,
        &["backup", "restore", b, "--identity", id.to_str().unwrap()],
    ));
    for r in [&s.a, &s.b] {
        let snap = r.snapshot();
        assert_eq!(snap.len(), 40);
        let records = snap.into_iter().map(|(s, r)| {
            (
                Serial::from_der_content(&s).unwrap(),
                CertRecord::from_bytes(&r).unwrap(),
            )
        });
        assert_eq!(revoked_serials(records).len(), 2);
    }
}
