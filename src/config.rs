//! Configuration: one TOML file plus `VIGIL_*` environment overrides, validated into typed
//! config before any port binds. Every key is listed in `docs/CONFIG.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::limits;
use crate::ocsp::response::{MAX_VALIDITY_SECS, MIN_VALIDITY_SECS};
use crate::status::UnissuedPolicy;

/// Path of the config file (same as `--config`).
pub const ENV_CONFIG: &str = "VIGIL_CONFIG";
/// Overrides `server.listen`.
pub const ENV_LISTEN: &str = "VIGIL_LISTEN";
/// Overrides `data_dir`.
pub const ENV_DATA_DIR: &str = "VIGIL_DATA_DIR";
/// Overrides `server.ocsp_prefix`.
pub const ENV_OCSP_PREFIX: &str = "VIGIL_OCSP_PREFIX";
/// Overrides `ocsp.nonce`.
pub const ENV_NONCE: &str = "VIGIL_NONCE";
/// Overrides `log.filter`.
pub const ENV_LOG: &str = "VIGIL_LOG";
/// Overrides `log.format` (`text` or `json`).
pub const ENV_LOG_FORMAT: &str = "VIGIL_LOG_FORMAT";
/// Overrides `crl.base_url`.
pub const ENV_CRL_BASE_URL: &str = "VIGIL_CRL_BASE_URL";
/// The admin API bearer token (instead of `admin.token_file`).
pub const ENV_ADMIN_TOKEN: &str = "VIGIL_ADMIN_TOKEN";
/// Prefix of the per-region Redis password variables: `VIGIL_REDIS_PASSWORD_<REGION>`, the
/// region name upper-cased with `-` as `_` (instead of `region.password_file`).
pub const ENV_REDIS_PASSWORD_PREFIX: &str = "VIGIL_REDIS_PASSWORD_";
/// Prefix of the per-region Sentinel password variables: `VIGIL_SENTINEL_PASSWORD_<REGION>`,
/// named like `VIGIL_REDIS_PASSWORD_<REGION>` (instead of `region.sentinel_password_file`).
pub const ENV_SENTINEL_PASSWORD_PREFIX: &str = "VIGIL_SENTINEL_PASSWORD_";

/// The data directory of the embedded default.
pub const DEFAULT_DATA_DIR: &str = "./vigil-data";

/// A config error; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("config: {0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory for the journal, checkpoints and (embedded default) the demo PKI.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// HTTP listener.
    #[serde(default)]
    pub server: ServerConfig,
    /// Bounds on client input.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Response policy.
    #[serde(default)]
    pub ocsp: OcspConfig,
    /// Status sources.
    #[serde(default)]
    pub status: StatusConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The multi-region revocation feed on Redis Streams; absent: the local journal is the feed.
    #[serde(default)]
    pub feed: Option<FeedConfig>,
    /// The authenticated admin API; absent: no admin listener.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Issuers answered for.
    #[serde(default, rename = "issuer")]
    pub issuers: Vec<IssuerConfig>,
    /// CRL publishing and serving.
    #[serde(default)]
    pub crl: CrlConfig,
    /// Regions and their Redis (`[[region]]`); empty: single node on local files.
    #[serde(default, rename = "region")]
    pub regions: Vec<RegionConfig>,
    /// PKCS#11 keys (`[[hsm]]`), named by `issuer.signer.hsm`.
    #[serde(default, rename = "hsm")]
    pub hsms: Vec<HsmConfig>,
    /// How HSM pools probe, fail over and reconnect.
    #[serde(default)]
    pub hsm_pool: HsmPoolConfig,
    /// True when no file was given: the demo PKI in `data_dir` is used (and made if missing).
    #[serde(skip)]
    pub embedded: bool,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port of the OCSP / CRL / health listener.
    pub listen: SocketAddr,
    /// Extra path prefix OCSP is served under (it is always served at `/` too).
    pub ocsp_prefix: String,
    /// Most connections at once.
    pub max_connections: usize,
    /// Time a client has to send a whole request head, counted from when the connection
    /// becomes idle; also ends idle keep-alive connections.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// Time a client has to send a request body.
    #[serde(deserialize_with = "duration")]
    pub body_read_timeout: Duration,
    /// A connection with no bytes read or written for this long is closed (HTTP/2 included).
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// On SIGTERM, readiness turns false this long before the listener closes.
    #[serde(deserialize_with = "duration")]
    pub drain_delay: Duration,
    /// After the listener closes, in-flight requests get this long to finish.
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Serve HTTP/2 (prior knowledge, h2c) beside HTTP/1.1.
    pub http2: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
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
pub struct LimitsConfig {
    /// Largest POST body, bytes.
    pub max_request_bytes: usize,
    /// Longest GET request target, bytes.
    pub max_get_path_bytes: usize,
    /// Most CertIDs per request.
    pub max_cert_ids: usize,
    /// Longest nonce, octets.
    pub max_nonce_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_request_bytes: limits::MAX_REQUEST_BYTES,
            max_get_path_bytes: limits::MAX_GET_PATH_BYTES,
            max_cert_ids: limits::MAX_CERT_IDS,
            max_nonce_bytes: limits::MAX_NONCE_BYTES,
        }
    }
}

/// What to do with a request nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NoncePolicy {
    /// Answer from the cache without the nonce (RFC 5019 §4: nonces are optional).
    #[default]
    Ignore,
    /// Sign a fresh response that echoes the nonce.
    Echo,
}

/// How the responder names itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ResponderIdKind {
    /// byKey: SHA-1 of the responder public key (RFC 5019 §2.2.3 prefers it).
    #[default]
    KeyHash,
    /// byName: the responder certificate's subject.
    Name,
}

/// `[ocsp]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OcspConfig {
    /// nextUpdate − thisUpdate (8h ..= 10d).
    #[serde(deserialize_with = "duration")]
    pub validity: Duration,
    /// thisUpdate is this far before the signing time.
    #[serde(deserialize_with = "duration")]
    pub backdate: Duration,
    /// responderID form.
    pub responder_id: ResponderIdKind,
    /// Nonce handling.
    pub nonce: NoncePolicy,
    /// Signatures computed at once.
    pub signing_concurrency: usize,
    /// Requests waiting for a signature before more get `tryLater`.
    pub signing_queue: usize,
    /// Memory for cached signed responses, bytes.
    pub cache_max_bytes: u64,
    /// Memory for the front cache of resolved requests, bytes (0: no front cache).
    pub front_cache_max_bytes: u64,
}

impl Default for OcspConfig {
    fn default() -> Self {
        OcspConfig {
            validity: Duration::from_secs(4 * 86400),
            backdate: Duration::from_secs(300),
            responder_id: ResponderIdKind::KeyHash,
            nonce: NoncePolicy::Ignore,
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
pub struct StatusConfig {
    /// The local journal; default `<data_dir>/journal.vj`.
    pub journal: Option<PathBuf>,
    /// How often the server reads new journal records.
    #[serde(deserialize_with = "duration")]
    pub journal_poll: Duration,
    /// Name recorded as the origin of events this node writes.
    pub origin: String,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            journal: None,
            journal_poll: Duration::from_millis(200),
            origin: "local".into(),
        }
    }
}

/// `[feed]`: every region's Redis holds a stream of status events and a per-issuer snapshot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// Regions that must hold a write before it is acknowledged (default: a majority).
    #[serde(default)]
    pub quorum: Option<usize>,
    /// About how many events each region's stream keeps (trimmed with `MAXLEN ~` to about
    /// this many entries of one event, fewer entries of a batch's many). Replicas further
    /// behind than this re-bootstrap from the snapshot.
    #[serde(default = "default_maxlen")]
    pub maxlen: u64,
    /// Prefix of every Redis key vigil uses.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// `/readyz` fails when no region has delivered an event or heartbeat for this long.
    #[serde(default = "default_max_staleness", deserialize_with = "duration")]
    pub max_staleness: Duration,
    /// How often a heartbeat is written to each region (at most one per region per interval,
    /// whatever the number of replicas).
    #[serde(default = "default_heartbeat", deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
    /// Time a write to one region may take before that region counts as failed.
    #[serde(default = "default_write_timeout", deserialize_with = "duration")]
    pub write_timeout: Duration,
    /// Time to connect to a region's Redis (or its Sentinels).
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles on each failure, with jitter.
    #[serde(default = "default_reconnect_min", deserialize_with = "duration")]
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    #[serde(default = "default_reconnect_max", deserialize_with = "duration")]
    pub reconnect_max: Duration,
    /// The local checkpoint (view and cursors); default `<data_dir>/checkpoint.vcp`.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// How often the checkpoint is written (also on shutdown).
    #[serde(default = "default_checkpoint_interval", deserialize_with = "duration")]
    pub checkpoint_interval: Duration,
    /// How often a replica hands off repair hints and checks that every region holds every
    /// other region's data.
    #[serde(default = "default_repair_interval", deserialize_with = "duration")]
    pub repair_interval: Duration,
}

