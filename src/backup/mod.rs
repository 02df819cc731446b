//! Backups of the status data: `vigil backup create / verify / restore`.
//!
//! A backup is taken from the feed's regions (each region's snapshot, with the stream id and
//! epoch it was read at), from a replica's checkpoint, or from the single-node journal, and
//! written in the [`format`] to a temporary file that is fsynced and renamed into place.
//! Restoring merges the backup into a region through the restore script
//! ([`crate::feed::scripts::RESTORE_MANY_LUA`], the join of [`crate::status::CertRecord`], as
//! the feed's merge script; [`load`]): a restore never removes or downgrades a newer
//! revocation. It appends no stream entry: replicas pick the records up from the snapshot,
//! through their completeness round, as they do after any gap. CRLs go back through the CRL store's compare-and-set,
//! so a stored number never goes backwards; the next CRL is numbered above both (CRL numbers
//! are build times, raised above the highest seen: [`crate::crl::number`]).

pub mod drill;
mod encryption;
mod error;
pub mod format;
mod health;
pub mod load;

pub use encryption::open;
use encryption::{Sink, parse_recipient};
pub use error::BackupError;
use error::io_at;
pub use health::{
    LAST_SUCCESS_INTERVAL, last_success, last_success_key, record_success, watch_last_success,
    write_metrics_file,
};

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redis::aio::MultiplexedConnection;

use crate::clock::Clock;
use crate::config::Config;
use crate::crl::CrlId;
use crate::feed::CertWrite;
use crate::feed::region::Region;
use crate::status::{CertRecord, Event, IssuerId, Serial, StatusView, hex};
use format::{CrlEntry, Header, Manifest, Position, Reader, Section, Writer};

