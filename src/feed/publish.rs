//! Writing events to every region, acknowledged at a quorum.
//!
//! 1. Connect to every region at once (within `feed.connect_timeout`). Fewer than `quorum`
//!    reachable: fail at once and write nothing.
//! 2. Send the certificates to every reachable region at once, in batches of one issuer's
//!    certificates per [merge script](super::scripts::MERGE_MANY_LUA) call, pipelined (within
//!    `feed.write_timeout` per pipeline; [`merge`]).
//! 3. Regions that failed get hints in the regions that succeeded, so repair can hand the events
//!    over when they are back ([`super::repair`]).
//! 4. `quorum` regions succeeded: acknowledged. Otherwise the error names every failed region
//!    and says whether the write reached any region (it may then become visible there; retrying
//!    is safe because the merge is idempotent and a retry writes nothing where it is already
//!    held).

use std::fmt;
use std::sync::Arc;

use futures_util::future::join_all;
use redis::Value;
use redis::aio::MultiplexedConnection;

use super::region::Region;
use super::{CertWrite, FeedError, group_by_certificate, scripts};
use crate::config::FeedConfig;
use crate::limits::{FEED_MERGE_BATCH, FEED_PIPELINE_CHUNK};
use crate::status::view::Digest;
use crate::status::{Event, hex};

/// Writes to the regions of the feed.
pub struct Publisher {
    regions: Vec<Arc<Region>>,
    quorum: usize,
    maxlen: u64,
}

/// An acknowledged write.
#[derive(Debug, Clone)]
pub struct WriteReport {
    /// Regions that hold the write.
    pub written: Vec<String>,
    /// Regions that do not, with the reason; each has a hint for repair.
    pub failed: Vec<(String, String)>,
    /// The quorum that was met.
    pub quorum: usize,
    /// Stream entries appended, summed over regions (0 when every region already held it).
    pub appended: usize,
}

/// A write that did not reach its quorum.
#[derive(Debug, Clone)]
pub struct QuorumError {
    /// The quorum.
    pub quorum: usize,
    /// Number of regions.
    pub regions: usize,
    /// Regions that hold the write.
    pub written: Vec<String>,
    /// Regions that failed, with the reason.
    pub failed: Vec<(String, String)>,
}

impl fmt::Display for QuorumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NOT acknowledged: {} of {} region(s) hold the write, quorum is {}; failed: {}",
            self.written.len(),
            self.regions,
            self.quorum,
            describe_failures(&self.failed)
        )?;
        if self.written.is_empty() {
            write!(f, "; nothing was written")
        } else {
            write!(
                f,
                "; it was written to {} and may become visible there; retrying is safe",
                self.written.join(", ")
            )
        }
    }
}

impl std::error::Error for QuorumError {}

