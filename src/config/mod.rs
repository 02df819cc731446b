//! Configuration: one TOML file plus `VIGIL_*` environment overrides, parsed into the typed,
//! validated [`Config`] before any port binds (STYLE.md, linkerd2-proxy: typed config before
//! binding). Every key is listed in `docs/CONFIG.md`.
//!
//! Two stages: [`file`] is the TOML as written (serde, private to this module); [`Config::parse`]
//! and [`Config::load`] check every rule and turn it into the typed form the rest of vigil uses,
//! where each "exactly one of" pair of keys is an enum ([`KeySource`], [`TokenSelector`],
//! [`KeySelector`], [`PinSource`], [`RedisEndpoint`]), keys that go together are one value
//! ([`AdminTls`], [`ClientIdentity`]), durations are [`Duration`]s, hex is bytes and defaults
//! that depend on other keys (journal, checkpoint, audit log, quorum, per-issuer CRL settings)
//! are filled in. Errors are [`ConfigError`]s naming the key. This module imports no signer,
//! feed or demo code: the demo PKI is made by [`crate::demo`] at the paths [`embedded`] names.

use std::path::{Path, PathBuf};

mod admin;
mod crl;
pub mod embedded;
mod env;
mod error;
mod feed;
mod file;
mod hsm;
mod issuer;
mod region;
mod server;

pub use admin::{AdminConfig, AdminTls};
pub use crl::{CrlConfig, ShardByConfig};
pub use error::ConfigError;
pub use feed::{
    DEFAULT_FEED_CONNECT_TIMEOUT, DEFAULT_FEED_KEY_PREFIX, DEFAULT_FEED_WRITE_TIMEOUT, FeedConfig,
};
pub use hsm::{HsmConfig, HsmPoolConfig, HsmRsaMechanism, KeySelector, PinSource, TokenSelector};
pub use issuer::{IssuerConfig, IssuerSignerConfig, KeySource};
pub use region::{
    ClientIdentity, RedisEndpoint, RedisLink, RegionConfig, SecretSource, SentinelEndpoint,
    password_env, sentinel_password_env,
};
pub use server::{
    LimitsConfig, LogConfig, LogFormat, NoncePolicy, OcspConfig, ResponderIdKind, ServerConfig,
    StatusConfig,
};

use error::invalid;

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

/// The whole configuration, checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory for the journal, checkpoints and (embedded default) the demo PKI.
    pub data_dir: PathBuf,
    /// HTTP listener.
    pub server: ServerConfig,
    /// Bounds on client input.
    pub limits: LimitsConfig,
    /// Response policy.
    pub ocsp: OcspConfig,
    /// Status sources.
    pub status: StatusConfig,
    /// Logging.
    pub log: LogConfig,
    /// The multi-region revocation feed on Redis Streams; absent: the local journal is the feed.
    pub feed: Option<FeedConfig>,
    /// The authenticated admin API; absent: no admin listener.
    pub admin: Option<AdminConfig>,
    /// Issuers answered for (at least one).
    pub issuers: Vec<IssuerConfig>,
    /// CRL publishing and serving (`[crl]` as written; each issuer's merged settings are in
    /// [`IssuerConfig::crl`]).
    pub crl: CrlConfig,
    /// Regions and their Redis (`[[region]]`); empty: single node on local files.
    pub regions: Vec<RegionConfig>,
    /// PKCS#11 keys (`[[hsm]]`), named by `issuer.signer.hsm`.
    pub hsms: Vec<HsmConfig>,
    /// How HSM pools probe, fail over and reconnect.
    pub hsm_pool: HsmPoolConfig,
    /// True when no file was given: the demo PKI in `data_dir` is used (and made if missing).
    pub embedded: bool,
}

