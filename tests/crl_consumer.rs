//! `vigil drill --crl-consumer`: the CRLs read as an aggregator (CRLite, CRLSets) reads them.
//!
//! - against a real `vigil serve` with four shards whose view is in a real `redis-server`: every
//!   consumer check passes, with every download resumed with Range and If-Range; a second run
//!   compares with the state file the first wrote, and a state file that remembers a newer
//!   CRL makes the drill fail;
//! - against a small HTTP server the test controls, serving CRLs signed by the demo CA that are
//!   wrong the ways a consumer must catch: an IDP that differs from the URL in one letter, an
//!   expired and too old CRL, two shards listing the same serial; the server cuts every first
//!   download short, and the drill resumes it.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a panic is a failure

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const VIGIL: &str = env!("CARGO_BIN_EXE_vigil");

// === processes ===

/// A child killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn redis(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    let p = Proc(child);
    wait_for(Duration::from_secs(10), "redis", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (p, port)
}

fn wait_for(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn vigil(config: &Path, args: &[&str]) -> Output {
    Command::new(VIGIL)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("VIGIL_CONFIG")
        .env("VIGIL_LOG", "warn")
        .output()
        .expect("run vigil")
}

fn serve(config: &Path, log: &Path) -> Proc {
    let err = std::fs::File::create(log).expect("log");
    let mut child = Command::new(VIGIL)
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env_remove("VIGIL_CONFIG")
        .env("VIGIL_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err))
        .spawn()
        .expect("vigil serve");
    let out = child.stdout.take().expect("stdout");
    std::thread::spawn(move || for _ in BufReader::new(out).lines().map_while(Result::ok) {});
    Proc(child)
}

/// The demo PKI of `vigil check-config` in `dir/pki`.
fn demo_pki(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    let out = Command::new(VIGIL)
        .arg("check-config")
        .env_remove("VIGIL_CONFIG")
        .env("VIGIL_DATA_DIR", &pki)
        .output()
        .expect("check-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pki
}

/// A bare GET: (status, body).
fn get(base: &str, path: &str) -> (u16, Vec<u8>) {
    let Ok(mut s) = TcpStream::connect(base.trim_start_matches("http://")) else {
        return (0, Vec::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, Vec::new());
    };
    let status = String::from_utf8_lossy(&raw[..end])
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, raw[end + 4..].to_vec())
}

// === the drill's report ===

#[derive(Debug, serde::Deserialize)]
struct Finding {
    check: String,
    level: String,
    detail: String,
}

/// Runs `vigil drill ARGS --json FILE`; returns (exit success, findings, text).
fn drill(dir: &Path, args: &[&str]) -> (bool, Vec<Finding>, String) {
    let json = dir.join("drill.json");
    let out = Command::new(VIGIL)
        .arg("drill")
        .args(args)
        .arg("--json")
        .arg(&json)
        .env_remove("VIGIL_CONFIG")
        .env("VIGIL_LOG", "warn")
        .output()
        .expect("vigil drill");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap_or_default())
            .unwrap_or_else(|e| panic!("no JSON report ({e}): {text}"));
    let findings = serde_json::from_value(report["findings"].clone()).expect("findings");
    eprintln!("vigil drill {}\n{text}", args.join(" "));
    (out.status.success(), findings, text)
}

fn levels<'a>(f: &'a [Finding], check: &str) -> Vec<&'a str> {
    f.iter()
        .filter(|x| x.check == check)
        .map(|x| x.level.as_str())
        .collect()
}

/// The one finding of `check` whose detail contains `needle`.
fn finding<'a>(f: &'a [Finding], check: &str, needle: &str, text: &str) -> &'a Finding {
    let hits: Vec<&Finding> = f
        .iter()
        .filter(|x| x.check == check && x.detail.contains(needle))
        .collect();
    assert_eq!(hits.len(), 1, "{check} {needle:?}: {hits:?}\n{text}");
    hits[0]
}

// === tests ===

