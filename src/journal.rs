//! The local append-only journal: the feed of a single node, kept across restarts.
//!
//! ```text
//! file   = magic record*
//! magic  = "VIGILJ1\n"
//! record = len:u32 LE | crc32(payload):u32 LE | payload (one encoded Event, len <= MAX_EVENT_BYTES)
//! ```
//!
//! Writers take an exclusive `flock` on the file, append whole records and `fsync` before they
//! return, so an acknowledged event is on disk. A crash can leave a torn last record: readers stop
//! before it (and at start-up say so with a warning), and the next writer truncates it away. A
//! bad record that is *not* last is corruption: readers stop there and writers refuse to append,
//! so nothing after it is destroyed.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::limits::MAX_EVENT_BYTES;
use crate::status::Event;

const MAGIC: &[u8; 8] = b"VIGILJ1\n";
const RECORD_HEADER: usize = 8;

/// Journal failures.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file system said no.
    #[error("journal {path}: {source}")]
    Io {
        /// The journal file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file does not start with the journal magic.
    #[error("journal {0}: not a vigil journal (bad magic)")]
    BadMagic(PathBuf),
    /// A record other than the last is damaged.
    #[error(
        "journal {path}: corrupt record at byte {offset}; refusing to append after it (restore the file from a replica or backup)"
    )]
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// Where the bad record starts.
        offset: u64,
    },
}

/// What a read pass found.
#[derive(Debug, Default)]
pub struct ReadBatch {
    /// Events read, in file order.
    pub events: Vec<Event>,
    /// Records with a good checksum that did not decode (unknown version or kind): skipped.
    pub undecodable: usize,
    /// The pass ended at an incomplete last record (a write in progress, or a torn one).
    pub torn_tail: bool,
    /// The pass ended at a damaged record followed by more data, at this offset.
    pub corrupt_at: Option<u64>,
}

/// Reads a journal from where the last pass stopped.
pub struct JournalReader {
    path: PathBuf,
    offset: u64,
}

impl JournalReader {
    /// A reader positioned at the first record. The file need not exist yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        JournalReader {
            path: path.into(),
            offset: MAGIC.len() as u64,
        }
    }

    /// Reads every complete record appended since the last call.
    pub fn read_new(&mut self) -> Result<ReadBatch, JournalError> {
        let io_err = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ReadBatch::default()),
            Err(e) => return Err(io_err(e)),
        };
        let len = file.metadata().map_err(io_err)?.len();
        if len < MAGIC.len() as u64 {
            return Ok(ReadBatch::default());
        }
        check_magic(&mut file, &self.path)?;
        let (batch, end) = scan(&mut file, self.offset, len).map_err(io_err)?;
        self.offset = end;
        Ok(batch)
    }

    /// Byte offset of the next record to read.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// Appends events, durably.
pub struct JournalWriter {
    path: PathBuf,
    file: File,
    end: u64,
}

impl JournalWriter {
    /// Opens (creating if needed) the journal for appending. A torn last record is truncated with
    /// a warning; a corrupt record elsewhere is an error.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, JournalError> {
        let path = path.into();
        let io_err = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        let mut w = JournalWriter {
            path: path.clone(),
            file,
            end: 0,
        };
        w.file.lock().map_err(io_err)?;
        let r = w.catch_up();
        let _ = w.file.unlock();
        r?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            sync_dir(dir);
        }
        Ok(w)
    }

    /// Appends `events` as one write and syncs it to disk before returning.
    pub fn append(&mut self, events: &[Event]) -> Result<(), JournalError> {
        let mut buf = Vec::with_capacity(events.len() * 96);
        for e in events {
            let payload = e.to_bytes();
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            buf.extend_from_slice(&payload);
        }
        let path = self.path.clone();
        let io_err = |source| JournalError::Io { path, source };
        self.file.lock().map_err(|source| JournalError::Io {
            path: self.path.clone(),
            source,
        })?;
        let result = self.catch_up().and_then(|()| {
            self.file
                .seek(SeekFrom::Start(self.end))
                .and_then(|_| self.file.write_all(&buf))
                .and_then(|()| self.file.sync_data())
                .map_err(io_err)
        });
        if result.is_ok() {
            self.end += buf.len() as u64;
        }
        let _ = self.file.unlock();
        result
    }

    /// Under the lock: finds the end of the last good record (other writers may have appended),
    /// writes the magic into a new file and truncates a torn tail.
    fn catch_up(&mut self) -> Result<(), JournalError> {
        let path = self.path.clone();
        let io_err = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        let len = self.file.metadata().map_err(io_err)?.len();
        if len == 0 {
            self.file.seek(SeekFrom::Start(0)).map_err(io_err)?;
            self.file.write_all(MAGIC).map_err(io_err)?;
            self.file.sync_all().map_err(io_err)?;
            self.end = MAGIC.len() as u64;
            return Ok(());
        }
        if len < MAGIC.len() as u64 {
            return Err(JournalError::BadMagic(path));
        }
        if self.end == 0 {
            check_magic(&mut self.file, &path)?;
            self.end = MAGIC.len() as u64;
        }
        if self.end == len {
            return Ok(());
        }
        let (batch, end) = scan(&mut self.file, self.end, len).map_err(io_err)?;
        if let Some(offset) = batch.corrupt_at {
            return Err(JournalError::Corrupt { path, offset });
        }
        if batch.torn_tail {
            tracing::warn!(journal = %path.display(), offset = end, dropped_bytes = len - end,
                "journal ends in a torn record (interrupted write); dropping it");
            self.file.set_len(end).map_err(io_err)?;
            self.file.sync_all().map_err(io_err)?;
        }
        self.end = end;
        Ok(())
    }
}

