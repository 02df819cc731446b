//! The archive's segment file format: versioned, every block hash-chained to the one before it
//! (across segments too), every segment naming the SHA-256 of the segment before it and, once
//! closed, sealed with the SHA-256 of its own bytes. Pure: it reads a `Read` and writes a
//! `Write`; files, fsync and naming are the caller's ([`super`]).
//!
//! ```text
//! segment  = magic "VIGILARC" | version u16 BE (1) | header-block | block* | [seal-block]
//! block    = kind u8 | length u32 BE | payload (length bytes) | chain (32 bytes)
//! chain    = SHA-256(previous chain | kind | length | payload); the previous chain of a
//!            segment's header block is the last chain of the segment before (32 zero bytes
//!            for segment 1), so the last chain of the archive commits to every block in it
//! kind     = 1 header       (JSON SegmentHeader: index, the previous segment's SHA-256, where
//!                            every region's stream stood when the segment was opened)
//!          | 2 events       (one region's stream entries, in stream order)
//!          | 3 fill-begin   (JSON Mark: a region's stream was trimmed past (or rolled back
//!                            before) the archived position; its snapshot follows)
//!          | 4 fill-records-v1 (as 8, with 9-byte records: written before CRL scopes, read)
//!          | 5 fill-end     (JSON Mark: the fill is complete; the position is its start id)
//!          | 6 position     (JSON Mark: the position moved without events — heartbeats, a
//!                            new data epoch)
//!          | 7 seal         (JSON Seal: block count and SHA-256 of every byte before it); last
//!          | 8 fill-records (one issuer's snapshot records from that region)
//! events   = region-len u8 | region | epoch-len u8 | epoch | last-ms u64 | last-seq u64 |
//!            count u32 | (ms u64 | seq u64 | event-len u16 | event)*
//! fill-records = region-len u8 | region | issuer 32 | count u32 |
//!            (serial-len u8 | serial | record 11)*   (record 9 in fill-records-v1)
//! ```
//!
//! Every length read is checked against a named bound in [`crate::limits`] before anything is
//! allocated.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use crate::feed::StreamId;
use crate::limits::{
    MAX_ARCHIVE_BLOCK_BYTES, MAX_ARCHIVE_BLOCK_ENTRIES, MAX_ARCHIVE_NAME_BYTES,
    MAX_ARCHIVE_SEGMENT_BLOCKS, MAX_EVENT_BYTES, MAX_SERIAL_OCTETS,
};
use crate::status::{CertRecord, IssuerId, Serial};

/// A segment's first eight bytes.
pub const MAGIC: &[u8; 8] = b"VIGILARC";
/// The format version this code writes and reads.
pub const VERSION: u16 = 1;
/// The chain value before the first block of the first segment.
pub const GENESIS: [u8; 32] = [0; 32];

/// What a block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// [`SegmentHeader`].
    Header = 1,
    /// [`EventsBlock`].
    Events = 2,
    /// A gap fill starts ([`Mark`]).
    FillBegin = 3,
    /// [`FillRecords`] with 9-byte records, as written before CRL scopes were recorded.
    FillRecordsV1 = 4,
    /// [`FillRecords`].
    FillRecords = 8,
    /// A gap fill is complete ([`Mark`]).
    FillEnd = 5,
    /// The position moved without events ([`Mark`]).
    Position = 6,
    /// [`Seal`], last.
    Seal = 7,
}

impl BlockKind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Header,
            2 => Self::Events,
            3 => Self::FillBegin,
            4 => Self::FillRecordsV1,
            8 => Self::FillRecords,
            5 => Self::FillEnd,
            6 => Self::Position,
            7 => Self::Seal,
            _ => return None,
        })
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Events => "events",
            Self::FillBegin => "fill-begin",
            Self::FillRecordsV1 => "fill-records-v1",
            Self::FillRecords => "fill-records",
            Self::FillEnd => "fill-end",
            Self::Position => "position",
            Self::Seal => "seal",
        }
    }
}

