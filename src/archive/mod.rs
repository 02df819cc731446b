//! The revocation archive: every status event of every region's stream, in stream order,
//! appended to hash-chained segment files in one directory (`vigil archive --dir DIR`), so the
//! state at any past time can be rebuilt ([`replay`]) and shown to an auditor, long after the
//! streams were trimmed.
//!
//! - **Layout**: `DIR/seg-0000000001.vga`, `seg-0000000002.vga`, …, in the [`segment`] format.
//!   Only the last segment is open; the others are sealed (their SHA-256 is in their seal and
//!   in the next segment's header, and every block's chain value runs on across segments).
//!   Every block is fsynced before the next is read from Redis.
//! - **Positions**: each region's (data epoch, last stream id archived) is in the archive
//!   itself (every segment header, and every block that moves it), so the role resumes from
//!   the archive after a restart, whatever happened to its Redis connections meanwhile.
//! - **No gaps**: when a region's stream was trimmed past the archived position (or rolled
//!   back before it, or its data epoch changed), the role writes a *fill*: a `fill-begin`
//!   block naming the gap, the region's whole snapshot in `fill-records` blocks, and a
//!   `fill-end` block; it goes on from the stream id taken before the scan (as a replica's
//!   bootstrap does, [`crate::feed::consume::bootstrap`]). A fill is dated by its end: a
//!   point-in-time rebuild before it cannot tell which of the gap's events had happened, and
//!   says so.
//! - **Verify** ([`verify`]): every block's chain value, every segment's header and seal, no
//!   missing segment; the first bad segment is named.

pub mod replay;
pub mod role;
pub mod segment;

pub use role::{RoleOptions, run, serve_metrics};

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::clock::Clock;
use crate::feed::FeedError;
use crate::limits::MAX_ARCHIVE_SEGMENTS;
use crate::status::hex;
use segment::{
    Block, BlockKind, GENESIS, Mark, Position, SegmentError, SegmentHeader, SegmentReader,
    SegmentWriter,
};

/// Why the archive could not be read, checked or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A segment could not be read or written, or is damaged.
    #[error("segment {segment}: {source}")]
    Segment {
        /// Its file name.
        segment: String,
        /// What went wrong.
        source: SegmentError,
    },
    /// The last segment is damaged where the writer would go on from it.
    #[error("segment {segment}: {source} (the archive is damaged: run `vigil archive verify`)")]
    Damaged {
        /// Its file name.
        segment: String,
        /// What is wrong.
        source: SegmentError,
    },
    /// A segment read for the positions it leaves is damaged.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The segment.
        path: PathBuf,
        /// What is wrong.
        source: SegmentError,
    },
    /// The directory holds more than [`MAX_ARCHIVE_SEGMENTS`] segments.
    #[error("{}: more than {MAX_ARCHIVE_SEGMENTS} segments", .0.display())]
    TooManySegments(PathBuf),
    /// The directory holds no segment.
    #[error("{}: no archive segments there", .0.display())]
    NoSegments(PathBuf),
    /// A sealed segment too short to hold a seal.
    #[error("{}: too short to be a sealed segment", .0.display())]
    TooShort(PathBuf),
    /// A segment of the sequence is missing.
    #[error("segment {missing}: missing (the next one present is {present})")]
    Missing {
        /// The missing segment's name.
        missing: String,
        /// The next one there.
        present: String,
    },
    /// A segment's header names another index than its file name.
    #[error("segment {segment}: its header says it is segment {header}")]
    WrongIndex {
        /// Its file name.
        segment: String,
        /// The index in its header.
        header: u64,
    },
    /// A segment's header names another previous segment than the one there.
    #[error("segment {0}: the previous segment's SHA-256 does not match the one in its header")]
    PreviousDigest(String),
    /// A segment that is not the last is open.
    #[error("segment {0}: not sealed, but segments follow it")]
    NotSealed(String),
    /// The last segment could not be read at all.
    #[error("segment {0}: unreadable")]
    Unreadable(String),
    /// The writer has no open segment.
    #[error("segment {0}: not open")]
    NotOpen(String),
    /// What the caller of [`walk`] found in a segment's block.
    #[error("segment {segment}: {source}")]
    Visit {
        /// The segment's file name.
        segment: String,
        /// What the caller found.
        source: Box<ArchiveError>,
    },
    /// A mark could not be encoded.
    #[error("encoding a mark: {0}")]
    Encode(serde_json::Error),
    /// No region to archive.
    #[error("no [[region]] to archive")]
    NoRegions,
    /// Every region's reader ended.
    #[error("every region reader stopped")]
    ReadersStopped,
    /// Reaching the regions failed.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// The metrics listener could not be bound.
    #[error("metrics listener {addr}: {source}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    }
}

