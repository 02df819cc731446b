//! The backup file format: versioned, self-describing, every section checksummed, a trailing
//! manifest with a SHA-256 over everything before it. Pure: it reads a `Read` and writes a
//! `Write`; opening, renaming and fsyncing are the caller's.
//!
//! ```text
//! file     = magic "VIGILBAK" | version u16 BE (1) | section* | manifest-section
//! section  = kind u8 | length u32 BE | payload (length bytes) | SHA-256(kind | length | payload)
//! kind     = 1 header   (JSON: format, version, created_at, source, config digest, positions)
//!          | 2 records  (one issuer's records from one source, at most BACKUP_SECTION_RECORDS)
//!          | 3 crl      (JSON line + DER: one stored CRL with its number)
//!          | 4 manifest (JSON: section count, per source and issuer counts and digests, and
//!                        the SHA-256 of every byte of the file before this section); last.
//! records  = source-len u8 | source | issuer 32 | record-len u8 (11; 9 in backups made
//!            before CRL scopes, still read) | count u32 BE | (serial-len u8 | serial | record)*
//! ```
//!
//! Every length is checked against a named bound before anything is allocated, so a damaged or
//! hostile file is refused with the section it broke in, never a panic or an unbounded buffer.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use crate::limits::{MAX_BACKUP_SECTION_BYTES, MAX_BACKUP_SECTIONS, MAX_BACKUP_SOURCE_BYTES};
use crate::status::{CertRecord, IssuerId, Serial, hex};

/// The file's first eight bytes.
pub const MAGIC: &[u8; 8] = b"VIGILBAK";
/// The format version this code writes and reads.
pub const VERSION: u16 = 1;
/// Records per records section: about 1.5 MB of payload, so writing and reading hold one
/// section at a time however many certificates there are.
pub const BACKUP_SECTION_RECORDS: usize = 50_000;

/// What a section holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionKind {
    /// The [`Header`].
    Header = 1,
    /// One issuer's records from one source.
    Records = 2,
    /// One stored CRL.
    Crl = 3,
    /// The [`Manifest`], last.
    Manifest = 4,
}

impl SectionKind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Header,
            2 => Self::Records,
            3 => Self::Crl,
            4 => Self::Manifest,
            _ => return None,
        })
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Records => "records",
            Self::Crl => "crl",
            Self::Manifest => "manifest",
        }
    }
}

/// Where one source's data stood when the backup was taken.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Position {
    /// Region name (or `checkpoint` / `journal`).
    pub source: String,
    /// The region's data epoch (empty for a journal).
    pub epoch: String,
    /// The stream id every event up to which the records hold (`0-0` without a stream).
    pub stream_id: String,
}

/// The first section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    /// Always `vigil-backup`.
    pub format: String,
    /// [`VERSION`].
    pub version: u16,
    /// RFC 3339.
    pub created_at: String,
    /// `regions`, `checkpoint` or `journal`.
    pub source: String,
    /// SHA-256 of the configuration file (never its contents: it names secret files).
    pub config_sha256: String,
    /// One per source.
    pub positions: Vec<Position>,
    /// Bytes per record ([`CertRecord::ENCODED_LEN`]).
    pub record_len: u8,
    /// Regions not scanned because they held exactly what another region held when the
    /// backup started (absent in backups made before it was kept, and when every region was
    /// scanned).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub same_as: Vec<SameAs>,
}

/// A region whose records are in the backup as another region's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SameAs {
    /// The region not scanned.
    pub source: String,
    /// The region scanned in its place.
    pub same_as: String,
    /// Per issuer hex, its record count and digest in both regions (each read atomically with
    /// its region's stream position, the region's [`Position`]).
    pub issuers: BTreeMap<String, (u64, String)>,
}