fn default_maxlen() -> u64 {
    1_000_000
}
fn default_key_prefix() -> String {
    "vigil".into()
}
fn default_max_staleness() -> Duration {
    Duration::from_secs(300)
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}
fn default_write_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_reconnect_min() -> Duration {
    Duration::from_millis(100)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(5)
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_repair_interval() -> Duration {
    Duration::from_secs(2)
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            quorum: None,
            maxlen: default_maxlen(),
            key_prefix: default_key_prefix(),
            max_staleness: default_max_staleness(),
            heartbeat_interval: default_heartbeat(),
            write_timeout: default_write_timeout(),
            connect_timeout: default_connect_timeout(),
            reconnect_min: default_reconnect_min(),
            reconnect_max: default_reconnect_max(),
            checkpoint: None,
            checkpoint_interval: default_checkpoint_interval(),
            repair_interval: default_repair_interval(),
        }
    }
}

impl FeedConfig {
    /// Regions that must hold a write: `quorum`, or a majority of the `regions` regions.
    pub fn quorum(&self, regions: usize) -> usize {
        self.quorum.unwrap_or(regions / 2 + 1)
    }
}

/// `[admin]`: the admin API on its own listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address and port of the admin listener (keep it off the public network).
    pub listen: SocketAddr,
    /// File holding the bearer token (or set `VIGIL_ADMIN_TOKEN`). At least 16 bytes.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Append-only audit log of every change; default `<data_dir>/audit.log`.
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// Server certificate chain (PEM): serve the admin API over TLS.
    #[serde(default)]
    pub tls_certificate: Option<PathBuf>,
    /// Key (PEM) of `tls_certificate`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) client certificates must chain to: requires mutual TLS.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Largest request body, bytes.
    #[serde(default = "default_admin_body")]
    pub max_body_bytes: usize,
}

fn default_admin_body() -> usize {
    limits::MAX_ADMIN_BODY_BYTES
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `vigil=debug`.
    pub filter: String,
    /// Line format on stderr.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".into(),
            format: LogFormat::default(),
        }
    }
}

/// How log lines are written (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; coloured only when stderr is a terminal and `NO_COLOR` is unset.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, fields (with the message), span.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown format {other:?}, expected \"text\" or \"json\""
            )),
        }
    }
}

/// `[[issuer]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Short name used in CLI commands, metrics labels and CRL paths.
    pub name: String,
    /// The CA certificate (PEM).
    pub certificate: PathBuf,
    /// Delegated responder certificate (PEM). Absent: the CA key signs responses itself.
    pub responder_certificate: Option<PathBuf>,
    /// Private key (PEM) of the responder certificate, or of the CA when no responder
    /// certificate is given. Exactly one of `responder_key` and `signer`.
    pub responder_key: Option<PathBuf>,
    /// Sign through HSMs instead of `responder_key`.
    pub signer: Option<IssuerSignerConfig>,
    /// Answer for serials with no issuance record.
    #[serde(default)]
    pub unissued: UnissuedPolicy,
    /// Allow certificates of this issuer to be put on hold (`vigil hold`, `vigil release`,
    /// `POST /v1/hold`): a held certificate is answered revoked with reason certificateHold
    /// and listed so on CRLs, and a release takes it off (removeFromCRL in delta CRLs). Off
    /// by default: the CA/Browser Forum Baseline Requirements forbid holds for TLS issuers.
    /// With it off, hold and release writes are refused and hold events from the feed are
    /// ignored when answering.
    #[serde(default)]
    pub allow_hold: bool,
    /// The CA's private key (PEM, PKCS#8), which signs this issuer's CRLs. Absent (and no
    /// `crl_signer`): this node does not publish CRLs for the issuer (it still serves those
    /// published elsewhere). At most one of `crl_key` and `crl_signer`.
    #[serde(default)]
    pub crl_key: Option<PathBuf>,
    /// Sign this issuer's CRLs through HSMs holding the CA's key, instead of `crl_key`.
    #[serde(default)]
    pub crl_signer: Option<IssuerSignerConfig>,
    /// This issuer's CRL settings, each over the same key of `[crl]` (absent: `[crl]` as is).
    #[serde(default)]
    pub crl: IssuerCrlConfig,
}

/// `[[issuer]] crl = { shards, validity, interval, ... }`: the `[crl]` keys an issuer may set
/// for itself. Every key left out is `[crl]`'s; [`Config::crl_of`] gives the merged settings,
/// which are validated like `[crl]` (the Baseline Requirements' bounds included) under the
/// name `issuer[i].crl`. Publishing (region, lease, refresh, publish_delay) stays global.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerCrlConfig {
    /// Public base URL of this issuer's CRLs.
    #[serde(default)]
    pub base_url: Option<String>,
    /// nextUpdate − thisUpdate.
    #[serde(default, deserialize_with = "opt_duration")]
    pub validity: Option<Duration>,
    /// Complete CRLs are re-published this often.
    #[serde(default, deserialize_with = "opt_duration")]
    pub interval: Option<Duration>,
    /// CRL shards of this issuer.
    #[serde(default)]
    pub shards: Option<u16>,
    /// What the shard is a function of.
    #[serde(default)]
    pub shard_by: Option<ShardByConfig>,
    /// Window width for `shard_by = "not_after"`.
    #[serde(default, deserialize_with = "opt_duration")]
    pub shard_width: Option<Duration>,
    /// Also publish delta CRLs.
    #[serde(default)]
    pub delta: Option<bool>,
    /// Size warning bound, bytes.
    #[serde(default)]
    pub warn_bytes: Option<u64>,
}

/// `[[region]]`: one region and its Redis, a single server (`redis`) or a Sentinel-managed group
/// (`sentinels` and `service`). The CRL publisher stores into every region's Redis; with
/// `[feed]`, status changes are written to every region; replicas read from every region.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Region name: 1-64 of `[A-Za-z0-9_-]`, unique.
    pub name: String,
    /// Redis URL, `redis://host:port[/db]` (or `rediss://` for TLS through rustls,
    /// `unix://`). Put no password here: use `password_file` or the environment.
    #[serde(default)]
    pub redis: Option<String>,
    /// Sentinel addresses (`redis://` or `rediss://`), instead of `redis`.
    #[serde(default)]
    pub sentinels: Vec<String>,
    /// The Sentinel service (master group) name.
    #[serde(default)]
    pub service: Option<String>,
    /// Connect to the Sentinel-managed servers over TLS.
    #[serde(default)]
    pub sentinel_server_tls: bool,
    /// Database number for Sentinel-managed servers.
    #[serde(default)]
    pub db: i64,
    /// ACL user name on the data servers (not the Sentinels: see `sentinel_username`).
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the data servers' password (trailing newline ignored); or set
    /// `VIGIL_REDIS_PASSWORD_<REGION>`. The file wins when both are set.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// ACL user name on the Sentinels themselves; only with `sentinels`.
    #[serde(default)]
    pub sentinel_username: Option<String>,
    /// File holding the Sentinels' own password (their `requirepass` or the ACL user's; trailing
    /// newline ignored); or set `VIGIL_SENTINEL_PASSWORD_<REGION>`. The file wins when both are
    /// set. Only with `sentinels`.
    #[serde(default)]
    pub sentinel_password_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server with, instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for TLS client authentication.
    #[serde(default)]
    pub client_certificate: Option<PathBuf>,
    /// Key (PEM) of `client_certificate`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

impl RegionConfig {
    /// The environment variable that may hold this region's password.
    pub fn password_env(&self) -> String {
        format!("{ENV_REDIS_PASSWORD_PREFIX}{}", self.env_suffix())
    }

    /// The environment variable that may hold the password of this region's Sentinels.
    pub fn sentinel_password_env(&self) -> String {
        format!("{ENV_SENTINEL_PASSWORD_PREFIX}{}", self.env_suffix())
    }

    /// The region name as it ends an environment variable: upper-cased, `-` as `_`.
    fn env_suffix(&self) -> String {
        self.name.to_ascii_uppercase().replace('-', "_")
    }
}

