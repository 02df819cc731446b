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

use redis::Value;
use redis::aio::MultiplexedConnection;

use super::health::{FeedHealth, RegionHealth};
use super::region::Region;
use super::repair::{Lease, merge_view_into};
use super::{Cursor, FeedError, StreamId, scripts, value_bytes, value_str};
use crate::apply::Applier;
use crate::clock::Clock;
use crate::http::Readiness;
use crate::limits::{FEED_READ_COUNT, FEED_SCAN_COUNT};
use crate::status::view::Digest;
use crate::status::{CertRecord, Event, IssuerId, Serial, StatusView, hex};
use crate::telemetry;

/// How long one `XREAD BLOCK` waits: short enough that a dead connection is noticed quickly,
/// long enough that an idle replica costs Redis one call per second per region.
pub const BLOCK: Duration = Duration::from_secs(1);

/// What every consumer of a replica shares.
pub struct FeedState {
    /// The status view.
    pub view: Arc<StatusView>,
    /// Where every change goes: the view, cache eviction, the CRL publisher.
    pub applier: Arc<Applier>,
    /// Freshness and completeness per region.
    pub health: Arc<FeedHealth>,
    /// Readiness: the view counts as loaded once some region's snapshot (or a checkpoint) is in.
    pub readiness: Option<Arc<Readiness>>,
    /// How this replica writes back into a region that lost records (None: it never does,
    /// e.g. in one-shot commands).
    pub reseed: Option<Reseed>,
    /// The one clock: freshness, lag and the times of what is written back.
    pub clock: Clock,
    cursors: Mutex<HashMap<String, Cursor>>,
}

/// What re-seeding a region needs: the stream bound and the origin of the events it writes.
#[derive(Debug, Clone)]
pub struct Reseed {
    /// `feed.maxlen`.
    pub maxlen: u64,
    /// This replica's origin (`status.origin`).
    pub origin: String,
    /// How often a consumer compares the view with its region (`feed.repair_interval`).
    pub check_interval: Duration,
}