#[test]
fn vigils_sharded_crls_pass_the_consumer_check_and_a_regression_fails_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = demo_pki(dir);
    let (_redis, rport) = redis(dir);
    let redis_url = format!("redis://127.0.0.1:{rport}");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let p = pki.display();
    let config = dir.join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{d}/node\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n\
             [feed]\nquorum = 1\nheartbeat_interval = \"200ms\"\n\
             [[region]]\nname = \"a\"\nredis = \"{redis_url}\"\n\
             [crl]\nregion = \"a\"\nshards = 4\nbase_url = \"{base}\"\nlease_ttl = \"2s\"\n\
             publish_delay = \"400ms\"\nrefresh = \"200ms\"\n\
             [[issuer]]\nname = \"demo\"\ncertificate = \"{p}/ca.pem\"\n\
             responder_certificate = \"{p}/responder.pem\"\nresponder_key = \"{p}/responder.key\"\n\
             crl_key = \"{p}/ca.key\"\n",
            d = dir.display(),
        ),
    )
    .unwrap();

    // 90 certificates, a third of them revoked long ago: all must be on the CRLs
    let mut index = String::new();
    for n in 1..=90u64 {
        let serial = format!(
            "{:016X}",
            n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 1 | 1 << 56
        );
        if n % 3 == 0 {
            index.push_str(&format!(
                "R\t301231235959Z\t250101000000Z,keyCompromise\t{serial}\tunknown\t/CN=c{n}\n"
            ));
        } else {
            index.push_str(&format!(
                "V\t301231235959Z\t\t{serial}\tunknown\t/CN=c{n}\n"
            ));
        }
    }
    let idx = dir.join("index.txt");
    std::fs::write(&idx, index).unwrap();
    let out = vigil(
        &config,
        &[
            "import",
            "--openssl-index",
            idx.to_str().unwrap(),
            "--issuer",
            "demo",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let _vigil = serve(&config, &dir.join("vigil.log"));
    wait_for(Duration::from_secs(30), "four shards served", || {
        (0..4).all(|k| get(&base, &format!("/crl/demo/{k}.crl")).0 == 200)
            && get(&base, "/readyz").0 == 200
    });

    let ca = format!("demo={p}/ca.pem");
    let state = dir.join("crl-state.json");
    let args = [
        "--replica",
        &base,
        "--issuer",
        &ca,
        "--redis",
        &format!("a={redis_url}"),
        "--crl-consumer",
        "--crl-state",
        state.to_str().unwrap(),
    ];
    let (ok, f, text) = drill(dir, &args);
    assert!(ok, "{text}");
    for check in [
        "crl-json",
        "crl-fetch",
        "crl-range",
        "crl-signature",
        "crl-idp",
        "crl-previous",
        "crl-next-update",
        "crl-age",
        "crl-shards",
        "crl-view",
    ] {
        let l = levels(&f, check);
        assert!(
            !l.is_empty() && l.iter().all(|l| *l == "ok"),
            "{check}: {l:?}\n{text}"
        );
    }
    assert_eq!(levels(&f, "crl-fetch").len(), 4, "{text}");
    for k in 0..4 {
        let url = format!("{base}/crl/demo/{k}.crl");
        // HEAD, the first half, the rest: resumed with Range and If-Range
        finding(&f, "crl-fetch", &format!("{url}: "), &text);
        assert!(
            finding(&f, "crl-fetch", &format!("{url}: "), &text)
                .detail
                .contains("in 3 requests (0 retried)"),
            "{text}"
        );
        finding(
            &f,
            "crl-idp",
            &format!("{url}: issuingDistributionPoint is the URL"),
            &text,
        );
    }
    finding(&f, "crl-shards", "30 serials, none on two shards", &text);
    finding(&f, "crl-view", "30 of the 30 serials revoked", &text);

    // the state file remembers every URL; a second run compares with it
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["crls"].as_object().unwrap().len(), 4, "{saved}");
    let (ok, f, text) = drill(dir, &args);
    assert!(ok, "{text}");
    assert_eq!(
        f.iter()
            .filter(|x| x.check == "crl-previous" && x.detail.contains("previous run's copy"))
            .count(),
        4,
        "{text}"
    );

    // a state file that saw a newer CRL for shard 2: this one went back
    let url2 = format!("{base}/crl/demo/2.crl");
    let mut saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let seen = &mut saved["crls"][&url2];
    let number = seen["number"].as_u64().unwrap();
    seen["number"] = (number + 5).into();
    std::fs::write(&state, serde_json::to_vec(&saved).unwrap()).unwrap();
    let (ok, f, text) = drill(dir, &args);
    assert!(!ok, "{text}");
    let bad = finding(&f, "crl-previous", &format!("{url2}: went back"), &text);
    assert_eq!(bad.level, "fail");
    assert_eq!(
        f.iter().filter(|x| x.level == "fail").count(),
        1,
        "only shard 2 fails: {text}"
    );
}

