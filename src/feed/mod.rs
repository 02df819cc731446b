//! The multi-region revocation feed on Redis Streams.
//!
//! Every region has its own Redis (a single server or a Sentinel-managed group). Each holds, under
//! `feed.key_prefix` (`vigil` below):
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `vigil:feed` | stream | status events (`e` = one encoded [`Event`], `p` = several, [`field_events`]) and heartbeats (`hb`), trimmed with `MAXLEN ~` |
//! | `vigil:snap:<issuer hex>` | hash | serial (DER content octets) → 9- or 11-byte [`CertRecord`]: the join of every event |
//! | `vigil:issuers` | set | issuer hex ids that have a snapshot |
//! | `vigil:digest` | hash | issuer hex → XOR of SHA-1(serial ‖ record) over its snapshot (anti-entropy) |
//! | `vigil:epoch` | string | random id made when the region's data was first written; a new one means the data was lost |
//! | `vigil:hints:<region>` | stream | events this region holds that `<region>` missed (hinted handoff) |
//! | `vigil:resync:<region>` | string | set when the hints for `<region>` overflowed `maxlen`: copy everything there |
//! | `vigil:synced` | hash | source region → that region's epoch whose data has been copied here |
//! | `vigil:hb`, `vigil:sync-lock`, `vigil:handoff-lock:<region>` | string | short leases |
//!
//! - **Writing** ([`publish`]): one Lua script per certificate joins the record into the snapshot
//!   and, only when that changed it, `XADD`s the events, atomically. Sent to every region at once;
//!   acknowledged when `feed.quorum` regions succeeded. Regions that failed get hints in the
//!   regions that succeeded. Retrying is safe: the join is idempotent and the script writes
//!   nothing when the snapshot already holds the record.
//! - **Reading** ([`consume`]): per region, one task tails the stream with `XREAD BLOCK` from its
//!   cursor, reconnecting with capped exponential backoff and jitter. Without a usable cursor (a
//!   new replica, a region whose data was lost, a stream trimmed past the cursor) it takes the
//!   stream's last id first, then scans the snapshot, then tails from that id.
//! - **Repair** ([`repair`]): replicas hand hints off to the region they name once it is back,
//!   and copy their whole view into a region whose `synced` entry for another region does not
//!   match that region's current epoch (a region that lost its data).
//! - **Checkpoint** ([`checkpoint`]): the view and the cursors on local disk.
//! - **Freshness** ([`health`]): per-region last event/heartbeat and apply lag, and readiness.
//!
//! [`CertRecord`]: crate::status::CertRecord

pub mod checkpoint;
pub mod consume;
pub mod health;
pub mod publish;
pub mod region;
pub mod repair;
pub mod scripts;

use std::fmt;
use std::str::FromStr;

use crate::status::{Event, IssuerId};

/// The stream field holding one encoded [`Event`].
pub const FIELD_EVENT: &[u8] = b"e";

/// The stream field holding several encoded events, each as a 2-octet big-endian length and the
/// event ([`pack_events`]): what a batch write appends, one field per stream entry, so that a
/// mass revocation's entry is one string to store, send and parse rather than hundreds.
pub const FIELD_PACKED: &[u8] = b"p";

/// Appends `events` to `out` in the [`FIELD_PACKED`] form. An event longer than a 2-octet
/// length can say is left out (no encoded event comes near: [`MAX_EVENT_BYTES`]).
///
/// [`MAX_EVENT_BYTES`]: crate::limits::MAX_EVENT_BYTES
pub fn pack_events<'a>(out: &mut Vec<u8>, events: impl IntoIterator<Item = &'a [u8]>) {
    for e in events {
        if let Ok(n) = u16::try_from(e.len()) {
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(e);
        }
    }
}

/// A stream field that is not what [`field_events`] expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// A packed field ends inside a length or an event.
    #[error("a packed stream field is cut short")]
    Truncated,
    /// A packed field holds more events than a writer puts in one entry.
    #[error(
        "a packed stream field holds more than {} events",
        crate::limits::FEED_ENTRY_MAX_EVENTS
    )]
    TooMany,
}

