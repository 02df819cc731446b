//! The multi-region feed against real `redis-server` processes and the real `vigil` binary.
//!
//! Each test starts its own Redis servers on free loopback ports and its own replicas, in its
//! own temporary directory, and stops them when it ends (also on failure, through `Drop`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const VIGIL: &str = env!("CARGO_BIN_EXE_vigil");
const TOKEN: &str = "test-admin-token-0123456789";
const WAIT: Duration = Duration::from_secs(15);

// === Redis ===

struct Redis {
    port: u16,
    dir: PathBuf,
    persistent: bool,
    extra: Vec<String>,
    /// `requirepass`; the helper's own connections authenticate with it.
    password: Option<String>,
    child: Option<Child>,
}

impl Redis {
    /// A Redis on a free port; `persistent` turns on the AOF with fsync on every write.
    fn start(root: &Path, name: &str, persistent: bool) -> Redis {
        let port = free_port();
        let dir = root.join(format!("redis-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Redis {
            port,
            dir,
            persistent,
            extra: Vec::new(),
            password: None,
            child: None,
        };
        r.restart();
        r
    }

    /// A Redis on a free port that requires `password` (`requirepass`).
    fn start_with_password(root: &Path, name: &str, password: &str) -> Redis {
        let mut r = Redis::not_started(root, name);
        r.extra = vec!["--requirepass".into(), password.into()];
        r.password = Some(password.into());
        r.restart();
        r
    }

    /// A Redis that also listens with TLS on a second port and requires client certificates;
    /// returns it and the TLS port.
    fn start_tls(root: &Path, name: &str, tls: &TlsFiles) -> (Redis, u16) {
        let tls_port = free_port();
        let dir = root.join(format!("redis-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Redis {
            port: free_port(),
            dir,
            persistent: false,
            extra: [
                "--tls-port".to_owned(),
                tls_port.to_string(),
                "--tls-cert-file".into(),
                tls.server_cert.display().to_string(),
                "--tls-key-file".into(),
                tls.server_key.display().to_string(),
                "--tls-ca-cert-file".into(),
                tls.ca.display().to_string(),
                "--tls-auth-clients".into(),
                "yes".into(),
            ]
            .to_vec(),
            password: None,
            child: None,
        };
        r.restart();
        (r, tls_port)
    }

    /// A Redis that will listen on a port nobody listens on yet.
    fn not_started(root: &Path, name: &str) -> Redis {
        let dir = root.join(format!("redis-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        Redis {
            port: free_port(),
            dir,
            persistent: false,
            extra: Vec::new(),
            password: None,
            child: None,
        }
    }

    fn restart(&mut self) {
        assert!(self.child.is_none());
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--stream-node-max-entries", "4"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        self.child = Some(cmd.spawn().expect("redis-server is installed"));
        let deadline = Instant::now() + WAIT;
        let ready = || {
            self.connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        };
        while !ready() {
            assert!(
                Instant::now() < deadline,
                "redis on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: a crash, not a clean shutdown.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The `[[region]]` lines that reach this server directly.
    fn region(&self) -> String {
        format!("redis = {:?}", self.url())
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let url = match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => self.url(),
        };
        redis::Client::open(url)?.get_connection_with_timeout(Duration::from_millis(500))
    }

    fn cmd<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        cmd.query(&mut self.connection().unwrap()).unwrap()
    }

    /// The record the snapshot holds for `serial` of the only issuer.
    fn snapshot_record(&self, issuer_hex: &str, serial: &[u8]) -> Option<Vec<u8>> {
        self.cmd(
            redis::cmd("HGET")
                .arg(format!("vigil:snap:{issuer_hex}"))
                .arg(serial),
        )
    }

    /// Status events in the stream (heartbeats left out).
    fn event_entries(&self) -> usize {
        let v: redis::Value = self.cmd(redis::cmd("XRANGE").arg("vigil:feed").arg("-").arg("+"));
        let redis::Value::Array(entries) = v else {
            return 0;
        };
        entries.iter().filter(|e| is_event_entry(e)).count()
    }
}

fn is_event_entry(e: &redis::Value) -> bool {
    let redis::Value::Array(parts) = e else {
        return false;
    };
    let Some(redis::Value::Array(fields)) = parts.get(1) else {
        return false;
    };
    matches!(fields.first(), Some(redis::Value::BulkString(f)) if f == b"e" || f == b"p")
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Sentinel monitoring one Redis as service `m`.
struct Sentinel {
    port: u16,
    child: Child,
}

impl Sentinel {
    fn start(root: &Path, monitored: &Redis) -> Sentinel {
        Sentinel::start_with(root, monitored, "", None)
    }

    /// A Sentinel with `conf` added to its configuration (e.g. `requirepass`, ACL `user`
    /// lines); the helper's own check authenticates with `password` (the default user's). It
    /// authenticates to `monitored` with the server's password (`sentinel auth-pass`).
    fn start_with(root: &Path, monitored: &Redis, conf: &str, password: Option<&str>) -> Sentinel {
        let port = free_port();
        let path = root.join(format!("sentinel-{port}.conf"));
        let mut text = format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor m 127.0.0.1 {} 1\nsentinel down-after-milliseconds m 5000\n",
            root.display(),
            monitored.port
        );
        if let Some(p) = &monitored.password {
            text.push_str(&format!("sentinel auth-pass m {p}\n"));
        }
        text.push_str(conf);
        std::fs::write(&path, text).unwrap();
        let child = Command::new("redis-server")
            .arg(&path)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = Sentinel { port, child };
        let url = match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{port}/"),
            None => format!("redis://127.0.0.1:{port}/"),
        };
        wait_until("the sentinel knows the master", || {
            redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(300)))
                .and_then(|mut c| {
                    redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg("m")
                        .query::<Vec<String>>(&mut c)
                })
                .is_ok_and(|a| a.len() == 2)
        });
        s
    }

    fn region(&self) -> String {
        format!(
            "sentinels = [\"redis://127.0.0.1:{}\"]\nservice = \"m\"",
            self.port
        )
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
struct TlsFiles {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl TlsFiles {
    fn make(root: &Path) -> TlsFiles {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair,
        };
        let dir = root.join("tls");
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "vigil test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, &ca_key);
        let leaf = |names: Vec<String>, cn: &str, eku| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(names).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![eku];
            let cert = p.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            "redis",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(Vec::new(), "vigil", ExtendedKeyUsagePurpose::ClientAuth);
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        std::fs::write(&files.ca, ca_cert.pem()).unwrap();
        std::fs::write(&files.server_cert, server_cert).unwrap();
        std::fs::write(&files.server_key, server_key).unwrap();
        std::fs::write(&files.client_cert, client_cert).unwrap();
        std::fs::write(&files.client_key, client_key).unwrap();
        files
    }
}

// === configuration and the demo PKI ===

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn make(root: &Path) -> Pki {
        let dir = root.join("pki");
        let out = Command::new(VIGIL)
            .arg("check-config")
            .env("VIGIL_DATA_DIR", &dir)
            .env_remove("VIGIL_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Pki { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

#[derive(Clone)]
struct Feed<'a> {
    regions: Vec<(&'a str, String)>,
    quorum: usize,
    extra: &'a str,
}

fn write_config(root: &Path, name: &str, pki: &Pki, feed: &Feed, admin: bool) -> PathBuf {
    let mut text = format!(
        "data_dir = {:?}\n[status]\norigin = {name:?}\n[feed]\nquorum = {}\nreconnect_min = \"50ms\"\nreconnect_max = \"300ms\"\nconnect_timeout = \"300ms\"\nwrite_timeout = \"1s\"\nrepair_interval = \"200ms\"\nheartbeat_interval = \"200ms\"\ncheckpoint_interval = \"1s\"\n{}\n",
        root.join(name),
        feed.quorum,
        feed.extra
    );
    for (region, url) in &feed.regions {
        text.push_str(&format!("[[region]]\nname = {region:?}\n{url}\n"));
    }
    if admin {
        let token = root.join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        text.push_str(&format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {token:?}\n"
        ));
    }
    text.push_str(&format!(
        "[[issuer]]\nname = \"demo\"\ncertificate = {:?}\nresponder_certificate = {:?}\nresponder_key = {:?}\n",
        pki.ca(),
        pki.dir.join("responder.pem"),
        pki.dir.join("responder.key")
    ));
    let path = root.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

// === replicas and the CLI ===

struct Replica {
    child: Child,
    addr: String,
    admin: Option<String>,
    stderr: PathBuf,
}

impl Replica {
    fn start(config: &Path) -> Replica {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stderr = config.with_extension(format!("{n}.log"));
        let mut child = Command::new(VIGIL)
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env("VIGIL_LISTEN", "127.0.0.1:0")
            .env("VIGIL_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut admin = None;
        let addr = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("vigil exited: {}", read(&stderr)))
                .unwrap();
            if let Some(rest) = line.strip_prefix("vigil admin API on http://") {
                admin = Some(rest.trim_end_matches('/').to_owned());
            }
            if let Some(rest) = line.strip_prefix("vigil listening on http://") {
                break rest.split('/').next().unwrap().to_owned();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Replica {
            child,
            addr,
            admin,
            stderr,
        }
    }

    /// SIGTERM and wait: the replica drains and writes its checkpoint.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "replica did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The OCSP status of `serial` (hex), through `openssl ocsp`.
    fn ocsp(&self, pki: &Pki, serial: &str) -> String {
        let out = Command::new("openssl")
            .arg("ocsp")
            .arg("-issuer")
            .arg(pki.ca())
            .arg("-serial")
            .arg(format!("0x{serial}"))
            .arg("-url")
            .arg(format!("http://{}/", self.addr))
            .arg("-CAfile")
            .arg(pki.ca())
            .arg("-no_nonce")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.split_once(": ").map(|(_, s)| s.trim().to_owned()))
            .unwrap_or_else(|| format!("no answer: {}", String::from_utf8_lossy(&out.stderr)))
    }

    fn wait_for(&self, pki: &Pki, serial: &str, want: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.ocsp(pki, serial);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica {} answers {got:?} for {serial}, expected {want:?}\n{}",
                self.addr,
                read(&self.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let (_, body) = http(&self.addr, "GET", "/metrics", None, "");
        body.lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn vigil(config: &Path, args: &[&str]) -> Output {
    Command::new(VIGIL)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("VIGIL_LOG", "warn")
        .output()
        .unwrap()
}

fn revoke(config: &Path, serial: &str) -> Output {
    vigil(
        config,
        &[
            "revoke",
            "--issuer",
            "demo",
            "--serial",
            serial,
            "--reason",
            "keyCompromise",
        ],
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The snapshot key suffix of the demo issuer, and the DER content octets of a hex serial.
fn issuer_hex(config: &Path) -> String {
    let cfg = vigil::config::Config::load(Some(config)).unwrap();
    let id = vigil::app::issuer_id(&cfg, "demo").unwrap();
    vigil::status::hex(&id.0)
}

fn der(serial: &str) -> Vec<u8> {
    vigil::status::Serial::from_hex(serial)
        .unwrap()
        .as_der_content()
        .to_vec()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.1 exchange: status code and body.
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: vigil\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

// === tests ===

/// Two regions, three replicas (two in region a, one in b). A revocation reaches every
/// replica; with region a's Redis killed, a write through b still reaches region a's replicas;
/// when a comes back (its data kept by its AOF) the cursors resume: every event in a's stream is
/// read exactly once, and a catches up with what it missed.
#[test]
fn two_regions_three_replicas_survive_the_loss_of_a_region() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let pki = Pki::make(root);
    let mut a = Redis::start(root, "a", true);
    let b = Redis::start(root, "b", false);
    let feed = Feed {
        regions: vec![("a", a.region()), ("b", b.region())],
        quorum: 2,
        extra: "",
    };
    let replicas: Vec<Replica> = ["a1", "a2", "b1"]
        .iter()
        .map(|n| Replica::start(&write_config(root, n, &pki, &feed, false)))
        .collect();
    let both = write_config(root, "writer-q2", &pki, &feed, false);
    let one = write_config(
        root,
        "writer-q1",
        &pki,
        &Feed {
            quorum: 1,
            ..feed.clone()
        },
        false,
    );
    let issuer = issuer_hex(&both);
    // Every replica has bootstrapped from both (empty) regions: from now on it reads every
    // event from the streams.
    for r in &replicas {
        wait_until("the replica bootstrapped from both regions", || {
            r.metric("vigil_feed_bootstraps_total", &["region=\"a\""]) == 1.0
                && r.metric("vigil_feed_bootstraps_total", &["region=\"b\""]) == 1.0
        });
    }

    let out = revoke(&both, "5A01");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("acknowledged by region(s) a, b (quorum 2)"),
        "{}",
        text(&out)
    );
    for r in &replicas {
        r.wait_for(&pki, "5A01", "revoked");
    }

    a.kill();
    let out = revoke(&one, "5A02");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("missed by a ("), "{}", text(&out));
    for r in &replicas[..2] {
        r.wait_for(&pki, "5A02", "revoked");
    }
    replicas[2].wait_for(&pki, "5A02", "revoked");

    a.restart();
    wait_until("region a holds the event it missed", || {
        a.snapshot_record(&issuer, &der("5A02")).is_some()
    });
    // Region a's stream now holds both revocations, each once; every replica reads each entry
    // of it exactly once (cursors resumed: no re-read, no loss, no second bootstrap). A third
    // revocation, written to both regions after them, is the barrier: a replica that has read
    // it from region a has read everything before it there, and a re-read would have counted.
    wait_until("region a's stream holds both events", || {
        a.event_entries() == 2
    });
    let out = revoke(&both, "5A03");
    assert!(out.status.success(), "{}", text(&out));
    for r in &replicas {
        let read_from_a = || {
            r.metric(
                "vigil_feed_entries_total",
                &["region=\"a\"", "result=\"changed\""],
            ) + r.metric(
                "vigil_feed_entries_total",
                &["region=\"a\"", "result=\"unchanged\""],
            )
        };
        let deadline = Instant::now() + WAIT;
        while read_from_a() < 3.0 {
            assert!(
                Instant::now() < deadline,
                "replica {} read {} entries of region a\n{}",
                r.addr,
                read_from_a(),
                read(&r.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            read_from_a(),
            3.0,
            "entries of region a read by {} (the two revocations and the barrier)",
            r.addr
        );
        assert_eq!(
            r.metric("vigil_feed_bootstraps_total", &["region=\"a\""]),
            1.0,
            "region a was bootstrapped again"
        );
        assert_eq!(r.ocsp(&pki, "5A01"), "revoked");
        assert_eq!(r.ocsp(&pki, "5A02"), "revoked");
        assert_eq!(r.ocsp(&pki, "5A03"), "revoked");
    }
}

/// Quorum 2 with one of two regions down: the write fails, names the region, and nothing is
/// written anywhere. Quorum 1: acknowledged, and the region catches up once it is up (here it
/// comes up empty, so repair copies the whole view into it as well as handing off the hint).
#[test]
fn quorum_is_enforced_and_a_missed_region_catches_up() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let pki = Pki::make(root);
    let mut a = Redis::not_started(root, "a");
    let b = Redis::start(root, "b", false);
    let feed = Feed {
        regions: vec![("a", a.region()), ("b", b.region())],
        quorum: 2,
        extra: "",
    };
    let replica = Replica::start(&write_config(root, "r1", &pki, &feed, false));
    let both = write_config(root, "writer-q2", &pki, &feed, false);
    let one = write_config(
        root,
        "writer-q1",
        &pki,
        &Feed {
            quorum: 1,
            ..feed.clone()
        },
        false,
    );
    let issuer = issuer_hex(&both);

    let out = revoke(&both, "6B01");
    assert!(!out.status.success(), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("NOT acknowledged"), "{msg}");
    assert!(
        msg.contains("quorum is 2") && msg.contains("failed: a ("),
        "{msg}"
    );
    assert!(msg.contains("nothing was written"), "{msg}");
    assert_eq!(b.snapshot_record(&issuer, &der("6B01")), None);
    assert_eq!(b.event_entries(), 0);
    // A barrier rather than a pause: a revocation written after the refused one, once the
    // replica answers it, shows the replica has read region b past anything written before.
    let out = revoke(&one, "6B00");
    assert!(out.status.success(), "{}", text(&out));
    replica.wait_for(&pki, "6B00", "revoked");
    assert_eq!(replica.ocsp(&pki, "6B01"), "unknown");

    let out = revoke(&one, "6B01");
    assert!(out.status.success(), "{}", text(&out));
    replica.wait_for(&pki, "6B01", "revoked");

    a.restart();
    wait_until("region a catches up", || {
        a.snapshot_record(&issuer, &der("6B01")).is_some()
    });
    let status = vigil(&both, &["status", "--issuer", "demo", "--serial", "6B01"]);
    let s = text(&status);
    assert!(
        s.contains("region a: revoked") && s.contains("region b: revoked"),
        "{s}"
    );

    // A writer that died after reaching b and before leaving a hint for a: the regions' digests
    // disagree, stay so, and anti-entropy merges the replica's view into a.
    use vigil::status::{CertRecord, Event, EventKind, RevocationReason, Serial};
    let event = Event {
        issuer: vigil::feed::consume::parse_issuer_hex(&issuer).unwrap(),
        serial: Serial::from_hex("6B02").unwrap(),
        kind: EventKind::Revoked {
            time: 1_700_000_000,
            reason: RevocationReason::KeyCompromise,
        },
        origin: "crashed-writer".into(),
        created_at_ms: 0,
    };
    let _: redis::Value = redis::Script::new(vigil::feed::scripts::MERGE_LUA)
        .key("vigil:feed")
        .key(format!("vigil:snap:{issuer}"))
        .key("vigil:issuers")
        .key("vigil:digest")
        .arg(1000)
        .arg(&issuer)
        .arg(der("6B02"))
        .arg(&CertRecord::from_event(&event.kind).to_bytes()[..])
        .arg(event.to_bytes())
        .invoke(&mut b.connection().unwrap())
        .unwrap();
    replica.wait_for(&pki, "6B02", "revoked");
    wait_until("anti-entropy brings the event to region a", || {
        a.snapshot_record(&issuer, &der("6B02")).is_some()
    });
    let digest = |r: &Redis| -> Option<String> {
        r.cmd(redis::cmd("HGET").arg("vigil:digest").arg(&issuer))
    };
    wait_until("both regions hold the same digest", || {
        digest(&a).is_some() && digest(&a) == digest(&b)
    });
}

/// A replica that starts after the stream was trimmed bootstraps from the snapshot, then tails;
/// stopped, and restarted with every Redis down, it answers from its checkpoint, and `/readyz`
/// says why it is not ready once `feed.max_staleness` has passed. A damaged checkpoint is
/// ignored with a warning and the view rebuilt from the feed.
#[test]
fn bootstrap_after_trimming_and_restart_from_the_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let pki = Pki::make(root);
    let mut a = Redis::start(root, "a", true);
    let feed = Feed {
        regions: vec![("a", a.region())],
        quorum: 1,
        extra: "maxlen = 6\nmax_staleness = \"2s\"",
    };
    let config = write_config(root, "r1", &pki, &feed, false);

    // 40 certificates, all revoked: 80 events through a stream trimmed to about 6 entries.
    let mut index = String::new();
    for i in 0..40 {
        index.push_str(&format!(
            "R\t300101000000Z\t250101000000Z,keyCompromise\t7C{i:02X}\tunknown\t/CN=t{i}\n"
        ));
    }
    std::fs::write(root.join("index.txt"), index).unwrap();
    let out = vigil(
        &config,
        &[
            "import",
            "--issuer",
            "demo",
            "--openssl-index",
            root.join("index.txt").to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let len: usize = a.cmd(redis::cmd("XLEN").arg("vigil:feed"));
    assert!(len < 20, "stream not trimmed: {len} entries");

    let replica = Replica::start(&config);
    for serial in ["7C00", "7C13", "7C27"] {
        replica.wait_for(&pki, serial, "revoked");
    }
    let out = revoke(&config, "7D00");
    assert!(out.status.success(), "{}", text(&out));
    replica.wait_for(&pki, "7D00", "revoked");
    replica.stop();

    a.kill();
    let replica = Replica::start(&config);
    for serial in ["7C00", "7C27", "7D00"] {
        assert_eq!(
            replica.ocsp(&pki, serial),
            "revoked",
            "{serial} from the checkpoint"
        );
    }
    assert_eq!(replica.ocsp(&pki, "7E00"), "unknown");
    wait_until("readiness fails for staleness", || {
        let (code, body) = http(&replica.addr, "GET", "/readyz", None, "");
        code == 503 && body.contains("no feed region has delivered") && body.contains("a: ")
    });
    replica.stop();

    // A damaged checkpoint: warned about, and the view is rebuilt from the snapshot.
    let cp = root.join("r1").join("checkpoint.vcp");
    let mut bytes = std::fs::read(&cp).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&cp, bytes).unwrap();
    a.restart();
    let replica = Replica::start(&config);
    replica.wait_for(&pki, "7C13", "revoked");
    assert!(read(&replica.stderr).contains("ignoring the checkpoint"));
}

/// The admin API: no token or a wrong one is refused with 401 and nothing is written (not to
/// the feed, not to the audit log); the right token revokes, audited.
#[test]
fn admin_api_requires_the_token() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let pki = Pki::make(root);
    let a = Redis::start(root, "a", false);
    let feed = Feed {
        regions: vec![("a", a.region())],
        quorum: 1,
        extra: "",
    };
    let config = write_config(root, "r1", &pki, &feed, true);
    let replica = Replica::start(&config);
    let admin = replica.admin.clone().expect("admin listener");
    let issuer = issuer_hex(&config);
    let body = r#"{"issuer":"demo","serial":"8E01","reason":"keyCompromise"}"#;

    for token in [None, Some("wrong-token-0123456789"), Some("")] {
        let (code, _) = http(&admin, "POST", "/v1/revoke", token, body);
        assert_eq!(code, 401, "token {token:?}");
    }
    let (code, _) = http(&admin, "GET", "/v1/status/demo/8E01", Some("nope"), "");
    assert_eq!(code, 401);
    assert_eq!(a.snapshot_record(&issuer, &der("8E01")), None);
    assert_eq!(a.event_entries(), 0);
    let audit = root.join("r1").join("audit.log");
    assert_eq!(read(&audit), "", "audit log written for a refused request");
    assert_eq!(replica.ocsp(&pki, "8E01"), "unknown");

    let (code, resp) = http(&admin, "POST", "/v1/revoke", Some(TOKEN), body);
    assert_eq!(code, 200, "{resp}");
    assert!(resp.contains("\"acknowledged\":true"), "{resp}");
    replica.wait_for(&pki, "8E01", "revoked");
    let (code, resp) = http(&admin, "GET", "/v1/status/demo/8E01", Some(TOKEN), "");
    assert_eq!(code, 200);
    assert!(
        resp.contains("\"status\":\"revoked\"") && resp.contains("keyCompromise"),
        "{resp}"
    );
    let log = read(&audit);
    assert_eq!(log.lines().count(), 2, "{log}");
    assert!(log.contains("\"phase\":\"request\"") && log.contains("\"outcome\":\"acknowledged\""));
    assert!(!log.contains(TOKEN));

    let (code, _) = http(
        &admin,
        "POST",
        "/v1/revoke",
        Some(TOKEN),
        &"x".repeat(10_000),
    );
    assert_eq!(code, 413);
    let (code, _) = http(
        &admin,
        "POST",
        "/v1/revoke",
        Some(TOKEN),
        "{\"issuer\":\"nope\"}",
    );
    assert_eq!(code, 400);
}

/// Holds through the admin API, across two regions: every replica of an issuer that allows
/// holds answers revoked while held and good after the release; a replica whose policy does
/// not allow holds never answers the hold; both regions' snapshots end in the same record.
#[test]
fn holds_and_releases_reach_every_region_and_follow_the_issuer_policy() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let pki = Pki::make(root);
    let a = Redis::start(root, "a", false);
    let b = Redis::start(root, "b", false);
    let feed = Feed {
        regions: vec![("a", a.region()), ("b", b.region())],
        quorum: 2,
        extra: "",
    };
    let allow = |p: PathBuf| {
        let mut t = read(&p);
        t.push_str("allow_hold = true\n");
        std::fs::write(&p, t).unwrap();
        p
    };
    let writer = Replica::start(&allow(write_config(root, "w", &pki, &feed, true)));
    let reader = Replica::start(&allow(write_config(root, "r", &pki, &feed, false)));
    let strict = Replica::start(&write_config(root, "s", &pki, &feed, false));
    let admin = writer.admin.clone().expect("admin listener");
    let issuer = issuer_hex(&write_config(root, "x", &pki, &feed, false));
    let target = r#"{"issuer":"demo","serial":"7B01"}"#;

    let (code, resp) = http(
        &admin,
        "POST",
        "/v1/issue",
        Some(TOKEN),
        r#"{"issuer":"demo","serial":"7B01","not_after":"2030-01-01T00:00:00Z"}"#,
    );
    assert_eq!(code, 200, "{resp}");
    for r in [&writer, &reader, &strict] {
        r.wait_for(&pki, "7B01", "good");
    }
    let (code, resp) = http(&admin, "POST", "/v1/release", Some(TOKEN), target);
    assert_eq!(code, 400, "release of a certificate not on hold: {resp}");
    assert!(resp.contains("not on hold"), "{resp}");
    let (code, _) = http(
        &admin,
        "POST",
        "/v1/hold",
        Some("wrong-token-0123456789"),
        target,
    );
    assert_eq!(code, 401);
    assert_eq!(a.event_entries(), 1, "a refused hold wrote nothing");

    let (code, resp) = http(&admin, "POST", "/v1/hold", Some(TOKEN), target);
    assert_eq!(code, 200, "{resp}");
    for r in [&writer, &reader] {
        r.wait_for(&pki, "7B01", "revoked");
    }
    let (_, status) = http(&admin, "GET", "/v1/status/demo/7B01", Some(TOKEN), "");
    assert!(status.contains("certificateHold"), "{status}");
    // the strict replica has read both events from both regions, yet answers good
    wait_until("the strict replica read the hold", || {
        strict.metric("vigil_feed_entries_total", &["result=\"changed\""]) >= 2.0
            && strict.metric("vigil_feed_entries_total", &[]) >= 4.0
    });
    assert_eq!(strict.ocsp(&pki, "7B01"), "good");

    let (code, resp) = http(&admin, "POST", "/v1/release", Some(TOKEN), target);
    assert_eq!(code, 200, "{resp}");
    for r in [&writer, &reader, &strict] {
        r.wait_for(&pki, "7B01", "good");
    }
    // both regions hold the same released record: 0xFE, the release later than the hold
    let ra = a
        .snapshot_record(&issuer, &der("7B01"))
        .expect("record in a");
    let rb = b
        .snapshot_record(&issuer, &der("7B01"))
        .expect("record in b");
    assert_eq!(ra, rb);
    assert_eq!(ra.len(), 9);
    assert_eq!(ra[8], 0xFE, "released");
    // a repeated release is idempotent: acknowledged, and nothing new in the snapshots
    let (code, resp) = http(&admin, "POST", "/v1/release", Some(TOKEN), target);
    assert_eq!(code, 200, "{resp}");
    assert_eq!(a.snapshot_record(&issuer, &der("7B01")), Some(ra));
}

/// A Sentinel-managed region and a region reached over TLS (`rediss://`, verified against a
/// private CA, with a client certificate) carry a write at quorum 2 to a replica.
#[test]
fn sentinel_and_tls_regions() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let pki = Pki::make(root);
    let tls = TlsFiles::make(root);
    let s = Redis::start(root, "s", false);
    let sentinel = Sentinel::start(root, &s);
    let (t, tls_port) = Redis::start_tls(root, "t", &tls);
    let t_region = format!(
        "redis = \"rediss://127.0.0.1:{tls_port}/\"\nca_file = {:?}\nclient_certificate = {:?}\nclient_key = {:?}",
        tls.ca, tls.client_cert, tls.client_key
    );
    let feed = Feed {
        regions: vec![("s", sentinel.region()), ("t", t_region)],
        quorum: 2,
        extra: "",
    };
    let config = write_config(root, "r1", &pki, &feed, false);
    let replica = Replica::start(&config);
    let issuer = issuer_hex(&config);

    let out = revoke(&config, "9F01");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("region(s) s, t (quorum 2)"),
        "{}",
        text(&out)
    );
    replica.wait_for(&pki, "9F01", "revoked");
    assert!(s.snapshot_record(&issuer, &der("9F01")).is_some());
    assert!(t.snapshot_record(&issuer, &der("9F01")).is_some());
    wait_until("both consumers are connected", || {
        replica.metric("vigil_feed_region_connected", &["region=\"s\""]) == 1.0
            && replica.metric("vigil_feed_region_connected", &["region=\"t\""]) == 1.0
    });
}

/// Sentinels reached over TLS (`rediss://`) are verified against the region's `ca_file` and
/// shown its client certificate, as the data servers are; without `ca_file` the private CA is
/// not trusted and the region stays unreachable.
#[test]
fn sentinels_over_tls_use_the_region_ca_and_client_certificate() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let pki = Pki::make(root);
    let tls = TlsFiles::make(root);
    let s = Redis::start(root, "s", false);
    let tls_port = free_port();
    let conf = format!(
        "tls-port {tls_port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients yes\n",
        tls.server_cert.display(),
        tls.server_key.display(),
        tls.ca.display()
    );
    let _sentinel = Sentinel::start_with(root, &s, &conf, None);
    let region = |with_ca: bool| {
        let mut r = format!(
            "sentinels = [\"rediss://127.0.0.1:{tls_port}\"]\nservice = \"m\"\nclient_certificate = {:?}\nclient_key = {:?}\n",
            tls.client_cert, tls.client_key
        );
        if with_ca {
            r.push_str(&format!("ca_file = {:?}\n", tls.ca));
        }
        r
    };
    let feed = |with_ca| Feed {
        regions: vec![("s", region(with_ca))],
        quorum: 1,
        extra: "",
    };
    let untrusted = write_config(root, "no-ca", &pki, &feed(false), false);
    let out = revoke(&untrusted, "9F11");
    assert!(
        !out.status.success(),
        "a Sentinel with an untrusted certificate: {}",
        text(&out)
    );

    let config = write_config(root, "r1", &pki, &feed(true), false);
    let replica = Replica::start(&config);
    let issuer = issuer_hex(&config);
    let out = revoke(&config, "9F12");
    assert!(out.status.success(), "{}", text(&out));
    replica.wait_for(&pki, "9F12", "revoked");
    assert!(s.snapshot_record(&issuer, &der("9F12")).is_some());
    assert!(s.snapshot_record(&issuer, &der("9F11")).is_none());
}

/// A Sentinel that requires authentication (`requirepass` for the default user, and an ACL
/// user allowed only what FEED.md documents), in front of a data server with a password of its
/// own. The Sentinel credentials work
/// from `sentinel_username` + `sentinel_password_file` and from `VIGIL_SENTINEL_PASSWORD_<REGION>`;
/// with a wrong or no Sentinel password the region is unreachable, the write is refused naming
/// the region and why, and the replica's `/readyz` says why. The passwords appear in no output.
#[test]
fn sentinel_with_authentication() {
    const DATA_PASS: &str = "data-pass-0d1e";
    const SENTINEL_PASS: &str = "sentinel-pass-5e7";
    const USER_PASS: &str = "sentinel-user-pass-9a2";
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let pki = Pki::make(root);
    let s = Redis::start_with_password(root, "s", DATA_PASS);
    let sentinel = Sentinel::start_with(
        root,
        &s,
        &format!(
            "requirepass {SENTINEL_PASS}\nuser vigil-sentinel on >{USER_PASS} -@all +sentinel|masters +role +ping\n"
        ),
        Some(SENTINEL_PASS),
    );
    let secret = |name: &str, value: &str| {
        let p = root.join(name);
        std::fs::write(&p, format!("{value}\n")).unwrap();
        p
    };
    let data_pass = secret("data-pass", DATA_PASS);
    let region = |sentinel_lines: &str| Feed {
        regions: vec![(
            "s",
            format!(
                "{}\npassword_file = {data_pass:?}\n{sentinel_lines}",
                sentinel.region()
            ),
        )],
        quorum: 1,
        extra: "",
    };
    let issuer = {
        let user_pass = secret("sentinel-user-pass", USER_PASS);
        let right = write_config(
            root,
            "right",
            &pki,
            &region(&format!(
                "sentinel_username = \"vigil-sentinel\"\nsentinel_password_file = {user_pass:?}"
            )),
            false,
        );
        let issuer = issuer_hex(&right);
        let replica = Replica::start(&right);
        let out = revoke(&right, "AB01");
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("region(s) s (quorum 1)"),
            "{}",
            text(&out)
        );
        assert!(s.snapshot_record(&issuer, &der("AB01")).is_some());
        replica.wait_for(&pki, "AB01", "revoked");
        wait_until("the consumer is connected", || {
            replica.metric("vigil_feed_region_connected", &["region=\"s\""]) == 1.0
        });
        let (code, body) = http(&replica.addr, "GET", "/readyz", None, "");
        assert_eq!(code, 200, "{body}");
        issuer
    };

    // The default user's password from the environment; the file wins over it, so a right
    // variable does not rescue a wrong file.
    let from_env = write_config(root, "env", &pki, &region(""), false);
    let revoke_with_env = |config: &Path, serial: &str, value: &str| {
        Command::new(VIGIL)
            .arg("--config")
            .arg(config)
            .args(["revoke", "--issuer", "demo", "--serial", serial])
            .env("VIGIL_LOG", "warn")
            .env("VIGIL_SENTINEL_PASSWORD_S", value)
            .output()
            .unwrap()
    };
    let out = revoke_with_env(&from_env, "AB02", SENTINEL_PASS);
    assert!(out.status.success(), "{}", text(&out));
    assert!(s.snapshot_record(&issuer, &der("AB02")).is_some());

    let wrong_pass = secret("sentinel-wrong-pass", "not-the-password");
    let wrong = write_config(
        root,
        "wrong",
        &pki,
        &region(&format!("sentinel_password_file = {wrong_pass:?}")),
        false,
    );
    let refused = "failed: s (the Sentinels refuse vigil (check sentinel_username and sentinel_password_file or VIGIL_SENTINEL_PASSWORD_S)";
    let wrong_out = text(&revoke_with_env(&wrong, "AB03", SENTINEL_PASS));
    assert!(wrong_out.contains("NOT acknowledged"), "{wrong_out}");
    assert!(
        wrong_out.contains(refused) && wrong_out.contains("Password authentication failed"),
        "{wrong_out}"
    );
    assert_eq!(s.snapshot_record(&issuer, &der("AB03")), None);

    // Without a Sentinel password, the data server's is not offered to the Sentinel.
    let missing_out = text(&revoke(&from_env, "AB04"));
    assert!(missing_out.contains("NOT acknowledged"), "{missing_out}");
    assert!(
        missing_out.contains(refused) && missing_out.contains("NOAUTH"),
        "{missing_out}"
    );
    assert_eq!(s.snapshot_record(&issuer, &der("AB04")), None);

    // The Sentinel accepts vigil, the data server does not: not blamed on the Sentinels.
    let wrong_data = write_config(
        root,
        "wrong-data",
        &pki,
        &Feed {
            regions: vec![(
                "s",
                format!("{}\npassword_file = {wrong_pass:?}", sentinel.region()),
            )],
            quorum: 1,
            extra: "",
        },
        false,
    );
    let data_out = text(&revoke_with_env(&wrong_data, "AB05", SENTINEL_PASS));
    assert!(data_out.contains("NOT acknowledged"), "{data_out}");
    assert!(
        data_out.contains("failed: s (") && !data_out.contains("Sentinels refuse"),
        "{data_out}"
    );
    assert_eq!(s.snapshot_record(&issuer, &der("AB05")), None);
    for m in [&wrong_out, &missing_out, &data_out] {
        for p in [DATA_PASS, SENTINEL_PASS, USER_PASS, "not-the-password"] {
            assert!(!m.contains(p), "a password in the output: {m}");
        }
    }

    // A replica with the wrong Sentinel password is not ready and says why.
    let replica = Replica::start(&wrong);
    wait_until("readiness names the Sentinel's refusal", || {
        let (code, body) = http(&replica.addr, "GET", "/readyz", None, "");
        code == 503
            && body.contains("no feed region reached yet (s: ")
            && body.contains("the Sentinels refuse vigil")
            && body.contains("Password authentication failed")
    });
    assert_eq!(
        replica.metric("vigil_feed_region_connected", &["region=\"s\""]),
        0.0
    );
    assert_eq!(replica.ocsp(&pki, "AB01"), "unknown");
    let log = read(&replica.stderr);
    for p in [DATA_PASS, SENTINEL_PASS, USER_PASS, "not-the-password"] {
        assert!(!log.contains(p), "a password in the log: {log}");
    }
}

/// The join the merge script runs in Redis agrees with the one the view runs in Rust.
#[test]
fn lua_join_matches_the_rust_join() {
    use vigil::status::{CertRecord, EventKind, RevocationReason};
    let root = tempfile::tempdir().unwrap();
    let a = Redis::start(root.path(), "a", false);
    let mut conn = a.connection().unwrap();
    let script = redis::Script::new(vigil::feed::scripts::MERGE_LUA);
    let reasons = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
    ];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for serial in 0..400u32 {
        let mut expected: Option<CertRecord> = None;
        for _ in 0..(1 + next(5)) {
            // Revocations are rarer than holds and releases so that many certificates stay
            // live and their hold registers get compared; times collide often on purpose.
            let kind = match next(9) {
                0 | 1 => EventKind::Issued {
                    not_after: 1_000 + next(3) as i64 * 4_000_000_000,
                },
                2 => EventKind::Revoked {
                    time: 100 + next(4) as i64,
                    reason: reasons[next(4) as usize],
                },
                3..=5 => EventKind::Hold {
                    time: 100 + next(4) as i64,
                },
                6 | 7 => EventKind::Release {
                    time: 100 + next(4) as i64,
                },
                // the CRL shard recorded at issuance: 11-byte records, joined by max
                _ => EventKind::CrlShard {
                    scope: match next(4) {
                        0 => vigil::status::CrlScope::Unsharded,
                        k => vigil::status::CrlScope::Shard(k as u16 * 85),
                    },
                },
            };
            let record = CertRecord::from_event(&kind);
            expected = Some(expected.map_or(record, |e| e.join(record)));
            let _: redis::Value = script
                .key("t:feed")
                .key("t:snap")
                .key("t:issuers")
                .key("t:digest")
                .arg(100)
                .arg("00")
                .arg(serial)
                .arg(&record.to_bytes()[..])
                .arg(b"event".as_slice())
                .invoke(&mut conn)
                .unwrap();
        }
        let got: Vec<u8> = redis::cmd("HGET")
            .arg("t:snap")
            .arg(serial)
            .query(&mut conn)
            .unwrap();
        assert_eq!(
            got,
            expected.unwrap().to_bytes().to_vec(),
            "serial {serial}"
        );
    }
}

/// `MERGE_MANY` leaves a region exactly as `MERGE` called once per certificate does: the same
/// records merged both ways into two redis-servers give the same snapshots, issuers, counts,
/// digests (also equal to the digest computed in Rust over the snapshot) and stream entries, in
/// order. The writes mix two issuers (batched per consecutive issuer, as `publish::merge` does),
/// repeat serials within a batch, and include records that change nothing; a second pass of
/// every write changes nothing in either. A batch with one bad record writes nothing.
#[test]
fn lua_merge_many_matches_merge_one_by_one() {
    use vigil::status::view::Digest;
    use vigil::status::{CertRecord, EventKind, RevocationReason, Serial};
    let root = tempfile::tempdir().unwrap();
    let one = Redis::start(root.path(), "one", false);
    let many = Redis::start(root.path(), "many", false);
    let mut c1 = one.connection().unwrap();
    let mut cm = many.connection().unwrap();
    let merge = redis::Script::new(vigil::feed::scripts::MERGE_LUA);
    let merge_many = redis::Script::new(vigil::feed::scripts::MERGE_MANY_LUA);
    let reasons = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::Superseded,
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    // (issuer hex, serial, record, events): runs of one issuer, serials drawn from a small
    // range so that many repeat, some within one batch.
    let issuers = ["aa11", "bb22"];
    let mut writes: Vec<(&str, Serial, CertRecord, Vec<Vec<u8>>)> = Vec::new();
    while writes.len() < 600 {
        let issuer = issuers[next(2) as usize];
        for _ in 0..(1 + next(40)) {
            let serial = Serial::from_hex(&format!("{:X}", 0x100 + next(150))).unwrap();
            let kind = match next(6) {
                0 | 1 => EventKind::Issued {
                    not_after: 1_000 + next(3) as i64 * 4_000_000_000,
                },
                2 => EventKind::Revoked {
                    time: 100 + next(3) as i64,
                    reason: reasons[next(3) as usize],
                },
                3 | 4 => EventKind::Hold {
                    time: 100 + next(3) as i64,
                },
                5 if next(3) == 0 => EventKind::CrlShard {
                    scope: vigil::status::CrlScope::Shard(next(3) as u16),
                },
                _ => EventKind::Release {
                    time: 100 + next(3) as i64,
                },
            };
            let events = (0..1 + next(2))
                .map(|k| format!("event {} {k}", writes.len()).into_bytes())
                .collect();
            writes.push((issuer, serial, CertRecord::from_event(&kind), events));
        }
    }
    // Far above the entries written: nothing is trimmed, so every entry is compared.
    const MAXLEN: u64 = 1_000_000;
    let keys = |issuer: &str| {
        [
            "t:feed".to_string(),
            format!("t:snap:{issuer}"),
            "t:issuers".to_string(),
            "t:digest".to_string(),
        ]
    };
    let (mut changed_one, mut changed_many, mut first_pass) = (0usize, 0usize, 0usize);
    for pass in 0..2 {
        for (issuer, serial, record, events) in &writes {
            let mut call = merge.prepare_invoke();
            for k in keys(issuer) {
                call.key(k);
            }
            call.arg(MAXLEN)
                .arg(*issuer)
                .arg(serial.as_der_content())
                .arg(&record.to_bytes()[..]);
            for e in events {
                call.arg(&e[..]);
            }
            let id: Option<String> = call.invoke(&mut c1).unwrap();
            changed_one += usize::from(id.is_some());
        }
        // Batches of 7 within each run of one issuer: runs split across batches, and batches
        // end where the issuer changes.
        for run in writes.chunk_by(|a, b| a.0 == b.0) {
            for batch in run.chunks(7) {
                let mut call = merge_many.prepare_invoke();
                for k in keys(batch[0].0) {
                    call.key(k);
                }
                let mut batch_digest = Digest::default();
                for (_, serial, record, _) in batch {
                    batch_digest.toggle(serial, record);
                }
                call.arg(MAXLEN).arg(batch[0].0).arg(batch_digest.hex());
                for (_, serial, record, events) in batch {
                    let mut packed = Vec::new();
                    vigil::feed::pack_events(&mut packed, events.iter().map(|e| &e[..]));
                    call.arg(serial.as_der_content())
                        .arg(&record.to_bytes()[..])
                        .arg(events.len())
                        .arg(packed);
                }
                let n: usize = call.invoke(&mut cm).unwrap();
                changed_many += n;
            }
        }
        assert_eq!(changed_one, changed_many, "pass {pass}");
        if pass == 0 {
            assert!(
                changed_one > 150 && changed_one < writes.len(),
                "{changed_one}"
            );
            first_pass = changed_one;
        } else {
            assert_eq!(changed_one, first_pass, "the second pass changed nothing");
        }
    }
    let entries = |c: &mut redis::Connection| -> Vec<Vec<u8>> {
        // (id, [(field, value)]) per entry.
        type Entry = (String, Vec<(String, Vec<u8>)>);
        let reply: Vec<Entry> = redis::cmd("XRANGE")
            .arg("t:feed")
            .arg("-")
            .arg("+")
            .query(c)
            .unwrap();
        reply
            .into_iter()
            .flat_map(|(_, fields)| fields)
            .flat_map(|(k, v)| {
                vigil::feed::field_events(k.as_bytes(), &v)
                    .map(|e| e.expect("well-formed field").to_vec())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let stream_one = entries(&mut c1);
    let stream_many = entries(&mut cm);
    assert!(stream_one.len() > changed_one, "{}", stream_one.len());
    assert_eq!(stream_one, stream_many, "stream entries, in order");
    let mut members: Vec<String> = redis::cmd("SMEMBERS")
        .arg("t:issuers")
        .query(&mut cm)
        .unwrap();
    members.sort();
    assert_eq!(members, issuers);
    for issuer in issuers {
        let snapshot = |c: &mut redis::Connection| -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
            redis::cmd("HGETALL")
                .arg(format!("t:snap:{issuer}"))
                .query(c)
                .unwrap()
        };
        let snap_one = snapshot(&mut c1);
        assert_eq!(snap_one, snapshot(&mut cm), "snapshot of {issuer}");
        let count = |c: &mut redis::Connection| -> usize {
            redis::cmd("HLEN")
                .arg(format!("t:snap:{issuer}"))
                .query(c)
                .unwrap()
        };
        assert_eq!(count(&mut c1), snap_one.len());
        assert_eq!(count(&mut cm), snap_one.len());
        let digest = |c: &mut redis::Connection| -> String {
            redis::cmd("HGET")
                .arg("t:digest")
                .arg(issuer)
                .query(c)
                .unwrap()
        };
        let mut expected = Digest::default();
        for (serial, record) in &snap_one {
            expected.toggle(
                &Serial::from_der_content(serial).unwrap(),
                &CertRecord::from_bytes(record).unwrap(),
            );
        }
        assert_eq!(digest(&mut c1), expected.hex(), "digest of {issuer}");
        assert_eq!(digest(&mut cm), expected.hex(), "digest of {issuer}");
    }

    // A batch with one bad record, last, refuses the whole call: nothing written, in a region
    // that holds data and in an empty one.
    let empty = Redis::start(root.path(), "empty", false);
    let mut ce = empty.connection().unwrap();
    let digest_before: String = redis::cmd("HGET")
        .arg("t:digest")
        .arg("aa11")
        .query(&mut cm)
        .unwrap();
    let revoked = CertRecord::from_event(&EventKind::Revoked {
        time: 50,
        reason: RevocationReason::KeyCompromise,
    });
    let bad_record = [0, 0, 0, 9, 0, 0, 0, 5, 8u8];
    let refused_with =
        |c: &mut redis::Connection, batch_digest: &str, last: (&[u8], &str)| -> String {
            let mut call = merge_many.prepare_invoke();
            for k in keys("aa11") {
                call.key(k);
            }
            call.arg(MAXLEN).arg("aa11").arg(batch_digest);
            for i in 0..5u32 {
                call.arg(format!("new-{i}"))
                    .arg(&revoked.to_bytes()[..])
                    .arg(1)
                    .arg("event");
            }
            call.arg("bad").arg(last.0).arg(last.1).arg("event");
            let r: redis::RedisResult<redis::Value> = call.invoke(c);
            r.expect_err("the batch is refused").to_string()
        };
    let zero = "0".repeat(40);
    let refused = |c: &mut redis::Connection, last: (&[u8], &str)| refused_with(c, &zero, last);
    for c in [&mut cm, &mut ce] {
        // A batch digest that is not 40 lower-case hex digits.
        for bad in ["", "xyz", &"A".repeat(40), &"0".repeat(41)] {
            let err = refused_with(c, bad, (&revoked.to_bytes(), "1"));
            assert!(err.contains("bad arguments"), "{bad:?}: {err}");
        }
        let err = refused(c, (&bad_record, "1"));
        assert!(err.contains("not a revocation reason"), "{err}");
        // An event count the packed events cannot hold ("event" is 5 bytes: at most two
        // lengths), and more events than one entry holds.
        for count in ["3", "201", "0"] {
            let err = refused(c, (&revoked.to_bytes(), count));
            assert!(err.contains("bad arguments"), "{count}: {err}");
        }
        let err = refused(c, (&revoked.to_bytes()[..8], "1"));
        assert!(err.contains("bad arguments"), "{err}");
    }
    assert_eq!(entries(&mut cm), stream_one, "nothing appended");
    let held: Option<Vec<u8>> = redis::cmd("HGET")
        .arg("t:snap:aa11")
        .arg("new-0")
        .query(&mut cm)
        .unwrap();
    assert_eq!(held, None);
    let digest_after: String = redis::cmd("HGET")
        .arg("t:digest")
        .arg("aa11")
        .query(&mut cm)
        .unwrap();
    assert_eq!(digest_after, digest_before);
    let keys_left: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut ce).unwrap();
    assert!(keys_left.is_empty(), "{keys_left:?}");
}

/// Propagation from the acknowledgement of `vigil revoke` (its output line) to `revoked` on
/// every replica of both regions (two in region a, one in region b), over
/// `VIGIL_BENCH_REVOCATIONS` (1 000) revocations at quorum 2; prints p50, p99 and max.
/// Replicas are polled through the admin status endpoint, which reads the same view the OCSP
/// path answers from.
///
/// `cargo test --release --test feed -- --ignored propagation --nocapture`
#[test]
#[ignore = "benchmark"]
fn propagation() {
    let n: usize = std::env::var("VIGIL_BENCH_REVOCATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let pki = Pki::make(root);
    let a = Redis::start(root, "a", false);
    let b = Redis::start(root, "b", false);
    let feed = Feed {
        regions: vec![("a", a.region()), ("b", b.region())],
        quorum: 2,
        extra: "",
    };
    let replicas: Vec<Replica> = ["a1", "a2", "b1"]
        .iter()
        .map(|n| Replica::start(&write_config(root, n, &pki, &feed, true)))
        .collect();
    let writer = write_config(root, "writer", &pki, &feed, false);
    for r in &replicas {
        wait_until("the replica bootstrapped from both regions", || {
            r.metric("vigil_feed_bootstraps_total", &["region=\"a\""]) == 1.0
                && r.metric("vigil_feed_bootstraps_total", &["region=\"b\""]) == 1.0
        });
    }
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let serial = format!("B{i:05X}");
        let mut child = Command::new(VIGIL)
            .arg("--config")
            .arg(&writer)
            .args(["revoke", "--issuer", "demo", "--serial", &serial])
            .env("VIGIL_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let acked = Instant::now();
        assert!(line.contains("acknowledged"), "{line}");
        let mut pending: Vec<&Replica> = replicas.iter().collect();
        while !pending.is_empty() {
            pending.retain(|r| {
                let admin = r.admin.as_deref().unwrap();
                let path = format!("/v1/status/demo/{serial}");
                let (_, body) = http(admin, "GET", &path, Some(TOKEN), "");
                !body.contains("\"status\":\"revoked\"")
            });
            assert!(acked.elapsed() < WAIT, "{serial} did not propagate");
        }
        latencies.push(acked.elapsed());
        assert!(child.wait().unwrap().success());
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    println!(
        "propagation over {n} revocations, 3 replicas, 2 regions: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3
    );
    // Spot-check the OCSP path on every replica.
    for r in &replicas {
        assert_eq!(r.ocsp(&pki, &format!("B{:05X}", n - 1)), "revoked");
    }
}

/// Without `[feed]`, the admin API writes the local journal, which the replica tails.
#[test]
fn admin_api_without_a_feed_writes_the_local_journal() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let pki = Pki::make(root);
    let token = root.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let config = root.join("single.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {token:?}\n[[issuer]]\nname = \"demo\"\ncertificate = {:?}\nresponder_certificate = {:?}\nresponder_key = {:?}\n",
            root.join("single"),
            pki.ca(),
            pki.dir.join("responder.pem"),
            pki.dir.join("responder.key")
        ),
    )
    .unwrap();
    let replica = Replica::start(&config);
    let admin = replica.admin.clone().expect("admin listener");
    let (code, resp) = http(
        &admin,
        "POST",
        "/v1/revoke",
        Some(TOKEN),
        r#"{"issuer":"demo","serial":"A001","time":"2026-01-02T03:04:05Z"}"#,
    );
    assert_eq!(code, 200, "{resp}");
    assert!(resp.contains("the local journal"), "{resp}");
    replica.wait_for(&pki, "A001", "revoked");
    let (code, resp) = http(
        &admin,
        "POST",
        "/v1/issue",
        Some(TOKEN),
        r#"{"issuer":"demo","serial":"A002","not_after":"2030-01-01T00:00:00Z"}"#,
    );
    assert_eq!(code, 200, "{resp}");
    replica.wait_for(&pki, "A002", "good");
}

/// The admin API over mutual TLS: without a client certificate the handshake fails; with one
/// (and the token) the change is made and the client's subject is audited.
#[test]
fn admin_api_over_mutual_tls() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let pki = Pki::make(root);
    let tls = TlsFiles::make(root);
    let token = root.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let config = root.join("mtls.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {token:?}\ntls_certificate = {:?}\ntls_key = {:?}\nclient_ca = {:?}\n[[issuer]]\nname = \"demo\"\ncertificate = {:?}\nresponder_certificate = {:?}\nresponder_key = {:?}\n",
            root.join("mtls"),
            tls.server_cert,
            tls.server_key,
            tls.ca,
            pki.ca(),
            pki.dir.join("responder.pem"),
            pki.dir.join("responder.key")
        ),
    )
    .unwrap();
    let mut child = Command::new(VIGIL)
        .arg("--config")
        .arg(&config)
        .env("VIGIL_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _guard = KillOnDrop(child);
    let admin = loop {
        let line = lines.next().expect("vigil exited").unwrap();
        if let Some(rest) = line.strip_prefix("vigil admin API on https://") {
            break rest.trim_end_matches('/').to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let curl = |with_client_cert: bool| {
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
            .arg(&tls.ca)
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
            .args(["-d", r#"{"issuer":"demo","serial":"B001"}"#]);
        if with_client_cert {
            c.arg("--cert")
                .arg(&tls.client_cert)
                .arg("--key")
                .arg(&tls.client_key);
        }
        c.arg(format!("https://{admin}/v1/revoke"));
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = curl(false);
    assert!(
        !ok || !out.ends_with("200"),
        "no client certificate accepted: {out}"
    );
    let (ok, out) = curl(true);
    assert!(ok && out.ends_with("200"), "{out}");
    let audit = read(&root.join("mtls").join("audit.log"));
    assert!(audit.contains("CN=vigil"), "{audit}");
}

/// Writes an OpenSSL index of `n` revoked certificates with serials `prefix` + 4 hex digits.
fn revoked_index(root: &Path, name: &str, prefix: &str, n: usize) -> PathBuf {
    let mut index = String::with_capacity(n * 64);
    for i in 0..n {
        index.push_str(&format!(
            "R\t300101000000Z\t250101000000Z,keyCompromise\t{prefix}{i:04X}\tunknown\t/CN=m{i}\n"
        ));
    }
    let path = root.join(name);
    std::fs::write(&path, index).unwrap();
    path
}

fn wait_until_or(what: &str, log: &Path, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}\n{}",
            read(log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn import(config: &Path, index: &Path) {
    let out = vigil(
        config,
        &[
            "import",
            "--issuer",
            "demo",
            "--openssl-index",
            index.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(sig)
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig}");
}

/// A replica that cannot read while a mass revocation goes through a stream trimmed far below
/// it falls behind the trimming. It must notice from the stream itself (`max-deleted-entry-id`
/// is no help on every Redis 7), re-read the snapshot, count the gap, and end with every
/// certificate — and a fresh replica must be complete too.
#[test]
fn a_replica_trimmed_past_by_a_mass_revocation_ends_complete() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let pki = Pki::make(root);
    let a = Redis::start(root, "a", false);
    let feed = Feed {
        regions: vec![("a", a.region())],
        quorum: 1,
        extra: "maxlen = 100",
    };
    let config = write_config(root, "r1", &pki, &feed, false);
    let replica = Replica::start(&config);
    wait_until("ready", || {
        http(&replica.addr, "GET", "/readyz", None, "").0 == 200
    });
    const N: usize = 20_000;
    let index = revoked_index(root, "index.txt", "5A", N);
    signal(&replica.child, "-STOP");
    import(&config, &index);
    let len: usize = a.cmd(redis::cmd("XLEN").arg("vigil:feed"));
    assert!(len < 1_000, "stream not trimmed: {len} entries");
    signal(&replica.child, "-CONT");
    wait_until_or(
        "the replica holds every certificate",
        &replica.stderr,
        || replica.metric("vigil_status_view_certificates", &[]) == N as f64,
    );
    assert!(
        replica.metric("vigil_feed_incomplete_total", &["why=\"trimmed\""]) >= 1.0,
        "the gap was not counted\n{}",
        read(&replica.stderr)
    );
    wait_until("ready again", || {
        http(&replica.addr, "GET", "/readyz", None, "").0 == 200
    });
    for serial in ["5A0000", "5A1F3C", "5A4E1F"] {
        assert_eq!(replica.ocsp(&pki, serial), "revoked", "{serial}");
    }
    let fresh = Replica::start(&write_config(root, "r2", &pki, &feed, false));
    wait_until("a fresh replica holds every certificate", || {
        fresh.metric("vigil_status_view_certificates", &[]) == N as f64
    });
    assert_eq!(fresh.ocsp(&pki, "5A4E1F"), "revoked");
}

/// A region whose Redis lost its data (FLUSHALL: the same as a restart without persistence or
/// a failover to an empty replica) is re-seeded from the running replica's view, counted per
/// region; a replica started afterwards from nothing holds every revocation.
#[test]
fn a_flushed_region_is_reseeded_from_the_replicas() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let pki = Pki::make(root);
    let a = Redis::start(root, "a", false);
    let feed = Feed {
        regions: vec![("a", a.region())],
        quorum: 1,
        extra: "",
    };
    let config = write_config(root, "r1", &pki, &feed, false);
    let replica = Replica::start(&config);
    const N: usize = 3_000;
    import(&config, &revoked_index(root, "index.txt", "6B", N));
    wait_until("the replica holds every certificate", || {
        replica.metric("vigil_status_view_certificates", &[]) == N as f64
    });
    let issuer = issuer_hex(&config);
    let _: () = a.cmd(&mut redis::cmd("FLUSHALL"));
    wait_until("the region is re-seeded", || {
        let n: usize = a.cmd(redis::cmd("HLEN").arg(format!("vigil:snap:{issuer}")));
        n == N
    });
    wait_until_or("re-seeding counted", &replica.stderr, || {
        replica.metric("vigil_feed_reseeded_records_total", &["region=\"a\""]) >= N as f64
    });
    assert!(read(&replica.stderr).contains("re-seeded the region from this replica's view"));
    // The old replica is replaced by one with no checkpoint: it reads everything back.
    drop(replica);
    let fresh = Replica::start(&write_config(root, "r2", &pki, &feed, false));
    wait_until("the fresh replica holds every certificate", || {
        fresh.metric("vigil_status_view_certificates", &[]) == N as f64
    });
    for serial in ["6B0000", "6B0BB7"] {
        assert_eq!(fresh.ocsp(&pki, serial), "revoked", "{serial}");
    }
}

/// A replica's view and each region's snapshot agree on every issuer's record count and digest
/// (the view keeps its digest in Rust, the region in the merge script): the comparison that
/// completeness checks rest on.
#[test]
fn view_and_region_digests_agree() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let pki = Pki::make(root);
    let a = Redis::start(root, "a", false);
    let feed = Feed {
        regions: vec![("a", a.region())],
        quorum: 1,
        extra: "",
    };
    let config = write_config(root, "r1", &pki, &feed, false);
    import(&config, &revoked_index(root, "index.txt", "7A", 500));
    for serial in ["7A0001", "7A0002"] {
        let out = vigil(
            &config,
            &[
                "issue",
                "--issuer",
                "demo",
                "--serial",
                serial,
                "--not-after",
                "2031-01-01T00:00:00Z",
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let issuer = issuer_hex(&config);
    let digest: String = a.cmd(redis::cmd("HGET").arg("vigil:digest").arg(&issuer));
    let view = vigil::status::StatusView::new();
    let conn_records: Vec<(Vec<u8>, Vec<u8>)> =
        a.cmd(redis::cmd("HGETALL").arg(format!("vigil:snap:{issuer}")));
    let id = vigil::feed::consume::parse_issuer_hex(&issuer).unwrap();
    for (s, r) in &conn_records {
        view.table(id).merge(
            vigil::status::Serial::from_der_content(s).unwrap(),
            vigil::status::CertRecord::from_bytes(r).unwrap(),
        );
    }
    let (count, mine) = view.table(id).summary();
    assert_eq!(count, 500);
    assert_eq!(mine.hex(), digest);
    // The replica reads the same: no completeness round finds a difference.
    let replica = Replica::start(&config);
    wait_until("ready", || {
        http(&replica.addr, "GET", "/readyz", None, "").0 == 200
    });
    wait_until("two completeness rounds passed", || {
        replica.metric("vigil_feed_completeness_checks_total", &["result=\"ok\""]) >= 2.0
    });
    assert_eq!(
        replica.metric("vigil_feed_completeness_checks_total", &[]),
        replica.metric("vigil_feed_completeness_checks_total", &["result=\"ok\""]),
        "a round found a difference"
    );
    assert_eq!(replica.metric("vigil_feed_incomplete_total", &[]), 0.0);
    assert_eq!(
        replica.metric("vigil_feed_reseeded_records_total", &[]),
        0.0
    );
    assert_eq!(
        replica.metric("vigil_feed_region_covered", &["region=\"a\""]),
        1.0
    );
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// === bad revocation input (issue 11) ===

/// `removeFromCRL` and `certificateHold` are not revocation reasons: the CLI and the admin API
/// refuse them (non-zero exit / 400, a message saying why) and nothing reaches the feed. A
/// revoked event carrying one that arrives through the feed anyway (written by an old build),
/// and a snapshot record carrying removeFromCRL, are refused and counted, not applied.
#[test]
fn revocation_reasons_that_are_not_revocations_are_refused_where_they_enter() {
    use vigil::status::{Event, EventKind, IssuerId, RevocationReason, Serial};
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let pki = Pki::make(root);
    let a = Redis::start(root, "a", false);
    let feed = Feed {
        regions: vec![("a", a.region())],
        quorum: 1,
        extra: "",
    };
    let config = write_config(root, "r1", &pki, &feed, true);
    let issuer = issuer_hex(&config);
    let replica = Replica::start(&config);
    let admin = replica.admin.clone().expect("admin listener");

    for reason in [
        "removeFromCRL",
        "certificateHold",
        "REMOVEFROMCRL",
        "onHold",
    ] {
        let out = vigil(
            &config,
            &[
                "revoke", "--issuer", "demo", "--serial", "6A01", "--reason", reason,
            ],
        );
        assert!(!out.status.success(), "{reason}: {}", text(&out));
        let msg = text(&out);
        assert!(
            msg.contains("is not a revocation reason") || msg.contains("unknown revocation reason"),
            "{reason}: {msg}"
        );
        let body = format!(r#"{{"issuer":"demo","serial":"6A01","reason":"{reason}"}}"#);
        let (code, resp) = http(&admin, "POST", "/v1/revoke", Some(TOKEN), &body);
        assert_eq!(code, 400, "{reason}: {resp}");
        assert!(resp.contains("revocation reason"), "{resp}");
    }
    assert!(
        text(&vigil(
            &config,
            &[
                "revoke",
                "--issuer",
                "demo",
                "--serial",
                "6A01",
                "--reason",
                "removeFromCRL"
            ],
        ))
        .contains("only appears in delta CRLs")
    );
    assert_eq!(a.snapshot_record(&issuer, &der("6A01")), None);
    assert_eq!(
        a.event_entries(),
        0,
        "a refused revocation reached the feed"
    );
    assert_eq!(replica.ocsp(&pki, "6A01"), "unknown");

    // Through the feed: an issuance, then a revocation with removeFromCRL, bypassing the
    // merge script (as an old build's writer would have left them).
    let id = IssuerId({
        let mut b = [0u8; 32];
        for (i, pair) in issuer.as_bytes().chunks(2).enumerate() {
            b[i] = u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap();
        }
        b
    });
    let event = |serial: &str, kind| {
        Event {
            issuer: id,
            serial: Serial::from_hex(serial).unwrap(),
            kind,
            origin: "old-build".into(),
            created_at_ms: 1,
        }
        .to_bytes()
    };
    for kind in [
        EventKind::Issued {
            not_after: 4_000_000_000,
        },
        EventKind::Revoked {
            time: 1_700_000_000,
            reason: RevocationReason::RemoveFromCrl,
        },
    ] {
        let _: String = a.cmd(
            redis::cmd("XADD")
                .arg("vigil:feed")
                .arg("*")
                .arg("e")
                .arg(event("6A02", kind)),
        );
    }
    // then a good revocation, so the replica has certainly read past the bad entry
    let out = revoke(&config, "6A03");
    assert!(out.status.success(), "{}", text(&out));
    replica.wait_for(&pki, "6A03", "revoked");
    assert_eq!(
        replica.ocsp(&pki, "6A02"),
        "good",
        "the bad revocation was applied"
    );
    assert!(replica.metric("vigil_status_rejected_total", &["input=\"event\""]) >= 1.0);

    // A snapshot record with removeFromCRL (reason octet 8): a fresh replica that bootstraps
    // refuses and counts it, and still loads the rest.
    let mut bad = vec![0xEE, 0x6B, 0x28, 0x00]; // notAfter 4_000_000_000
    bad.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    bad.push(8);
    let _: i64 = a.cmd(
        redis::cmd("HSET")
            .arg(format!("vigil:snap:{issuer}"))
            .arg(der("6A04"))
            .arg(bad),
    );
    let fresh = Replica::start(&write_config(root, "r2", &pki, &feed, false));
    fresh.wait_for(&pki, "6A03", "revoked");
    assert_eq!(fresh.ocsp(&pki, "6A04"), "unknown");
    assert!(fresh.metric("vigil_status_rejected_total", &["input=\"record\""]) >= 1.0);
    // The merge script treats the stored bad record as absent: a valid write replaces it.
    let out = revoke(&config, "6A04");
    assert!(out.status.success(), "{}", text(&out));
    let rec = a.snapshot_record(&issuer, &der("6A04")).expect("record");
    assert_eq!(rec[8], 1, "keyCompromise replaced removeFromCRL: {rec:?}");
    fresh.wait_for(&pki, "6A04", "revoked");
}

/// The merge script refuses a record whose reason is not a revocation reason, as the view does.
#[test]
fn lua_merge_refuses_records_that_are_not_revocations() {
    let root = tempfile::tempdir().unwrap();
    let a = Redis::start(root.path(), "a", false);
    let mut conn = a.connection().unwrap();
    let script = redis::Script::new(vigil::feed::scripts::MERGE_LUA);
    for reason in [7u8, 8, 11, 253] {
        let record = [0, 0, 0, 9, 0, 0, 0, 5, reason];
        let r: redis::RedisResult<redis::Value> = script
            .key("t:feed")
            .key("t:snap")
            .key("t:issuers")
            .key("t:digest")
            .arg(100)
            .arg("00")
            .arg("01")
            .arg(&record[..])
            .arg(b"event".as_slice())
            .invoke(&mut conn);
        let err = r.expect_err("refused");
        assert!(err.to_string().contains("not a revocation reason"), "{err}");
    }
    let n: usize = redis::cmd("HLEN").arg("t:snap").query(&mut conn).unwrap();
    assert_eq!(n, 0);
    let x: usize = redis::cmd("EXISTS").arg("t:feed").query(&mut conn).unwrap();
    assert_eq!(x, 0, "nothing appended");
}

/// Two issuers whose CA certificates hold the same key are refused by `check-config` (the
/// matcher would keep only one of them, and both would share one status table).
#[test]
fn check_config_refuses_two_issuers_with_one_key() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let pki = Pki::make(root);
    let issuer = |name: &str| {
        format!(
            "[[issuer]]\nname = {name:?}\ncertificate = {:?}\nresponder_certificate = {:?}\nresponder_key = {:?}\n",
            pki.ca(),
            pki.dir.join("responder.pem"),
            pki.dir.join("responder.key")
        )
    };
    let one = root.join("one.toml");
    let data = format!("data_dir = {:?}\n", root.join("data"));
    std::fs::write(&one, format!("{data}{}", issuer("demo"))).unwrap();
    let out = vigil(&one, &["check-config"]);
    assert!(out.status.success(), "{}", text(&out));
    let two = root.join("two.toml");
    std::fs::write(&two, format!("{data}{}{}", issuer("demo"), issuer("again"))).unwrap();
    let out = vigil(&two, &["check-config"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out)
            .contains("issuer[1] (again): its CA certificate has the same key as issuer[0] (demo)"),
        "{}",
        text(&out)
    );
}

/// `POST /v1/release` (and `/v1/hold`) decide on the joined state of every reachable region, as
/// `vigil release` does, not on the replica's view alone: a hold that the region holds but the
/// replica has not read (here written into the snapshot behind the stream's back) is released,
/// and the release is ordered after it.
#[test]
fn admin_holds_are_decided_on_the_regions_state_not_the_replicas_view() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let pki = Pki::make(root);
    let a = Redis::start(root, "a", false);
    let feed = Feed {
        regions: vec![("a", a.region())],
        quorum: 1,
        extra: "",
    };
    let config = write_config(root, "w", &pki, &feed, true);
    let mut t = read(&config);
    t.push_str("allow_hold = true\n");
    std::fs::write(&config, t).unwrap();
    let replica = Replica::start(&config);
    let admin = replica.admin.clone().expect("admin listener");
    let issuer = issuer_hex(&config);
    let (code, resp) = http(
        &admin,
        "POST",
        "/v1/issue",
        Some(TOKEN),
        r#"{"issuer":"demo","serial":"7C01","not_after":"2030-01-01T00:00:00Z"}"#,
    );
    assert_eq!(code, 200, "{resp}");
    replica.wait_for(&pki, "7C01", "good");
    // The region now holds 7C01 on hold since `held_at`; the replica's view does not.
    let held_at = vigil::clock::Clock::system().now() - 60;
    let mut held = a.snapshot_record(&issuer, &der("7C01")).expect("issued");
    held[4..8].copy_from_slice(&(held_at as u32).to_be_bytes());
    held[8] = 6;
    let _: i64 = a.cmd(
        redis::cmd("HSET")
            .arg(format!("vigil:snap:{issuer}"))
            .arg(der("7C01"))
            .arg(&held),
    );
    let (_, status) = http(&admin, "GET", "/v1/status/demo/7C01", Some(TOKEN), "");
    assert!(
        status.contains("\"status\":\"good\""),
        "the view lags: {status}"
    );
    let target = r#"{"issuer":"demo","serial":"7C01"}"#;
    let (code, resp) = http(&admin, "POST", "/v1/release", Some(TOKEN), target);
    assert_eq!(code, 200, "the region's hold was not seen: {resp}");
    let rec = a.snapshot_record(&issuer, &der("7C01")).expect("record");
    assert_eq!(rec[8], 0xFE, "released: {rec:?}");
    let released_at = u32::from_be_bytes(rec[4..8].try_into().unwrap()) as i64;
    assert!(
        released_at > held_at,
        "the release is ordered after the hold"
    );
    replica.wait_for(&pki, "7C01", "good");
    // and a release of a certificate no region holds on hold is refused, as by the CLI
    let (code, resp) = http(&admin, "POST", "/v1/release", Some(TOKEN), target);
    assert_eq!(code, 200, "a repeated release is idempotent: {resp}");
    let (code, resp) = http(
        &admin,
        "POST",
        "/v1/release",
        Some(TOKEN),
        r#"{"issuer":"demo","serial":"7C02"}"#,
    );
    assert_eq!(code, 400, "{resp}");
    assert!(resp.contains("not on hold"), "{resp}");
}

/// `vigil import` streams its input in batches: an index of several batches is written whole,
/// and a bad line anywhere (here the last) writes nothing at all.
#[test]
fn import_streams_batches_and_a_bad_line_anywhere_writes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let pki = Pki::make(root);
    let a = Redis::start(root, "a", false);
    let feed = Feed {
        regions: vec![("a", a.region())],
        quorum: 1,
        extra: "",
    };
    let config = write_config(root, "r1", &pki, &feed, false);
    let issuer = issuer_hex(&config);
    let n = 2 * vigil::limits::IMPORT_BATCH_CERTIFICATES + 7;
    let mut index = String::new();
    for i in 0..n {
        let status = if i % 3 == 0 { "R" } else { "V" };
        let revoked = if i % 3 == 0 {
            "250101000000Z,superseded"
        } else {
            ""
        };
        index.push_str(&format!(
            "{status}\t300101000000Z\t{revoked}\t{:X}\tunknown\t/CN=t{i}\n",
            0x10_0000 + i
        ));
    }
    let path = root.join("index.txt");
    std::fs::write(
        &path,
        format!("{index}R\t300101000000Z\t250101000000Z,removeFromCRL\t0F\tx\t/CN=x\n"),
    )
    .unwrap();
    let import = || {
        vigil(
            &config,
            &[
                "import",
                "--issuer",
                "demo",
                "--openssl-index",
                path.to_str().unwrap(),
            ],
        )
    };
    let out = import();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("index.txt:{}", n + 1)),
        "{}",
        text(&out)
    );
    let len: usize = a.cmd(redis::cmd("HLEN").arg(format!("vigil:snap:{issuer}")));
    assert_eq!(len, 0, "a bad last line wrote nothing");
    std::fs::write(&path, &index).unwrap();
    let out = import();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "imported {n} certificate(s), {} revoked",
            n.div_ceil(3)
        )),
        "{}",
        text(&out)
    );
    let len: usize = a.cmd(redis::cmd("HLEN").arg(format!("vigil:snap:{issuer}")));
    assert_eq!(len, n);
    let last = a
        .snapshot_record(&issuer, &der(&format!("{:X}", 0x10_0000 + n - 1)))
        .expect("the last certificate");
    assert_eq!(last.len(), 9);
}
