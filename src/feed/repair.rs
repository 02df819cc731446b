//! Making every region hold every event, and heartbeats.
//!
//! A write acknowledged by a quorum may have missed a region (it was down, or timed out). Two
//! paths bring it back in line, both run by every replica every `feed.repair_interval` for each
//! pair of reachable regions S (source) and T (target), each under a short Redis lease so one
//! replica does the work at a time (doing it twice is harmless, only wasted):
//!
//! 1. **Hinted handoff** (the common case): the writer left the missed events in S under
//!    `hints:T`. They are merged into T with the same script as a normal write, then deleted
//!    from S.
//! 2. **Full copy** (a region that lost its data, or hints that overflowed `maxlen`): T's
//!    `synced` hash records, per source region, the source's epoch whose data has been copied
//!    into T. When it does not match S's current epoch — T is new, T lost its data (its `synced`
//!    went with it), or S lost its data and was rebuilt — or S flags `resync:T`, a replica whose
//!    view holds all of S (it has a cursor in S's current epoch) merges its whole view into T,
//!    then records S's epoch in T's `synced`. Records T already holds write nothing.
//!
//! 3. **Anti-entropy** (anything else, e.g. a writer that died after writing to one region and
//!    before leaving its hints): each region keeps, per issuer, a digest of its snapshot (XOR of
//!    SHA-1 of every serial ‖ record, kept by the merge script). When the digests of reachable
//!    regions disagree and stay the same for a whole repair interval (so in-flight writes are not
//!    mistaken for divergence), a replica whose view holds all of them merges that issuer's
//!    records into each.
//!
//! Both paths only ever add information (the merge is a join), so racing writers, replicas and
//! repairs cannot undo one another.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use redis::aio::MultiplexedConnection;

use super::consume::{FeedState, heartbeat_payload, parse_entries, parse_issuer_hex, random_id};
use super::publish::{merge, run_pipeline};
use super::region::Region;
use super::{FeedError, group_by_certificate, scripts, value_str};
use crate::clock::Clock;
use crate::limits::FEED_PIPELINE_CHUNK;
use crate::status::{Event, IssuerId, StatusView};
use crate::telemetry;

/// How long a repair lease lasts without renewal.
const LEASE: Duration = Duration::from_secs(30);

/// Runs repair rounds for this replica.
pub struct Repairer {
    state: Arc<FeedState>,
    regions: Vec<Arc<Region>>,
    maxlen: u64,
    origin: String,
    owner: String,
    /// Issuers whose digests disagreed in the last round, with each region's digest.
    suspects: HashMap<String, Vec<(String, Option<String>)>>,
}

impl Repairer {
    /// A repairer over `regions`, writing repaired events with `origin`.
    pub fn new(
        state: Arc<FeedState>,
        regions: Vec<Arc<Region>>,
        maxlen: u64,
        origin: &str,
    ) -> Self {
        Repairer {
            state,
            regions,
            maxlen,
            origin: origin.to_owned(),
            owner: random_id(),
            suspects: HashMap::new(),
        }
    }

