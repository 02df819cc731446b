//! The file form: what the TOML says, key for key, with serde's defaults. Private to the config
//! module; [`super::Config::parse`] validates it and turns it into the typed form. Every key is
//! listed in `docs/CONFIG.md`; unknown keys are refused (`deny_unknown_fields`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::limits;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub ocsp: Ocsp,
    #[serde(default)]
    pub status: Status,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub feed: Option<Feed>,
    #[serde(default)]
    pub admin: Option<Admin>,
    #[serde(default, rename = "issuer")]
    pub issuers: Vec<Issuer>,
    #[serde(default)]
    pub crl: Crl,
    #[serde(default, rename = "region")]
    pub regions: Vec<Region>,
    #[serde(default, rename = "hsm")]
    pub hsms: Vec<Hsm>,
    #[serde(default)]
    pub hsm_pool: HsmPool,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(super::DEFAULT_DATA_DIR)
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Server {
    pub listen: SocketAddr,
    pub ocsp_prefix: String,
    pub max_connections: usize,
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub body_read_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub drain_delay: Duration,
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    pub http2: bool,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            ocsp_prefix: "/ocsp".into(),
            max_connections: limits::MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            drain_delay: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(20),
            http2: true,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Limits {
    pub max_request_bytes: usize,
    pub max_get_path_bytes: usize,
    pub max_cert_ids: usize,
    pub max_nonce_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: limits::MAX_REQUEST_BYTES,
            max_get_path_bytes: limits::MAX_GET_PATH_BYTES,
            max_cert_ids: limits::MAX_CERT_IDS,
            max_nonce_bytes: limits::MAX_NONCE_BYTES,
        }
    }
}

/// `ocsp.nonce`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(super) enum Nonce {
    #[default]
    Ignore,
    Echo,
}

/// `ocsp.responder_id`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(super) enum ResponderId {
    #[default]
    KeyHash,
    Name,
}

/// `[ocsp]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Ocsp {
    #[serde(deserialize_with = "duration")]
    pub validity: Duration,
    #[serde(deserialize_with = "duration")]
    pub backdate: Duration,
    pub responder_id: ResponderId,
    pub nonce: Nonce,
    pub signing_concurrency: usize,
    pub signing_queue: usize,
    pub cache_max_bytes: u64,
    pub front_cache_max_bytes: u64,
}

impl Default for Ocsp {
    fn default() -> Self {
        Ocsp {
            validity: Duration::from_secs(4 * 86400),
            backdate: Duration::from_secs(300),
            responder_id: ResponderId::KeyHash,
            nonce: Nonce::Ignore,
            signing_concurrency: limits::SIGNING_CONCURRENCY,
            signing_queue: limits::SIGNING_QUEUE,
            cache_max_bytes: 256 * 1024 * 1024,
            front_cache_max_bytes: limits::FRONT_CACHE_MAX_BYTES,
        }
    }
}

/// `[status]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Status {
    pub journal: Option<PathBuf>,
    #[serde(deserialize_with = "duration")]
    pub journal_poll: Duration,
    pub origin: String,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            journal: None,
            journal_poll: Duration::from_millis(200),
            origin: "local".into(),
        }
    }
}

/// `[feed]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Feed {
    pub quorum: Option<usize>,
    pub maxlen: u64,
    pub key_prefix: String,
    #[serde(deserialize_with = "duration")]
    pub max_staleness: Duration,
    #[serde(deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub write_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub reconnect_min: Duration,
    #[serde(deserialize_with = "duration")]
    pub reconnect_max: Duration,
    pub checkpoint: Option<PathBuf>,
    #[serde(deserialize_with = "duration")]
    pub checkpoint_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub repair_interval: Duration,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            quorum: None,
            maxlen: 1_000_000,
            key_prefix: super::feed::DEFAULT_FEED_KEY_PREFIX.into(),
            max_staleness: Duration::from_secs(300),
            heartbeat_interval: Duration::from_secs(1),
            write_timeout: super::feed::DEFAULT_FEED_WRITE_TIMEOUT,
            connect_timeout: super::feed::DEFAULT_FEED_CONNECT_TIMEOUT,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            checkpoint: None,
            checkpoint_interval: Duration::from_secs(30),
            repair_interval: Duration::from_secs(2),
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Admin {
    pub listen: SocketAddr,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    #[serde(default)]
    pub tls_certificate: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    #[serde(default = "default_admin_body")]
    pub max_body_bytes: usize,
}

fn default_admin_body() -> usize {
    limits::MAX_ADMIN_BODY_BYTES
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Log {
    pub filter: String,
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            filter: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// `log.format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum LogFormat {
    Text,
    Json,
}

/// `issuer.unissued`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(super) enum Unissued {
    #[default]
    Unknown,
    Unauthorized,
    Revoked,
}

/// `[[issuer]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Issuer {
    pub name: String,
    pub certificate: PathBuf,
    pub responder_certificate: Option<PathBuf>,
    pub responder_key: Option<PathBuf>,
    pub signer: Option<Signer>,
    #[serde(default)]
    pub unissued: Unissued,
    #[serde(default)]
    pub allow_hold: bool,
    #[serde(default)]
    pub crl_key: Option<PathBuf>,
    #[serde(default)]
    pub crl_signer: Option<Signer>,
    #[serde(default)]
    pub crl: IssuerCrl,
}

/// `issuer.signer` / `issuer.crl_signer`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Signer {
    pub hsm: Vec<String>,
    pub danger_software_fallback: Option<PathBuf>,
}