/// The encoded events of one stream field, in order: [`FIELD_EVENT`] holds one,
/// [`FIELD_PACKED`] up to [`FEED_ENTRY_MAX_EVENTS`](crate::limits::FEED_ENTRY_MAX_EVENTS); any
/// other field (a heartbeat) none. A malformed packed field yields the events before the fault,
/// then one error, then nothing.
pub fn field_events<'a>(field: &[u8], value: &'a [u8]) -> FieldEvents<'a> {
    FieldEvents {
        rest: value,
        single: field == FIELD_EVENT,
        packed: field == FIELD_PACKED,
        seen: 0,
    }
}

/// Iterator of [`field_events`].
pub struct FieldEvents<'a> {
    rest: &'a [u8],
    single: bool,
    packed: bool,
    seen: usize,
}

impl<'a> Iterator for FieldEvents<'a> {
    type Item = Result<&'a [u8], FieldError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.single {
            self.single = false;
            return Some(Ok(self.rest));
        }
        if !self.packed || self.rest.is_empty() {
            return None;
        }
        let fail = |me: &mut Self, e| {
            me.packed = false;
            Some(Err(e))
        };
        if self.seen == crate::limits::FEED_ENTRY_MAX_EVENTS {
            return fail(self, FieldError::TooMany);
        }
        let Some((len, tail)) = self.rest.split_first_chunk::<2>() else {
            return fail(self, FieldError::Truncated);
        };
        let n = usize::from(u16::from_be_bytes(*len));
        if tail.len() < n {
            return fail(self, FieldError::Truncated);
        }
        let (event, rest) = tail.split_at(n);
        self.rest = rest;
        self.seen += 1;
        Some(Ok(event))
    }
}

/// Feed failures (one region's, or a write's).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// Redis said no, or could not be reached.
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    /// A region did not answer in time.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// Redis answered with something vigil did not expect.
    #[error("unexpected reply: {0}")]
    Protocol(String),
    /// The Sentinels refused vigil's credentials for them.
    #[error(
        "the Sentinels refuse vigil (check sentinel_username and sentinel_password_file or {password_env}): {source}"
    )]
    SentinelRefused {
        /// The environment variable that may hold the Sentinels' password.
        password_env: String,
        /// What the Sentinel answered.
        source: redis::RedisError,
    },
    /// A configured secret or certificate could not be read.
    #[error("{0}")]
    Setup(String),
}

/// The Redis key names of one deployment (`feed.key_prefix`).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The event stream.
    pub fn stream(&self) -> String {
        format!("{}:feed", self.prefix)
    }

    /// The snapshot hash of one issuer.
    pub fn snapshot(&self, issuer: &IssuerId) -> String {
        format!("{}:snap:{}", self.prefix, crate::status::hex(&issuer.0))
    }

    /// The snapshot hash named by an issuer hex id from the issuers set.
    pub fn snapshot_hex(&self, issuer_hex: &str) -> String {
        format!("{}:snap:{issuer_hex}", self.prefix)
    }

    /// The set of issuers with a snapshot.
    pub fn issuers(&self) -> String {
        format!("{}:issuers", self.prefix)
    }

    /// Per-issuer snapshot digests.
    pub fn digests(&self) -> String {
        format!("{}:digest", self.prefix)
    }

    /// The region's data epoch.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// Hints for `region`, kept in another region.
    pub fn hints(&self, region: &str) -> String {
        format!("{}:hints:{region}", self.prefix)
    }

    /// Set in a region when hints for `region` overflowed: repair copies the whole view there.
    pub fn resync(&self, region: &str) -> String {
        format!("{}:resync:{region}", self.prefix)
    }

    /// Which regions' data has been copied into this one.
    pub fn synced(&self) -> String {
        format!("{}:synced", self.prefix)
    }

    /// Heartbeat lease.
    pub fn heartbeat(&self) -> String {
        format!("{}:hb", self.prefix)
    }

    /// Full-copy lease.
    pub fn sync_lock(&self) -> String {
        format!("{}:sync-lock", self.prefix)
    }

    /// Hint hand-off lease, per target region.
    pub fn handoff_lock(&self, region: &str) -> String {
        format!("{}:handoff-lock:{region}", self.prefix)
    }
}