    /// Runs a round every `interval`, forever.
    pub async fn run(mut self, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            self.round().await;
        }
    }

    /// One pass over every (source, target) pair of connected regions, then the digest
    /// comparison.
    pub async fn round(&mut self) {
        for t in &self.regions {
            if !self.connected(t) {
                continue;
            }
            if let Err(e) = self.repair_target(t).await {
                t.reset_writer().await;
                tracing::warn!(region = %t.name, error = %e, "feed repair round failed");
            }
        }
        if let Err(e) = self.anti_entropy().await {
            tracing::warn!(error = %e, "feed anti-entropy round failed");
        }
    }

    /// Compares the regions' per-issuer digests; copies an issuer into every region when they
    /// disagreed the same way in the previous round too.
    async fn anti_entropy(&mut self) -> Result<(), FeedError> {
        let mut regions = Vec::new();
        for r in &self.regions {
            if !self.connected(r) {
                continue;
            }
            let Ok(mut c) = r.writer().await else {
                continue;
            };
            let epoch: Option<String> = redis::cmd("GET")
                .arg(r.keys.epoch())
                .query_async(&mut c)
                .await?;
            // Only a view that holds all of every compared region may repair them.
            if epoch.is_none() || self.state.cursor(&r.name).map(|c| c.epoch) != epoch {
                self.suspects.clear();
                return Ok(());
            }
            let digests: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(r.keys.digests())
                .query_async(&mut c)
                .await?;
            regions.push((r.clone(), c, digests));
        }
        if regions.len() < 2 {
            self.suspects.clear();
            return Ok(());
        }
        let issuers: BTreeSet<&String> = regions.iter().flat_map(|(_, _, d)| d.keys()).collect();
        let mut mismatched = HashMap::new();
        for issuer in issuers {
            let tuple: Vec<(String, Option<String>)> = regions
                .iter()
                .map(|(r, _, d)| (r.name.clone(), d.get(issuer).cloned()))
                .collect();
            if tuple.iter().all(|(_, d)| *d == tuple[0].1) {
                continue;
            }
            mismatched.insert(issuer.clone(), tuple);
        }
        let stale: Vec<String> = mismatched
            .iter()
            .filter(|(i, t)| self.suspects.get(*i) == Some(t))
            .map(|(i, _)| i.clone())
            .collect();
        self.suspects = mismatched;
        for hex in stale {
            let Some(issuer) = parse_issuer_hex(&hex) else {
                continue;
            };
            tracing::warn!(issuer = %hex, "feed regions disagree on this issuer; merging this replica's view into each");
            for (r, c, _) in &mut regions {
                if !self.acquire(r, c, &r.keys.sync_lock()).await? {
                    continue;
                }
                let result = self.copy(r, c, Some(issuer)).await;
                self.release(r, c, &r.keys.sync_lock()).await;
                let changed = result?;
                metrics::counter!(telemetry::FEED_REPAIRED, "region" => r.name.clone(), "kind" => "anti_entropy")
                    .increment(changed as u64);
                tracing::info!(region = %r.name, issuer = %hex, changed, "anti-entropy merge done");
            }
            self.suspects.remove(&hex);
        }
        Ok(())
    }

    fn connected(&self, r: &Region) -> bool {
        self.state
            .health
            .region(&r.name)
            .is_some_and(|h| h.is_connected())
    }

    async fn repair_target(&self, t: &Arc<Region>) -> Result<(), FeedError> {
        let mut tc = t.writer().await?;
        let synced: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(t.keys.synced())
            .query_async(&mut tc)
            .await?;
        let mut full_reasons = Vec::new();
        let mut marks = Vec::new();
        let mut resync_flags = Vec::new();
        for s in &self.regions {
            if Arc::ptr_eq(s, t) || !self.connected(s) {
                continue;
            }
            let mut sc = match s.writer().await {
                Ok(c) => c,
                Err(_) => continue,
            };
            let epoch: Option<String> = redis::cmd("GET")
                .arg(s.keys.epoch())
                .query_async(&mut sc)
                .await?;
            let Some(epoch) = epoch else { continue };
            // Only a view holding all of S may vouch for S's data being in T.
            let holds_s = self.state.cursor(&s.name).is_some_and(|c| c.epoch == epoch);
            if !holds_s {
                continue;
            }
            if synced.get(&s.name) != Some(&epoch) {
                full_reasons.push(format!("{} has not been copied from {}", t.name, s.name));
                marks.push((s.name.clone(), epoch.clone()));
            }
            let flagged: bool = redis::cmd("EXISTS")
                .arg(s.keys.resync(&t.name))
                .query_async(&mut sc)
                .await?;
            if flagged {
                full_reasons.push(format!("hints for {} in {} overflowed", t.name, s.name));
                resync_flags.push(s.clone());
            } else {
                self.hand_off(s, &mut sc, t, &mut tc).await?;
            }
        }
        if full_reasons.is_empty() {
            return Ok(());
        }
        if !self.acquire(t, &mut tc, &t.keys.sync_lock()).await? {
            return Ok(());
        }
        tracing::info!(region = %t.name, why = %full_reasons.join("; "), "copying this replica's view into the region");
        let result = self.copy(t, &mut tc, None).await;
        self.release(t, &mut tc, &t.keys.sync_lock()).await;
        let copied = result?;
        for (source, epoch) in &marks {
            let _: i64 = redis::cmd("HSET")
                .arg(t.keys.synced())
                .arg(source)
                .arg(epoch)
                .query_async(&mut tc)
                .await?;
        }
        for s in resync_flags {
            let mut sc = s.writer().await?;
            let _: i64 = redis::cmd("DEL")
                .arg(s.keys.resync(&t.name))
                .query_async(&mut sc)
                .await?;
        }
        tracing::info!(region = %t.name, changed = copied, "region is in line with this replica's view");
        Ok(())
    }

    /// Merges S's hints for T into T, then deletes them from S.
    async fn hand_off(
        &self,
        s: &Region,
        sc: &mut MultiplexedConnection,
        t: &Region,
        tc: &mut MultiplexedConnection,
    ) -> Result<(), FeedError> {
        let key = s.keys.hints(&t.name);
        let pending: u64 = redis::cmd("XLEN").arg(&key).query_async(sc).await?;
        if pending == 0 {
            return Ok(());
        }
        let lock = s.keys.handoff_lock(&t.name);
        if !self.acquire(s, sc, &lock).await? {
            return Ok(());
        }
        let mut moved = 0usize;
        let result: Result<(), FeedError> = async {
            loop {
                let reply: Value = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(FEED_PIPELINE_CHUNK)
                    .query_async(sc)
                    .await?;
                let entries = parse_entries(reply)?;
                if entries.is_empty() {
                    return Ok(());
                }
                let mut events = Vec::new();
                let mut ids = Vec::new();
                for (id, fields) in entries {
                    ids.push(id.to_string());
                    for (f, v) in fields {
                        if f == b"e" {
                            match Event::decode(&v) {
                                Ok(e) => events.push(e),
                                Err(e) => tracing::warn!(region = %s.name, error = %e, "skipping an undecodable hint"),
                            }
                        }
                    }
                }
                merge(t, tc, &group_by_certificate(&events), self.maxlen).await?;
                let _: i64 = redis::cmd("XDEL").arg(&key).arg(&ids).query_async(sc).await?;
                moved += events.len();
                self.renew(s, sc, &lock).await?;
            }
        }
        .await;
        self.release(s, sc, &lock).await;
        if moved > 0 {
            metrics::counter!(telemetry::FEED_REPAIRED, "region" => t.name.clone(), "kind" => "hint")
                .increment(moved as u64);
            tracing::info!(from = %s.name, to = %t.name, events = moved, "handed off missed events");
        }
        result
    }

    /// Merges every record of the view (of one issuer, or all) into T under T's sync lease;
    /// returns the records T did not hold yet.
    async fn copy(
        &self,
        t: &Region,
        tc: &mut MultiplexedConnection,
        only: Option<IssuerId>,
    ) -> Result<usize, FeedError> {
        let lease = Lease::new(t.keys.sync_lock(), self.owner.clone());
        let changed = merge_view_into(
            &self.state.view,
            t,
            tc,
            only,
            WriteBack {
                origin: &self.origin,
                maxlen: self.maxlen,
                at_ms: self.state.clock.now_ms(),
            },
            &lease,
        )
        .await?;
        if only.is_none() {
            metrics::counter!(telemetry::FEED_REPAIRED, "region" => t.name.clone(), "kind" => "full")
                .increment(changed as u64);
        }
        Ok(changed)
    }

    async fn acquire(
        &self,
        _r: &Region,
        c: &mut MultiplexedConnection,
        key: &str,
    ) -> Result<bool, FeedError> {
        Lease::new(key.to_owned(), self.owner.clone())
            .acquire(c)
            .await
    }

    async fn renew(
        &self,
        r: &Region,
        c: &mut MultiplexedConnection,
        key: &str,
    ) -> Result<(), FeedError> {
        Lease::new(key.to_owned(), self.owner.clone())
            .renew(r, c)
            .await
    }

    async fn release(&self, r: &Region, c: &mut MultiplexedConnection, key: &str) {
        Lease::new(key.to_owned(), self.owner.clone())
            .release(r, c)
            .await
    }
}

