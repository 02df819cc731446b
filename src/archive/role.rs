//! The archive role (`vigil archive --dir DIR`): one reader per region following its stream
//! (resuming from the archive's positions, filling gaps from the region's snapshot) into one
//! writer that appends and fsyncs every block ([`super::Archive`]), and its `/metrics`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;

use super::segment::{self, BlockKind, Mark, Position};
use super::{Archive, ArchiveError, FILL_BLOCK_RECORDS, POSITION_INTERVAL};
use crate::clock::Clock;
use crate::config::Config;
use crate::feed::consume::{self, Backoff, StreamInfo, stream_info};
use crate::feed::region::Region;
use crate::feed::{FeedError, StreamId, value_bytes, value_str};
use crate::limits::{
    ARCHIVE_READ_COUNT, FEED_SCAN_COUNT, MAX_ARCHIVE_BLOCK_ENTRIES, MAX_EVENT_BYTES,
};
use crate::status::{CertRecord, Serial};

/// How long one `XREAD BLOCK` waits.
const BLOCK: Duration = Duration::from_secs(1);

/// What a region's reader hands the writer.
enum Msg {
    /// A block to append (fsynced before the next is taken).
    Block {
        region: String,
        kind: BlockKind,
        payload: Vec<u8>,
        position: Option<Position>,
        /// When the region's stream was read to its end, if this block finished it.
        caught_up_ms: Option<i64>,
    },
    /// The region's stream was read to its end with nothing new but heartbeats (or nothing).
    Caught {
        region: String,
        at_ms: i64,
        position: Option<Position>,
    },
}

/// Options of `vigil archive`.
pub struct RoleOptions {
    /// The archive directory.
    pub dir: PathBuf,
    /// Target segment size.
    pub segment_bytes: u64,
    /// Only these regions (all configured ones when empty).
    pub regions: Vec<String>,
}

/// Per-region state the writer keeps for the lag gauge.
struct Lag {
    caught_up_ms: i64,
    position_written_ms: i64,
}

/// Runs the archive role until an archive write fails (a Redis failure only delays a
/// region: its reader reconnects with backoff).
pub async fn run(cfg: &Config, opts: RoleOptions, clock: &Clock) -> Result<(), ArchiveError> {
    let mut archive = Archive::open(&opts.dir, opts.segment_bytes, clock)?;
    let all = crate::feed::region::regions(cfg)?;
    let regions: Vec<Arc<Region>> = all
        .into_iter()
        .filter(|r| opts.regions.is_empty() || opts.regions.contains(&r.name))
        .collect();
    if regions.is_empty() {
        return Err(ArchiveError::NoRegions);
    }
    tracing::info!(dir = %opts.dir.display(), segment = archive.segment(),
        positions = ?archive.positions(), "archiving the regions' streams");
    let (tx, mut rx) = mpsc::channel::<Msg>(16);
    let started = clock.now_ms();
    let mut lag: BTreeMap<String, Lag> = BTreeMap::new();
    for r in &regions {
        let pos = archive.positions().get(&r.name).cloned();
        lag.insert(
            r.name.clone(),
            Lag {
                caught_up_ms: started,
                position_written_ms: started,
            },
        );
        tokio::spawn(follow(r.clone(), pos, tx.clone(), clock.clone()));
    }
    drop(tx);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { return Err(ArchiveError::ReadersStopped) };
                handle(&mut archive, &mut lag, msg, clock.now_ms())?;
            }
            _ = tick.tick() => {
                let now = clock.now_ms();
                for (region, l) in &lag {
                    metrics::gauge!(crate::telemetry::ARCHIVE_LAG, "region" => region.clone())
                        .set((now - l.caught_up_ms).max(0) as f64 / 1000.0);
                }
            }
        }
    }
}

