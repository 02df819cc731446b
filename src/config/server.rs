//! `[server]`, `[limits]`, `[ocsp]`, `[status]` and `[log]`: the listener, the bounds on client
//! input and the response policy, each checked against its named bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{ConfigError, invalid};
use super::file;
use crate::limits;
use crate::ocsp::response::{MAX_VALIDITY_SECS, MIN_VALIDITY_SECS};

/// `[server]`
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address and port of the OCSP / CRL / health listener.
    pub listen: SocketAddr,
    /// Extra path prefix OCSP is served under (it is always served at `/` too); `""` or
    /// `/a/b` (no trailing `/`, no `//` or `..`, not a reserved path).
    pub ocsp_prefix: String,
    /// Most connections at once (≥ 1).
    pub max_connections: usize,
    /// Time a client has to send a whole request head, counted from when the connection
    /// becomes idle; also ends idle keep-alive connections.
    pub header_read_timeout: Duration,
    /// Time a client has to send a request body.
    pub body_read_timeout: Duration,
    /// A connection with no bytes read or written for this long is closed (HTTP/2 included).
    pub idle_timeout: Duration,
    /// On SIGTERM, readiness turns false this long before the listener closes.
    pub drain_delay: Duration,
    /// After the listener closes, in-flight requests get this long to finish.
    pub shutdown_timeout: Duration,
    /// Serve HTTP/2 (prior knowledge, h2c) beside HTTP/1.1.
    pub http2: bool,
}

/// `[limits]`
#[derive(Debug, Clone, Copy)]
pub struct LimitsConfig {
    /// Largest POST body, bytes (1 ..= 1 MiB).
    pub max_request_bytes: usize,
    /// Longest GET request target, bytes.
    pub max_get_path_bytes: usize,
    /// Most CertIDs per request.
    pub max_cert_ids: usize,
    /// Longest nonce, octets (32 ..= 128, RFC 9654 §2.1).
    pub max_nonce_bytes: usize,
}

/// What to do with a request nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoncePolicy {
    /// Answer from the cache without the nonce (RFC 5019 §4: nonces are optional).
    #[default]
    Ignore,
    /// Sign a fresh response that echoes the nonce.
    Echo,
}

/// How the responder names itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponderIdKind {
    /// byKey: SHA-1 of the responder public key (RFC 5019 §2.2.3 prefers it).
    #[default]
    KeyHash,
    /// byName: the responder certificate's subject.
    Name,
}

/// `[ocsp]`
#[derive(Debug, Clone)]
pub struct OcspConfig {
    /// nextUpdate − thisUpdate (8h ..= 10d).
    pub validity: Duration,
    /// thisUpdate is this far before the signing time (at most 1h).
    pub backdate: Duration,
    /// responderID form.
    pub responder_id: ResponderIdKind,
    /// Nonce handling.
    pub nonce: NoncePolicy,
    /// Signatures computed at once (≥ 1).
    pub signing_concurrency: usize,
    /// Requests waiting for a signature before more get `tryLater`.
    pub signing_queue: usize,
    /// Memory for cached signed responses, bytes (≥ 1 MiB).
    pub cache_max_bytes: u64,
    /// Memory for the front cache of resolved requests, bytes (0: no front cache).
    pub front_cache_max_bytes: u64,
}

/// `[status]`
#[derive(Debug, Clone)]
pub struct StatusConfig {
    /// The local journal (default `<data_dir>/journal.vj`).
    pub journal: PathBuf,
    /// How often the server reads new journal records (≥ 10ms).
    pub journal_poll: Duration,
    /// Name recorded as the origin of events this node writes (1-64 bytes).
    pub origin: String,
}

/// `[log]`
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `vigil=debug`.
    pub filter: String,
    /// Line format on stderr.
    pub format: LogFormat,
}

/// How log lines are written (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines; coloured only when stderr is a terminal and `NO_COLOR` is unset.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, fields (with the message), span.
    Json,
}

// === impl conversion ===

