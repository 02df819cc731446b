//! CRLs in a region's Redis, the publisher lease, and fencing.
//!
//! Keys (one Redis per region; the same layout in each):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `vigil:crl:doc:{path}` | hash | `number`, `der`, `this_update` of the CRL at `/crl/{path}` |
//! | `vigil:crl:seq:{scope}` | string | highest CRLNumber stored for the scope (complete and delta CRLs share it, RFC 5280 §5.2.4) |
//! | `vigil:crl:lease` | string | `"{holder} {token}"`, with a TTL: the region's publisher lease |
//! | `vigil:crl:lease:token` | string | fencing-token counter: each new lease takes the larger of the counter + 1 and the Redis server's clock in ms |
//! | `vigil:crl:fence` | hash | region name → highest fencing token that stored a CRL here |
//!
//! Storing is one Lua script, so the checks and the write are atomic: a CRL is stored only if
//! its number exceeds the scope's sequence (an older CRL never replaces a newer one), its
//! fencing token is not below the highest seen from its region (a leader paused past its
//! lease cannot write after its successor has), in its own region the lease still names it,
//! and a delta CRL's base is the complete CRL stored here. A complete CRL also names the number
//! of the CRL it was checked against (it lists every entry of that one it may not drop,
//! `crl::select::dropped`): a region holding a newer CRL of the scope than that refuses it, so
//! two leaders (one lease per region) can never store a higher-numbered CRL with fewer entries
//! over one that has more. A fencing token never goes backwards, even when a region's Redis
//! loses its data (flushed, restarted empty, rolled back to an old RDB): the other regions
//! still hold the highest token they saw from it, and a counter starting again at 1 would be
//! fenced there forever; so a new lease's token is at least the Redis server's clock in
//! milliseconds. Numbers are compared as decimal strings (length, then bytes), since
//! Lua numbers are doubles.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{RedisResult, Script};

use crate::crl::CrlId;
use crate::limits::CRL_TRANSFER_FLOOR_BYTES_PER_SEC;

static STORE: LazyLock<Script> = LazyLock::new(|| Script::new(STORE_SCRIPT));
static LEASE: LazyLock<Script> = LazyLock::new(|| Script::new(LEASE_SCRIPT));

const STORE_SCRIPT: &str = r"
local function gt(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
if ARGV[5] ~= '' then
  if ARGV[6] ~= '' then
    local lease = redis.call('GET', KEYS[4])
    if lease ~= ARGV[6] then return {'not_leader', lease or ''} end
  end
  local seen = redis.call('HGET', KEYS[3], ARGV[4])
  if seen and gt(seen, ARGV[5]) then return {'fenced', seen} end
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
end
local seq = redis.call('GET', KEYS[2])
if seq and not gt(ARGV[1], seq) then return {'stale', seq} end
if ARGV[8] ~= '' then
  local cur = redis.call('HGET', KEYS[1], 'number')
  if cur and gt(cur, ARGV[8]) then return {'changed', cur} end
end
if ARGV[7] ~= '' then
  local full = redis.call('HGET', KEYS[5], 'number')
  if full ~= ARGV[7] then return {'base_mismatch', full or ''} end
end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'number', ARGV[1], 'der', ARGV[2], 'this_update', ARGV[3])
return {'stored', ARGV[1]}
";

const LEASE_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local sp = string.find(cur, ' ', 1, true)
  if sp and string.sub(cur, 1, sp - 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return string.sub(cur, sp + 1)
  end
  return false
end
local t = redis.call('INCR', KEYS[2])
local now = redis.call('TIME')
local floor = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if t < floor then
  t = floor
  redis.call('SET', KEYS[2], string.format('%.0f', t))
end
local token = string.format('%.0f', t)
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token, 'PX', ARGV[2])
return token
";

const LEASE_KEY: &str = "vigil:crl:lease";
const LEASE_TOKEN_KEY: &str = "vigil:crl:lease:token";
const FENCE_KEY: &str = "vigil:crl:fence";

fn doc_key(id: &CrlId) -> String {
    format!("vigil:crl:doc:{}", id.path())
}

fn seq_key(id: &CrlId) -> String {
    format!("vigil:crl:seq:{}", id.scope())
}

/// A publisher's right to store: the lease region, the fencing token, and (checked only in the
/// lease region) the lease value that must still be current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The region whose lease was taken.
    pub region: String,
    /// Its fencing token.
    pub token: u64,
    /// The lease value, `"{holder} {token}"`.
    pub lease_value: String,
}

