//! Reading the feed: one consumer task per region, tailing its stream into the view.
//!
//! A session connects, reads the region's epoch, and resumes from the cursor when the cursor
//! belongs to that epoch and the stream was not trimmed past it. Otherwise it bootstraps: takes
//! the stream's last id *first*, then scans every issuer's snapshot (`HSCAN`) into the view, then
//! tails from that id, so an event written during the scan is read from the stream even if the
//! scan missed it. Sessions end on any error; the task reconnects after a capped exponential
//! backoff with jitter.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Value;

use super::health::{FeedHealth, RegionHealth};
use super::region::Region;
use super::{scripts, value_bytes, value_str, Cursor, FeedError, StreamId};
use crate::clock::unix_now_ms;
use crate::http::Readiness;
use crate::limits::{FEED_READ_COUNT, FEED_SCAN_COUNT};
use crate::responder::Responder;
use crate::status::view::Applied;
use crate::status::{CertRecord, CertStatus, Event, EventKind, IssuerId, Serial, StatusView};

/// How long one `XREAD BLOCK` waits: short enough that a dead connection is noticed quickly,
/// long enough that an idle replica costs Redis one call per second per region.
pub const BLOCK: Duration = Duration::from_secs(1);

/// What every consumer of a replica shares.
pub struct FeedState {
    /// The status view.
    pub view: Arc<StatusView>,
    /// Evicts cached responses of changed certificates; None outside `serve`.
    pub responder: Option<Arc<Responder>>,
    /// Freshness per region.
    pub health: Arc<FeedHealth>,
    /// Readiness: set once the view holds a complete copy of some region.
    pub readiness: Option<Arc<Readiness>>,
    /// Told when a revocation changed the view (the CRL publisher waits on it).
    pub revoked: std::sync::OnceLock<Arc<tokio::sync::Notify>>,
    cursors: Mutex<HashMap<String, Cursor>>,
}

impl FeedState {
    /// Shared state starting from `cursors` (from a checkpoint, or empty).
    pub fn new(
        view: Arc<StatusView>,
        responder: Option<Arc<Responder>>,
        health: Arc<FeedHealth>,
        readiness: Option<Arc<Readiness>>,
        cursors: HashMap<String, Cursor>,
    ) -> Self {
        FeedState {
            view,
            responder,
            health,
            readiness,
            revoked: std::sync::OnceLock::new(),
            cursors: Mutex::new(cursors),
        }
    }

    /// The cursor of `region`.
    pub fn cursor(&self, region: &str) -> Option<Cursor> {
        self.cursors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(region)
            .cloned()
    }

    /// Every cursor (for the checkpoint).
    pub fn cursors(&self) -> HashMap<String, Cursor> {
        self.cursors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_cursor(&self, region: &str, cursor: Cursor) {
        self.cursors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(region.to_owned(), cursor);
    }

    fn notify_revoked(&self) {
        if let Some(n) = self.revoked.get() {
            n.notify_one();
        }
    }

    async fn evict(&self, issuer: IssuerId, serial: &Serial) {
        if let Some(r) = &self.responder {
            r.evict(issuer, serial).await;
        }
    }
}

/// Capped exponential backoff with jitter: each delay is drawn from `[d/2, d]`, `d` doubling
/// from `min` up to `max`.
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The next delay.
    pub fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = d / 2;
        half + half.mul_f64(jitter())
    }

    /// Back to `min` after a healthy session.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A uniform number in `[0, 1)`.
fn jitter() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Random hex text (epochs, lease owners).
pub fn random_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    // On failure, the time still makes a usable (if predictable) id.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        b[..8].copy_from_slice(&unix_now_ms().to_be_bytes());
    }
    crate::status::hex(&b)
}

/// Runs the consumer of one region forever.
pub async fn run(state: Arc<FeedState>, region: Arc<Region>, min: Duration, max: Duration) {
    let mut backoff = Backoff::new(min, max);
    let Some(health) = state.health.region(&region.name) else {
        tracing::error!(region = %region.name, "no health entry for region");
        return;
    };
    loop {
        let mut progressed = false;
        let err = session(&state, &region, health, &mut progressed)
            .await
            .err()
            .map_or_else(|| "session ended".to_owned(), |e| e.to_string());
        let was_connected = health.is_connected();
        health.disconnected(&err);
        health.reconnects.increment(1);
        if was_connected {
            tracing::warn!(region = %region.name, error = %err, "lost the feed region; reconnecting");
        } else {
            tracing::debug!(region = %region.name, error = %err, "feed region unreachable");
        }
        if progressed {
            backoff.reset();
        }
        tokio::time::sleep(backoff.delay()).await;
    }
}