fn in_segment<E: Into<SegmentError>>(name: &str) -> impl Fn(E) -> ArchiveError + '_ {
    move |e| ArchiveError::Segment {
        segment: name.to_owned(),
        source: e.into(),
    }
}

/// A segment is closed once it holds this many bytes (`--segment-bytes`).
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Snapshot records per fill-records block.
pub const FILL_BLOCK_RECORDS: usize = 10_000;
/// How often a position that only heartbeats moved is written down (the rest of the time it
/// is kept in memory: after a restart those heartbeats are read again, which costs nothing).
pub const POSITION_INTERVAL: Duration = Duration::from_secs(30);

/// A segment's file name.
pub fn segment_name(index: u64) -> String {
    format!("seg-{index:010}.vga")
}

fn segment_index(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".vga")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment files of `dir`, by index (other files are not the archive's and are left
/// alone).
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, ArchiveError> {
    let io = io_at(dir);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(&io)? {
        let entry = entry.map_err(&io)?;
        let name = entry.file_name();
        if let Some(i) = name.to_str().and_then(segment_index) {
            if out.len() >= MAX_ARCHIVE_SEGMENTS {
                return Err(ArchiveError::TooManySegments(dir.to_owned()));
            }
            out.push((i, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The position a block moves its region to, if any.
pub fn position_of(block: &Block) -> Option<(String, Position)> {
    match block {
        Block::Events(e) => Some((
            e.region.clone(),
            Position {
                epoch: e.epoch.clone(),
                id: e.last.to_string(),
            },
        )),
        Block::FillEnd(m) | Block::Position(m) => Some((
            m.region.clone(),
            Position {
                epoch: m.epoch.clone(),
                id: m.id.clone(),
            },
        )),
        _ => None,
    }
}

/// The last 32 bytes of a sealed segment: its last chain value.
fn tail_chain(path: &Path) -> Result<[u8; 32], ArchiveError> {
    let io = io_at(path);
    let mut f = File::open(path).map_err(&io)?;
    let len = f.metadata().map_err(&io)?.len();
    if len < 42 {
        return Err(ArchiveError::TooShort(path.to_owned()));
    }
    f.seek(SeekFrom::Start(len - 32)).map_err(&io)?;
    let mut c = [0u8; 32];
    f.read_exact(&mut c).map_err(&io)?;
    Ok(c)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

// === verify ===

/// What reading the whole archive found.
#[derive(Debug, Default)]
pub struct Walked {
    /// Segments read.
    pub segments: u64,
    /// Blocks read.
    pub blocks: u64,
    /// Events read.
    pub events: u64,
    /// Completed gap fills (their end marks).
    pub fills: Vec<Mark>,
    /// Stream time of the first and last event (ms).
    pub first_event_ms: Option<u64>,
    /// See `first_event_ms`.
    pub last_event_ms: Option<u64>,
    /// The archive's last chain value (hex): it commits to every block.
    pub head: String,
    /// region → where the archive stands.
    pub positions: BTreeMap<String, Position>,
    /// The last segment ends in an incomplete block (an interrupted write).
    pub torn: Option<String>,
    /// The last segment is still open (not sealed).
    pub open: bool,
}

/// Reads every segment of `dir` in order, checking every chain value, header and seal, and
/// hands every block to `f`. Stops at the first damage, naming the segment.
pub fn walk(
    dir: &Path,
    mut f: impl FnMut(&str, &Block) -> Result<(), ArchiveError>,
) -> Result<Walked, ArchiveError> {
    let segments = list_segments(dir)?;
    if segments.is_empty() {
        return Err(ArchiveError::NoSegments(dir.to_owned()));
    }
    let mut w = Walked::default();
    let mut prev_chain = GENESIS;
    let mut prev_sha = String::new();
    let count = segments.len();
    for (n, (index, path)) in segments.iter().enumerate() {
        let name = segment_name(*index);
        let expected = n as u64 + 1;
        if *index != expected {
            return Err(ArchiveError::Missing {
                missing: segment_name(expected),
                present: name,
            });
        }
        let last = n + 1 == count;
        let file = File::open(path).map_err(in_segment(&name))?;
        let mut r = SegmentReader::new(BufReader::with_capacity(1 << 20, file), prev_chain)
            .map_err(in_segment(&name))?;
        loop {
            let block = match r.next_block() {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(SegmentError::Torn { offset, bytes }) if last => {
                    w.torn = Some(format!(
                        "segment {name} ends in an incomplete block at byte {offset} ({bytes} bytes): a write was interrupted; the archive role cuts it off when it starts"
                    ));
                    break;
                }
                Err(e) => return Err(in_segment(&name)(e)),
            };
            w.blocks += 1;
            match &block {
                Block::Header(h) => {
                    if h.index != *index {
                        return Err(ArchiveError::WrongIndex {
                            segment: name,
                            header: h.index,
                        });
                    }
                    if h.prev_segment_sha256 != prev_sha {
                        return Err(ArchiveError::PreviousDigest(name));
                    }
                }
                Block::Events(e) => {
                    w.events += e.events.len() as u64;
                    if let (Some((first, _)), Some((last, _))) = (e.events.first(), e.events.last())
                    {
                        w.first_event_ms.get_or_insert(first.ms);
                        w.last_event_ms = Some(last.ms.max(w.last_event_ms.unwrap_or(0)));
                    }
                }
                Block::FillEnd(m) => w.fills.push(m.clone()),
                _ => {}
            }
            if let Some((region, p)) = position_of(&block) {
                w.positions.insert(region, p);
            }
            f(&name, &block).map_err(|e| ArchiveError::Visit {
                segment: name.clone(),
                source: Box::new(e),
            })?;
        }
        if !r.sealed() && !last {
            return Err(ArchiveError::NotSealed(name));
        }
        w.open = !r.sealed();
        prev_chain = r.chain();
        prev_sha = hex(&r.sha256());
        w.segments += 1;
    }
    w.head = hex(&prev_chain);
    Ok(w)
}

/// Checks the whole archive (see [`walk`]).
pub fn verify(dir: &Path) -> Result<Walked, ArchiveError> {
    walk(dir, |_, _| Ok(()))
}

// === impl Archive ===

/// The writing end of an archive directory.
pub struct Archive {
    dir: PathBuf,
    index: u64,
    writer: Option<SegmentWriter<File>>,
    positions: BTreeMap<String, Position>,
    segment_bytes: u64,
    clock: Clock,
}

impl Archive {
    /// Opens (or starts) the archive in `dir`: the last segment is read and checked; an
    /// incomplete block at its end (an interrupted write) is cut off and kept beside it as
    /// `<segment>.torn-<offset>`; a damaged last segment is refused. New segments are dated
    /// by `clock`.
    pub fn open(dir: &Path, segment_bytes: u64, clock: &Clock) -> Result<Archive, ArchiveError> {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        let segments = list_segments(dir)?;
        let mut a = Archive {
            dir: dir.to_owned(),
            index: 0,
            writer: None,
            positions: BTreeMap::new(),
            segment_bytes: segment_bytes.max(4096),
            clock: clock.clone(),
        };
        let Some((index, path)) = segments.last().cloned() else {
            a.start_segment(1, GENESIS, String::new())?;
            return Ok(a);
        };
        let name = segment_name(index);
        let prev_chain = match segments.len() {
            1 => GENESIS,
            n => tail_chain(&segments[n - 2].1)?,
        };
        let file = File::open(&path).map_err(in_segment(&name))?;
        let reader = match SegmentReader::new(BufReader::new(file), prev_chain) {
            Ok(r) => Some(r),
            Err(SegmentError::Torn { .. }) => None,
            Err(e) => return Err(in_segment(&name)(e)),
        };
        let mut torn_at = None;
        let mut r = match reader {
            Some(mut r) => {
                loop {
                    match r.next_block() {
                        Ok(Some(Block::Header(h))) => a.positions = h.positions,
                        Ok(Some(b)) => {
                            if let Some((region, p)) = position_of(&b) {
                                a.positions.insert(region, p);
                            }
                        }
                        Ok(None) => break,
                        Err(SegmentError::Torn { offset, .. }) => {
                            torn_at = Some(offset);
                            break;
                        }
                        Err(source) => {
                            return Err(ArchiveError::Damaged {
                                segment: name,
                                source,
                            });
                        }
                    }
                }
                Some(r)
            }
            None => None,
        };
        if r.as_ref().is_none_or(|r| r.blocks() == 0) {
            // A segment whose header never reached the disk: start it again.
            std::fs::remove_file(&path).map_err(in_segment(&name))?;
            let n = segments.len();
            let (prev_sha, positions) = match n {
                1 => (String::new(), BTreeMap::new()),
                _ => (
                    file_sha256(&segments[n - 2].1)?,
                    positions_of_segment(&segments[n - 2].1, tail_before(&segments, n - 2)?)?,
                ),
            };
            a.positions = positions;
            a.start_segment(index, prev_chain, prev_sha)?;
            return Ok(a);
        }
        let Some(r) = r.take() else {
            // `r` is `Some` with at least one block here: checked just above.
            return Err(ArchiveError::Unreadable(name));
        };
        if let Some(offset) = torn_at {
            let io = in_segment(&name);
            let bytes = std::fs::read(&path).map_err(&io)?;
            let keep = path.with_file_name(format!("{name}.torn-{offset}"));
            std::fs::write(&keep, &bytes[offset as usize..]).map_err(&io)?;
            let f = OpenOptions::new().write(true).open(&path).map_err(&io)?;
            f.set_len(offset).map_err(&io)?;
            f.sync_all().map_err(&io)?;
            tracing::warn!(segment = %name, offset, kept = %keep.display(),
                "cut off an incomplete block at the end of the last segment (an interrupted write)");
        }
        if r.sealed() {
            a.start_segment(index + 1, r.chain(), hex(&r.sha256()))?;
        } else {
            let f = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(in_segment(&name))?;
            a.writer = Some(SegmentWriter::resume(f, &r));
            a.index = index;
        }
        Ok(a)
    }

    fn start_segment(
        &mut self,
        index: u64,
        prev_chain: [u8; 32],
        prev_sha: String,
    ) -> Result<(), ArchiveError> {
        let name = segment_name(index);
        let path = self.dir.join(&name);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(in_segment(&name))?;
        let header = SegmentHeader {
            format: "vigil-archive".into(),
            version: segment::VERSION,
            index,
            created_at_ms: self.clock.now_ms(),
            prev_segment_sha256: prev_sha,
            positions: self.positions.clone(),
        };
        let mut w = SegmentWriter::create(f, &header, prev_chain).map_err(in_segment(&name))?;
        w.output().sync_all().map_err(in_segment(&name))?;
        sync_dir(&self.dir);
        self.writer = Some(w);
        self.index = index;
        Ok(())
    }

    /// Where every region stands in the archive.
    pub fn positions(&self) -> &BTreeMap<String, Position> {
        &self.positions
    }

    /// The open segment's index.
    pub fn segment(&self) -> u64 {
        self.index
    }

    /// Appends one block and fsyncs it; closes the segment once it is full. `position` is
    /// where the block leaves its region.
    pub fn append(
        &mut self,
        kind: BlockKind,
        payload: &[u8],
        position: Option<(&str, Position)>,
    ) -> Result<(), ArchiveError> {
        let name = segment_name(self.index);
        let Some(w) = self.writer.as_mut() else {
            return Err(ArchiveError::NotOpen(name));
        };
        w.block(kind, payload).map_err(in_segment(&name))?;
        w.output().sync_data().map_err(in_segment(&name))?;
        if let Some((region, p)) = position {
            self.positions.insert(region.to_owned(), p);
        }
        if w.len() >= self.segment_bytes {
            self.roll()?;
        }
        Ok(())
    }

    /// Seals the open segment and opens the next.
    pub fn roll(&mut self) -> Result<(), ArchiveError> {
        let name = segment_name(self.index);
        let Some(w) = self.writer.take() else {
            return Err(ArchiveError::NotOpen(name));
        };
        let (chain, sha, f) = w.seal().map_err(in_segment(&name))?;
        f.sync_all().map_err(in_segment(&name))?;
        drop(f);
        self.start_segment(self.index + 1, chain, hex(&sha))
    }
}

fn file_sha256(path: &Path) -> Result<String, ArchiveError> {
    let mut f = File::open(path).map_err(io_at(path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_at(path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex(ctx.finish().as_ref()))
}

/// The chain value a segment's header is chained from (the one before `n`'s).
fn tail_before(segments: &[(u64, PathBuf)], n: usize) -> Result<[u8; 32], ArchiveError> {
    match n {
        0 => Ok(GENESIS),
        _ => tail_chain(&segments[n - 1].1),
    }
}

/// The positions at the end of one segment.
fn positions_of_segment(
    path: &Path,
    prev_chain: [u8; 32],
) -> Result<BTreeMap<String, Position>, ArchiveError> {
    let bad = |source| ArchiveError::InFile {
        path: path.to_owned(),
        source,
    };
    let f = File::open(path).map_err(io_at(path))?;
    let mut r = SegmentReader::new(BufReader::new(f), prev_chain).map_err(bad)?;
    let mut out = BTreeMap::new();
    while let Some(b) = r.next_block().map_err(bad)? {
        match b {
            Block::Header(h) => out = h.positions,
            b => {
                if let Some((region, p)) = position_of(&b) {
                    out.insert(region, p);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::feed::StreamId;
    use std::io::Write;

    fn events_block(region: &str, ids: &[u64]) -> Vec<u8> {
        let ev: Vec<(StreamId, &[u8])> = ids
            .iter()
            .map(|&i| (StreamId { ms: i, seq: 0 }, b"x".as_slice()))
            .collect();
        let last = StreamId {
            ms: *ids.last().unwrap(),
            seq: 0,
        };
        segment::encode_events(region, "ep", last, &ev)
    }

    #[test]
    fn segments_roll_resume_and_verify_and_a_flip_names_its_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let clock = Clock::manual(1_764_806_400_000);
        let mut a = Archive::open(dir, 4096, &clock).unwrap();
        for i in 0..200u64 {
            let p = Position {
                epoch: "ep".into(),
                id: format!("{}-0", i * 10 + 9),
            };
            a.append(
                BlockKind::Events,
                &events_block("a", &[i * 10, i * 10 + 9]),
                Some(("a", p)),
            )
            .unwrap();
        }
        let seg = a.segment();
        assert!(seg > 3, "{seg}");
        drop(a);
        // Reopened, it goes on where it stood.
        let mut a = Archive::open(dir, 4096, &clock).unwrap();
        assert_eq!(a.positions()["a"].id, "1999-0");
        assert_eq!(a.segment(), seg);
        a.append(BlockKind::Events, &events_block("a", &[3000]), None)
            .unwrap();
        drop(a);
        let w = verify(dir).unwrap();
        assert_eq!(w.events, 401);
        assert_eq!(w.segments, seg);
        assert!(w.torn.is_none());
        // An interrupted write at the end is cut off when the archive is opened again.
        let last = dir.join(segment_name(seg));
        let mut f = OpenOptions::new().append(true).open(&last).unwrap();
        f.write_all(&[2, 0, 0, 0, 100, 1, 2]).unwrap();
        drop(f);
        assert!(verify(dir).unwrap().torn.is_some());
        drop(Archive::open(dir, 4096, &clock).unwrap());
        assert!(verify(dir).unwrap().torn.is_none());
        // A flipped byte in a sealed segment names it.
        let second = dir.join(segment_name(2));
        let mut b = std::fs::read(&second).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x10;
        std::fs::write(&second, b).unwrap();
        let e = verify(dir).unwrap_err();
        assert!(
            matches!(&e, ArchiveError::Segment { segment, source: SegmentError::Damaged { .. } }
                if segment == "seg-0000000002.vga"),
            "{e}"
        );
        assert!(
            e.to_string().starts_with("segment seg-0000000002.vga:"),
            "{e}"
        );
        // And a missing segment too.
        std::fs::remove_file(&second).unwrap();
        let e = verify(dir).unwrap_err();
        assert!(
            matches!(&e, ArchiveError::Missing { missing, .. } if missing == "seg-0000000002.vga"),
            "{e}"
        );
        assert!(e.to_string().contains("seg-0000000002.vga: missing"), "{e}");
        // Every segment header is dated by the clock handed in.
        let mut r =
            SegmentReader::new(File::open(dir.join(segment_name(1))).unwrap(), GENESIS).unwrap();
        let Some(Block::Header(h)) = r.next_block().unwrap() else {
            panic!("no header")
        };
        assert_eq!(h.created_at_ms, 1_764_806_400_000);
    }
}