/// A short lease in one region (`SET NX PX`), so that one replica at a time does a repair.
pub struct Lease {
    key: String,
    owner: String,
}

impl Lease {
    /// The lease `key`, taken as `owner`.
    pub fn new(key: String, owner: String) -> Self {
        Lease { key, owner }
    }

    /// Takes the lease; false when another holder has it.
    pub async fn acquire(&self, c: &mut MultiplexedConnection) -> Result<bool, FeedError> {
        let v: Value = redis::cmd("SET")
            .arg(&self.key)
            .arg(&self.owner)
            .arg("NX")
            .arg("PX")
            .arg(LEASE.as_millis() as u64)
            .query_async(c)
            .await?;
        Ok(matches!(v, Value::Okay) || value_str(&v) == Some("OK"))
    }

    /// Extends the lease; an error when it was lost.
    pub async fn renew(&self, r: &Region, c: &mut MultiplexedConnection) -> Result<(), FeedError> {
        let held: i64 = scripts::RENEW
            .key(&self.key)
            .arg(&self.owner)
            .arg(LEASE.as_millis() as u64)
            .invoke_async(c)
            .await?;
        if held == 0 {
            return Err(FeedError::Protocol(format!(
                "lost the repair lease {} in {}",
                self.key, r.name
            )));
        }
        Ok(())
    }