impl FeedState {
    /// Shared state starting from `cursors` (from a checkpoint, or empty).
    pub fn new(
        applier: Arc<Applier>,
        health: Arc<FeedHealth>,
        readiness: Option<Arc<Readiness>>,
        cursors: HashMap<String, Cursor>,
        reseed: Option<Reseed>,
        clock: Clock,
    ) -> Self {
        FeedState {
            view: applier.view.clone(),
            applier,
            health,
            readiness,
            reseed,
            clock,
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
    // On failure, std's per-process hash keys (also from the OS, with its own fallbacks) and
    // the process id still make a usable, if weaker, id.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        b[..8].copy_from_slice(&h.finish().to_be_bytes());
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
    let info = stream_info(region, &mut conn).await?;
    let resume = match state.cursor(&region.name) {
        Some(c) if c.epoch != epoch => {
            health.set_gap(
                "epoch",
                format!(
                    "the region's data epoch changed from {} to {epoch}: its Redis lost its data",
                    c.epoch
                ),
            );
            reseed(state, region, health, &mut conn, "the region lost its data").await;
            None
        }
        Some(c) if info.as_ref().is_some_and(|i| c.id > i.last) => {
            health.set_gap(
                "rollback",
                format!(
                    "the region's stream ends at {} before this replica's cursor {}: its Redis was rolled back",
                    info.as_ref().map_or(StreamId::ZERO, |i| i.last),
                    c.id
                ),
            );
            reseed(
                state,
                region,
                health,
                &mut conn,
                "the region was rolled back",
            )
            .await;
            None
        }
        Some(c) if trimmed_past(info.as_ref(), c.id) => {
            health.set_behind(
                "trimmed",
                format!("the stream was trimmed past this replica's cursor {}", c.id),
            );
            None
        }
        Some(c) => Some(c.id),
        None => None,
    };
    let mut id = match resume {
        Some(id) => id,
        None => bootstrap(state, region, health, &mut conn, &epoch).await?,
    };
    health.set_covered();
    if let Some(r) = &state.readiness {
        r.view_loaded.store(true, Ordering::Relaxed);
    }
    tracing::info!(region = %region.name, cursor = %id, "tailing the feed");
    let stream = region.keys.stream();
    let mut check = Completeness::new(state.reseed.as_ref().map(|r| r.check_interval));
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
        if !entries.is_empty() {
            let read_from = id;
            let now = state.clock.now_ms();
            let mut events = Vec::with_capacity(entries.len());
            for (eid, fields) in entries {
                // The events of one entry were written in one call: one lag sample each.
                let mut lag_taken = false;
                for (field, value) in fields {
                    if field == b"hb" {
                        health.heartbeats.increment(1);
                        health.seen(now, heartbeat_time(&value));
                        continue;
                    }
                    for got in super::field_events(&field, &value) {
                        match got
                            .map_err(FieldOrEvent::Field)
                            .and_then(|b| Event::decode(b).map_err(FieldOrEvent::Event))
                        {
                            Ok(e) => {
                                if !lag_taken {
                                    health.seen(now, Some(e.created_at_ms));
                                    lag_taken = true;
                                }
                                events.push(e);
                            }
                            Err(err) => {
                                health.undecodable.increment(1);
                                tracing::warn!(region = %region.name, id = %eid, error = %err,
                                    "skipping an undecodable feed entry");
                            }
                        }
                    }
                }
                id = eid;
            }
            let applied = state.applier.events_owned(events).await;
            health.changed.increment(applied.changed as u64);
            health.unchanged.increment(applied.unchanged as u64);
            state.set_cursor(
                &region.name,
                Cursor {
                    epoch: epoch.clone(),
                    id,
                },
            );
            // Entries between the cursor and what this read returned may have been trimmed
            // away (a consumer behind a mass revocation): then only the snapshot has them.
            let info = stream_info(region, &mut conn).await?;
            if trimmed_past(info.as_ref(), read_from) {
                health.set_behind(
                    "trimmed",
                    format!("fell behind the stream's trimming after {read_from}; re-reading the snapshot"),
                );
                id = bootstrap(state, region, health, &mut conn, &epoch).await?;
                health.set_covered();
            }
        }
        if let Some(fresh) = check.step(state, region, health, &mut conn, id).await? {
            id = fresh;
        }
    }
}

/// Why an event of a stream field could not be read.
#[derive(Debug, thiserror::Error)]
enum FieldOrEvent {
    #[error("{0}")]
    Field(super::FieldError),
    #[error("{0}")]
    Event(crate::status::event::DecodeError),
}

/// The periodic comparison of the view with one region (per issuer: record count and digest,
/// [`crate::status::view::Digest`]).
///
/// Each round first reads the region's state atomically (its last stream id, and per issuer
/// the snapshot's record count and digest, [`scripts::STATE`]); once the consumer has applied
/// the stream up to that id, the view must hold at least that many records of each issuer. If
/// it holds fewer, records are missing (a stream trimmed past in a way the stream did not show,
/// an event lost in transit): the replica is not ready while it re-reads that issuer's
/// snapshot. If counts allow it but the digests differ, and still differ the same way a round
/// later (so in-flight writes are not mistaken for divergence), the view and the region hold
/// different records: the replica re-reads the region's snapshot (the view learns what it
/// lacked) and, if they still differ, writes the view's records back into the region (the
/// region lacked them: flushed, rolled back, or a write that reached only other regions).
struct Completeness {
    every: Option<Duration>,
    due: tokio::time::Instant,
    pending: Option<RegionState>,
    suspects: HashMap<IssuerId, (Digest, Digest)>,
}

/// A region's state read in one atomic step.
struct RegionState {
    at: StreamId,
    issuers: Vec<(IssuerId, u64, Digest)>,
}

impl Completeness {
    fn new(every: Option<Duration>) -> Self {
        Completeness {
            every,
            // The first round soon after a bootstrap or resume.
            due: tokio::time::Instant::now() + Duration::from_secs(1),
            pending: None,
            suspects: HashMap::new(),
        }
    }