/// One stored CRL.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CrlEntry {
    /// Region it was read from.
    pub source: String,
    /// `/crl/` path (`demo.crl`, `demo/3.delta.crl`).
    pub path: String,
    /// Configured issuer name.
    pub issuer: String,
    /// Shard, for sharded CRLs.
    pub shard: Option<u16>,
    /// A delta CRL.
    pub delta: bool,
    /// CRLNumber.
    pub number: u64,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
}

/// Count and digest of one issuer's records from one source.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IssuerCount {
    /// Certificates.
    pub records: u64,
    /// Revoked certificates (permanently).
    pub revoked: u64,
    /// Certificates on hold.
    pub held: u64,
    /// XOR of SHA-1(serial ‖ record), the feed's per-issuer digest (`vigil:digest`).
    pub digest: String,
}

/// The last section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Sections before this one.
    pub sections: u64,
    /// source → issuer hex → count.
    pub counts: BTreeMap<String, BTreeMap<String, IssuerCount>>,
    /// CRLs stored.
    pub crls: u64,
    /// SHA-256 (hex) of every byte of the file before the manifest section.
    pub sha256: String,
    /// RFC 3339: when the last record was read (empty in backups made before it was kept).
    /// A point-in-time restore needs a backup finished before its time.
    #[serde(default)]
    pub finished_at: String,
}

/// Why a backup file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The file is shorter than the magic and version.
    #[error("not a vigil backup: shorter than its magic")]
    ShortMagic,
    /// The file does not start with the magic.
    #[error("not a vigil backup: bad magic")]
    BadMagic,
    /// A format version this build does not read.
    #[error("not a vigil backup: format version {0}; this vigil reads {VERSION}")]
    Version(u16),
    /// A section is damaged: named by its position and kind.
    #[error("section {index} ({kind}) at byte {offset}: {reason}")]
    Damaged {
        /// 0-based section index.
        index: u64,
        /// Its kind's name (or `unknown`).
        kind: &'static str,
        /// Byte offset of the section's start.
        offset: u64,
        /// What is wrong.
        reason: Damage,
    },
    /// The file ends before its manifest (truncated).
    #[error("the file ends at byte {0} without a manifest (truncated)")]
    Truncated(u64),
    /// A JSON section could not be encoded.
    #[error("encoding a section: {0}")]
    Encode(serde_json::Error),
    /// A section to write is over [`MAX_BACKUP_SECTION_BYTES`].
    #[error("section too large")]
    TooLarge,
    /// Records were added with no records section open (a bug of the writer).
    #[error("no records section open")]
    NoRecordsSection,
    /// Bytes follow the manifest.
    #[error("bytes after the manifest at byte {0}")]
    AfterManifest(u64),
}

/// What is wrong with a damaged section.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Damage {
    /// Its length is over [`MAX_BACKUP_SECTION_BYTES`].
    #[error("length {0} exceeds the bound")]
    TooLong(usize),
    /// The file has more sections than [`MAX_BACKUP_SECTIONS`].
    #[error("more sections than the bound")]
    TooManySections,
    /// Its SHA-256 is not the one its bytes make.
    #[error("checksum mismatch")]
    Checksum,
    /// A kind this version does not know.
    #[error("unknown kind {0}")]
    UnknownKind(u8),
    /// A header that is not the first section, or a first section that is not a header.
    #[error("the header must be the first section")]
    HeaderPlace,
    /// Records of a length this build does not read.
    #[error("records of another size")]
    RecordSize,
    /// A JSON section that does not decode.
    #[error("{0}")]
    Json(serde_json::Error),
    /// A CRL section without its JSON description line.
    #[error("no CRL description")]
    NoCrlDescription,
    /// The manifest's SHA-256 is not the file's.
    #[error("the file's SHA-256 does not match")]
    FileDigest,
    /// The manifest's section count is not the file's.
    #[error("section count does not match")]
    SectionCount,
    /// The file is not the one verified before.
    #[error("the file changed since it was verified")]
    ChangedSinceVerified,
    /// The manifest's counts or digests are not the records'.
    #[error("counts or digests do not match")]
    Counts,
    /// A records section that ends inside its contents.
    #[error("records section is truncated")]
    RecordsTruncated,
    /// A source name that is not UTF-8.
    #[error("source is not UTF-8")]
    SourceNotUtf8,
    /// More records than [`BACKUP_SECTION_RECORDS`].
    #[error("{0} records, more than {BACKUP_SECTION_RECORDS}")]
    TooManyRecords(usize),
    /// A serial that is not a positive minimal INTEGER.
    #[error("{0}")]
    Serial(#[from] crate::status::SerialError),
    /// A record that does not decode.
    #[error("malformed record")]
    Record,
    /// Bytes after the records.
    #[error("bytes after the records")]
    Trailing,
}

