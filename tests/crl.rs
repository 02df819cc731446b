//! CRLs end to end, against the real `vigil` binary, real `redis-server` processes and
//! `openssl crl`.
//!
//! - the embedded default publishes and serves the demo CA's CRL, with caching headers, 304s
//!   and 404s for path tricks;
//! - sharded CRLs (with deltas) carry the right IDP and together list every revoked serial
//!   exactly once, with the view's reasons; a revocation reaches the shard's delta CRL;
//! - the Redis store's compare-and-set and fencing refuse what they must;
//! - two regions with competing publishers, the leader of one SIGSTOPped past its lease:
//!   numbers never go backwards in either Redis nor on any replica; a revocation is served by
//!   every replica within the publish delay plus one refresh; with both Redis killed the
//!   replicas keep serving, and a restarted replica serves its disk copy.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a panic is a failure

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const VIGIL: &str = env!("CARGO_BIN_EXE_vigil");

// === processes ===

/// A child process killed on drop.
struct Proc {
    child: Child,
    lines: Option<mpsc::Receiver<String>>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line starting with `prefix`.
    fn line(&mut self, prefix: &str, within: Duration) -> String {
        let rx = self.lines.as_ref().expect("stdout piped");
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(_) => panic!("no stdout line starting with {prefix:?} within {within:?}"),
            }
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {}", self.pid());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(mut cmd: Command, log: &Path) -> Proc {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    Proc {
        child,
        lines: Some(rx),
    }
}

fn vigil_cmd(config: Option<&Path>) -> Command {
    let mut c = Command::new(VIGIL);
    c.env_remove("VIGIL_CONFIG")
        .env_remove("VIGIL_LISTEN")
        .env_remove("VIGIL_DATA_DIR")
        .env("VIGIL_LOG", "info");
    if let Some(p) = config {
        c.arg("--config").arg(p);
    }
    c
}