/// Where one region's stream stands in the archive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Position {
    /// The region's data epoch.
    pub epoch: String,
    /// The last stream id archived (`0-0`: nothing yet).
    pub id: String,
}

/// The first block of a segment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Always `vigil-archive`.
    pub format: String,
    /// [`VERSION`].
    pub version: u16,
    /// 1 for the first segment, then one more each.
    pub index: u64,
    /// When the segment was opened, Unix ms.
    pub created_at_ms: i64,
    /// SHA-256 (hex) of every byte of the previous segment (empty for segment 1).
    pub prev_segment_sha256: String,
    /// region → position when the segment was opened.
    pub positions: BTreeMap<String, Position>,
}

/// A change of position that carries no events: a fill's beginning or end, heartbeats read, a
/// new data epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mark {
    /// The region.
    pub region: String,
    /// Its data epoch.
    pub epoch: String,
    /// The stream id the position is at (for a fill: the stream's last id taken before its
    /// snapshot was scanned; the archive goes on from there).
    pub id: String,
    /// When, Unix ms (for a fill's end: when the whole snapshot had been read).
    pub at_ms: i64,
    /// Why (for a fill: what made the gap, and the position it was found at).
    #[serde(default)]
    pub reason: String,
    /// Records in the fill (its end).
    #[serde(default)]
    pub records: u64,
}

/// The last block of a closed segment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seal {
    /// Blocks before this one.
    pub blocks: u64,
    /// SHA-256 (hex) of every byte of the segment before this block.
    pub sha256: String,
}

/// One region's stream entries, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsBlock {
    /// The region.
    pub region: String,
    /// Its data epoch.
    pub epoch: String,
    /// The last stream id read (heartbeats included): the position after this block.
    pub last: StreamId,
    /// (stream id, encoded [`crate::status::Event`]).
    pub events: Vec<(StreamId, Vec<u8>)>,
}

/// Snapshot records of one issuer, read from one region to fill a gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillRecords {
    /// The region.
    pub region: String,
    /// The issuer.
    pub issuer: IssuerId,
    /// The records.
    pub records: Vec<(Serial, CertRecord)>,
}

/// One block, decoded.
#[derive(Debug, Clone)]
pub enum Block {
    /// The header.
    Header(SegmentHeader),
    /// Events.
    Events(EventsBlock),
    /// A fill begins.
    FillBegin(Mark),
    /// Fill records.
    FillRecords(FillRecords),
    /// A fill ended.
    FillEnd(Mark),
    /// A position moved.
    Position(Mark),
    /// The seal.
    Seal(Seal),
}

/// Why a segment could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The file does not start with the magic.
    #[error("not a vigil archive segment: bad magic")]
    BadMagic,
    /// A format version this build does not read.
    #[error("not a vigil archive segment: format version {0}; this vigil reads {VERSION}")]
    Version(u16),
    /// A block is damaged.
    #[error("block {index} ({kind}) at byte {offset}: {reason}")]
    Damaged {
        /// 0-based block index.
        index: u64,
        /// Its kind's name (or `unknown`).
        kind: &'static str,
        /// Byte offset of the block's start.
        offset: u64,
        /// What is wrong.
        reason: Damage,
    },
    /// The segment ends inside a block (a write was interrupted), at this offset.
    #[error("the segment ends inside the block at byte {offset} ({bytes} byte(s) of it)")]
    Torn {
        /// Where the incomplete block starts.
        offset: u64,
        /// Bytes of it present.
        bytes: u64,
    },
    /// A JSON block could not be encoded.
    #[error("encoding a block: {0}")]
    Encode(serde_json::Error),
    /// A block to write is over [`MAX_ARCHIVE_BLOCK_BYTES`].
    #[error("a {kind} block of {bytes} bytes, over the bound")]
    TooLarge {
        /// Its kind's name.
        kind: &'static str,
        /// Its payload's length.
        bytes: usize,
    },
    /// Bytes follow the seal.
    #[error("bytes after the seal at byte {0}")]
    AfterSeal(u64),
}

