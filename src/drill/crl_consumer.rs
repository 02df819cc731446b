//! The CRL consumer's check of `vigil drill --crl-consumer`: the issuer's CRLs read the way the
//! Web PKI's aggregators read them (Mozilla CRLite, Chrome CRLSets), from what the CA
//! discloses in CCADB, not from vigil's own paths.
//!
//! Per issuer:
//!
//! 1. `GET /crl/<issuer>.json` from every replica: the "JSON Array of Partitioned CRLs"; every
//!    replica must serve the same array (`crl-json`).
//! 2. Every URL of the array is fetched as an aggregator does (`crl-fetch`): bounded retries
//!    with a doubling backoff, and an interrupted download resumed with
//!    `Range: bytes=N-` and `If-Range: <ETag>` (206 expected; a 200 means the CRL changed and
//!    the download starts over). Every fetch begins with a Range request for its first
//!    [`RESUME_PROBE_BYTES`], so the resume path is exercised on every run, and the stitched
//!    bytes are compared with a second, plain download of the same version (`crl-range`).
//! 3. Each CRL: the signature verifies with the CA's key and the issuer name is the CA's
//!    subject (`crl-signature`); its issuingDistributionPoint names exactly the URL it was
//!    fetched from, byte for byte (`crl-idp`, BR §7.2.2.1; an array of one CRL may omit it);
//!    thisUpdate and CRLNumber are never older than the copy fetched before (`crl-previous`):
//!    the second download of this run, and with `--crl-state` the copy of the previous run;
//!    nextUpdate is in the future (`crl-next-update`); thisUpdate is at most `--crl-max-age`
//!    old (`crl-age`, default 336 h: the age past which CRLite treats a CRL as stale).
//! 4. The shards together (`crl-shards`): no serial on two shards of the issuer; entries per
//!    shard reported.
//! 5. With `--redis`, the view (`crl-view`): the issuer's snapshot in the first region that
//!    answers. A serial the view holds revoked must be on a shard unless its certificate
//!    expired before the oldest shard's thisUpdate (vigil drops those, [`crate::crl::select`]);
//!    missing from every shard it fails when its revocationTime is more than 24 h before the
//!    newest shard's thisUpdate (BR §4.9.7: a CRL within 24 h of a revocation) and warns
//!    otherwise (a revocation newer than the last complete CRLs, which a delta CRL carries
//!    until the next ones). A serial listed but not revoked in the view warns (a released
//!    hold lingers until the next complete CRL; or the view is behind).
//!
//! Every amount read from the network is bounded by a named limit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use der::{Decode, Encode};
use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::Certificate;

use super::{Level, Report, Target};
use crate::status::{CertStatus, Serial};

/// The longest JSON array accepted: 256 shards ([`crate::crl::shard::MAX_SHARDS`]) of URLs of
/// up to 200 characters fit in 64 KiB with room to spare.
pub const MAX_JSON_BYTES: usize = 64 * 1024;
/// The most URLs read from one array: four times vigil's own [`crate::crl::shard::MAX_SHARDS`].
pub const MAX_URLS: usize = 1024;
/// The largest CRL downloaded: 128 MiB, about six times the 19 MB of a CRL of 1 M entries and
/// far past the 10 MB some root programs ask shards to stay under.
pub const MAX_CRL_BYTES: u64 = 128 * 1024 * 1024;
/// The largest response head read.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The largest `--crl-state` file read.
pub const MAX_STATE_BYTES: u64 = 1024 * 1024;
/// The first piece of a download whose length `HEAD` did not tell, asked with
/// `Range: bytes=0-…` (with the length, half of it), so that each fetch resumes at least once.
pub const RESUME_PROBE_BYTES: u64 = 16 * 1024;
/// Requests that may fail (error, cut short, unexpected status) per URL before it is given up.
pub const MAX_ATTEMPTS: u32 = 4;
/// The wait before the first retry; doubled for each further one.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(250);
/// Timeout of each connect, read and write.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// CRLite's bound on a CRL's age: 336 h.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(336 * 3600);
/// BR §4.9.7: a revocation is on a CRL published within 24 hours.
const REVOCATION_TO_CRL_SECS: i64 = 24 * 3600;
/// Serials named in one finding, at most.
const EXAMPLES: usize = 5;