fn handle(
    archive: &mut Archive,
    lag: &mut BTreeMap<String, Lag>,
    msg: Msg,
    now: i64,
) -> Result<(), ArchiveError> {
    match msg {
        Msg::Block {
            region,
            kind,
            payload,
            position,
            caught_up_ms,
        } => {
            archive.append(kind, &payload, position.map(|p| (region.as_str(), p)))?;
            metrics::counter!(crate::telemetry::ARCHIVE_BLOCKS, "kind" => kind.name()).increment(1);
            if let Some(l) = lag.get_mut(&region) {
                l.position_written_ms = now;
                if let Some(at) = caught_up_ms {
                    l.caught_up_ms = at;
                }
            }
        }
        Msg::Caught {
            region,
            at_ms,
            position,
        } => {
            let Some(l) = lag.get_mut(&region) else {
                return Ok(());
            };
            if let Some(p) = position {
                let changed = archive.positions().get(&region) != Some(&p);
                let epoch_changed = archive
                    .positions()
                    .get(&region)
                    .is_none_or(|old| old.epoch != p.epoch);
                if epoch_changed
                    || (changed
                        && now - l.position_written_ms >= POSITION_INTERVAL.as_millis() as i64)
                {
                    let mark = Mark {
                        region: region.clone(),
                        epoch: p.epoch.clone(),
                        id: p.id.clone(),
                        at_ms: now,
                        reason: "heartbeats".into(),
                        records: 0,
                    };
                    let payload = serde_json::to_vec(&mark).map_err(ArchiveError::Encode)?;
                    archive.append(BlockKind::Position, &payload, Some((&region, p)))?;
                    l.position_written_ms = now;
                }
            }
            l.caught_up_ms = at_ms;
        }
    }
    Ok(())
}

/// Follows one region forever, reconnecting with backoff.
async fn follow(region: Arc<Region>, start: Option<Position>, tx: mpsc::Sender<Msg>, clock: Clock) {
    let mut pos = start.unwrap_or(Position {
        epoch: String::new(),
        id: StreamId::ZERO.to_string(),
    });
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match session(&region, &mut pos, &tx, &clock).await {
            Ok(Flow::Restart) => continue,
            Ok(Flow::Stop) => return,
            Err(e) => {
                tracing::warn!(region = %region.name, error = %e, "archive: lost the region; reconnecting");
                tokio::time::sleep(backoff.delay()).await;
            }
        }
    }
}

enum Flow {
    Restart,
    Stop,
}

async fn send(tx: &mpsc::Sender<Msg>, m: Msg) -> Result<(), Flow> {
    tx.send(m).await.map_err(|_| Flow::Stop)
}