/// A tiny HTTP/1.1 server: fixed bodies by path, `HEAD`, one `Range: bytes=a-[b]` with
/// `If-Range`, a strong ETag per body. The first GET of each CRL is cut off halfway through
/// its body (the connection closed), as a flaky link would. Records every request line with
/// its Range and If-Range headers.
struct Fake {
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    /// Binds a free port, then serves what `routes` makes for its base URL.
    fn start(routes: impl FnOnce(&str) -> BTreeMap<String, Vec<u8>>) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let routes = routes(&base);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (routes, log2) = (Arc::new(routes), log.clone());
        let cut: Arc<Mutex<std::collections::BTreeSet<String>>> = Arc::default();
        std::thread::spawn(move || {
            for s in l.incoming().map_while(Result::ok) {
                let (routes, log, cut) = (routes.clone(), log2.clone(), cut.clone());
                std::thread::spawn(move || Fake::answer(s, &routes, &log, &cut));
            }
        });
        Fake { base, log }
    }

    fn answer(
        mut s: TcpStream,
        routes: &BTreeMap<String, Vec<u8>>,
        log: &Mutex<Vec<String>>,
        cut: &Mutex<std::collections::BTreeSet<String>>,
    ) {
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        if r.read_line(&mut line).is_err() {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let (mut range, mut if_range) = (None, None);
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "range" => range = Some(v.trim().to_owned()),
                    "if-range" => if_range = Some(v.trim().to_owned()),
                    _ => {}
                }
            }
        }
        log.lock().unwrap().push(format!(
            "{method} {path} range={range:?} if-range={if_range:?}"
        ));
        let body: &[u8] = match path.as_str() {
            "/readyz" => b"ready",
            p => {
                match routes.get(p) {
                    Some(b) => b,
                    None => {
                        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                        return;
                    }
                }
            }
        };
        let etag = format!(
            "\"{}-{}\"",
            body.len(),
            body.iter().map(|b| u32::from(*b)).sum::<u32>()
        );
        let len = body.len();
        let wanted = range
            .as_deref()
            .filter(|_| if_range.as_deref().is_none_or(|t| t == etag))
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'))
            .and_then(|(a, b)| {
                let a: usize = a.parse().ok()?;
                let b: usize = if b.is_empty() {
                    len - 1
                } else {
                    b.parse::<usize>().ok()?.min(len - 1)
                };
                (a <= b).then_some((a, b))
            });
        let (status, piece) = match wanted {
            Some((a, b)) => (
                format!("206 Partial Content\r\nContent-Range: bytes {a}-{b}/{len}"),
                &body[a..=b],
            ),
            None => ("200 OK".to_owned(), body),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nETag: {etag}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            piece.len()
        );
        let _ = s.write_all(head.as_bytes());
        if method == "HEAD" {
            return;
        }
        let first_get = path.ends_with(".crl") && cut.lock().unwrap().insert(path.clone());
        if first_get {
            let _ = s.write_all(&piece[..piece.len() / 2]);
            let _ = s.shutdown(std::net::Shutdown::Both);
            return;
        }
        let _ = s.write_all(piece);
    }
}