/// What is wrong with a damaged block.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Damage {
    /// Its length is over [`MAX_ARCHIVE_BLOCK_BYTES`].
    #[error("length {0} exceeds the bound")]
    TooLong(usize),
    /// The segment has more blocks than [`MAX_ARCHIVE_SEGMENT_BLOCKS`].
    #[error("more blocks than the bound")]
    TooManyBlocks,
    /// Its chain value is not the one its bytes make.
    #[error("checksum (chain) mismatch")]
    Chain,
    /// A kind this version does not know.
    #[error("unknown kind {0}")]
    UnknownKind(u8),
    /// A header that is not the first block, or a first block that is not a header.
    #[error("the header must be the first block, and only it")]
    HeaderPlace,
    /// A header of another format or version.
    #[error("not a vigil-archive header of this version")]
    HeaderVersion,
    /// A JSON block that does not decode.
    #[error("{0}")]
    Json(serde_json::Error),
    /// The seal's block count is not the segment's.
    #[error("the block count does not match")]
    SealCount,
    /// The seal's SHA-256 is not the segment's.
    #[error("the segment's SHA-256 does not match")]
    SealDigest,
    /// The payload ends inside its contents.
    #[error("the block is shorter than its contents")]
    Short,
    /// A name over [`MAX_ARCHIVE_NAME_BYTES`].
    #[error("a name longer than the bound")]
    LongName,
    /// A name that is not UTF-8.
    #[error("a name that is not UTF-8")]
    NameNotUtf8,
    /// A count over [`MAX_ARCHIVE_BLOCK_ENTRIES`].
    #[error("{0} entries, more than {MAX_ARCHIVE_BLOCK_ENTRIES}")]
    TooManyEntries(usize),
    /// An event over [`MAX_EVENT_BYTES`].
    #[error("an event of {0} bytes, over {MAX_EVENT_BYTES}")]
    LongEvent(usize),
    /// A serial over [`MAX_SERIAL_OCTETS`].
    #[error("a serial of {0} octets")]
    LongSerial(usize),
    /// A serial that is not a positive minimal INTEGER.
    #[error("{0}")]
    Serial(#[from] crate::status::SerialError),
    /// A record that does not decode.
    #[error("malformed record")]
    Record,
    /// Bytes after the payload's contents.
    #[error("bytes after the block's contents")]
    Trailing,
}

/// The chain value after a block.
pub fn chain(prev: &[u8; 32], kind: u8, payload: &[u8]) -> ([u8; 5], [u8; 32]) {
    let len = payload.len().min(u32::MAX as usize) as u32;
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&len.to_be_bytes());
    let mut ctx = Context::new(&SHA256);
    ctx.update(prev);
    ctx.update(&head);
    ctx.update(payload);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    (head, out)
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, SegmentError> {
    serde_json::to_vec(v).map_err(SegmentError::Encode)
}

fn push_name(p: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(MAX_ARCHIVE_NAME_BYTES)];
    p.push(b.len() as u8);
    p.extend_from_slice(b);
}

/// The payload of an events block. Events longer than [`MAX_EVENT_BYTES`] are left out by the
/// caller (they are not events any vigil decodes).
pub fn encode_events(
    region: &str,
    epoch: &str,
    last: StreamId,
    events: &[(StreamId, &[u8])],
) -> Vec<u8> {
    let mut p = Vec::with_capacity(64 + events.iter().map(|e| 18 + e.1.len()).sum::<usize>());
    push_name(&mut p, region);
    push_name(&mut p, epoch);
    p.extend_from_slice(&last.ms.to_be_bytes());
    p.extend_from_slice(&last.seq.to_be_bytes());
    p.extend_from_slice(&(events.len() as u32).to_be_bytes());
    for (id, e) in events {
        p.extend_from_slice(&id.ms.to_be_bytes());
        p.extend_from_slice(&id.seq.to_be_bytes());
        p.extend_from_slice(&(e.len() as u16).to_be_bytes());
        p.extend_from_slice(e);
    }
    p
}