async fn session(
    state: &FeedState,
    region: &Region,
    health: &RegionHealth,
    progressed: &mut bool,
) -> Result<(), FeedError> {
    let mut conn = region.connect(Some(BLOCK + region.write_timeout())).await?;
    let epoch = ensure_epoch(region, &mut conn).await?;
    health.connected();
    *progressed = true;
    let resume = match state.cursor(&region.name) {
        Some(c) if c.epoch == epoch => {
            if trimmed_past(region, &mut conn, c.id).await? {
                tracing::warn!(region = %region.name, cursor = %c.id,
                    "the stream was trimmed past this replica's cursor; re-bootstrapping from the snapshot");
                None
            } else {
                Some(c.id)
            }
        }
        Some(c) => {
            tracing::warn!(region = %region.name, old = %c.epoch, new = %epoch,
                "the region's data epoch changed (its Redis lost its data); re-bootstrapping");
            None
        }
        None => None,
    };
    let mut id = match resume {
        Some(id) => id,
        None => bootstrap(state, region, health, &mut conn, &epoch).await?,
    };
    health.set_bootstrapped();
    if let Some(r) = &state.readiness {
        r.view_loaded.store(true, Ordering::Relaxed);
    }
    tracing::info!(region = %region.name, cursor = %id, "tailing the feed");
    let stream = region.keys.stream();
    let mut changed = Vec::new();
    loop {
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(FEED_READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&stream)
            .arg(id.to_string())
            .query_async(&mut conn)
            .await?;
        let entries = parse_xread(reply)?;
        if entries.is_empty() {
            continue;
        }
        let now = unix_now_ms();
        let full = entries.len() >= FEED_READ_COUNT;
        let mut events = Vec::with_capacity(entries.len());
        for (eid, fields) in entries {
            for (field, value) in fields {
                match field.as_slice() {
                    b"e" => match Event::decode(&value) {
                        Ok(e) => {
                            health.seen(now, Some(e.created_at_ms));
                            events.push(e);
                        }
                        Err(err) => {
                            health.undecodable.increment(1);
                            tracing::warn!(region = %region.name, id = %eid, error = %err,
                                "skipping an undecodable feed entry");
                        }
                    },
                    b"hb" => {
                        health.heartbeats.increment(1);
                        health.seen(now, heartbeat_time(&value));
                    }
                    _ => {}
                }
            }
            id = eid;
        }
        changed.clear();
        let mut any_revoked = false;
        state.view.apply_batch(&events, |e, status| {
            // A release changes what the CRLs list too (removeFromCRL in the next delta).
            any_revoked |= matches!(status, CertStatus::Revoked(_))
                || matches!(e.kind, EventKind::Release { .. });
            changed.push((e.issuer, e.serial));
        });
        if any_revoked {
            state.notify_revoked();
        }
        health.changed.increment(changed.len() as u64);
        health
            .unchanged
            .increment((events.len() - changed.len()) as u64);
        for (issuer, serial) in &changed {
            state.evict(*issuer, serial).await;
        }
        state.set_cursor(
            &region.name,
            Cursor {
                epoch: epoch.clone(),
                id,
            },
        );
        // A consumer this far behind may have been trimmed past: check, and re-bootstrap.
        if full && trimmed_past(region, &mut conn, id).await? {
            tracing::warn!(region = %region.name, cursor = %id,
                "fell behind the stream's trimming; re-bootstrapping from the snapshot");
            id = bootstrap(state, region, health, &mut conn, &epoch).await?;
        }
    }
}

/// A heartbeat's payload: `created_at_ms` i64 BE, then the writer's origin.
pub fn heartbeat_payload(origin: &str, now_ms: i64) -> Vec<u8> {
    let mut v = now_ms.to_be_bytes().to_vec();
    v.extend_from_slice(origin.as_bytes());
    v
}

fn heartbeat_time(payload: &[u8]) -> Option<i64> {
    let b: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(i64::from_be_bytes(b))
}

/// The region's epoch, made if missing.
pub async fn ensure_epoch(
    region: &Region,
    conn: &mut MultiplexedConnection,
) -> Result<String, FeedError> {
    let v: Value = scripts::EPOCH
        .key(region.keys.epoch())
        .arg(random_id())
        .invoke_async(conn)
        .await?;
    value_str(&v)
        .map(str::to_owned)
        .ok_or_else(|| FeedError::Protocol("epoch is not a string".into()))
}