/// A running digest of one issuer's records (the feed's XOR-of-SHA-1 digest and counts).
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Certificates.
    pub records: u64,
    /// Revoked.
    pub revoked: u64,
    /// On hold.
    pub held: u64,
    digest: [u8; 20],
}

impl Tally {
    /// Adds one record.
    pub fn add(&mut self, serial: &Serial, record: &CertRecord) {
        self.records += 1;
        match record.status_with(true) {
            crate::status::CertStatus::Revoked(r)
                if r.reason == crate::status::RevocationReason::CertificateHold =>
            {
                self.held += 1
            }
            crate::status::CertStatus::Revoked(_) => self.revoked += 1,
            _ => {}
        }
        let mut ctx = Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
        ctx.update(serial.as_der_content());
        ctx.update(&record.to_bytes());
        for (d, s) in self.digest.iter_mut().zip(ctx.finish().as_ref()) {
            *d ^= s;
        }
    }

    /// Adds another tally's records (of other certificates, or of the same source read in
    /// other sections): counts add, digests XOR.
    pub fn absorb(&mut self, other: &Tally) {
        self.records += other.records;
        self.revoked += other.revoked;
        self.held += other.held;
        for (d, o) in self.digest.iter_mut().zip(other.digest.iter()) {
            *d ^= o;
        }
    }

    /// As it goes in the manifest.
    pub fn count(&self) -> IssuerCount {
        IssuerCount {
            records: self.records,
            revoked: self.revoked,
            held: self.held,
            digest: hex(&self.digest),
        }
    }
}

/// The framing of one section: its 5-byte head (kind, length) and the SHA-256 that follows
/// its payload. The caller checks the payload against [`MAX_BACKUP_SECTION_BYTES`] (which is
/// below `u32::MAX`, so the length fits).
pub fn frame(kind: u8, payload: &[u8]) -> ([u8; 5], [u8; 32]) {
    let len = payload.len().min(u32::MAX as usize) as u32;
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&len.to_be_bytes());
    let mut ctx = Context::new(&SHA256);
    ctx.update(&head);
    ctx.update(payload);
    let mut sum = [0u8; 32];
    sum.copy_from_slice(ctx.finish().as_ref());
    (head, sum)
}

// === impl Writer ===

/// Writes a backup section by section, keeping the whole-file digest and the manifest.
pub struct Writer<W: Write> {
    out: W,
    whole: Context,
    sections: u64,
    tallies: BTreeMap<String, BTreeMap<String, Tally>>,
    crls: u64,
    /// Per source, the records section being filled: its issuer, payload, count and the tally
    /// of its records (folded into `tallies` when it is written).
    pending: BTreeMap<String, Pending>,
    finished_at: String,
}

/// A records section being filled.
struct Pending {
    issuer: IssuerId,
    payload: Vec<u8>,
    count: u32,
    tally: Tally,
}

impl<W: Write> Writer<W> {
    /// Records when the backup's data was read to its end (the caller's clock).
    pub fn set_finished_at(&mut self, rfc3339: String) {
        self.finished_at = rfc3339;
    }