/// The payload of a fill-records block.
pub fn encode_fill(region: &str, issuer: IssuerId, records: &[(Serial, CertRecord)]) -> Vec<u8> {
    let mut p = Vec::with_capacity(48 + records.len() * 31);
    push_name(&mut p, region);
    p.extend_from_slice(&issuer.0);
    p.extend_from_slice(&(records.len() as u32).to_be_bytes());
    for (s, r) in records {
        let s = s.as_der_content();
        p.push(s.len() as u8);
        p.extend_from_slice(s);
        p.extend_from_slice(&r.to_fixed_bytes());
    }
    p
}

/// A bounds-checked reader over one payload.
struct Take<'a> {
    p: &'a [u8],
    at: usize,
}

impl<'a> Take<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Damage> {
        let s = self
            .p
            .get(self.at..self.at.saturating_add(n))
            .ok_or(Damage::Short)?;
        self.at += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Damage> {
        self.bytes(N)?.try_into().map_err(|_| Damage::Short)
    }

    fn u8(&mut self) -> Result<u8, Damage> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Damage> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, Damage> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, Damage> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn name(&mut self) -> Result<String, Damage> {
        let n = self.u8()? as usize;
        if n > MAX_ARCHIVE_NAME_BYTES {
            return Err(Damage::LongName);
        }
        std::str::from_utf8(self.bytes(n)?)
            .map(str::to_owned)
            .map_err(|_| Damage::NameNotUtf8)
    }

    fn count(&mut self) -> Result<usize, Damage> {
        let n = self.u32()? as usize;
        if n > MAX_ARCHIVE_BLOCK_ENTRIES {
            return Err(Damage::TooManyEntries(n));
        }
        Ok(n)
    }

    fn end(&self) -> Result<(), Damage> {
        if self.at != self.p.len() {
            return Err(Damage::Trailing);
        }
        Ok(())
    }
}

fn decode_events(p: &[u8]) -> Result<EventsBlock, Damage> {
    let mut t = Take { p, at: 0 };
    let region = t.name()?;
    let epoch = t.name()?;
    let last = StreamId {
        ms: t.u64()?,
        seq: t.u64()?,
    };
    let n = t.count()?;
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        let id = StreamId {
            ms: t.u64()?,
            seq: t.u64()?,
        };
        let len = t.u16()? as usize;
        if len > MAX_EVENT_BYTES {
            return Err(Damage::LongEvent(len));
        }
        events.push((id, t.bytes(len)?.to_vec()));
    }
    t.end()?;
    Ok(EventsBlock {
        region,
        epoch,
        last,
        events,
    })
}

fn decode_fill(p: &[u8], record_len: usize) -> Result<FillRecords, Damage> {
    let mut t = Take { p, at: 0 };
    let region = t.name()?;
    let issuer = IssuerId(t.array()?);
    let n = t.count()?;
    let mut records = Vec::with_capacity(n);
    for _ in 0..n {
        let len = t.u8()? as usize;
        if len > MAX_SERIAL_OCTETS {
            return Err(Damage::LongSerial(len));
        }
        let serial = Serial::from_der_content(t.bytes(len)?)?;
        let record = CertRecord::from_bytes(t.bytes(record_len)?).ok_or(Damage::Record)?;
        records.push((serial, record));
    }
    t.end()?;
    Ok(FillRecords {
        region,
        issuer,
        records,
    })
}

// === impl SegmentWriter ===