impl Config {
    /// Loads from `path` (or `$VIGIL_CONFIG`), or the embedded default when neither is given;
    /// applies environment overrides, resolves relative paths against the file's directory,
    /// and checks everything.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env_path = std::env::var_os(ENV_CONFIG).map(PathBuf::from);
        let path = path.map(Path::to_path_buf).or(env_path);
        let get = |k: &str| std::env::var(k).ok();
        match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?;
                let mut f: file::File = toml::from_str(&text)?;
                f.resolve_paths(p.parent().unwrap_or(Path::new(".")));
                Self::from_file(f, false, get)
            }
            None => Self::from_file(empty_file()?, true, get),
        }
    }

    /// Parses and checks TOML text (no environment, no path resolution).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Self::parse_with_env(text, |_| None)
    }

    /// [`Config::parse`] with `VIGIL_*` overrides read through `get`.
    pub fn parse_with_env(
        text: &str,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::from_file(toml::from_str(text)?, false, get)
    }

    /// The configuration of `vigil serve` with no file and no environment: the demo PKI in
    /// `./vigil-data` and every default.
    pub fn embedded_default() -> Config {
        Self::embedded_at(Path::new(DEFAULT_DATA_DIR))
    }

    /// The embedded default with its data directory (demo PKI, journal, checkpoint) at
    /// `data_dir`: benches and tests on a temporary directory.
    pub fn embedded_at(data_dir: &Path) -> Config {
        // The empty file holds every default and the demo issuer meets every rule; a failure
        // here is a bug in the defaults, which the tests of this module catch.
        #[allow(clippy::expect_used)]
        empty_file()
            .and_then(|mut f| {
                f.data_dir = data_dir.to_path_buf();
                Self::from_file(f, true, |_| None)
            })
            .expect("the embedded default is valid")
    }

    fn from_file(
        mut f: file::File,
        embedded: bool,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        env::apply(&mut f, get)?;
        let data_dir = f.data_dir;
        let server = server::server(f.server)?;
        let limits = server::limits(f.limits)?;
        let ocsp = server::ocsp(f.ocsp)?;
        let status = server::status(f.status, &data_dir)?;
        let log = server::log(f.log);
        let n_regions = f.regions.len();
        let feed = f
            .feed
            .map(|x| feed::feed(x, n_regions, &data_dir))
            .transpose()?;
        let admin = f.admin.map(|a| admin::admin(a, &data_dir)).transpose()?;
        let global = crl::global(f.crl);
        let hsms = hsm::hsms(f.hsms)?;
        let issuers = if embedded {
            vec![embedded::demo_issuer(&data_dir, &global)]
        } else {
            issuer::issuers(f.issuers, &global, &hsms)?
        };
        let hsm_pool = hsm::pool(f.hsm_pool)?;
        let regions = region::regions(f.regions)?;
        let names: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
        crl::settings("crl", &global, &names)?;
        for (i, iss) in issuers.iter().enumerate() {
            crl::settings(&format!("issuer[{i}].crl"), &iss.crl, &names)?;
        }
        Ok(Config {
            data_dir,
            server,
            limits,
            ocsp,
            status,
            log,
            feed,
            admin,
            issuers,
            crl: global,
            regions,
            hsms,
            hsm_pool,
            embedded,
        })
    }

    /// The CRL settings of the issuer named `issuer`: `[crl]` with the issuer's own
    /// `crl = {...}` keys over it (`[crl]` alone for an unknown name).
    pub fn crl_of(&self, issuer: &str) -> CrlConfig {
        self.issuers
            .iter()
            .find(|i| i.name == issuer)
            .map_or_else(|| self.crl.clone(), |i| i.crl.clone())
    }

    /// Whether the issuer named `issuer` allows holds (`allow_hold`); false for an unknown name.
    pub fn allows_holds(&self, issuer: &str) -> bool {
        self.issuers
            .iter()
            .any(|i| i.name == issuer && i.allow_hold)
    }

    /// The journal path.
    pub fn journal_path(&self) -> PathBuf {
        self.status.journal.clone()
    }

    /// The checkpoint path (feed mode; `<data_dir>/checkpoint.vcp` without a feed).
    pub fn checkpoint_path(&self) -> PathBuf {
        self.feed.as_ref().map_or_else(
            || self.data_dir.join("checkpoint.vcp"),
            |f| f.checkpoint.clone(),
        )
    }

    /// The admin audit log path (`<data_dir>/audit.log` without an admin API).
    pub fn audit_log_path(&self) -> PathBuf {
        self.admin
            .as_ref()
            .map_or_else(|| self.data_dir.join("audit.log"), |a| a.audit_log.clone())
    }

    /// The region whose Redis holds this node's publisher lease.
    pub fn lease_region(&self) -> Option<&RegionConfig> {
        match &self.crl.region {
            Some(r) => self.regions.iter().find(|x| &x.name == r),
            None => self.regions.first(),
        }
    }

    /// Refuses two issuers whose CA certificates hold the same key (`keys`: each issuer's
    /// subjectPublicKey, in `[[issuer]]` order). A CertID names its issuer by the key hash (and
    /// the name hash), and the status view keys each issuer by its key: two issuers with one
    /// key would share one table and one of them would never be matched. Checked once the
    /// certificates are read, before any signer connects (`vigil check-config` and start-up).
    pub fn validate_issuer_keys(&self, keys: &[Vec<u8>]) -> Result<(), ConfigError> {
        for (i, key) in keys.iter().enumerate() {
            if let Some(j) = keys[..i].iter().position(|k| k == key) {
                return invalid(
                    format!("issuer[{i}] ({})", self.issuers[i].name),
                    format!(
                        "its CA certificate has the same key as issuer[{j}] ({}); \
                         a CertID names an issuer by its key, so configure each CA key once",
                        self.issuers[j].name
                    ),
                );
            }
        }
        Ok(())
    }
}