/// A stream entry id, `<ms>-<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl StreamId {
    /// `0-0`: before every entry.
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = FeedError;

    fn from_str(s: &str) -> Result<Self, FeedError> {
        let bad = || FeedError::Protocol(format!("bad stream id {:?}", truncate(s, 48)));
        if s.len() > crate::limits::MAX_STREAM_ID_BYTES {
            return Err(bad());
        }
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Ok(StreamId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// Where a replica stands in one region's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The region's data epoch the id belongs to.
    pub epoch: String,
    /// Last entry applied.
    pub id: StreamId,
}

/// The events that, joined, give one certificate's record in a snapshot: what one script call
/// writes.
#[derive(Debug, Clone)]
pub struct CertWrite {
    /// The issuer.
    pub issuer: IssuerId,
    /// Serial, DER content octets.
    pub serial: crate::status::Serial,
    /// The join of the events' records.
    pub record: crate::status::CertRecord,
    /// The events, encoded.
    pub events: Vec<Vec<u8>>,
}

/// Groups events by certificate, in first-seen order, joining each certificate's records. A
/// certificate with more events than one stream entry holds
/// ([`FEED_ENTRY_MAX_EVENTS`](crate::limits::FEED_ENTRY_MAX_EVENTS)) keeps the fewest that
/// join to the same record ([`CertRecord::kinds`](crate::status::CertRecord::kinds)), stamped
/// like its last event.
pub fn group_by_certificate(events: &[Event]) -> Vec<CertWrite> {
    use std::collections::HashMap;
    let mut index: HashMap<(IssuerId, crate::status::Serial), usize> = HashMap::new();
    let mut out: Vec<CertWrite> = Vec::new();
    let mut last: Vec<&Event> = Vec::new();
    for e in events {
        let record = crate::status::CertRecord::from_event(&e.kind);
        match index.get(&(e.issuer, e.serial)) {
            Some(&i) => {
                out[i].record = out[i].record.join(record);
                out[i].events.push(e.to_bytes());
                last[i] = e;
            }
            None => {
                index.insert((e.issuer, e.serial), out.len());
                out.push(CertWrite {
                    issuer: e.issuer,
                    serial: e.serial,
                    record,
                    events: vec![e.to_bytes()],
                });
                last.push(e);
            }
        }
    }
    for (w, e) in out.iter_mut().zip(last) {
        if w.events.len() > crate::limits::FEED_ENTRY_MAX_EVENTS {
            w.events = w
                .record
                .kinds()
                .into_iter()
                .map(|kind| Event { kind, ..e.clone() }.to_bytes())
                .collect();
        }
    }
    out
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Reads a bulk string reply as bytes.
pub(crate) fn value_bytes(v: &redis::Value) -> Option<&[u8]> {
    match v {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// Reads a bulk string reply as UTF-8 text.
pub(crate) fn value_str(v: &redis::Value) -> Option<&str> {
    value_bytes(v).and_then(|b| std::str::from_utf8(b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{EventKind, RevocationReason, Serial};

    #[test]
    fn stream_ids_parse_and_order() {
        let a: StreamId = "1700000000000-5".parse().expect("id");
        assert_eq!(a.to_string(), "1700000000000-5");
        assert!(a > "1700000000000-4".parse().expect("id"));
        assert!(a < "1700000000001-0".parse().expect("id"));
        assert_eq!(
            "7".parse::<StreamId>().expect("id"),
            StreamId { ms: 7, seq: 0 }
        );
        assert!("x-1".parse::<StreamId>().is_err());
        assert!("1-".parse::<StreamId>().is_err());
        assert!("9".repeat(60).parse::<StreamId>().is_err());
    }

    #[test]
    fn packed_fields_round_trip_and_refuse_what_is_cut_or_too_long() {
        let events: Vec<Vec<u8>> = (0..5u8).map(|n| vec![n; 10 + n as usize]).collect();
        let mut packed = Vec::new();
        pack_events(&mut packed, events.iter().map(|e| &e[..]));
        let got: Vec<&[u8]> = field_events(FIELD_PACKED, &packed)
            .collect::<Result<_, _>>()
            .expect("well formed");
        assert_eq!(got, events.iter().map(|e| &e[..]).collect::<Vec<_>>());
        assert_eq!(
            field_events(FIELD_EVENT, b"one").collect::<Vec<_>>(),
            vec![Ok(&b"one"[..])]
        );
        assert_eq!(field_events(b"hb", b"beat").count(), 0);
        // Cut anywhere inside the last event or its length: the events before it, one error.
        for cut in [packed.len() - 1, packed.len() - 14, packed.len() - 15] {
            let got: Vec<_> = field_events(FIELD_PACKED, &packed[..cut]).collect();
            assert_eq!(got.len(), 5, "cut at {cut}");
            assert_eq!(got[4], Err(FieldError::Truncated), "cut at {cut}");
        }
        let mut many = Vec::new();
        let tiny = vec![[7u8]; crate::limits::FEED_ENTRY_MAX_EVENTS + 1];
        pack_events(&mut many, tiny.iter().map(|e| &e[..]));
        let got: Vec<_> = field_events(FIELD_PACKED, &many).collect();
        assert_eq!(got.len(), crate::limits::FEED_ENTRY_MAX_EVENTS + 1);
        assert_eq!(got.last(), Some(&Err(FieldError::TooMany)));
    }

    #[test]
    fn a_certificate_with_more_events_than_an_entry_holds_keeps_their_join() {
        let ev = |kind| Event {
            issuer: IssuerId([1; 32]),
            serial: Serial::from_magnitude(&[1]).expect("serial"),
            kind,
            origin: "a".into(),
            created_at_ms: 0,
        };
        let mut events = vec![ev(EventKind::Issued { not_after: 50 })];
        for t in 0..crate::limits::FEED_ENTRY_MAX_EVENTS as i64 {
            events.push(ev(EventKind::Hold { time: 2 * t }));
            events.push(ev(EventKind::Release { time: 2 * t + 1 }));
        }
        let w = group_by_certificate(&events);
        assert_eq!(w.len(), 1);
        assert!(w[0].events.len() <= 3, "{}", w[0].events.len());
        let records: Vec<crate::status::CertRecord> = w[0]
            .events
            .iter()
            .map(|e| {
                crate::status::CertRecord::from_event(&Event::decode(e).expect("decodes").kind)
            })
            .collect();
        let joined = records[1..].iter().fold(records[0], |a, r| a.join(*r));
        assert_eq!(joined, w[0].record);
        assert_eq!(w[0].record.hold().map(|h| h.held), Some(false));
    }

    #[test]
    fn grouping_joins_records_per_certificate() {
        let ev = |n: u8, kind| Event {
            issuer: IssuerId([1; 32]),
            serial: Serial::from_magnitude(&[n]).expect("serial"),
            kind,
            origin: "a".into(),
            created_at_ms: 0,
        };
        let issued = EventKind::Issued { not_after: 50 };
        let revoked = EventKind::Revoked {
            time: 10,
            reason: RevocationReason::KeyCompromise,
        };
        let w = group_by_certificate(&[ev(1, issued), ev(2, issued), ev(1, revoked)]);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].events.len(), 2);
        assert!(w[0].record.revocation().is_some());
        assert_eq!(w[0].record.not_after(), Some(50));
        assert!(w[1].record.revocation().is_none());
    }
}