/// Appends blocks to one segment, keeping its chain and its whole-file digest.
pub struct SegmentWriter<W: Write> {
    out: W,
    chain: [u8; 32],
    whole: Context,
    blocks: u64,
    bytes: u64,
}

impl<W: Write> SegmentWriter<W> {
    /// Starts a segment: magic, version and the header block, chained from `prev_chain`.
    pub fn create(
        out: W,
        header: &SegmentHeader,
        prev_chain: [u8; 32],
    ) -> Result<Self, SegmentError> {
        let mut w = SegmentWriter {
            out,
            chain: prev_chain,
            whole: Context::new(&SHA256),
            blocks: 0,
            bytes: 0,
        };
        let mut start = MAGIC.to_vec();
        start.extend_from_slice(&VERSION.to_be_bytes());
        w.raw(&start)?;
        w.block(BlockKind::Header, &json(header)?)?;
        Ok(w)
    }

    /// Goes on appending to a segment read up to a clean block boundary by `reader`.
    pub fn resume<R: Read>(out: W, reader: &SegmentReader<R>) -> Self {
        SegmentWriter {
            out,
            chain: reader.chain,
            whole: reader.whole.clone(),
            blocks: reader.blocks,
            bytes: reader.offset,
        }
    }

    fn raw(&mut self, b: &[u8]) -> Result<(), SegmentError> {
        self.whole.update(b);
        self.out.write_all(b)?;
        self.bytes += b.len() as u64;
        Ok(())
    }

    /// Appends one block.
    pub fn block(&mut self, kind: BlockKind, payload: &[u8]) -> Result<(), SegmentError> {
        if payload.len() > MAX_ARCHIVE_BLOCK_BYTES {
            return Err(SegmentError::TooLarge {
                kind: kind.name(),
                bytes: payload.len(),
            });
        }
        let (head, next) = chain(&self.chain, kind as u8, payload);
        let mut b = Vec::with_capacity(5 + payload.len() + 32);
        b.extend_from_slice(&head);
        b.extend_from_slice(payload);
        b.extend_from_slice(&next);
        self.raw(&b)?;
        self.chain = next;
        self.blocks += 1;
        Ok(())
    }

    /// Appends a JSON block.
    pub fn mark<T: Serialize>(&mut self, kind: BlockKind, v: &T) -> Result<(), SegmentError> {
        self.block(kind, &json(v)?)
    }

    /// Bytes written so far (the file's length).
    pub fn len(&self) -> u64 {
        self.bytes
    }

    /// True before anything is written (never, once created).
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The output.
    pub fn output(&mut self) -> &mut W {
        &mut self.out
    }

    /// Writes the seal; returns the segment's last chain value and SHA-256 of all its bytes.
    pub fn seal(mut self) -> Result<([u8; 32], [u8; 32], W), SegmentError> {
        let seal = Seal {
            blocks: self.blocks,
            sha256: crate::status::hex(self.whole.clone().finish().as_ref()),
        };
        self.mark(BlockKind::Seal, &seal)?;
        self.out.flush()?;
        let mut sha = [0u8; 32];
        sha.copy_from_slice(self.whole.finish().as_ref());
        Ok((self.chain, sha, self.out))
    }
}

// === impl SegmentReader ===

/// Reads a segment block by block, checking every block's chain value.
pub struct SegmentReader<R: Read> {
    input: R,
    chain: [u8; 32],
    whole: Context,
    offset: u64,
    blocks: u64,
    sealed: bool,
}

impl<R: Read> SegmentReader<R> {
    /// Checks the magic and version; the first block must chain from `prev_chain`.
    pub fn new(mut input: R, prev_chain: [u8; 32]) -> Result<Self, SegmentError> {
        let mut head = [0u8; 10];
        let mut got = 0;
        while got < head.len() {
            match input.read(&mut head[got..])? {
                0 => {
                    return Err(SegmentError::Torn {
                        offset: 0,
                        bytes: got as u64,
                    });
                }
                n => got += n,
            }
        }
        if &head[..8] != MAGIC {
            return Err(SegmentError::BadMagic);
        }
        let version = u16::from_be_bytes([head[8], head[9]]);
        if version != VERSION {
            return Err(SegmentError::Version(version));
        }
        let mut whole = Context::new(&SHA256);
        whole.update(&head);
        Ok(SegmentReader {
            input,
            chain: prev_chain,
            whole,
            offset: 10,
            blocks: 0,
            sealed: false,
        })
    }

