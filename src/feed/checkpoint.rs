//! The local checkpoint: the status view and the per-region cursors, so a replica restarts and
//! answers while every Redis is down, and resumes each stream where it stopped.
//!
//! ```text
//! file     = magic body crc
//! magic    = "VIGILCP2" (written), or "VIGILCP1" (read: written before CRL scopes)
//! body     = fresh_at_ms:i64 BE | n_cursors:u16 BE | cursor* | n_issuers:u32 BE | issuer*
//! cursor   = name_len:u8 | name | epoch_len:u8 | epoch | ms:u64 BE | seq:u64 BE
//! issuer   = id:[32] | count_hint:u64 BE | chunk* | 0:u32 BE
//! chunk    = n:u32 BE (1..=65536) | len:u32 BE | record{n} (len bytes)
//! record   = serial_len:u8 (1..=21) | serial | CertRecord (11 bytes, `to_fixed_bytes`;
//!            9 bytes in VIGILCP1)
//! crc      = CRC-32 of magic and body, u32 BE
//! ```
//!
//! Written to a temporary file in the same directory, synced, renamed over the old one, and the
//! directory synced: a crash leaves the old or the new checkpoint, never a mix. The cursors are
//! read *before* the view, so the view holds at least everything up to each cursor; events after
//! a cursor that are also in the view are re-read on restart and change nothing (the join is
//! idempotent). Loading reads into a fresh view and hands it over only when the CRC matches; any
//! damage is an error the caller turns into a warning and a full bootstrap.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Cursor, StreamId};
use crate::limits::{MAX_CHECKPOINT_ISSUERS, MAX_ORIGIN_BYTES, MAX_SERIAL_OCTETS};
use crate::status::{CertRecord, IssuerId, Serial, StatusView};

const MAGIC: &[u8; 8] = b"VIGILCP2";
/// The magic of checkpoints written before CRL scopes were recorded: 9-byte records, still read.
const MAGIC_V1: &[u8; 8] = b"VIGILCP1";
/// Records per chunk.
const CHUNK: usize = 64 * 1024;
/// Records copied out of a table per pass when writing: bounds the extra memory (33 bytes a
/// record) and how long each pass holds the table's read lock.
pub const PASS: usize = 1 << 20;

/// Checkpoint failures.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file system said no.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is damaged or not a checkpoint.
    #[error("checkpoint {path} is corrupt: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
}

/// A loaded checkpoint.
pub struct Loaded {
    /// The view it held.
    pub view: StatusView,
    /// Per-region cursors.
    pub cursors: HashMap<String, Cursor>,
    /// When (ms) the view was last known current with some region.
    pub fresh_at_ms: i64,
    /// Certificates loaded.
    pub certificates: usize,
}

/// Writes a checkpoint of `view` and `cursors` atomically to `path`; returns the certificates
/// written. Blocking: run it off the reactor.
pub fn write(
    path: &Path,
    view: &StatusView,
    cursors: &HashMap<String, Cursor>,
    fresh_at_ms: i64,
) -> Result<usize, CheckpointError> {
    let io_err = |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err)?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "checkpoint".into()),
        std::process::id()
    ));
    let result = (|| {
        let file = File::create(&tmp)?;
        let mut w = CrcWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
        };
        w.write_all(MAGIC)?;
        w.write_all(&fresh_at_ms.to_be_bytes())?;
        let mut names: Vec<&String> = cursors.keys().collect();
        names.sort();
        w.write_all(&(names.len() as u16).to_be_bytes())?;
        for name in names {
            let c = &cursors[name];
            write_short(&mut w, name.as_bytes())?;
            write_short(&mut w, c.epoch.as_bytes())?;
            w.write_all(&c.id.ms.to_be_bytes())?;
            w.write_all(&c.id.seq.to_be_bytes())?;
        }
        let issuers = view.issuers();
        w.write_all(&(issuers.len() as u32).to_be_bytes())?;
        let mut total = 0usize;
        let mut buf = Vec::with_capacity(CHUNK * 31);
        for (id, table) in issuers {
            let len = table.len();
            w.write_all(&id.0)?;
            w.write_all(&(len as u64).to_be_bytes())?;
            let parts = len.div_ceil(PASS).clamp(1, 256);
            for part in 0..parts {
                let records = table.records_partition(part, parts);
                for chunk in records.chunks(CHUNK) {
                    buf.clear();
                    buf.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
                    buf.extend_from_slice(&[0; 4]);
                    for (s, r) in chunk {
                        let octets = s.as_der_content();
                        buf.push(octets.len() as u8);
                        buf.extend_from_slice(octets);
                        buf.extend_from_slice(&r.to_fixed_bytes());
                    }
                    let bytes = (buf.len() - 8) as u32;
                    buf[4..8].copy_from_slice(&bytes.to_be_bytes());
                    w.write_all(&buf)?;
                    total += chunk.len();
                }
            }
            w.write_all(&0u32.to_be_bytes())?;
        }
        let crc = w.crc.clone().finalize();
        let mut file = w.inner.into_inner().map_err(|e| e.into_error())?;
        file.write_all(&crc.to_be_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(total)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}

fn write_short(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let n = bytes.len().min(MAX_ORIGIN_BYTES);
    w.write_all(&[n as u8])?;
    w.write_all(&bytes[..n])
}

struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct CrcReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

/// Loads the checkpoint at `path`. `Ok(None)` when there is none.
pub fn load(path: &Path) -> Result<Option<Loaded>, CheckpointError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CheckpointError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let corrupt = |why: String| CheckpointError::Corrupt {
        path: path.to_owned(),
        why,
    };
    let len = file
        .metadata()
        .map_err(|source| CheckpointError::Io {
            path: path.to_owned(),
            source,
        })?
        .len();
    if len < (MAGIC.len() + 8 + 2 + 4 + 4) as u64 {
        return Err(corrupt("too short".into()));
    }
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut body = CrcReader {
        inner: (&mut reader).take(len - 4),
        crc: crc32fast::Hasher::new(),
    };
    // Each record takes at least 11 bytes: no count from the file may promise more.
    let parsed = parse(&mut body, len / 11).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => corrupt("truncated".into()),
        _ => corrupt(e.to_string()),
    })?;
    // Everything up to the CRC must have been read.
    let mut rest = [0u8; 1];
    if body.read(&mut rest).map_err(|e| corrupt(e.to_string()))? != 0 {
        return Err(corrupt("trailing bytes".into()));
    }
    let computed = body.crc.clone().finalize();
    let mut crc = [0u8; 4];
    reader
        .read_exact(&mut crc)
        .map_err(|_| corrupt("truncated".into()))?;
    if u32::from_be_bytes(crc) != computed {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(Some(parsed))
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
}