/// The reserved paths an OCSP prefix may not take.
const RESERVED_PATHS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/crl"];

pub(super) fn server(s: file::Server) -> Result<ServerConfig, ConfigError> {
    let p = &s.ocsp_prefix;
    if !p.is_empty()
        && (!p.starts_with('/') || p.ends_with('/') || p.contains("//") || p.contains(".."))
    {
        return invalid(
            "server.ocsp_prefix",
            format!("{p:?} must start with '/', not end with '/', and hold no '//' or '..'"),
        );
    }
    if RESERVED_PATHS.contains(&p.as_str()) {
        return invalid("server.ocsp_prefix", format!("{p:?} is a reserved path"));
    }
    if s.max_connections == 0 {
        return invalid("server.max_connections", "must be at least 1");
    }
    for (key, d) in [
        ("server.header_read_timeout", s.header_read_timeout),
        ("server.body_read_timeout", s.body_read_timeout),
        ("server.idle_timeout", s.idle_timeout),
    ] {
        if d.is_zero() {
            return invalid(key, "must be greater than zero");
        }
    }
    Ok(ServerConfig {
        listen: s.listen,
        ocsp_prefix: s.ocsp_prefix,
        max_connections: s.max_connections,
        header_read_timeout: s.header_read_timeout,
        body_read_timeout: s.body_read_timeout,
        idle_timeout: s.idle_timeout,
        drain_delay: s.drain_delay,
        shutdown_timeout: s.shutdown_timeout,
        http2: s.http2,
    })
}

/// Largest `limits.max_request_bytes`.
const MAX_REQUEST_BYTES_BOUND: usize = 1024 * 1024;

pub(super) fn limits(l: file::Limits) -> Result<LimitsConfig, ConfigError> {
    for (key, v) in [
        ("limits.max_request_bytes", l.max_request_bytes),
        ("limits.max_get_path_bytes", l.max_get_path_bytes),
        ("limits.max_cert_ids", l.max_cert_ids),
        ("limits.max_nonce_bytes", l.max_nonce_bytes),
    ] {
        if v == 0 {
            return invalid(key, "must be at least 1");
        }
    }
    if l.max_request_bytes > MAX_REQUEST_BYTES_BOUND {
        return invalid("limits.max_request_bytes", "at most 1 MiB");
    }
    if !(limits::NONCE_OCTETS_MUST_ACCEPT..=limits::NONCE_OCTETS_ALLOWED)
        .contains(&l.max_nonce_bytes)
    {
        return invalid(
            "limits.max_nonce_bytes",
            format!(
                "{} is outside {} ..= {} (RFC 9654 §2.1: nonces of 16 ..= 32 octets must be accepted, none over 128)",
                l.max_nonce_bytes,
                limits::NONCE_OCTETS_MUST_ACCEPT,
                limits::NONCE_OCTETS_ALLOWED
            ),
        );
    }
    Ok(LimitsConfig {
        max_request_bytes: l.max_request_bytes,
        max_get_path_bytes: l.max_get_path_bytes,
        max_cert_ids: l.max_cert_ids,
        max_nonce_bytes: l.max_nonce_bytes,
    })
}

/// Longest `ocsp.backdate`.
const MAX_BACKDATE: Duration = Duration::from_secs(3600);
/// Smallest `ocsp.cache_max_bytes`.
const MIN_CACHE_BYTES: u64 = 1024 * 1024;