    fn damaged(&self, kind: &'static str, at: u64, reason: Damage) -> SegmentError {
        SegmentError::Damaged {
            index: self.blocks,
            kind,
            offset: at,
            reason,
        }
    }

    /// Reads up to `n` bytes; fewer only at the end of the input.
    fn fill(&mut self, buf: &mut Vec<u8>, n: usize) -> Result<(), SegmentError> {
        (&mut self.input).take(n as u64).read_to_end(buf)?;
        Ok(())
    }

    /// The next block; `None` at the end of an open segment or after the seal.
    pub fn next_block(&mut self) -> Result<Option<Block>, SegmentError> {
        let at = self.offset;
        let mut head = Vec::with_capacity(5);
        self.fill(&mut head, 5)?;
        if self.sealed {
            return match head.len() {
                0 => Ok(None),
                _ => Err(SegmentError::AfterSeal(at)),
            };
        }
        if head.is_empty() {
            if self.blocks == 0 {
                return Err(SegmentError::Torn {
                    offset: at,
                    bytes: 0,
                });
            }
            return Ok(None);
        }
        if head.len() < 5 {
            return Err(SegmentError::Torn {
                offset: at,
                bytes: head.len() as u64,
            });
        }
        let kind = BlockKind::from_u8(head[0]);
        let name = kind.map_or("unknown", BlockKind::name);
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_ARCHIVE_BLOCK_BYTES {
            return Err(self.damaged(name, at, Damage::TooLong(len)));
        }
        if self.blocks >= MAX_ARCHIVE_SEGMENT_BLOCKS {
            return Err(self.damaged(name, at, Damage::TooManyBlocks));
        }
        // The buffer grows with the bytes actually there.
        let mut rest = Vec::with_capacity((len + 32).min(64 * 1024));
        self.fill(&mut rest, len + 32)?;
        if rest.len() < len + 32 {
            return Err(SegmentError::Torn {
                offset: at,
                bytes: 5 + rest.len() as u64,
            });
        }
        let (payload, stored) = rest.split_at(len);
        let (_, next) = chain(&self.chain, head[0], payload);
        if next != stored {
            return Err(self.damaged(name, at, Damage::Chain));
        }
        let Some(kind) = kind else {
            return Err(self.damaged(name, at, Damage::UnknownKind(head[0])));
        };
        if (kind == BlockKind::Header) != (self.blocks == 0) {
            return Err(self.damaged(name, at, Damage::HeaderPlace));
        }
        let before = self.whole.clone();
        let bad = |e: Damage| self.damaged(name, at, e);
        let block = match kind {
            BlockKind::Header => {
                let h: SegmentHeader =
                    serde_json::from_slice(payload).map_err(|e| bad(Damage::Json(e)))?;
                if h.format != "vigil-archive" || h.version != VERSION {
                    return Err(bad(Damage::HeaderVersion));
                }
                Block::Header(h)
            }
            BlockKind::Events => Block::Events(decode_events(payload).map_err(bad)?),
            BlockKind::FillRecords => {
                Block::FillRecords(decode_fill(payload, CertRecord::ENCODED_LEN).map_err(bad)?)
            }
            BlockKind::FillRecordsV1 => {
                Block::FillRecords(decode_fill(payload, CertRecord::LEGACY_LEN).map_err(bad)?)
            }
            BlockKind::FillBegin | BlockKind::FillEnd | BlockKind::Position => {
                let m: Mark = serde_json::from_slice(payload).map_err(|e| bad(Damage::Json(e)))?;
                match kind {
                    BlockKind::FillBegin => Block::FillBegin(m),
                    BlockKind::FillEnd => Block::FillEnd(m),
                    _ => Block::Position(m),
                }
            }
            BlockKind::Seal => {
                let s: Seal = serde_json::from_slice(payload).map_err(|e| bad(Damage::Json(e)))?;
                if s.blocks != self.blocks {
                    return Err(bad(Damage::SealCount));
                }
                if s.sha256 != crate::status::hex(before.finish().as_ref()) {
                    return Err(bad(Damage::SealDigest));
                }
                self.sealed = true;
                Block::Seal(s)
            }
        };
        self.whole.update(&head);
        self.whole.update(&rest);
        self.chain = next;
        self.offset += 5 + len as u64 + 32;
        self.blocks += 1;
        Ok(Some(block))
    }