/// The file form of an empty file: every default.
fn empty_file() -> Result<file::File, ConfigError> {
    Ok(toml::from_str("")?)
}

/// 1-64 of `[A-Za-z0-9_-]`: issuer, HSM and region names.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One issuer with a software key, for the section tests.
    pub(crate) const ISSUER: &str =
        "[[issuer]]\nname = \"a\"\ncertificate = \"ca.pem\"\nresponder_key = \"k.pem\"\n";

    #[test]
    fn the_embedded_default_is_the_demo_issuer() {
        let c = Config::embedded_default();
        assert!(c.embedded);
        assert_eq!(c.issuers.len(), 1);
        let demo = &c.issuers[0];
        assert_eq!(demo.name, embedded::DEMO_ISSUER);
        assert_eq!(
            demo.ocsp_key,
            KeySource::File(Path::new(DEFAULT_DATA_DIR).join("responder.key"))
        );
        assert_eq!(
            demo.crl_key,
            Some(KeySource::File(Path::new(DEFAULT_DATA_DIR).join("ca.key")))
        );
        assert_eq!(
            c.journal_path(),
            Path::new(DEFAULT_DATA_DIR).join("journal.vj")
        );
        let dir = Path::new("/tmp/vigil-demo");
        let c = Config::embedded_at(dir);
        assert_eq!(c.data_dir, dir);
        assert_eq!(c.journal_path(), dir.join("journal.vj"));
        assert_eq!(c.issuers[0].certificate, dir.join("ca.pem"));
    }

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("vigil.toml");
        std::fs::write(
            &path,
            format!("[admin]\nlisten = \"127.0.0.1:0\"\n{ISSUER}"),
        )
        .expect("write");
        let c = Config::load(Some(&path)).expect("load");
        assert_eq!(c.issuers[0].certificate, dir.path().join("ca.pem"));
        assert_eq!(
            c.issuers[0].ocsp_key.file(),
            Some(dir.path().join("k.pem").as_path())
        );
        assert_eq!(c.data_dir, dir.path().join(DEFAULT_DATA_DIR));
        assert_eq!(
            c.audit_log_path(),
            dir.path().join(DEFAULT_DATA_DIR).join("audit.log")
        );
        let e = Config::load(Some(&dir.path().join("missing.toml"))).expect_err("no file");
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    }

    #[test]
    fn two_issuers_with_one_key_are_refused() {
        let c = Config::parse(&format!(
            "{ISSUER}[[issuer]]\nname = \"b\"\ncertificate = \"b.pem\"\nresponder_key = \"k.pem\"\n"
        ))
        .expect("valid");
        c.validate_issuer_keys(&[vec![1], vec![2]])
            .expect("distinct");
        let e = c
            .validate_issuer_keys(&[vec![1], vec![1]])
            .expect_err("same key");
        assert_eq!(e.key(), Some("issuer[1] (b)"));
    }
}