async fn session(
    region: &Region,
    pos: &mut Position,
    tx: &mpsc::Sender<Msg>,
    clock: &Clock,
) -> Result<Flow, FeedError> {
    let mut conn = region.connect(Some(BLOCK + region.write_timeout())).await?;
    let epoch = consume::ensure_epoch(region, &mut conn).await?;
    let mut cursor: StreamId = pos.id.parse()?;
    if pos.epoch != epoch {
        let reason = if pos.epoch.is_empty() {
            "the first position in this region".to_owned()
        } else {
            format!(
                "the region's data epoch changed from {} (its Redis lost its data)",
                pos.epoch
            )
        };
        *pos = Position {
            epoch: epoch.clone(),
            id: StreamId::ZERO.to_string(),
        };
        cursor = StreamId::ZERO;
        let mark = Mark {
            region: region.name.clone(),
            epoch: epoch.clone(),
            id: pos.id.clone(),
            at_ms: clock.now_ms(),
            reason,
            records: 0,
        };
        let m = Msg::Block {
            region: region.name.clone(),
            kind: BlockKind::Position,
            payload: serde_json::to_vec(&mark).map_err(|e| FeedError::Protocol(e.to_string()))?,
            position: Some(pos.clone()),
            caught_up_ms: None,
        };
        if let Err(f) = send(tx, m).await {
            return Ok(f);
        }
    }
    if let Some(reason) = gap(&stream_info(region, &mut conn).await?, cursor) {
        return fill(region, &mut conn, pos, &reason, tx, clock).await;
    }
    let stream = region.keys.stream();
    loop {
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(ARCHIVE_READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&stream)
            .arg(cursor.to_string())
            .query_async(&mut conn)
            .await?;
        let read_at = clock.now_ms();
        let entries = consume::parse_xread(reply)?;
        // Read after the entries: trimming only moves forward, so a stream not trimmed past
        // the cursor now was not when the entries were read, and they follow it without a gap.
        if let Some(reason) = gap(&stream_info(region, &mut conn).await?, cursor) {
            return fill(region, &mut conn, pos, &reason, tx, clock).await;
        }
        let Some(last) = entries.last().map(|e| e.0) else {
            let m = Msg::Caught {
                region: region.name.clone(),
                at_ms: read_at,
                position: None,
            };
            if let Err(f) = send(tx, m).await {
                return Ok(f);
            }
            continue;
        };
        let caught = entries.len() < ARCHIVE_READ_COUNT;
        let mut events: Vec<(StreamId, &[u8])> = Vec::with_capacity(entries.len());
        for (id, fields) in &entries {
            for (k, v) in fields {
                for got in crate::feed::field_events(k, v) {
                    match got {
                        Ok(e) if e.len() <= MAX_EVENT_BYTES => events.push((*id, e)),
                        Ok(e) => {
                            tracing::warn!(region = %region.name, id = %id, bytes = e.len(),
                                "archive: skipping a stream event longer than any event");
                        }
                        Err(err) => {
                            tracing::warn!(region = %region.name, id = %id, error = %err,
                                "archive: skipping the rest of a malformed stream field");
                        }
                    }
                }
            }
        }
        cursor = last;
        let new_pos = Position {
            epoch: epoch.clone(),
            id: last.to_string(),
        };
        let m = if events.is_empty() {
            Msg::Caught {
                region: region.name.clone(),
                at_ms: if caught { read_at } else { 0 },
                position: Some(new_pos.clone()),
            }
        } else {
            Msg::Block {
                region: region.name.clone(),
                kind: BlockKind::Events,
                payload: segment::encode_events(&region.name, &epoch, last, &events),
                position: Some(new_pos.clone()),
                caught_up_ms: caught.then_some(read_at),
            }
        };
        *pos = new_pos;
        if let Err(f) = send(tx, m).await {
            return Ok(f);
        }
    }
}

/// Why reading on from `cursor` would miss entries, if it would.
fn gap(info: &Option<StreamInfo>, cursor: StreamId) -> Option<String> {
    if let Some(i) = info
        && cursor > i.last
    {
        return Some(format!(
            "the stream ends at {} before the archived position {cursor} (its Redis was rolled back)",
            i.last
        ));
    }
    consume::trimmed_past(info.as_ref(), cursor)
        .then(|| format!("the stream was trimmed past the archived position {cursor}"))
}

