//! `vigil drill`: read-only checks of a live deployment, and the small blocking OCSP / HTTP
//! client they (and the fault drills in `tests/drills.rs`) use.
//!
//! Checks, each a line of the report with `ok`, `WARN` or `FAIL`:
//! - every replica's `/readyz`;
//! - every replica answers OCSP for a sample of serials of every issuer, and each answer
//!   verifies: the signature with the responder certificate in the response (itself signed by
//!   the CA) or with the CA key;
//! - the sample gets the same status from every replica (the consistency audit, across
//!   regions when replicas of several regions are given);
//! - the feed lag of each region: the age of the newest entry (event or heartbeat) in the
//!   region's stream;
//! - per issuer, the CRL every replica serves: signature, nextUpdate in the future, age, and
//!   the CRL numbers (never lower than another replica's by more than the publishing lag);
//! - responder and CA certificate expiry;
//! - with `crl_consumer`, the issuers' CRLs read as a CRL aggregator reads them, from the
//!   CCADB JSON array ([`crl_consumer`]).
//!
//! With `write`, a canary serial is revoked through the admin API and the time until every
//! replica answers `revoked` is measured.
//!
//! Every request the checks make is also kept as a timed probe, so the run can be drawn as a
//! timeline ([`Report::timeline`], `vigil drill --report-html`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use der::{Decode, Encode};
use x509_cert::Certificate;

use crate::clock::Clock;
use crate::report::timeline::{self, Mark, MarkKind, Outcome, Timeline};

mod client;
pub mod crl_consumer;
pub use client::{
    Answer, DrillError, HttpResponse, Status, decode_response, http, ocsp_request, query,
};
pub use crl_consumer::ConsumerOptions;

/// What `vigil drill` is pointed at.
#[derive(Debug, Clone)]
pub struct Target {
    /// Replica base URLs (`http://host:port`).
    pub replicas: Vec<String>,
    /// `(region name, redis://...)` per region.
    pub regions: Vec<(String, String)>,
    /// Feed key prefix (`feed.key_prefix`).
    pub key_prefix: String,
    /// `(issuer name, CA certificate)`.
    pub issuers: Vec<(String, PathBuf)>,
    /// Serials (hex) to audit, per issuer (the same sample for every issuer).
    pub serials: Vec<String>,
    /// Longest acceptable feed lag.
    pub max_lag: Duration,
    /// Certificates expiring within this are a warning.
    pub expiry_warning: Duration,
    /// With `Some((admin URL, token, issuer, serial))`: revoke the canary and time it.
    pub canary: Option<(String, String, String, String)>,
    /// Longest wait for the canary.
    pub canary_timeout: Duration,
    /// With `Some`: the CRL consumer's check ([`crl_consumer`]).
    pub crl_consumer: Option<ConsumerOptions>,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fine.
    Ok,
    /// Worth a look; does not fail the drill.
    Warn,
    /// Falls short; the exit code is non-zero.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    /// The check (`readiness`, `ocsp`, `consistency`, `feed-lag`, `crl`, `expiry`, `canary`).
    pub check: &'static str,
    /// Outcome.
    pub level: Level,
    /// What was seen.
    pub detail: String,
}

/// The report of a drill.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Every finding, in order.
    pub findings: Vec<Finding>,
    /// Canary propagation to every replica, milliseconds (with `write`).
    pub canary_propagation_ms: Option<u64>,
    /// When the run started (the origin of `probes` and `marks`).
    #[serde(skip)]
    started: Option<Instant>,
    /// Every request the checks made, timed.
    #[serde(skip)]
    pub probes: Vec<timeline::Sample>,
    /// The canary's revocation and propagation, on the same clock.
    #[serde(skip)]
    pub marks: Vec<Mark>,
}

impl Report {
    fn push(&mut self, check: &'static str, level: Level, detail: impl Into<String>) {
        self.findings.push(Finding {
            check,
            level,
            detail: detail.into(),
        });
    }

    fn since_start(&self, t: Instant) -> f64 {
        self.started
            .map_or(0.0, |s| t.saturating_duration_since(s).as_secs_f64())
    }

    /// Keeps one request, sent at `began`, that got `outcome`.
    fn probe(&mut self, began: Instant, outcome: Outcome) {
        self.probes.push(timeline::Sample {
            at_secs: self.since_start(began),
            outcome,
            latency_ms: began.elapsed().as_secs_f64() * 1000.0,
        });
    }

    fn mark(&mut self, at: Instant, kind: MarkKind, label: String) {
        self.marks.push(Mark {
            at_secs: self.since_start(at),
            kind,
            label,
        });
    }