/// Options of the consumer check.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// A CRL whose thisUpdate is older than this fails.
    pub max_age: Duration,
    /// Where the previous run's thisUpdate and CRLNumber per URL are kept (read, then
    /// replaced); `None`: only the two downloads of this run are compared.
    pub state: Option<PathBuf>,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            max_age: DEFAULT_MAX_AGE,
            state: None,
        }
    }
}

/// What the previous fetch of one URL said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// CRLNumber.
    pub number: u64,
}

/// The state file: URL → the newest copy seen.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct State {
    /// Per URL.
    pub crls: BTreeMap<String, Seen>,
}

impl State {
    /// Reads `path`; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<State, String> {
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut text = Vec::new();
        f.take(MAX_STATE_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if text.len() as u64 > MAX_STATE_BYTES {
            return Err(format!(
                "{}: larger than {MAX_STATE_BYTES} bytes",
                path.display()
            ));
        }
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes `path` atomically (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

// === the check ===

/// Runs the consumer check for every issuer in `cas` and adds its findings to `r`.
pub(super) fn check(
    r: &mut Report,
    t: &Target,
    opts: &ConsumerOptions,
    cas: &[(String, Certificate)],
) {
    let mut state = match &opts.state {
        Some(p) => match State::load(p) {
            Ok(s) => s,
            Err(e) => {
                r.push("crl-previous", Level::Fail, format!("state file {e}"));
                State::default()
            }
        },
        None => State::default(),
    };
    let now = super::now();
    for (name, ca) in cas {
        let Some(urls) = disclosed_urls(r, t, name) else {
            continue;
        };
        let mut shards: Vec<(String, Checked)> = Vec::new();
        for url in &urls {
            if let Some(c) = check_url(r, url, urls.len(), ca, opts, &mut state, now) {
                shards.push((url.clone(), c));
            }
        }
        shard_checks(r, name, &shards, urls.len());
        if !t.regions.is_empty() && shards.len() == urls.len() {
            view_check(r, t, name, ca, &shards);
        }
    }
    if let Some(p) = &opts.state {
        if let Err(e) = state.save(p) {
            r.push("crl-previous", Level::Fail, format!("state file {e}"));
        }
    }
}

/// The JSON array of `name`, the same from every replica.
fn disclosed_urls(r: &mut Report, t: &Target, name: &str) -> Option<Vec<String>> {
    let mut agreed: Option<Vec<String>> = None;
    for base in &t.replicas {
        let url = format!("{base}/crl/{name}.json");
        let got = fetch(&url, "GET", &[], MAX_JSON_BYTES as u64).and_then(|f| {
            if f.status != 200 {
                return Err(format!("HTTP {}", f.status));
            }
            if !f.complete {
                return Err("cut short".into());
            }
            parse_array(&f.body)
        });
        match got {
            Ok(urls) => match &agreed {
                None => agreed = Some(urls),
                Some(a) if *a == urls => {}
                Some(a) => {
                    r.push(
                        "crl-json",
                        Level::Fail,
                        format!("{name}: {url} lists {urls:?}, another replica {a:?}"),
                    );
                    return None;
                }
            },
            Err(e) => {
                r.push("crl-json", Level::Fail, format!("{name}: {url}: {e}"));
                return None;
            }
        }
    }
    let urls = agreed?;
    r.push(
        "crl-json",
        Level::Ok,
        format!(
            "{name}: {} CRL URLs, the same from {} replicas",
            urls.len(),
            t.replicas.len()
        ),
    );
    Some(urls)
}

/// A JSON array of distinct `http://` URLs, at most [`MAX_URLS`], not empty.
pub fn parse_array(body: &[u8]) -> Result<Vec<String>, String> {
    let urls: Vec<String> =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON array of strings: {e}"))?;
    if urls.is_empty() {
        return Err("an empty array".into());
    }
    if urls.len() > MAX_URLS {
        return Err(format!("{} URLs, more than {MAX_URLS}", urls.len()));
    }
    let mut seen = BTreeSet::new();
    for u in &urls {
        if !u.starts_with("http://") {
            return Err(format!("{u:?}: not an http:// URL (BR §7.2.2.1)"));
        }
        if !seen.insert(u.as_str()) {
            return Err(format!("{u} listed twice"));
        }
    }
    Ok(urls)
}

/// What one CRL that was fetched says, for the checks across shards.
struct Checked {
    this_update: i64,
    entries: Vec<crate::crl::Entry>,
}

/// Fetches `url` (twice), checks it, and returns its entries when it could be read at all.
fn check_url(
    r: &mut Report,
    url: &str,
    listed: usize,
    ca: &Certificate,
    opts: &ConsumerOptions,
    state: &mut State,
    now: i64,
) -> Option<Checked> {
    let first = match download(url) {
        Ok(d) => d,
        Err(e) => {
            r.push("crl-fetch", Level::Fail, format!("{url}: {e}"));
            return None;
        }
    };
    r.push(
        "crl-fetch",
        if first.range_supported {
            Level::Ok
        } else {
            Level::Warn
        },
        format!(
            "{url}: {} bytes in {} requests ({} retried){}",
            first.body.len(),
            first.requests,
            first.retries,
            if first.range_supported {
                ""
            } else {
                "; Range ignored: an interrupted download starts over"
            }
        ),
    );
    let seen = crl_checks(r, url, &first.body, listed, ca, opts, now)?;
    let mut newest = seen.0;
    if let Some(prev) = state.crls.get(url) {
        regression(r, url, "the previous run's copy", prev, &newest);
    }
    // The second download: the same version must be the same bytes as the stitched one; a
    // newer version must not be older.
    match fetch(url, "GET", &[], MAX_CRL_BYTES) {
        Ok(f) if f.status == 200 && f.complete => {
            let same_version = f.etag.is_some() && f.etag == first.etag;
            if same_version && f.body != first.body {
                r.push(
                    "crl-range",
                    Level::Fail,
                    format!("{url}: the bytes stitched from Range requests differ from the whole CRL of the same ETag"),
                );
            } else if same_version {
                r.push(
                    "crl-range",
                    Level::Ok,
                    format!("{url}: stitched bytes equal the whole CRL"),
                );
            }
            match crate::crl::lint::parse(&f.body)
                .map_err(|e| e.to_string())
                .and_then(|p| {
                    Ok(Seen {
                        this_update: p.this_update,
                        number: crate::crl::lint::number_of(&f.body).map_err(|e| e.to_string())?,
                    })
                }) {
                Ok(again) => {
                    regression(r, url, "the first download of this run", &newest, &again);
                    if (again.this_update, again.number) > (newest.this_update, newest.number) {
                        newest = again;
                    }
                }
                Err(e) => r.push(
                    "crl-previous",
                    Level::Fail,
                    format!("{url}: the second download does not parse: {e}"),
                ),
            }
        }
        Ok(f) => r.push(
            "crl-fetch",
            Level::Fail,
            format!(
                "{url}: second download: HTTP {}{}",
                f.status,
                if f.complete { "" } else { ", cut short" }
            ),
        ),
        Err(e) => r.push(
            "crl-fetch",
            Level::Fail,
            format!("{url}: second download: {e}"),
        ),
    }
    state.crls.insert(url.to_owned(), newest);
    Some(seen.1)
}

/// `crl-previous`: `now` is not older than `before`.
fn regression(r: &mut Report, url: &str, what: &str, before: &Seen, now: &Seen) {
    if now.this_update < before.this_update || now.number < before.number {
        r.push(
            "crl-previous",
            Level::Fail,
            format!(
                "{url}: went back from {what} (thisUpdate {} → {}, CRLNumber {} → {})",
                before.this_update, now.this_update, before.number, now.number
            ),
        );
    } else {
        r.push(
            "crl-previous",
            Level::Ok,
            format!(
                "{url}: not older than {what} (CRLNumber {} → {})",
                before.number, now.number
            ),
        );
    }
}

/// The checks of one CRL's content; its thisUpdate/number and entries when it parses.
fn crl_checks(
    r: &mut Report,
    url: &str,
    der: &[u8],
    listed: usize,
    ca: &Certificate,
    opts: &ConsumerOptions,
    now: i64,
) -> Option<(Seen, Checked)> {
    let parsed = match crate::crl::lint::parse(der) {
        Ok(p) => p,
        Err(e) => {
            r.push(
                "crl-signature",
                Level::Fail,
                format!("{url}: undecodable: {e}"),
            );
            return None;
        }
    };
    let subject = ca.tbs_certificate.subject.to_der().unwrap_or_default();
    let verified = spki::AlgorithmIdentifierOwned::from_der(parsed.signature_algorithm)
        .map_err(|e| e.to_string())
        .and_then(|alg| {
            crate::crl::lint::verify_signature(
                &ca.tbs_certificate.subject_public_key_info,
                &alg,
                parsed.tbs,
                parsed.signature,
            )
            .map_err(|e| e.to_string())
        });
    match verified {
        Ok(true) if parsed.issuer == subject.as_slice() => r.push(
            "crl-signature",
            Level::Ok,
            format!("{url}: verifies with the CA's key"),
        ),
        Ok(true) => r.push(
            "crl-signature",
            Level::Fail,
            format!("{url}: the issuer name is not the CA's subject"),
        ),
        Ok(false) => r.push(
            "crl-signature",
            Level::Fail,
            format!("{url}: the signature does not verify with the CA's key"),
        ),
        Err(e) => r.push(
            "crl-signature",
            Level::Fail,
            format!("{url}: the signature cannot be checked: {e}"),
        ),
    }
    match idp_uris(&parsed.extensions) {
        Ok(None) if listed == 1 => r.push(
            "crl-idp",
            Level::Ok,
            format!("{url}: no issuingDistributionPoint (the one complete CRL of the issuer)"),
        ),
        Ok(None) => r.push(
            "crl-idp",
            Level::Fail,
            format!("{url}: no issuingDistributionPoint on a CRL of a partitioned set"),
        ),
        Ok(Some(uris)) if uris.len() == 1 && uris[0].as_slice() == url.as_bytes() => r.push(
            "crl-idp",
            Level::Ok,
            format!("{url}: issuingDistributionPoint is the URL"),
        ),
        Ok(Some(uris)) => {
            let shown: Vec<String> = uris
                .iter()
                .map(|u| String::from_utf8_lossy(u).into_owned())
                .collect();
            r.push(
                "crl-idp",
                Level::Fail,
                format!("{url}: issuingDistributionPoint names {shown:?}, not the URL it was fetched from"),
            );
        }
        Err(e) => r.push("crl-idp", Level::Fail, format!("{url}: {e}")),
    }
    match parsed.next_update {
        Some(next) if next > now => r.push(
            "crl-next-update",
            Level::Ok,
            format!("{url}: nextUpdate in {:.1} h", (next - now) as f64 / 3600.0),
        ),
        Some(next) => r.push(
            "crl-next-update",
            Level::Fail,
            format!(
                "{url}: nextUpdate passed {:.1} h ago (a stale CRL)",
                (now - next) as f64 / 3600.0
            ),
        ),
        None => r.push(
            "crl-next-update",
            Level::Fail,
            format!("{url}: no nextUpdate"),
        ),
    }
    let age = now - parsed.this_update;
    let bound = opts.max_age.as_secs() as i64;
    r.push(
        "crl-age",
        if age > bound { Level::Fail } else { Level::Ok },
        format!(
            "{url}: thisUpdate {:.1} h old (bound {} h)",
            age as f64 / 3600.0,
            bound / 3600
        ),
    );
    let number = match crate::crl::lint::number_of(der) {
        Ok(n) => n,
        Err(e) => {
            r.push("crl-previous", Level::Fail, format!("{url}: {e}"));
            return None;
        }
    };
    let entries = match crate::crl::lint::read_entries(der) {
        Ok(e) => e,
        Err(e) => {
            r.push("crl-shards", Level::Fail, format!("{url}: entries: {e}"));
            return None;
        }
    };
    Some((
        Seen {
            this_update: parsed.this_update,
            number,
        },
        Checked {
            this_update: parsed.this_update,
            entries,
        },
    ))
}

/// The fullName URIs of the issuingDistributionPoint, as the bytes of their IA5Strings;
/// `None` when the CRL has none.
fn idp_uris(extensions: &[(&[u8], bool, &[u8])]) -> Result<Option<Vec<Vec<u8>>>, String> {
    let Some((_, _, value)) = extensions
        .iter()
        .find(|(oid, _, _)| *oid == [0x55, 0x1D, 0x1C])
    else {
        return Ok(None);
    };
    let idp = IssuingDistributionPoint::from_der(value)
        .map_err(|e| format!("issuingDistributionPoint: {e}"))?;
    let names = match idp.distribution_point {
        Some(DistributionPointName::FullName(names)) => names,
        _ => return Err("issuingDistributionPoint has no fullName".into()),
    };
    Ok(Some(
        names
            .iter()
            .map(|n| match n {
                GeneralName::UniformResourceIdentifier(u) => u.as_bytes().to_vec(),
                other => format!("{other:?}").into_bytes(),
            })
            .collect(),
    ))
}

/// `crl-shards`: no serial on two shards; the count per shard.
fn shard_checks(r: &mut Report, name: &str, shards: &[(String, Checked)], listed: usize) {
    let mut on: HashMap<Serial, usize> = HashMap::new();
    let mut twice: Vec<String> = Vec::new();
    let mut twice_count = 0usize;
    for (k, (_, c)) in shards.iter().enumerate() {
        for e in &c.entries {
            if let Some(other) = on.insert(e.serial, k) {
                twice_count += 1;
                if twice.len() < EXAMPLES {
                    twice.push(format!("{} (shards {other} and {k})", e.serial));
                }
            }
        }
    }
    let counts: Vec<String> = shards
        .iter()
        .map(|(u, c)| format!("{u}={}", c.entries.len()))
        .collect();
    if twice_count > 0 {
        r.push(
            "crl-shards",
            Level::Fail,
            format!(
                "{name}: {twice_count} serials on two shards, e.g. {}",
                twice.join(", ")
            ),
        );
    } else if shards.len() == listed {
        r.push(
            "crl-shards",
            Level::Ok,
            format!(
                "{name}: {} serials, none on two shards; per shard {}",
                on.len(),
                counts.join(" ")
            ),
        );
    }
}

/// `crl-view`: the shards against the issuer's snapshot in the first region that answers.
fn view_check(
    r: &mut Report,
    t: &Target,
    name: &str,
    ca: &Certificate,
    shards: &[(String, Checked)],
) {
    let subject = ca.tbs_certificate.subject.to_der().unwrap_or_default();
    let key = ca
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    let id = crate::ocsp::issuer::IssuerHashes::new(&subject, key).id;
    let snapshot = crate::feed::Keys::new(&t.key_prefix).snapshot(&id);
    let mut errors = Vec::new();
    let mut view = None;
    for (region, url) in &t.regions {
        match scan_snapshot(url, &snapshot) {
            Ok(v) => {
                view = Some((region.clone(), v));
                break;
            }
            Err(e) => errors.push(format!("region {region}: {e}")),
        }
    }
    let Some((region, records)) = view else {
        r.push(
            "crl-view",
            Level::Fail,
            format!(
                "{name}: no region's snapshot could be read: {}",
                errors.join("; ")
            ),
        );
        return;
    };
    let listed: BTreeSet<Serial> = shards
        .iter()
        .flat_map(|(_, c)| c.entries.iter().map(|e| e.serial))
        .collect();
    let oldest = shards.iter().map(|(_, c)| c.this_update).min().unwrap_or(0);
    let newest = shards.iter().map(|(_, c)| c.this_update).max().unwrap_or(0);
    let (mut revoked, mut late, mut recent) = (0usize, Vec::new(), 0usize);
    let mut listed_revoked = BTreeSet::new();
    for (serial, record) in &records {
        let CertStatus::Revoked(rev) = record.status_with(true) else {
            continue;
        };
        if listed.contains(serial) {
            listed_revoked.insert(*serial);
            revoked += 1;
            continue;
        }
        if record.revocation().is_none() {
            continue; // a hold: listed only where the issuer allows holds
        }
        if record.not_after().is_some_and(|na| na < oldest) {
            continue; // expired before these CRLs: may have left them
        }
        revoked += 1;
        if rev.time + REVOCATION_TO_CRL_SECS < newest {
            late.push(*serial);
        } else {
            recent += 1;
        }
    }
    let stray: Vec<&Serial> = listed.difference(&listed_revoked).collect();
    let show = |s: &mut dyn Iterator<Item = &Serial>| {
        s.take(EXAMPLES)
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !late.is_empty() {
        r.push(
            "crl-view",
            Level::Fail,
            format!(
                "{name}: {} serials revoked in region {region}'s view more than 24 h before the CRLs are on no shard, e.g. {}",
                late.len(),
                show(&mut late.iter())
            ),
        );
    }
    if recent > 0 {
        r.push(
            "crl-view",
            Level::Warn,
            format!("{name}: {recent} recent revocations are not on a complete CRL yet"),
        );
    }
    if !stray.is_empty() {
        r.push(
            "crl-view",
            Level::Warn,
            format!(
                "{name}: {} listed serials are not revoked in region {region}'s view, e.g. {}",
                stray.len(),
                show(&mut stray.iter().copied())
            ),
        );
    }
    if late.is_empty() {
        r.push(
            "crl-view",
            Level::Ok,
            format!(
                "{name}: {} of the {revoked} serials revoked in region {region}'s view are on exactly one shard",
                listed_revoked.len()
            ),
        );
    }
}

/// Every (serial, record) of one snapshot hash.
fn scan_snapshot(url: &str, key: &str) -> Result<Vec<(Serial, crate::status::CertRecord)>, String> {
    let mut con = redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(TIMEOUT))
        .map_err(|e| e.to_string())?;
    con.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut cursor = "0".to_owned();
    let mut out = Vec::new();
    loop {
        let (next, fields): (String, Vec<Vec<u8>>) = redis::cmd("HSCAN")
            .arg(key)
            .arg(&cursor)
            .arg("COUNT")
            .arg(crate::limits::FEED_SCAN_COUNT)
            .query(&mut con)
            .map_err(|e| e.to_string())?;
        for p in fields.chunks_exact(2) {
            let s = Serial::from_der_content(&p[0]).map_err(|e| format!("a serial: {e}"))?;
            let rec = crate::status::CertRecord::from_bytes(&p[1]).ok_or("a malformed record")?;
            out.push((s, rec));
        }
        if next == "0" {
            return Ok(out);
        }
        cursor = next;
    }
}

// === the aggregator's download ===

/// A CRL downloaded in pieces.
#[derive(Debug, Clone)]
pub struct Download {
    /// The whole body.
    pub body: Vec<u8>,
    /// Its ETag.
    pub etag: Option<String>,
    /// Requests made.
    pub requests: u32,
    /// Requests that failed and were retried.
    pub retries: u32,
    /// Whether the server answered a Range request with 206.
    pub range_supported: bool,
}

/// Downloads `url` as an aggregator does: a `HEAD` for its length and ETag, the first half
/// with a Range request, then the rest with `Range: bytes=N-` and `If-Range: <ETag>`, resuming
/// after every interruption (a 200 instead of 206 means the CRL changed: the whole new one
/// arrived). At most [`MAX_ATTEMPTS`] failed requests, [`MAX_CRL_BYTES`] in all.
pub fn download(url: &str) -> Result<Download, String> {
    let mut d = Download {
        body: Vec::new(),
        etag: None,
        requests: 0,
        retries: 0,
        range_supported: true,
    };
    let mut total: Option<u64> = None;
    let mut failures = 0u32;
    let mut last_error = String::new();
    // The first piece: half the CRL when HEAD tells its length, else RESUME_PROBE_BYTES.
    let mut probe = RESUME_PROBE_BYTES;
    loop {
        if failures >= MAX_ATTEMPTS {
            return Err(format!(
                "gave up after {failures} failed requests: {last_error}"
            ));
        }
        if failures > 0 {
            std::thread::sleep(RETRY_BACKOFF * (1 << (failures - 1).min(6)));
        }
        d.requests += 1;
        match fetch(url, "HEAD", &[], 0) {
            Ok(f) if f.status == 200 => {
                if let Some(n) = f.length {
                    if n > MAX_CRL_BYTES {
                        return Err(format!("{n} bytes, more than {MAX_CRL_BYTES}"));
                    }
                    probe = (n / 2).max(1);
                }
                d.etag = f.etag;
                break;
            }
            Ok(f) if f.status >= 500 || f.status == 429 || f.status == 408 => {
                last_error = format!("HEAD: HTTP {}", f.status);
            }
            // HEAD not allowed, or not found: the GETs tell (a GET of a missing CRL fails)
            Ok(_) => break,
            Err(e) => last_error = format!("HEAD: {e}"),
        }
        failures += 1;
        d.retries += 1;
    }
    loop {
        if total.is_some_and(|n| d.body.len() as u64 == n) {
            return Ok(d);
        }
        if failures >= MAX_ATTEMPTS {
            return Err(format!(
                "gave up after {failures} failed requests: {last_error}"
            ));
        }
        if failures > 0 {
            std::thread::sleep(RETRY_BACKOFF * (1 << (failures - 1).min(6)));
        }
        if d.etag.is_none() && !d.body.is_empty() {
            // without an ETag, If-Range cannot keep two versions from being stitched
            // together: start over with the whole body
            d.body.clear();
            total = None;
            d.range_supported = false;
        }
        let have = d.body.len() as u64;
        let range = if have == 0 && d.range_supported {
            Some(format!("bytes=0-{}", probe - 1))
        } else if have > 0 {
            Some(format!("bytes={have}-"))
        } else {
            None
        };
        let mut headers = Vec::new();
        if let Some(r) = &range {
            headers.push(("Range", r.as_str()));
            if let Some(etag) = d.etag.as_deref() {
                headers.push(("If-Range", etag));
            }
        }
        d.requests += 1;
        let f = match fetch(url, "GET", &headers, MAX_CRL_BYTES) {
            Ok(f) => f,
            Err(e) => {
                failures += 1;
                d.retries += 1;
                last_error = e;
                continue;
            }
        };
        match f.status {
            206 => {
                let Some((first, len)) = f.content_range else {
                    return Err("206 without a usable Content-Range".into());
                };
                if first != have || total.is_some_and(|n| n != len) {
                    return Err(format!(
                        "asked from byte {have}, got Content-Range from {first} of {len}"
                    ));
                }
                if len > MAX_CRL_BYTES {
                    return Err(format!("{len} bytes, more than {MAX_CRL_BYTES}"));
                }
                if d.etag.is_some() && f.etag != d.etag {
                    return Err("206 for another ETag than If-Range named".into());
                }
                total = Some(len);
                d.etag = f.etag;
                d.body.extend_from_slice(&f.body);
                if !f.complete {
                    failures += 1;
                    d.retries += 1;
                    last_error = format!("cut short at byte {}", d.body.len());
                }
            }
            200 => {
                // the server ignores Range, or If-Range failed: the CRL changed mid-download
                if range.is_some() && d.etag == f.etag {
                    d.range_supported = false;
                }
                d.body = f.body;
                d.etag = f.etag;
                total = Some(f.length.unwrap_or(d.body.len() as u64));
                if !f.complete {
                    failures += 1;
                    d.retries += 1;
                    last_error = format!("cut short at byte {}", d.body.len());
                }
            }
            416 => {
                // shorter than what was stitched: a new version; start over
                d.body.clear();
                d.etag = None;
                total = None;
                failures += 1;
                d.retries += 1;
                last_error = "416 while resuming".into();
            }
            s if s >= 500 || s == 429 || s == 408 => {
                failures += 1;
                d.retries += 1;
                last_error = format!("HTTP {s}");
            }
            s => return Err(format!("HTTP {s}")),
        }
    }
}

/// One response, possibly cut short.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Status code.
    pub status: u16,
    /// `ETag`.
    pub etag: Option<String>,
    /// `Content-Length`.
    pub length: Option<u64>,
    /// `Content-Range: bytes first-last/len` as (first, len).
    pub content_range: Option<(u64, u64)>,
    /// What arrived of the body.
    pub body: Vec<u8>,
    /// The whole body arrived (Content-Length bytes, or until the connection closed without).
    pub complete: bool,
}

/// One GET over a fresh connection. A body that stops early (connection closed or timed out
/// after the head) is returned with `complete: false`; a body announced or grown past
/// `max_body` is an error.
pub fn fetch(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    max_body: u64,
) -> Result<Fetched, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are fetched"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if host.contains(':') && !host.ends_with(']') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let mut s = TcpStream::connect_timeout(&sock, TIMEOUT).map_err(|e| format!("{host}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("{host}: {e}"))?;

    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(format!(
                "{host}: response head larger than {MAX_HEAD_BYTES} bytes"
            ));
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(format!("{host}: closed before the response head")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("{host}: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{host}: bad status line"))?;
    let mut f = Fetched {
        status,
        etag: None,
        length: None,
        content_range: None,
        body: buf[end + 4..].to_vec(),
        complete: false,
    };
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "etag" => f.etag = Some(v.to_owned()),
            "content-length" => f.length = v.parse().ok(),
            "content-range" => f.content_range = parse_content_range(v),
            "transfer-encoding" if !v.eq_ignore_ascii_case("identity") => {
                return Err(format!("{host}: Transfer-Encoding {v} is not read here"))
            }
            _ => {}
        }
    }
    if method == "HEAD" || status == 304 || status == 204 || (100..200).contains(&status) {
        f.body.clear();
        f.complete = true;
        return Ok(f);
    }
    let want = f.length.unwrap_or(max_body + 1);
    if f.length.is_some_and(|n| n > max_body) {
        return Err(format!(
            "{host}: a body of {want} bytes, more than {max_body}"
        ));
    }
    while (f.body.len() as u64) < want {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => f.body.extend_from_slice(&chunk[..n]),
            Err(_) => break, // cut short: the caller resumes
        }
        if f.body.len() as u64 > max_body {
            return Err(format!("{host}: a body of more than {max_body} bytes"));
        }
    }
    match f.length {
        Some(n) => {
            f.body.truncate(n as usize);
            f.complete = f.body.len() as u64 == n;
        }
        None => f.complete = true,
    }
    Ok(f)
}

