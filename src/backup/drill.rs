//! The restore test, as a command: `vigil drill restore --backup FILE --scratch-redis URL`.
//!
//! 1. **verify** the backup (every checksum, the manifest);
//! 2. **restore** it into the scratch Redis through the same restore as production (the feed's
//!    merge script, the CRL store's compare-and-set) — nothing is written anywhere else, and
//!    the scratch must not be one of the configured regions;
//! 3. **read back** the scratch and check it holds exactly the backup: per issuer the count,
//!    the revoked and held counts and the order-independent digest equal the backup's (the
//!    join of all its sources), and the digest the merge script kept equals it too;
//! 4. **compare** with every live region: per issuer count and digest; where they differ,
//!    record by record. A live region may be *ahead* of the backup (certificates issued or
//!    revoked since: listed, not a failure); a live region *behind* the backup (a certificate
//!    the backup has that the region lacks, or holds at a lower state) fails the drill: the
//!    live data lost something the backup kept.
//!
//! Each step is timed; the report says pass or fail.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use redis::aio::MultiplexedConnection;

use super::BackupError;
use super::format::{Reader, Section, Tally};
use crate::config::{Config, RedisLink, RegionConfig};
use crate::feed::region::Region;
use crate::limits::FEED_SCAN_COUNT;
use crate::status::{CertRecord, IssuerId, Serial, StatusView, hex};

/// Serials listed per kind of difference (the counts are always complete).
pub const LISTED_DIFFERENCES: usize = 10;

/// One issuer in one live region, against the backup.
#[derive(Debug, Default)]
pub struct LiveCompare {
    /// Certificates the region holds.
    pub records: u64,
    /// Its digest equals the backup's.
    pub identical: bool,
    /// Backed-up certificates the region lacks.
    pub missing: Vec<String>,
    /// Backed-up certificates the region holds at a lower state.
    pub behind: Vec<String>,
    /// Counts of `missing` and `behind` (the lists stop at [`LISTED_DIFFERENCES`]).
    pub missing_count: u64,
    /// See `missing_count`.
    pub behind_count: u64,
    /// Certificates changed since the backup (revoked, held, released, renewed).
    pub ahead: u64,
    /// Certificates the region has that the backup does not (issued since).
    pub newer: u64,
}