    /// Runs the part of a round that is due; returns a new cursor when it re-bootstrapped.
    async fn step(
        &mut self,
        state: &FeedState,
        region: &Region,
        health: &RegionHealth,
        conn: &mut MultiplexedConnection,
        cursor: StreamId,
    ) -> Result<Option<StreamId>, FeedError> {
        let Some(every) = self.every else {
            return Ok(None);
        };
        if self.pending.is_none() {
            if tokio::time::Instant::now() < self.due {
                return Ok(None);
            }
            self.due = tokio::time::Instant::now() + every;
            self.pending = Some(region_state(region, conn).await?);
        }
        match &self.pending {
            Some(p) if cursor >= p.at => {}
            _ => return Ok(None),
        }
        let Some(p) = self.pending.take() else {
            return Ok(None);
        };
        let mut short = Vec::new();
        let mut suspects = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for (issuer, count, digest) in &p.issuers {
            seen.insert(*issuer);
            let (have, mine) = state.view.table(*issuer).summary();
            if (have as u64) < *count {
                short.push((*issuer, *count, have));
            } else if mine != *digest {
                suspects.insert(*issuer, (*digest, mine));
            }
        }
        // Issuers the view knows and the region has no snapshot of at all.
        for (issuer, table) in state.view.issuers() {
            let (have, mine) = table.summary();
            if have > 0 && !seen.contains(&issuer) {
                suspects.insert(issuer, (Digest::default(), mine));
            }
        }
        let stable: Vec<IssuerId> = suspects
            .iter()
            .filter(|(i, d)| self.suspects.get(*i) == Some(*d))
            .map(|(i, _)| *i)
            .collect();
        for i in &stable {
            suspects.remove(i);
        }
        let result = if !short.is_empty() {
            "short"
        } else if !stable.is_empty() {
            "diverged"
        } else if !suspects.is_empty() {
            "mismatch"
        } else {
            "ok"
        };
        metrics::counter!(telemetry::FEED_CHECKS, "region" => region.name.clone(), "result" => result)
            .increment(1);
        self.suspects = suspects;
        if !short.is_empty() {
            let what: Vec<String> = short
                .iter()
                .map(|(i, want, have)| {
                    format!(
                        "issuer {}: {want} records in the region, {have} in the view",
                        hex(&i.0)
                    )
                })
                .collect();
            health.set_gap(
                "count",
                format!("{}; re-reading the snapshot", what.join(", ")),
            );
            for (issuer, _, _) in &short {
                read_snapshot(state, region, health, conn, *issuer).await?;
            }
            health.set_covered();
        }
        for issuer in stable {
            let learned = read_snapshot(state, region, health, conn, issuer).await?;
            if learned > 0 {
                health.set_gap(
                    "digest",
                    format!(
                        "issuer {}: the view lacked {learned} records of the region",
                        hex(&issuer.0)
                    ),
                );
                health.set_covered();
            }
            let (_, mine) = state.view.table(issuer).summary();
            let theirs = region_state(region, conn)
                .await?
                .issuers
                .iter()
                .find(|(i, _, _)| *i == issuer)
                .map_or(Digest::default(), |(_, _, d)| *d);
            if mine != theirs {
                reseed_issuer(
                    state,
                    region,
                    health,
                    conn,
                    Some(issuer),
                    "the region lacks records the view holds",
                )
                .await;
            }
        }
        Ok(None)
    }
}

/// Reads the region's last stream id and, per issuer, its snapshot's count and digest.
async fn region_state(
    region: &Region,
    conn: &mut MultiplexedConnection,
) -> Result<RegionState, FeedError> {
    let reply: Vec<Value> = scripts::STATE
        .key(region.keys.stream())
        .key(region.keys.issuers())
        .key(region.keys.digests())
        .arg(region.keys.snapshot_hex(""))
        .invoke_async(conn)
        .await?;
    let bad =
        || FeedError::Protocol("region state reply is not [id, (issuer, count, digest)...]".into());
    let mut it = reply.iter();
    let at: StreamId = it.next().and_then(value_str).ok_or_else(bad)?.parse()?;
    let mut issuers = Vec::new();
    while let (Some(i), Some(n), Some(d)) = (it.next(), it.next(), it.next()) {
        let Some(issuer) = value_str(i).and_then(parse_issuer_hex) else {
            continue;
        };
        let count = match n {
            Value::Int(n) => u64::try_from(*n).unwrap_or(0),
            _ => return Err(bad()),
        };
        let digest = value_str(d).and_then(Digest::from_hex).unwrap_or_default();
        issuers.push((issuer, count, digest));
    }
    Ok(RegionState { at, issuers })
}

/// Writes the whole view back into a region that lost records (flushed, restarted empty,
/// rolled back), under the region's sync lease; a replica that finds the lease taken leaves
/// the work to its holder (the next completeness round catches anything still missing).
async fn reseed(
    state: &FeedState,
    region: &Region,
    health: &RegionHealth,
    conn: &mut MultiplexedConnection,
    why: &str,
) {
    reseed_issuer(state, region, health, conn, None, why).await;
    // The region's stored CRLs went with its data (or back with it): the lease holders
    // publish again, which stores current CRLs into it.
    state.applier.wake_crls();
}

async fn reseed_issuer(
    state: &FeedState,
    region: &Region,
    health: &RegionHealth,
    conn: &mut MultiplexedConnection,
    only: Option<IssuerId>,
    why: &str,
) {
    let Some(cfg) = &state.reseed else {
        return;
    };
    if state.view.is_empty() {
        return;
    }
    let lease = Lease::new(region.keys.sync_lock(), random_id());
    match lease.acquire(conn).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(region = %region.name, why, "another replica is re-seeding the region");
            return;
        }
        Err(e) => {
            tracing::warn!(region = %region.name, error = %e, "could not take the re-seed lease");
            return;
        }
    }
    let started = std::time::Instant::now();
    let result = merge_view_into(
        &state.view,
        region,
        conn,
        only,
        super::repair::WriteBack {
            origin: &cfg.origin,
            maxlen: cfg.maxlen,
            at_ms: state.clock.now_ms(),
        },
        &lease,
    )
    .await;
    lease.release(region, conn).await;
    match result {
        Ok(n) => {
            health.reseeded.increment(n as u64);
            if n > 0 {
                tracing::warn!(region = %region.name, why, records = n,
                    issuer = %only.map(|i| hex(&i.0)).unwrap_or_else(|| "every".into()),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "re-seeded the region from this replica's view");
            }
        }
        Err(e) => {
            tracing::warn!(region = %region.name, why, error = %e, "re-seeding the region failed; the next round tries again");
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

/// What `XINFO STREAM` says about the trimming of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    /// `last-generated-id`: the newest id ever given out.
    pub last: StreamId,
    /// The id of the oldest entry still in the stream.
    pub first: Option<StreamId>,
    /// Entries ever added (`entries-added`).
    pub added: u64,
    /// Entries in the stream now.
    pub length: u64,
    /// `max-deleted-entry-id` (left at `0-0` by `MAXLEN ~` trimming on some Redis 7 releases,
    /// so it is only a hint).
    pub max_deleted: StreamId,
}

/// The stream's trimming state; None when there is no stream.
pub async fn stream_info(
    region: &Region,
    conn: &mut MultiplexedConnection,
) -> Result<Option<StreamInfo>, FeedError> {
    let reply: Result<Value, redis::RedisError> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(region.keys.stream())
        .query_async(conn)
        .await;
    let v = match reply {
        Ok(v) => v,
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => {
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let fields = pairs(&v);
    let get = |name: &str| -> Result<&Value, FeedError> {
        fields
            .iter()
            .find(|(k, _)| value_str(k) == Some(name))
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                FeedError::Protocol(format!(
                    "XINFO STREAM has no {name} (Redis 7 or newer is required)"
                ))
            })
    };
    let id = |name: &str| -> Result<StreamId, FeedError> {
        value_str(get(name)?)
            .ok_or_else(|| FeedError::Protocol(format!("XINFO STREAM {name} is not an id")))?
            .parse()
    };
    let int = |name: &str| -> Result<u64, FeedError> {
        match get(name)? {
            Value::Int(n) => Ok(u64::try_from(*n).unwrap_or(0)),
            _ => Err(FeedError::Protocol(format!(
                "XINFO STREAM {name} is not a number"
            ))),
        }
    };
    let first = match get("first-entry")? {
        Value::Array(e) => e.first().and_then(value_str).map(str::parse).transpose()?,
        _ => None,
    };
    Ok(Some(StreamInfo {
        last: id("last-generated-id")?,
        first,
        added: int("entries-added")?,
        length: int("length")?,
        max_deleted: id("max-deleted-entry-id")?,
    }))
}

/// True when entries after `cursor` may have been trimmed away, so reading on from `cursor`
/// would miss them: something was deleted from the stream (`entries-added` > `length`) and
/// the oldest entry left is past the cursor (or none is left and the stream went on past it).
/// Read from the stream itself, which every Redis 7 reports the same way. Entries are removed
/// only from the head, and `MAXLEN ~` removes an entry only once `maxlen` newer ones exist, so
/// a consumer whose own last entry is gone is at least `maxlen` behind; treating that as
/// trimmed past costs a snapshot re-read, never an event.
pub fn trimmed_past(info: Option<&StreamInfo>, cursor: StreamId) -> bool {
    let Some(i) = info else {
        // No stream at all while the cursor says it had entries.
        return cursor != StreamId::ZERO;
    };
    if i.max_deleted > cursor {
        return true;
    }
    if i.added <= i.length {
        return false;
    }
    match i.first {
        Some(first) => first > cursor,
        None => i.last > cursor,
    }
}

/// Key/value pairs of a RESP2 flat array or a RESP3 map.
fn pairs(v: &Value) -> Vec<(&Value, &Value)> {
    match v {
        Value::Array(items) => items.chunks_exact(2).map(|p| (&p[0], &p[1])).collect(),
        Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        _ => Vec::new(),
    }
}

/// Loads every issuer's snapshot into the view (a join: nothing the view holds is lost);
/// returns the stream id to tail from, taken before the scan.
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
            records += scan_snapshot(state, region, health, conn, issuer).await?.0;
        }
        health.bootstrap_records.increment(records);
        if trimmed_past(stream_info(region, conn).await?.as_ref(), start) {
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
        health.seen(state.clock.now_ms(), None);
        tracing::info!(region = %region.name, records, start = %start,
            elapsed_ms = started.elapsed().as_millis() as u64, "bootstrapped from the region's snapshot");
        return Ok(start);
    }
    Err(FeedError::Protocol(
        "the stream is trimmed faster than the snapshot can be scanned; raise feed.maxlen".into(),
    ))
}