    /// The run as a timeline: its probes per second by outcome and latency, the canary marked.
    pub fn timeline(&self, name: &str) -> Timeline {
        let fails = self
            .findings
            .iter()
            .filter(|f| f.level == Level::Fail)
            .count();
        Timeline {
            name: name.to_owned(),
            summary: format!(
                "{} checks, {fails} failed; {} requests{}",
                self.findings.len(),
                self.probes.len(),
                self.canary_propagation_ms
                    .map_or(String::new(), |ms| format!(
                        "; canary answered revoked everywhere after {ms} ms"
                    ))
            ),
            buckets: timeline::buckets(&self.probes),
            fault: None,
            marks: self.marks.clone(),
        }
    }

    /// The worst level seen.
    pub fn worst(&self) -> Level {
        self.findings
            .iter()
            .map(|f| f.level)
            .max()
            .unwrap_or(Level::Ok)
    }

    /// The report as text, one finding per line.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for f in &self.findings {
            let tag = match f.level {
                Level::Ok => "ok  ",
                Level::Warn => "WARN",
                Level::Fail => "FAIL",
            };
            s.push_str(&format!("{tag} {:<12} {}\n", f.check, f.detail));
        }
        let fails = self
            .findings
            .iter()
            .filter(|f| f.level == Level::Fail)
            .count();
        s.push_str(&format!(
            "drill: {} checks, {} failed\n",
            self.findings.len(),
            fails
        ));
        s
    }
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs every check against `t`; times (expiry, nextUpdate, feed lag) are read from `clock`.
pub fn run(t: &Target, clock: &Clock) -> Report {
    let mut r = Report {
        started: Some(Instant::now()),
        ..Report::default()
    };
    for base in &t.replicas {
        let began = Instant::now();
        let res = http(base, "GET", "/readyz", &[], b"", TIMEOUT);
        let ready = matches!(&res, Ok(resp) if resp.status == 200);
        r.probe(
            began,
            if ready {
                Outcome::Other
            } else {
                Outcome::Failed
            },
        );
        match res {
            Ok(resp) if resp.status == 200 => r.push("readiness", Level::Ok, base.clone()),
            Ok(resp) => r.push(
                "readiness",
                Level::Fail,
                format!(
                    "{base}: HTTP {} {}",
                    resp.status,
                    String::from_utf8_lossy(&resp.body).trim()
                ),
            ),
            Err(e) => r.push("readiness", Level::Fail, format!("{base}: {e}")),
        }
    }
    let mut cas = Vec::new();
    for (name, path) in &t.issuers {
        match crate::pki::read_certificate(path) {
            Ok(c) => cas.push((name.clone(), c)),
            Err(e) => r.push("issuer", Level::Fail, format!("{name}: {e}")),
        }
    }
    let warn_before = clock.now() + t.expiry_warning.as_secs() as i64;
    for (name, ca) in &cas {
        let not_after = ca
            .tbs_certificate
            .validity
            .not_after
            .to_unix_duration()
            .as_secs() as i64;
        expiry(&mut r, &format!("CA {name}"), not_after, warn_before, clock);
        ocsp_checks(&mut r, t, name, ca, warn_before, clock);
        crl_checks(&mut r, t, name, ca, clock);
    }
    if let Some(opts) = &t.crl_consumer {
        crl_consumer::check(&mut r, t, opts, &cas, clock.now());
    }
    feed_checks(&mut r, t, clock);
    if let Some((admin, token, issuer, serial)) = &t.canary {
        match cas.iter().find(|(n, _)| n == issuer) {
            Some((_, ca)) => canary(&mut r, t, admin, token, issuer, serial, ca),
            None => r.push(
                "canary",
                Level::Fail,
                format!("issuer {issuer} not among --issuer"),
            ),
        }
    }
    r
}

fn expiry(r: &mut Report, what: &str, not_after: i64, warn_before: i64, clock: &Clock) {
    let now = clock.now();
    let days = (not_after - now) as f64 / 86400.0;
    if not_after <= now {
        r.push("expiry", Level::Fail, format!("{what} expired"));
    } else if not_after <= warn_before {
        r.push(
            "expiry",
            Level::Warn,
            format!("{what} expires in {days:.1} days"),
        );
    } else {
        r.push(
            "expiry",
            Level::Ok,
            format!("{what} valid for {days:.1} days"),
        );
    }
}

