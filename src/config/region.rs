//! `[[region]]`: each region's Redis, a single server or a Sentinel group, with its credentials
//! and TLS files. [`RedisLink`] is the connection settings the feed's connector takes; the CRL
//! store uses the same type.

use std::path::PathBuf;

use super::error::{ConfigError, invalid};
use super::{ENV_REDIS_PASSWORD_PREFIX, ENV_SENTINEL_PASSWORD_PREFIX, file, valid_name};

/// `[[region]]`: one region and its Redis.
#[derive(Debug, Clone)]
pub struct RegionConfig {
    /// Region name: 1-64 of `[A-Za-z0-9_-]`, unique.
    pub name: String,
    /// How to reach its Redis.
    pub link: RedisLink,
}

/// How to reach one Redis deployment: where it is, who vigil is, and the TLS files.
#[derive(Debug, Clone)]
pub struct RedisLink {
    /// A server, or a Sentinel group.
    pub endpoint: RedisEndpoint,
    /// ACL user name on the data servers.
    pub username: Option<String>,
    /// The data servers' password.
    pub password: SecretSource,
    /// CA certificate (PEM) to verify the servers with, instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for TLS client authentication.
    pub client_identity: Option<ClientIdentity>,
}

/// Where a Redis is.
#[derive(Debug, Clone)]
pub enum RedisEndpoint {
    /// One server: `redis://host:port[/db]`, `rediss://` or `unix://`; no password and no
    /// fragment in it.
    Server(String),
    /// A Sentinel-managed group.
    Sentinel(SentinelEndpoint),
}

/// `sentinels`, `service` and the Sentinels' own settings.
#[derive(Debug, Clone)]
pub struct SentinelEndpoint {
    /// Sentinel addresses (`redis://` or `rediss://`; no user, password or fragment).
    pub sentinels: Vec<String>,
    /// The master group name.
    pub service: String,
    /// Connect to the Sentinel-managed servers over TLS.
    pub server_tls: bool,
    /// Database number on the Sentinel-managed servers.
    pub db: i64,
    /// ACL user name on the Sentinels themselves.
    pub username: Option<String>,
    /// The Sentinels' own password.
    pub password: SecretSource,
}

/// A password: from a file (trailing newline ignored), else from an environment variable.
/// The file wins when both are set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSource {
    /// The file, when configured.
    pub file: Option<PathBuf>,
    /// The environment variable read when there is no file.
    pub env: String,
}

/// `client_certificate` and `client_key`, which go together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// Client certificate (PEM).
    pub certificate: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
}

impl RedisLink {
    /// A single server at `url` with no user, no TLS files, and the password (if any) from
    /// `VIGIL_REDIS_PASSWORD_<REGION>` of `region`.
    pub fn server(region: &str, url: &str) -> Self {
        RedisLink {
            endpoint: RedisEndpoint::Server(url.to_owned()),
            username: None,
            password: SecretSource {
                file: None,
                env: password_env(region),
            },
            ca_file: None,
            client_identity: None,
        }
    }

    /// The server URL, for a single-server region.
    pub fn server_url(&self) -> Option<&str> {
        match &self.endpoint {
            RedisEndpoint::Server(u) => Some(u),
            RedisEndpoint::Sentinel(_) => None,
        }
    }
}

/// The environment variable that may hold region `region`'s password.
pub fn password_env(region: &str) -> String {
    format!("{ENV_REDIS_PASSWORD_PREFIX}{}", env_suffix(region))
}

/// The environment variable that may hold the password of region `region`'s Sentinels.
pub fn sentinel_password_env(region: &str) -> String {
    format!("{ENV_SENTINEL_PASSWORD_PREFIX}{}", env_suffix(region))
}

/// A region name as it ends an environment variable: upper-cased, `-` as `_`.
fn env_suffix(region: &str) -> String {
    region.to_ascii_uppercase().replace('-', "_")
}

// === impl conversion ===

pub(super) fn regions(raw: Vec<file::Region>) -> Result<Vec<RegionConfig>, ConfigError> {
    let mut out: Vec<RegionConfig> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        if !valid_name(&r.name) {
            return invalid(
                format!("region[{i}].name"),
                format!("{:?} must be 1-64 of [A-Za-z0-9_-]", r.name),
            );
        }
        if out.iter().any(|o| o.name == r.name) {
            return invalid(
                format!("region[{i}].name"),
                format!("{:?} is used twice", r.name),
            );
        }
        out.push(region(i, r)?);
    }
    Ok(out)
}

