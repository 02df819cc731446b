//! Signing through HSMs: real SoftHSM2 tokens made in a temporary directory, served as network
//! HSMs by `p11-kit server` and reached through `p11-kit-client.so`, the real `vigil` binary,
//! and `openssl ocsp` as the relying party.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests: a failed expectation is the report

#[path = "support/softhsm.rs"]
mod softhsm;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use der::{Decode, Encode};
use softhsm::{KeyKind, Lab, P11KIT_CLIENT, P11Server, PIN, Pki, SOFTHSM_MODULE};
use x509_ocsp::{BasicOcspResponse, OcspResponse, OcspResponseStatus};

use vigil::signer::SignatureAlgorithm;
use vigil::signer::pkcs11::{
    AuthPin, HostOptions, HostedKey, KeySelector, KeySpec, RsaMechanism, TokenSelector,
    configure_hosts,
};

// === helpers ===

/// One HSM of a test: a token holding the responder key, behind its own p11-kit server.
struct Hsm {
    name: &'static str,
    server: P11Server,
}

/// Tokens `names`, each holding the same P-256 responder key, each served by p11-kit.
fn network_hsms(lab: &Lab, names: &[&'static str]) -> (Vec<Hsm>, Pki) {
    let key = lab.key("responder", KeyKind::P256);
    let pki = lab.pki(&key);
    let hsms = names
        .iter()
        .map(|name| {
            lab.token(name);
            lab.import(name, &key, "ocsp", "01");
            Hsm {
                name,
                server: lab.serve(name),
            }
        })
        .collect();
    (hsms, pki)
}

fn write_config(lab: &Lab, pki: &Pki, hsms: &[&Hsm], extra: &str) -> PathBuf {
    let mut text = format!(
        "data_dir = \"{}\"\n{extra}\n[hsm_pool]\nprobe_interval = \"300ms\"\nreconnect_backoff_min = \"100ms\"\nreconnect_backoff_max = \"400ms\"\nsession_wait = \"500ms\"\n",
        lab.path("data").display()
    );
    for h in hsms {
        text.push_str(&format!(
            "\n[[hsm]]\nname = \"{}\"\nmodule = \"{P11KIT_CLIENT}\"\nmodule_env = {{ P11_KIT_SERVER_ADDRESS = \"{}\" }}\ntoken_label = \"{}\"\nkey_label = \"ocsp\"\nkey_id = \"01\"\npin_file = \"{}\"\n",
            h.name,
            h.server.address(),
            h.name,
            lab.pin_file().display()
        ));
    }
    let names: Vec<String> = hsms.iter().map(|h| format!("\"{}\"", h.name)).collect();
    text.push_str(&format!(
        "\n[[issuer]]\nname = \"test\"\ncertificate = \"{}\"\nresponder_certificate = \"{}\"\nsigner = {{ hsm = [{}] }}\n",
        pki.ca.display(),
        pki.responder.display(),
        names.join(", ")
    ));
    let path = lab.path("vigil.toml");
    std::fs::write(&path, text).expect("config");
    path
}

fn vigil(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("VIGIL_LOG", "warn")
        .output()
        .expect("vigil")
}

/// Records issuance of serials 0A..(0A+n) in the journal.
fn issue(config: &Path, serials: &[&str]) {
    for s in serials {
        let out = vigil(
            config,
            &[
                "issue",
                "--issuer",
                "test",
                "--serial",
                s,
                "--not-after",
                "2030-01-01T00:00:00Z",
            ],
        );
        assert!(
            out.status.success(),
            "issue: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A running `vigil serve`.
struct Vigil {
    child: Child,
    addr: String,
    stderr: PathBuf,
}

impl Vigil {
    fn start(config: &Path, lab: &Lab) -> Vigil {
        let stderr = lab.path("vigil.stderr");
        let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env("VIGIL_LISTEN", "127.0.0.1:0")
            .env("VIGIL_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("vigil serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("vigil listening on http://") {
                    let _ = tx.send(rest.split('/').next().unwrap_or_default().to_owned());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => Vigil {
                child,
                addr,
                stderr,
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "vigil did not start: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
        }
    }

    fn post(&self, der: &[u8]) -> Reply {
        http(
            &self.addr,
            "POST",
            "/",
            &[("Content-Type", "application/ocsp-request")],
            der,
        )
    }

    fn get(&self, path: &str) -> Reply {
        http(&self.addr, "GET", path, &[], &[])
    }

    /// The value of one metric line, e.g. `vigil_hsm_signatures_total{hsm="hsm1"}`.
    fn metric(&self, series: &str) -> f64 {
        let body = String::from_utf8(self.get("/metrics").body).expect("utf8");
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Vigil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("VIGIL_TEST_SHOW_LOG").is_some() {
            eprintln!("--- vigil log ---\n{}", self.log());
        }
    }
}

struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// HTTP/1.1 with `Connection: close`: enough for OCSP and the ops endpoints.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    s.write_all(body).expect("write body");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// A DER OCSP request for `serial`, made by openssl.
fn ocsp_request(lab: &Lab, pki: &Pki, serial: &str, nonce: bool) -> Vec<u8> {
    let out = lab.path(&format!("req-{serial}-{nonce}.der"));
    let (ca, o) = (pki.ca.display().to_string(), out.display().to_string());
    let serial = format!("0x{serial}");
    let mut args = vec!["ocsp", "-issuer", &ca, "-serial", &serial, "-reqout", &o];
    if !nonce {
        args.push("-no_nonce");
    }
    lab.run("openssl", &args);
    std::fs::read(out).expect("request")
}

/// The response status and, when successful, whether its signature verifies with `key`.
fn inspect(body: &[u8], algorithm: SignatureAlgorithm, key: &[u8]) -> (OcspResponseStatus, bool) {
    let r = OcspResponse::from_der(body).expect("OCSPResponse");
    let Some(bytes) = r.response_bytes else {
        return (r.response_status, false);
    };
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).expect("basic");
    let tbs = basic.tbs_response_data.to_der().expect("tbs");
    let ok = vigil::signer::verify(algorithm, key, &tbs, basic.signature.raw_bytes());
    (r.response_status, ok)
}

fn responder_key(pki: &Pki) -> Vec<u8> {
    vigil::pki::read_certificate(&pki.responder)
        .expect("responder certificate")
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes()
        .to_vec()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    wait_or(what, timeout, &mut f, String::new);
}

/// Waits for `f`; on timeout, panics with `context()` (e.g. the server's log).
fn wait_or(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// === tests ===

/// `openssl ocsp` (the relying party) verifies responses signed through a network HSM, and
/// `vigil hsm list` / `vigil hsm test` see and use both HSMs.
#[test]
fn openssl_verifies_responses_signed_through_network_hsms() {
    require_softhsm!();
    let lab = Lab::new();
    let (hsms, pki) = network_hsms(&lab, &["hsm1", "hsm2"]);
    let config = write_config(&lab, &pki, &[&hsms[0], &hsms[1]], "");
    issue(&config, &["0A"]);

    let list = vigil(&config, &["hsm", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&list.stderr)
    );
    for want in [
        "PKCS#11 Kit",
        "token \"hsm1\"",
        "used by [[hsm]] hsm1",
        "token \"hsm2\"",
        "private key \"ocsp\" id 01 (CKK_EC)",
        "public key \"ocsp\" id 01",
    ] {
        assert!(text.contains(want), "hsm list lacks {want:?}:\n{text}");
    }
    let test = vigil(&config, &["hsm", "test"]);
    let text = String::from_utf8_lossy(&test.stdout);
    assert!(
        test.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(
        text.contains("ok    hsm1") && text.contains("ok    hsm2"),
        "{text}"
    );
    assert!(
        text.contains("CKM_ECDSA") && text.contains("signed and verified"),
        "{text}"
    );

    let v = Vigil::start(&config, &lab);
    let ca = pki.ca.display().to_string();
    let out = Command::new("openssl")
        .args([
            "ocsp", "-issuer", &ca, "-CAfile", &ca, "-serial", "0x0A", "-url",
        ])
        .arg(format!("http://{}/", v.addr))
        .output()
        .expect("openssl ocsp");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}\n{}", v.log());
    assert!(stderr.contains("Response verify OK"), "{stderr}");
    assert!(stdout.contains("0x0A: good"), "{stdout}");
    assert_eq!(v.metric("vigil_hsm_signatures_total{hsm=\"hsm1\"}"), 1.0);
    assert_eq!(v.get("/readyz").body, b"ready\n");
}

/// Kill the p11-kit server of HSM 1 while requests flow: no request fails, signing moves to
/// HSM 2; restart it and it rejoins after its probe and takes the traffic back.
#[test]
fn losing_an_hsm_fails_no_request_and_it_rejoins_after_its_probe() {
    require_softhsm!();
    let lab = Lab::new();
    let (mut hsms, pki) = network_hsms(&lab, &["hsm1", "hsm2"]);
    // Echoed nonces: every request is a fresh signature.
    let config = write_config(
        &lab,
        &pki,
        &[&hsms[0], &hsms[1]],
        "[ocsp]\nnonce = \"echo\"\nsigning_concurrency = 4",
    );
    issue(&config, &["0A"]);
    let request = ocsp_request(&lab, &pki, "0A", true);
    let key = responder_key(&pki);
    let v = Vigil::start(&config, &lab);

    // Clients stop when the test ends, passing or not (the server is the test's to drop).
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_clients = StopOnDrop(stop.clone());
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (addr, stop, ok, request, key, failures) = (
            v.addr.clone(),
            stop.clone(),
            ok.clone(),
            request.clone(),
            key.clone(),
            failed.clone(),
        );
        clients.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = http(
                    &addr,
                    "POST",
                    "/",
                    &[("Content-Type", "application/ocsp-request")],
                    &request,
                );
                let (status, verified) =
                    inspect(&r.body, SignatureAlgorithm::EcdsaP256Sha256, &key);
                if r.status == 200 && status == OcspResponseStatus::Successful && verified {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("HTTP {} {status:?} verified={verified}", r.status));
                }
            }
        }));
    }
    let log = || {
        format!(
            "failed responses: {:?}\n{}",
            failed.lock().unwrap(),
            v.log()
        )
    };
    wait_or(
        "signatures on HSM 1",
        Duration::from_secs(10),
        || ok.load(Ordering::Relaxed) >= 20,
        log,
    );
    assert_eq!(v.metric("vigil_hsm_signatures_total{hsm=\"hsm2\"}"), 0.0);

    hsms[0].server.kill();
    let at_kill = ok.load(Ordering::Relaxed);
    wait_or(
        "signatures on HSM 2",
        Duration::from_secs(10),
        || v.metric("vigil_hsm_signatures_total{hsm=\"hsm2\"}") >= 20.0,
        log,
    );
    assert_eq!(
        v.metric("vigil_hsm_breaker_state{hsm=\"hsm1\"}"),
        1.0,
        "{}",
        log()
    );
    assert!(ok.load(Ordering::Relaxed) > at_kill, "{}", log());

    hsms[0].server.start();
    wait_or(
        "HSM 1 back in service",
        Duration::from_secs(15),
        || v.metric("vigil_hsm_breaker_state{hsm=\"hsm1\"}") == 0.0,
        log,
    );
    let hsm1_back = v.metric("vigil_hsm_signatures_total{hsm=\"hsm1\"}");
    wait_or(
        "signatures on HSM 1 again",
        Duration::from_secs(10),
        || v.metric("vigil_hsm_signatures_total{hsm=\"hsm1\"}") >= hsm1_back + 20.0,
        log,
    );

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    assert!(failed.lock().unwrap().is_empty(), "{}", log());
    assert!(v.metric("vigil_hsm_probes_total{hsm=\"hsm1\",result=\"ok\"}") >= 1.0);
    assert!(v.metric("vigil_hsm_errors_total{hsm=\"hsm1\",kind=\"lost\"}") >= 1.0);
    let log = v.log();
    assert!(log.contains("HSM out of service; failing over"), "{log}");
    assert!(
        log.contains("HSM in service (probe passed after reconnecting)"),
        "{log}"
    );
}

