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
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use der::{Decode, Encode};
use x509_cert::Certificate;
use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};

mod download;
pub use download::{Download, Fetched, download, fetch};

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

/// Why a CRL, its JSON array, the state file or the view could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The URL is not `http://`.
    #[error("{0}: only http:// URLs are fetched")]
    UnsupportedUrl(String),
    /// Resolving, connecting, reading or writing a host or file failed.
    #[error("{at}: {source}")]
    Io {
        /// The host or the file.
        at: String,
        /// Why.
        source: std::io::Error,
    },
    /// The host name resolved to no address.
    #[error("{0}: no address")]
    NoAddress(String),
    /// The response head is over [`MAX_HEAD_BYTES`].
    #[error("{0}: response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge(String),
    /// The connection closed before the head was complete.
    #[error("{0}: closed before the response head")]
    ClosedBeforeHead(String),
    /// The status line did not parse.
    #[error("{0}: bad status line")]
    BadStatusLine(String),
    /// A transfer coding this client does not read.
    #[error("{host}: Transfer-Encoding {coding} is not read here")]
    TransferEncoding {
        /// The host.
        host: String,
        /// The coding.
        coding: String,
    },
    /// A body announced past its bound.
    #[error("{host}: a body of {bytes} bytes, more than {max}")]
    BodyTooLarge {
        /// The host.
        host: String,
        /// `Content-Length`.
        bytes: u64,
        /// The bound.
        max: u64,
    },
    /// A body grown past its bound.
    #[error("{host}: a body of more than {max} bytes")]
    BodyGrewTooLarge {
        /// The host.
        host: String,
        /// The bound.
        max: u64,
    },
    /// A CRL's length is over [`MAX_CRL_BYTES`].
    #[error("{0} bytes, more than {MAX_CRL_BYTES}")]
    CrlTooLarge(u64),
    /// An HTTP status that is not what was asked for.
    #[error("HTTP {0}")]
    Http(u16),
    /// The `HEAD` request failed.
    #[error("HEAD: {0}")]
    Head(Box<ConsumerError>),
    /// The body stopped early.
    #[error("cut short at byte {0}")]
    CutShortAt(usize),
    /// The body stopped early (a response not resumed).
    #[error("cut short")]
    CutShort,
    /// 416 to a resumed request.
    #[error("416 while resuming")]
    RangeNotSatisfiable,
    /// 206 without a Content-Range this client reads.
    #[error("206 without a usable Content-Range")]
    NoContentRange,
    /// 206 for another range than asked.
    #[error("asked from byte {asked}, got Content-Range from {first} of {len}")]
    WrongRange {
        /// The first byte asked for.
        asked: u64,
        /// The first byte sent.
        first: u64,
        /// The length the server gave.
        len: u64,
    },
    /// 206 of another version than If-Range named.
    #[error("206 for another ETag than If-Range named")]
    EtagChanged,
    /// Every attempt failed.
    #[error("gave up after {failures} failed requests: {last}")]
    GaveUp {
        /// Requests that failed.
        failures: u32,
        /// The last failure.
        last: Box<ConsumerError>,
    },
    /// What is wrong with the JSON array of partitioned CRLs.
    #[error("not a JSON array of strings: {0}")]
    NotJsonArray(serde_json::Error),
    /// An empty array.
    #[error("an empty array")]
    EmptyArray,
    /// More URLs than [`MAX_URLS`].
    #[error("{0} URLs, more than {MAX_URLS}")]
    TooManyUrls(usize),
    /// A URL that is not `http://`.
    #[error("{0:?}: not an http:// URL (BR §7.2.2.1)")]
    NotHttp(String),
    /// A URL listed twice.
    #[error("{0} listed twice")]
    ListedTwice(String),
    /// The state file is over [`MAX_STATE_BYTES`].
    #[error("{}: larger than {MAX_STATE_BYTES} bytes", .0.display())]
    StateTooLarge(PathBuf),
    /// The state file is not JSON of a state (or could not be encoded).
    #[error("{}: {source}", path.display())]
    StateJson {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The issuingDistributionPoint did not decode.
    #[error("issuingDistributionPoint: {0}")]
    Idp(der::Error),
    /// The issuingDistributionPoint names no fullName.
    #[error("issuingDistributionPoint has no fullName")]
    IdpWithoutFullName,
    /// Reading the view from Redis failed.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// A serial in the view is not one vigil writes.
    #[error("a serial: {0}")]
    Serial(#[from] crate::status::SerialError),
    /// A record in the view does not decode.
    #[error("a malformed record")]
    Record,
}

fn io_at(at: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> ConsumerError {
    move |source| ConsumerError::Io {
        at: at.to_string(),
        source,
    }
}

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
    pub fn load(path: &Path) -> Result<State, ConsumerError> {
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(io_at(path.display())(e)),
        };
        let mut text = Vec::new();
        f.take(MAX_STATE_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(io_at(path.display()))?;
        if text.len() as u64 > MAX_STATE_BYTES {
            return Err(ConsumerError::StateTooLarge(path.to_owned()));
        }
        serde_json::from_slice(&text).map_err(|source| ConsumerError::StateJson {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes `path` atomically (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> Result<(), ConsumerError> {
        let text = serde_json::to_vec_pretty(self).map_err(|source| ConsumerError::StateJson {
            path: path.to_owned(),
            source,
        })?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(io_at(path.display()))
    }
}

// === the check ===

/// Runs the consumer check for every issuer in `cas` and adds its findings to `r`.
pub(super) fn check(
    r: &mut Report,
    t: &Target,
    opts: &ConsumerOptions,
    cas: &[(String, Certificate)],
    now: i64,
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
    if let Some(p) = &opts.state
        && let Err(e) = state.save(p)
    {
        r.push("crl-previous", Level::Fail, format!("state file {e}"));
    }
}

/// The JSON array of `name`, the same from every replica.
fn disclosed_urls(r: &mut Report, t: &Target, name: &str) -> Option<Vec<String>> {
    let mut agreed: Option<Vec<String>> = None;
    for base in &t.replicas {
        let url = format!("{base}/crl/{name}.json");
        let got = fetch(&url, "GET", &[], MAX_JSON_BYTES as u64).and_then(|f| {
            if f.status != 200 {
                return Err(ConsumerError::Http(f.status));
            }
            if !f.complete {
                return Err(ConsumerError::CutShort);
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
pub fn parse_array(body: &[u8]) -> Result<Vec<String>, ConsumerError> {
    let urls: Vec<String> = serde_json::from_slice(body).map_err(ConsumerError::NotJsonArray)?;
    if urls.is_empty() {
        return Err(ConsumerError::EmptyArray);
    }
    if urls.len() > MAX_URLS {
        return Err(ConsumerError::TooManyUrls(urls.len()));
    }
    let mut seen = BTreeSet::new();
    for u in &urls {
        if !u.starts_with("http://") {
            return Err(ConsumerError::NotHttp(u.clone()));
        }
        if !seen.insert(u.as_str()) {
            return Err(ConsumerError::ListedTwice(u.clone()));
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
fn idp_uris(extensions: &[(&[u8], bool, &[u8])]) -> Result<Option<Vec<Vec<u8>>>, ConsumerError> {
    let Some((_, _, value)) = extensions
        .iter()
        .find(|(oid, _, _)| *oid == [0x55, 0x1D, 0x1C])
    else {
        return Ok(None);
    };
    let idp = IssuingDistributionPoint::from_der(value).map_err(ConsumerError::Idp)?;
    let names = match idp.distribution_point {
        Some(DistributionPointName::FullName(names)) => names,
        _ => return Err(ConsumerError::IdpWithoutFullName),
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
fn scan_snapshot(
    url: &str,
    key: &str,
) -> Result<Vec<(Serial, crate::status::CertRecord)>, ConsumerError> {
    let mut con = redis::Client::open(url).and_then(|c| c.get_connection_with_timeout(TIMEOUT))?;
    con.set_read_timeout(Some(TIMEOUT))?;
    let mut cursor = "0".to_owned();
    let mut out = Vec::new();
    loop {
        let (next, fields): (String, Vec<Vec<u8>>) = redis::cmd("HSCAN")
            .arg(key)
            .arg(&cursor)
            .arg("COUNT")
            .arg(crate::limits::FEED_SCAN_COUNT)
            .query(&mut con)?;
        for p in fields.chunks_exact(2) {
            let s = Serial::from_der_content(&p[0])?;
            let rec = crate::status::CertRecord::from_bytes(&p[1]).ok_or(ConsumerError::Record)?;
            out.push((s, rec));
        }
        if next == "0" {
            return Ok(out);
        }
        cursor = next;
    }
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
