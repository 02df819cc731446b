//! One region's Redis: how to reach it (a single server or a Sentinel-managed group, plain or
//! TLS, with credentials from a file or the environment, for the data servers and for the
//! Sentinels themselves) and a shared connection for writes.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, TlsCertificates};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

use super::{FeedError, Keys, scripts};
use crate::config::{Config, FeedConfig, RedisEndpoint, RedisLink};

/// How to talk to a region's Redis, apart from where it is.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// Time to connect (or to ask the Sentinels).
    pub connect_timeout: Duration,
    /// Time a write may take.
    pub write_timeout: Duration,
    /// Prefix of the feed's keys.
    pub key_prefix: String,
}

impl LinkOptions {
    /// The feed's options.
    pub fn feed(f: &FeedConfig) -> Self {
        LinkOptions {
            connect_timeout: f.connect_timeout,
            write_timeout: f.write_timeout,
            key_prefix: f.key_prefix.clone(),
        }
    }
}

/// A region: its name, how to connect, and a cached connection for writes.
pub struct Region {
    /// Region name.
    pub name: String,
    connector: Connector,
    writer: Mutex<Option<MultiplexedConnection>>,
    connect_timeout: Duration,
    write_timeout: Duration,
    /// Key names.
    pub keys: Keys,
}

enum Connector {
    Direct(Client),
    Sentinel {
        // The Sentinel client caches its connections to the Sentinels and needs `&mut`.
        client: Mutex<SentinelClient>,
        // The first Sentinel with the Sentinels' credentials: asked, after a refusal, whether
        // it was the Sentinels that refused (the client does not say).
        // Boxed: the enum would otherwise be twice the size of `Direct`.
        probe: Box<Client>,
        // Named when the Sentinels refuse vigil.
        password_env: String,
    },
}