/// Runs a one-shot vigil command; returns stdout, panicking with stderr on failure.
fn vigil_run(config: &Path, args: &[&str]) -> String {
    let out = vigil_cmd(Some(config))
        .args(args)
        .output()
        .expect("run vigil");
    assert!(
        out.status.success(),
        "vigil {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts `vigil serve` and waits for its URL.
fn serve(config: Option<&Path>, cwd: &Path, log: &Path) -> (Proc, String) {
    let mut cmd = vigil_cmd(config);
    cmd.arg("serve").current_dir(cwd);
    if config.is_none() {
        cmd.env("VIGIL_LISTEN", "127.0.0.1:0");
    }
    let mut p = spawn(cmd, log);
    let line = p.line("vigil listening on ", Duration::from_secs(30));
    let base = line
        .trim_start_matches("vigil listening on ")
        .split('/')
        .take(3)
        .collect::<Vec<_>>()
        .join("/");
    (p, base)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

struct Redis {
    proc: Option<Proc>,
    port: u16,
}

impl Redis {
    fn start(dir: &Path) -> Redis {
        Redis::start_on(dir, free_port())
    }

    /// A new, empty redis-server on `port` (a region restarted without its data).
    fn start_on(dir: &Path, port: u16) -> Redis {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(dir);
        let proc = spawn(cmd, &dir.join(format!("redis-{port}.log")));
        let r = Redis {
            proc: Some(proc),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.cli(&["PING"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis on {port} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    }

    fn kill(&mut self) {
        self.proc = None;
    }
}

// === HTTP ===

struct Resp {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// A minimal HTTP/1.1 GET (or other method) over a fresh connection.
fn request(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Resp> {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Resp {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

fn get(base: &str, path: &str) -> Resp {
    request(base, "GET", path, &[]).expect("GET")
}

// === openssl ===

/// Verifies a DER CRL with `openssl crl -CAfile`, returning its `-text` dump.
fn openssl_verify(der: &[u8], ca: &Path, dir: &Path) -> String {
    let f = dir.join(format!("check-{}.crl", std::process::id()));
    std::fs::write(&f, der).expect("write crl");
    let v = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-in"])
        .arg(&f)
        .arg("-CAfile")
        .arg(ca)
        .output()
        .expect("openssl");
    let msg = String::from_utf8_lossy(&v.stderr).into_owned() + &String::from_utf8_lossy(&v.stdout);
    assert!(
        v.status.success() && msg.contains("verify OK"),
        "openssl: {msg}"
    );
    let t = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(&f)
        .output()
        .expect("openssl");
    assert!(t.status.success());
    String::from_utf8_lossy(&t.stdout).into_owned()
}

/// Serial (upper-case hex, no leading zeros) → reason as OpenSSL prints it ("" when absent).
fn revoked_in_text(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        let t = l.trim();
        if let Some(s) = t.strip_prefix("Serial Number: ") {
            let s = norm_serial(s);
            assert!(
                out.insert(s.clone(), String::new()).is_none(),
                "{s} listed twice"
            );
            current = Some(s);
        } else if t == "X509v3 CRL Reason Code:" {
            let reason = lines.next().unwrap_or("").trim().to_owned();
            if let Some(s) = &current {
                out.insert(s.clone(), reason);
            }
        }
    }
    out
}

fn norm_serial(s: &str) -> String {
    let s = s.trim().replace(':', "").to_ascii_uppercase();
    let t = s.trim_start_matches('0');
    if t.is_empty() { "0".into() } else { t.into() }
}

fn openssl_reason(name: &str) -> &'static str {
    match name {
        "keyCompromise" => "Key Compromise",
        "cACompromise" => "CA Compromise",
        "affiliationChanged" => "Affiliation Changed",
        "superseded" => "Superseded",
        "cessationOfOperation" => "Cessation Of Operation",
        "privilegeWithdrawn" => "Privilege Withdrawn",
        _ => "",
    }
}

fn cert_serial(pem: &Path) -> String {
    let o = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(pem)
        .output()
        .expect("openssl x509");
    norm_serial(
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .trim_start_matches("serial="),
    )
}

fn crl_number(der: &[u8]) -> u64 {
    vigil::crl::lint::number_of(der).expect("CRL number")
}

// === set-up ===

/// A temporary directory, kept (and named on stderr) when `VIGIL_TEST_KEEP` is set.
fn tmpdir() -> tempfile::TempDir {
    let mut t = tempfile::tempdir().expect("tmp");
    if std::env::var_os("VIGIL_TEST_KEEP").is_some() {
        t.disable_cleanup(true);
        eprintln!("keeping {}", t.path().display());
    }
    t
}

/// The demo PKI (made by the embedded default's `check-config`) in `dir/pki`.
fn demo_pki(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    let out = vigil_cmd(None)
        .arg("check-config")
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

fn issuer_toml(pki: &Path) -> String {
    let p = pki.display();
    format!(
        "[[issuer]]\nname = \"demo\"\ncertificate = \"{p}/ca.pem\"\n\
         responder_certificate = \"{p}/responder.pem\"\nresponder_key = \"{p}/responder.key\"\n\
         crl_key = \"{p}/ca.key\"\n"
    )
}

fn write_config(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).expect("write config");
    path.to_path_buf()
}

// === tests ===

#[test]
fn embedded_default_serves_the_demo_crl() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let (mut p, base) = serve(None, dir, &dir.join("vigil.log"));
    let crls = p.line("CRLs: ", Duration::from_secs(5));
    let url = crls.trim_start_matches("CRLs: ").trim();
    assert_eq!(url, format!("{base}/crl/demo.crl"));
    let data = dir.join("vigil-data");

    let r = get(&base, "/crl/demo.crl");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "application/pkix-crl");
    let text = openssl_verify(&r.body, &data.join("ca.pem"), dir);
    let revoked = revoked_in_text(&text);
    let expected: BTreeMap<String, String> = [(
        cert_serial(&data.join("certs/revoked-1.pem")),
        "Key Compromise".to_owned(),
    )]
    .into();
    assert_eq!(revoked, expected);
    assert!(text.contains("Version 2"), "{text}");
    assert!(text.contains("X509v3 CRL Number"), "{text}");
    assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");

    // caching headers
    let etag = r.header("etag").to_owned();
    let last_modified = r.header("last-modified").to_owned();
    assert!(etag.starts_with('"'), "{etag}");
    assert!(!r.header("expires").is_empty());
    let cc = r.header("cache-control");
    let max_age: i64 = cc
        .split(',')
        .find_map(|p| p.trim().strip_prefix("max-age="))
        .and_then(|v| v.parse().ok())
        .expect("max-age");
    assert!((0..=3600).contains(&max_age), "{cc}");
    for h in [
        ("If-None-Match", etag.as_str()),
        ("If-Modified-Since", last_modified.as_str()),
    ] {
        let r = request(&base, "GET", "/crl/demo.crl", &[h]).expect("conditional");
        assert_eq!(r.status, 304, "{h:?}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), etag);
    }
    let old = request(
        &base,
        "GET",
        "/crl/demo.crl",
        &[("If-Modified-Since", "Mon, 01 Jan 2001 00:00:00 GMT")],
    )
    .expect("ims");
    assert_eq!(old.status, 200);
    let stale_tag = request(
        &base,
        "GET",
        "/crl/demo.crl",
        &[("If-None-Match", "\"0-0\"")],
    )
    .expect("inm");
    assert_eq!(stale_tag.status, 200);
    let head = request(&base, "HEAD", "/crl/demo.crl", &[]).expect("head");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), r.body.len().to_string());
    assert_eq!(head.header("etag"), etag);
    assert_eq!(head.header("accept-ranges"), "bytes");

    // freshness until the next planned publication, stale use bounded by nextUpdate
    assert!(!cc.contains("must-revalidate"), "{cc}");
    let directive = |name: &str| -> i64 {
        cc.split(',')
            .find_map(|p| p.trim().strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {cc}"))
    };
    let (swr, sie) = (
        directive("stale-while-revalidate="),
        directive("stale-if-error="),
    );
    assert_eq!(swr, sie);
    let next_update = {
        use der::Decode;
        let list = x509_cert::crl::CertificateList::from_der(&r.body).expect("CRL");
        list.tbs_cert_list
            .next_update
            .expect("nextUpdate")
            .to_unix_duration()
            .as_secs() as i64
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!(sie > 0, "{cc}");
    assert!(
        now + max_age + sie <= next_update + 2,
        "stale use past nextUpdate: {cc}, nextUpdate {next_update}, now {now}"
    );
    let expires = httpdate::parse_http_date(r.header("expires")).expect("Expires");
    let expires = expires
        .duration_since(std::time::UNIX_EPOCH)
        .expect("epoch")
        .as_secs() as i64;
    assert!(
        expires < next_update,
        "Expires is the next planned publication"
    );
    assert!(
        (expires - (now + max_age)).abs() <= 2,
        "Expires {expires} = now + max-age"
    );

    // Range, as aggregators resume a download: the bytes are the full body's
    let len = r.body.len();
    for (range, from, to) in [
        ("bytes=0-99", 0, 99),
        (&format!("bytes=100-{}", len + 50) as &str, 100, len - 1),
        ("bytes=-64", len - 64, len - 1),
        (&format!("bytes={}-", len - 1), len - 1, len - 1),
    ] {
        let p = request(&base, "GET", "/crl/demo.crl", &[("Range", range)]).expect("range");
        assert_eq!(p.status, 206, "{range}");
        assert_eq!(p.body, r.body[from..=to], "{range}");
        assert_eq!(
            p.header("content-range"),
            format!("bytes {from}-{to}/{len}")
        );
        assert_eq!(p.header("content-type"), "application/pkix-crl");
        assert_eq!(p.header("etag"), etag);
    }
    // a resumed download: pieces put together are the CRL
    let mut joined = Vec::new();
    while joined.len() < len {
        let range = format!("bytes={}-{}", joined.len(), joined.len() + 150);
        let p = request(
            &base,
            "GET",
            "/crl/demo.crl",
            &[("Range", &range), ("If-Range", &etag)],
        )
        .expect("piece");
        assert_eq!(p.status, 206);
        joined.extend_from_slice(&p.body);
    }
    assert_eq!(joined, r.body);
    for past in [
        format!("bytes={len}-"),
        format!("bytes={}-{}", len + 10, len + 20),
    ] {
        let p = request(&base, "GET", "/crl/demo.crl", &[("Range", &past)]).expect("416");
        assert_eq!(p.status, 416, "{past}");
        assert_eq!(p.header("content-range"), format!("bytes */{len}"));
    }
    // If-Range naming another version, or several ranges: the whole CRL
    for h in [
        vec![("Range", "bytes=0-9"), ("If-Range", "\"1-0000\"")],
        vec![
            ("Range", "bytes=0-9"),
            ("If-Range", "Mon, 01 Jan 2001 00:00:00 GMT"),
        ],
        vec![("Range", "bytes=0-9,20-29")],
    ] {
        let p = request(&base, "GET", "/crl/demo.crl", &h).expect("full");
        assert_eq!((p.status, &p.body), (200, &r.body), "{h:?}");
    }
    let p = request(
        &base,
        "GET",
        "/crl/demo.crl",
        &[("Range", "bytes=0-9"), ("If-Range", &last_modified)],
    )
    .expect("if-range date");
    assert_eq!((p.status, &p.body[..]), (206, &r.body[..10]));

    // unknown CRLs and path tricks
    for path in [
        "/crl",
        "/crl/",
        "/crl/nobody.crl",
        "/crl/demo",
        "/crl/demo/0.crl",
        "/crl/demo.delta.crl",
        "/crl/demo.crl/",
        "/crl//demo.crl",
        "/crl/./demo.crl",
        "/crl/x/../demo.crl",
        "/crl/%2E%2E/crl/demo.crl",
        "/crl/demo%2Ecrl",
        "/crl/demo%2F0.crl",
        "/crl/..%2Fvigil-data%2Fca.key",
        "/crl/../vigil-data/ca.key",
    ] {
        let r = get(&base, path);
        assert_eq!(r.status, 404, "{path}");
    }
    assert_eq!(
        request(&base, "POST", "/crl/demo.crl", &[])
            .expect("post")
            .status,
        405
    );

    // the number is what was written to disk, and a restart serves the same CRL
    let disk = std::fs::read(data.join("crl/demo.crl")).expect("disk copy");
    assert_eq!(disk, r.body);
    drop(p);
    let (_p2, base2) = serve(None, dir, &dir.join("vigil2.log"));
    let again = get(&base2, "/crl/demo.crl");
    assert_eq!(again.status, 200);
    assert_eq!(
        again.body, r.body,
        "a restart within the interval republishes nothing"
    );
}

#[test]
fn sharded_crls_list_every_revocation_once_with_the_right_idp() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let pki = demo_pki(dir);
    let port = free_port();
    let base_url = format!("http://127.0.0.1:{port}");
    let shards = 4u16;
    let config = write_config(
        &dir.join("vigil.toml"),
        &format!(
            "data_dir = \"{d}/node\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n\
             [status]\njournal = \"{p}/journal.vj\"\njournal_poll = \"50ms\"\n\
             [crl]\nshards = {shards}\ndelta = true\nbase_url = \"{base_url}\"\n\
             publish_delay = \"400ms\"\nrefresh = \"200ms\"\n{issuer}",
            d = dir.display(),
            p = pki.display(),
            issuer = issuer_toml(&pki),
        ),
    );

    // 240 certificates, every third revoked, with assorted reasons (unspecified included)
    let reasons = [
        "",
        "keyCompromise",
        "superseded",
        "cessationOfOperation",
        "affiliationChanged",
    ];
    let mut index = String::new();
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for n in 1..=240u64 {
        let serial = format!(
            "{:016X}",
            n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 1 | 1 << 56
        );
        if n % 3 == 0 {
            let reason = reasons[(n as usize / 3) % reasons.len()];
            let rev = if reason.is_empty() {
                "250101000000Z".to_owned()
            } else {
                format!("250101000000Z,{reason}")
            };
            index.push_str(&format!(
                "R\t301231235959Z\t{rev}\t{serial}\tunknown\t/CN=c{n}\n"
            ));
            expected.insert(norm_serial(&serial), openssl_reason(reason).to_owned());
        } else {
            index.push_str(&format!(
                "V\t301231235959Z\t\t{serial}\tunknown\t/CN=c{n}\n"
            ));
        }
    }
    expected.insert(
        cert_serial(&pki.join("certs/revoked-1.pem")),
        "Key Compromise".to_owned(),
    );
    std::fs::write(dir.join("index.txt"), index).expect("index");
    let idx = dir.join("index.txt");
    vigil_run(
        &config,
        &[
            "import",
            "--openssl-index",
            &idx.display().to_string(),
            "--issuer",
            "demo",
        ],
    );

    // one-shot publish, then serve what it wrote
    let out = vigil_run(&config, &["crl", "publish"]);
    assert_eq!(out.lines().count(), 2 * shards as usize, "{out}");
    assert!(out.lines().all(|l| l.contains("disk: stored")), "{out}");
    let (_p, base) = serve(Some(&config), dir, &dir.join("vigil.log"));
    assert_eq!(base, base_url);

    // CCADB disclosure: the JSON array lists exactly the complete CRLs' URLs, served and printed
    let want: Vec<String> = (0..shards)
        .map(|k| format!("{base_url}/crl/demo/{k}.crl"))
        .collect();
    let j = get(&base, "/crl/demo.json");
    assert_eq!(j.status, 200);
    assert_eq!(j.header("content-type"), "application/json");
    let listed: Vec<String> = serde_json::from_slice(&j.body).expect("JSON array of URLs");
    assert_eq!(listed, want);
    let printed = vigil_run(&config, &["crl", "urls", "--issuer", "demo", "--json"]);
    assert_eq!(printed.trim().as_bytes(), &j.body[..]);
    let lines = vigil_run(&config, &["crl", "urls", "--issuer", "demo"]);
    assert_eq!(lines.lines().collect::<Vec<_>>(), want);
    for url in &listed {
        let path = url.strip_prefix(&base_url).expect("under base_url");
        assert_eq!(get(&base, path).status, 200, "{url}");
    }
    assert_eq!(get(&base, "/crl/nobody.json").status, 404);
    let unknown = vigil_cmd(Some(&config))
        .args(["crl", "urls", "--issuer", "nobody"])
        .output()
        .expect("run");
    assert!(!unknown.status.success());

    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut full_numbers = Vec::new();
    for k in 0..shards {
        let path = format!("/crl/demo/{k}.crl");
        let r = get(&base, &path);
        assert_eq!(r.status, 200, "{path}");
        let text = openssl_verify(&r.body, &pki.join("ca.pem"), dir);
        assert!(
            text.contains("X509v3 Issuing Distribution Point: critical"),
            "{text}"
        );
        let uri_lines: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("URI:"))
            .collect();
        assert_eq!(
            uri_lines,
            [
                format!("{base_url}{path}"),
                format!("{base_url}/crl/demo/{k}.delta.crl")
            ],
            "IDP, then freshest CRL"
        );
        for (s, reason) in revoked_in_text(&text) {
            assert!(
                seen.insert(s.clone(), reason).is_none(),
                "{s} in two shards"
            );
        }
        full_numbers.push(crl_number(&r.body));

        let d = get(&base, &format!("/crl/demo/{k}.delta.crl"));
        assert_eq!(d.status, 200);
        let dtext = openssl_verify(&d.body, &pki.join("ca.pem"), dir);
        assert!(
            dtext.contains("X509v3 Delta CRL Indicator: critical"),
            "{dtext}"
        );
        assert!(
            dtext.contains(&full_numbers[k as usize].to_string()),
            "{dtext}"
        );
        assert!(dtext.contains(&format!("URI:{base_url}{path}")), "{dtext}");
        assert!(dtext.contains("No Revoked Certificates"), "{dtext}");
    }
    assert_eq!(
        seen, expected,
        "the shards together list exactly the view's revocations"
    );
    let status = vigil_run(&config, &["status", "--issuer", "demo"]);
    assert!(
        status.contains(&format!("{} revoked", expected.len())),
        "{status}"
    );
    assert_eq!(get(&base, "/crl/demo.crl").status, 404, "no unsharded CRL");
    assert_eq!(get(&base, &format!("/crl/demo/{shards}.crl")).status, 404);

    // a revocation reaches its shard's delta CRL within the publish delay
    let good = pki.join("certs/good-1.pem");
    let serial = cert_serial(&good);
    vigil_run(
        &config,
        &[
            "revoke",
            "--issuer",
            "demo",
            "--cert",
            &good.display().to_string(),
            "--reason",
            "superseded",
        ],
    );
    let started = Instant::now();
    let found = loop {
        let hit = (0..shards).find_map(|k| {
            let d = get(&base, &format!("/crl/demo/{k}.delta.crl"));
            let text = openssl_verify(&d.body, &pki.join("ca.pem"), dir);
            let r = revoked_in_text(&text);
            r.get(&serial).map(|reason| (k, reason.clone(), text))
        });
        if let Some(h) = hit {
            break h;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "delta never listed {serial}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(found.1, "Superseded");
    assert!(
        found
            .2
            .contains(&full_numbers[found.0 as usize].to_string()),
        "delta against the served complete CRL"
    );
}

#[test]
fn redis_store_refuses_stale_numbers_and_fenced_leaders() {
    use vigil::crl::CrlId;
    use vigil::crl_service::redis_store::{Fence, Region, StoreOutcome};
    let tmp = tmpdir();
    let redis = Redis::start(tmp.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let a = Region::new("a", &redis.url(), Duration::from_secs(2)).expect("region");
        let id = CrlId {
            issuer: "t".into(),
            shard: None,
            delta: false,
        };
        let der = bytes::Bytes::from_static(b"not really a CRL");
        let t1 = a
            .lease("one", Duration::from_secs(1))
            .await
            .expect("lease")
            .expect("held");
        assert_eq!(
            a.lease("two", Duration::from_secs(1)).await.expect("lease"),
            None
        );
        assert_eq!(
            a.lease("one", Duration::from_secs(1)).await.expect("renew"),
            Some(t1)
        );
        let one = Fence {
            region: "a".into(),
            token: t1,
            lease_value: format!("one {t1}"),
        };
        let store = |n: u64, f: Option<Fence>| {
            let (a, id, der) = (&a, id.clone(), der.clone());
            async move {
                a.store(&id, der, n, 0, None, f.as_ref(), None)
                    .await
                    .expect("store")
            }
        };
        assert_eq!(store(100, Some(one.clone())).await, StoreOutcome::Stored);
        assert!(matches!(store(100, None).await, StoreOutcome::Stale(_)));
        assert!(matches!(
            store(99, Some(one.clone())).await,
            StoreOutcome::Stale(_)
        ));
        // a numeric comparison, not a string one: 1000 > 999 although "1000" < "999"
        assert_eq!(store(999, None).await, StoreOutcome::Stored);
        assert_eq!(store(1000, None).await, StoreOutcome::Stored);

        // "one" pauses past its lease; "two" takes it and stores
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let t2 = a
            .lease("two", Duration::from_secs(5))
            .await
            .expect("lease")
            .expect("held");
        assert!(t2 > t1);
        let two = Fence {
            region: "a".into(),
            token: t2,
            lease_value: format!("two {t2}"),
        };
        assert_eq!(store(2000, Some(two)).await, StoreOutcome::Stored);
        // the paused leader wakes with a higher number: refused in its own region...
        assert_eq!(
            store(3000, Some(one.clone())).await,
            StoreOutcome::NotLeader
        );
        // ...and fenced where the lease is not checked (another region's Redis)
        let elsewhere = Fence {
            region: "a".into(),
            ..one.clone()
        };
        let b = Region::new("b", &redis.url(), Duration::from_secs(2)).expect("region");
        let r = b
            .store(&id, der.clone(), 3000, 0, None, Some(&elsewhere), None)
            .await
            .expect("store");
        assert!(matches!(r, StoreOutcome::Fenced(_)), "{r:?}");
        assert_eq!(
            a.numbers(std::slice::from_ref(&id)).await.expect("numbers"),
            vec![Some(2000)]
        );

        // a delta must name the stored complete CRL as its base, and shares its sequence
        let delta = id.delta();
        let r = a
            .store(&delta, der.clone(), 2001, 0, Some(1000), None, None)
            .await
            .expect("store");
        assert_eq!(r, StoreOutcome::BaseMismatch);
        let r = a
            .store(&delta, der.clone(), 2000, 0, Some(2000), None, None)
            .await
            .expect("store");
        assert!(matches!(r, StoreOutcome::Stale(_)), "{r:?}");
        let r = a
            .store(&delta, der.clone(), 2001, 0, Some(2000), None, None)
            .await
            .expect("store");
        assert_eq!(r, StoreOutcome::Stored);
        assert!(matches!(store(2001, None).await, StoreOutcome::Stale(_)));
        let fetched = a.fetch(&delta).await.expect("fetch");
        assert_eq!(fetched, Some((2001, der.to_vec())));

        // Two leaders (one lease per region) checked their complete CRLs against the same
        // stored one; the second to arrive, though higher-numbered, was checked against an
        // older CRL than the one now stored, so it loses.
        let scope = CrlId {
            issuer: "u".into(),
            shard: None,
            delta: false,
        };
        let checked = |n: u64, against: u64| {
            let (a, id, der) = (&a, scope.clone(), der.clone());
            async move {
                a.store(&id, der, n, 0, None, None, Some(against))
                    .await
                    .expect("store")
            }
        };
        assert_eq!(checked(5000, 0).await, StoreOutcome::Stored);
        assert_eq!(checked(6000, 5000).await, StoreOutcome::Stored);
        assert_eq!(
            checked(7000, 5000).await,
            StoreOutcome::Changed("6000".into())
        );
        assert_eq!(checked(7000, 6000).await, StoreOutcome::Stored);
        // a first CRL of a scope (checked against none) loses to one already stored
        assert_eq!(checked(8000, 0).await, StoreOutcome::Changed("7000".into()));

        // The region loses its data (FLUSHALL: a Redis restarted empty): the next lease's
        // token is still above every token handed out before, so the region's new leader is
        // not fenced in the regions that remember the old tokens.
        redis.cli(&["FLUSHALL"]);
        // What another region's Redis still remembers of region a's leaders.
        redis.cli(&["HSET", "vigil:crl:fence", "a", &t2.to_string()]);
        let t3 = a
            .lease("three", Duration::from_secs(5))
            .await
            .expect("lease")
            .expect("held");
        assert!(t3 > t2, "token after the flush {t3} <= {t2}");
        let three = Fence {
            region: "a".into(),
            token: t3,
            lease_value: format!("three {t3}"),
        };
        let r = b
            .store(&id, der.clone(), 2500, 0, None, Some(&three), None)
            .await
            .expect("store");
        assert_eq!(r, StoreOutcome::Stored);
    });
}

/// A publisher whose view lacks revocations the stored CRL lists (here: a `vigil crl publish`
/// over an empty journal, the same as a view rebuilt from a flushed Redis) must not replace
/// that CRL: it is refused, saying how many serials it would drop, and the stored CRL stays.
#[test]
fn a_complete_crl_that_drops_entries_is_refused() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let pki = demo_pki(dir);
    let redis = Redis::start(dir);
    let config = |name: &str| {
        write_config(
            &dir.join(format!("{name}.toml")),
            &format!(
                "data_dir = \"{d}/{name}\"\n[status]\njournal = \"{d}/{name}.vj\"\n\
                 [crl]\nredis_timeout = \"2s\"\n[[region]]\nname = \"a\"\nredis = \"{u}\"\n{issuer}",
                d = dir.display(),
                u = redis.url(),
                issuer = issuer_toml(&pki),
            ),
        )
    };
    let full = config("full");
    for n in 1..=5 {
        vigil_run(
            &full,
            &[
                "revoke",
                "--issuer",
                "demo",
                "--serial",
                &format!("5E{n:02X}"),
            ],
        );
    }
    let out = vigil_run(&full, &["crl", "publish"]);
    assert!(out.contains("5 entries"), "{out}");
    let stored = redis.cli(&["HGET", "vigil:crl:doc:demo", "number"]);

    let empty = config("empty");
    let out = vigil_cmd(Some(&empty))
        .args(["crl", "publish"])
        .output()
        .expect("run vigil");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an empty CRL was published: {err}");
    assert!(
        err.contains("would drop 5 serial(s)"),
        "the refusal does not say what it would drop: {err}"
    );
    assert_eq!(
        redis.cli(&["HGET", "vigil:crl:doc:demo", "number"]),
        stored,
        "the stored CRL was replaced"
    );
    // With the revocations known again (one more on top), the next CRL lists all six.
    vigil_run(&full, &["revoke", "--issuer", "demo", "--serial", "5E06"]);
    let out = vigil_run(&full, &["crl", "publish"]);
    assert!(out.contains("6 entries"), "{out}");
}

/// Polls every Redis and every replica, recording violations of "never backwards".
struct Monitor {
    stop: Arc<AtomicBool>,
    violations: Arc<Mutex<Vec<String>>>,
    served: Arc<Mutex<BTreeMap<String, u64>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    fn start(redis_ports: Vec<u16>, replicas: Vec<String>) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let served = Arc::new(Mutex::new(BTreeMap::new()));
        let (s, v, sv) = (stop.clone(), violations.clone(), served.clone());
        let thread = std::thread::spawn(move || {
            let mut in_redis: BTreeMap<u16, u64> = BTreeMap::new();
            while !s.load(Ordering::Relaxed) {
                for &port in &redis_ports {
                    let r = Redis { proc: None, port };
                    if let Ok(n) = r
                        .cli(&["HGET", "vigil:crl:doc:demo.crl", "number"])
                        .parse::<u64>()
                    {
                        let last = in_redis.entry(port).or_insert(0);
                        if n < *last {
                            v.lock()
                                .expect("lock")
                                .push(format!("redis {port}: {n} after {last}"));
                        }
                        *last = n.max(*last);
                    }
                }
                for base in &replicas {
                    if let Ok(r) = request(base, "GET", "/crl/demo.crl", &[]) {
                        if r.status != 200 {
                            continue;
                        }
                        let n = crl_number(&r.body);
                        let mut served = sv.lock().expect("lock");
                        let last = served.entry(base.clone()).or_insert(0);
                        if n < *last {
                            v.lock()
                                .expect("lock")
                                .push(format!("{base}: served {n} after {last}"));
                        }
                        *last = n.max(*last);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Monitor {
            stop,
            violations,
            served,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.violations.lock().expect("lock").clone()
    }
}

#[test]
fn two_regions_competing_publishers_failover_and_redis_outage() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let pki = demo_pki(dir);
    let mut ra = Redis::start(dir);
    let mut rb = Redis::start(dir);
    let delay = Duration::from_millis(1000);
    let refresh = Duration::from_millis(300);
    let lease_ttl = Duration::from_secs(2);
    let config = |name: &str, region: &str, port: u16| {
        write_config(
            &dir.join(format!("{name}.toml")),
            &format!(
                "data_dir = \"{d}/{name}\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n\
                 [status]\njournal = \"{p}/journal.vj\"\njournal_poll = \"100ms\"\n\
                 [crl]\nregion = \"{region}\"\nlease_ttl = \"2s\"\ninterval = \"2s\"\n\
                 publish_delay = \"1s\"\nrefresh = \"300ms\"\nredis_timeout = \"500ms\"\n\
                 [[region]]\nname = \"a\"\nredis = \"{ua}\"\n\
                 [[region]]\nname = \"b\"\nredis = \"{ub}\"\n{issuer}",
                d = dir.display(),
                p = pki.display(),
                ua = ra.url(),
                ub = rb.url(),
                issuer = issuer_toml(&pki),
            ),
        )
    };
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let configs = [
        config("a1", "a", ports[0]),
        config("a2", "a", ports[1]),
        config("b1", "b", ports[2]),
    ];
    let mut replicas: Vec<(Proc, String)> = configs
        .iter()
        .enumerate()
        .map(|(i, c)| serve(Some(c), dir, &dir.join(format!("replica{i}.log"))))
        .collect();
    let bases: Vec<String> = replicas.iter().map(|(_, b)| b.clone()).collect();

    // every replica serves a CRL that openssl verifies
    let deadline = Instant::now() + Duration::from_secs(10);
    for base in &bases {
        loop {
            let r = get(base, "/crl/demo.crl");
            if r.status == 200 {
                openssl_verify(&r.body, &pki.join("ca.pem"), dir);
                break;
            }
            assert!(Instant::now() < deadline, "{base} serves no CRL");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let monitor = Monitor::start(vec![ra.port, rb.port], bases.clone());

    // pause region a's leader past its lease; the other replica of region a takes over
    let lease_of = |r: &Redis| r.cli(&["GET", "vigil:crl:lease"]);
    let leader_a = lease_of(&ra);
    let leader_pid: u32 = leader_a
        .strip_prefix("pid")
        .and_then(|s| s.split('-').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("lease value {leader_a:?}"));
    let paused = replicas
        .iter()
        .position(|(p, _)| p.pid() == leader_pid)
        .expect("the leader is a replica");
    assert!(paused < 2, "region a's lease is held by a region a replica");
    replicas[paused].0.signal("-STOP");
    let before = Instant::now();
    let taken_over = loop {
        let now_leader = lease_of(&ra);
        if !now_leader.is_empty() && now_leader != leader_a {
            break now_leader;
        }
        assert!(before.elapsed() < Duration::from_secs(10), "no failover");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!taken_over.starts_with(&format!("pid{leader_pid}-")));
    std::thread::sleep(lease_ttl * 2); // the new leader publishes while the old one sleeps
    replicas[paused].0.signal("-CONT");
    std::thread::sleep(lease_ttl * 2); // the old leader wakes, tries, is fenced or stands down

    // a revocation is served by every replica within the publish delay plus one refresh
    let revoke = |cert: &Path, reason: &str| {
        let cert = cert.display().to_string();
        let args = [
            "revoke", "--issuer", "demo", "--cert", &cert, "--reason", reason,
        ];
        vigil_run(&configs[0], &args);
    };
    let good = pki.join("certs/good-2.pem");
    let serial = cert_serial(&good);
    revoke(&good, "keyCompromise");
    let revoked_at = Instant::now();
    // slack: the journal poll, building and storing, process scheduling on a busy machine
    let bound = delay + refresh + Duration::from_millis(1500);
    let mut pending: BTreeSet<String> = bases.iter().cloned().collect();
    while !pending.is_empty() {
        for base in pending.clone() {
            let r = get(&base, "/crl/demo.crl");
            if r.status == 200 {
                let text = openssl_verify(&r.body, &pki.join("ca.pem"), dir);
                if revoked_in_text(&text).get(&serial).map(String::as_str) == Some("Key Compromise")
                {
                    pending.remove(&base);
                }
            }
        }
        assert!(
            revoked_at.elapsed() < bound,
            "{pending:?} did not serve the revocation within {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Region b is down while a revocation is published (its store fails), then comes back
    // empty, and nothing more is revoked: it gets the CRL it missed by itself (here the new
    // lease in b, the retry after a failed store or the 2 s interval, whichever comes first;
    // the redis-rollback drill is the case where only the retry does).
    let port_b = rb.port;
    rb.kill();
    let missed = pki.join("certs/good-1.pem");
    let missed_serial = cert_serial(&missed);
    revoke(&missed, "superseded");
    let deadline = Instant::now() + bound;
    while !bases.iter().all(|b| {
        let r = get(b, "/crl/demo.crl");
        r.status == 200
            && revoked_in_text(&openssl_verify(&r.body, &pki.join("ca.pem"), dir))
                .contains_key(&missed_serial)
    }) {
        assert!(
            Instant::now() < deadline,
            "the revocation was not served while b was down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    rb = Redis::start_on(dir, port_b);
    let back = Instant::now();
    loop {
        let stored: Option<Vec<u8>> = redis::Client::open(rb.url())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| {
                redis::cmd("HGET")
                    .arg("vigil:crl:doc:demo.crl")
                    .arg("der")
                    .query(&mut c)
            })
            .ok()
            .flatten();
        if let Some(der) = stored
            && revoked_in_text(&openssl_verify(&der, &pki.join("ca.pem"), dir))
                .contains_key(&missed_serial)
        {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "region b never got the CRL it missed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // both Redis die: every replica keeps serving its last CRL with correct headers
    let last: Vec<Vec<u8>> = bases.iter().map(|b| get(b, "/crl/demo.crl").body).collect();
    ra.kill();
    rb.kill();
    std::thread::sleep(refresh * 3);
    let now = std::time::SystemTime::now();
    for (base, prev) in bases.iter().zip(&last) {
        let r = get(base, "/crl/demo.crl");
        assert_eq!(r.status, 200, "{base}");
        assert_eq!(r.header("content-type"), "application/pkix-crl");
        assert!(crl_number(&r.body) >= crl_number(prev));
        openssl_verify(&r.body, &pki.join("ca.pem"), dir);
        let max_age: u64 = r
            .header("cache-control")
            .split(',')
            .find_map(|p| p.trim().strip_prefix("max-age="))
            .and_then(|v| v.parse().ok())
            .expect("max-age");
        let expires = httpdate::parse_http_date(r.header("expires")).expect("expires");
        let to_next_update = expires.duration_since(now).unwrap_or_default().as_secs();
        assert!(
            max_age <= to_next_update + 1,
            "max-age {max_age} beyond nextUpdate"
        );
        let cond = request(
            base,
            "GET",
            "/crl/demo.crl",
            &[("If-None-Match", r.header("etag"))],
        )
        .expect("conditional");
        assert_eq!(cond.status, 304);
    }

    // a restarted replica serves its disk copy while every Redis is down
    let (old, base_b) = replicas.remove(2);
    let served_before = get(&base_b, "/crl/demo.crl").body;
    drop(old);
    let (_b1, base_b2) = serve(Some(&configs[2]), dir, &dir.join("replica2-restart.log"));
    assert_eq!(base_b2, base_b);
    let r = get(&base_b2, "/crl/demo.crl");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, served_before, "the disk copy, not an older CRL");

    let served = monitor.served.lock().expect("lock").clone();
    let violations = monitor.finish();
    assert!(
        violations.is_empty(),
        "numbers went backwards: {violations:?}"
    );
    assert_eq!(served.len(), 3, "every replica was observed: {served:?}");
}

/// The CRL region `r` stores at `/crl/demo.crl`, if any.
fn stored_crl(r: &Redis) -> Option<Vec<u8>> {
    redis::Client::open(r.url())
        .and_then(|c| c.get_connection())
        .and_then(|mut c| {
            redis::cmd("HGET")
                .arg("vigil:crl:doc:demo.crl")
                .arg("der")
                .query(&mut c)
        })
        .ok()
        .flatten()
}

/// Region a's Redis is put back to an old copy of its CRL keys (as a restore from an old RDB
/// does) while it stays up: no store fails, nothing more is revoked, and the complete CRLs are
/// due only in an hour. The refresher sees the region hold an older CRL than the one served,
/// and the leader stores the complete CRL there again.
#[test]
fn a_region_restored_to_an_older_crl_gets_the_served_one_back() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let pki = demo_pki(dir);
    let ra = Redis::start(dir);
    let rb = Redis::start(dir);
    let port = free_port();
    let config = write_config(
        &dir.join("a1.toml"),
        &format!(
            "data_dir = \"{d}/a1\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n\
             [status]\njournal = \"{p}/journal.vj\"\njournal_poll = \"100ms\"\n\
             [crl]\nregion = \"a\"\nlease_ttl = \"2s\"\ninterval = \"1h\"\n\
             publish_delay = \"1s\"\nrefresh = \"300ms\"\nredis_timeout = \"500ms\"\n\
             [[region]]\nname = \"a\"\nredis = \"{ua}\"\n\
             [[region]]\nname = \"b\"\nredis = \"{ub}\"\n{issuer}",
            d = dir.display(),
            p = pki.display(),
            ua = ra.url(),
            ub = rb.url(),
            issuer = issuer_toml(&pki),
        ),
    );
    let (_replica, base) = serve(Some(&config), dir, &dir.join("a1.log"));
    let ca = pki.join("ca.pem");
    let lists = |der: &[u8], serial: &str| {
        revoked_in_text(&openssl_verify(der, &ca, dir)).contains_key(serial)
    };
    assert!(
        eventually(Duration::from_secs(10), || stored_crl(&ra).is_some()),
        "region a never stored a CRL"
    );
    // The old copy: every CRL key of region a, before the revocation.
    let mut conn = redis::Client::open(ra.url())
        .and_then(|c| c.get_connection())
        .expect("redis a");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("vigil:crl:*")
        .query(&mut conn)
        .expect("KEYS");
    let keys: Vec<String> = keys
        .into_iter()
        .filter(|k| k.starts_with("vigil:crl:doc:") || k.starts_with("vigil:crl:seq:"))
        .collect();
    assert!(keys.len() >= 2, "CRL keys of region a: {keys:?}");
    let old: Vec<(String, Vec<u8>)> = keys
        .iter()
        .map(|k| {
            let dump: Vec<u8> = redis::cmd("DUMP").arg(k).query(&mut conn).expect("DUMP");
            (k.clone(), dump)
        })
        .collect();
    let old_number = crl_number(&stored_crl(&ra).expect("stored"));

    let cert = pki.join("certs/good-1.pem");
    let serial = cert_serial(&cert);
    let cert_arg = cert.display().to_string();
    vigil_run(
        &config,
        &[
            "revoke",
            "--issuer",
            "demo",
            "--cert",
            &cert_arg,
            "--reason",
            "keyCompromise",
        ],
    );
    for (name, r) in [("a", &ra), ("b", &rb)] {
        assert!(
            eventually(Duration::from_secs(10), || stored_crl(r)
                .is_some_and(|d| lists(&d, &serial))),
            "region {name} never stored the revocation"
        );
    }
    let served = get(&base, "/crl/demo.crl");
    assert!(lists(&served.body, &serial));

    for (k, dump) in &old {
        let _: () = redis::cmd("RESTORE")
            .arg(k)
            .arg(0)
            .arg(&dump[..])
            .arg("REPLACE")
            .query(&mut conn)
            .expect("RESTORE");
    }
    let restored = stored_crl(&ra).expect("restored");
    assert_eq!(crl_number(&restored), old_number, "the old copy is back");
    assert!(
        !lists(&restored, &serial),
        "the old copy lacks the revocation"
    );

    // Two refreshes to see the lag, one store retry, a build: well within 10 s.
    assert!(
        eventually(Duration::from_secs(10), || stored_crl(&ra).is_some_and(
            |d| lists(&d, &serial) && crl_number(&d) > crl_number(&served.body)
        )),
        "region a kept the old CRL, which lacks the revocation"
    );
    // The replica said why it published again.
    let metrics = get(&base, "/metrics");
    let text = String::from_utf8_lossy(&metrics.body);
    let reported = text
        .lines()
        .find(|l| l.starts_with("vigil_crl_region_lagging_total") && l.contains("region=\"a\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(reported >= 1.0, "no lag of region a counted:\n{text}");
    // The replica itself served the revocation throughout.
    assert!(lists(&get(&base, "/crl/demo.crl").body, &serial));
}

fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// `openssl ocsp` for one certificate of the demo PKI against `base`; returns its output.
fn ocsp_check(pki: &Path, base: &str, cert: &Path) -> String {
    let o = Command::new("openssl")
        .arg("ocsp")
        .arg("-issuer")
        .arg(pki.join("ca.pem"))
        .arg("-CAfile")
        .arg(pki.join("ca.pem"))
        .arg("-cert")
        .arg(cert)
        .args(["-url", base])
        .output()
        .expect("openssl ocsp");
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(text.contains("Response verify OK"), "{text}");
    text
}

#[test]
fn holds_answer_certificate_hold_and_releases_leave_the_crl_by_delta() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let pki = demo_pki(dir);
    let port = free_port();
    let common = format!(
        "data_dir = \"{d}/node\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n\
         [status]\njournal = \"{p}/journal.vj\"\njournal_poll = \"50ms\"\n\
         [crl]\ndelta = true\nbase_url = \"http://127.0.0.1:{port}\"\n\
         publish_delay = \"300ms\"\nrefresh = \"200ms\"\n{issuer}",
        d = dir.display(),
        p = pki.display(),
        issuer = issuer_toml(&pki),
    );
    let strict = write_config(&dir.join("strict.toml"), &common);
    let config = write_config(
        &dir.join("vigil.toml"),
        &format!("{common}allow_hold = true\n"),
    );
    let good = pki.join("certs/good-1.pem");
    let cert = good.display().to_string();
    let serial = cert_serial(&good);

    // no holds where the policy does not allow them, and never as a revocation reason
    for (cfg, args, why) in [
        (
            &strict,
            vec!["hold", "--issuer", "demo", "--cert", &cert],
            "does not allow holds",
        ),
        (
            &config,
            vec![
                "revoke",
                "--issuer",
                "demo",
                "--cert",
                &cert,
                "--reason",
                "certificateHold",
            ],
            "certificateHold is not a revocation reason",
        ),
        (
            &config,
            vec!["release", "--issuer", "demo", "--cert", &cert],
            "not on hold",
        ),
    ] {
        let out = vigil_cmd(Some(cfg)).args(&args).output().expect("vigil");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why),
            "{args:?}: {err}"
        );
    }

    let (_p, base) = serve(Some(&config), dir, &dir.join("vigil.log"));
    assert!(ocsp_check(&pki, &base, &good).contains(": good"));
    let full = get(&base, "/crl/demo.crl");
    let mut full_number = crl_number(&full.body);
    assert!(
        !revoked_in_text(&openssl_verify(&full.body, &pki.join("ca.pem"), dir))
            .contains_key(&serial)
    );

    let delta_lists = |want: &str, full_number: u64| {
        let started = Instant::now();
        loop {
            let d = get(&base, "/crl/demo.delta.crl");
            let text = openssl_verify(&d.body, &pki.join("ca.pem"), dir);
            if revoked_in_text(&text).get(&serial).map(String::as_str) == Some(want) {
                assert!(text.contains(&full_number.to_string()), "{text}");
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the delta CRL never listed {serial} as {want}: {text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // on hold: revoked with reason certificateHold, in OCSP and on the delta CRL
    let out = vigil_run(&config, &["hold", "--issuer", "demo", "--cert", &cert]);
    assert!(out.starts_with("held "), "{out}");
    assert!(
        eventually(Duration::from_secs(5), || {
            let t = ocsp_check(&pki, &base, &good);
            t.contains(": revoked") && t.contains("Reason: certificateHold")
        }),
        "OCSP never answered certificateHold"
    );
    delta_lists("Certificate Hold", full_number);
    // a complete CRL published now lists the hold
    let out = vigil_run(&config, &["crl", "publish"]);
    assert!(out.contains("stored"), "{out}");
    assert!(
        eventually(Duration::from_secs(5), || {
            let full = get(&base, "/crl/demo.crl");
            let text = openssl_verify(&full.body, &pki.join("ca.pem"), dir);
            full_number = crl_number(&full.body);
            revoked_in_text(&text).get(&serial).map(String::as_str) == Some("Certificate Hold")
        }),
        "the complete CRL never listed the hold"
    );
    // the same journal read under each policy
    let status = vigil_run(
        &config,
        &["status", "--issuer", "demo", "--serial", &serial],
    );
    assert!(status.contains("(certificateHold)"), "{status}");
    let status = vigil_run(
        &strict,
        &["status", "--issuer", "demo", "--serial", &serial],
    );
    assert!(status.trim_end().ends_with(": good"), "{status}");

    // released: good again, and the delta removes it from the base CRL
    let out = vigil_run(&config, &["release", "--issuer", "demo", "--cert", &cert]);
    assert!(out.starts_with("released "), "{out}");
    assert!(
        eventually(Duration::from_secs(5), || ocsp_check(&pki, &base, &good)
            .contains(": good")),
        "OCSP still answers the hold after the release"
    );
    delta_lists("Remove From CRL", full_number);

    // a hold made permanent: revoked for good, whatever releases follow
    vigil_run(&config, &["hold", "--issuer", "demo", "--cert", &cert]);
    vigil_run(
        &config,
        &[
            "revoke",
            "--issuer",
            "demo",
            "--cert",
            &cert,
            "--reason",
            "keyCompromise",
        ],
    );
    let out = vigil_cmd(Some(&config))
        .args(["release", "--issuer", "demo", "--cert", &cert])
        .output()
        .expect("vigil");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("revocation is final"),
        "a revoked certificate cannot be released: {err}"
    );
    assert!(
        eventually(Duration::from_secs(5), || ocsp_check(&pki, &base, &good)
            .contains("Reason: keyCompromise")),
        "the revocation must replace the hold"
    );
    delta_lists("Key Compromise", full_number);
}

// === pkilint ===

/// `lint_crl` (pkilint, which `.ci/run` installs from PyPI into `$VIGIL_TOOLS/bin`, default
/// `~/.cache/vigil-tools/bin`); never a same-named program found elsewhere on PATH.
fn lint_crl() -> PathBuf {
    let tools = match std::env::var_os("VIGIL_TOOLS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/vigil-tools"),
    };
    let p = tools.join("bin/lint_crl");
    assert!(
        p.exists(),
        "{} is missing: `bash .ci/run` installs pkilint there (or set VIGIL_TOOLS)",
        p.display()
    );
    p
}

/// pkilint's findings on `der` under the CA/Browser Forum BR CRL profile, every severity down
/// to DEBUG, one `validator: code (severity)` line each. pkilint lists findings only: a CRL
/// with none gives `{"results": []}`.
fn pkilint_br_findings(der: &[u8], dir: &Path, name: &str) -> Vec<String> {
    let f = dir.join(format!("pkilint-{}.crl", name.replace('/', "_")));
    std::fs::write(&f, der).expect("write crl");
    let o = Command::new(lint_crl())
        .args(["lint", "-t", "CRL", "-p", "BR", "-s", "DEBUG", "-f", "JSON"])
        .arg(&f)
        .output()
        .expect("run lint_crl");
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "lint_crl gave no JSON ({e}): {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    let mut findings = Vec::new();
    for r in out["results"].as_array().expect("results") {
        for d in r["finding_descriptions"].as_array().into_iter().flatten() {
            findings.push(format!(
                "{} @ {}: {} ({}) {}",
                r["validator"].as_str().unwrap_or("?"),
                r["node_path"].as_str().unwrap_or("?"),
                d["code"].as_str().unwrap_or("?"),
                d["severity"].as_str().unwrap_or("?"),
                d["message"].as_str().unwrap_or("")
            ));
        }
        if r["finding_descriptions"].as_array().is_none() {
            findings.push(r.to_string());
        }
    }
    // pkilint's exit status counts findings; it must agree with what was parsed
    assert_eq!(
        o.status.success(),
        findings.is_empty(),
        "{findings:?} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    findings
}

#[test]
fn every_shard_and_delta_passes_pkilint_br_and_openssl() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let pki = demo_pki(dir);

    // The control: pkilint must find what the BR forbid in a CRL `openssl ca` makes without a
    // CRL number, AKI or version, valid for 30 days (over the BR's 10).
    let ctl = dir.join("control");
    std::fs::create_dir_all(&ctl).expect("mkdir");
    std::fs::write(ctl.join("index.txt"), "").expect("index");
    std::fs::write(
        ctl.join("ca.cnf"),
        "[ca]\ndefault_ca = c\n[c]\ndatabase = index.txt\ndefault_md = sha256\ndefault_crl_days = 30\n",
    )
    .expect("cnf");
    let made = Command::new("openssl")
        .args([
            "ca", "-config", "ca.cnf", "-gencrl", "-out", "bad.crl", "-keyfile",
        ])
        .arg(pki.join("ca.key"))
        .arg("-cert")
        .arg(pki.join("ca.pem"))
        .current_dir(&ctl)
        .output()
        .expect("openssl ca");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let bad = std::fs::read(ctl.join("bad.crl")).expect("control CRL");
    let control = pkilint_br_findings(&bad, dir, "control");
    for code in [
        "pkix.crl_number_missing",
        "pkix.authority_key_identifier_missing",
        "cabf.crl_invalid_validity_period",
    ] {
        assert!(
            control.iter().any(|f| f.contains(code)),
            "pkilint missed {code}: {control:?}"
        );
    }

    let port = free_port();
    let base_url = format!("http://127.0.0.1:{port}");
    let shards = 3u16;
    let config = write_config(
        &dir.join("vigil.toml"),
        &format!(
            "data_dir = \"{d}/node\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n\
             [status]\njournal = \"{p}/journal.vj\"\njournal_poll = \"50ms\"\n\
             [crl]\nbase_url = \"{base_url}\"\n\
             publish_delay = \"400ms\"\nrefresh = \"200ms\"\n{issuer}\
             crl = {{ shards = {shards}, delta = true, validity = \"2d\", interval = \"12h\" }}\n",
            d = dir.display(),
            p = pki.display(),
            issuer = issuer_toml(&pki),
        ),
    );
    // the issuer's own settings are held to the Baseline Requirements too
    let text = std::fs::read_to_string(&config).expect("config");
    for (from, to, says) in [
        (
            "validity = \"2d\"",
            "validity = \"11d\"",
            "issuer[0].crl.validity",
        ),
        ("interval = \"12h\"", "interval = \"8d\"", "seven days"),
    ] {
        let bad = write_config(&dir.join("bad.toml"), &text.replace(from, to));
        let out = vigil_cmd(Some(&bad))
            .arg("check-config")
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{to}: {err}");
    }
    // Revocations with every reason the BR allow for subscriber certificates (§7.2.2: none,
    // keyCompromise, affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn)
    let reasons = [
        "",
        "keyCompromise",
        "affiliationChanged",
        "superseded",
        "cessationOfOperation",
        "privilegeWithdrawn",
    ];
    let mut index = String::new();
    for n in 1..=60u64 {
        let serial = format!(
            "{:016X}",
            n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 1 | 1 << 56
        );
        let reason = reasons[n as usize % reasons.len()];
        let rev = if reason.is_empty() {
            "250101000000Z".to_owned()
        } else {
            format!("250101000000Z,{reason}")
        };
        index.push_str(&format!(
            "R\t301231235959Z\t{rev}\t{serial}\tunknown\t/CN=c{n}\n"
        ));
    }
    let idx = dir.join("index.txt");
    std::fs::write(&idx, index).expect("index");
    vigil_run(
        &config,
        &[
            "import",
            "--openssl-index",
            &idx.display().to_string(),
            "--issuer",
            "demo",
        ],
    );
    vigil_run(&config, &["crl", "publish"]);
    let (_p, base) = serve(Some(&config), dir, &dir.join("vigil.log"));

    // a revocation while serving, so that one delta lists an entry
    let good = pki.join("certs/good-1.pem");
    let serial = cert_serial(&good);
    vigil_run(
        &config,
        &[
            "revoke",
            "--issuer",
            "demo",
            "--cert",
            &good.display().to_string(),
            "--reason",
            "keyCompromise",
        ],
    );
    let ca = pki.join("ca.pem");
    assert!(
        eventually(Duration::from_secs(10), || (0..shards).any(|k| {
            let d = get(&base, &format!("/crl/demo/{k}.delta.crl"));
            d.status == 200
                && revoked_in_text(&openssl_verify(&d.body, &ca, dir)).contains_key(&serial)
        })),
        "no delta CRL listed {serial}"
    );

    let mut listed = 0;
    for k in 0..shards {
        for path in [format!("demo/{k}.crl"), format!("demo/{k}.delta.crl")] {
            let r = get(&base, &format!("/crl/{path}"));
            assert_eq!(r.status, 200, "{path}");
            let text = openssl_verify(&r.body, &ca, dir);
            listed += revoked_in_text(&text).len();
            let p = vigil::crl::lint::parse(&r.body).expect("parse");
            assert_eq!(
                p.next_update.map(|n| n - p.this_update),
                Some(2 * 86_400),
                "{path}: the issuer's validity, not [crl]'s"
            );
            let findings = pkilint_br_findings(&r.body, dir, &path);
            assert!(findings.is_empty(), "pkilint BR on {path}: {findings:#?}");
        }
    }
    assert!(
        listed > 60,
        "the linted CRLs hold the revocations ({listed} entries)"
    );
    assert_eq!(
        get(&base, "/crl/demo.crl").status,
        404,
        "[crl] alone is unsharded; the issuer is not"
    );
    let listed: Vec<String> =
        serde_json::from_slice(&get(&base, "/crl/demo.json").body).expect("JSON");
    assert_eq!(listed.len(), shards as usize);
}