    /// True once the seal was read.
    pub fn sealed(&self) -> bool {
        self.sealed
    }

    /// The chain value after the last block read.
    pub fn chain(&self) -> [u8; 32] {
        self.chain
    }

    /// Bytes read in whole blocks (where an incomplete block starts).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Blocks read.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// SHA-256 of the bytes read in whole blocks.
    pub fn sha256(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.whole.clone().finish().as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::status::{EventKind, RevocationReason};

    fn header(index: u64) -> SegmentHeader {
        SegmentHeader {
            format: "vigil-archive".into(),
            version: VERSION,
            index,
            created_at_ms: 1,
            prev_segment_sha256: String::new(),
            positions: BTreeMap::new(),
        }
    }

    fn sample(sealed: bool) -> (Vec<u8>, [u8; 32]) {
        let mut w = SegmentWriter::create(Vec::new(), &header(1), GENESIS).unwrap();
        let ev: Vec<(StreamId, &[u8])> = vec![
            (StreamId { ms: 5, seq: 0 }, b"one"),
            (StreamId { ms: 5, seq: 1 }, b"two"),
        ];
        w.block(
            BlockKind::Events,
            &encode_events("a", "ep", StreamId { ms: 6, seq: 0 }, &ev),
        )
        .unwrap();
        let r = CertRecord::from_event(&EventKind::Revoked {
            time: 9,
            reason: RevocationReason::KeyCompromise,
        });
        let s = Serial::from_magnitude(&[7]).unwrap();
        w.block(
            BlockKind::FillRecords,
            &encode_fill("a", IssuerId([3; 32]), &[(s, r)]),
        )
        .unwrap();
        if sealed {
            let (c, _, out) = w.seal().unwrap();
            (out, c)
        } else {
            let c = w.chain;
            (w.out, c)
        }
    }

    fn read_all(b: &[u8]) -> Result<(Vec<Block>, bool), SegmentError> {
        let mut r = SegmentReader::new(b, GENESIS)?;
        let mut out = Vec::new();
        while let Some(x) = r.next_block()? {
            out.push(x);
        }
        Ok((out, r.sealed()))
    }

    #[test]
    fn blocks_round_trip_and_the_seal_is_checked() {
        let (b, _) = sample(true);
        let (blocks, sealed) = read_all(&b).unwrap();
        assert!(sealed);
        assert_eq!(blocks.len(), 4);
        let Block::Events(e) = &blocks[1] else {
            panic!("events")
        };
        assert_eq!(e.events[1], (StreamId { ms: 5, seq: 1 }, b"two".to_vec()));
        assert_eq!(e.last, StreamId { ms: 6, seq: 0 });
        let Block::FillRecords(f) = &blocks[2] else {
            panic!("fill")
        };
        assert_eq!(f.records.len(), 1);
    }

    #[test]
    fn fill_records_of_9_bytes_from_older_segments_are_read() {
        let r = CertRecord::from_event(&EventKind::Revoked {
            time: 9,
            reason: RevocationReason::KeyCompromise,
        })
        .join(CertRecord::from_event(&EventKind::CrlShard {
            scope: crate::status::CrlScope::Shard(5),
        }));
        let s = Serial::from_magnitude(&[7]).unwrap();
        let new = encode_fill("a", IssuerId([3; 32]), &[(s, r)]);
        assert_eq!(
            decode_fill(&new, CertRecord::ENCODED_LEN).unwrap().records,
            [(s, r)]
        );
        // the same block as vigil wrote it before CRL scopes: 9-byte records, kind 4
        let mut old = new[..new.len() - 2].to_vec();
        let n = old.len();
        old[n - 9..].copy_from_slice(&r.to_fixed_bytes()[..9]);
        let got = decode_fill(&old, CertRecord::LEGACY_LEN).unwrap();
        assert_eq!(got.records[0].1.revocation(), r.revocation());
        assert_eq!(got.records[0].1.crl_scope(), None);
        assert_eq!(BlockKind::from_u8(4), Some(BlockKind::FillRecordsV1));
        assert_eq!(BlockKind::from_u8(8), Some(BlockKind::FillRecords));
    }

    #[test]
    fn every_flipped_byte_is_refused_and_cuts_read_as_torn() {
        let (b, _) = sample(true);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x01;
            assert!(read_all(&c).is_err(), "flip at {i} was accepted");
        }
        // An open segment cut anywhere inside a block is torn, never damaged or accepted
        // as complete; cut at a block boundary it reads as complete.
        let (open, _) = sample(false);
        let mut boundaries = vec![];
        let mut r = SegmentReader::new(&open[..], GENESIS).unwrap();
        while r.next_block().unwrap().is_some() {
            boundaries.push(r.offset() as usize);
        }
        for l in 0..open.len() {
            let got = read_all(&open[..l]);
            if boundaries.contains(&l) {
                assert!(got.is_ok(), "cut at block boundary {l}");
            } else {
                assert!(matches!(got, Err(SegmentError::Torn { .. })), "cut at {l}");
            }
        }
    }