/// What a sharded CRL's shard is a function of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ShardByConfig {
    /// CRC-32 of the serial's DER content octets, modulo `crl.shards`.
    #[default]
    Serial,
    /// `floor(notAfter / crl.shard_width) mod crl.shards`.
    NotAfter,
}

/// `[crl]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrlConfig {
    /// Public base URL of this service, e.g. `http://crl.example.com`: CRLs are at
    /// `{base_url}/crl/...`. Required with shards or deltas (it goes into the issuing
    /// distribution point and freshest CRL extensions).
    pub base_url: Option<String>,
    /// The region whose Redis holds this node's publisher lease (default: the first
    /// `[[region]]`).
    pub region: Option<String>,
    /// Take part in publishing (for issuers with `crl_key` or `crl_signer`), under the region's
    /// lease.
    pub publish: bool,
    /// nextUpdate − thisUpdate (1h ..= 10d, BR §4.9.7).
    #[serde(deserialize_with = "duration")]
    pub validity: Duration,
    /// Complete CRLs are re-published this often (at most half of `validity`).
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// A revocation is on a published CRL within this delay (at most 24h, BR §4.9.7).
    #[serde(deserialize_with = "duration")]
    pub publish_delay: Duration,
    /// Replicas look for newer CRLs in Redis (or the data directory) this often.
    #[serde(deserialize_with = "duration")]
    pub refresh: Duration,
    /// Publisher lease time-to-live in Redis; the leader renews it every third of it.
    #[serde(deserialize_with = "duration")]
    pub lease_ttl: Duration,
    /// Timeout of one Redis command (or connection attempt).
    #[serde(deserialize_with = "duration")]
    pub redis_timeout: Duration,
    /// CRL shards per issuer; 1 means one unsharded CRL.
    pub shards: u16,
    /// What the shard is a function of.
    pub shard_by: ShardByConfig,
    /// Window width for `shard_by = "not_after"`.
    #[serde(deserialize_with = "duration")]
    pub shard_width: Duration,
    /// Also publish delta CRLs (revocations since the last complete CRL).
    pub delta: bool,
    /// A CRL larger than this many bytes is logged (with the shard count that would fit) and
    /// counted in `vigil_crl_oversize_total`; 0 turns the warning off.
    pub warn_bytes: u64,
}

impl Default for CrlConfig {
    fn default() -> Self {
        CrlConfig {
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
            shard_by: ShardByConfig::Serial,
            shard_width: Duration::from_secs(86400),
            delta: false,
            warn_bytes: crate::limits::CRL_WARN_BYTES,
        }
    }
}

impl CrlConfig {
    /// The sharding of every issuer's CRLs.
    pub fn sharding(&self) -> crate::crl::Sharding {
        use crate::crl::ShardBy;
        crate::crl::Sharding {
            shards: self.shards.max(1),
            by: match self.shard_by {
                ShardByConfig::Serial => ShardBy::Serial,
                ShardByConfig::NotAfter => ShardBy::NotAfter {
                    width: self.shard_width.as_secs().max(1) as i64,
                },
            },
        }
    }
}

/// `[issuer.signer]` / `[issuer.crl_signer]`: the HSM pool that holds an issuer's signing key
/// (the responder's, or the CA's for OCSP without a delegated responder; the CA's for CRLs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSignerConfig {
    /// Names of `[[hsm]]` entries holding the same key, in order of preference: signatures go
    /// to the first one in service.
    pub hsm: Vec<String>,
    /// LABS ONLY: a PEM file with the same private key, used when no HSM can sign. It puts the
    /// key on disk, which defeats the HSM.
    pub danger_software_fallback: Option<PathBuf>,
}

/// `[[hsm]]`: one signing key on one PKCS#11 token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// Name used by `issuer.signer.hsm`, in logs, and as the `hsm` metrics label.
    pub name: String,
    /// The PKCS#11 module: the vendor library, `libsofthsm2.so`, or `p11-kit-client.so` for
    /// a token behind `p11-kit server`.
    pub module: PathBuf,
    /// Environment set while the module is loaded and initialised, e.g.
    /// `{ P11_KIT_SERVER_ADDRESS = "unix:path=/run/hsm1.sock" }`. Entries with the same
    /// `module` and `module_env` share one module instance.
    #[serde(default)]
    pub module_env: BTreeMap<String, String>,
    /// The token's label. Exactly one of `token_label` and `slot`.
    pub token_label: Option<String>,
    /// The token's slot id.
    pub slot: Option<u64>,
    /// CKA_LABEL of the private key. At least one of `key_label` and `key_id`.
    pub key_label: Option<String>,
    /// CKA_ID of the private key, in hex.
    pub key_id: Option<String>,
    /// File holding the user PIN. Exactly one of `pin_file` and `pin_env`.
    pub pin_file: Option<PathBuf>,
    /// Name of the environment variable holding the user PIN.
    pub pin_env: Option<String>,
    /// Most signing sessions open on this token at once.
    #[serde(default = "default_hsm_sessions")]
    pub sessions: usize,
    /// How RSA keys sign.
    #[serde(default)]
    pub rsa_mechanism: HsmRsaMechanism,
}

fn default_hsm_sessions() -> usize {
    limits::HSM_SESSIONS
}

/// `hsm.rsa_mechanism`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HsmRsaMechanism {
    /// `CKM_SHA256_RSA_PKCS` when the token lists it, else `CKM_RSA_PKCS` over a DigestInfo.
    #[default]
    Auto,
    /// `CKM_SHA256_RSA_PKCS`.
    Sha256RsaPkcs,
    /// `CKM_RSA_PKCS` over a SHA-256 DigestInfo made by vigil.
    RsaPkcs,
}

/// `[hsm_pool]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HsmPoolConfig {
    /// Time between health probes (a verified test signature) of an HSM in service.
    #[serde(deserialize_with = "duration")]
    pub probe_interval: Duration,
    /// Failed signatures in a row that take an HSM out of service (a lost device, session or
    /// connection takes it out at once).
    pub breaker_failures: u32,
    /// First wait before reconnecting an HSM out of service; doubles per failed attempt.
    #[serde(deserialize_with = "duration")]
    pub reconnect_backoff_min: Duration,
    /// Longest wait between reconnection attempts.
    #[serde(deserialize_with = "duration")]
    pub reconnect_backoff_max: Duration,
    /// How long a signature waits for a session when every HSM in service is busy.
    #[serde(deserialize_with = "duration")]
    pub session_wait: Duration,
    /// How long one HSM may take to sign before the signature fails over to the next HSM and
    /// this one is taken out of service (a network HSM that stops answering without closing
    /// its connection).
    #[serde(deserialize_with = "duration")]
    pub sign_timeout: Duration,
    /// `/readyz` answers 503 (not just "degraded") while an issuer has no HSM in service.
    pub readiness_requires_signer: bool,
}

impl Default for HsmPoolConfig {
    fn default() -> Self {
        HsmPoolConfig {
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

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

impl Config {
    /// The CRL settings of the issuer named `issuer`: `[crl]` with the issuer's own `crl = {...}`
    /// keys over it (`[crl]` alone for an unknown name).
    pub fn crl_of(&self, issuer: &str) -> CrlConfig {
        let mut c = self.crl.clone();
        let Some(o) = self
            .issuers
            .iter()
            .find(|i| i.name == issuer)
            .map(|i| &i.crl)
        else {
            return c;
        };
        if let Some(v) = &o.base_url {
            c.base_url = Some(v.clone());
        }
        c.validity = o.validity.unwrap_or(c.validity);
        c.interval = o.interval.unwrap_or(c.interval);
        c.shards = o.shards.unwrap_or(c.shards);
        c.shard_by = o.shard_by.unwrap_or(c.shard_by);
        c.shard_width = o.shard_width.unwrap_or(c.shard_width);
        c.delta = o.delta.unwrap_or(c.delta);
        c.warn_bytes = o.warn_bytes.unwrap_or(c.warn_bytes);
        c
    }

    /// Whether the issuer named `issuer` allows holds (`allow_hold`); false for an unknown name.
    pub fn allows_holds(&self, issuer: &str) -> bool {
        self.issuers
            .iter()
            .any(|i| i.name == issuer && i.allow_hold)
    }

    /// Loads from `path` (or `$VIGIL_CONFIG`), or the embedded default when neither is given;
    /// applies environment overrides and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env_path = std::env::var_os(ENV_CONFIG).map(PathBuf::from);
        let path = path.map(Path::to_path_buf).or(env_path);
        let mut cfg = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError(format!("reading {}: {e}", p.display())))?;
                let mut c = Self::from_toml(&text)?;
                c.resolve_paths(p.parent().unwrap_or(Path::new(".")));
                c
            }
            None => Self::embedded_default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        if cfg.embedded {
            cfg.issuers = vec![crate::demo::demo_issuer_config(&cfg.data_dir)];
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text (no environment, no path resolution, no validation).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(e.to_string()))
    }