fn ocsp_checks(
    r: &mut Report,
    t: &Target,
    name: &str,
    ca: &Certificate,
    warn_before: i64,
    clock: &Clock,
) {
    let mut responder_not_after: Option<i64> = None;
    let mut inconsistent = Vec::new();
    for serial_hex in &t.serials {
        let serial = match crate::status::Serial::from_hex(serial_hex) {
            Ok(s) => s,
            Err(e) => {
                r.push("ocsp", Level::Fail, format!("serial {serial_hex}: {e}"));
                continue;
            }
        };
        let mut seen: Vec<(String, Status)> = Vec::new();
        for base in &t.replicas {
            let began = Instant::now();
            let res = query(base, ca, serial.as_der_content(), true, TIMEOUT);
            let outcome = match &res {
                Ok(a) if a.verified == Some(true) && a.next_update > clock.now() => {
                    status_outcome(a.status)
                }
                Ok(_) => Outcome::Wrong,
                Err(_) => Outcome::Failed,
            };
            r.probe(began, outcome);
            match res {
                Ok(a) if a.verified == Some(true) && a.next_update > clock.now() => {
                    if let Some(n) = a.responder_not_after {
                        responder_not_after = Some(responder_not_after.map_or(n, |m| m.min(n)));
                    }
                    seen.push((base.clone(), a.status));
                }
                Ok(a) if a.verified != Some(true) => r.push(
                    "ocsp",
                    Level::Fail,
                    format!("{base} {name}/{serial_hex}: signature does not verify"),
                ),
                Ok(_) => r.push(
                    "ocsp",
                    Level::Fail,
                    format!("{base} {name}/{serial_hex}: nextUpdate has passed"),
                ),
                Err(e) => r.push(
                    "ocsp",
                    Level::Fail,
                    format!("{base} {name}/{serial_hex}: {e}"),
                ),
            }
        }
        if seen.windows(2).any(|w| w[0].1 != w[1].1) {
            let all: Vec<String> = seen.iter().map(|(b, s)| format!("{b}={s}")).collect();
            inconsistent.push(format!("{serial_hex}: {}", all.join(" ")));
        }
    }
    r.push(
        "ocsp",
        Level::Ok,
        format!(
            "{name}: {} serials asked of {} replicas",
            t.serials.len(),
            t.replicas.len()
        ),
    );
    if inconsistent.is_empty() {
        r.push(
            "consistency",
            Level::Ok,
            format!("{name}: every replica gives every sampled serial the same status"),
        );
    } else {
        r.push(
            "consistency",
            Level::Fail,
            format!("{name}: {}", inconsistent.join("; ")),
        );
    }
    if let Some(n) = responder_not_after {
        expiry(r, &format!("responder of {name}"), n, warn_before, clock);
    }
}

fn crl_checks(r: &mut Report, t: &Target, name: &str, ca: &Certificate, clock: &Clock) {
    let mut numbers = Vec::new();
    for base in &t.replicas {
        let began = Instant::now();
        let res = http(base, "GET", &format!("/crl/{name}.crl"), &[], b"", TIMEOUT);
        let fetched = matches!(&res, Ok(resp) if resp.status == 200);
        r.probe(
            began,
            if fetched {
                Outcome::Other
            } else {
                Outcome::Failed
            },
        );
        let resp = match res {
            Ok(resp) if resp.status == 200 => resp,
            Ok(resp) if resp.status == 404 && t.crl_consumer.is_some() => {
                // sharded: no CRL at /crl/NAME.crl; the consumer check reads every shard
                continue;
            }
            Ok(resp) => {
                r.push(
                    "crl",
                    Level::Fail,
                    format!("{base} {name}: HTTP {}", resp.status),
                );
                continue;
            }
            Err(e) => {
                r.push("crl", Level::Fail, format!("{base} {name}: {e}"));
                continue;
            }
        };
        let crl = match x509_cert::crl::CertificateList::from_der(&resp.body) {
            Ok(c) => c,
            Err(e) => {
                r.push(
                    "crl",
                    Level::Fail,
                    format!("{base} {name}: undecodable: {e}"),
                );
                continue;
            }
        };
        let verified = crl
            .tbs_cert_list
            .to_der()
            .map_err(|e| e.to_string())
            .and_then(|tbs| {
                crate::crl::lint::verify_signature(
                    &ca.tbs_certificate.subject_public_key_info,
                    &crl.signature_algorithm,
                    &tbs,
                    crl.signature.raw_bytes(),
                )
                .map_err(|e| e.to_string())
            });
        if verified != Ok(true) {
            r.push(
                "crl",
                Level::Fail,
                format!("{base} {name}: signature does not verify ({verified:?})"),
            );
            continue;
        }
        let next = crl
            .tbs_cert_list
            .next_update
            .map(|t| t.to_unix_duration().as_secs() as i64)
            .unwrap_or(0);
        let this = crl.tbs_cert_list.this_update.to_unix_duration().as_secs() as i64;
        let number = crate::crl::lint::number_of(&resp.body).ok();
        let now = clock.now();
        if next <= now {
            r.push(
                "crl",
                Level::Fail,
                format!("{base} {name}: nextUpdate has passed (stale CRL)"),
            );
        } else {
            r.push(
                "crl",
                Level::Ok,
                format!(
                    "{base} {name}: number {}, {}s old, {}h to nextUpdate",
                    number.map_or("none".into(), |n| n.to_string()),
                    now - this,
                    (next - now) / 3600
                ),
            );
        }
        numbers.push(number);
    }
    if numbers.iter().any(|n| n.is_none()) {
        r.push(
            "crl",
            Level::Fail,
            format!("{name}: a CRL without a CRLNumber"),
        );
    } else if let (Some(lo), Some(hi)) = (numbers.iter().min(), numbers.iter().max())
        && lo != hi
    {
        r.push(
                "crl",
                Level::Warn,
                format!("{name}: replicas serve CRL numbers {lo:?} .. {hi:?} (a refresh in flight, or a replica behind)"),
            );
    }
}