fn parse(r: &mut impl Read, max_records: u64) -> io::Result<Loaded> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    let record_len = match &magic {
        m if m == MAGIC => CertRecord::ENCODED_LEN,
        m if m == MAGIC_V1 => CertRecord::LEGACY_LEN,
        _ => return Err(invalid("not a vigil checkpoint (bad magic)")),
    };
    let fresh_at_ms = i64::from_be_bytes(read_array(r)?);
    let n_cursors = u16::from_be_bytes(read_array(r)?);
    let mut cursors = HashMap::new();
    for _ in 0..n_cursors {
        let name = read_short_str(r)?;
        let epoch = read_short_str(r)?;
        let ms = u64::from_be_bytes(read_array(r)?);
        let seq = u64::from_be_bytes(read_array(r)?);
        cursors.insert(
            name,
            Cursor {
                epoch,
                id: StreamId { ms, seq },
            },
        );
    }
    let n_issuers = u32::from_be_bytes(read_array(r)?) as usize;
    if n_issuers > MAX_CHECKPOINT_ISSUERS {
        return Err(invalid("too many issuers"));
    }
    let view = StatusView::new();
    let mut certificates = 0usize;
    let mut batch: Vec<(Serial, CertRecord)> = Vec::with_capacity(CHUNK);
    let mut raw = Vec::new();
    for _ in 0..n_issuers {
        let id = IssuerId(read_array(r)?);
        let hint = u64::from_be_bytes(read_array(r)?);
        let table: Arc<_> = view.table(id);
        // A hint is only a hint: never reserve more than the file can hold.
        table.reserve(hint.min(max_records) as usize);
        loop {
            let n = u32::from_be_bytes(read_array(r)?) as usize;
            if n == 0 {
                break;
            }
            if n > CHUNK {
                return Err(invalid("chunk too large"));
            }
            let bytes = u32::from_be_bytes(read_array(r)?) as usize;
            if bytes < n * (2 + record_len) || bytes > n * (1 + MAX_SERIAL_OCTETS + record_len) {
                return Err(invalid("bad chunk length"));
            }
            raw.resize(bytes, 0);
            r.read_exact(&mut raw)?;
            batch.clear();
            let mut rest = raw.as_slice();
            for _ in 0..n {
                let (&len, tail) = rest.split_first().ok_or_else(|| invalid("short chunk"))?;
                let len = len as usize;
                if len == 0 || len > MAX_SERIAL_OCTETS || tail.len() < len + record_len {
                    return Err(invalid("bad serial length"));
                }
                let (octets, tail) = tail.split_at(len);
                let (rec, tail) = tail.split_at(record_len);
                rest = tail;
                let serial = Serial::from_der_content(octets).map_err(|_| invalid("bad serial"))?;
                let record = CertRecord::from_bytes(rec).ok_or_else(|| invalid("bad record"))?;
                batch.push((serial, record));
            }
            if !rest.is_empty() {
                return Err(invalid("chunk length does not match its records"));
            }
            table.merge_many(&batch);
            certificates += n;
        }
    }
    Ok(Loaded {
        view,
        cursors,
        fresh_at_ms,
        certificates,
    })
}