    /// Gives the lease up (it expires anyway).
    pub async fn release(&self, r: &Region, c: &mut MultiplexedConnection) {
        let res: Result<i64, _> = scripts::RELEASE
            .key(&self.key)
            .arg(&self.owner)
            .invoke_async(c)
            .await;
        if let Err(e) = res {
            tracing::debug!(region = %r.name, error = %e, "releasing a repair lease (it expires anyway)");
        }
    }
}

/// How records written back into a region are stamped and bounded.
#[derive(Debug, Clone, Copy)]
pub struct WriteBack<'a> {
    /// This replica's origin.
    pub origin: &'a str,
    /// `feed.maxlen`.
    pub maxlen: u64,
    /// The time the writes carry (Unix milliseconds).
    pub at_ms: i64,
}

/// Merges every record of `view` (of one issuer, or all) into region T with the normal merge
/// script, renewing `lease` (which the caller holds) as it goes; returns the records T did not
/// hold yet. Used by repair (full copy, anti-entropy) and by re-seeding a region that lost its
/// data ([`super::consume`]). Large tables are copied out in partitions, so the view's memory
/// is never doubled and no table lock is held for long.
pub async fn merge_view_into(
    view: &StatusView,
    t: &Region,
    tc: &mut MultiplexedConnection,
    only: Option<IssuerId>,
    stamp: WriteBack<'_>,
    lease: &Lease,
) -> Result<usize, FeedError> {
    let WriteBack {
        origin,
        maxlen,
        at_ms,
    } = stamp;
    let mut changed = 0;
    for (issuer, table) in view.issuers() {
        if only.is_some_and(|o| o != issuer) {
            continue;
        }
        let parts = table.len().div_ceil(super::checkpoint::PASS).clamp(1, 256);
        for part in 0..parts {
            let records = table.records_partition(part, parts);
            for chunk in records.chunks(FEED_PIPELINE_CHUNK * 8) {
                let writes = crate::backup::cert_writes(issuer, chunk, origin, at_ms);
                changed += merge(t, tc, &writes, maxlen).await?;
                lease.renew(t, tc).await?;
            }
        }
    }
    Ok(changed)
}

/// Writes a heartbeat to `region` every `interval` (at most one per region per interval across
/// all replicas, through a lease), so idle feeds stay measurable.
pub async fn run_heartbeats(
    region: Arc<Region>,
    maxlen: u64,
    origin: String,
    interval: Duration,
    clock: Clock,
) {
    // A lease a little shorter than the interval: one heartbeat per interval even with jitter.
    let lease_ms = (interval.as_millis() as u64 * 9 / 10).max(1);
    loop {
        let result = async {
            let mut c = region.writer().await?;
            let mut pipe = redis::pipe();
            pipe.cmd("EVALSHA")
                .arg(scripts::HEARTBEAT.get_hash())
                .arg(2)
                .arg(region.keys.stream())
                .arg(region.keys.heartbeat())
                .arg(maxlen)
                .arg(lease_ms)
                .arg(heartbeat_payload(&origin, clock.now_ms()));
            run_pipeline::<Vec<Value>>(&region, &mut c, &pipe).await
        }
        .await;
        if let Err(e) = result {
            region.reset_writer().await;
            tracing::debug!(region = %region.name, error = %e, "heartbeat not written");
        }
        tokio::time::sleep(interval).await;
    }
}