fn check_magic(file: &mut File, path: &Path) -> Result<(), JournalError> {
    let mut magic = [0u8; 8];
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_exact(&mut magic))
        .map_err(|source| JournalError::Io {
            path: path.to_owned(),
            source,
        })?;
    if &magic != MAGIC {
        return Err(JournalError::BadMagic(path.to_owned()));
    }
    Ok(())
}

/// Reads records from `start` to `len`; returns what it found and the end of the last good one.
fn scan(file: &mut File, start: u64, len: u64) -> io::Result<(ReadBatch, u64)> {
    let mut batch = ReadBatch::default();
    file.seek(SeekFrom::Start(start))?;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut pos = start;
    let mut payload = Vec::with_capacity(MAX_EVENT_BYTES);
    while pos < len {
        let remaining = len - pos;
        if remaining < RECORD_HEADER as u64 {
            batch.torn_tail = true;
            break;
        }
        let mut header = [0u8; RECORD_HEADER];
        reader.read_exact(&mut header)?;
        let rec_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as u64;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let rec_end = pos + RECORD_HEADER as u64 + rec_len;
        if rec_len as usize > MAX_EVENT_BYTES {
            // A length no writer produces: the last record torn mid-header, or damage.
            if rec_end >= len || remaining < 64 {
                batch.torn_tail = true;
            } else {
                batch.corrupt_at = Some(pos);
            }
            break;
        }
        if rec_end > len {
            batch.torn_tail = true;
            break;
        }
        payload.resize(rec_len as usize, 0);
        reader.read_exact(&mut payload)?;
        if crc32fast::hash(&payload) != crc {
            if rec_end == len {
                batch.torn_tail = true;
            } else {
                batch.corrupt_at = Some(pos);
            }
            break;
        }
        match Event::decode(&payload) {
            Ok(e) => batch.events.push(e),
            Err(err) => {
                tracing::warn!(offset = pos, error = %err, "skipping undecodable journal record");
                batch.undecodable += 1;
            }
        }
        pos = rec_end;
    }
    Ok((batch, pos))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{EventKind, IssuerId, RevocationReason, Serial};

    fn ev(n: u8) -> Event {
        Event {
            issuer: IssuerId([1; 32]),
            serial: Serial::from_magnitude(&[n]).expect("serial"),
            kind: EventKind::Revoked {
                time: 1000 + i64::from(n),
                reason: RevocationReason::KeyCompromise,
            },
            origin: "local".into(),
            created_at_ms: 5,
        }
    }

    #[test]
    fn append_read_and_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let mut w = JournalWriter::open(&path).expect("open");
        let mut r = JournalReader::new(&path);
        assert!(r.read_new().expect("read").events.is_empty());
        w.append(&[ev(1), ev(2)]).expect("append");
        assert_eq!(r.read_new().expect("read").events, vec![ev(1), ev(2)]);
        w.append(&[ev(3)]).expect("append");
        assert_eq!(r.read_new().expect("read").events, vec![ev(3)]);
        // a second writer (another process) appends after the first
        let mut w2 = JournalWriter::open(&path).expect("open");
        w2.append(&[ev(4)]).expect("append");
        w.append(&[ev(5)]).expect("append");
        assert_eq!(r.read_new().expect("read").events, vec![ev(4), ev(5)]);
        let all = JournalReader::new(&path).read_new().expect("read").events;
        assert_eq!(all.len(), 5);
    }

    #[test]
    fn torn_tail_is_dropped_at_every_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        JournalWriter::open(&path)
            .expect("open")
            .append(&[ev(1), ev(2)])
            .expect("append");
        let full = std::fs::read(&path).expect("read");
        let first_end = MAGIC.len() + RECORD_HEADER + ev(1).to_bytes().len();
        for cut in first_end + 1..full.len() {
            std::fs::write(&path, &full[..cut]).expect("write");
            let batch = JournalReader::new(&path).read_new().expect("read");
            assert_eq!(batch.events, vec![ev(1)], "cut at {cut}");
            assert!(batch.torn_tail);
            // the next writer truncates the torn record and appends cleanly
            JournalWriter::open(&path)
                .expect("open")
                .append(&[ev(3)])
                .expect("append");
            let batch = JournalReader::new(&path).read_new().expect("read");
            assert_eq!(batch.events, vec![ev(1), ev(3)], "cut at {cut}");
            assert!(!batch.torn_tail);
        }
    }

    #[test]
    fn corruption_in_the_middle_stops_writers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        JournalWriter::open(&path)
            .expect("open")
            .append(&[ev(1), ev(2), ev(3)])
            .expect("append");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[MAGIC.len() + RECORD_HEADER + 3] ^= 0xFF;
        std::fs::write(&path, &bytes).expect("write");
        let batch = JournalReader::new(&path).read_new().expect("read");
        assert!(batch.events.is_empty());
        assert_eq!(batch.corrupt_at, Some(MAGIC.len() as u64));
        assert!(matches!(
            JournalWriter::open(&path),
            Err(JournalError::Corrupt { .. })
        ));
        assert_eq!(
            std::fs::read(&path).expect("read"),
            bytes,
            "nothing destroyed"
        );
    }

    #[test]
    fn bad_magic_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        std::fs::write(&path, b"not a journal at all").expect("write");
        assert!(matches!(
            JournalWriter::open(&path),
            Err(JournalError::BadMagic(_))
        ));
        assert!(matches!(
            JournalReader::new(&path).read_new(),
            Err(JournalError::BadMagic(_))
        ));
    }
}