fn feed_checks(r: &mut Report, t: &Target, clock: &Clock) {
    for (region, url) in &t.regions {
        let key = format!("{}:feed", t.key_prefix);
        let res = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(TIMEOUT))
            .and_then(|mut con| {
                con.set_read_timeout(Some(TIMEOUT))?;
                redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query::<redis::streams::StreamRangeReply>(&mut con)
            });
        match res {
            Ok(reply) => {
                let newest = reply
                    .ids
                    .first()
                    .and_then(|e| e.id.split('-').next().and_then(|ms| ms.parse::<u64>().ok()));
                let now_ms = clock.now_ms().max(0) as u64;
                match newest {
                    None => r.push(
                        "feed-lag",
                        Level::Fail,
                        format!("region {region}: {key} is empty (no heartbeats)"),
                    ),
                    Some(ms) => {
                        let lag = Duration::from_millis(now_ms.saturating_sub(ms));
                        let level = if lag > t.max_lag {
                            Level::Fail
                        } else {
                            Level::Ok
                        };
                        r.push(
                            "feed-lag",
                            level,
                            format!(
                                "region {region}: newest entry {:.1}s old (bound {}s)",
                                lag.as_secs_f64(),
                                t.max_lag.as_secs()
                            ),
                        );
                    }
                }
            }
            Err(e) => r.push(
                "feed-lag",
                Level::Fail,
                format!("region {region}: {url}: {e}"),
            ),
        }
    }
}

