//! Backups of the status data: `vigil backup create / verify / restore`.
//!
//! A backup is taken from the feed's regions (each region's snapshot, with the stream id and
//! epoch it was read at), from a replica's checkpoint, or from the single-node journal, and
//! written in the [`format`] to a temporary file that is fsynced and renamed into place.
//! Restoring merges the backup into a region through the feed's own merge script
//! ([`crate::feed::publish::merge`], the join of [`crate::status::CertRecord`]): a restore never
//! removes or downgrades a newer revocation, and replicas pick the records up from the stream
//! or the snapshot as they do any write. CRLs go back through the CRL store's compare-and-set,
//! so a stored number never goes backwards; the next CRL is numbered above both (CRL numbers
//! are build times, raised above the highest seen: [`crate::crl::number`]).

pub mod format;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redis::aio::MultiplexedConnection;

use crate::config::Config;
use crate::crl::CrlId;
use crate::feed::region::Region;
use crate::feed::CertWrite;
use crate::status::{hex, CertRecord, Event, IssuerId, Serial, StatusView};
use format::{BackupError, CrlEntry, Header, Manifest, Position, Reader, Section, Writer};

/// Where a backup is taken from.
pub enum Source<'a> {
    /// Every configured region (or only the one named).
    Regions(Option<&'a str>),
    /// A replica's checkpoint file.
    Checkpoint(&'a Path),
    /// The single-node journal.
    Journal,
}

/// A written backup.
pub struct Created {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its size in bytes.
    pub bytes: u64,
}

/// SHA-256 of the configuration file (or of nothing for the embedded default).
pub fn config_digest(path: Option<&Path>) -> String {
    let bytes = path.and_then(|p| std::fs::read(p).ok()).unwrap_or_default();
    hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref())
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::from_unix_timestamp(crate::clock::unix_now_ms() / 1000)
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
fn commit(tmp: &Path, file: File, out: &Path) -> Result<u64, String> {
    let io = |e: std::io::Error| format!("{}: {e}", out.display());
    file.sync_all().map_err(io)?;
    let bytes = file.metadata().map_err(io)?.len();
    drop(file);
    std::fs::rename(tmp, out).map_err(io)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(bytes)
}

/// Writes a backup of `source` to `out`, atomically.
pub async fn create(
    cfg: &Config,
    source: Source<'_>,
    out: &Path,
    config_sha256: String,
) -> Result<Created, String> {
    let tmp = temp_path(out);
    let file = File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let result = write_backup(cfg, source, &file, config_sha256).await;
    match result {
        Ok(manifest) => {
            let bytes = commit(&tmp, file, out)?;
            Ok(Created { manifest, bytes })
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
    file: &File,
    config_sha256: String,
) -> Result<Manifest, String> {
    let berr = |e: BackupError| e.to_string();
    let mut header = Header {
        format: "vigil-backup".into(),
        version: format::VERSION,
        created_at: now_rfc3339(),
        source: String::new(),
        config_sha256,
        positions: Vec::new(),
        record_len: CertRecord::ENCODED_LEN as u8,
    };
    match source {
        Source::Regions(only) => {
            header.source = "regions".into();
            let regions = chosen_regions(cfg, only)?;
            let mut conns = Vec::new();
            for r in &regions {
                let mut c = r
                    .writer()
                    .await
                    .map_err(|e| format!("region {}: {e}", r.name))?;
                let p = position(r, &mut c)
                    .await
                    .map_err(|e| format!("region {}: {e}", r.name))?;
                header.positions.push(p);
                conns.push(c);
            }
            let mut w =
                Writer::new(BufWriter::with_capacity(1 << 20, file), &header).map_err(berr)?;
            for (r, c) in regions.iter().zip(conns.iter_mut()) {
                scan_region(r, c, &mut w)
                    .await
                    .map_err(|e| format!("region {}: {e}", r.name))?;
            }
            for r in cfg
                .regions
                .iter()
                .filter(|r| only.is_none_or(|o| o == r.name))
            {
                backup_crls(cfg, r, &mut w).await?;
            }
            Ok(w.finish().map_err(berr)?.0)
        }
        Source::Checkpoint(path) => {
            header.source = "checkpoint".into();
            let loaded = crate::feed::checkpoint::load(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .ok_or_else(|| format!("{}: no checkpoint there", path.display()))?;
            let mut cursors: Vec<_> = loaded.cursors.iter().collect();
            cursors.sort_by(|a, b| a.0.cmp(b.0));
            for (region, c) in cursors {
                header.positions.push(Position {
                    source: region.clone(),
                    epoch: c.epoch.clone(),
                    stream_id: c.id.to_string(),
                });
            }
            write_view(&loaded.view, "checkpoint", header, file)
        }
        Source::Journal => {
            header.source = "journal".into();
            let view = StatusView::new();
            let metrics = crate::telemetry::Metrics::new();
            let mut reader = crate::status::journal::JournalReader::new(cfg.journal_path());
            crate::app::replay_journal(&mut reader, &view, &metrics)?;
            header.positions.push(Position {
                source: "journal".into(),
                epoch: String::new(),
                stream_id: format!("{}-0", reader.offset()),
            });
            write_view(&view, "journal", header, file)
        }
    }
}

/// Writes a view partition by partition (a copy of 1/64 of an issuer at a time).
fn write_view(
    view: &StatusView,
    source: &str,
    header: Header,
    file: &File,
) -> Result<Manifest, String> {
    let berr = |e: BackupError| e.to_string();
    let mut w = Writer::new(BufWriter::with_capacity(1 << 20, file), &header).map_err(berr)?;
    let mut issuers = view.issuers();
    issuers.sort_by_key(|(id, _)| *id);
    for (id, table) in issuers {
        for part in 0..64 {
            for (s, r) in table.records_partition(part, 64) {
                w.record(source, id, &s, &r).map_err(berr)?;
            }
        }
    }
    Ok(w.finish().map_err(berr)?.0)
}

fn chosen_regions(cfg: &Config, only: Option<&str>) -> Result<Vec<Arc<Region>>, String> {
    if cfg.regions.is_empty() {
        return Err("no [[region]] is configured (use --from-checkpoint, or a config without a feed for the journal)".into());
    }
    let all = crate::feed::region::regions(cfg).map_err(|e| e.to_string())?;
    let chosen: Vec<_> = all
        .into_iter()
        .filter(|r| only.is_none_or(|o| o == r.name))
        .collect();
    if chosen.is_empty() {
        return Err(format!("no region is named {:?}", only.unwrap_or_default()));
    }
    Ok(chosen)
}

/// The region's epoch and the id of its stream's newest entry: every event up to it is in the
/// snapshot scanned after it (the snapshot is written in the same script as the stream).
async fn position(
    r: &Region,
    c: &mut MultiplexedConnection,
) -> Result<Position, redis::RedisError> {
    let epoch: Option<String> = redis::cmd("GET").arg(r.keys.epoch()).query_async(c).await?;
    let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(r.keys.stream())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(c)
        .await?;
    Ok(Position {
        source: r.name.clone(),
        epoch: epoch.unwrap_or_default(),
        stream_id: last
            .ids
            .first()
            .map_or_else(|| "0-0".to_owned(), |e| e.id.clone()),
    })
}

async fn scan_region<W: std::io::Write>(
    r: &Region,
    c: &mut MultiplexedConnection,
    w: &mut Writer<W>,
) -> Result<(), String> {
    let mut issuers: Vec<String> = redis::cmd("SMEMBERS")
        .arg(r.keys.issuers())
        .query_async(c)
        .await
        .map_err(|e| e.to_string())?;
    issuers.sort();
    for ih in issuers {
        let Some(issuer) = crate::feed::consume::parse_issuer_hex(&ih) else {
            return Err(format!("malformed issuer id {ih:?} in the issuers set"));
        };
        let key = r.keys.snapshot(&issuer);
        let mut cursor = "0".to_owned();
        loop {
            let (next, fields): (String, Vec<Vec<u8>>) = redis::cmd("HSCAN")
                .arg(&key)
                .arg(&cursor)
                .arg("COUNT")
                .arg(crate::limits::FEED_SCAN_COUNT)
                .query_async(c)
                .await
                .map_err(|e| e.to_string())?;
            for pair in fields.chunks_exact(2) {
                let serial = Serial::from_der_content(&pair[0])
                    .map_err(|e| format!("issuer {ih}: a serial in the snapshot: {e}"))?;
                let record = CertRecord::from_bytes(&pair[1])
                    .ok_or_else(|| format!("issuer {ih}: a malformed record in the snapshot"))?;
                w.record(&r.name, issuer, &serial, &record)
                    .map_err(|e| e.to_string())?;
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
) -> Result<(), String> {
    let store = crate::crl_service::redis_store::Region::from_config(r, cfg.crl.redis_timeout)?;
    for id in crl_ids(cfg) {
        let Some((number, der)) = store.fetch(&id).await? else {
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
        w.crl(&entry, &der).map_err(|e| e.to_string())?;
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
pub fn verify(path: &Path) -> Result<Verified, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut r = Reader::new(BufReader::with_capacity(1 << 20, file)).map_err(|e| e.to_string())?;
    let mut header = None;
    while let Some(s) = r.next_section().map_err(|e| e.to_string())? {
        if let Section::Header(h) = s {
            header = Some(h);
        }
    }
    let manifest = r.manifest().cloned().ok_or("no manifest")?;
    Ok(Verified {
        header: header.ok_or("no header")?,
        manifest,
    })
}

// === restore ===

/// What a restore did in one region.
#[derive(Debug, Default)]
pub struct Restored {
    /// issuer hex → (records sent, records that changed the region's snapshot).
    pub issuers: BTreeMap<String, (u64, u64)>,
    /// CRLs stored, and CRLs the region already had at that number or newer.
    pub crls_stored: u64,
    /// CRLs the region already had at that number or newer.
    pub crls_newer_there: u64,
}

/// Merges the backup at `path` into every region (or the one named), after verifying the whole
/// file: a damaged backup restores nothing.
pub async fn restore(
    cfg: &Config,
    path: &Path,
    only: Option<&str>,
) -> Result<BTreeMap<String, Restored>, String> {
    verify(path)?;
    let regions = chosen_regions(cfg, only)?;
    let maxlen = cfg.feed.as_ref().map_or(100_000, |f| f.maxlen);
    let mut conns = Vec::new();
    for r in &regions {
        conns.push(
            r.writer()
                .await
                .map_err(|e| format!("region {}: {e}", r.name))?,
        );
    }
    let stores = cfg
        .regions
        .iter()
        .filter(|r| only.is_none_or(|o| o == r.name))
        .map(|r| crate::crl_service::redis_store::Region::from_config(r, cfg.crl.redis_timeout))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out: BTreeMap<String, Restored> = BTreeMap::new();
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reader =
        Reader::new(BufReader::with_capacity(1 << 20, file)).map_err(|e| e.to_string())?;
    let origin = format!("restore@{}", now_rfc3339());
    let now = crate::clock::unix_now_ms();
    while let Some(section) = reader.next_section().map_err(|e| e.to_string())? {
        match section {
            Section::Header(_) => {}
            Section::Records(rs) => {
                let writes = cert_writes(rs.issuer, &rs.records, &origin, now);
                for (r, c) in regions.iter().zip(conns.iter_mut()) {
                    let changed = crate::feed::publish::merge(r, c, &writes, maxlen)
                        .await
                        .map_err(|e| format!("region {}: {e}", r.name))?;
                    let e = out
                        .entry(r.name.clone())
                        .or_default()
                        .issuers
                        .entry(hex(&rs.issuer.0))
                        .or_default();
                    e.0 += writes.len() as u64;
                    e.1 += changed as u64;
                }
            }
            Section::Crl(entry, der) => {
                let id = CrlId {
                    issuer: entry.issuer.clone(),
                    shard: entry.shard,
                    delta: entry.delta,
                };
                for s in &stores {
                    let o = s
                        .store(
                            &id,
                            bytes::Bytes::from(der.clone()),
                            entry.number,
                            entry.this_update,
                            None,
                            None,
                            None,
                        )
                        .await?;
                    let e = out.entry(s.name.clone()).or_default();
                    match o {
                        crate::crl_service::redis_store::StoreOutcome::Stored => e.crls_stored += 1,
                        _ => e.crls_newer_there += 1,
                    }
                }
            }
        }
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