fn region(i: usize, r: file::Region) -> Result<RegionConfig, ConfigError> {
    let endpoint = match (r.redis, r.sentinels.is_empty(), r.service) {
        (Some(u), true, None) => {
            let key = format!("region[{i}].redis");
            if url_has_password(&u) {
                return invalid(
                    key,
                    format!(
                        "must not hold a password (use password_file or {})",
                        password_env(&r.name)
                    ),
                );
            }
            if u.contains('#') {
                return invalid(
                    key,
                    "no URL fragment (#insecure turns off certificate checks)",
                );
            }
            if let Err(e) = redis::Client::open(u.as_str()) {
                return invalid(key, format!("{u:?}: {e}"));
            }
            if r.sentinel_username.is_some() {
                return invalid(
                    format!("region[{i}].sentinel_username"),
                    "only with sentinels (the data server's user is username)",
                );
            }
            if r.sentinel_password_file.is_some() {
                return invalid(
                    format!("region[{i}].sentinel_password_file"),
                    "only with sentinels (the data server's password is password_file)",
                );
            }
            RedisEndpoint::Server(u)
        }
        (None, false, Some(service)) => {
            let key = format!("region[{i}].sentinels");
            for s in &r.sentinels {
                if !(s.starts_with("redis://") || s.starts_with("rediss://")) {
                    return invalid(key, format!("{s:?} must start with redis:// or rediss://"));
                }
                // The Sentinel client takes only the address of each entry: a user or
                // database in it would be ignored without a word.
                if url_has_password(s) {
                    return invalid(
                        key,
                        format!(
                            "must not hold a password (use sentinel_password_file or {})",
                            sentinel_password_env(&r.name)
                        ),
                    );
                }
                if url_has_userinfo(s) {
                    return invalid(key, "no user in the URL (use sentinel_username)");
                }
                if s.contains('#') {
                    return invalid(key, "no URL fragment");
                }
            }
            RedisEndpoint::Sentinel(SentinelEndpoint {
                sentinels: r.sentinels,
                service,
                server_tls: r.sentinel_server_tls,
                db: r.db,
                username: r.sentinel_username,
                password: SecretSource {
                    file: r.sentinel_password_file,
                    env: sentinel_password_env(&r.name),
                },
            })
        }
        _ => {
            return invalid(
                format!("region[{i}]"),
                "set either redis, or sentinels and service",
            );
        }
    };
    let client_identity = match (r.client_certificate, r.client_key) {
        (Some(certificate), Some(key)) => Some(ClientIdentity { certificate, key }),
        (None, None) => None,
        _ => {
            return invalid(
                format!("region[{i}].client_key"),
                "client_certificate and client_key go together",
            );
        }
    };
    Ok(RegionConfig {
        link: RedisLink {
            endpoint,
            username: r.username,
            password: SecretSource {
                file: r.password_file,
                env: password_env(&r.name),
            },
            ca_file: r.ca_file,
            client_identity,
        },
        name: r.name,
    })
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

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::super::tests::ISSUER;
    use super::*;

    #[test]
    fn regions_are_a_server_or_a_sentinel_group() {
        let c = Config::parse(&format!(
            "[[region]]\nname = \"a\"\nredis = \"redis://127.0.0.1:1/\"\n[[region]]\nname = \"b\"\nsentinels = [\"redis://127.0.0.1:2\"]\nservice = \"m\"\n{ISSUER}"
        ))
        .expect("valid");
        assert_eq!(c.regions[0].link.server_url(), Some("redis://127.0.0.1:1/"));
        assert_eq!(c.regions[1].link.password.env, "VIGIL_REDIS_PASSWORD_B");
        let RedisEndpoint::Sentinel(s) = &c.regions[1].link.endpoint else {
            panic!("a sentinel group");
        };
        assert_eq!(s.service, "m");
        let e = Config::parse(&format!(
            "[[region]]\nname = \"a\"\nredis = \"redis://u:secret@x/\"\n{ISSUER}"
        ))
        .expect_err("password in url")
        .to_string();
        assert!(
            e.contains("region[0].redis") && !e.contains("secret"),
            "{e}"
        );
        let e = Config::parse(&format!(
            "[[region]]\nname = \"a\"\nredis = \"rediss://x/#insecure\"\n{ISSUER}"
        ))
        .expect_err("fragment");
        assert!(e.to_string().contains("fragment"), "{e}");
        let e = Config::parse(&format!("[[region]]\nname = \"a\"\n{ISSUER}")).expect_err("neither");
        assert!(e.to_string().contains("either redis"), "{e}");
        let e = Config::parse(&format!(
            "[[region]]\nname = \"a\"\nredis = \"redis://x/\"\nclient_key = \"k\"\n{ISSUER}"
        ))
        .expect_err("half a client identity");
        assert!(e.to_string().contains("region[0].client_key"), "{e}");
        let e = Config::parse("[[region]]\nname = \"a\"\nurll = \"x\"").expect_err("unknown key");
        assert!(e.to_string().contains("urll"), "{e}");
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
        let RedisEndpoint::Sentinel(s) = &r.link.endpoint else {
            panic!("a sentinel group");
        };
        assert_eq!(s.username.as_deref(), Some("vigil"));
        assert_eq!(
            s.password,
            SecretSource {
                file: Some(dir.path().join("sentinel-pass")),
                env: "VIGIL_SENTINEL_PASSWORD_US_EAST".into()
            }
        );
        assert_eq!(r.link.password.env, "VIGIL_REDIS_PASSWORD_US_EAST");

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
            let e = Config::parse(&format!("[[region]]\nname = \"a\"\n{region}{ISSUER}"))
                .expect_err(key)
                .to_string();
            assert!(e.contains(key), "{e}");
            if let Some(secret) = secret {
                assert!(!e.contains(secret), "{e}");
            }
        }
        Config::parse(&format!(
            "[[region]]\nname = \"a\"\n{SENTINELS}sentinel_password_file = \"p\"\n{ISSUER}"
        ))
        .expect("valid");
    }
}
