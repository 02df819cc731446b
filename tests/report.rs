//! The drill timeline report (`vigil::report::timeline`) as a browser shows it: rendered for two
//! drills, loaded in headless Chromium (Debian's `chromium`), screenshotted to a PNG that must
//! hold a drawing, its DOM read back (one `<svg>` per drill, the marks), and its console free of
//! errors. Also `vigil drill --report-html` against a real `vigil serve`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use vigil::report::timeline::{self, Mark, MarkKind, Outcome, Sample, Timeline};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The window of the screenshot: wide enough for a chart (1100 px), tall enough for two.
const WINDOW: (u32, u32) = (1200, 2000);

/// A tiny deterministic generator, so the synthetic drills are the same every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What a synthetic fault does to the requests sent during it.
struct Effect {
    /// Share of the requests that wait `slow_ms` more (a hung replica behind the load
    /// balancer's `timeout server`).
    slow: f64,
    slow_ms: f64,
    /// Share of the requests that fail.
    failed: f64,
}

/// A drill as the fault drills see one: `rate` requests per second for `secs` seconds (a
/// corpus of good, revoked and unissued serials plus CRL downloads), a fault from `fault.0`
/// to `fault.1` with `effect`.
fn synthetic(
    name: &str,
    (secs, rate): (u32, u32),
    fault: (f64, f64),
    effect: Effect,
    seed: u64,
) -> Timeline {
    let mut rng = Lcg(seed);
    let mut samples = Vec::new();
    for i in 0..secs * rate {
        let at = f64::from(i) / f64::from(rate) + rng.next() / f64::from(rate);
        let in_fault = at >= fault.0 && at < fault.1;
        let pick = rng.next();
        let mut outcome = match pick {
            p if p < 0.55 => Outcome::Good,
            p if p < 0.80 => Outcome::Revoked,
            p if p < 0.95 => Outcome::Unknown,
            _ => Outcome::Other,
        };
        let mut latency_ms = 1.5 + 3.0 * rng.next() * rng.next();
        if in_fault && rng.next() < effect.slow {
            latency_ms += effect.slow_ms;
        }
        if in_fault && rng.next() < effect.failed {
            outcome = Outcome::Failed;
        }
        samples.push(Sample {
            at_secs: at,
            outcome,
            latency_ms,
        });
    }
    let revoke = fault.0 + 0.5;
    Timeline {
        name: name.into(),
        summary: format!(
            "{} requests, fault {:.1} s",
            samples.len(),
            fault.1 - fault.0
        ),
        buckets: timeline::buckets(&samples),
        fault: Some(fault),
        marks: vec![
            Mark {
                at_secs: revoke,
                kind: MarkKind::Revocation,
                label: "revoked 7F0001".into(),
            },
            Mark {
                at_secs: revoke + 0.42,
                kind: MarkKind::Propagated,
                label: "reachable replicas answer revoked".into(),
            },
            Mark {
                at_secs: fault.1 + 1.1,
                kind: MarkKind::Recovered,
                label: "every replica ready".into(),
            },
            Mark {
                at_secs: fault.1 + 1.6,
                kind: MarkKind::Converged,
                label: "converged".into(),
            },
        ],
    }
}

/// Runs headless Chromium on `page` with `extra` flags in a fresh profile; returns (success,
/// stdout, stderr).
fn chromium(page: &Path, extra: &[String]) -> (bool, String, String) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            &format!("--window-size={},{}", WINDOW.0, WINDOW.1),
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run /usr/bin/chromium (Debian's chromium; .ci/run installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Console messages (the page has no script: any is unexpected), uncaught exceptions and
/// failed loads in Chromium's log.
fn console_errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            l.contains(":CONSOLE")
                || l.contains("Uncaught")
                || l.contains("Failed to load resource")
        })
        .collect()
}

/// Loads `page` in Chromium: the screenshot must be a real drawing, the DOM must hold
/// `charts` charts and each of `texts`, and the console no error.
fn check_in_chromium(page: &Path, charts: usize, texts: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let png_path: PathBuf = dir.path().join("report.png");
    let (ok, _, log) = chromium(page, &[format!("--screenshot={}", png_path.display())]);
    assert!(ok, "chromium --screenshot failed:\n{log}");
    assert!(
        console_errors(&log).is_empty(),
        "{:?}",
        console_errors(&log)
    );
    let bytes = std::fs::read(&png_path).expect("chromium wrote no screenshot");
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes.as_slice()));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let frame = reader.next_frame(&mut buf).expect("decode the screenshot");
    assert_eq!((frame.width, frame.height), WINDOW, "screenshot size");
    let px = frame.line_size / frame.width as usize;
    let pixels: Vec<&[u8]> = buf[..frame.buffer_size()].chunks(px).collect();
    let white = pixels
        .iter()
        .filter(|p| p[..3].iter().all(|&c| c >= 250))
        .count();
    let mut colours: Vec<[u8; 3]> = pixels.iter().map(|p| [p[0], p[1], p[2]]).collect();
    colours.sort_unstable();
    colours.dedup();
    // Bars in six colours, the shaded fault, lines, anti-aliased text: far more than a blank
    // or single-colour page.
    assert!(colours.len() > 50, "{} distinct colours", colours.len());
    let drawn = pixels.len() - white;
    assert!(
        drawn > pixels.len() / 20,
        "only {drawn} of {} pixels are not white",
        pixels.len()
    );

    let (ok, dom, log) = chromium(page, &["--dump-dom".to_owned()]);
    assert!(ok, "chromium --dump-dom failed:\n{log}");
    assert!(
        console_errors(&log).is_empty(),
        "{:?}",
        console_errors(&log)
    );
    assert_eq!(dom.matches("<svg").count(), charts, "charts in the DOM");
    assert_eq!(dom.matches("<section class=\"drill\"").count(), charts);
    for t in texts {
        assert!(dom.contains(t), "the page lacks {t:?}");
    }
}