/// Re-reads one issuer's snapshot into the view; returns how many records changed the view.
async fn read_snapshot(
    state: &FeedState,
    region: &Region,
    health: &RegionHealth,
    conn: &mut MultiplexedConnection,
    issuer: IssuerId,
) -> Result<usize, FeedError> {
    let (records, changed) = scan_snapshot(state, region, health, conn, issuer).await?;
    tracing::info!(region = %region.name, issuer = %hex(&issuer.0), records, changed, "re-read the issuer's snapshot");
    Ok(changed)
}

/// `HSCAN`s one issuer's snapshot into the view through the [`Applier`]; returns the records
/// read and how many changed the view.
async fn scan_snapshot(
    state: &FeedState,
    region: &Region,
    health: &RegionHealth,
    conn: &mut MultiplexedConnection,
    issuer: IssuerId,
) -> Result<(u64, usize), FeedError> {
    let key = region.keys.snapshot(&issuer);
    let mut cursor = "0".to_owned();
    let (mut records, mut changed) = (0u64, 0usize);
    let mut batch = Vec::with_capacity(FEED_SCAN_COUNT);
    loop {
        let reply: Value = redis::cmd("HSCAN")
            .arg(&key)
            .arg(&cursor)
            .arg("COUNT")
            .arg(FEED_SCAN_COUNT)
            .query_async(conn)
            .await?;
        let (next, fields) = parse_scan(&reply)?;
        batch.clear();
        for (serial, record) in fields.chunks_exact(2).map(|p| (&p[0], &p[1])) {
            let (Some(s), Some(r)) = (
                value_bytes(serial).and_then(|b| Serial::from_der_content(b).ok()),
                value_bytes(record).and_then(CertRecord::from_bytes),
            ) else {
                health.undecodable.increment(1);
                continue;
            };
            batch.push((s, r));
        }
        records += batch.len() as u64;
        changed += state.applier.records(issuer, &batch).await.changed;
        // The region answers: a long re-read (millions of records) is not a silent feed.
        health.seen(state.clock.now_ms(), None);
        if next == "0" {
            return Ok((records, changed));
        }
        cursor = next;
    }
}

/// The id of the stream's last entry ever (`0-0` when there is no stream).
async fn last_id(region: &Region, conn: &mut MultiplexedConnection) -> Result<StreamId, FeedError> {
    Ok(stream_info(region, conn)
        .await?
        .map_or(StreamId::ZERO, |i| i.last))
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