/// An HSM that goes silent (its p11-kit server frozen: connections open, nothing answers):
/// calls stuck on it are left behind after `sign_timeout`, requests are answered through
/// HSM 2, nothing fails. Then it comes back at the same address while the old connections
/// stay silent for good (a new server; the frozen one keeps them): vigil abandons the stuck
/// module instance, loads a fresh one, and the HSM rejoins.
#[test]
fn a_silent_hsm_is_left_behind_and_rejoins_through_a_fresh_module_instance() {
    require_softhsm!();
    let lab = Lab::new();
    let (hsms, pki) = network_hsms(&lab, &["hsm1", "hsm2"]);
    let config = write_config(
        &lab,
        &pki,
        &[&hsms[0], &hsms[1]],
        "[ocsp]\nnonce = \"echo\"\nsigning_concurrency = 4",
    );
    // Tighter than write_config's defaults, so the test is quick.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "session_wait = \"500ms\"",
        "session_wait = \"200ms\"\nsign_timeout = \"300ms\"",
    );
    std::fs::write(&config, text).unwrap();
    issue(&config, &["0A"]);
    let request = ocsp_request(&lab, &pki, "0A", true);
    let key = responder_key(&pki);
    let alg = SignatureAlgorithm::EcdsaP256Sha256;
    let v = Vigil::start(&config, &lab);
    let ask = || {
        let r = v.post(&request);
        let (status, verified) = inspect(&r.body, alg, &key);
        assert!(
            r.status == 200 && status == OcspResponseStatus::Successful && verified,
            "HTTP {} {status:?} verified={verified}\n{}",
            r.status,
            v.log()
        );
    };
    ask();
    assert_eq!(v.metric("vigil_hsm_signatures_total{hsm=\"hsm1\"}"), 1.0);

    hsms[0].server.freeze();
    // In flight on the frozen HSM: left behind after sign_timeout, answered through HSM 2.
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(ask);
        }
    });
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    for _ in 0..10 {
        ask();
    }
    assert!(
        v.metric("vigil_hsm_signatures_total{hsm=\"hsm2\"}") >= 10.0,
        "{}",
        v.log()
    );
    assert_eq!(v.metric("vigil_hsm_breaker_state{hsm=\"hsm1\"}"), 1.0);
    assert!(
        v.log().contains("did not finish in time; asking again"),
        "{}",
        v.log()
    );

    // Back at the same address; the frozen server keeps the old connections silent.
    let _replacement = lab.serve("hsm1");
    wait_or(
        "HSM 1 back in service",
        Duration::from_secs(20),
        || v.metric("vigil_hsm_breaker_state{hsm=\"hsm1\"}") == 0.0,
        || v.log(),
    );
    assert!(v.log().contains("loaded a fresh instance"), "{}", v.log());
    let before = v.metric("vigil_hsm_signatures_total{hsm=\"hsm1\"}");
    ask();
    assert_eq!(
        v.metric("vigil_hsm_signatures_total{hsm=\"hsm1\"}"),
        before + 1.0,
        "{}",
        v.log()
    );
    drop(v); // before the frozen server is killed, so nothing answers the stuck calls
}