/// `issuer.crl = { ... }`: each key absent means `[crl]`'s.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IssuerCrl {
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub validity: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub interval: Option<Duration>,
    #[serde(default)]
    pub shards: Option<u16>,
    #[serde(default)]
    pub shard_by: Option<ShardBy>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub shard_width: Option<Duration>,
    #[serde(default)]
    pub delta: Option<bool>,
    #[serde(default)]
    pub warn_bytes: Option<u64>,
}

/// `[[region]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Region {
    pub name: String,
    #[serde(default)]
    pub redis: Option<String>,
    #[serde(default)]
    pub sentinels: Vec<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub sentinel_server_tls: bool,
    #[serde(default)]
    pub db: i64,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub sentinel_username: Option<String>,
    #[serde(default)]
    pub sentinel_password_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub client_certificate: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

/// `crl.shard_by`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(super) enum ShardBy {
    #[default]
    Serial,
    NotAfter,
}

/// `[crl]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Crl {
    pub base_url: Option<String>,
    pub region: Option<String>,
    pub publish: bool,
    #[serde(deserialize_with = "duration")]
    pub validity: Duration,
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub publish_delay: Duration,
    #[serde(deserialize_with = "duration")]
    pub refresh: Duration,
    #[serde(deserialize_with = "duration")]
    pub lease_ttl: Duration,
    #[serde(deserialize_with = "duration")]
    pub redis_timeout: Duration,
    pub shards: u16,
    pub shard_by: ShardBy,
    #[serde(deserialize_with = "duration")]
    pub shard_width: Duration,
    pub delta: bool,
    pub warn_bytes: u64,
}

impl Default for Crl {
    fn default() -> Self {
        Crl {
            base_url: None,
            region: None,
            publish: true,
            validity: Duration::from_secs(7 * 86400),
            interval: Duration::from_secs(3600),
            publish_delay: Duration::from_secs(60),
            refresh: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(30),
            redis_timeout: Duration::from_secs(2),
            shards: 1,
            shard_by: ShardBy::Serial,
            shard_width: Duration::from_secs(86400),
            delta: false,
            warn_bytes: limits::CRL_WARN_BYTES,
        }
    }
}

/// `[[hsm]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Hsm {
    pub name: String,
    pub module: PathBuf,
    #[serde(default)]
    pub module_env: BTreeMap<String, String>,
    pub token_label: Option<String>,
    pub slot: Option<u64>,
    pub key_label: Option<String>,
    pub key_id: Option<String>,
    pub pin_file: Option<PathBuf>,
    pub pin_env: Option<String>,
    #[serde(default = "default_hsm_sessions")]
    pub sessions: usize,
    #[serde(default)]
    pub rsa_mechanism: RsaMechanism,
}

fn default_hsm_sessions() -> usize {
    limits::HSM_SESSIONS
}

/// `hsm.rsa_mechanism`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(super) enum RsaMechanism {
    #[default]
    Auto,
    Sha256RsaPkcs,
    RsaPkcs,
}

/// `[hsm_pool]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct HsmPool {
    #[serde(deserialize_with = "duration")]
    pub probe_interval: Duration,
    pub breaker_failures: u32,
    #[serde(deserialize_with = "duration")]
    pub reconnect_backoff_min: Duration,
    #[serde(deserialize_with = "duration")]
    pub reconnect_backoff_max: Duration,
    #[serde(deserialize_with = "duration")]
    pub session_wait: Duration,
    #[serde(deserialize_with = "duration")]
    pub sign_timeout: Duration,
    pub readiness_requires_signer: bool,
}

impl Default for HsmPool {
    fn default() -> Self {
        HsmPool {
            probe_interval: Duration::from_secs(10),
            breaker_failures: 3,
            reconnect_backoff_min: Duration::from_millis(500),
            reconnect_backoff_max: Duration::from_secs(30),
            session_wait: Duration::from_secs(2),
            sign_timeout: Duration::from_secs(2),
            readiness_requires_signer: false,
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

impl File {
    /// Resolves every relative path against `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        if let Some(j) = &mut self.status.journal {
            fix(j);
        }
        if let Some(c) = self.feed.as_mut().and_then(|f| f.checkpoint.as_mut()) {
            fix(c);
        }
        for r in &mut self.regions {
            for p in [&mut r.password_file, &mut r.sentinel_password_file]
                .into_iter()
                .chain([&mut r.ca_file, &mut r.client_certificate, &mut r.client_key])
                .flatten()
            {
                fix(p);
            }
        }
        if let Some(a) = &mut self.admin {
            for p in [&mut a.token_file, &mut a.audit_log, &mut a.tls_certificate]
                .into_iter()
                .chain([&mut a.tls_key, &mut a.client_ca])
                .flatten()
            {
                fix(p);
            }
        }
        for i in &mut self.issuers {
            fix(&mut i.certificate);
            for p in [
                &mut i.responder_key,
                &mut i.responder_certificate,
                &mut i.crl_key,
            ]
            .into_iter()
            .flatten()
            {
                fix(p);
            }
            for sc in [&mut i.signer, &mut i.crl_signer].into_iter().flatten() {
                if let Some(f) = &mut sc.danger_software_fallback {
                    fix(f);
                }
            }
        }
        for h in &mut self.hsms {
            fix(&mut h.module);
            if let Some(p) = &mut h.pin_file {
                fix(p);
            }
        }
    }
}