fn canary(
    r: &mut Report,
    t: &Target,
    admin: &str,
    token: &str,
    issuer: &str,
    serial_hex: &str,
    ca: &Certificate,
) {
    let serial = match crate::status::Serial::from_hex(serial_hex) {
        Ok(s) => s,
        Err(e) => {
            r.push("canary", Level::Fail, format!("serial {serial_hex}: {e}"));
            return;
        }
    };
    let body = serde_json::json!({"issuer": issuer, "serial": serial_hex, "reason": "superseded"})
        .to_string();
    let auth = format!("Bearer {token}");
    let start = Instant::now();
    match http(
        admin,
        "POST",
        "/v1/revoke",
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
        TIMEOUT,
    ) {
        Ok(resp) if resp.status == 200 => {
            r.mark(
                Instant::now(),
                MarkKind::Revocation,
                format!("canary {serial_hex} revoked"),
            );
        }
        Ok(resp) => {
            r.push(
                "canary",
                Level::Fail,
                format!(
                    "revoke via {admin}: HTTP {} {}",
                    resp.status,
                    String::from_utf8_lossy(&resp.body)
                ),
            );
            return;
        }
        Err(e) => {
            r.push("canary", Level::Fail, format!("revoke via {admin}: {e}"));
            return;
        }
    }
    let mut pending: Vec<&String> = t.replicas.iter().collect();
    while !pending.is_empty() && start.elapsed() < t.canary_timeout {
        let mut answered = Vec::new();
        pending.retain(|base| {
            let began = Instant::now();
            let res = query(base, ca, serial.as_der_content(), false, TIMEOUT);
            answered.push((
                began,
                res.as_ref()
                    .map_or(Outcome::Failed, |a| status_outcome(a.status)),
            ));
            !matches!(res, Ok(a) if a.status == Status::Revoked)
        });
        for (began, outcome) in answered {
            r.probe(began, outcome);
        }
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let ms = start.elapsed().as_millis() as u64;
    if pending.is_empty() {
        r.canary_propagation_ms = Some(ms);
        r.mark(
            Instant::now(),
            MarkKind::Converged,
            format!("every replica answers revoked ({ms} ms)"),
        );
        r.push(
            "canary",
            Level::Ok,
            format!("{issuer}/{serial_hex} revoked; every replica answers revoked after {ms} ms"),
        );
    } else {
        let p: Vec<&str> = pending.iter().map(|s| s.as_str()).collect();
        r.push(
            "canary",
            Level::Fail,
            format!("{issuer}/{serial_hex}: not revoked after {ms} ms on {p:?}"),
        );
    }
}

/// A verified answer's outcome on the timeline.
fn status_outcome(status: Status) -> Outcome {
    match status {
        Status::Good => Outcome::Good,
        Status::Revoked => Outcome::Revoked,
        Status::Unknown => Outcome::Unknown,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::ocsp::HashAlgorithm;
    use x509_ocsp::OcspResponseStatus;

    fn ca() -> Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Certificate::from_der(cert.der()).unwrap()
    }

    #[test]
    fn requests_decode_with_vigils_own_decoder_and_match_the_issuer() {
        let ca = ca();
        let der = ocsp_request(&ca, &[0x10, 0xff]).unwrap();
        let req = crate::ocsp::request::decode_request(&der, &Default::default()).unwrap();
        assert_eq!(req.certs.len(), 1);
        assert!(req.nonce.is_none());
        let c = &req.certs[0];
        assert_eq!(c.hash, HashAlgorithm::Sha1);
        assert_eq!(c.serial.as_der_content(), &[0x10, 0xff]);
        let name = ca.tbs_certificate.subject.to_der().unwrap();
        let key = ca
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes();
        let hashes = crate::ocsp::issuer::IssuerHashes::new(&name, key);
        assert_eq!(
            c.cert_id.issuer_name_hash.as_bytes(),
            hashes.name_hash(HashAlgorithm::Sha1)
        );
        assert_eq!(
            c.cert_id.issuer_key_hash.as_bytes(),
            hashes.key_hash(HashAlgorithm::Sha1)
        );
    }

    #[test]
    fn error_responses_and_garbage_are_errors_not_statuses() {
        let e = decode_response(&[0x30, 0x03, 0x0a, 0x01, 0x03], None).unwrap_err();
        assert!(
            matches!(e, DrillError::Status(OcspResponseStatus::TryLater)),
            "{e}"
        );
        assert_eq!(e.to_string(), "OCSP TryLater");
        assert!(decode_response(b"garbage", None).is_err());
    }

    #[test]
    fn the_worst_finding_decides_the_exit() {
        let mut r = Report::default();
        assert_eq!(r.worst(), Level::Ok);
        r.push("a", Level::Warn, "w");
        assert_eq!(r.worst(), Level::Warn);
        r.push("b", Level::Fail, "f");
        r.push("c", Level::Ok, "o");
        assert_eq!(r.worst(), Level::Fail);
        assert!(r.text().ends_with("drill: 3 checks, 1 failed\n"));
    }

    #[test]
    fn expiry_is_judged_by_the_clock_handed_in() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ca.pem");
        let der = ca().to_der().unwrap();
        std::fs::write(
            &path,
            pem_rfc7468::encode_string("CERTIFICATE", pem_rfc7468::LineEnding::LF, &der).unwrap(),
        )
        .unwrap();
        let target = Target {
            replicas: vec![],
            regions: vec![],
            key_prefix: "vigil".into(),
            issuers: vec![("ca".into(), path)],
            serials: vec![],
            max_lag: Duration::from_secs(1),
            expiry_warning: Duration::from_secs(86400),
            canary: None,
            canary_timeout: Duration::from_secs(1),
            crl_consumer: None,
        };
        let expiry = |r: &Report| {
            r.findings
                .iter()
                .find(|f| f.check == "expiry")
                .map(|f| (f.level, f.detail.clone()))
                .unwrap()
        };
        // rcgen's default notAfter is 4096-01-01.
        let now = run(&target, &Clock::manual(1_764_806_400_000));
        assert_eq!(expiry(&now).0, Level::Ok, "{:?}", now.findings);
        let later = run(&target, &Clock::manual(70_000_000_000_000));
        assert_eq!(expiry(&later), (Level::Fail, "CA ca expired".into()));
    }

    #[test]
    fn http_rejects_other_schemes() {
        assert!(matches!(
            http("https://x", "GET", "/", &[], b"", Duration::from_secs(1)),
            Err(DrillError::UnsupportedUrl(u)) if u == "https://x"
        ));
    }
}