/// The stream's `last-generated-id` and `max-deleted-entry-id`; None when there is no stream.
async fn stream_info(
    region: &Region,
    conn: &mut MultiplexedConnection,
) -> Result<Option<(StreamId, StreamId)>, FeedError> {
    let reply: Result<Value, redis::RedisError> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(region.keys.stream())
        .query_async(conn)
        .await;
    let v = match reply {
        Ok(v) => v,
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => {
            return Ok(None)
        }
        Err(e) => return Err(e.into()),
    };
    let field = |name: &str| -> Result<StreamId, FeedError> {
        pairs(&v)
            .into_iter()
            .find(|(k, _)| value_str(k) == Some(name))
            .and_then(|(_, v)| value_str(v))
            .ok_or_else(|| {
                FeedError::Protocol(format!(
                    "XINFO STREAM has no {name} (Redis 7 or newer is required)"
                ))
            })?
            .parse()
    };
    Ok(Some((
        field("last-generated-id")?,
        field("max-deleted-entry-id")?,
    )))
}

/// True when entries after `cursor` may have been trimmed away (so reading from `cursor` would
/// miss them), or the stream is gone while the cursor says it had entries.
async fn trimmed_past(
    region: &Region,
    conn: &mut MultiplexedConnection,
    cursor: StreamId,
) -> Result<bool, FeedError> {
    Ok(match stream_info(region, conn).await? {
        Some((_, max_deleted)) => max_deleted > cursor,
        None => cursor != StreamId::ZERO,
    })
}

/// Key/value pairs of a RESP2 flat array or a RESP3 map.
fn pairs(v: &Value) -> Vec<(&Value, &Value)> {
    match v {
        Value::Array(items) => items.chunks_exact(2).map(|p| (&p[0], &p[1])).collect(),
        Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        _ => Vec::new(),
    }
}

/// Loads every issuer's snapshot into the view; returns the stream id to tail from, taken before
/// the scan.
pub async fn bootstrap(
    state: &FeedState,
    region: &Region,
    health: &RegionHealth,
    conn: &mut MultiplexedConnection,
    epoch: &str,
) -> Result<StreamId, FeedError> {
    let started = std::time::Instant::now();
    // A stream trimmed past the start id during the scan could hide an event the scan also
    // missed; then scan again from a newer id.
    for _ in 0..3 {
        let start = last_id(region, conn).await?;
        let mut records = 0u64;
        let issuers: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
            .arg(region.keys.issuers())
            .query_async(conn)
            .await?;
        for hex in issuers {
            let Some(issuer) = std::str::from_utf8(&hex).ok().and_then(parse_issuer_hex) else {
                tracing::warn!(region = %region.name, "skipping a malformed issuer id in the snapshot set");
                continue;
            };
            let key = region.keys.snapshot(&issuer);
            let table = state.view.table(issuer);
            let mut cursor = "0".to_owned();
            loop {
                let reply: Value = redis::cmd("HSCAN")
                    .arg(&key)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(FEED_SCAN_COUNT)
                    .query_async(conn)
                    .await?;
                let (next, fields) = parse_scan(&reply)?;
                let mut revoked = Vec::new();
                for (serial, record) in fields.chunks_exact(2).map(|p| (&p[0], &p[1])) {
                    let (Some(s), Some(r)) = (
                        value_bytes(serial).and_then(|b| Serial::from_der_content(b).ok()),
                        value_bytes(record).and_then(CertRecord::from_bytes),
                    ) else {
                        health.undecodable.increment(1);
                        continue;
                    };
                    records += 1;
                    // Cached responses are checked against the view on every hit; evicting the
                    // newly revoked ones at once frees them without touching the rest.
                    if let Applied::Changed {
                        status: CertStatus::Revoked(_),
                    } = table.merge(s, r)
                    {
                        revoked.push(s);
                    }
                }
                for s in &revoked {
                    state.evict(issuer, s).await;
                }
                if !revoked.is_empty() {
                    state.notify_revoked();
                }
                if next == "0" {
                    break;
                }
                cursor = next;
            }
        }
        health.bootstrap_records.increment(records);
        if trimmed_past(region, conn, start).await? {
            tracing::warn!(region = %region.name, "the stream was trimmed past the bootstrap point during the scan; scanning again");
            continue;
        }
        state.set_cursor(
            &region.name,
            Cursor {
                epoch: epoch.to_owned(),
                id: start,
            },
        );
        health.bootstraps.increment(1);
        health.seen(unix_now_ms(), None);
        tracing::info!(region = %region.name, records, start = %start,
            elapsed_ms = started.elapsed().as_millis() as u64, "bootstrapped from the region's snapshot");
        return Ok(start);
    }
    Err(FeedError::Protocol(
        "the stream is trimmed faster than the snapshot can be scanned; raise feed.maxlen".into(),
    ))
}

/// The id of the stream's last entry ever (`0-0` when there is no stream).
async fn last_id(region: &Region, conn: &mut MultiplexedConnection) -> Result<StreamId, FeedError> {
    Ok(stream_info(region, conn)
        .await?
        .map_or(StreamId::ZERO, |(last, _)| last))
}