/// Kill every HSM: cached answers keep flowing, uncached ones get `tryLater` with `no-cache`,
/// `/readyz` says "no signer"; bring one back and signing resumes.
#[test]
fn with_every_hsm_gone_cached_answers_flow_and_signing_resumes_when_one_returns() {
    require_softhsm!();
    let lab = Lab::new();
    let (mut hsms, pki) = network_hsms(&lab, &["hsm1", "hsm2"]);
    let config = write_config(&lab, &pki, &[&hsms[0], &hsms[1]], "");
    issue(&config, &["0A", "0B"]);
    let cached = ocsp_request(&lab, &pki, "0A", false);
    let uncached = ocsp_request(&lab, &pki, "0B", false);
    let key = responder_key(&pki);
    let alg = SignatureAlgorithm::EcdsaP256Sha256;
    let v = Vigil::start(&config, &lab);

    let first = v.post(&cached);
    assert_eq!(
        inspect(&first.body, alg, &key),
        (OcspResponseStatus::Successful, true)
    );

    for h in &mut hsms {
        h.server.kill();
    }
    for _ in 0..20 {
        let r = v.post(&cached);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, first.body, "the cached response is served");
    }
    let r = v.post(&uncached);
    assert_eq!(r.status, 200);
    assert_eq!(
        inspect(&r.body, alg, &key).0,
        OcspResponseStatus::TryLater,
        "{}",
        v.log()
    );
    assert_eq!(
        r.headers.get("cache-control").map(String::as_str),
        Some("no-cache")
    );
    wait_for("/readyz to say no signer", Duration::from_secs(5), || {
        let r = v.get("/readyz");
        r.status == 200 && String::from_utf8_lossy(&r.body).contains("no signer")
    });
    assert_eq!(
        v.metric("vigil_signer_pool_members_up{issuer=\"test\"}"),
        0.0
    );
    // Cached answers still flow.
    assert_eq!(v.post(&cached).body, first.body);

    hsms[1].server.start();
    wait_for("signing to resume", Duration::from_secs(15), || {
        let r = v.post(&uncached);
        inspect(&r.body, alg, &key) == (OcspResponseStatus::Successful, true)
    });
    assert_eq!(v.get("/readyz").body, b"ready\n");
    assert!(v.metric("vigil_hsm_signatures_total{hsm=\"hsm2\"}") >= 1.0);
}