    /// The configuration of `vigil serve` with no file: the demo PKI in `./vigil-data`.
    pub fn embedded_default() -> Config {
        let mut c: Config = toml::from_str("").unwrap_or_else(|_| unreachable_default());
        c.embedded = true;
        c
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        if let Some(j) = &mut self.status.journal {
            fix(j);
        }
        if let Some(f) = &mut self.feed {
            if let Some(c) = &mut f.checkpoint {
                fix(c);
            }
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
            if let Some(k) = &mut i.responder_key {
                fix(k);
            }
            if let Some(r) = &mut i.responder_certificate {
                fix(r);
            }
            if let Some(k) = &mut i.crl_key {
                fix(k);
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

    /// Applies `VIGIL_*` overrides read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get(ENV_LISTEN) {
            self.server.listen = v
                .parse()
                .map_err(|e| ConfigError(format!("server.listen (from {ENV_LISTEN}): {e}")))?;
        }
        if let Some(v) = get(ENV_DATA_DIR) {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get(ENV_OCSP_PREFIX) {
            self.server.ocsp_prefix = v;
        }
        if let Some(v) = get(ENV_NONCE) {
            self.ocsp.nonce = match v.as_str() {
                "ignore" => NoncePolicy::Ignore,
                "echo" => NoncePolicy::Echo,
                other => return err(format!("ocsp.nonce (from {ENV_NONCE}): unknown policy {other:?}, expected \"ignore\" or \"echo\"")),
            };
        }
        if let Some(v) = get(ENV_LOG) {
            self.log.filter = v;
        }
        if let Some(v) = get(ENV_LOG_FORMAT) {
            self.log.format = v
                .parse()
                .map_err(|e| ConfigError(format!("log.format (from {ENV_LOG_FORMAT}): {e}")))?;
        }
        if let Some(v) = get(ENV_CRL_BASE_URL) {
            self.crl.base_url = Some(v);
        }
        Ok(())
    }

    /// The journal path.
    pub fn journal_path(&self) -> PathBuf {
        self.status
            .journal
            .clone()
            .unwrap_or_else(|| self.data_dir.join("journal.vj"))
    }

    /// The checkpoint path (feed mode).
    pub fn checkpoint_path(&self) -> PathBuf {
        self.feed
            .as_ref()
            .and_then(|f| f.checkpoint.clone())
            .unwrap_or_else(|| self.data_dir.join("checkpoint.vcp"))
    }

    /// The admin audit log path.
    pub fn audit_log_path(&self) -> PathBuf {
        self.admin
            .as_ref()
            .and_then(|a| a.audit_log.clone())
            .unwrap_or_else(|| self.data_dir.join("audit.log"))
    }

    /// Checks every rule that TOML types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        let p = &s.ocsp_prefix;
        if !p.is_empty()
            && (!p.starts_with('/') || p.ends_with('/') || p.contains("//") || p.contains(".."))
        {
            return err(format!("server.ocsp_prefix: {p:?} must start with '/', not end with '/', and hold no '//' or '..'"));
        }
        if ["/healthz", "/readyz", "/metrics", "/crl"].contains(&p.as_str()) {
            return err(format!("server.ocsp_prefix: {p:?} is a reserved path"));
        }
        if s.max_connections == 0 {
            return err("server.max_connections: must be at least 1");
        }
        for (key, d) in [
            ("server.header_read_timeout", s.header_read_timeout),
            ("server.body_read_timeout", s.body_read_timeout),
            ("server.idle_timeout", s.idle_timeout),
        ] {
            if d.is_zero() {
                return err(format!("{key}: must be greater than zero"));
            }
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_request_bytes", l.max_request_bytes),
            ("limits.max_get_path_bytes", l.max_get_path_bytes),
            ("limits.max_cert_ids", l.max_cert_ids),
            ("limits.max_nonce_bytes", l.max_nonce_bytes),
        ] {
            if v == 0 {
                return err(format!("{key}: must be at least 1"));
            }
        }
        if l.max_request_bytes > 1024 * 1024 {
            return err("limits.max_request_bytes: at most 1 MiB");
        }
        if !(limits::NONCE_OCTETS_MUST_ACCEPT..=limits::NONCE_OCTETS_ALLOWED)
            .contains(&l.max_nonce_bytes)
        {
            return err(format!(
                "limits.max_nonce_bytes: {} is outside {} ..= {} (RFC 9654 §2.1: nonces of 16 ..= 32 octets must be accepted, none over 128)",
                l.max_nonce_bytes,
                limits::NONCE_OCTETS_MUST_ACCEPT,
                limits::NONCE_OCTETS_ALLOWED
            ));
        }
        let o = &self.ocsp;
        let validity = o.validity.as_secs() as i64;
        if !(MIN_VALIDITY_SECS..=MAX_VALIDITY_SECS).contains(&validity) {
            return err(format!(
                "ocsp.validity: {} is outside 8h ..= 10d (CA/B Forum BR §4.9.10)",
                humantime::format_duration(o.validity)
            ));
        }
        if o.backdate > Duration::from_secs(3600) {
            return err("ocsp.backdate: at most 1h");
        }
        if o.signing_concurrency == 0 {
            return err("ocsp.signing_concurrency: must be at least 1");
        }
        if o.cache_max_bytes < 1024 * 1024 {
            return err("ocsp.cache_max_bytes: at least 1 MiB");
        }
        if self.status.journal_poll < Duration::from_millis(10) {
            return err("status.journal_poll: at least 10ms");
        }
        if self.status.origin.is_empty() || self.status.origin.len() > limits::MAX_ORIGIN_BYTES {
            return err("status.origin: 1 to 64 bytes");
        }
        if let Some(f) = &self.feed {
            validate_feed(f, self.regions.len())?;
        }
        if let Some(a) = &self.admin {
            validate_admin(a)?;
        }
        if self.issuers.is_empty() {
            return err("issuer: at least one [[issuer]] is required");
        }
        for (i, iss) in self.issuers.iter().enumerate() {
            if !valid_name(&iss.name) {
                return err(format!(
                    "issuer[{i}].name: {:?} must be 1-64 of [A-Za-z0-9_-]",
                    iss.name
                ));
            }
            if self.issuers[..i].iter().any(|o| o.name == iss.name) {
                return err(format!("issuer[{i}].name: {:?} is used twice", iss.name));
            }
            match (&iss.responder_key, &iss.signer) {
                (Some(_), Some(_)) => {
                    return err(format!(
                        "issuer[{i}] ({}): set either responder_key or signer, not both",
                        iss.name
                    ))
                }
                (None, None) => {
                    return err(format!(
                        "issuer[{i}] ({}): responder_key or signer is required",
                        iss.name
                    ))
                }
                _ => {}
            }
            if iss.crl_key.is_some() && iss.crl_signer.is_some() {
                return err(format!(
                    "issuer[{i}] ({}): set either crl_key or crl_signer, not both",
                    iss.name
                ));
            }
            for (key, sc) in [("signer", &iss.signer), ("crl_signer", &iss.crl_signer)] {
                if let Some(sc) = sc {
                    self.validate_signer(&format!("issuer[{i}].{key}"), sc)?;
                }
            }
        }
        self.validate_hsms()
    }

    /// Refuses two issuers whose CA certificates hold the same key (`keys`: each issuer's
    /// subjectPublicKey, in `[[issuer]]` order). A CertID names its issuer by the key hash (and
    /// the name hash), and the status view keys each issuer by its key: two issuers with one
    /// key would share one table and one of them would never be matched. Checked once the
    /// certificates are read, before any signer connects (`vigil check-config` and start-up).
    pub fn validate_issuer_keys(&self, keys: &[Vec<u8>]) -> Result<(), ConfigError> {
        for (i, key) in keys.iter().enumerate() {
            if let Some(j) = keys[..i].iter().position(|k| k == key) {
                return err(format!(
                    "issuer[{i}] ({}): its CA certificate has the same key as issuer[{j}] ({}); \
                     a CertID names an issuer by its key, so configure each CA key once",
                    self.issuers[i].name, self.issuers[j].name
                ));
            }
        }
        Ok(())
    }

    /// `at.hsm` names one or more `[[hsm]]` entries, each once.
    fn validate_signer(&self, at: &str, sc: &IssuerSignerConfig) -> Result<(), ConfigError> {
        if sc.hsm.is_empty() {
            return err(format!("{at}.hsm: name at least one [[hsm]]"));
        }
        for (j, name) in sc.hsm.iter().enumerate() {
            if !self.hsms.iter().any(|h| &h.name == name) {
                return err(format!("{at}.hsm: no [[hsm]] is named {name:?}"));
            }
            if sc.hsm[..j].contains(name) {
                return err(format!("{at}.hsm: {name:?} is listed twice"));
            }
        }
        Ok(())
    }

    fn validate_hsms(&self) -> Result<(), ConfigError> {
        for (i, h) in self.hsms.iter().enumerate() {
            if !valid_name(&h.name) {
                return err(format!(
                    "hsm[{i}].name: {:?} must be 1-64 of [A-Za-z0-9_-]",
                    h.name
                ));
            }
            if self.hsms[..i].iter().any(|o| o.name == h.name) {
                return err(format!("hsm[{i}].name: {:?} is used twice", h.name));
            }
            let at = format!("hsm[{i}] ({})", h.name);
            if h.module.as_os_str().is_empty() {
                return err(format!("{at}.module: required"));
            }
            for k in h.module_env.keys() {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    return err(format!("{at}.module_env: {k:?} is not a variable name"));
                }
            }
            if h.token_label.is_some() == h.slot.is_some() {
                return err(format!("{at}: set exactly one of token_label and slot"));
            }
            if h.key_label.is_none() && h.key_id.is_none() {
                return err(format!("{at}: set key_label, key_id, or both"));
            }
            if let Some(id) = &h.key_id {
                if crate::signer::pool::parse_hex(id).is_none() {
                    return err(format!(
                        "{at}.key_id: {id:?} is not hex (e.g. \"01\" or \"a1:b2\")"
                    ));
                }
            }
            match (&h.pin_file, &h.pin_env) {
                (Some(_), None) => {}
                (None, Some(v)) if !v.is_empty() => {}
                _ => return err(format!("{at}: set exactly one of pin_file and pin_env")),
            }
            if h.sessions == 0 || h.sessions > limits::MAX_HSM_SESSIONS {
                return err(format!("{at}.sessions: 1 ..= {}", limits::MAX_HSM_SESSIONS));
            }
        }
        let p = &self.hsm_pool;
        if p.probe_interval < Duration::from_millis(100) {
            return err("hsm_pool.probe_interval: at least 100ms");
        }
        if p.breaker_failures == 0 {
            return err("hsm_pool.breaker_failures: at least 1");
        }
        if p.reconnect_backoff_min.is_zero() {
            return err("hsm_pool.reconnect_backoff_min: must be greater than zero");
        }
        if p.reconnect_backoff_max < p.reconnect_backoff_min {
            return err("hsm_pool.reconnect_backoff_max: must be at least reconnect_backoff_min");
        }
        if p.session_wait > Duration::from_secs(60) {
            return err("hsm_pool.session_wait: at most 60s");
        }
        if p.sign_timeout < Duration::from_millis(10) || p.sign_timeout > Duration::from_secs(60) {
            return err("hsm_pool.sign_timeout: 10ms ..= 60s");
        }
        self.validate_regions()?;
        self.validate_crl()
    }