/// Where a backup is taken from.
pub enum Source<'a> {
    /// Every configured region (or only the one named); a region holding exactly what an
    /// earlier one holds (count and digest of every issuer, read atomically with its stream
    /// position) is not scanned again ([`format::SameAs`]).
    Regions(Option<&'a str>),
    /// Every configured region (or only the one named), each scanned whatever it holds.
    EveryRegion(Option<&'a str>),
    /// A replica's checkpoint file.
    Checkpoint(&'a Path),
    /// The single-node journal.
    Journal,
}

/// A written backup.
pub struct Created {
    /// Its manifest.
    pub manifest: Manifest,
    /// Regions not scanned because they held what another did.
    pub same_as: Vec<format::SameAs>,
    /// Its size in bytes.
    pub bytes: u64,
}

/// SHA-256 of the configuration file (or of nothing for the embedded default).
pub fn config_digest(path: Option<&Path>) -> String {
    let bytes = path.and_then(|p| std::fs::read(p).ok()).unwrap_or_default();
    hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref())
}

pub(crate) fn now_rfc3339(clock: &Clock) -> String {
    time::OffsetDateTime::from_unix_timestamp(clock.now())
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn temp_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into());
    out.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Moves a finished temporary file into place (fsync, rename, fsync of the directory).
fn commit(tmp: &Path, file: File, out: &Path) -> Result<u64, BackupError> {
    let io = io_at(out);
    file.sync_all().map_err(&io)?;
    let bytes = file.metadata().map_err(&io)?.len();
    drop(file);
    std::fs::rename(tmp, out).map_err(&io)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(bytes)
}

/// Writes a backup of `source` to `out`, atomically.
///
/// With `recipient` (an age X25519 recipient, `age1…`), the whole file is encrypted to it as
/// it is written (age's STREAM: authenticated chunks of 64 KiB), so no plaintext reaches the
/// disk; `verify` and `restore` then need the matching identity. The header's and
/// manifest's times are read from `clock`.
pub async fn create(
    cfg: &Config,
    source: Source<'_>,
    out: &Path,
    config_sha256: String,
    recipient: Option<&str>,
    clock: &Clock,
) -> Result<Created, BackupError> {
    let recipient = recipient.map(parse_recipient).transpose()?;
    let tmp = temp_path(out);
    let file = File::create(&tmp).map_err(io_at(&tmp))?;
    let result = async {
        let mut sink = Sink::new(&file, recipient.as_ref())?;
        let mut same_as = Vec::new();
        let manifest =
            write_backup(cfg, source, &mut sink, config_sha256, &mut same_as, clock).await?;
        sink.close().map_err(io_at(&tmp))?;
        Ok::<_, BackupError>((manifest, same_as))
    }
    .await;
    match result {
        Ok((manifest, same_as)) => {
            let bytes = commit(&tmp, file, out)?;
            Ok(Created {
                manifest,
                bytes,
                same_as,
            })
        }
        Err(e) => {
            drop(file);
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

async fn write_backup(
    cfg: &Config,
    source: Source<'_>,
    file: &mut Sink<'_>,
    config_sha256: String,
    same_as: &mut Vec<format::SameAs>,
    clock: &Clock,
) -> Result<Manifest, BackupError> {
    let mut header = Header {
        format: "vigil-backup".into(),
        version: format::VERSION,
        created_at: now_rfc3339(clock),
        source: String::new(),
        config_sha256,
        positions: Vec::new(),
        record_len: CertRecord::ENCODED_LEN as u8,
        same_as: Vec::new(),
    };
    match source {
        Source::Regions(only) | Source::EveryRegion(only) => {
            header.source = "regions".into();
            let regions = chosen_regions(cfg, only)?;
            let mut conns = Vec::new();
            let mut states = Vec::new();
            for r in &regions {
                let mut c = r
                    .writer()
                    .await
                    .map_err(|e| BackupError::in_region(&r.name)(e.into()))?;
                let (p, state) = position(r, &mut c)
                    .await
                    .map_err(BackupError::in_region(&r.name))?;
                header.positions.push(p);
                states.push(state);
                conns.push(c);
            }
            // A region that held, when its position was read, exactly the records of an
            // earlier region that is scanned (the same count and digest of every issuer, the
            // digests the merge scripts keep in the same atomic step as the records) is in
            // the backup as that region: the scan, started after, holds at least what both
            // held then (records only ever join upwards).
            let mut scan = vec![true; regions.len()];
            if matches!(source, Source::Regions(_)) {
                for i in 1..regions.len() {
                    if let Some(j) = (0..i).find(|&j| scan[j] && states[j] == states[i]) {
                        scan[i] = false;
                        header.same_as.push(format::SameAs {
                            source: regions[i].name.clone(),
                            same_as: regions[j].name.clone(),
                            issuers: states[i].clone(),
                        });
                    }
                }
            }
            same_as.clone_from(&header.same_as);
            let mut w = Writer::new(&mut *file, &header)?;
            // Every region is scanned at once, each by its own task on its own connection (each
            // region's Redis scans on its own core); the pages come here through a bounded
            // channel, so the backup holds a few pages whatever the regions hold.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Page>(SCAN_PAGES_QUEUED);
            for (i, (r, c)) in regions.iter().zip(conns).enumerate() {
                if !scan[i] {
                    continue;
                }
                let (tx, r) = (tx.clone(), r.clone());
                tokio::spawn(async move {
                    if let Err(e) = scan_region(&r, c, i, &tx).await {
                        let _ = tx.send(Err(BackupError::in_region(&r.name)(e))).await;
                    }
                });
            }
            drop(tx);
            while let Some(page) = rx.recv().await {
                let (i, issuer, records) = page?;
                let name = regions.get(i).map_or("", |r| r.name.as_str());
                w.records(name, issuer, &records)?;
            }
            for r in cfg
                .regions
                .iter()
                .filter(|r| only.is_none_or(|o| o == r.name))
            {
                backup_crls(cfg, r, &mut w).await?;
            }
            w.set_finished_at(crate::clock::rfc3339_ms(clock.now_ms()));
            Ok(w.finish()?.0)
        }
        Source::Checkpoint(path) => {
            header.source = "checkpoint".into();
            let loaded = crate::feed::checkpoint::load(path)
                .map_err(|source| BackupError::Checkpoint {
                    path: path.to_owned(),
                    source,
                })?
                .ok_or_else(|| BackupError::NoCheckpoint(path.to_owned()))?;
            let mut cursors: Vec<_> = loaded.cursors.iter().collect();
            cursors.sort_by(|a, b| a.0.cmp(b.0));
            for (region, c) in cursors {
                header.positions.push(Position {
                    source: region.clone(),
                    epoch: c.epoch.clone(),
                    stream_id: c.id.to_string(),
                });
            }
            write_view(&loaded.view, "checkpoint", header, &mut *file, clock)
        }
        Source::Journal => {
            header.source = "journal".into();
            let view = StatusView::new();
            let metrics = crate::telemetry::Metrics::new();
            let mut reader = crate::journal::JournalReader::new(cfg.journal_path());
            crate::app::replay_journal(&mut reader, &view, &metrics)
                .map_err(BackupError::Journal)?;
            header.positions.push(Position {
                source: "journal".into(),
                epoch: String::new(),
                stream_id: format!("{}-0", reader.offset()),
            });
            write_view(&view, "journal", header, &mut *file, clock)
        }
    }
}

/// Writes a view partition by partition (a copy of 1/64 of an issuer at a time).
fn write_view(
    view: &StatusView,
    source: &str,
    header: Header,
    out: impl std::io::Write,
    clock: &Clock,
) -> Result<Manifest, BackupError> {
    let mut w = Writer::new(out, &header)?;
    let mut issuers = view.issuers();
    issuers.sort_by_key(|(id, _)| *id);
    for (id, table) in issuers {
        for part in 0..64 {
            for (s, r) in table.records_partition(part, 64) {
                w.record(source, id, &s, &r)?;
            }
        }
    }
    w.set_finished_at(crate::clock::rfc3339_ms(clock.now_ms()));
    Ok(w.finish()?.0)
}

fn chosen_regions(cfg: &Config, only: Option<&str>) -> Result<Vec<Arc<Region>>, BackupError> {
    if cfg.regions.is_empty() {
        return Err(BackupError::NoRegions);
    }
    let all = crate::feed::region::regions(cfg)?;
    let chosen: Vec<_> = all
        .into_iter()
        .filter(|r| only.is_none_or(|o| o == r.name))
        .collect();
    if chosen.is_empty() {
        return Err(BackupError::NoSuchRegion(
            only.unwrap_or_default().to_owned(),
        ));
    }
    Ok(chosen)
}

/// Per issuer hex: the snapshot's record count and digest.
type RegionState = BTreeMap<String, (u64, String)>;

/// The region's epoch, and in one atomic step ([`crate::feed::scripts::STATE`]) the id of its
/// stream's newest entry and every issuer's record count and digest: every event up to that id
/// is in the snapshot scanned after it (the snapshot is written in the same script as the
/// stream).
async fn position(
    r: &Region,
    c: &mut MultiplexedConnection,
) -> Result<(Position, RegionState), BackupError> {
    let epoch: Option<String> = redis::cmd("GET").arg(r.keys.epoch()).query_async(c).await?;
    let reply: Vec<redis::Value> = crate::feed::scripts::STATE
        .key(r.keys.stream())
        .key(r.keys.issuers())
        .key(r.keys.digests())
        .arg(r.keys.snapshot_hex(""))
        .invoke_async(c)
        .await?;
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let mut it = reply.iter();
    let at = it.next().and_then(text).ok_or(BackupError::BadState)?;
    let mut state = RegionState::new();
    while let (Some(i), Some(n), Some(d)) = (it.next(), it.next(), it.next()) {
        let (Some(i), redis::Value::Int(n)) = (text(i), n) else {
            return Err(BackupError::BadState);
        };
        state.insert(
            i,
            (u64::try_from(*n).unwrap_or(0), text(d).unwrap_or_default()),
        );
    }
    Ok((
        Position {
            source: r.name.clone(),
            epoch: epoch.unwrap_or_default(),
            stream_id: at,
        },
        state,
    ))
}

/// Snapshot fields asked for per `HSCAN` of a backup (a hint to Redis): a page is a few
/// milliseconds of Redis time.
const BACKUP_SCAN_COUNT: usize = 5000;
/// Pages queued between the regions' scans and the writer.
const SCAN_PAGES_QUEUED: usize = 16;

/// One page of a region's snapshot: the region's index, the issuer, the records.
type Page = Result<(usize, IssuerId, Vec<(Serial, CertRecord)>), BackupError>;

async fn scan_region(
    r: &Region,
    mut c: MultiplexedConnection,
    index: usize,
    tx: &tokio::sync::mpsc::Sender<Page>,
) -> Result<(), BackupError> {
    let mut issuers: Vec<String> = redis::cmd("SMEMBERS")
        .arg(r.keys.issuers())
        .query_async(&mut c)
        .await?;
    issuers.sort();
    for ih in issuers {
        let Some(issuer) = crate::feed::consume::parse_issuer_hex(&ih) else {
            return Err(BackupError::BadIssuerId(ih));
        };
        let of_issuer = |e| BackupError::Issuer {
            issuer: ih.clone(),
            source: Box::new(e),
        };
        let key = r.keys.snapshot(&issuer);
        let mut cursor = "0".to_owned();
        loop {
            let (next, fields): (String, Vec<Vec<u8>>) = redis::cmd("HSCAN")
                .arg(&key)
                .arg(&cursor)
                .arg("COUNT")
                .arg(BACKUP_SCAN_COUNT)
                .query_async(&mut c)
                .await?;
            let mut page = Vec::with_capacity(fields.len() / 2);
            for pair in fields.chunks_exact(2) {
                let serial = Serial::from_der_content(&pair[0])
                    .map_err(|e| of_issuer(BackupError::SnapshotSerial(e)))?;
                let record = CertRecord::from_bytes(&pair[1])
                    .ok_or_else(|| of_issuer(BackupError::SnapshotRecord))?;
                page.push((serial, record));
            }
            if tx.send(Ok((index, issuer, page))).await.is_err() {
                // The writer stopped (its error is reported there).
                return Ok(());
            }
            if next == "0" {
                break;
            }
            cursor = next;
        }
    }
    Ok(())
}

/// The CRL ids of every configured issuer: each scope's complete CRL and its delta.
fn crl_ids(cfg: &Config) -> Vec<CrlId> {
    let mut out = Vec::new();
    for i in &cfg.issuers {
        for scope in cfg.crl_of(&i.name).sharding().scopes() {
            for delta in [false, true] {
                out.push(CrlId {
                    issuer: i.name.clone(),
                    shard: scope,
                    delta,
                });
            }
        }
    }
    out
}

async fn backup_crls<W: std::io::Write>(
    cfg: &Config,
    r: &crate::config::RegionConfig,
    w: &mut Writer<W>,
) -> Result<(), BackupError> {
    let store = crate::crl_service::redis_store::Region::from_config(r, cfg.crl.redis_timeout)
        .map_err(BackupError::CrlStore)?;
    for id in crl_ids(cfg) {
        let Some((number, der)) = store.fetch(&id).await.map_err(BackupError::CrlStore)? else {
            continue;
        };
        let entry = CrlEntry {
            source: r.name.clone(),
            path: id.path(),
            issuer: id.issuer.clone(),
            shard: id.shard,
            delta: id.delta,
            number,
            this_update: this_update(&der).unwrap_or(0),
        };
        w.crl(&entry, &der)?;
    }
    Ok(())
}

fn this_update(der: &[u8]) -> Option<i64> {
    use der::Decode;
    let crl = x509_cert::crl::CertificateList::from_der(der).ok()?;
    i64::try_from(crl.tbs_cert_list.this_update.to_unix_duration().as_secs()).ok()
}

// === verify ===

/// What `verify` found.
pub struct Verified {
    /// The header.
    pub header: Header,
    /// The manifest (checked).
    pub manifest: Manifest,
}

/// Reads the whole file, checking every section's checksum, the manifest's counts and digests
/// and the whole-file SHA-256. Names the section that broke.
pub fn verify(path: &Path, identity: Option<&Path>) -> Result<Verified, BackupError> {
    let mut r = Reader::new(open(path, identity)?)?;
    let mut header = None;
    while let Some(s) = r.next_section()? {
        if let Section::Header(h) = s {
            header = Some(h);
        }
    }
    let manifest = r.manifest().cloned().ok_or(BackupError::NoManifest)?;
    Ok(Verified {
        header: header.ok_or(BackupError::NoHeader)?,
        manifest,
    })
}

// === restore ===

/// What a restore did in one region.
#[derive(Debug, Default)]
pub struct Restored {
    /// issuer hex → (records sent, records that changed the region's snapshot).
    pub issuers: BTreeMap<String, (u64, u64)>,
    /// issuer hex → records not sent because another source of the backup holds exactly the
    /// same records of that issuer (same count and digest, which verify checked).
    pub identical: BTreeMap<String, u64>,
    /// CRLs stored, and CRLs the region already had at that number or newer.
    pub crls_stored: u64,
    /// CRLs the region already had at that number or newer.
    pub crls_newer_there: u64,
}

/// Sections to skip, and the records skipped per issuer hex.
type Identical = (
    std::collections::HashSet<(String, IssuerId)>,
    BTreeMap<String, u64>,
);

/// The (source, issuer) sections a restore need not send: where two sources of a backup hold
/// the same records of an issuer (the counts and digest the manifest gives and verify checked
/// equal), the first source's records are the union of both.
fn identical_sources(m: &Manifest) -> Identical {
    let mut kept: BTreeMap<&str, Vec<&format::IssuerCount>> = BTreeMap::new();
    let mut skip = std::collections::HashSet::new();
    let mut skipped: BTreeMap<String, u64> = BTreeMap::new();
    for (source, issuers) in &m.counts {
        for (ih, c) in issuers {
            let seen = kept.entry(ih.as_str()).or_default();
            if seen.contains(&c) {
                if let Some(id) = crate::feed::consume::parse_issuer_hex(ih) {
                    skip.insert((source.clone(), id));
                    *skipped.entry(ih.clone()).or_default() += c.records;
                }
            } else {
                seen.push(c);
            }
        }
    }
    (skip, skipped)
}

/// Merges the backup at `path` into every region (or the one named), after verifying the whole
/// file: a damaged backup restores nothing.
///
/// The second pass reads the file on a blocking thread and hands each records section to
/// every region's loader task ([`load`]); a source whose records of an issuer are identical to
/// an earlier source's are not sent again ([`identical_sources`]). CRLs go through the CRL
/// store's compare-and-set as they are read.
pub async fn restore(
    cfg: &Config,
    path: &Path,
    only: Option<&str>,
    identity: Option<&Path>,
) -> Result<BTreeMap<String, Restored>, BackupError> {
    let verified = verify(path, identity)?;
    let regions = chosen_regions(cfg, only)?;
    let conns = writers(&regions).await?;
    let stores = cfg
        .regions
        .iter()
        .filter(|r| only.is_none_or(|o| o == r.name))
        .map(|r| crate::crl_service::redis_store::Region::from_config(r, cfg.crl.redis_timeout))
        .collect::<Result<Vec<_>, _>>()
        .map_err(BackupError::CrlStore)?;
    let (skip, identical) = identical_sources(&verified.manifest);
    let loader = load::Loader::start(&regions, conns);
    let senders = loader.senders();
    let handle = tokio::runtime::Handle::current();
    let (path_owned, identity_owned) = (path.to_owned(), identity.map(Path::to_owned));
    let sha256 = verified.manifest.sha256.clone();
    let reading = tokio::task::spawn_blocking(move || {
        let mut crls: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut reader = Reader::new(open(&path_owned, identity_owned.as_deref())?)?;
        reader.trust(sha256, skip);
        while let Some(section) = reader.next_section()? {
            match section {
                Section::Header(_) => {}
                Section::Records(rs) => {
                    load::send_blocking(&senders, load::Batch::new(rs.issuer, rs.records))?;
                }
                Section::Crl(entry, der) => {
                    let id = CrlId {
                        issuer: entry.issuer.clone(),
                        shard: entry.shard,
                        delta: entry.delta,
                    };
                    let der = bytes::Bytes::from(der);
                    for s in &stores {
                        let o = handle
                            .block_on(s.store(
                                &id,
                                der.clone(),
                                entry.number,
                                entry.this_update,
                                None,
                                None,
                                None,
                            ))
                            .map_err(BackupError::CrlStore)?;
                        let e = crls.entry(s.name.clone()).or_default();
                        match o {
                            crate::crl_service::redis_store::StoreOutcome::Stored => e.0 += 1,
                            _ => e.1 += 1,
                        }
                    }
                }
            }
        }
        Ok::<_, BackupError>(crls)
    });
    let read = reading.await.map_err(BackupError::Reading)?;
    // A region task's error explains a reader that stopped because that task ended.
    let loaded = loader.finish().await?;
    let crls = read?;
    let mut out: BTreeMap<String, Restored> = BTreeMap::new();
    for r in &regions {
        out.insert(
            r.name.clone(),
            Restored {
                issuers: loaded.get(&r.name).cloned().unwrap_or_default(),
                identical: identical.clone(),
                crls_stored: crls.get(&r.name).map_or(0, |c| c.0),
                crls_newer_there: crls.get(&r.name).map_or(0, |c| c.1),
            },
        );
    }
    Ok(out)
}

/// The feed writes that put `records` into a region: each record with the events that give it.
pub fn cert_writes(
    issuer: IssuerId,
    records: &[(Serial, CertRecord)],
    origin: &str,
    now_ms: i64,
) -> Vec<CertWrite> {
    records
        .iter()
        .map(|(serial, record)| CertWrite {
            issuer,
            serial: *serial,
            record: *record,
            events: record
                .kinds()
                .into_iter()
                .map(|kind| {
                    Event {
                        issuer,
                        serial: *serial,
                        kind,
                        origin: origin.to_owned(),
                        created_at_ms: now_ms,
                    }
                    .to_bytes()
                })
                .collect(),
        })
        .collect()
}

// === point in time ===

/// The state as of a time: a backup finished before it, joined with the archive's events up
/// to it.
pub struct PointInTime {
    /// The backup's header.
    pub header: Header,
    /// When the backup finished (RFC 3339).
    pub backup_finished_at: String,
    /// What the archive added.
    pub replayed: crate::archive::replay::Replayed,
    /// The state.
    pub view: StatusView,
}

/// Rebuilds the state as of `until_ms` from the backup at `path` (finished before that time)
/// and the archive in `archive`. Both are checked whole before anything is used.
pub fn state_at(
    path: &Path,
    identity: Option<&Path>,
    archive: &Path,
    until_ms: i64,
) -> Result<PointInTime, BackupError> {
    let verified = verify(path, identity)?;
    let finished = if verified.manifest.finished_at.is_empty() {
        verified.header.created_at.clone()
    } else {
        verified.manifest.finished_at.clone()
    };
    let finished_ms =
        crate::clock::parse_rfc3339_ms(&finished).map_err(|source| BackupError::BackupTime {
            path: path.to_owned(),
            source,
        })?;
    if finished_ms > until_ms {
        return Err(BackupError::BackupAfterTime {
            path: path.to_owned(),
            finished,
            until: crate::clock::rfc3339_ms(until_ms),
        });
    }
    let view = StatusView::new();
    let mut reader = Reader::new(open(path, identity)?)?;
    while let Some(section) = reader.next_section()? {
        if let Section::Records(rs) = section {
            view.table(rs.issuer).merge_many(&rs.records);
        }
    }
    let replayed = crate::archive::replay::replay_until(archive, until_ms, &view)?;
    Ok(PointInTime {
        header: verified.header,
        backup_finished_at: finished,
        replayed,
        view,
    })
}

/// Merges a whole view into every region (or the one named), through the restore script
/// ([`load`]): a join, so nothing newer in a region is removed or downgraded.
pub async fn merge_view(
    cfg: &Config,
    view: &StatusView,
    only: Option<&str>,
) -> Result<BTreeMap<String, Restored>, BackupError> {
    let regions = chosen_regions(cfg, only)?;
    let conns = writers(&regions).await?;
    let loader = load::Loader::start(&regions, conns);
    let mut issuers = view.issuers();
    issuers.sort_by_key(|(id, _)| *id);
    let mut sending = Ok(());
    'all: for (issuer, table) in issuers {
        for part in 0..64 {
            let records = table.records_partition(part, 64);
            for chunk in records.chunks(format::BACKUP_SECTION_RECORDS) {
                if let Err(e) = loader.send(load::Batch::new(issuer, chunk.to_vec())).await {
                    sending = Err(e);
                    break 'all;
                }
            }
        }
    }
    let loaded = loader.finish().await?;
    sending?;
    Ok(regions
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                Restored {
                    issuers: loaded.get(&r.name).cloned().unwrap_or_default(),
                    ..Restored::default()
                },
            )
        })
        .collect())
}