/// Labs only: with `danger_software_fallback`, the key file signs once no HSM can, and
/// `/readyz` and the metrics say so.
#[test]
fn the_lab_software_fallback_signs_only_when_no_hsm_can() {
    require_softhsm!();
    let lab = Lab::new();
    let (mut hsms, pki) = network_hsms(&lab, &["hsm1"]);
    let config = write_config(&lab, &pki, &[&hsms[0]], "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "signer = { hsm = [\"hsm1\"] }",
        &format!(
            "signer = {{ hsm = [\"hsm1\"], danger_software_fallback = \"{}\" }}",
            lab.path("responder.key").display()
        ),
    );
    std::fs::write(&config, text).unwrap();
    issue(&config, &["0A", "0B"]);
    let key = responder_key(&pki);
    let alg = SignatureAlgorithm::EcdsaP256Sha256;
    let v = Vigil::start(&config, &lab);
    assert!(
        v.log().contains("danger_software_fallback is set"),
        "{}",
        v.log()
    );
    let fallback = "vigil_signer_software_fallback_signatures_total{issuer=\"test\"}";

    let r = v.post(&ocsp_request(&lab, &pki, "0A", false));
    assert_eq!(
        inspect(&r.body, alg, &key),
        (OcspResponseStatus::Successful, true)
    );
    assert_eq!(v.metric(fallback), 0.0, "the HSM signs while it can");

    hsms[0].server.kill();
    let r = v.post(&ocsp_request(&lab, &pki, "0B", false));
    assert_eq!(
        inspect(&r.body, alg, &key),
        (OcspResponseStatus::Successful, true)
    );
    assert_eq!(v.metric(fallback), 1.0);
    let ready = String::from_utf8(v.get("/readyz").body).unwrap();
    assert!(
        ready.contains("no signer") && ready.contains("danger_software_fallback"),
        "{ready}"
    );
}

/// A wrong PIN stops start-up at once with a message naming the HSM and the PKCS#11 error,
/// and vigil does not try it again.
#[test]
fn a_wrong_pin_stops_start_up_without_retrying() {
    require_softhsm!();
    let lab = Lab::new();
    let (hsms, pki) = network_hsms(&lab, &["hsm1", "hsm2"]);
    let config = write_config(&lab, &pki, &[&hsms[0], &hsms[1]], "");
    std::fs::write(lab.pin_file(), "0000\n").expect("wrong pin");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("VIGIL_LISTEN", "127.0.0.1:0")
        .output()
        .expect("vigil");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    for want in [
        "hsm1",
        "CKR_PIN_INCORRECT",
        "does not retry a rejected PIN",
        "pin_file",
    ] {
        assert!(stderr.contains(want), "stderr lacks {want:?}: {stderr}");
    }
    // One attempt, on the first HSM, then exit: no second HSM login, no loop.
    assert_eq!(stderr.matches("CKR_PIN_INCORRECT").count(), 1, "{stderr}");
    // The token is not locked: the right PIN still works.
    std::fs::write(lab.pin_file(), format!("{PIN}\n")).expect("pin");
    let test = vigil(&config, &["hsm", "test"]);
    assert!(
        test.status.success(),
        "{}",
        String::from_utf8_lossy(&test.stdout)
    );
}

/// A token whose key is not the responder certificate's: start-up fails and says so.
#[test]
fn an_hsm_key_that_does_not_match_the_certificate_stops_start_up() {
    require_softhsm!();
    let lab = Lab::new();
    let (hsms, pki) = network_hsms(&lab, &["hsm1"]);
    // A second token with another key under the same label.
    let other = lab.key("other", KeyKind::P256);
    lab.token("wrong");
    lab.import("wrong", &other, "ocsp", "01");
    let wrong = Hsm {
        name: "wrong",
        server: lab.serve("wrong"),
    };
    let config = write_config(&lab, &pki, &[&hsms[0], &wrong], "");
    let out = vigil(&config, &["check-config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("wrong") && stderr.contains("does not match the certificate's public key"),
        "{stderr}"
    );
    let test = vigil(&config, &["hsm", "test"]);
    let stdout = String::from_utf8_lossy(&test.stdout);
    assert!(!test.status.success());
    assert!(
        stdout.contains("ok    hsm1") && stdout.contains("FAIL  wrong"),
        "{stdout}"
    );
}

/// With no HSM, the answer path serves the cached response past its refresh point but never
/// past its nextUpdate; then `tryLater`; and it signs again once an HSM is back.
/// (In-process, with the clock as an input, so hours pass at once.)
#[test]
fn degraded_mode_serves_cached_responses_until_next_update_then_try_later() {
    require_softhsm!();
    use vigil::ocsp::OcspError;
    use vigil::responder::{Answer, Responder};
    use vigil::status::{Event, EventKind, Serial, StatusView};

    let lab = Lab::new();
    let (mut hsms, pki) = network_hsms(&lab, &["hsm1"]);
    let path = write_config(&lab, &pki, &[&hsms[0]], "[ocsp]\nvalidity = \"8h\"");
    let cfg = vigil::config::Config::load(Some(&path)).expect("config");
    let signing = vigil::app::load_signing(&cfg).expect("signing");
    let pool = signing.pools[0].clone();
    let view = StatusView::new();
    let issuer_id = signing.issuers[0].hashes.id;
    for s in ["0A", "0B"] {
        view.apply(&Event {
            issuer: issuer_id,
            serial: Serial::from_hex(s).expect("serial"),
            kind: EventKind::Issued {
                not_after: 1_900_000_000,
            },
            origin: "test".into(),
            created_at_ms: 0,
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let responder = Arc::new(Responder::new(
        &cfg,
        signing.issuers,
        &view,
        Arc::new(vigil::telemetry::Metrics::new()),
        vigil::clock::Clock::system(),
    ));
    let cached = ocsp_request(&lab, &pki, "0A", false);
    let uncached = ocsp_request(&lab, &pki, "0B", false);
    let answer = |der: &[u8], now: i64| rt.block_on(responder.answer(der, now));
    let signed = |a: Answer| match a {
        Answer::Signed { response, .. } => response,
        Answer::Error(e) => panic!("expected a signed response, got {e:?}"),
    };

    let t0 = vigil::clock::Clock::system().now();
    let first = signed(answer(&cached, t0));
    let window = first.window;
    assert_eq!(window.next_update - window.this_update, 8 * 3600);

    hsms[0].server.kill();
    // Past the refresh point: signing fails, the cached response is still served.
    let stale = signed(answer(&cached, window.refresh_at + 60));
    assert_eq!(stale.der, first.der);
    let last_second = signed(answer(&cached, window.next_update - 1));
    assert_eq!(last_second.der, first.der);
    assert_eq!(pool.in_service(), 0);
    // At nextUpdate: never served again; tryLater.
    assert!(matches!(
        answer(&cached, window.next_update),
        Answer::Error(OcspError::TryLater(_))
    ));
    assert!(matches!(
        answer(&uncached, t0),
        Answer::Error(OcspError::TryLater(_))
    ));

    hsms[0].server.start();
    wait_for("the HSM back in service", Duration::from_secs(15), || {
        pool.in_service() == 1
    });
    let fresh = signed(answer(&cached, window.next_update + 10));
    assert_ne!(fresh.der, first.der);
    assert!(fresh.window.this_update > window.this_update);
    signed(answer(&uncached, t0));
}

/// ECDSA P-384 and RSA (both `CKM_SHA256_RSA_PKCS` and `CKM_RSA_PKCS` over a DigestInfo)
/// straight through the SoftHSM2 module; each signature verifies with the key's public half.
#[test]
fn p384_and_rsa_keys_sign_with_every_mechanism() {
    require_softhsm!();
    let lab = Lab::new();
    lab.token("keys");
    let p384 = lab.key("p384", KeyKind::P384);
    let rsa = lab.key("rsa", KeyKind::Rsa2048);
    lab.import("keys", &p384, "p384", "02");
    lab.import("keys", &rsa, "rsa", "03");
    use_vigil_as_host();
    // SoftHSM2 reads SOFTHSM2_CONF when initialised: its host process gets the lab's.
    let env: BTreeMap<String, String> =
        [("SOFTHSM2_CONF".to_owned(), lab.conf.display().to_string())].into();
    let spec = |label: &str, rsa_mechanism| KeySpec {
        name: label.to_owned(),
        module: SOFTHSM_MODULE.into(),
        module_env: env.clone(),
        token: TokenSelector::Label("keys".into()),
        key: KeySelector {
            label: Some(label.to_owned()),
            id: None,
        },
        sessions: 2,
        rsa_mechanism,
    };
    for (label, mechanism, algorithm, want) in [
        (
            "p384",
            RsaMechanism::Auto,
            SignatureAlgorithm::EcdsaP384Sha384,
            "CKM_ECDSA",
        ),
        (
            "rsa",
            RsaMechanism::Auto,
            SignatureAlgorithm::RsaPkcs1Sha256,
            "CKM_SHA256_RSA_PKCS",
        ),
        (
            "rsa",
            RsaMechanism::RsaPkcs,
            SignatureAlgorithm::RsaPkcs1Sha256,
            "CKM_RSA_PKCS (DigestInfo)",
        ),
    ] {
        let key = HostedKey::new(spec(label, mechanism), AuthPin::from(PIN), None).expect("key");
        let d = key.connect().expect("connect");
        assert_eq!(d.algorithm, algorithm);
        assert_eq!(d.mechanism, want);
        // The public key read from the token is the software key's.
        let software =
            vigil::signer::SoftwareSigner::from_pem_file(&lab.path(&format!("{label}.key")))
                .expect("software key");
        use vigil::signer::Signer;
        assert_eq!(d.public_key, software.public_key());
        for i in 0..3u8 {
            let msg = [i; 100];
            let sig = key.sign(&msg, Duration::from_secs(1)).expect("sign");
            assert!(
                vigil::signer::verify(algorithm, &d.public_key, &msg, &sig),
                "{label} {want}"
            );
            assert!(!vigil::signer::verify(
                algorithm,
                &d.public_key,
                &[9; 100],
                &sig
            ));
        }
    }
    // A key that is not there is a configuration error, not "unreachable".
    let missing = HostedKey::new(spec("nope", RsaMechanism::Auto), AuthPin::from(PIN), None)
        .expect("key")
        .connect()
        .expect_err("missing key");
    assert!(missing.is_permanent(), "{missing}");
    assert!(
        missing
            .to_string()
            .contains("no private key with label \"nope\""),
        "{missing}"
    );
}

/// Keys used in this test process run in hosts of the `vigil` binary (the test binary is not).
fn use_vigil_as_host() {
    configure_hosts(HostOptions {
        program: env!("CARGO_BIN_EXE_vigil").into(),
        // cryptoki logs every mechanism it has no name for at ERROR.
        log_filter: "info,cryptoki::mechanism=off".into(),
        log_format: Default::default(),
    });
}

/// Two keys naming one module file with different `module_env` reach their own servers: each
/// host process reads its own `P11_KIT_SERVER_ADDRESS`, and vigil's environment is untouched.
#[test]
fn entries_sharing_a_module_with_different_module_env_reach_their_own_servers() {
    require_softhsm!();
    use_vigil_as_host();
    let lab = Lab::new();
    let key = lab.key("responder", KeyKind::P256);
    let mut servers = Vec::new();
    for name in ["left", "right"] {
        lab.token(name);
        lab.import(name, &key, "ocsp", "01");
        servers.push(lab.serve(name));
    }
    let by_label = |name: &str, server: &P11Server| KeySpec {
        name: name.to_owned(),
        module: P11KIT_CLIENT.into(),
        module_env: [("P11_KIT_SERVER_ADDRESS".to_owned(), server.address())].into(),
        token: TokenSelector::Label(name.to_owned()),
        key: KeySelector {
            label: Some("ocsp".into()),
            id: None,
        },
        sessions: 2,
        rsa_mechanism: RsaMechanism::Auto,
    };
    let left =
        HostedKey::new(by_label("left", &servers[0]), AuthPin::from(PIN), None).expect("left");
    let right =
        HostedKey::new(by_label("right", &servers[1]), AuthPin::from(PIN), None).expect("right");
    assert_eq!(left.connect().expect("left connects").token_label, "left");
    assert_eq!(
        right.connect().expect("right connects").token_label,
        "right"
    );
    assert_ne!(left.host_pid(), right.host_pid());
    // The environment was given at spawn: each host has its own address; a variable read as a
    // PIN (pin_env; here a stand-in cargo sets for every test) is withheld from hosts.
    let environ = |key: &HostedKey| {
        let raw = std::fs::read(format!("/proc/{}/environ", key.host_pid().unwrap())).unwrap();
        String::from_utf8_lossy(&raw).into_owned()
    };
    assert!(environ(&left).contains(&format!("P11_KIT_SERVER_ADDRESS={}", servers[0].address())));
    assert!(environ(&right).contains(&format!("P11_KIT_SERVER_ADDRESS={}", servers[1].address())));
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    vigil::signer::pkcs11::host::withhold_from_hosts("CARGO_MANIFEST_DIR");
    let third =
        HostedKey::new(by_label("left", &servers[0]), AuthPin::from(PIN), None).expect("third");
    assert!(
        !environ(&third).contains("CARGO_MANIFEST_DIR="),
        "{}",
        environ(&third)
    );
    assert!(environ(&left).contains("CARGO_MANIFEST_DIR="));
    // Each server exports only its own token: asking the left server for the right token
    // fails, so the addresses really were different in the two hosts.
    let crossed = HostedKey::new(by_label("right", &servers[0]), AuthPin::from(PIN), None)
        .expect("crossed")
        .connect()
        .expect_err("the left server has no token \"right\"");
    assert!(crossed.to_string().contains("left"), "{crossed}");
    assert!(std::env::var_os("P11_KIT_SERVER_ADDRESS").is_none());
    // Killing the left server fails the left key only.
    let message = [7u8; 64];
    let public = left.description().expect("described").public_key;
    servers[0].kill();
    assert!(left.sign(&message, Duration::from_secs(1)).is_err());
    let sig = right
        .sign(&message, Duration::from_secs(1))
        .expect("right signs");
    assert!(vigil::signer::verify(
        SignatureAlgorithm::EcdsaP256Sha256,
        &public,
        &message,
        &sig
    ));
}

/// A host that stops answering is killed by a recovery, and its stuck call returns at once.
#[test]
fn a_stuck_host_is_killed_and_its_calls_return() {
    require_softhsm!();
    use_vigil_as_host();
    let lab = Lab::new();
    let key = lab.key("responder", KeyKind::P256);
    lab.token("hsm1");
    lab.import("hsm1", &key, "ocsp", "01");
    let mut server = lab.serve("hsm1");
    let spec = KeySpec {
        name: "hsm1".into(),
        module: P11KIT_CLIENT.into(),
        module_env: [("P11_KIT_SERVER_ADDRESS".to_owned(), server.address())].into(),
        token: TokenSelector::Label("hsm1".into()),
        key: KeySelector {
            label: Some("ocsp".into()),
            id: None,
        },
        sessions: 2,
        rsa_mechanism: RsaMechanism::Auto,
    };
    let key = Arc::new(HostedKey::new(spec, AuthPin::from(PIN), None).expect("key"));
    key.connect().expect("connect");
    let first_pid = key.host_pid().expect("a host");
    server.freeze();
    let stuck = {
        let key = key.clone();
        std::thread::spawn(move || {
            let r = key.sign(&[1; 32], Duration::from_millis(100));
            (r, Instant::now())
        })
    };
    wait_for(
        "the signature to be in flight",
        Duration::from_secs(5),
        || {
            key.oldest_call()
                .is_some_and(|age| age >= Duration::from_millis(300))
        },
    );
    // Recovery kills the stuck host at once; the fresh one cannot reach the frozen server
    // either, and is killed after HOST_SETUP_TIMEOUT.
    let started = Instant::now();
    let e = key
        .recover(Duration::from_millis(300))
        .expect_err("the server is frozen");
    assert!(!e.is_permanent(), "{e}");
    let (r, returned) = stuck.join().expect("thread");
    assert!(r.is_err(), "the stuck call returned {r:?}");
    assert!(
        returned < started + Duration::from_secs(1),
        "the stuck call returned {:?} after the recovery began",
        returned - started
    );
    server.kill();
    let _replacement = lab.serve("hsm1");
    wait_for(
        "the key back through a fresh host",
        Duration::from_secs(20),
        || key.recover(Duration::from_millis(300)).is_ok(),
    );
    assert_ne!(key.host_pid(), Some(first_pid));
    assert!(key.sign(&[2; 32], Duration::from_secs(1)).is_ok());
}

// === CRLs signed through an HSM pool (`crl_signer`) ===

/// Adds to the issuer of `config` (written by [`write_config`]) `crl_signer` naming one
/// network HSM per token in `tokens`, each with the key labelled `ca`, id 02, plus `extra`
/// lines of the issuer.
fn add_crl_signer(lab: &Lab, config: &Path, tokens: &[&Hsm], extra: &str) {
    let names: Vec<String> = tokens.iter().map(|h| format!("\"{}\"", h.name)).collect();
    let mut text = std::fs::read_to_string(config).expect("config");
    text.push_str(&format!(
        "{extra}crl_signer = {{ hsm = [{}] }}\n",
        names.join(", ")
    ));
    for h in tokens {
        text.push_str(&format!(
            "\n[[hsm]]\nname = \"{}\"\nmodule = \"{P11KIT_CLIENT}\"\nmodule_env = {{ P11_KIT_SERVER_ADDRESS = \"{}\" }}\ntoken_label = \"{}\"\nkey_label = \"ca\"\nkey_id = \"02\"\npin_file = \"{}\"\n",
            h.name,
            h.server.address(),
            h.name,
            lab.pin_file().display()
        ));
    }
    std::fs::write(config, text).expect("config");
}

/// A token named `name` holding `key` as the CA key (label `ca`, id 02), served by p11-kit.
fn ca_token(lab: &Lab, name: &'static str, key: &Path) -> Hsm {
    lab.token(name);
    lab.import(name, key, "ca", "02");
    Hsm {
        name,
        server: lab.serve(name),
    }
}

/// `openssl crl -CAfile ca.pem` on a DER CRL: asserts "verify OK" and returns the `-text` dump.
fn openssl_crl_verify(lab: &Lab, pki: &Pki, der: &[u8]) -> String {
    let file = lab.path("check.crl");
    std::fs::write(&file, der).expect("crl");
    let out = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(&file)
        .arg("-CAfile")
        .arg(&pki.ca)
        .output()
        .expect("openssl crl");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.status.success() && all.contains("verify OK"),
        "openssl crl: {all}"
    );
    all
}

fn revoke(config: &Path, serial: &str) {
    let out = vigil(
        config,
        &[
            "revoke",
            "--issuer",
            "test",
            "--serial",
            serial,
            "--reason",
            "keyCompromise",
        ],
    );
    assert!(
        out.status.success(),
        "revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The CA key in a network HSM signs the CRLs: `vigil hsm test` checks it against the CA
/// certificate, `vigil crl publish` publishes through it, `vigil serve` serves that CRL and
/// publishes the next one through its own pool after a revocation; `openssl crl -CAfile`
/// verifies both, and they list the revoked serials. No `crl_key` is configured: only the
/// HSM can have signed. With the CA's HSM gone, `/readyz` says so and stays 200.
#[test]
fn crls_are_signed_through_an_hsm_pool_holding_the_ca_key() {
    require_softhsm!();
    let lab = Lab::new();
    let (hsms, pki) = network_hsms(&lab, &["hsm1"]);
    let mut ca = ca_token(&lab, "ca1", &lab.path("ca.key"));
    let config = write_config(
        &lab,
        &pki,
        &[&hsms[0]],
        "[crl]\npublish_delay = \"200ms\"\n",
    );
    add_crl_signer(&lab, &config, &[&ca], "");
    issue(&config, &["0A", "0B", "0C"]);
    revoke(&config, "0B");

    let test = vigil(&config, &["hsm", "test"]);
    let text = String::from_utf8_lossy(&test.stdout);
    assert!(
        test.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(
        text.contains("issuer test/crl (key of the CA certificate, signs CRLs):")
            && text.contains("ok    ca1")
            && text.contains("ok    hsm1"),
        "{text}"
    );

    let publish = vigil(&config, &["crl", "publish"]);
    let out = String::from_utf8_lossy(&publish.stdout);
    assert!(
        publish.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&publish.stderr)
    );
    assert!(out.contains("test.crl: CRLNumber"), "{out}");

    let v = Vigil::start(&config, &lab);
    let first = v.get("/crl/test.crl");
    assert_eq!(first.status, 200, "{}", v.log());
    let dump = openssl_crl_verify(&lab, &pki, &first.body);
    assert!(dump.contains("Serial Number: 0B"), "{dump}");
    assert!(!dump.contains("Serial Number: 0C"), "{dump}");
    assert_eq!(
        v.metric("vigil_signer_pool_members_up{issuer=\"test/crl\"}"),
        1.0
    );
    let signed_before = v.metric("vigil_hsm_signatures_total{hsm=\"ca1\"}");

    // A revocation: the running publisher signs the next CRL through its pool.
    revoke(&config, "0C");
    let mut dump = String::new();
    wait_or(
        "a CRL listing 0C",
        Duration::from_secs(10),
        || {
            let r = v.get("/crl/test.crl");
            r.status == 200 && r.body != first.body && {
                dump = openssl_crl_verify(&lab, &pki, &r.body);
                dump.contains("Serial Number: 0C")
            }
        },
        || v.log(),
    );
    assert!(dump.contains("Serial Number: 0B"), "{dump}");
    assert!(
        v.metric("vigil_hsm_signatures_total{hsm=\"ca1\"}") > signed_before,
        "the CA token signed nothing\n{}",
        v.log()
    );
    assert_eq!(v.get("/readyz").body, b"ready\n");

    // The CA's HSM gone: OCSP answers go on, the replica stays ready and says why CRLs stop.
    ca.server.kill();
    wait_or(
        "/readyz to report the CRL signer",
        Duration::from_secs(10),
        || {
            let r = v.get("/readyz");
            r.status == 200
                && String::from_utf8_lossy(&r.body).contains(
                    "no CRL signer (no HSM in service) for test/crl: CRLs are not published",
                )
        },
        || v.log(),
    );
    let r = v.post(&ocsp_request(&lab, &pki, "0A", false));
    assert_eq!(
        inspect(
            &r.body,
            SignatureAlgorithm::EcdsaP256Sha256,
            &responder_key(&pki)
        ),
        (OcspResponseStatus::Successful, true)
    );
}

/// A CRL signer token whose key is not the CA certificate's — here the responder's key, which
/// does match the OCSP signing certificate — stops `vigil crl publish` and `vigil serve` with
/// a message naming the issuer and the HSM, and `vigil hsm test` fails it. `crl_key` beside
/// `crl_signer` is a configuration error naming both.
#[test]
fn a_crl_signer_key_that_is_not_the_ca_key_stops_publishing_and_start_up() {
    require_softhsm!();
    let lab = Lab::new();
    let (hsms, pki) = network_hsms(&lab, &["hsm1"]);
    let wrong = ca_token(&lab, "ca1", &lab.path("responder.key"));
    let config = write_config(&lab, &pki, &[&hsms[0]], "");
    let good = std::fs::read_to_string(&config).expect("config");
    add_crl_signer(&lab, &config, &[&wrong], "");

    let wants = [
        "issuer test: crl_signer",
        "CA certificate",
        "hsm \"ca1\"",
        "does not match the certificate's public key",
    ];
    let publish = vigil(&config, &["crl", "publish"]);
    let stderr = String::from_utf8_lossy(&publish.stderr);
    assert!(!publish.status.success(), "{stderr}");
    for want in wants {
        assert!(
            stderr.contains(want),
            "crl publish: lacks {want:?}: {stderr}"
        );
    }
    let serve = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("VIGIL_LISTEN", "127.0.0.1:0")
        .output()
        .expect("vigil serve");
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert!(!serve.status.success(), "{stderr}");
    assert!(!String::from_utf8_lossy(&serve.stdout).contains("listening"));
    for want in wants {
        assert!(stderr.contains(want), "serve: lacks {want:?}: {stderr}");
    }
    let test = vigil(&config, &["hsm", "test"]);
    let stdout = String::from_utf8_lossy(&test.stdout);
    assert!(!test.status.success(), "{stdout}");
    assert!(
        stdout.contains("ok    hsm1") && stdout.contains("FAIL  ca1"),
        "{stdout}"
    );

    // crl_key and crl_signer together: refused before any HSM is touched.
    std::fs::write(&config, &good).expect("config");
    add_crl_signer(
        &lab,
        &config,
        &[&wrong],
        &format!("crl_key = \"{}\"\n", lab.path("ca.key").display()),
    );
    let check = vigil(&config, &["check-config"]);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success(), "{stderr}");
    assert!(
        stderr.contains("issuer[0] (test): set either crl_key or crl_signer, not both"),
        "{stderr}"
    );
}