/// Reads a secret file, without its trailing newline. The error names the file, never the
/// content.
pub fn read_secret(path: &std::path::Path) -> Result<String, FeedError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| FeedError::Setup(format!("reading {}: {e}", path.display())))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// A password from its file, else from the environment variable `var`: the file wins when
/// both are set (as for every secret of a `[[region]]`). Kept as a [`SecretString`] so that it
/// never shows in `Debug` output; it is exposed only to hand it to the Redis client.
fn read_password(
    file: Option<&std::path::Path>,
    var: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<SecretString>, FeedError> {
    Ok(match file {
        Some(p) => Some(read_secret(p)?.into()),
        None => env(var).map(SecretString::from),
    })
}

/// Whether Redis refused vigil's credentials (a wrong password or user, none given, or a user
/// without the command).
fn is_refusal(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

/// Whether the Sentinels themselves refuse vigil's credentials for them (as opposed to the data
/// server refusing its own).
async fn sentinel_refuses(probe: &Client, config: &AsyncConnectionConfig) -> bool {
    match probe
        .get_multiplexed_async_connection_with_config(config)
        .await
    {
        Ok(mut c) => redis::cmd("PING")
            .query_async::<()>(&mut c)
            .await
            .is_err_and(|e| is_refusal(&e)),
        Err(e) => is_refusal(&e),
    }
}

fn read_file(path: &std::path::Path) -> Result<Vec<u8>, FeedError> {
    std::fs::read(path).map_err(|e| FeedError::Setup(format!("reading {}: {e}", path.display())))
}

impl Region {
    /// Builds the client of region `name` reached through `link`; reads its password and
    /// certificates. Does not connect.
    pub fn new(name: &str, link: &RedisLink, opts: &LinkOptions) -> Result<Self, FeedError> {
        Self::with_env(name, link, opts, |k| std::env::var(k).ok())
    }

    /// [`Region::new`] with the environment read through `env`.
    pub fn with_env(
        name: &str,
        link: &RedisLink,
        opts: &LinkOptions,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, FeedError> {
        let setup = |what: &str, e: redis::RedisError| {
            FeedError::Setup(format!("region {name:?}: {what}: {e}"))
        };
        let password = read_password(link.password.file.as_deref(), &link.password.env, &env)?;
        let certs = if link.ca_file.is_some() || link.client_identity.is_some() {
            Some(TlsCertificates {
                client_tls: match &link.client_identity {
                    Some(id) => Some(redis::ClientTlsConfig {
                        client_cert: read_file(&id.certificate)?,
                        client_key: read_file(&id.key)?,
                    }),
                    None => None,
                },
                root_cert: link.ca_file.as_deref().map(read_file).transpose()?,
            })
        } else {
            None
        };
        let connector = match &link.endpoint {
            RedisEndpoint::Server(url) => {
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| setup("url", e))?;
                let mut redis = info.redis_settings().clone();
                if let Some(u) = &link.username {
                    redis = redis.set_username(u);
                }
                if let Some(p) = &password {
                    redis = redis.set_password(p.expose_secret());
                }
                let info = info.set_redis_settings(redis);
                let client = match certs {
                    Some(c) => Client::build_with_tls(info, c),
                    None => Client::open(info),
                }
                .map_err(|e| setup("url", e))?;
                Connector::Direct(client)
            }
            RedisEndpoint::Sentinel(sg) => {
                let infos = sg
                    .sentinels
                    .iter()
                    .map(|s| {
                        s.as_str()
                            .into_connection_info()
                            .map_err(|e| setup("sentinels", e))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let addrs = infos.iter().map(|i| i.addr().clone()).collect::<Vec<_>>();
                // `ca_file` and the client certificate apply to the Sentinels too when they are
                // reached over TLS (`rediss://`); the client refuses certificates for plain ones.
                let sentinel_certs = certs
                    .clone()
                    .filter(|_| sg.sentinels.iter().all(|s| s.starts_with("rediss://")));
                let service = sg.service.clone();
                let mut b = SentinelClientBuilder::new(addrs, service, SentinelServerType::Master)
                    .map_err(|e| setup("sentinels", e))?
                    .set_client_to_redis_db(sg.db);
                if let Some(u) = &link.username {
                    b = b.set_client_to_redis_username(u);
                }
                if let Some(p) = &password {
                    b = b.set_client_to_redis_password(p.expose_secret());
                }
                // The Sentinels' own credentials (their `requirepass` or ACL user), apart from the
                // data servers'.
                if let Some(u) = &sg.username {
                    b = b.set_client_to_sentinel_username(u);
                }
                let sentinel_password =
                    read_password(sg.password.file.as_deref(), &sg.password.env, &env)?;
                if let Some(p) = &sentinel_password {
                    b = b.set_client_to_sentinel_password(p.expose_secret());
                }
                let probe = {
                    let first = infos.into_iter().next().ok_or_else(|| {
                        FeedError::Setup(format!("region {name:?}: no sentinels"))
                    })?;
                    let mut redis = first.redis_settings().clone();
                    if let Some(u) = &sg.username {
                        redis = redis.set_username(u);
                    }
                    if let Some(p) = &sentinel_password {
                        redis = redis.set_password(p.expose_secret());
                    }
                    let info = first.set_redis_settings(redis);
                    Box::new(
                        match sentinel_certs.clone() {
                            Some(c) => Client::build_with_tls(info, c),
                            None => Client::open(info),
                        }
                        .map_err(|e| setup("sentinels", e))?,
                    )
                };
                if sg.server_tls {
                    b = b.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
                }
                if let Some(c) = certs {
                    b = b.set_client_to_redis_certificates(c);
                }
                if let Some(c) = sentinel_certs {
                    b = b.set_client_to_sentinel_certificates(c);
                }
                Connector::Sentinel {
                    client: Mutex::new(b.build().map_err(|e| setup("sentinels", e))?),
                    probe,
                    password_env: sg.password.env.clone(),
                }
            }
        };
        Ok(Region {
            name: name.to_owned(),
            connector,
            writer: Mutex::new(None),
            connect_timeout: opts.connect_timeout,
            write_timeout: opts.write_timeout,
            keys: Keys::new(&opts.key_prefix),
        })
    }

    /// Opens a new connection whose commands time out after `response_timeout` (None: never),
    /// and loads the scripts.
    pub async fn connect(
        &self,
        response_timeout: Option<Duration>,
    ) -> Result<MultiplexedConnection, FeedError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(response_timeout);
        let attempt = async {
            let mut conn = match &self.connector {
                Connector::Direct(c) => {
                    c.get_multiplexed_async_connection_with_config(&config)
                        .await?
                }
                Connector::Sentinel {
                    client,
                    probe,
                    password_env,
                } => {
                    let found = client
                        .lock()
                        .await
                        .get_async_connection_with_config(&config)
                        .await;
                    match found {
                        Ok(c) => c,
                        Err(e) if is_refusal(&e) && sentinel_refuses(probe, &config).await => {
                            return Err(FeedError::SentinelRefused {
                                password_env: password_env.clone(),
                                source: e,
                            });
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            for s in scripts::all() {
                s.load_async(&mut conn).await?;
            }
            Ok::<_, FeedError>(conn)
        };
        // Sentinel discovery may try several addresses: bound the whole attempt.
        let limit = self.connect_timeout * 3 + self.write_timeout;
        match tokio::time::timeout(limit, attempt).await {
            Ok(r) => r,
            Err(_) => Err(FeedError::Timeout(limit)),
        }
    }

    /// The shared write connection, connecting if there is none.
    pub async fn writer(&self) -> Result<MultiplexedConnection, FeedError> {
        let mut slot = self.writer.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let c = self.connect(Some(self.write_timeout)).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Forgets the shared write connection after an error, so the next use reconnects.
    pub async fn reset_writer(&self) {
        *self.writer.lock().await = None;
    }

    /// The record this region's snapshot holds for one certificate.
    pub async fn snapshot_record(
        &self,
        issuer: &crate::status::IssuerId,
        serial: &crate::status::Serial,
    ) -> Result<Option<crate::status::CertRecord>, FeedError> {
        let mut c = self.writer().await?;
        let v: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(self.keys.snapshot(issuer))
            .arg(serial.as_der_content())
            .query_async(&mut c)
            .await?;
        match v {
            None => Ok(None),
            Some(b) => crate::status::CertRecord::from_bytes(&b)
                .map(Some)
                .ok_or_else(|| FeedError::Protocol("snapshot record is malformed".into())),
        }
    }

    /// Certificates in this region's snapshot of one issuer.
    pub async fn snapshot_len(&self, issuer: &crate::status::IssuerId) -> Result<u64, FeedError> {
        let mut c = self.writer().await?;
        Ok(redis::cmd("HLEN")
            .arg(self.keys.snapshot(issuer))
            .query_async(&mut c)
            .await?)
    }

    /// Time a write may take.
    pub fn write_timeout(&self) -> Duration {
        self.write_timeout
    }
}

/// Every configured `[[region]]`, with the feed's options (`[feed]` defaults without one).
pub fn regions(cfg: &Config) -> Result<Vec<std::sync::Arc<Region>>, FeedError> {
    let opts = match &cfg.feed {
        Some(f) => LinkOptions::feed(f),
        None => LinkOptions {
            connect_timeout: crate::config::DEFAULT_FEED_CONNECT_TIMEOUT,
            write_timeout: crate::config::DEFAULT_FEED_WRITE_TIMEOUT,
            key_prefix: crate::config::DEFAULT_FEED_KEY_PREFIX.into(),
        },
    };
    cfg.regions
        .iter()
        .map(|r| Region::new(&r.name, &r.link, &opts).map(std::sync::Arc::new))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_wins_over_the_environment_and_debug_hides_the_password() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("pass");
        std::fs::write(&file, "from-file\n").expect("write");
        let env = |k: &str| (k == "VIGIL_SENTINEL_PASSWORD_A").then(|| "from-env".to_owned());
        let from_file = read_password(Some(&file), "VIGIL_SENTINEL_PASSWORD_A", &env)
            .expect("read")
            .expect("set");
        assert_eq!(from_file.expose_secret(), "from-file");
        assert!(!format!("{from_file:?}").contains("from-file"));
        let from_env = read_password(None, "VIGIL_SENTINEL_PASSWORD_A", &env)
            .expect("read")
            .expect("set");
        assert_eq!(from_env.expose_secret(), "from-env");
        assert!(
            read_password(None, "VIGIL_SENTINEL_PASSWORD_B", &env)
                .expect("read")
                .is_none()
        );
        let e = read_password(Some(&dir.path().join("missing")), "X", &env).expect_err("missing");
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