/// What a store attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Stored.
    Stored,
    /// The scope already has this number or a higher one.
    Stale(String),
    /// A newer leader of the same region has stored here.
    Fenced(String),
    /// The lease region's lease names someone else.
    NotLeader,
    /// The delta's base is not the complete CRL stored here.
    BaseMismatch,
    /// The region holds a newer complete CRL of the scope than the one this CRL was checked
    /// against (another leader stored it): not stored; the next round checks against it.
    Changed(String),
}

impl StoreOutcome {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Stale(_) => "stale",
            Self::Fenced(_) => "fenced",
            Self::NotLeader => "not_leader",
            Self::BaseMismatch => "base_mismatch",
            Self::Changed(_) => "changed",
        }
    }
}

/// Why a command on a region's CRL store did not complete. Every variant names the region.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The region's link could not be set up from its configuration.
    #[error("region {region}: {source}")]
    Link {
        /// The region.
        region: String,
        /// Why.
        source: crate::feed::FeedError,
    },
    /// Connecting failed.
    #[error("region {region}: connecting: {source}")]
    Connect {
        /// The region.
        region: String,
        /// Why.
        source: crate::feed::FeedError,
    },
    /// Connecting did not finish within the timeout.
    #[error("region {region}: connecting timed out")]
    ConnectTimeout {
        /// The region.
        region: String,
    },
    /// Redis answered with an error, or the connection broke.
    #[error("region {region}: {source}")]
    Redis {
        /// The region.
        region: String,
        /// What Redis said.
        source: redis::RedisError,
    },
    /// The command did not finish within its timeout (grown with the bytes it moves).
    #[error("region {region}: timed out")]
    Timeout {
        /// The region.
        region: String,
    },
    /// The store script answered something it never returns.
    #[error("region {region}: unexpected reply {reply:?}")]
    UnexpectedReply {
        /// The region.
        region: String,
        /// The reply.
        reply: String,
    },
}

/// One region's Redis.
pub struct Region {
    /// Region name.
    pub name: String,
    // How to reach it (a server or a Sentinel group, TLS, credentials): shared with the feed.
    link: crate::feed::region::Region,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    timeout: Duration,
}

impl Region {
    /// A region reached directly at `url` (no credentials but the region's password variable,
    /// system TLS roots).
    pub fn new(name: &str, url: &str, timeout: Duration) -> Result<Self, StoreError> {
        Self::connect(name, &crate::config::RedisLink::server(name, url), timeout)
    }

    /// A region as configured: a server or a Sentinel group, with its credentials and TLS
    /// settings.
    pub fn from_config(
        cfg: &crate::config::RegionConfig,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        Self::connect(&cfg.name, &cfg.link, timeout)
    }

    fn connect(
        name: &str,
        link: &crate::config::RedisLink,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let opts = crate::feed::region::LinkOptions {
            connect_timeout: timeout,
            write_timeout: timeout,
            key_prefix: String::new(),
        };
        let link = crate::feed::region::Region::new(name, link, &opts).map_err(|source| {
            StoreError::Link {
                region: name.to_owned(),
                source,
            }
        })?;
        Ok(Region {
            name: name.to_owned(),
            link,
            conn: tokio::sync::Mutex::new(None),
            timeout,
        })
    }