    /// Starts a backup: the magic, the version and the header section.
    pub fn new(out: W, header: &Header) -> Result<Self, FormatError> {
        let mut w = Writer {
            out,
            whole: Context::new(&SHA256),
            sections: 0,
            tallies: BTreeMap::new(),
            crls: 0,
            pending: BTreeMap::new(),
            finished_at: String::new(),
        };
        w.raw(MAGIC)?;
        w.raw(&VERSION.to_be_bytes())?;
        let json = serde_json::to_vec(header).map_err(FormatError::Encode)?;
        w.section(SectionKind::Header, &json)?;
        Ok(w)
    }

    fn raw(&mut self, b: &[u8]) -> Result<(), FormatError> {
        self.whole.update(b);
        self.out.write_all(b)?;
        Ok(())
    }

    fn section(&mut self, kind: SectionKind, payload: &[u8]) -> Result<(), FormatError> {
        if payload.len() > MAX_BACKUP_SECTION_BYTES {
            return Err(FormatError::TooLarge);
        }
        let (head, sum) = frame(kind as u8, payload);
        self.raw(&head)?;
        self.raw(payload)?;
        self.raw(&sum)?;
        self.sections += 1;
        Ok(())
    }

    /// Adds one record of `issuer` from `source` (a region name, `checkpoint`, `journal`).
    /// Records of one issuer and source are grouped into sections of
    /// [`BACKUP_SECTION_RECORDS`]; each source fills its own section, so records of several
    /// sources read at once may come interleaved.
    pub fn record(
        &mut self,
        source: &str,
        issuer: IssuerId,
        serial: &Serial,
        record: &CertRecord,
    ) -> Result<(), FormatError> {
        self.records(source, issuer, std::slice::from_ref(&(*serial, *record)))
    }

    /// Adds many records of `issuer` from `source` ([`Self::record`]).
    pub fn records(
        &mut self,
        source: &str,
        issuer: IssuerId,
        records: &[(Serial, CertRecord)],
    ) -> Result<(), FormatError> {
        let mut rest = records;
        while !rest.is_empty() {
            let same = self.pending.get(source).is_some_and(|p| p.issuer == issuer);
            if !same {
                self.flush_source(source)?;
                let src = &source.as_bytes()[..source.len().min(MAX_BACKUP_SOURCE_BYTES)];
                let mut p = Vec::with_capacity(64 + BACKUP_SECTION_RECORDS * 16);
                p.push(src.len() as u8);
                p.extend_from_slice(src);
                p.extend_from_slice(&issuer.0);
                p.push(CertRecord::ENCODED_LEN as u8);
                p.extend_from_slice(&0u32.to_be_bytes());
                self.pending.insert(
                    source.to_owned(),
                    Pending {
                        issuer,
                        payload: p,
                        count: 0,
                        tally: Tally::default(),
                    },
                );
            }
            let full = {
                let Some(p) = self.pending.get_mut(source) else {
                    return Err(FormatError::NoRecordsSection);
                };
                let room = BACKUP_SECTION_RECORDS - p.count as usize;
                let (now, later) = rest.split_at(room.min(rest.len()));
                for (serial, record) in now {
                    p.tally.add(serial, record);
                    let s = serial.as_der_content();
                    p.payload.push(s.len() as u8);
                    p.payload.extend_from_slice(s);
                    p.payload.extend_from_slice(&record.to_fixed_bytes());
                }
                p.count += now.len() as u32;
                rest = later;
                p.count as usize >= BACKUP_SECTION_RECORDS
            };
            if full {
                self.flush_source(source)?;
            }
        }
        Ok(())
    }