/// Every region's writing connection, in order.
async fn writers(regions: &[Arc<Region>]) -> Result<Vec<MultiplexedConnection>, BackupError> {
    let mut conns = Vec::new();
    for r in regions {
        conns.push(
            r.writer()
                .await
                .map_err(|e| BackupError::in_region(&r.name)(e.into()))?,
        );
    }
    Ok(conns)
}

/// Writes a view as a backup file (`source` names where it came from), atomically, dated by
/// `clock`.
pub fn write_view_file(
    view: &StatusView,
    source: &str,
    positions: Vec<Position>,
    config_sha256: String,
    out: &Path,
    clock: &Clock,
) -> Result<Created, BackupError> {
    let header = Header {
        format: "vigil-backup".into(),
        version: format::VERSION,
        created_at: now_rfc3339(clock),
        source: source.to_owned(),
        config_sha256,
        positions,
        record_len: CertRecord::ENCODED_LEN as u8,
        same_as: Vec::new(),
    };
    let tmp = temp_path(out);
    let file = File::create(&tmp).map_err(io_at(&tmp))?;
    match write_view(
        view,
        source,
        header,
        BufWriter::with_capacity(1 << 20, &file),
        clock,
    ) {
        Ok(manifest) => {
            let bytes = commit(&tmp, file, out)?;
            Ok(Created {
                manifest,
                bytes,
                same_as: Vec::new(),
            })
        }
        Err(e) => {
            drop(file);
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::status::{EventKind, RevocationReason};

    #[test]
    fn a_backup_is_dated_by_the_clock_handed_in_and_refused_for_an_earlier_time() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("b.vgb");
        let view = StatusView::new();
        let rec = CertRecord::from_event(&EventKind::Revoked {
            time: 9,
            reason: RevocationReason::KeyCompromise,
        });
        view.table(IssuerId([1; 32]))
            .merge_many(&[(Serial::from_magnitude(&[5]).unwrap(), rec)]);
        let at_ms = 1_764_806_400_250;
        let clock = Clock::manual(at_ms);
        write_view_file(&view, "test", Vec::new(), String::new(), &out, &clock).unwrap();
        let v = verify(&out, None).unwrap();
        assert_eq!(v.header.created_at, "2025-12-04T00:00:00Z");
        assert_eq!(v.manifest.finished_at, crate::clock::rfc3339_ms(at_ms));
        assert_eq!(v.manifest.counts["test"].len(), 1);

        // A point in time before the backup finished is refused by what it is, before the
        // archive is read.
        let e = state_at(&out, None, &tmp.path().join("no-archive"), at_ms - 1)
            .err()
            .unwrap();
        assert!(
            matches!(&e, BackupError::BackupAfterTime { finished, .. }
                if *finished == crate::clock::rfc3339_ms(at_ms)),
            "{e}"
        );
        // At its time, the archive is read: there is none.
        let e = state_at(&out, None, &tmp.path().join("no-archive"), at_ms)
            .err()
            .unwrap();
        assert!(matches!(e, BackupError::Archive(_)), "{e}");

        let metrics = tmp.path().join("backup.prom");
        let created = Created {
            manifest: v.manifest,
            same_as: Vec::new(),
            bytes: 1,
        };
        write_metrics_file(&metrics, &created, 2.0, &clock).unwrap();
        let text = std::fs::read_to_string(&metrics).unwrap();
        assert!(
            text.contains(&format!(
                "{} 1764806400.250\n",
                crate::telemetry::BACKUP_LAST_SUCCESS
            )),
            "{text}"
        );
    }

    #[test]
    fn an_encrypted_backup_without_an_identity_is_refused_by_variant() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("enc.vgb");
        std::fs::write(&path, b"age-encryption.org/v1\n").unwrap();
        let e = open(&path, None).err().unwrap();
        assert!(
            matches!(&e, BackupError::NeedIdentity(p) if *p == path),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("give the identity file with --identity")
        );
        let e = parse_recipient("age1nope").err().unwrap();
        assert!(matches!(e, BackupError::Recipient { .. }), "{e}");
    }
}
