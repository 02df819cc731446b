//! Hostile clients against the real binary: for each abuse, the process stays up, its memory
//! stays under a stated bound, and a well-behaved client alongside keeps getting correct
//! answers within its latency bound.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The memory bound every abuse test holds vigil to.
const RSS_BOUND_KIB: u64 = 256 * 1024;

/// The well-behaved client's latency bound for a cached answer under abuse.
const GOOD_CLIENT_BOUND: Duration = Duration::from_millis(500);

fn good_get_path(data: &Path) -> String {
    let (ok, t) = openssl(
        data,
        &[
            "ocsp",
            "-issuer",
            "ca.pem",
            "-cert",
            "certs/good-1.pem",
            "-no_nonce",
            "-reqout",
            "good.der",
        ],
    );
    assert!(ok, "{t}");
    let der = std::fs::read(data.join("good.der")).expect("der");
    format!(
        "/ocsp/{}",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

/// A cached GET answered correctly and fast.
fn well_behaved(v: &Vigil, path: &str, data: &Path) {
    let started = Instant::now();
    let r = get(v.addr, path, "");
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    std::fs::write(data.join("resp.der"), &r.body).expect("w");
    let (_, out) = openssl(
        data,
        &[
            "ocsp",
            "-respin",
            "resp.der",
            "-issuer",
            "ca.pem",
            "-CAfile",
            "ca.pem",
            "-cert",
            "certs/good-1.pem",
        ],
    );
    assert!(
        out.contains("good-1.pem: good") && out.contains("Response verify OK"),
        "{out}"
    );
    assert!(took < GOOD_CLIENT_BOUND, "good client waited {took:?}");
}

fn config(data: &Path, extra: &str) -> std::path::PathBuf {
    let cfg = data.join("abuse.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \".\"\n{extra}\n[[issuer]]\nname = \"demo\"\ncertificate = \"ca.pem\"\nresponder_certificate = \"responder.pem\"\nresponder_key = \"responder.key\"\n"
        ),
    )
    .expect("cfg");
    cfg
}

#[test]
fn thousands_of_idle_connections() {
    let (_tmp, data) = demo_dir();
    let cfg = config(
        &data,
        "[server]\nmax_connections = 3000\nheader_read_timeout = \"30s\"\nidle_timeout = \"30s\"",
    );
    let v = Vigil::start(&data, Some(&cfg), &[]);
    let path = good_get_path(&data);
    well_behaved(&v, &path, &data); // warm the cache
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(TcpStream::connect(v.addr).expect("connect"));
    }
    // half of them started a request head and stopped
    for s in idle.iter_mut().step_by(2) {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .expect("w");
    }
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..20 {
        well_behaved(&v, &path, &data);
    }
    let rss = rss_kib(v.child.id());
    assert!(
        rss < RSS_BOUND_KIB,
        "RSS {rss} KiB with 2000 idle connections"
    );
}

#[test]
fn connection_limit_makes_extra_clients_wait_not_fail() {
    let (_tmp, data) = demo_dir();
    let cfg = config(
        &data,
        "[server]\nmax_connections = 50\nheader_read_timeout = \"1s\"\nidle_timeout = \"2s\"",
    );
    let v = Vigil::start(&data, Some(&cfg), &[]);
    let path = good_get_path(&data);
    let hogs: Vec<TcpStream> = (0..60)
        .map(|_| TcpStream::connect(v.addr).expect("connect"))
        .collect();
    // the hogs are closed by the header-read timeout; a client queued behind them gets through
    let started = Instant::now();
    let r = get(v.addr, &path, "");
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?}",
        started.elapsed()
    );
    drop(hogs);
}

/// Concurrent clients of the nonce flood.
const FLOOD_CLIENTS: usize = 16;