    #[test]
    fn the_chain_links_segments() {
        let (b, last) = sample(true);
        let mut w = SegmentWriter::create(Vec::new(), &header(2), last).unwrap();
        w.block(BlockKind::Position, b"{}").unwrap();
        let two = w.out;
        assert!(
            SegmentReader::new(&two[..], last)
                .unwrap()
                .next_block()
                .is_ok()
        );
        let e = SegmentReader::new(&two[..], GENESIS)
            .unwrap()
            .next_block()
            .err()
            .unwrap();
        assert!(e.to_string().contains("chain"), "{e}");
        drop(b);
    }

    #[test]
    fn counts_and_lengths_over_their_bounds_are_refused() {
        let mut p = encode_events("a", "e", StreamId::ZERO, &[]);
        let at = p.len() - 4;
        p[at..].copy_from_slice(&((MAX_ARCHIVE_BLOCK_ENTRIES + 1) as u32).to_be_bytes());
        assert!(matches!(
            decode_events(&p),
            Err(Damage::TooManyEntries(n)) if n == MAX_ARCHIVE_BLOCK_ENTRIES + 1
        ));
        let mut p = encode_events("a", "e", StreamId::ZERO, &[(StreamId::ZERO, b"x")]);
        let n = p.len();
        p[n - 3..n - 1].copy_from_slice(&((MAX_EVENT_BYTES + 1) as u16).to_be_bytes());
        assert!(matches!(decode_events(&p), Err(Damage::LongEvent(_))));
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&VERSION.to_be_bytes());
        b.push(1);
        b.extend_from_slice(&((MAX_ARCHIVE_BLOCK_BYTES + 1) as u32).to_be_bytes());
        let e = read_all(&b).err().unwrap().to_string();
        assert!(e.contains("exceeds the bound"), "{e}");
    }
}