fn read_array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn read_short_str(r: &mut impl Read) -> io::Result<String> {
    let [len] = read_array::<1>(r)?;
    let len = len as usize;
    if len > MAX_ORIGIN_BYTES {
        return Err(invalid("name too long"));
    }
    let mut b = vec![0u8; len];
    r.read_exact(&mut b)?;
    String::from_utf8(b).map_err(|_| invalid("name is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Event, EventKind, RevocationReason};

    fn sample_view(n: u32) -> StatusView {
        let v = StatusView::new();
        for i in 1..=n {
            let kind = if i % 3 == 0 {
                EventKind::Revoked {
                    time: i64::from(i),
                    reason: RevocationReason::KeyCompromise,
                }
            } else {
                EventKind::Issued {
                    not_after: 2_000_000_000,
                }
            };
            v.apply(&Event {
                issuer: IssuerId([(i % 2) as u8; 32]),
                serial: Serial::from_magnitude(&i.to_be_bytes()).expect("serial"),
                kind,
                origin: "t".into(),
                created_at_ms: 0,
            });
        }
        v
    }

    fn dump(v: &StatusView) -> Vec<(IssuerId, Serial, [u8; 11])> {
        let mut out = Vec::new();
        for (id, t) in v.issuers() {
            for (s, r) in t.records() {
                out.push((id, s, r.to_fixed_bytes()));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn round_trip_and_every_damage_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cp");
        assert!(load(&path).expect("missing is fine").is_none());
        let view = sample_view(300);
        let mut cursors = HashMap::new();
        cursors.insert(
            "a".to_owned(),
            Cursor {
                epoch: "e1".into(),
                id: StreamId { ms: 17, seq: 2 },
            },
        );
        assert_eq!(write(&path, &view, &cursors, 1234).expect("write"), 300);
        let loaded = load(&path).expect("load").expect("present");
        assert_eq!(loaded.cursors, cursors);
        assert_eq!(loaded.fresh_at_ms, 1234);
        assert_eq!(loaded.certificates, 300);
        assert_eq!(dump(&loaded.view), dump(&view));

        let good = std::fs::read(&path).expect("read");
        for i in (0..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            std::fs::write(&path, &bad).expect("write");
            assert!(load(&path).is_err(), "flipped byte {i} went unnoticed");
        }
        for cut in [0, 5, 20, good.len() / 2, good.len() - 1] {
            std::fs::write(&path, &good[..cut]).expect("write");
            assert!(load(&path).is_err(), "cut at {cut} went unnoticed");
        }
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&path, &longer).expect("write");
        assert!(load(&path).is_err());
    }

    #[test]
    fn recorded_crl_shards_survive_and_version_1_checkpoints_still_load() {
        use crate::status::CrlScope;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cp");
        let view = sample_view(30);
        for i in [3u32, 4] {
            view.apply(&Event {
                issuer: IssuerId([(i % 2) as u8; 32]),
                serial: Serial::from_magnitude(&i.to_be_bytes()).expect("serial"),
                kind: EventKind::CrlShard {
                    scope: CrlScope::Shard(i as u16),
                },
                origin: "t".into(),
                created_at_ms: 0,
            });
        }
        write(&path, &view, &HashMap::new(), 0).expect("write");
        let loaded = load(&path).expect("load").expect("present");
        assert_eq!(dump(&loaded.view), dump(&view));
        let serial = Serial::from_magnitude(&[3]).expect("serial");
        let rec = loaded.view.table(IssuerId([1; 32])).record(&serial);
        assert_eq!(rec.and_then(|r| r.crl_scope()), Some(CrlScope::Shard(3)));

        // a checkpoint as vigil wrote it before CRL scopes: VIGILCP1, 9-byte records
        let mut v1 = Vec::new();
        v1.extend_from_slice(MAGIC_V1);
        v1.extend_from_slice(&7i64.to_be_bytes());
        v1.extend_from_slice(&0u16.to_be_bytes());
        v1.extend_from_slice(&1u32.to_be_bytes());
        v1.extend_from_slice(&[9; 32]);
        v1.extend_from_slice(&1u64.to_be_bytes());
        v1.extend_from_slice(&1u32.to_be_bytes());
        v1.extend_from_slice(&11u32.to_be_bytes());
        v1.extend_from_slice(&[1, 0x05, 0, 0, 0, 100, 0, 0, 0, 50, 1]);
        v1.extend_from_slice(&0u32.to_be_bytes());
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_be_bytes());
        std::fs::write(&path, &v1).expect("write");
        let loaded = load(&path).expect("load").expect("present");
        let rec = loaded
            .view
            .table(IssuerId([9; 32]))
            .record(&Serial::from_magnitude(&[5]).expect("serial"))
            .expect("record");
        assert_eq!(rec.not_after(), Some(100));
        assert_eq!(rec.revocation().map(|r| r.time), Some(50));
        assert_eq!(rec.crl_scope(), None);
    }

    #[test]
    fn large_tables_are_written_in_partitions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cp");
        let view = sample_view(70_000);
        assert_eq!(
            write(&path, &view, &HashMap::new(), 0).expect("write"),
            70_000
        );
        let loaded = load(&path).expect("load").expect("present");
        assert_eq!(dump(&loaded.view), dump(&view));
    }
}