#[test]
fn fresh_nonce_floods_are_shed_and_cached_answers_keep_flowing() {
    let (_tmp, data) = demo_dir();
    let cfg = config(
        &data,
        "[ocsp]\nnonce = \"echo\"\nsigning_concurrency = 1\nsigning_queue = 4",
    );
    let v = Vigil::start(&data, Some(&cfg), &[]);
    let path = good_get_path(&data);
    well_behaved(&v, &path, &data);
    // 32 distinct nonce requests, made by openssl
    let mut bodies = Vec::new();
    for i in 0..32 {
        let f = format!("n{i}.der");
        let (ok, t) = openssl(
            &data,
            &[
                "ocsp",
                "-issuer",
                "ca.pem",
                "-cert",
                "certs/good-2.pem",
                "-nonce",
                "-reqout",
                &f,
            ],
        );
        assert!(ok, "{t}");
        bodies.push(std::fs::read(data.join(&f)).expect("req"));
    }
    let addr = v.addr;
    // Sixteen clients against one signing slot and a queue of four: more arrive than the gate
    // holds, so some must be shed.
    let flood: Vec<_> = (0..FLOOD_CLIENTS)
        .map(|t| {
            let bodies = bodies.clone();
            std::thread::spawn(move || {
                let (mut ok, mut try_later) = (0, 0);
                let deadline = Instant::now() + Duration::from_secs(3);
                let mut i = t;
                while Instant::now() < deadline {
                    let r = post(addr, "/ocsp", &bodies[i % bodies.len()]);
                    i += FLOOD_CLIENTS;
                    assert_eq!(r.status, 200);
                    if r.body == [0x30, 0x03, 0x0A, 0x01, 0x03] {
                        try_later += 1;
                        assert_eq!(r.header("cache-control"), Some("no-cache"));
                    } else {
                        assert!(r.body.len() > 100, "a signed response");
                        ok += 1;
                    }
                }
                (ok, try_later)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..10 {
        well_behaved(&v, &path, &data);
    }
    let (ok, shed) = flood
        .into_iter()
        .map(|h| h.join().expect("flood thread"))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert!(ok > 0, "some nonce requests were signed");
    assert!(
        shed > 0,
        "no request was shed ({ok} signed): the flood did not overload the gate"
    );
    let m = String::from_utf8(get(v.addr, "/metrics", "").body).expect("utf8");
    let line = m
        .lines()
        .find(|l| l.starts_with("vigil_signing_shed_total"))
        .unwrap_or_else(|| panic!("no vigil_signing_shed_total after {shed} tryLater answers"));
    let metric_shed: u64 = line
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable metric line {line:?}"));
    assert_eq!(
        metric_shed, shed,
        "every tryLater was a shed signature ({ok} signed)"
    );
    assert!(rss_kib(v.child.id()) < RSS_BOUND_KIB);
}

#[test]
fn pipelined_garbage_is_answered_in_order() {
    let (_tmp, data) = demo_dir();
    let v = Vigil::start(data.parent().expect("p"), None, &[]);
    let path = good_get_path(&data);
    let mut s = TcpStream::connect(v.addr).expect("connect");
    let mut burst = Vec::new();
    for i in 0..200 {
        let body = format!("garbage number {i}");
        burst.extend_from_slice(
            format!(
                "POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    burst.extend_from_slice(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    s.write_all(&burst).expect("write");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("t");
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("read");
    let text = String::from_utf8_lossy(&all);
    assert_eq!(
        text.matches("HTTP/1.1 200 OK").count(),
        201,
        "one answer per pipelined request"
    );
    let malformed = all
        .windows(5)
        .filter(|w| *w == [0x30, 0x03, 0x0A, 0x01, 0x01])
        .count();
    assert_eq!(malformed, 200);
    // then raw bytes that are not HTTP at all: the connection is closed, the server lives on
    let mut s = TcpStream::connect(v.addr).expect("connect");
    s.write_all(&[0u8, 1, 2, 3, 0xFF, b'\r', b'\n', b'\r', b'\n'])
        .expect("w");
    let mut buf = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("t");
    let _ = s.read_to_end(&mut buf);
    well_behaved(&v, &path, &data);
}

#[test]
fn http2_prior_knowledge_and_stream_bursts() {
    let (_tmp, data) = demo_dir();
    let v = Vigil::start(data.parent().expect("p"), None, &[]);
    let path = good_get_path(&data);
    // h2load (nghttp2): 4 connections asking for 500 concurrent streams each — more than the
    // 128 vigil allows, so the client must queue — 8000 requests in all; every one answered.
    let url = format!("{}{}", v.url(), path);
    let out = std::process::Command::new("h2load")
        .args(["-n", "8000", "-c", "4", "-m", "500", &url])
        .output()
        .expect("h2load (package nghttp2-client, installed by .ci/run)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("8000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("status codes: 8000 2xx"), "{text}");
    well_behaved(&v, &path, &data);
    assert!(rss_kib(v.child.id()) < RSS_BOUND_KIB);
}