/// Parses the 64 hex digits of an issuer id.
pub fn parse_issuer_hex(s: &str) -> Option<IssuerId> {
    if s.len() != 64 {
        return None;
    }
    let mut id = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        id[i] = (hi * 16 + lo) as u8;
    }
    Some(IssuerId(id))
}

fn parse_scan(v: &Value) -> Result<(String, &[Value]), FeedError> {
    let bad = || FeedError::Protocol("HSCAN reply is not [cursor, [field, value, ...]]".into());
    let Value::Array(items) = v else {
        return Err(bad());
    };
    let next = items.first().and_then(value_str).ok_or_else(bad)?;
    match items.get(1) {
        Some(Value::Array(fields)) => Ok((next.to_owned(), fields)),
        Some(Value::Map(_)) | None | Some(_) => Err(bad()),
    }
}

/// One stream entry: id and field/value pairs.
pub type Entry = (StreamId, Vec<(Vec<u8>, Vec<u8>)>);

/// Parses an `XREAD` / `XRANGE` reply (nil on timeout) into entries.
pub fn parse_xread(v: Value) -> Result<Vec<Entry>, FeedError> {
    let bad = |what: &str| FeedError::Protocol(format!("XREAD reply: {what}"));
    let streams = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(s) => s
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            })
            .collect::<Vec<_>>(),
        Value::Map(m) => m.into_iter().map(|(_, v)| v).collect(),
        _ => return Err(bad("not an array")),
    };
    let mut out = Vec::new();
    for entries in streams {
        out.extend(parse_entries(entries)?);
    }
    Ok(out)
}

/// Parses a list of `[id, [field, value, ...]]` entries (an `XRANGE` reply).
pub fn parse_entries(v: Value) -> Result<Vec<Entry>, FeedError> {
    let bad = |what: &str| FeedError::Protocol(format!("stream entries: {what}"));
    let Value::Array(entries) = v else {
        return Err(bad("not an array"));
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let Value::Array(mut parts) = e else {
            return Err(bad("entry is not an array"));
        };
        if parts.len() != 2 {
            return Err(bad("entry is not [id, fields]"));
        }
        let fields = parts.pop();
        let id: StreamId = parts
            .first()
            .and_then(value_str)
            .ok_or_else(|| bad("entry id"))?
            .parse()?;
        let mut kv = Vec::new();
        match fields {
            Some(Value::Array(f)) => {
                let mut it = f.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    match (k, v) {
                        (Value::BulkString(k), Value::BulkString(v)) => kv.push((k, v)),
                        _ => return Err(bad("field is not a bulk string")),
                    }
                }
            }
            // A deleted entry inside a range may come back with nil fields.
            Some(Value::Nil) => {}
            _ => return Err(bad("fields")),
        }
        out.push((id, kv));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let mut last_cap = Duration::ZERO;
        for cap in [100, 200, 400, 800, 800] {
            let cap = Duration::from_millis(cap);
            let d = b.delay();
            assert!(d >= cap / 2 && d <= cap, "{d:?} for {cap:?}");
            last_cap = cap;
        }
        assert_eq!(last_cap, Duration::from_millis(800));
        b.reset();
        assert!(b.delay() <= Duration::from_millis(100));
    }

    #[test]
    fn parses_xread_replies() {
        let bulk = |s: &[u8]| Value::BulkString(s.to_vec());
        let reply = Value::Array(vec![Value::Array(vec![
            bulk(b"vigil:feed"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk(b"5-1"),
                    Value::Array(vec![bulk(b"e"), bulk(&[1, 2])]),
                ]),
                Value::Array(vec![
                    bulk(b"6-0"),
                    Value::Array(vec![bulk(b"hb"), bulk(b"x")]),
                ]),
            ]),
        ])]);
        let e = parse_xread(reply).expect("parse");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].0, StreamId { ms: 5, seq: 1 });
        assert_eq!(e[0].1, vec![(b"e".to_vec(), vec![1, 2])]);
        assert!(parse_xread(Value::Nil).expect("nil").is_empty());
        assert!(parse_xread(Value::Int(3)).is_err());
        assert!(parse_entries(Value::Array(vec![Value::Array(vec![bulk(b"zz")])])).is_err());
    }

    #[test]
    fn issuer_hex_round_trips() {
        let id = IssuerId([0xAB; 32]);
        assert_eq!(parse_issuer_hex(&crate::status::hex(&id.0)), Some(id));
        assert_eq!(parse_issuer_hex("ab"), None);
        assert_eq!(parse_issuer_hex(&"zz".repeat(32)), None);
    }
}