    fn validate_regions(&self) -> Result<(), ConfigError> {
        for (i, r) in self.regions.iter().enumerate() {
            if !valid_name(&r.name) {
                return err(format!(
                    "region[{i}].name: {:?} must be 1-64 of [A-Za-z0-9_-]",
                    r.name
                ));
            }
            if self.regions[..i].iter().any(|o| o.name == r.name) {
                return err(format!("region[{i}].name: {:?} is used twice", r.name));
            }
            match (&r.redis, r.sentinels.is_empty(), &r.service) {
                (Some(u), true, None) => {
                    if url_has_password(u) {
                        return err(format!(
                            "region[{i}].redis: must not hold a password (use password_file or {})",
                            r.password_env()
                        ));
                    }
                    if u.contains('#') {
                        return err(format!(
                            "region[{i}].redis: no URL fragment (#insecure turns off certificate checks)"
                        ));
                    }
                    if let Err(e) = redis::Client::open(u.as_str()) {
                        return err(format!("region[{i}].redis: {u:?}: {e}"));
                    }
                }
                (None, false, Some(_)) => {
                    for s in &r.sentinels {
                        if !(s.starts_with("redis://") || s.starts_with("rediss://")) {
                            return err(format!(
                                "region[{i}].sentinels: {s:?} must start with redis:// or rediss://"
                            ));
                        }
                        // The Sentinel client takes only the address of each entry: a user
                        // or database in it would be ignored without a word.
                        if url_has_password(s) {
                            return err(format!(
                                "region[{i}].sentinels: must not hold a password (use sentinel_password_file or {})",
                                r.sentinel_password_env()
                            ));
                        }
                        if url_has_userinfo(s) {
                            return err(format!(
                                "region[{i}].sentinels: no user in the URL (use sentinel_username)"
                            ));
                        }
                        if s.contains('#') {
                            return err(format!("region[{i}].sentinels: no URL fragment"));
                        }
                    }
                }
                _ => {
                    return err(format!(
                        "region[{i}]: set either redis, or sentinels and service"
                    ))
                }
            }
            if r.sentinels.is_empty() {
                if r.sentinel_username.is_some() {
                    return err(format!(
                        "region[{i}].sentinel_username: only with sentinels (the data server's user is username)"
                    ));
                }
                if r.sentinel_password_file.is_some() {
                    return err(format!(
                        "region[{i}].sentinel_password_file: only with sentinels (the data server's password is password_file)"
                    ));
                }
            }
            if r.client_certificate.is_some() != r.client_key.is_some() {
                return err(format!(
                    "region[{i}].client_key: client_certificate and client_key go together"
                ));
            }
        }
        Ok(())
    }

    /// `[crl]`, then every issuer's merged CRL settings ([`Config::crl_of`]) against the same
    /// rules, named `issuer[i].crl`. The Baseline Requirements' CRL rules (§4.9.7, §7.2) and
    /// where each is kept:
    ///
    /// - nextUpdate − thisUpdate ≤ 10 days for a subscriber CRL: `validity` (checked here);
    /// - a new CRL at least every 7 days: `interval` ≤ 7 days and ≤ `validity` / 2 (here), so
    ///   a CRL is replaced well before its nextUpdate;
    /// - within 24 hours of a revocation: `publish_delay` ≤ 24h (here; one value for all);
    /// - CRLNumber strictly increasing and < 2^159: numbers are u64 milliseconds raised past
    ///   the highest stored ([`crate::crl::number`]), so below 2^64, and the store refuses one
    ///   that does not increase;
    /// - no SHA-1: no signature algorithm vigil can sign with uses SHA-1
    ///   ([`crate::signer::SignatureAlgorithm`]), so there is nothing to configure.
    fn validate_crl(&self) -> Result<(), ConfigError> {
        self.validate_crl_settings("crl", &self.crl)?;
        for (i, iss) in self.issuers.iter().enumerate() {
            let merged = self.crl_of(&iss.name);
            self.validate_crl_settings(&format!("issuer[{i}].crl"), &merged)?;
        }
        Ok(())
    }