    /// Writes the source's open records section, if any.
    fn flush_source(&mut self, source: &str) -> Result<(), FormatError> {
        if let Some(mut p) = self.pending.remove(source) {
            let at = 1 + source.len().min(MAX_BACKUP_SOURCE_BYTES) + 32 + 1;
            p.payload[at..at + 4].copy_from_slice(&p.count.to_be_bytes());
            self.section(SectionKind::Records, &p.payload)?;
            self.tallies
                .entry(source.to_owned())
                .or_default()
                .entry(hex(&p.issuer.0))
                .or_default()
                .absorb(&p.tally);
        }
        Ok(())
    }

    fn flush_records(&mut self) -> Result<(), FormatError> {
        let sources: Vec<String> = self.pending.keys().cloned().collect();
        for s in sources {
            self.flush_source(&s)?;
        }
        Ok(())
    }

    /// Adds a stored CRL.
    pub fn crl(&mut self, entry: &CrlEntry, der: &[u8]) -> Result<(), FormatError> {
        self.flush_records()?;
        let mut p = serde_json::to_vec(entry).map_err(FormatError::Encode)?;
        p.push(b'\n');
        p.extend_from_slice(der);
        self.section(SectionKind::Crl, &p)?;
        self.crls += 1;
        Ok(())
    }

    /// Writes the manifest and returns it with the output.
    pub fn finish(mut self) -> Result<(Manifest, W), FormatError> {
        self.flush_records()?;
        let manifest = Manifest {
            sections: self.sections,
            counts: self
                .tallies
                .iter()
                .map(|(s, m)| {
                    (
                        s.clone(),
                        m.iter().map(|(i, t)| (i.clone(), t.count())).collect(),
                    )
                })
                .collect(),
            crls: self.crls,
            sha256: hex(self.whole.clone().finish().as_ref()),
            finished_at: std::mem::take(&mut self.finished_at),
        };
        let json = serde_json::to_vec(&manifest).map_err(FormatError::Encode)?;
        self.section(SectionKind::Manifest, &json)?;
        self.out.flush()?;
        Ok((manifest, self.out))
    }
}

// === impl Reader ===

/// One records section, decoded.
pub struct RecordsSection {
    /// Where they came from.
    pub source: String,
    /// Their issuer.
    pub issuer: IssuerId,
    /// The records.
    pub records: Vec<(Serial, CertRecord)>,
}

/// One section as read.
pub enum Section {
    /// The header.
    Header(Header),
    /// Records.
    Records(RecordsSection),
    /// A CRL and its DER.
    Crl(CrlEntry, Vec<u8>),
}

/// Reads a backup section by section, checking every checksum, and at the end the manifest.
pub struct Reader<R: Read> {
    input: R,
    whole: Context,
    offset: u64,
    index: u64,
    tallies: BTreeMap<String, BTreeMap<String, Tally>>,
    crls: u64,
    manifest: Option<Manifest>,
    seen_header: bool,
    /// Set by [`Self::trust`]: the SHA-256 a verify pass found.
    verified_sha256: Option<String>,
    skip: std::collections::HashSet<(String, IssuerId)>,
}

impl<R: Read> Reader<R> {
    /// For a second pass over a file a first pass verified whole (a restore): records sections
    /// are not tallied again, sections of the (source, issuer) pairs in `skip` are checked
    /// (checksum, whole-file digest) but not decoded or returned, and the manifest must carry
    /// the SHA-256 the first pass verified, so the bytes used are the bytes verified.
    pub fn trust(
        &mut self,
        verified_sha256: String,
        skip: std::collections::HashSet<(String, IssuerId)>,
    ) {
        self.verified_sha256 = Some(verified_sha256);
        self.skip = skip;
    }