pub(super) fn ocsp(o: file::Ocsp) -> Result<OcspConfig, ConfigError> {
    let validity = o.validity.as_secs() as i64;
    if !(MIN_VALIDITY_SECS..=MAX_VALIDITY_SECS).contains(&validity) {
        return invalid(
            "ocsp.validity",
            format!(
                "{} is outside 8h ..= 10d (CA/B Forum BR §4.9.10)",
                humantime::format_duration(o.validity)
            ),
        );
    }
    if o.backdate > MAX_BACKDATE {
        return invalid("ocsp.backdate", "at most 1h");
    }
    if o.signing_concurrency == 0 {
        return invalid("ocsp.signing_concurrency", "must be at least 1");
    }
    if o.cache_max_bytes < MIN_CACHE_BYTES {
        return invalid("ocsp.cache_max_bytes", "at least 1 MiB");
    }
    Ok(OcspConfig {
        validity: o.validity,
        backdate: o.backdate,
        responder_id: match o.responder_id {
            file::ResponderId::KeyHash => ResponderIdKind::KeyHash,
            file::ResponderId::Name => ResponderIdKind::Name,
        },
        nonce: nonce(o.nonce),
        signing_concurrency: o.signing_concurrency,
        signing_queue: o.signing_queue,
        cache_max_bytes: o.cache_max_bytes,
        front_cache_max_bytes: o.front_cache_max_bytes,
    })
}

pub(super) fn nonce(n: file::Nonce) -> NoncePolicy {
    match n {
        file::Nonce::Ignore => NoncePolicy::Ignore,
        file::Nonce::Echo => NoncePolicy::Echo,
    }
}

/// Shortest `status.journal_poll`.
const MIN_JOURNAL_POLL: Duration = Duration::from_millis(10);

pub(super) fn status(s: file::Status, data_dir: &Path) -> Result<StatusConfig, ConfigError> {
    if s.journal_poll < MIN_JOURNAL_POLL {
        return invalid("status.journal_poll", "at least 10ms");
    }
    if s.origin.is_empty() || s.origin.len() > limits::MAX_ORIGIN_BYTES {
        return invalid("status.origin", "1 to 64 bytes");
    }
    Ok(StatusConfig {
        journal: s.journal.unwrap_or_else(|| data_dir.join("journal.vj")),
        journal_poll: s.journal_poll,
        origin: s.origin,
    })
}

pub(super) fn log(l: file::Log) -> LogConfig {
    LogConfig {
        filter: l.filter,
        format: log_format(l.format),
    }
}

pub(super) fn log_format(f: file::LogFormat) -> LogFormat {
    match f {
        file::LogFormat::Text => LogFormat::Text,
        file::LogFormat::Json => LogFormat::Json,
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::super::tests::ISSUER;
    use super::*;

    #[test]
    fn ocsp_parses_and_bounds_name_the_key() {
        let c = Config::parse(&format!(
            "[ocsp]\nvalidity = \"2d\"\nnonce = \"echo\"\n{ISSUER}"
        ))
        .expect("valid");
        assert_eq!(c.ocsp.validity, Duration::from_secs(2 * 86400));
        assert_eq!(c.ocsp.nonce, NoncePolicy::Echo);
        for (toml, key) in [
            ("[ocsp]\nvalidity = \"11d\"\n", "ocsp.validity"),
            ("[limits]\nmax_cert_ids = 0\n", "limits.max_cert_ids"),
            ("[limits]\nmax_nonce_bytes = 8\n", "limits.max_nonce_bytes"),
            ("[server]\nocsp_prefix = \"/crl\"\n", "server.ocsp_prefix"),
            ("[server]\nidle_timeout = \"0s\"\n", "server.idle_timeout"),
            ("[status]\njournal_poll = \"1ms\"\n", "status.journal_poll"),
        ] {
            let e = Config::parse(&format!("{toml}{ISSUER}")).expect_err(key);
            assert_eq!(e.key(), Some(key), "{e}");
            assert!(e.to_string().contains(key), "{e}");
        }
        let e = Config::parse("[server]\nlisen = \"x\"").expect_err("unknown key");
        assert!(e.to_string().contains("lisen"), "{e}");
        let e = Config::parse("[ocsp]\nvalidity = \"soon\"").expect_err("bad duration");
        assert!(e.to_string().contains("validity"), "{e}");
    }

    #[test]
    fn the_journal_defaults_into_the_data_dir() {
        let c = Config::parse(&format!("data_dir = \"/d\"\n{ISSUER}")).expect("valid");
        assert_eq!(c.journal_path(), Path::new("/d/journal.vj"));
    }
}