    fn validate_crl_settings(&self, key: &str, c: &CrlConfig) -> Result<(), ConfigError> {
        let secs = |d: Duration| d.as_secs_f64();
        if !(3600.0..=crate::crl::MAX_VALIDITY_SECS as f64).contains(&secs(c.validity)) {
            return err(format!(
                "{key}.validity: {} is outside 1h ..= 10d (BR §4.9.7: a subscriber CRL's nextUpdate is at most 10 days after its thisUpdate)",
                humantime::format_duration(c.validity)
            ));
        }
        if c.interval > Duration::from_secs(7 * 86400) {
            return err(format!(
                "{key}.interval: {} is over 7d (BR §4.9.7: CRLs are reissued at least every seven days)",
                humantime::format_duration(c.interval)
            ));
        }
        if c.interval < Duration::from_secs(1) || c.interval > c.validity / 2 {
            return err(format!(
                "{key}.interval: {} must be between 1s and half of {key}.validity ({}), so a CRL is replaced before its nextUpdate",
                humantime::format_duration(c.interval),
                humantime::format_duration(c.validity)
            ));
        }
        if c.publish_delay < Duration::from_millis(100)
            || c.publish_delay > Duration::from_secs(86400)
        {
            return err("crl.publish_delay: between 100ms and 24h (BR §4.9.7: a revocation is on a CRL within 24 hours)");
        }
        if c.refresh < Duration::from_millis(100) {
            return err("crl.refresh: at least 100ms");
        }
        if c.lease_ttl < Duration::from_secs(1) {
            return err("crl.lease_ttl: at least 1s");
        }
        if c.redis_timeout.is_zero() {
            return err("crl.redis_timeout: must be greater than zero");
        }
        if c.shards == 0 || c.shards > crate::crl::shard::MAX_SHARDS {
            return err(format!(
                "{key}.shards: 1 ..= {}",
                crate::crl::shard::MAX_SHARDS
            ));
        }
        if c.shard_width < Duration::from_secs(1) {
            return err(format!("{key}.shard_width: at least 1s"));
        }
        match &c.base_url {
            Some(u) => {
                let ok = (u.starts_with("http://") || u.starts_with("https://"))
                    && !u.contains(['?', '#', ' '])
                    && u.len() <= 512;
                if !ok {
                    return err(format!(
                        "{key}.base_url: {u:?} must be an http:// or https:// URL without query or fragment"
                    ));
                }
                if (c.shards > 1 || c.delta) && !u.starts_with("http://") {
                    return err(format!(
                        "{key}.base_url: {u:?} goes into the CRLs' issuing distribution point, which is byte for byte the certificates' CRL distribution point: that is an http:// URL (BR §7.1.2.11.2, §7.2.2.1)"
                    ));
                }
            }
            None if c.shards > 1 || c.delta => {
                return err(format!(
                    "{key}.base_url: required when {key}.shards > 1 or {key}.delta (it is written into the CRLs); or set {ENV_CRL_BASE_URL}"
                ))
            }
            None => {}
        }
        if let Some(r) = &c.region {
            if !self.regions.iter().any(|x| &x.name == r) {
                return err(format!("crl.region: {r:?} is not a configured [[region]]"));
            }
        }
        Ok(())
    }