    /// Checks the magic and version.
    pub fn new(mut input: R) -> Result<Self, FormatError> {
        let mut head = [0u8; 10];
        input
            .read_exact(&mut head)
            .map_err(|_| FormatError::ShortMagic)?;
        if &head[..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = u16::from_be_bytes([head[8], head[9]]);
        if version != VERSION {
            return Err(FormatError::Version(version));
        }
        let mut whole = Context::new(&SHA256);
        whole.update(&head);
        Ok(Reader {
            input,
            whole,
            offset: 10,
            index: 0,
            tallies: BTreeMap::new(),
            crls: 0,
            manifest: None,
            seen_header: false,
            verified_sha256: None,
            skip: std::collections::HashSet::new(),
        })
    }

    fn damaged(&self, kind: &'static str, at: u64, reason: Damage) -> FormatError {
        FormatError::Damaged {
            index: self.index,
            kind,
            offset: at,
            reason,
        }
    }

    /// The next section; `None` after the manifest (which is checked against everything read).
    pub fn next_section(&mut self) -> Result<Option<Section>, FormatError> {
        loop {
            if self.manifest.is_some() {
                let mut extra = [0u8; 1];
                return match self.input.read(&mut extra)? {
                    0 => Ok(None),
                    _ => Err(FormatError::AfterManifest(self.offset)),
                };
            }
            let at = self.offset;
            let mut head = [0u8; 5];
            if let Err(e) = self.input.read_exact(&mut head) {
                return Err(match e.kind() {
                    io::ErrorKind::UnexpectedEof => FormatError::Truncated(at),
                    _ => e.into(),
                });
            }
            let kind = SectionKind::from_u8(head[0]);
            let name = kind.map_or("unknown", SectionKind::name);
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if len > MAX_BACKUP_SECTION_BYTES {
                return Err(self.damaged(name, at, Damage::TooLong(len)));
            }
            if self.index >= MAX_BACKUP_SECTIONS {
                return Err(self.damaged(name, at, Damage::TooManySections));
            }
            let before_manifest = self.whole.clone();
            // The buffer grows with the bytes actually there: a truncated (or hostile) file
            // that claims a large section costs only what it holds.
            let mut payload = Vec::with_capacity(len.min(64 * 1024));
            let mut sum = [0u8; 32];
            (&mut self.input)
                .take(len as u64)
                .read_to_end(&mut payload)?;
            if payload.len() != len {
                return Err(FormatError::Truncated(at));
            }
            self.input
                .read_exact(&mut sum)
                .map_err(|_| FormatError::Truncated(at))?;
            if frame(head[0], &payload).1 != sum {
                return Err(self.damaged(name, at, Damage::Checksum));
            }
            self.whole.update(&head);
            self.whole.update(&payload);
            self.whole.update(&sum);
            self.offset += 5 + len as u64 + 32;
            let Some(kind) = kind else {
                return Err(self.damaged(name, at, Damage::UnknownKind(head[0])));
            };
            if (kind == SectionKind::Header) == self.seen_header {
                return Err(self.damaged(name, at, Damage::HeaderPlace));
            }
            let section = match kind {
                SectionKind::Header => {
                    let h: Header = serde_json::from_slice(&payload)
                        .map_err(|e| self.damaged(name, at, Damage::Json(e)))?;
                    if !record_len_known(h.record_len) {
                        return Err(self.damaged(name, at, Damage::RecordSize));
                    }
                    self.seen_header = true;
                    Section::Header(h)
                }
                SectionKind::Records if self.verified_sha256.is_some() => {
                    if !self.skip.is_empty()
                        && let Some(key) = records_key(&payload)
                        && self.skip.contains(&key)
                    {
                        self.index += 1;
                        continue;
                    }
                    let r = decode_records(&payload).map_err(|e| self.damaged(name, at, e))?;
                    Section::Records(r)
                }
                SectionKind::Records => {
                    let r = decode_records(&payload).map_err(|e| self.damaged(name, at, e))?;
                    let t = self
                        .tallies
                        .entry(r.source.clone())
                        .or_default()
                        .entry(hex(&r.issuer.0))
                        .or_default();
                    for (s, rec) in &r.records {
                        t.add(s, rec);
                    }
                    Section::Records(r)
                }
                SectionKind::Crl => {
                    let nl = payload
                        .iter()
                        .position(|&b| b == b'\n')
                        .ok_or_else(|| self.damaged(name, at, Damage::NoCrlDescription))?;
                    let entry: CrlEntry = serde_json::from_slice(&payload[..nl])
                        .map_err(|e| self.damaged(name, at, Damage::Json(e)))?;
                    self.crls += 1;
                    // The DER moved to the front in place: a large CRL is not copied.
                    payload.drain(..=nl);
                    Section::Crl(entry, payload)
                }
                SectionKind::Manifest => {
                    let m: Manifest = serde_json::from_slice(&payload)
                        .map_err(|e| self.damaged(name, at, Damage::Json(e)))?;
                    let whole = hex(before_manifest.finish().as_ref());
                    if m.sha256 != whole {
                        return Err(self.damaged(name, at, Damage::FileDigest));
                    }
                    if m.sections != self.index {
                        return Err(self.damaged(name, at, Damage::SectionCount));
                    }
                    let counts: BTreeMap<_, BTreeMap<_, _>> = self
                        .tallies
                        .iter()
                        .map(|(s, m)| {
                            (
                                s.clone(),
                                m.iter().map(|(i, t)| (i.clone(), t.count())).collect(),
                            )
                        })
                        .collect();
                    match &self.verified_sha256 {
                        Some(v) if *v != m.sha256 => {
                            return Err(self.damaged(name, at, Damage::ChangedSinceVerified));
                        }
                        Some(_) => {}
                        None if m.counts != counts || m.crls != self.crls => {
                            return Err(self.damaged(name, at, Damage::Counts));
                        }
                        None => {}
                    }
                    self.manifest = Some(m);
                    self.index += 1;
                    continue;
                }
            };
            self.index += 1;
            return Ok(Some(section));
        }
    }

    /// The manifest, once [`Self::next_section`] returned `None`.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }
}

/// The source and issuer of a records section, without decoding its records.
fn records_key(p: &[u8]) -> Option<(String, IssuerId)> {
    let src_len = *p.first()? as usize;
    let source = std::str::from_utf8(p.get(1..1 + src_len)?).ok()?;
    let issuer = IssuerId(p.get(1 + src_len..1 + src_len + 32)?.try_into().ok()?);
    Some((source.to_owned(), issuer))
}

fn decode_records(p: &[u8]) -> Result<RecordsSection, Damage> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], Damage> {
        let s = p.get(at..at + n).ok_or(Damage::RecordsTruncated)?;
        at += n;
        Ok(s)
    };
    let src_len = take(1)?[0] as usize;
    let source = std::str::from_utf8(take(src_len)?)
        .map_err(|_| Damage::SourceNotUtf8)?
        .to_owned();
    let issuer = IssuerId(take(32)?.try_into().map_err(|_| Damage::RecordsTruncated)?);
    let record_len = take(1)?[0];
    if !record_len_known(record_len) {
        return Err(Damage::RecordSize);
    }
    let count =
        u32::from_be_bytes(take(4)?.try_into().map_err(|_| Damage::RecordsTruncated)?) as usize;
    if count > BACKUP_SECTION_RECORDS {
        return Err(Damage::TooManyRecords(count));
    }
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let slen = take(1)?[0] as usize;
        let serial = Serial::from_der_content(take(slen)?)?;
        let record = CertRecord::from_bytes(take(record_len as usize)?).ok_or(Damage::Record)?;
        records.push((serial, record));
    }
    if at != p.len() {
        return Err(Damage::Trailing);
    }
    Ok(RecordsSection {
        source,
        issuer,
        records,
    })
}