    /// Runs `op` on a (re)connected connection within the timeout; any failure drops the
    /// connection so the next call reconnects.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.run_sized(0, op).await
    }

    /// [`Region::run`] for a command that moves `bytes` (a CRL stored or fetched): the timeout
    /// grows by the time those bytes take at [`CRL_TRANSFER_FLOOR_BYTES_PER_SEC`], so a CRL of
    /// a million entries (about 36 MB) is not cut off by a timeout sized for small commands
    /// and never stored, while a Redis that stopped answering is still given up on.
    async fn run_sized<T, F, Fut>(&self, bytes: usize, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let limit = self.timeout
            + Duration::from_secs_f64(bytes as f64 / CRL_TRANSFER_FLOOR_BYTES_PER_SEC as f64);
        let conn = {
            let mut guard = self.conn.lock().await;
            match guard.as_ref() {
                Some(c) => c.clone(),
                None => {
                    // No response timeout on the connection: every command runs under this
                    // function's own, which grows with what the command moves.
                    let c = tokio::time::timeout(self.timeout, self.link.connect(None))
                        .await
                        .map_err(|_| StoreError::ConnectTimeout {
                            region: self.name.clone(),
                        })?
                        .map_err(|source| StoreError::Connect {
                            region: self.name.clone(),
                            source,
                        })?;
                    *guard = Some(c.clone());
                    c
                }
            }
        };
        match tokio::time::timeout(limit, op(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                *self.conn.lock().await = None;
                Err(StoreError::Redis {
                    region: self.name.clone(),
                    source: e,
                })
            }
            Err(_) => {
                *self.conn.lock().await = None;
                Err(StoreError::Timeout {
                    region: self.name.clone(),
                })
            }
        }
    }

    /// Takes or renews the lease for `holder`; `Some(token)` while held.
    pub async fn lease(&self, holder: &str, ttl: Duration) -> Result<Option<u64>, StoreError> {
        let ttl_ms = ttl.as_millis() as u64;
        let holder = holder.to_owned();
        let token: Option<String> = self
            .run(|mut c| async move {
                LEASE
                    .key(LEASE_KEY)
                    .key(LEASE_TOKEN_KEY)
                    .arg(holder)
                    .arg(ttl_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(token.and_then(|t| t.parse().ok()))
    }

    /// Stores a CRL with compare-and-set on its number (and the fence, when given). A complete
    /// CRL passes `checked_against`: the number of the CRL of the scope it was checked to list
    /// every entry of (0: none), and is refused where a newer one is stored.
    #[allow(clippy::too_many_arguments)]
    pub async fn store(
        &self,
        id: &CrlId,
        der: bytes::Bytes,
        number: u64,
        this_update: i64,
        delta_base: Option<u64>,
        fence: Option<&Fence>,
        checked_against: Option<u64>,
    ) -> Result<StoreOutcome, StoreError> {
        let checked = checked_against.map(|n| n.to_string()).unwrap_or_default();
        let (fence_region, token, lease_value) = match fence {
            Some(f) => (
                f.region.clone(),
                f.token.to_string(),
                if f.region == self.name {
                    f.lease_value.clone()
                } else {
                    String::new()
                },
            ),
            None => (String::new(), String::new(), String::new()),
        };
        let doc = doc_key(id);
        let seq = seq_key(id);
        let full = doc_key(&id.full());
        let base = delta_base.map(|b| b.to_string()).unwrap_or_default();
        let (outcome, detail): (String, String) = self
            .run_sized(der.len(), |mut c| async move {
                STORE
                    .key(doc)
                    .key(seq)
                    .key(FENCE_KEY)
                    .key(LEASE_KEY)
                    .key(full)
                    .arg(number.to_string())
                    .arg(&der[..])
                    .arg(this_update)
                    .arg(fence_region)
                    .arg(token)
                    .arg(lease_value)
                    .arg(base)
                    .arg(checked)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(match outcome.as_str() {
            "stored" => StoreOutcome::Stored,
            "stale" => StoreOutcome::Stale(detail),
            "fenced" => StoreOutcome::Fenced(detail),
            "not_leader" => StoreOutcome::NotLeader,
            "base_mismatch" => StoreOutcome::BaseMismatch,
            "changed" => StoreOutcome::Changed(detail),
            other => {
                return Err(StoreError::UnexpectedReply {
                    region: self.name.clone(),
                    reply: other.to_owned(),
                });
            }
        })
    }

    /// The stored number of each CRL (one round trip).
    pub async fn numbers(&self, ids: &[CrlId]) -> Result<Vec<Option<u64>>, StoreError> {
        let keys: Vec<String> = ids.iter().map(doc_key).collect();
        let raw: Vec<Option<String>> = self
            .run(|mut c| async move {
                let mut p = redis::pipe();
                for k in &keys {
                    p.hget(k, "number");
                }
                p.query_async(&mut c).await
            })
            .await?;
        Ok(raw
            .into_iter()
            .map(|v| v.and_then(|s| s.parse().ok()))
            .collect())
    }

    /// The stored CRL of `id`: its number and DER.
    pub async fn fetch(&self, id: &CrlId) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let key = doc_key(id);
        // Its size first (one small command), so the fetch gets the time its size needs.
        let size: usize = {
            let key = key.clone();
            self.run(|mut c| async move {
                redis::cmd("HSTRLEN")
                    .arg(key)
                    .arg("der")
                    .query_async(&mut c)
                    .await
            })
            .await?
        };
        let (number, der): (Option<String>, Option<Vec<u8>>) = self
            .run_sized(size, |mut c| async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("number")
                    .arg("der")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(match (number.and_then(|n| n.parse().ok()), der) {
            (Some(n), Some(d)) => Some((n, d)),
            _ => None,
        })
    }
}