    /// The region whose Redis holds this node's publisher lease.
    pub fn lease_region(&self) -> Option<&RegionConfig> {
        match &self.crl.region {
            Some(r) => self.regions.iter().find(|x| &x.name == r),
            None => self.regions.first(),
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn validate_feed(f: &FeedConfig, n: usize) -> Result<(), ConfigError> {
    if n == 0 {
        return err("feed: at least one [[region]] is required");
    }
    let q = f.quorum(n);
    if q == 0 || q > n {
        return err(format!(
            "feed.quorum: {q} must be between 1 and the number of regions ({n})"
        ));
    }
    if f.maxlen == 0 {
        return err("feed.maxlen: must be at least 1");
    }
    let key_ok = !f.key_prefix.is_empty()
        && f.key_prefix.len() <= 64
        && f.key_prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
    if !key_ok {
        return err("feed.key_prefix: 1-64 printable characters, no spaces or braces");
    }
    for (key, d) in [
        ("feed.max_staleness", f.max_staleness),
        ("feed.heartbeat_interval", f.heartbeat_interval),
        ("feed.write_timeout", f.write_timeout),
        ("feed.connect_timeout", f.connect_timeout),
        ("feed.reconnect_min", f.reconnect_min),
        ("feed.checkpoint_interval", f.checkpoint_interval),
        ("feed.repair_interval", f.repair_interval),
    ] {
        if d < Duration::from_millis(10) {
            return err(format!("{key}: at least 10ms"));
        }
    }
    if f.reconnect_max < f.reconnect_min {
        return err("feed.reconnect_max: must not be below feed.reconnect_min");
    }
    if f.max_staleness <= f.heartbeat_interval {
        return err("feed.max_staleness: must be longer than feed.heartbeat_interval");
    }
    Ok(())
}

/// True when a `redis://user:password@host` URL carries a password.
fn url_has_password(u: &str) -> bool {
    let rest = u.split_once("://").map_or(u, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// True when a URL carries user information (`user@` or `user:password@`).
fn url_has_userinfo(u: &str) -> bool {
    let rest = u.split_once("://").map_or(u, |(_, r)| r);
    rest.split('/').next().unwrap_or_default().contains('@')
}

fn validate_admin(a: &AdminConfig) -> Result<(), ConfigError> {
    if a.tls_certificate.is_some() != a.tls_key.is_some() {
        return err("admin.tls_key: tls_certificate and tls_key go together");
    }
    if a.client_ca.is_some() && a.tls_certificate.is_none() {
        return err("admin.client_ca: mutual TLS needs admin.tls_certificate and admin.tls_key");
    }
    if a.max_body_bytes == 0 || a.max_body_bytes > 64 * 1024 {
        return err("admin.max_body_bytes: 1 to 65536");
    }
    Ok(())
}

fn unreachable_default() -> Config {
    // `toml::from_str("")` fills every field from its default; this path is never taken.
    Config {
        data_dir: default_data_dir(),
        server: ServerConfig::default(),
        limits: LimitsConfig::default(),
        ocsp: OcspConfig::default(),
        status: StatusConfig::default(),
        log: LogConfig::default(),
        feed: None,
        admin: None,
        issuers: Vec::new(),
        crl: CrlConfig::default(),
        regions: Vec::new(),
        hsms: Vec::new(),
        hsm_pool: HsmPoolConfig::default(),
        embedded: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER: &str =
        "[[issuer]]\nname = \"a\"\ncertificate = \"ca.pem\"\nresponder_key = \"k.pem\"\n";

    #[test]
    fn parses_and_validates() {
        let c = Config::from_toml(&format!(
            "[ocsp]\nvalidity = \"2d\"\nnonce = \"echo\"\n{ISSUER}"
        ))
        .expect("parse");
        c.validate().expect("valid");
        assert_eq!(c.ocsp.validity, Duration::from_secs(2 * 86400));
        assert_eq!(c.ocsp.nonce, NoncePolicy::Echo);
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml("[server]\nlisen = \"x\"").expect_err("unknown key");
        assert!(e.to_string().contains("lisen"), "{e}");
        let c = Config::from_toml(&format!("[ocsp]\nvalidity = \"11d\"\n{ISSUER}")).expect("parse");
        let e = c.validate().expect_err("too long");
        assert!(e.to_string().contains("ocsp.validity"), "{e}");
        let c = Config::from_toml(&format!("[limits]\nmax_cert_ids = 0\n{ISSUER}")).expect("parse");
        assert!(c
            .validate()
            .expect_err("zero")
            .to_string()
            .contains("limits.max_cert_ids"));
        let e = Config::from_toml("[ocsp]\nvalidity = \"soon\"").expect_err("bad duration");
        assert!(e.to_string().contains("validity"), "{e}");
    }

    #[test]
    fn feed_and_admin_config() {
        let c = Config::from_toml(&format!(
            "[feed]\nmax_staleness = \"30s\"\n[[region]]\nname = \"a\"\nredis = \"redis://127.0.0.1:1/\"\n[[region]]\nname = \"b\"\nsentinels = [\"redis://127.0.0.1:2\"]\nservice = \"m\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{ISSUER}"
        ))
        .expect("parse");
        c.validate().expect("valid");
        let f = c.feed.as_ref().expect("feed");
        assert_eq!(f.quorum(c.regions.len()), 2);
        assert_eq!(c.regions[1].password_env(), "VIGIL_REDIS_PASSWORD_B");
        let bad = Config::from_toml(&format!(
            "[feed]\nquorum = 3\n[[region]]\nname = \"a\"\nredis = \"redis://x/\"\n{ISSUER}"
        ))
        .expect("parse");
        assert!(bad
            .validate()
            .expect_err("quorum")
            .to_string()
            .contains("feed.quorum"));
        let bad = Config::from_toml(&format!("[feed]\n{ISSUER}")).expect("parse");
        assert!(bad
            .validate()
            .expect_err("no region")
            .to_string()
            .contains("[[region]]"));
        let bad = Config::from_toml(&format!(
            "[[region]]\nname = \"a\"\nredis = \"redis://u:secret@x/\"\n{ISSUER}"
        ))
        .expect("parse");
        let e = bad.validate().expect_err("password in url").to_string();
        assert!(
            e.contains("region[0].redis") && !e.contains("secret"),
            "{e}"
        );
        let bad = Config::from_toml(&format!(
            "[[region]]\nname = \"a\"\nredis = \"rediss://x/#insecure\"\n{ISSUER}"
        ))
        .expect("parse");
        assert!(bad
            .validate()
            .expect_err("fragment")
            .to_string()
            .contains("fragment"));
        let bad = Config::from_toml(&format!("[[region]]\nname = \"a\"\n{ISSUER}")).expect("parse");
        assert!(bad
            .validate()
            .expect_err("neither")
            .to_string()
            .contains("either redis"));
        let e =
            Config::from_toml("[[region]]\nname = \"a\"\nurll = \"x\"").expect_err("unknown key");
        assert!(e.to_string().contains("urll"), "{e}");
    }

    #[test]
    fn env_overrides() {
        let mut c = Config::from_toml(ISSUER).expect("parse");
        c.apply_env(|k| match k {
            ENV_LISTEN => Some("127.0.0.1:9999".into()),
            ENV_NONCE => Some("echo".into()),
            _ => None,
        })
        .expect("env");
        assert_eq!(c.server.listen.port(), 9999);
        assert_eq!(c.ocsp.nonce, NoncePolicy::Echo);
        let e = c
            .apply_env(|k| (k == ENV_NONCE).then(|| "sometimes".into()))
            .expect_err("bad");
        assert!(e.to_string().contains("ocsp.nonce"));
    }

    #[test]
    fn log_format_from_file_and_env() {
        let mut c =
            Config::from_toml(&format!("[log]\nformat = \"json\"\n{ISSUER}")).expect("parse");
        assert_eq!(c.log.format, LogFormat::Json);
        c.apply_env(|k| (k == ENV_LOG_FORMAT).then(|| "text".into()))
            .expect("env");
        assert_eq!(c.log.format, LogFormat::Text);
        let e = c
            .apply_env(|k| (k == ENV_LOG_FORMAT).then(|| "JSON ".into()))
            .expect_err("bad env");
        assert!(
            e.to_string().contains("log.format (from VIGIL_LOG_FORMAT)"),
            "{e}"
        );
        assert!(e.to_string().contains("\"text\" or \"json\""), "{e}");
        let e = Config::from_toml(&format!("[log]\nformat = \"xml\"\n{ISSUER}"))
            .expect_err("bad file value");
        assert!(
            e.to_string().contains("format") && e.to_string().contains("xml"),
            "{e}"
        );
        assert_eq!(
            Config::from_toml(ISSUER).expect("parse").log.format,
            LogFormat::Text
        );
    }

    #[test]
    fn crl_and_regions() {
        let c = Config::from_toml(&format!(
            "[crl]\nshards = 4\nbase_url = \"http://crl.test\"\nregion = \"b\"\n\
             [[region]]\nname = \"a\"\nredis = \"redis://127.0.0.1:1\"\n\
             [[region]]\nname = \"b\"\nredis = \"redis://127.0.0.1:2\"\n{ISSUER}crl_key = \"ca.key\"\n"
        ))
        .expect("parse");
        c.validate().expect("valid");
        assert_eq!(c.lease_region().map(|r| r.name.as_str()), Some("b"));
        assert!(c.crl.sharding().is_sharded());
        for (toml, key) in [
            ("[crl]\nshards = 2\n", "crl.base_url"),
            ("[crl]\nvalidity = \"11d\"\n", "crl.validity"),
            ("[crl]\ninterval = \"6d\"\n", "crl.interval"),
            ("[crl]\nregion = \"x\"\n", "crl.region"),
            (
                "[[region]]\nname = \"a\"\nredis = \"nope://\"\n",
                "region[0].redis",
            ),
        ] {
            let c = Config::from_toml(&format!("{toml}{ISSUER}")).expect("parse");
            let e = c.validate().expect_err(key);
            assert!(e.to_string().contains(key), "{e}");
        }
        let e = Config::from_toml("[crl]\nshard = 2\n").expect_err("unknown key");
        assert!(e.to_string().contains("shard"), "{e}");
    }

    #[test]
    fn per_issuer_crl_settings_override_crl_and_are_held_to_the_br() {
        let two = "[[issuer]]\nname = \"b\"\ncertificate = \"b.pem\"\nresponder_key = \"k.pem\"\n";
        let c = Config::from_toml(&format!(
            "[crl]\nbase_url = \"http://crl.test\"\nvalidity = \"5d\"\n\
             {ISSUER}crl = {{ shards = 8, validity = \"2d\", interval = \"6h\", delta = true, \
             shard_by = \"not_after\", shard_width = \"12h\", warn_bytes = 5000 }}\n{two}"
        ))
        .expect("parse");
        c.validate().expect("valid");
        let a = c.crl_of("a");
        assert_eq!(a.shards, 8);
        assert_eq!(a.validity, Duration::from_secs(2 * 86400));
        assert_eq!(a.interval, Duration::from_secs(6 * 3600));
        assert!(a.delta);
        assert_eq!(a.warn_bytes, 5000);
        assert_eq!(
            a.sharding(),
            crate::crl::Sharding {
                shards: 8,
                by: crate::crl::ShardBy::NotAfter { width: 43_200 }
            }
        );
        assert_eq!(a.base_url.as_deref(), Some("http://crl.test"));
        // the other issuer keeps [crl]
        let b = c.crl_of("b");
        assert_eq!((b.shards, b.delta), (1, false));
        assert_eq!(b.validity, Duration::from_secs(5 * 86400));
        assert_eq!(b.interval, c.crl.interval);

        for (over, key, why) in [
            ("validity = \"11d\"", "issuer[0].crl.validity", "10 days"),
            ("validity = \"30m\"", "issuer[0].crl.validity", "1h ..= 10d"),
            ("interval = \"8d\"", "issuer[0].crl.interval", "seven days"),
            // inherits [crl] validity 5d: more than half of it
            (
                "interval = \"3d\"",
                "issuer[0].crl.interval",
                "half of issuer[0].crl.validity (5days)",
            ),
            ("shards = 0", "issuer[0].crl.shards", "1 ..= 256"),
            ("shards = 257", "issuer[0].crl.shards", "1 ..= 256"),
            (
                "shards = 2, base_url = \"https://crl.test\"",
                "issuer[0].crl.base_url",
                "http:// URL",
            ),
            (
                "base_url = \"ftp://x\"",
                "issuer[0].crl.base_url",
                "http://",
            ),
        ] {
            let c = Config::from_toml(&format!(
                "[crl]\nbase_url = \"http://crl.test\"\nvalidity = \"5d\"\n{ISSUER}crl = {{ {over} }}\n"
            ))
            .expect("parse");
            let e = c.validate().expect_err(key).to_string();
            assert!(e.contains(key) && e.contains(why), "{over}: {e}");
        }
        // no base_url anywhere: sharding one issuer needs one
        let c = Config::from_toml(&format!("{ISSUER}crl = {{ shards = 2 }}\n")).expect("parse");
        let e = c.validate().expect_err("base_url").to_string();
        assert!(e.contains("issuer[0].crl.base_url: required"), "{e}");
        // an issuer's own base_url is enough
        let c = Config::from_toml(&format!(
            "{ISSUER}crl = {{ shards = 2, base_url = \"http://a.test\" }}\n"
        ))
        .expect("parse");
        c.validate().expect("valid");
        let e = Config::from_toml(&format!("{ISSUER}crl = {{ publish_delay = \"1h\" }}\n"))
            .expect_err("publish_delay is global");
        assert!(e.to_string().contains("publish_delay"), "{e}");
    }

    #[test]
    fn sentinel_credentials_need_sentinels_and_stay_out_of_urls() {
        const SENTINELS: &str = "sentinels = [\"redis://127.0.0.1:26379\"]\nservice = \"m\"\n";
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("vigil.toml");
        std::fs::write(
            &path,
            format!(
                "[[region]]\nname = \"us-east\"\n{SENTINELS}sentinel_username = \"vigil\"\nsentinel_password_file = \"sentinel-pass\"\n{ISSUER}"
            ),
        )
        .expect("write");
        let c = Config::load(Some(&path)).expect("load");
        let r = &c.regions[0];
        assert_eq!(r.sentinel_username.as_deref(), Some("vigil"));
        assert_eq!(
            r.sentinel_password_file.as_deref(),
            Some(dir.path().join("sentinel-pass").as_path())
        );
        assert_eq!(r.sentinel_password_env(), "VIGIL_SENTINEL_PASSWORD_US_EAST");
        assert_eq!(r.password_env(), "VIGIL_REDIS_PASSWORD_US_EAST");

        for (region, key, secret) in [
            (
                "redis = \"redis://x/\"\nsentinel_password_file = \"p\"\n",
                "region[0].sentinel_password_file",
                None,
            ),
            (
                "redis = \"redis://x/\"\nsentinel_username = \"u\"\n",
                "region[0].sentinel_username",
                None,
            ),
            (
                "sentinels = [\"redis://127.0.0.1:1\", \"redis://u:hunter2@127.0.0.1:2\"]\nservice = \"m\"\n",
                "VIGIL_SENTINEL_PASSWORD_A",
                Some("hunter2"),
            ),
            (
                "sentinels = [\"redis://:hunter2@127.0.0.1:2\"]\nservice = \"m\"\n",
                "sentinel_password_file",
                Some("hunter2"),
            ),
            (
                "sentinels = [\"redis://vigil@127.0.0.1:2\"]\nservice = \"m\"\n",
                "sentinel_username",
                None,
            ),
            (
                "sentinels = [\"rediss://127.0.0.1:2/#insecure\"]\nservice = \"m\"\n",
                "fragment",
                None,
            ),
        ] {
            let c = Config::from_toml(&format!("[[region]]\nname = \"a\"\n{region}{ISSUER}"))
                .expect("parse");
            let e = c.validate().expect_err(key).to_string();
            assert!(e.contains(key), "{e}");
            if let Some(secret) = secret {
                assert!(!e.contains(secret), "{e}");
            }
        }
        let c = Config::from_toml(&format!(
            "[[region]]\nname = \"a\"\n{SENTINELS}sentinel_password_file = \"p\"\n{ISSUER}"
        ))
        .expect("parse");
        c.validate().expect("valid");
    }

    const HSMS: &str = "[[hsm]]\nname = \"h1\"\nmodule = \"/m.so\"\ntoken_label = \"t\"\nkey_label = \"k\"\npin_env = \"PIN\"\n\
                        [[hsm]]\nname = \"h2\"\nmodule = \"/m.so\"\nmodule_env = { A = \"b\" }\nslot = 3\nkey_id = \"0a:0b\"\npin_file = \"pin\"\n";
    const HSM_ISSUER: &str =
        "[[issuer]]\nname = \"a\"\ncertificate = \"ca.pem\"\nsigner = { hsm = [\"h1\", \"h2\"] }\n";

    #[test]
    fn hsm_pools_parse_and_validate() {
        let c = Config::from_toml(&format!(
            "[hsm_pool]\nprobe_interval = \"1s\"\nsign_timeout = \"500ms\"\n{HSMS}{HSM_ISSUER}"
        ))
        .expect("parse");
        c.validate().expect("valid");
        assert_eq!(c.hsms.len(), 2);
        assert_eq!(c.hsms[1].module_env.get("A").map(String::as_str), Some("b"));
        assert_eq!(c.hsms[0].sessions, limits::HSM_SESSIONS);
        assert_eq!(c.hsm_pool.sign_timeout, Duration::from_millis(500));
        let signer = c.issuers[0].signer.as_ref().expect("signer");
        assert_eq!(signer.hsm, ["h1", "h2"]);
        assert!(signer.danger_software_fallback.is_none());
        assert!(c.issuers[0].crl_signer.is_none());

        let c = Config::from_toml(&format!(
            "{HSMS}{HSM_ISSUER}crl_signer = {{ hsm = [\"h2\", \"h1\"] }}\n"
        ))
        .expect("parse");
        c.validate().expect("valid");
        let crl_signer = c.issuers[0].crl_signer.as_ref().expect("crl_signer");
        assert_eq!(crl_signer.hsm, ["h2", "h1"]);
        assert!(c.issuers[0].crl_key.is_none());
    }

    #[test]
    fn hsm_errors_name_the_key() {
        let check = |text: String, want: &str| {
            let e = Config::from_toml(&text)
                .and_then(|c| c.validate())
                .expect_err(want);
            assert!(e.to_string().contains(want), "{e} lacks {want:?}");
        };
        check(
            format!("{HSMS}[[issuer]]\nname = \"a\"\ncertificate = \"c\"\nresponder_key = \"k\"\nsigner = {{ hsm = [\"h1\"] }}\n"),
            "either responder_key or signer",
        );
        check(
            format!("{HSMS}[[issuer]]\nname = \"a\"\ncertificate = \"c\"\n"),
            "responder_key or signer is required",
        );
        check(
            format!("{HSMS}[[issuer]]\nname = \"a\"\ncertificate = \"c\"\nsigner = {{ hsm = [\"h9\"] }}\n"),
            "issuer[0].signer.hsm: no [[hsm]] is named \"h9\"",
        );
        check(
            format!(
                "{HSMS}[[issuer]]\nname = \"a\"\ncertificate = \"c\"\nsigner = {{ hsm = [] }}\n"
            ),
            "issuer[0].signer.hsm",
        );
        check(
            format!("{HSMS}{HSM_ISSUER}crl_key = \"ca.key\"\ncrl_signer = {{ hsm = [\"h2\"] }}\n"),
            "issuer[0] (a): set either crl_key or crl_signer, not both",
        );
        check(
            format!("{HSMS}{HSM_ISSUER}crl_signer = {{ hsm = [\"h9\"] }}\n"),
            "issuer[0].crl_signer.hsm: no [[hsm]] is named \"h9\"",
        );
        check(
            format!("{HSMS}{HSM_ISSUER}crl_signer = {{ hsm = [] }}\n"),
            "issuer[0].crl_signer.hsm: name at least one [[hsm]]",
        );
        check(
            format!("{HSMS}{HSM_ISSUER}crl_signer = {{ hsm = [\"h2\", \"h2\"] }}\n"),
            "issuer[0].crl_signer.hsm: \"h2\" is listed twice",
        );
        let one = |extra: &str| {
            format!(
                "[[hsm]]\nname = \"h1\"\nmodule = \"/m.so\"\n{extra}\n{}",
                ISSUER
            )
        };
        check(
            one("token_label = \"t\"\nslot = 1\nkey_label = \"k\"\npin_env = \"P\""),
            "hsm[0] (h1): set exactly one of token_label and slot",
        );
        check(
            one("token_label = \"t\"\npin_env = \"P\""),
            "hsm[0] (h1): set key_label, key_id, or both",
        );
        check(
            one("token_label = \"t\"\nkey_id = \"xyz\"\npin_env = \"P\""),
            "hsm[0] (h1).key_id",
        );
        check(
            one("token_label = \"t\"\nkey_label = \"k\"\npin_env = \"P\"\npin_file = \"f\""),
            "exactly one of pin_file and pin_env",
        );
        check(
            one("token_label = \"t\"\nkey_label = \"k\"\npin_env = \"P\"\nsessions = 0"),
            "hsm[0] (h1).sessions",
        );
        check(
            one("token_label = \"t\"\nkey_label = \"k\"\npin = \"1234\""),
            "unknown field `pin`",
        );
        check(
            format!("[hsm_pool]\nsign_timeout = \"0s\"\n{HSMS}{HSM_ISSUER}"),
            "hsm_pool.sign_timeout",
        );
        check(
            format!("[hsm_pool]\nreconnect_backoff_min = \"5s\"\nreconnect_backoff_max = \"1s\"\n{HSMS}{HSM_ISSUER}"),
            "hsm_pool.reconnect_backoff_max",
        );
    }

    #[test]
    fn hsm_paths_resolve_against_the_config_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("vigil.toml");
        std::fs::write(
            &path,
            format!("{HSMS}[[issuer]]\nname = \"a\"\ncertificate = \"ca.pem\"\nsigner = {{ hsm = [\"h2\"], danger_software_fallback = \"k.pem\" }}\n\
                     crl_signer = {{ hsm = [\"h1\"], danger_software_fallback = \"ca.key\" }}\n"),
        )
        .expect("write");
        let c = Config::load(Some(&path)).expect("load");
        assert_eq!(
            c.hsms[1].pin_file.as_deref(),
            Some(dir.path().join("pin").as_path())
        );
        assert_eq!(c.hsms[0].module, PathBuf::from("/m.so"));
        let fallback = c.issuers[0]
            .signer
            .as_ref()
            .and_then(|s| s.danger_software_fallback.clone());
        assert_eq!(fallback, Some(dir.path().join("k.pem")));
        let crl_fallback = c.issuers[0]
            .crl_signer
            .as_ref()
            .and_then(|s| s.danger_software_fallback.clone());
        assert_eq!(crl_fallback, Some(dir.path().join("ca.key")));
    }
}