/// What the drill found.
#[derive(Debug, Default)]
pub struct DrillReport {
    /// (step, seconds).
    pub timings: Vec<(&'static str, f64)>,
    /// issuer hex → the backup's count.
    pub backup: BTreeMap<String, super::format::IssuerCount>,
    /// issuer hex → what the scratch held after the restore.
    pub restored: BTreeMap<String, super::format::IssuerCount>,
    /// region → issuer hex → comparison.
    pub live: BTreeMap<String, BTreeMap<String, LiveCompare>>,
    /// Why the drill failed (empty: it passed).
    pub failures: Vec<String>,
}

impl DrillReport {
    /// True when nothing failed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

fn tallies(view: &StatusView) -> BTreeMap<String, Tally> {
    view.issuers()
        .into_iter()
        .map(|(id, t)| {
            let mut tally = Tally::default();
            t.for_each(|s, r| tally.add(s, r));
            (hex(&id.0), tally)
        })
        .collect()
}

/// Runs the drill. Errors are things that stop it (an unreadable backup, an unreachable
/// scratch); everything it finds goes into the report.
pub async fn restore_drill(
    cfg: &Config,
    backup: &Path,
    identity: Option<&Path>,
    scratch_url: &str,
    flush_scratch: bool,
) -> Result<DrillReport, BackupError> {
    let mut report = DrillReport::default();
    for r in &cfg.regions {
        let same = r
            .link
            .server_url()
            .is_some_and(|u| u.trim_end_matches('/') == scratch_url.trim_end_matches('/'));
        if same {
            return Err(BackupError::ScratchIsLive {
                url: scratch_url.to_owned(),
                region: r.name.clone(),
            });
        }
    }
    // 1. verify
    let t = Instant::now();
    super::verify(backup, identity).map_err(|e| BackupError::DoesNotVerify(Box::new(e)))?;
    report.timings.push(("verify", t.elapsed().as_secs_f64()));

    // The backup's state: the join of all its sources.
    let t = Instant::now();
    let expected = StatusView::new();
    let mut reader = Reader::new(super::open(backup, identity)?)?;
    while let Some(s) = reader.next_section()? {
        if let Section::Records(rs) = s {
            expected.table(rs.issuer).merge_many(&rs.records);
        }
    }
    let want = tallies(&expected);
    report.backup = want.iter().map(|(k, t)| (k.clone(), t.count())).collect();
    report.timings.push(("load", t.elapsed().as_secs_f64()));

    // 2. restore into the scratch.
    let scratch_cfg = RegionConfig {
        name: "scratch".into(),
        link: RedisLink::server("scratch", scratch_url),
    };
    let mut scfg = cfg.clone();
    scfg.regions = vec![scratch_cfg];
    let scratch = crate::feed::region::regions(&scfg)?
        .pop()
        .ok_or(BackupError::NoScratch)?;
    let mut sc = scratch
        .writer()
        .await
        .map_err(|source| BackupError::ScratchUnreachable {
            url: scratch_url.to_owned(),
            source,
        })?;
    let prefix = cfg.feed.as_ref().map_or("vigil", |f| f.key_prefix.as_str());
    let existing = keys_under(&mut sc, prefix).await?;
    if !existing.is_empty() {
        if !flush_scratch {
            return Err(BackupError::ScratchNotEmpty {
                count: existing.len(),
                prefix: prefix.to_owned(),
                example: existing[0].clone(),
            });
        }
        for chunk in existing.chunks(1000) {
            redis::cmd("UNLINK")
                .arg(chunk)
                .query_async::<()>(&mut sc)
                .await
                .map_err(BackupError::Scratch)?;
        }
    }
    let t = Instant::now();
    super::restore(&scfg, backup, None, identity).await?;
    report.timings.push(("restore", t.elapsed().as_secs_f64()));

    // 3. read back.
    let t = Instant::now();
    let got = StatusView::new();
    let ids: Vec<IssuerId> = expected.issuers().into_iter().map(|(id, _)| id).collect();
    let mut scratch_issuers: Vec<String> = redis::cmd("SMEMBERS")
        .arg(scratch.keys.issuers())
        .query_async(&mut sc)
        .await
        .map_err(BackupError::Scratch)?;
    scratch_issuers.sort();
    for ih in &scratch_issuers {
        if let Some(id) = crate::feed::consume::parse_issuer_hex(ih) {
            for batch in scan(&mut sc, &scratch, id).await? {
                got.table(id).merge_many(&batch);
            }
        }
    }
    let have = tallies(&got);
    report.restored = have.iter().map(|(k, t)| (k.clone(), t.count())).collect();
    if report.restored != report.backup {
        for (ih, want) in &report.backup {
            match report.restored.get(ih) {
                Some(h) if h == want => {}
                Some(h) => report.failures.push(format!(
                    "scratch: issuer {ih}: restored {} certificates ({} revoked, {} held, digest {}), the backup has {} ({} revoked, {} held, digest {})",
                    h.records, h.revoked, h.held, h.digest, want.records, want.revoked, want.held, want.digest
                )),
                None => report.failures.push(format!("scratch: issuer {ih}: nothing restored")),
            }
        }
        for ih in report
            .restored
            .keys()
            .filter(|k| !report.backup.contains_key(*k))
        {
            report
                .failures
                .push(format!("scratch: issuer {ih} is not in the backup"));
        }
    }
    let digests: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(scratch.keys.digests())
        .query_async(&mut sc)
        .await
        .map_err(BackupError::Scratch)?;
    for (ih, want) in &report.backup {
        if digests.get(ih) != Some(&want.digest) {
            report.failures.push(format!(
                "scratch: issuer {ih}: the digest the merge script kept ({}) is not the backup's ({})",
                digests.get(ih).map_or("none", String::as_str),
                want.digest
            ));
        }
    }
    report
        .timings
        .push(("read back", t.elapsed().as_secs_f64()));

    // 4. compare with the live regions.
    let t = Instant::now();
    let live = crate::feed::region::regions(cfg)?;
    for region in &live {
        match compare_region(region, &expected, &ids, &want).await {
            Ok(per) => {
                for (ih, c) in &per {
                    if c.missing_count > 0 || c.behind_count > 0 {
                        report.failures.push(format!(
                            "region {}: issuer {ih}: {} backed-up certificate(s) missing, {} held at a lower state than the backup (live data lost what the backup kept)",
                            region.name, c.missing_count, c.behind_count
                        ));
                    }
                }
                report.live.insert(region.name.clone(), per);
            }
            Err(e) => report
                .failures
                .push(format!("region {}: could not compare: {e}", region.name)),
        }
    }
    report.timings.push(("compare", t.elapsed().as_secs_f64()));
    Ok(report)
}

async fn keys_under(
    c: &mut MultiplexedConnection,
    prefix: &str,
) -> Result<Vec<String>, BackupError> {
    let mut out = Vec::new();
    let mut cursor = "0".to_owned();
    loop {
        let (next, keys): (String, Vec<String>) = redis::cmd("SCAN")
            .arg(&cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(FEED_SCAN_COUNT)
            .query_async(c)
            .await
            .map_err(BackupError::Scratch)?;
        out.extend(keys);
        if next == "0" {
            return Ok(out);
        }
        cursor = next;
    }
}

/// One issuer's snapshot in a region, in HSCAN batches.
async fn scan(
    c: &mut MultiplexedConnection,
    region: &Region,
    issuer: IssuerId,
) -> Result<Vec<Vec<(Serial, CertRecord)>>, BackupError> {
    let key = region.keys.snapshot(&issuer);
    let in_region = BackupError::in_region(&region.name);
    let mut cursor = "0".to_owned();
    let mut out = Vec::new();
    loop {
        let (next, fields): (String, Vec<Vec<u8>>) = redis::cmd("HSCAN")
            .arg(&key)
            .arg(&cursor)
            .arg("COUNT")
            .arg(FEED_SCAN_COUNT)
            .query_async(c)
            .await
            .map_err(|e| in_region(e.into()))?;
        let mut batch = Vec::with_capacity(fields.len() / 2);
        for p in fields.chunks_exact(2) {
            let s = Serial::from_der_content(&p[0])
                .map_err(|e| in_region(BackupError::SnapshotSerial(e)))?;
            let r = CertRecord::from_bytes(&p[1])
                .ok_or_else(|| in_region(BackupError::SnapshotRecord))?;
            batch.push((s, r));
        }
        out.push(batch);
        if next == "0" {
            return Ok(out);
        }
        cursor = next;
    }
}

async fn compare_region(
    region: &Region,
    expected: &StatusView,
    ids: &[IssuerId],
    want: &BTreeMap<String, Tally>,
) -> Result<BTreeMap<String, LiveCompare>, BackupError> {
    let mut c = region.writer().await?;
    let digests: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(region.keys.digests())
        .query_async(&mut c)
        .await?;
    let mut out = BTreeMap::new();
    for id in ids {
        let ih = hex(&id.0);
        let mut cmp = LiveCompare {
            records: region.snapshot_len(id).await?,
            ..LiveCompare::default()
        };
        let want = want.get(&ih).map(Tally::count).unwrap_or_default();
        if digests.get(&ih) == Some(&want.digest) && cmp.records == want.records {
            cmp.identical = true;
            out.insert(ih, cmp);
            continue;
        }
        // Record by record: every backed-up certificate against the region's.
        let table = expected.table(*id);
        let mut present = 0u64;
        for part in 0..64 {
            let records = table.records_partition(part, 64);
            for chunk in records.chunks(FEED_SCAN_COUNT) {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(region.keys.snapshot(id));
                for (s, _) in chunk {
                    cmd.arg(s.as_der_content());
                }
                let live: Vec<Option<Vec<u8>>> = cmd.query_async(&mut c).await?;
                for ((s, mine), theirs) in chunk.iter().zip(live) {
                    let Some(theirs) = theirs.as_deref().and_then(CertRecord::from_bytes) else {
                        cmp.missing_count += 1;
                        if cmp.missing.len() < LISTED_DIFFERENCES {
                            cmp.missing.push(s.to_hex());
                        }
                        continue;
                    };
                    present += 1;
                    if theirs == *mine {
                        continue;
                    }
                    if theirs.join(*mine) == theirs {
                        cmp.ahead += 1;
                    } else {
                        cmp.behind_count += 1;
                        if cmp.behind.len() < LISTED_DIFFERENCES {
                            cmp.behind.push(s.to_hex());
                        }
                    }
                }
            }
        }
        cmp.newer = cmp.records.saturating_sub(present);
        out.insert(ih, cmp);
    }
    Ok(out)
}