#[test]
fn a_two_drill_report_loads_in_chromium() {
    let drills = [
        synthetic(
            "replica hung (SIGSTOP)",
            (14, 150),
            (1.0, 11.0),
            Effect {
                slow: 0.25,
                slow_ms: 300.0,
                failed: 0.0,
            },
            7,
        ),
        synthetic(
            "region partition",
            (14, 150),
            (1.0, 11.0),
            Effect {
                slow: 0.05,
                slow_ms: 40.0,
                failed: 0.01,
            },
            11,
        ),
    ];
    // The data as the charts need it: the stacked bars hold every request, the p99 rises
    // during the fault.
    for d in &drills {
        let total: u32 = d.buckets.iter().map(|b| b.total()).sum();
        assert_eq!(total, 14 * 150);
        let p99_fault = d.buckets[5].p99_ms.unwrap();
        let p99_calm = d.buckets[12].p99_ms.unwrap();
        assert!(p99_fault > 10.0 * p99_calm, "{p99_fault} vs {p99_calm}");
    }
    let page = timeline::html(
        "vigil drill report",
        "synthetic drills: 150 requests/s, 10 s faults",
        &drills,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.html");
    std::fs::write(&path, &page).unwrap();
    // Self-contained: nothing fetched from anywhere, no script.
    for fetch in ["src=", "href=", "url(", "<script", "@import"] {
        assert!(!page.contains(fetch), "the page holds {fetch:?}");
    }
    check_in_chromium(
        &path,
        2,
        &[
            "replica hung (SIGSTOP)",
            "region partition",
            "revoked 7F0001",
            "converged",
            "fault from 1.0 s to 11.0 s",
            "answers per second by outcome",
            "p99",
        ],
    );
}

/// The serial (hex) of a demo certificate.
fn serial_of(data: &Path, name: &str) -> String {
    let cert = format!("certs/{name}.pem");
    let (ok, out) = common::openssl(data, &["x509", "-in", &cert, "-noout", "-serial"]);
    assert!(ok, "{out}");
    out.trim().trim_start_matches("serial=").to_owned()
}

#[test]
fn chromium_console_errors_are_seen() {
    // The check above is only worth something if Chromium's log shows a broken page.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.html");
    std::fs::write(
        &bad,
        "<html><body><script>console.error('boom'); notDefined();</script></body></html>",
    )
    .unwrap();
    let (ok, _, log) = chromium(&bad, &["--dump-dom".to_owned()]);
    assert!(ok, "{log}");
    let errors = console_errors(&log);
    assert!(errors.iter().any(|l| l.contains("boom")), "{log}");
    assert!(errors.iter().any(|l| l.contains("Uncaught")), "{log}");
}

#[test]
fn vigil_drill_writes_a_timeline_of_its_probes() {
    let (tmp, data) = common::demo_dir();
    // The embedded default, serving the demo PKI in tmp/vigil-data.
    let vigil = common::Vigil::start(tmp.path(), None, &[]);
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("drill.html");
    let out = Command::new(common::BIN)
        .current_dir(&data)
        .env_remove("VIGIL_CONFIG")
        .args(["drill", "--replica", &vigil.url(), "--issuer"])
        .arg(format!("demo={}", data.join("ca.pem").display()))
        .args(["--serial", &serial_of(&data, "good-1"), "--serial"])
        .arg(serial_of(&data, "revoked-1"))
        .args(["--serial", "DEAD"])
        .arg("--report-html")
        .arg(&html)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok   ocsp"), "{text}");
    let page = std::fs::read_to_string(&html).expect("--report-html wrote nothing");
    assert_eq!(page.matches("<svg").count(), 1);
    // Every probe is in the chart: readiness, 3 serials (good, revoked, unissued), one CRL.
    assert!(
        page.contains("5 requests over") && page.contains("good 1, revoked 1, unknown 1, other (CRL, probe, tryLater fresh) 2, failed 0, wrong 0"),
        "{page}"
    );
    check_in_chromium(&html, 1, &["vigil drill", "answers per second by outcome"]);
}