/// A record length this build reads: [`CertRecord::ENCODED_LEN`], or
/// [`CertRecord::LEGACY_LEN`] (backups made before CRL scopes were recorded).
fn record_len_known(len: u8) -> bool {
    matches!(
        len as usize,
        CertRecord::ENCODED_LEN | CertRecord::LEGACY_LEN
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::status::{EventKind, RevocationReason};

    fn header() -> Header {
        Header {
            format: "vigil-backup".into(),
            version: VERSION,
            created_at: "2026-01-01T00:00:00Z".into(),
            source: "regions".into(),
            config_sha256: String::new(),
            positions: vec![],
            record_len: CertRecord::ENCODED_LEN as u8,
            same_as: vec![],
        }
    }

    fn sample(n: u32) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        for i in 1..=n {
            let s = Serial::from_magnitude(&i.to_be_bytes()).unwrap();
            let r = if i % 10 == 0 {
                CertRecord::from_event(&EventKind::Revoked {
                    time: 1_700_000_000,
                    reason: RevocationReason::KeyCompromise,
                })
            } else {
                CertRecord::from_event(&EventKind::Issued {
                    not_after: 1_900_000_000,
                })
            };
            w.record("a", IssuerId([7; 32]), &s, &r).unwrap();
        }
        w.finish().unwrap().1
    }

    fn read_all(b: &[u8]) -> Result<(u64, Manifest), FormatError> {
        let mut r = Reader::new(b)?;
        let mut n = 0;
        while let Some(s) = r.next_section()? {
            if let Section::Records(x) = s {
                n += x.records.len() as u64;
            }
        }
        Ok((n, r.manifest().cloned().unwrap()))
    }

    #[test]
    fn records_of_9_bytes_from_older_backups_are_read() {
        let payload = |len: u8, rec: &[u8]| {
            let mut p = vec![1, b'a'];
            p.extend_from_slice(&[7; 32]);
            p.push(len);
            p.extend_from_slice(&1u32.to_be_bytes());
            p.extend_from_slice(&[1, 0x05]);
            p.extend_from_slice(rec);
            p
        };
        let old = decode_records(&payload(9, &[0, 0, 0, 100, 0, 0, 0, 50, 1])).unwrap();
        assert_eq!(old.records[0].1.revocation().map(|r| r.time), Some(50));
        assert_eq!(old.records[0].1.crl_scope(), None);
        let new = decode_records(&payload(11, &[0, 0, 0, 100, 0, 0, 0, 50, 1, 0, 3])).unwrap();
        assert_eq!(
            new.records[0].1.crl_scope(),
            Some(crate::status::CrlScope::Shard(2))
        );
        assert!(decode_records(&payload(10, &[0; 10])).is_err());
    }

    #[test]
    fn round_trip_over_several_sections() {
        let b = sample(120_000);
        let (n, m) = read_all(&b).unwrap();
        assert_eq!(n, 120_000);
        let c = &m.counts["a"][&hex(&[7; 32])];
        assert_eq!((c.records, c.revoked), (120_000, 12_000));
        assert_eq!(m.sections, 4); // header + 3 records sections
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_refused() {
        let b = sample(30);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x01;
            assert!(read_all(&c).is_err(), "flip at {i} was accepted");
        }
        for l in 0..b.len() {
            assert!(read_all(&b[..l]).is_err(), "truncation to {l} was accepted");
        }
        let mut c = b.clone();
        c.push(0);
        assert!(read_all(&c).is_err());
    }

    #[test]
    fn a_section_claiming_more_bytes_than_the_file_holds_is_truncated() {
        let mut b = sample(3)[..10].to_vec();
        b.push(SectionKind::Header as u8);
        b.extend_from_slice(&(MAX_BACKUP_SECTION_BYTES as u32).to_be_bytes());
        b.extend_from_slice(b"{}");
        assert!(matches!(read_all(&b), Err(FormatError::Truncated(10))));
        b[11..15].copy_from_slice(&(MAX_BACKUP_SECTION_BYTES as u32 + 1).to_be_bytes());
        let e = read_all(&b).err().unwrap().to_string();
        assert!(e.contains("section 0 (header) at byte 10: length"), "{e}");
    }
}
