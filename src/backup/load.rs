//! Loading records into regions for a restore: every region written at once, each by its own
//! task on its own connection, with a few pipelines of
//! [`RESTORE_MANY`](crate::feed::scripts::RESTORE_MANY_LUA) calls in flight so that each
//! Redis is never idle while the next batch is read and built.
//!
//! The records come through a bounded channel per region ([`LOAD_QUEUE_BATCHES`] batches of
//! at most a backup section each), so a restore holds a few sections in memory however large
//! the backup is. The script is the feed's join (a restore never removes or downgrades a
//! newer revocation) and keeps the issuer's digest; it appends no stream entry (why: the
//! script's documentation).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;

use super::BackupError;
use crate::feed::region::Region;
use crate::feed::{FeedError, scripts};
use crate::status::view::Digest;
use crate::status::{CertRecord, IssuerId, Serial, hex};

/// Records per [`RESTORE_MANY`](scripts::RESTORE_MANY_LUA) call: the script's fixed cost (the
/// digest's read and write, the issuers-set `SADD`) paid once per thousand records, one call
/// about a millisecond of Redis time.
pub const LOAD_CALL_RECORDS: usize = 1000;
/// Calls per pipeline: about 10 000 records, some tens of milliseconds of Redis time, far
/// within `feed.write_timeout`.
pub const LOAD_PIPELINE_CALLS: usize = 10;
/// Pipelines in flight per region.
pub const LOAD_PIPELINES_IN_FLIGHT: usize = 3;
/// Batches queued per region between the reader and the region's task.
pub const LOAD_QUEUE_BATCHES: usize = 4;

/// One issuer's records, with the digest of each call's slice of them.
pub struct Batch {
    /// Their issuer.
    pub issuer: IssuerId,
    /// The records.
    pub records: Vec<(Serial, CertRecord)>,
    /// Per [`LOAD_CALL_RECORDS`] records, the XOR of SHA-1(serial ‖ record), in hex.
    digests: Vec<String>,
}

impl Batch {
    /// A batch of `records` (its digests computed here, once for every region).
    pub fn new(issuer: IssuerId, records: Vec<(Serial, CertRecord)>) -> Self {
        let digests = records
            .chunks(LOAD_CALL_RECORDS)
            .map(|c| {
                let mut d = Digest::default();
                for (s, r) in c {
                    d.toggle(s, r);
                }
                d.hex()
            })
            .collect();
        Batch {
            issuer,
            records,
            digests,
        }
    }
}

/// Per region: issuer hex → (records sent, records that changed the region).
pub type Loaded = BTreeMap<String, BTreeMap<String, (u64, u64)>>;

/// What one region's task did: its name and, per issuer hex, (records sent, changed).
type RegionResult = Result<(String, BTreeMap<String, (u64, u64)>), BackupError>;

/// Senders to every region's task; dropping it (or [`Loader::finish`]) ends them.
pub struct Loader {
    senders: Vec<mpsc::Sender<Arc<Batch>>>,
    tasks: Vec<tokio::task::JoinHandle<RegionResult>>,
}

impl Loader {
    /// Starts one task per region, on the connections given (one per region, in order).
    pub fn start(regions: &[Arc<Region>], conns: Vec<MultiplexedConnection>) -> Self {
        let mut senders = Vec::new();
        let mut tasks = Vec::new();
        for (r, c) in regions.iter().zip(conns) {
            let (tx, rx) = mpsc::channel(LOAD_QUEUE_BATCHES);
            senders.push(tx);
            tasks.push(tokio::spawn(region_task(r.clone(), c, rx)));
        }
        Loader { senders, tasks }
    }

    /// Queues a batch for every region (waits while a region's queue is full).
    pub async fn send(&self, batch: Batch) -> Result<(), BackupError> {
        let batch = Arc::new(batch);
        for tx in &self.senders {
            if tx.send(batch.clone()).await.is_err() {
                // The task ended early: its error comes out of finish().
                return Err(BackupError::RestoreStopped);
            }
        }
        Ok(())
    }

    /// A sender for a blocking reader thread: `blocking_send` to each.
    pub fn senders(&self) -> Vec<mpsc::Sender<Arc<Batch>>> {
        self.senders.clone()
    }

    /// Waits for every region's task; the first error wins.
    pub async fn finish(self) -> Result<Loaded, BackupError> {
        drop(self.senders);
        let mut out = Loaded::new();
        let mut first_error = None;
        for t in self.tasks {
            match t.await {
                Ok(Ok((name, per))) => {
                    out.insert(name, per);
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(BackupError::RestoreTask(e));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

/// Queues a batch for every region from a blocking thread.
pub fn send_blocking(
    senders: &[mpsc::Sender<Arc<Batch>>],
    batch: Batch,
) -> Result<(), BackupError> {
    let batch = Arc::new(batch);
    for tx in senders {
        if tx.blocking_send(batch.clone()).is_err() {
            return Err(BackupError::RestoreStopped);
        }
    }
    Ok(())
}

async fn region_task(
    region: Arc<Region>,
    conn: MultiplexedConnection,
    mut rx: mpsc::Receiver<Arc<Batch>>,
) -> RegionResult {
    let mut per: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut in_flight = FuturesUnordered::new();
    while let Some(batch) = rx.recv().await {
        let issuer_hex = hex(&batch.issuer.0);
        let calls: Vec<_> = batch
            .records
            .chunks(LOAD_CALL_RECORDS)
            .zip(&batch.digests)
            .collect();
        for group in calls.chunks(LOAD_PIPELINE_CALLS) {
            let mut pipe = redis::pipe();
            let mut sent = 0u64;
            for (records, digest) in group {
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(scripts::RESTORE_MANY.get_hash())
                    .arg(3)
                    .arg(region.keys.snapshot_hex(&issuer_hex))
                    .arg(region.keys.issuers())
                    .arg(region.keys.digests())
                    .arg(&issuer_hex)
                    .arg(digest.as_str());
                for (s, r) in *records {
                    cmd.arg(s.as_der_content()).arg(&r.to_bytes()[..]);
                }
                sent += records.len() as u64;
            }
            while in_flight.len() >= LOAD_PIPELINES_IN_FLIGHT {
                if let Some(done) = in_flight.next().await {
                    account(&mut per, &region.name, done)?;
                }
            }
            let mut c = conn.clone();
            let region = region.clone();
            let ih = issuer_hex.clone();
            in_flight.push(async move {
                let r = crate::feed::publish::run_pipeline(&region, &mut c, &pipe).await;
                (ih, sent, r) as Sent
            });
        }
    }
    while let Some(done) = in_flight.next().await {
        account(&mut per, &region.name, done)?;
    }
    Ok((region.name.clone(), per))
}

/// A pipeline's reply: its issuer, the records it sent, each call's changed count.
type Sent = (String, u64, Result<Vec<u64>, FeedError>);

fn account(
    per: &mut BTreeMap<String, (u64, u64)>,
    region: &str,
    (issuer_hex, sent, reply): Sent,
) -> Result<(), BackupError> {
    let changed = reply.map_err(|e| BackupError::in_region(region)(e.into()))?;
    let e = per.entry(issuer_hex).or_default();
    e.0 += sent;
    e.1 += changed.iter().sum::<u64>();
    Ok(())
}