/// Writes a fill: the region's whole snapshot, then the position of the stream id taken
/// before the scan. Scans again if the stream was trimmed past that id meanwhile.
async fn fill(
    region: &Region,
    conn: &mut MultiplexedConnection,
    pos: &mut Position,
    reason: &str,
    tx: &mpsc::Sender<Msg>,
    clock: &Clock,
) -> Result<Flow, FeedError> {
    let mut reason = reason.to_owned();
    loop {
        let start = stream_info(region, conn)
            .await?
            .map_or(StreamId::ZERO, |i| i.last);
        let mark = |at_ms, reason: String, records| Mark {
            region: region.name.clone(),
            epoch: pos.epoch.clone(),
            id: start.to_string(),
            at_ms,
            reason,
            records,
        };
        let json = |m: &Mark| serde_json::to_vec(m).map_err(|e| FeedError::Protocol(e.to_string()));
        tracing::warn!(region = %region.name, %reason, start = %start, "archive: filling a gap from the region's snapshot");
        let begin = Msg::Block {
            region: region.name.clone(),
            kind: BlockKind::FillBegin,
            payload: json(&mark(clock.now_ms(), reason.clone(), 0))?,
            position: None,
            caught_up_ms: None,
        };
        if let Err(f) = send(tx, begin).await {
            return Ok(f);
        }
        let mut issuers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(region.keys.issuers())
            .query_async(conn)
            .await?;
        issuers.sort();
        let mut total = 0u64;
        for ih in issuers {
            let Some(issuer) = consume::parse_issuer_hex(&ih) else {
                tracing::warn!(region = %region.name, "archive: skipping a malformed issuer id");
                continue;
            };
            let key = region.keys.snapshot(&issuer);
            let mut cursor = "0".to_owned();
            let mut batch: Vec<(Serial, CertRecord)> = Vec::with_capacity(FILL_BLOCK_RECORDS);
            loop {
                let reply: Value = redis::cmd("HSCAN")
                    .arg(&key)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(FEED_SCAN_COUNT)
                    .query_async(conn)
                    .await?;
                let Value::Array(items) = reply else {
                    return Err(FeedError::Protocol("HSCAN reply is not an array".into()));
                };
                let next = items
                    .first()
                    .and_then(value_str)
                    .ok_or_else(|| FeedError::Protocol("HSCAN cursor".into()))?
                    .to_owned();
                if let Some(Value::Array(fields)) = items.get(1) {
                    for p in fields.chunks_exact(2) {
                        let (Some(s), Some(r)) = (
                            value_bytes(&p[0]).and_then(|b| Serial::from_der_content(b).ok()),
                            value_bytes(&p[1]).and_then(CertRecord::from_bytes),
                        ) else {
                            continue;
                        };
                        batch.push((s, r));
                    }
                }
                let done = next == "0";
                if batch.len() >= FILL_BLOCK_RECORDS.min(MAX_ARCHIVE_BLOCK_ENTRIES)
                    || (done && !batch.is_empty())
                {
                    total += batch.len() as u64;
                    let m = Msg::Block {
                        region: region.name.clone(),
                        kind: BlockKind::FillRecords,
                        payload: segment::encode_fill(&region.name, issuer, &batch),
                        position: None,
                        caught_up_ms: None,
                    };
                    batch.clear();
                    if let Err(f) = send(tx, m).await {
                        return Ok(f);
                    }
                }
                if done {
                    break;
                }
                cursor = next;
            }
        }
        let info = stream_info(region, conn).await?;
        if consume::trimmed_past(info.as_ref(), start) {
            reason = format!("the stream was trimmed past {start} during the fill");
            continue;
        }
        let done_at = clock.now_ms();
        let end = Msg::Block {
            region: region.name.clone(),
            kind: BlockKind::FillEnd,
            payload: json(&mark(done_at, reason.clone(), total))?,
            position: Some(Position {
                epoch: pos.epoch.clone(),
                id: start.to_string(),
            }),
            caught_up_ms: None,
        };
        pos.id = start.to_string();
        tracing::info!(region = %region.name, records = total, start = %start, "archive: gap filled");
        if let Err(f) = send(tx, end).await {
            return Ok(f);
        }
        return Ok(Flow::Restart);
    }
}

/// Writes the archive's metrics file or serves nothing: see [`serve_metrics`].
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> Result<(), ArchiveError> {
    use http_body_util::Full;
    use hyper::service::service_fn;
    let metrics = |source| ArchiveError::Metrics { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(metrics)?;
    println!(
        "vigil archive metrics on http://{}/metrics",
        listener.local_addr().map_err(metrics)?
    );
    let handle = Arc::new(handle);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let handle = handle.clone();
                    async move {
                        let (status, body) = if req.uri().path() == "/metrics" {
                            (hyper::StatusCode::OK, handle.render())
                        } else {
                            (hyper::StatusCode::NOT_FOUND, "not found\n".to_owned())
                        };
                        hyper::Response::builder()
                            .status(status)
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(bytes::Bytes::from(body)))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    Ok(())
}