/// `bytes first-last/len` → (first, len).
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.strip_prefix("bytes ")?;
    let (range, len) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last, len): (u64, u64, u64) =
        (first.parse().ok()?, last.parse().ok()?, len.parse().ok()?);
    (first <= last && last < len).then_some((first, len))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn arrays_of_http_urls_only() {
        assert_eq!(
            parse_array(br#"["http://a/0.crl","http://a/1.crl"]"#).unwrap(),
            ["http://a/0.crl", "http://a/1.crl"]
        );
        assert!(parse_array(b"[]").is_err());
        assert!(parse_array(br#"["https://a/0.crl"]"#).is_err());
        assert!(parse_array(br#"["http://a/0.crl","http://a/0.crl"]"#).is_err());
        assert!(parse_array(br#"{"a":1}"#).is_err());
        let many: Vec<String> = (0..=MAX_URLS)
            .map(|i| format!("http://a/{i}.crl"))
            .collect();
        assert!(parse_array(&serde_json::to_vec(&many).unwrap()).is_err());
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0, 100)));
        assert_eq!(parse_content_range("bytes 90-99/100"), Some((90, 100)));
        assert_eq!(parse_content_range("bytes 90-100/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn state_round_trips_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        assert!(State::load(&p).unwrap().crls.is_empty());
        let mut s = State::default();
        s.crls.insert(
            "http://a/0.crl".into(),
            Seen {
                this_update: 5,
                number: 7,
            },
        );
        s.save(&p).unwrap();
        assert_eq!(State::load(&p).unwrap().crls, s.crls);
        std::fs::write(&p, "not json").unwrap();
        assert!(State::load(&p).is_err());
    }
}