#[test]
fn crls_a_consumer_must_refuse_fail_the_drill_by_name() {
    use vigil::crl::build::CrlSpec;
    use vigil::crl::{CrlIssuer, Entry};
    use vigil::signer::direct::crl as build;
    use vigil::status::{RevocationReason, Serial};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = demo_pki(dir);
    let ca_pem = std::fs::read(pki.join("ca.pem")).unwrap();
    let ca = x509_cert::Certificate::load_pem_chain(&ca_pem)
        .unwrap()
        .remove(0);
    let issuer = CrlIssuer::from_certificate("demo", &ca).unwrap();
    let signer = vigil::signer::SoftwareSigner::from_pem_file(&pki.join("ca.key")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let entry = |n: u64| Entry {
        serial: Serial::from_hex(&format!("7{n:015X}")).unwrap(),
        time: now - 86400 * 30,
        reason: RevocationReason::KeyCompromise,
    };
    let crl = |this: i64, next: i64, idp: &str, mut entries: Vec<Entry>| {
        let spec = CrlSpec {
            number: 7,
            this_update: this,
            next_update: next,
            idp_uri: Some(idp),
            delta_base: None,
            freshest_uri: None,
        };
        build(&issuer, &spec, &mut entries, &signer).unwrap()
    };
    let fresh = (now - 60, now + 86400);
    let fake = Fake::start(|base| {
        let u = |p: &str| format!("{base}{p}");
        let array = |paths: &[&str]| {
            serde_json::to_vec(&paths.iter().map(|p| u(p)).collect::<Vec<_>>()).unwrap()
        };
        let mut r = BTreeMap::new();
        // "idp": two shards; shard 1's IDP differs from its URL in the case of one letter
        r.insert(
            "/crl/idp.json".into(),
            array(&["/crl/idp/0.crl", "/crl/idp/1.crl"]),
        );
        r.insert(
            "/crl/idp/0.crl".into(),
            crl(fresh.0, fresh.1, &u("/crl/idp/0.crl"), vec![entry(1)]),
        );
        r.insert(
            "/crl/idp/1.crl".into(),
            crl(fresh.0, fresh.1, &u("/crl/Idp/1.crl"), vec![entry(2)]),
        );
        // "stale": one CRL of 400 entries, 20 days old, nextUpdate 13 days ago
        r.insert("/crl/stale.json".into(), array(&["/crl/stale/0.crl"]));
        r.insert(
            "/crl/stale/0.crl".into(),
            crl(
                now - 86400 * 20,
                now - 86400 * 13,
                &u("/crl/stale/0.crl"),
                (10..410).map(entry).collect(),
            ),
        );
        // "dup": one serial on both shards
        r.insert(
            "/crl/dup.json".into(),
            array(&["/crl/dup/0.crl", "/crl/dup/1.crl"]),
        );
        r.insert(
            "/crl/dup/0.crl".into(),
            crl(
                fresh.0,
                fresh.1,
                &u("/crl/dup/0.crl"),
                vec![entry(5), entry(6)],
            ),
        );
        r.insert(
            "/crl/dup/1.crl".into(),
            crl(
                fresh.0,
                fresh.1,
                &u("/crl/dup/1.crl"),
                vec![entry(6), entry(7)],
            ),
        );
        r
    });
    let ca_path = pki.join("ca.pem");
    let issuers: Vec<String> = ["idp", "stale", "dup"]
        .iter()
        .map(|n| format!("{n}={}", ca_path.display()))
        .collect();
    let mut args = vec!["--replica", fake.base.as_str(), "--crl-consumer"];
    for i in &issuers {
        args.extend(["--issuer", i.as_str()]);
    }
    let (ok, f, text) = drill(dir, &args);
    assert!(!ok, "the drill must fail: {text}");
    let u = |p: &str| format!("{}{p}", fake.base);

    // every CRL is signed by the CA, downloaded despite the cut, and resumed
    assert_eq!(levels(&f, "crl-signature"), ["ok"; 5], "{text}");
    assert_eq!(levels(&f, "crl-fetch"), ["ok"; 5], "{text}");
    assert_eq!(levels(&f, "crl-range"), ["ok"; 5], "{text}");
    for path in ["/crl/idp/0.crl", "/crl/stale/0.crl", "/crl/dup/1.crl"] {
        let d = &finding(&f, "crl-fetch", &format!("{}: ", u(path)), &text).detail;
        assert!(d.contains("(1 retried)"), "{d}");
    }
    let log = fake.log.lock().unwrap().clone();
    let etag_resumes = log
        .iter()
        .filter(|l| {
            l.starts_with("GET /crl/stale/0.crl range=Some(\"bytes=")
                && l.contains("if-range=Some(\"\\\"")
        })
        .count();
    assert!(
        etag_resumes >= 2,
        "resumed with Range and If-Range: {log:#?}"
    );

    // the IDP that differs in one letter's case
    let bad = finding(&f, "crl-idp", &u("/crl/idp/1.crl"), &text);
    assert_eq!(bad.level, "fail", "{text}");
    assert!(bad.detail.contains(&u("/crl/Idp/1.crl")), "{}", bad.detail);
    assert_eq!(
        finding(&f, "crl-idp", &u("/crl/idp/0.crl"), &text).level,
        "ok"
    );
    assert_eq!(
        levels(&f, "crl-idp")
            .iter()
            .filter(|l| **l == "fail")
            .count(),
        1,
        "{text}"
    );

    // the stale CRL: past nextUpdate and older than CRLite's 336 h
    assert_eq!(
        finding(&f, "crl-next-update", &u("/crl/stale/0.crl"), &text).level,
        "fail"
    );
    assert_eq!(
        finding(&f, "crl-age", &u("/crl/stale/0.crl"), &text).level,
        "fail"
    );
    assert_eq!(
        finding(&f, "crl-next-update", &u("/crl/dup/0.crl"), &text).level,
        "ok"
    );
    assert_eq!(
        finding(&f, "crl-age", &u("/crl/dup/0.crl"), &text).level,
        "ok"
    );

    // the serial on two shards
    let dup = finding(&f, "crl-shards", "dup: ", &text);
    assert_eq!(dup.level, "fail", "{text}");
    assert!(
        dup.detail.contains("1 serials on two shards"),
        "{}",
        dup.detail
    );
    assert_eq!(finding(&f, "crl-shards", "idp: ", &text).level, "ok");

    // with a looser age bound, the stale CRL still fails on nextUpdate but not on age
    args.extend(["--crl-max-age", "600h"]);
    let (ok, f, text) = drill(dir, &args);
    assert!(!ok);
    assert_eq!(
        finding(&f, "crl-age", &u("/crl/stale/0.crl"), &text).level,
        "ok"
    );
    assert_eq!(
        finding(&f, "crl-next-update", &u("/crl/stale/0.crl"), &text).level,
        "fail"
    );
}
