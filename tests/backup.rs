//! Disaster recovery against real files, real `openssl` and the real `vigil` binary:
//! split-custody key backup (`vigil key split` / `combine`), and status backups (`vigil backup
//! create / verify / restore`) of a two-region feed on real redis-server processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(30);
/// A replica's bootstrap of 100 000 certificates from two regions, on a loaded 2-core machine.
const READY_WAIT: Duration = Duration::from_secs(90);

/// A redis-server on a free port, without persistence: its data lives only in memory.
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
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `vigil serve` replica of the feed.
struct Replica {
    child: Child,
    addr: String,
}

impl Replica {
    fn start(config: &Path) -> Replica {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env("VIGIL_LISTEN", "127.0.0.1:0")
            .env("VIGIL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("vigil exited").unwrap();
            if let Some(rest) = line.strip_prefix("vigil listening on http://") {
                break rest.split('/').next().unwrap().to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Replica { child, addr }
    }

    /// Waits (bounded by [`READY_WAIT`]) until `/readyz` answers 200 and every serial of
    /// `serials` gets an answer containing its `expected` text, then returns the answers. A
    /// replica is ready once its bootstrap has loaded the whole view; polling the answers too
    /// keeps the test from depending on when exactly that flag flips.
    fn wait_for_answers(&self, pki: &Path, serials: &[String], expected: &[&str]) -> Vec<String> {
        assert_eq!(serials.len(), expected.len());
        let addr: std::net::SocketAddr = self.addr.parse().unwrap();
        let deadline = Instant::now() + READY_WAIT;
        loop {
            let ready = get(addr, "/readyz", "");
            let last = if ready.status == 200 {
                let answers: Vec<String> = serials.iter().map(|s| self.ocsp(pki, s)).collect();
                let wrong: Vec<String> = answers
                    .iter()
                    .zip(expected)
                    .filter(|(a, e)| !a.contains(**e))
                    .map(|(a, e)| format!("{a} (expected {e:?})"))
                    .collect();
                if wrong.is_empty() {
                    return answers;
                }
                wrong.join("; ")
            } else {
                format!(
                    "/readyz {}: {}",
                    ready.status,
                    String::from_utf8_lossy(&ready.body)
                )
            };
            assert!(
                Instant::now() < deadline,
                "the replica did not answer as expected within {READY_WAIT:?}: {last}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// openssl's verdict for a serial: good / revoked / unknown, with reason and time.
    fn ocsp(&self, pki: &Path, serial: &str) -> String {
        let (_, text) = openssl(
            pki,
            &[
                "ocsp",
                "-issuer",
                "ca.pem",
                "-CAfile",
                "ca.pem",
                "-no_nonce",
                "-serial",
                &format!("0x{serial}"),
                "-url",
                &format!("http://{}/", self.addr),
            ],
        );
        assert!(text.contains("Response verify OK"), "{text}");
        text.lines()
            .filter(|l| {
                l.starts_with("0x") || l.contains("Reason:") || l.contains("Revocation Time:")
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_three_of_five_shares_rebuild_a_responder_key_openssl_verifies() {
    let (tmp, data) = demo_dir();
    let root = tmp.path();
    let original = std::fs::read(data.join("responder.key")).unwrap();
    ok(&vigil_cmd(
        root,
        &[
            "key",
            "split",
            "--key",
            "vigil-data/responder.key",
            "--shares",
            "5",
            "--threshold",
            "3",
            "--out",
            "shares",
        ],
    ));
    let shares: Vec<PathBuf> = (1..=5)
        .map(|i| root.join(format!("shares/share-{i}-of-5.txt")))
        .collect();
    let head = std::fs::read_to_string(&shares[1]).unwrap();
    assert!(head.contains("index: 2\n"), "{head}");
    assert!(head.contains("threshold: 3\n"), "{head}");
    assert!(head.contains("key-fingerprint: sha256:"), "{head}");
    // The key leaves the data directory: only the shares can bring it back.
    std::fs::remove_file(data.join("responder.key")).unwrap();
    let mut subsets = Vec::new();
    for a in 0..5 {
        for b in a + 1..5 {
            for c in b + 1..5 {
                subsets.push([a, b, c]);
            }
        }
    }
    assert_eq!(subsets.len(), 10);
    for subset in subsets {
        let mut args: Vec<String> = [
            "key",
            "combine",
            "--out",
            "vigil-data/responder.key",
            "--cert",
            "vigil-data/responder.pem",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(subset.iter().map(|&i| shares[i].display().to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&vigil_cmd(root, &argv));
        assert_eq!(
            std::fs::read(data.join("responder.key")).unwrap(),
            original,
            "{subset:?}"
        );
        // vigil serves with the rebuilt key; openssl checks the signature against the
        // responder certificate (-VAfile) it must have been made with.
        let v = Vigil::start(root, None, &[]);
        let (_, out) = openssl(
            &data,
            &[
                "ocsp",
                "-issuer",
                "ca.pem",
                "-CAfile",
                "ca.pem",
                "-VAfile",
                "responder.pem",
                "-url",
                &format!("{}/ocsp", v.url()),
                "-cert",
                "certs/revoked-1.pem",
            ],
        );
        assert!(out.contains("Response verify OK"), "{subset:?}: {out}");
        assert!(out.contains("certs/revoked-1.pem: revoked"), "{out}");
        drop(v);
        std::fs::remove_file(data.join("responder.key")).unwrap();
    }
    let out = root.join("out.pem");
    let combine = |files: &[&Path], cert: Option<&str>| {
        let mut args = vec![
            "key".to_string(),
            "combine".into(),
            "--out".into(),
            out.display().to_string(),
        ];
        if let Some(c) = cert {
            args.extend(["--cert".to_string(), c.to_string()]);
        }
        args.extend(files.iter().map(|f| f.display().to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        vigil_cmd(root, &argv)
    };
    // Two shares are not enough.
    let e = refused(&combine(&[&shares[0], &shares[3]], None));
    assert!(e.contains("2 share(s) given; this key needs 3"), "{e}");
    assert!(!out.exists());
    // Shares of another key (the CA key, split separately) do not mix.
    ok(&vigil_cmd(
        root,
        &[
            "key",
            "split",
            "--key",
            "vigil-data/ca.key",
            "--shares",
            "5",
            "--threshold",
            "3",
            "--out",
            "ca-shares",
        ],
    ));
    let other = root.join("ca-shares/share-3-of-5.txt");
    let e = refused(&combine(&[&shares[0], &shares[1], &other], None));
    assert!(e.contains("is a share of another key"), "{e}");
    assert!(!out.exists());
    // A damaged share: one character of its value changed.
    let text = std::fs::read_to_string(&shares[4]).unwrap();
    let at = text.find("share: ").unwrap() + 12;
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let damaged = root.join("damaged.txt");
    std::fs::write(&damaged, bytes).unwrap();
    let e = refused(&combine(&[&shares[0], &shares[1], &damaged], None));
    assert!(
        e.contains("damaged.txt") && e.contains("checksum mismatch"),
        "{e}"
    );
    assert!(!out.exists());
    // The right shares against the wrong certificate (the CA's): refused too.
    let e = refused(&combine(
        &[&shares[0], &shares[1], &shares[2]],
        Some("vigil-data/ca.pem"),
    ));
    assert!(e.contains("is not the key of"), "{e}");
    assert!(!out.exists());
    // The CA key rebuilt from its shares matches the CA certificate.
    let ca: Vec<PathBuf> = [1, 4, 5]
        .iter()
        .map(|i| root.join(format!("ca-shares/share-{i}-of-5.txt")))
        .collect();
    let refs: Vec<&Path> = ca.iter().map(PathBuf::as_path).collect();
    ok(&combine(&refs, Some("vigil-data/ca.pem")));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(data.join("ca.key")).unwrap()
    );
}

/// The stored CRL of `demo` in one region: its number and the serials it lists.
fn stored_crl(r: &Redis, dir: &Path) -> (u64, usize) {
    let (number, der): (String, Vec<u8>) = r.cmd(
        redis::cmd("HMGET")
            .arg("vigil:crl:doc:demo.crl")
            .arg("number")
            .arg("der"),
    );
    std::fs::write(dir.join("stored.crl"), der).unwrap();
    let (ok, text) = openssl(
        dir,
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "stored.crl",
            "-noout",
            "-text",
        ],
    );
    assert!(ok, "{text}");
    (
        number.parse().unwrap(),
        text.matches("Serial Number:").count(),
    )
}

#[test]
fn two_region_round_trip_of_100k_certificates_and_a_corrupted_backup() {
    const N: u32 = 100_000;
    let (tmp, pki) = demo_dir();
    let root = tmp.path();
    let a = Redis::start(root, "a");
    let b = Redis::start(root, "b");
    let data = root.join("replica");
    let config = root.join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n[status]\norigin = \"r1\"\n[feed]\nquorum = 2\n\
             checkpoint_interval = \"1s\"\n\
             [[region]]\nname = \"a\"\nredis = {:?}\n[[region]]\nname = \"b\"\nredis = {:?}\n\
             [[issuer]]\nname = \"demo\"\nallow_hold = true\ncertificate = {:?}\n\
             responder_certificate = {:?}\nresponder_key = {:?}\ncrl_key = {:?}\n",
            a.url(),
            b.url(),
            pki.join("ca.pem"),
            pki.join("responder.pem"),
            pki.join("responder.key"),
            pki.join("ca.key"),
        ),
    )
    .unwrap();
    // 100 000 certificates, every tenth revoked (keyCompromise or superseded).
    let mut index = String::with_capacity(N as usize * 60);
    for i in 1..=N {
        if i % 10 == 0 {
            let reason = if i % 20 == 0 {
                "keyCompromise"
            } else {
                "superseded"
            };
            index.push_str(&format!(
                "R\t300101000000Z\t250101000000Z,{reason}\t{i:08X}\tunknown\t/CN=c{i}\n"
            ));
        } else {
            index.push_str(&format!("V\t300101000000Z\t\t{i:08X}\tunknown\t/CN=c{i}\n"));
        }
    }
    std::fs::write(root.join("index.txt"), index).unwrap();
    let started = Instant::now();
    ok(&vigil_with(
        &config,
        &[
            "import",
            "--issuer",
            "demo",
            "--openssl-index",
            root.join("index.txt").to_str().unwrap(),
        ],
    ));
    eprintln!("imported {N} in {:?}", started.elapsed());
    // Some holds, and a hold that was released.
    for i in [11u32, 12, 13, 14] {
        ok(&vigil_with(
            &config,
            &["hold", "--issuer", "demo", "--serial", &format!("{i:08X}")],
        ));
    }
    ok(&vigil_with(
        &config,
        &["release", "--issuer", "demo", "--serial", "0000000E"],
    ));
    ok(&vigil_with(&config, &["crl", "publish"]));
    let (number_before, listed_before) = stored_crl(&a, root);
    assert_eq!(listed_before, (N / 10 + 3) as usize);

    let replica = Replica::start(&config);
    let sample: Vec<String> = [
        1u32, 10, 11, 12, 13, 14, 20, 777, 5_000, 99_990, 100_000, 200_000,
    ]
    .iter()
    .map(|i| format!("{i:08X}"))
    .collect();
    // What openssl must print for each sampled serial: the import's revocations, the three
    // holds (14 was released: good again), and a serial never issued.
    let expected = [
        ": good",
        "Reason: superseded",
        "Reason: certificateHold",
        "Reason: certificateHold",
        "Reason: certificateHold",
        ": good",
        "Reason: keyCompromise",
        ": good",
        "Reason: keyCompromise",
        "Reason: superseded",
        "Reason: keyCompromise",
        ": unknown",
    ];
    let before = replica.wait_for_answers(&pki, &sample, &expected);

    let backup = root.join("status.vbk");
    let started = Instant::now();
    let text = ok(&vigil_with(
        &config,
        &["backup", "create", "--out", backup.to_str().unwrap()],
    ));
    eprintln!("backup created in {:?}: {text}", started.elapsed());
    assert!(
        text.contains("a issuer ") && text.contains("b issuer "),
        "{text}"
    );
    assert!(
        text.contains(&format!("{N} certificates, {} revoked, 3 on hold", N / 10)),
        "{text}"
    );
    // The two regions hold the same records: b is backed up as a, unless every region is
    // asked for.
    assert!(
        text.contains("the same as a when the backup started, backed up as a"),
        "{text}"
    );
    let every = ok(&vigil_with(
        &config,
        &[
            "backup",
            "create",
            "--every-region",
            "--out",
            root.join("every.vbk").to_str().unwrap(),
        ],
    ));
    assert_eq!(
        every
            .matches(&format!("{N} certificates, {} revoked, 3 on hold", N / 10))
            .count(),
        2,
        "{every}"
    );
    assert!(!every.contains("the same as"), "{every}");
    let text = ok(&vigil_cmd(
        root,
        &["backup", "verify", backup.to_str().unwrap()],
    ));
    assert!(text.contains("ok: every checksum matches"), "{text}");
    assert!(text.contains("2 CRL(s)"), "{text}");

    // Disaster: both regions flushed, the replica and its data directory gone.
    drop(replica);
    for r in [&a, &b] {
        let _: () = r.cmd(&mut redis::cmd("FLUSHALL"));
    }
    std::fs::remove_dir_all(&data).unwrap();

    // A damaged copy is found by verify and refused by restore, naming the section.
    let mut bytes = std::fs::read(&backup).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let damaged = root.join("damaged.vbk");
    std::fs::write(&damaged, &bytes).unwrap();
    let e = refused(&vigil_cmd(
        root,
        &["backup", "verify", damaged.to_str().unwrap()],
    ));
    assert!(
        e.contains("(records)") && e.contains("checksum mismatch"),
        "{e}"
    );
    let e = refused(&vigil_with(
        &config,
        &["backup", "restore", damaged.to_str().unwrap()],
    ));
    assert!(
        e.contains("(records)") && e.contains("checksum mismatch"),
        "{e}"
    );
    let len: u64 = a.cmd(&mut redis::cmd("DBSIZE"));
    assert_eq!(len, 0, "a refused restore wrote nothing");

    let started = Instant::now();
    let text = ok(&vigil_with(
        &config,
        &["backup", "restore", backup.to_str().unwrap()],
    ));
    eprintln!("restored in {:?}: {text}", started.elapsed());
    assert!(
        text.contains(&format!("{N} certificates merged, {N} changed the region")),
        "{text}"
    );
    for r in [&a, &b] {
        let issuers: Vec<String> = r.cmd(redis::cmd("SMEMBERS").arg("vigil:issuers"));
        let n: u64 = r.cmd(redis::cmd("HLEN").arg(format!("vigil:snap:{}", issuers[0])));
        assert_eq!(n, N as u64);
    }
    let (number_restored, listed) = stored_crl(&b, root);
    assert_eq!((number_restored, listed), (number_before, listed_before));

    // A fresh replica answers every sampled serial exactly as before.
    let replica = Replica::start(&config);
    let after = replica.wait_for_answers(&pki, &sample, &expected);
    assert_eq!(after, before);
    // A new CRL lists every revocation and hold, numbered above the restored one.
    ok(&vigil_with(&config, &["crl", "publish"]));
    let (number_after, listed_after) = stored_crl(&a, root);
    assert_eq!(listed_after, listed_before);
    assert!(
        number_after > number_before,
        "{number_after} <= {number_before}"
    );
}

/// A restore appends no stream entry (a million events per region would only be trimmed away):
/// a replica that is running while the records are restored learns them from the snapshot,
/// through its completeness round (the region holds more records than its view).
#[test]
fn a_running_replica_answers_what_a_restore_wrote_without_stream_entries() {
    const N: u32 = 2_000;
    let (tmp, pki) = demo_dir();
    let root = tmp.path();
    let a = Redis::start(root, "a");
    let c = Redis::start(root, "c");
    let config = |name: &str, r: &Redis| {
        let path = root.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "data_dir = {:?}\n[status]\norigin = \"r1\"\n[feed]\nquorum = 1\n\
                 repair_interval = \"1s\"\n\
                 [[region]]\nname = {name:?}\nredis = {:?}\n\
                 [[issuer]]\nname = \"demo\"\ncertificate = {:?}\n\
                 responder_certificate = {:?}\nresponder_key = {:?}\ncrl_key = {:?}\n",
                root.join(format!("data-{name}")),
                r.url(),
                pki.join("ca.pem"),
                pki.join("responder.pem"),
                pki.join("responder.key"),
                pki.join("ca.key"),
            ),
        )
        .unwrap();
        path
    };
    let config_a = config("a", &a);
    let config_c = config("c", &c);
    let mut index = String::new();
    for i in 1..=N {
        if i % 10 == 0 {
            index.push_str(&format!(
                "R\t300101000000Z\t250101000000Z,keyCompromise\t{i:08X}\tunknown\t/CN=c{i}\n"
            ));
        } else {
            index.push_str(&format!("V\t300101000000Z\t\t{i:08X}\tunknown\t/CN=c{i}\n"));
        }
    }
    std::fs::write(root.join("index.txt"), index).unwrap();
    ok(&vigil_with(
        &config_a,
        &[
            "import",
            "--issuer",
            "demo",
            "--openssl-index",
            root.join("index.txt").to_str().unwrap(),
        ],
    ));
    let backup = root.join("a.vbk");
    ok(&vigil_with(
        &config_a,
        &["backup", "create", "--out", backup.to_str().unwrap()],
    ));

    // A replica of the empty region c, ready and answering before the restore.
    let replica = Replica::start(&config_c);
    let sample: Vec<String> = [1u32, 10, 20, 1_999, 2_000, 5_000]
        .iter()
        .map(|i| format!("{i:08X}"))
        .collect();
    replica.wait_for_answers(&pki, &sample[..1], &[": unknown"]);
    // The stream's fields: the replica's heartbeats (`hb`) only, never events (`e`, `p`).
    type Entry = (String, Vec<(String, Vec<u8>)>);
    let event_fields = || {
        let entries: Vec<Entry> = c.cmd(redis::cmd("XRANGE").arg("vigil:feed").arg("-").arg("+"));
        entries
            .iter()
            .flat_map(|(_, fields)| fields.iter())
            .filter(|(f, _)| f != "hb")
            .count()
    };

    let text = ok(&vigil_with(
        &config_c,
        &["backup", "restore", backup.to_str().unwrap()],
    ));
    assert!(
        text.contains(&format!("{N} certificates merged, {N} changed the region")),
        "{text}"
    );
    assert_eq!(
        event_fields(),
        0,
        "the restore appended events to the stream"
    );
    replica.wait_for_answers(
        &pki,
        &sample,
        &[
            ": good",
            "Reason: keyCompromise",
            "Reason: keyCompromise",
            ": good",
            "Reason: keyCompromise",
            ": unknown",
        ],
    );
    // Restoring again changes nothing: the join of what is there with the same records.
    let text = ok(&vigil_with(
        &config_c,
        &["backup", "restore", backup.to_str().unwrap()],
    ));
    assert!(
        text.contains(&format!("{N} certificates merged, 0 changed the region")),
        "{text}"
    );
}

/// `RESTORE_MANY` leaves a snapshot and its digest exactly as `MERGE` called once per record
/// does (the join: a restore never removes or downgrades a newer revocation), whether a batch
/// is all new (its fast path), mixes new and stored records, repeats a serial, or changes
/// nothing; it appends no stream entry; a batch with a bad record writes nothing.
#[test]
fn lua_restore_many_joins_as_merge_does() {
    use vigil::status::view::Digest;
    use vigil::status::{CertRecord, EventKind, RevocationReason, Serial};
    let tmp = tempfile::tempdir().unwrap();
    let one = Redis::start(tmp.path(), "one");
    let many = Redis::start(tmp.path(), "many");
    let mut c1 = one.conn().unwrap();
    let mut cm = many.conn().unwrap();
    let merge = redis::Script::new(vigil::feed::scripts::MERGE_LUA);
    let restore = redis::Script::new(vigil::feed::scripts::RESTORE_MANY_LUA);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let record = |next: &mut dyn FnMut(u64) -> u64| {
        CertRecord::from_event(&match next(6) {
            0 | 1 => EventKind::Issued {
                not_after: 1_000 + next(3) as i64 * 4_000_000_000,
            },
            2 => EventKind::Revoked {
                time: 100 + next(3) as i64,
                reason: [
                    RevocationReason::Unspecified,
                    RevocationReason::KeyCompromise,
                    RevocationReason::Superseded,
                ][next(3) as usize],
            },
            3 | 4 => EventKind::Hold {
                time: 100 + next(3) as i64,
            },
            _ => EventKind::Release {
                time: 100 + next(3) as i64,
            },
        })
    };
    // First a batch of 1500 new serials (the fast path, over more than one HMGET slice), then
    // batches of 7 over a small range of serials (stored ones, repeats in a batch).
    let mut batches: Vec<Vec<(Serial, CertRecord)>> = vec![
        (0..1500u32)
            .map(|i| {
                (
                    Serial::from_hex(&format!("{:X}", 0x10000 + i)).unwrap(),
                    record(&mut next),
                )
            })
            .collect(),
    ];
    for _ in 0..80 {
        batches.push(
            (0..7)
                .map(|_| {
                    (
                        Serial::from_hex(&format!("{:X}", 0x100 + next(150))).unwrap(),
                        record(&mut next),
                    )
                })
                .collect(),
        );
    }
    batches.push(batches[1].clone());
    let (mut changed_one, mut changed_many) = (0u64, 0u64);
    for batch in &batches {
        for (s, r) in batch {
            let id: Option<String> = merge
                .key("t:feed")
                .key("t:snap:aa")
                .key("t:issuers")
                .key("t:digest")
                .arg(1_000_000)
                .arg("aa")
                .arg(s.as_der_content())
                .arg(&r.to_bytes()[..])
                .arg(b"event".as_slice())
                .invoke(&mut c1)
                .unwrap();
            changed_one += u64::from(id.is_some());
        }
        let mut d = Digest::default();
        let mut call = restore.prepare_invoke();
        call.key("t:snap:aa").key("t:issuers").key("t:digest");
        for (s, r) in batch {
            d.toggle(s, r);
        }
        call.arg("aa").arg(d.hex());
        for (s, r) in batch {
            call.arg(s.as_der_content()).arg(&r.to_bytes()[..]);
        }
        let n: u64 = call.invoke(&mut cm).unwrap();
        changed_many += n;
        assert_eq!(changed_one, changed_many);
    }
    assert!(changed_one > 1600, "{changed_one}");
    let snap = |c: &mut redis::Connection| {
        let mut v: Vec<(Vec<u8>, Vec<u8>)> =
            redis::cmd("HGETALL").arg("t:snap:aa").query(c).unwrap();
        v.sort();
        v
    };
    let (s1, sm) = (snap(&mut c1), snap(&mut cm));
    assert_eq!(s1, sm);
    let mut computed = Digest::default();
    for (s, r) in &sm {
        computed.toggle(
            &Serial::from_der_content(s).unwrap(),
            &CertRecord::from_bytes(r).unwrap(),
        );
    }
    for c in [&mut c1, &mut cm] {
        let d: String = redis::cmd("HGET")
            .arg("t:digest")
            .arg("aa")
            .query(c)
            .unwrap();
        assert_eq!(d, computed.hex());
        let issuers: Vec<String> = redis::cmd("SMEMBERS").arg("t:issuers").query(c).unwrap();
        assert_eq!(issuers, ["aa"]);
    }
    let entries: u64 = redis::cmd("EXISTS").arg("t:feed").query(&mut cm).unwrap();
    assert_eq!(entries, 0, "RESTORE_MANY appended stream entries");
    // A bad record (removeFromCRL) in a batch: refused, nothing written.
    let serial = Serial::from_hex("ABCDEF").unwrap();
    let bad = [0u8, 0, 0, 0, 0, 0, 0, 100, 8];
    let e = restore
        .key("t:snap:aa")
        .key("t:issuers")
        .key("t:digest")
        .arg("aa")
        .arg("0".repeat(40))
        .arg(serial.as_der_content())
        .arg(&bad[..])
        .invoke::<u64>(&mut cm)
        .unwrap_err();
    assert!(e.to_string().contains("not a revocation reason"), "{e}");
    assert_eq!(snap(&mut cm), sm);
}