/// `a (connection refused), b (timed out)`.
pub fn describe_failures(failed: &[(String, String)]) -> String {
    failed
        .iter()
        .map(|(r, why)| format!("{r} ({why})"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Publisher {
    /// A publisher over `regions` with the feed's quorum.
    pub fn new(regions: Vec<Arc<Region>>, feed: &FeedConfig) -> Self {
        Publisher {
            quorum: feed.quorum,
            regions,
            maxlen: feed.maxlen,
        }
    }

    /// The regions.
    pub fn regions(&self) -> &[Arc<Region>] {
        &self.regions
    }

    /// The write quorum.
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// Writes `events` to every region; `Ok` once `quorum` regions hold all of them.
    pub async fn publish(&self, events: &[Event]) -> Result<WriteReport, QuorumError> {
        let writes = group_by_certificate(events);
        let connected = join_all(self.regions.iter().map(|r| async move {
            let c = r.writer().await;
            (r.clone(), c)
        }))
        .await;
        let mut failed = Vec::new();
        let mut reachable = Vec::new();
        for (r, c) in connected {
            match c {
                Ok(c) => reachable.push((r, c)),
                Err(e) => failed.push((r.name.clone(), e.to_string())),
            }
        }
        if reachable.len() < self.quorum {
            return Err(QuorumError {
                quorum: self.quorum,
                regions: self.regions.len(),
                written: Vec::new(),
                failed,
            });
        }
        let results = join_all(reachable.into_iter().map(|(r, mut c)| {
            let writes = &writes;
            async move {
                let mut res = merge(&r, &mut c, writes, self.maxlen).await;
                // A cached connection to a Redis that restarted fails once: reconnect and retry
                // (safe: the merge is idempotent).
                if matches!(&res, Err(FeedError::Redis(e)) if e.is_connection_dropped() || e.is_io_error())
                {
                    r.reset_writer().await;
                    res = match r.writer().await {
                        Ok(fresh) => {
                            c = fresh;
                            merge(&r, &mut c, writes, self.maxlen).await
                        }
                        Err(e) => Err(e),
                    };
                }
                (r, c, res)
            }
        }))
        .await;
        let mut written = Vec::new();
        let mut holders = Vec::new();
        let mut appended = 0;
        for (r, c, res) in results {
            match res {
                Ok(n) => {
                    written.push(r.name.clone());
                    appended += n;
                    holders.push((r, c));
                }
                Err(e) => {
                    r.reset_writer().await;
                    failed.push((r.name.clone(), e.to_string()));
                }
            }
        }
        for (missed, _) in &failed {
            for (holder, conn) in &mut holders {
                if let Err(e) = hint(holder, conn, missed, &writes, self.maxlen).await {
                    tracing::warn!(region = %holder.name, missed = %missed, error = %e,
                        "could not leave a repair hint; the periodic repair will still copy the data");
                }
            }
        }
        if written.len() < self.quorum {
            return Err(QuorumError {
                quorum: self.quorum,
                regions: self.regions.len(),
                written,
                failed,
            });
        }
        Ok(WriteReport {
            written,
            failed,
            quorum: self.quorum,
            appended,
        })
    }
}

/// Merges every write into one region: consecutive writes of one issuer go in
/// [`MERGE_MANY`](scripts::MERGE_MANY_LUA) calls of up to [`FEED_MERGE_BATCH`] certificates,
/// sent in pipelines of up to [`FEED_PIPELINE_CHUNK`] certificates. Returns the number of
/// certificates whose snapshot changed (each appended its events).
pub async fn merge(
    region: &Region,
    conn: &mut MultiplexedConnection,
    writes: &[CertWrite],
    maxlen: u64,
) -> Result<usize, FeedError> {
    let mut changed = 0;
    for chunk in writes.chunks(FEED_PIPELINE_CHUNK) {
        let mut pipe = redis::pipe();
        for issuer_writes in chunk.chunk_by(|a, b| a.issuer == b.issuer) {
            let issuer_hex = hex(&issuer_writes[0].issuer.0);
            for batch in issuer_writes.chunks(FEED_MERGE_BATCH) {
                let mut batch_digest = Digest::default();
                for w in batch {
                    batch_digest.toggle(&w.serial, &w.record);
                }
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(scripts::MERGE_MANY.get_hash())
                    .arg(4)
                    .arg(region.keys.stream())
                    .arg(region.keys.snapshot_hex(&issuer_hex))
                    .arg(region.keys.issuers())
                    .arg(region.keys.digests())
                    .arg(maxlen)
                    .arg(&issuer_hex)
                    .arg(batch_digest.hex());
                for w in batch {
                    let mut packed = Vec::with_capacity(w.events.iter().map(|e| e.len() + 2).sum());
                    super::pack_events(&mut packed, w.events.iter().map(|e| &e[..]));
                    cmd.arg(w.serial.as_der_content())
                        .arg(&w.record.to_bytes()[..])
                        .arg(w.events.len())
                        .arg(packed);
                }
            }
        }
        let replies: Vec<usize> = run_pipeline(region, conn, &pipe).await?;
        changed += replies.iter().sum::<usize>();
    }
    Ok(changed)
}

/// Leaves hints for `missed` in `holder`.
async fn hint(
    holder: &Region,
    conn: &mut MultiplexedConnection,
    missed: &str,
    writes: &[CertWrite],
    maxlen: u64,
) -> Result<(), FeedError> {
    let events: Vec<&Vec<u8>> = writes.iter().flat_map(|w| w.events.iter()).collect();
    for chunk in events.chunks(FEED_PIPELINE_CHUNK) {
        let mut pipe = redis::pipe();
        let cmd = pipe
            .cmd("EVALSHA")
            .arg(scripts::HINT.get_hash())
            .arg(2)
            .arg(holder.keys.hints(missed))
            .arg(holder.keys.resync(missed))
            .arg(maxlen);
        for e in chunk {
            cmd.arg(&e[..]);
        }
        run_pipeline::<Vec<Value>>(holder, conn, &pipe).await?;
    }
    Ok(())
}

/// Sends a pipeline within the region's write timeout; reloads the scripts once if Redis lost
/// them (`SCRIPT FLUSH`).
pub async fn run_pipeline<T: redis::FromRedisValue>(
    region: &Region,
    conn: &mut MultiplexedConnection,
    pipe: &redis::Pipeline,
) -> Result<T, FeedError> {
    let limit = region.write_timeout();
    for attempt in 0..2 {
        let r = match tokio::time::timeout(limit, pipe.query_async::<T>(conn)).await {
            Ok(r) => r,
            Err(_) => return Err(FeedError::Timeout(limit)),
        };
        match r {
            Err(e)
                if attempt == 0
                    && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                for s in scripts::all() {
                    s.load_async(conn).await?;
                }
            }
            other => return other.map_err(FeedError::from),
        }
    }
    Err(FeedError::Protocol("scripts could not be loaded".into()))
}
