//! The materialised status view: issuer → serial → [`CertRecord`], built by joining events.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, PoisonError, RwLock};

use super::{CertRecord, CertStatus, Event, IssuerId, Serial};
use crate::limits::VIEW_SEGMENTS;

/// Every certificate status a replica knows, grouped by issuer.
///
/// Reads take a shared lock on one segment of one issuer's table ([`IssuerTable`]); each write locks one segment.
#[derive(Default)]
pub struct StatusView {
    tables: RwLock<HashMap<IssuerId, Arc<IssuerTable>>>,
}

/// The serial → record map of one issuer.
///
/// Hashed with foldhash under its fixed seed rather than a per-process random one: the map's
/// iteration order is the same in every process, so a checkpoint written in that order loads
/// with near-sequential memory access, several times faster at ten million certificates, and
/// foldhash hashes a serial in a fraction of SipHash's time (a mass revocation joins millions).
/// A random seed guards against an attacker choosing colliding *inserted* keys; here every
/// inserted serial comes from the CA's authenticated feed (lookups of attacker-chosen serials
/// do not degrade the map).
type SegmentMap = HashMap<Serial, CertRecord, foldhash::fast::FixedState>;

/// One issuer's certificates, in [`VIEW_SEGMENTS`] segments by the serial's last octet, each
/// with its own lock and its own part of the digest.
///
/// A reader (every OCSP answer) takes its segment's shared lock and never waits for a scan or
/// for a writer that is waiting: a scan (a CRL's candidates, a checkpoint partition, a backup)
/// holds one segment's shared lock only while it copies that segment, and a writer never
/// queues on a segment lock (std's lock holds new readers back behind a queued writer) — it
/// tries, and spins or yields until the segment is free ([`IssuerTable::write`]). What a reader
/// can wait for is a writer holding its segment: one record's join, or the rare resize of that
/// one segment (1/64 of the issuer's certificates). With one lock over a million
/// certificates, a CRL scan held it for tens of milliseconds, a waiting writer then held back
/// every reader behind it, and a resize rehashed the whole table under the write lock.
pub struct IssuerTable {
    segments: Box<[RwLock<Table>]>,
}

impl Default for IssuerTable {
    fn default() -> Self {
        IssuerTable {
            segments: (0..VIEW_SEGMENTS).map(|_| RwLock::default()).collect(),
        }
    }
}

/// One segment's map and digest, under one lock so that a reader sees them agree.
#[derive(Default)]
struct Table {
    map: SegmentMap,
    digest: Digest,
}

/// The order-independent digest of a set of records: the XOR of SHA-1(serial DER content octets
/// ‖ record, [`CertRecord::to_bytes`]) over every record. Each feed region keeps the same digest of its snapshot
/// (the merge scripts, [`crate::feed::scripts::MERGE_MANY_LUA`]), so a replica compares its view
/// with a region without scanning either; together with the record count it is how a replica
/// checks that it is complete ([`crate::feed::consume`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 20]);

impl Digest {
    /// Adds (or, applied again, removes) one record.
    pub fn toggle(&mut self, serial: &Serial, record: &CertRecord) {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
        ctx.update(serial.as_der_content());
        ctx.update(&record.to_bytes());
        for (d, h) in self.0.iter_mut().zip(ctx.finish().as_ref()) {
            *d ^= h;
        }
    }

    /// Folds in another set's digest (the digest of the union of two disjoint sets).
    fn combine(&mut self, other: &Digest) {
        for (d, o) in self.0.iter_mut().zip(other.0.iter()) {
            *d ^= o;
        }
    }

    /// Lower-case hex, as the regions store it.
    pub fn hex(&self) -> String {
        super::hex(&self.0)
    }

    /// Reads the regions' 40 hex digits.
    pub fn from_hex(s: &str) -> Option<Digest> {
        if s.len() != 40 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 20];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Digest(out))
    }
}

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The certificate's record changed; `status` is the new answer.
    Changed {
        /// The status after the change.
        status: CertStatus,
    },
    /// The event was already reflected (a duplicate or a weaker fact).
    Unchanged,
}

impl StatusView {
    /// An empty view.
    pub fn new() -> Self {
        Self::default()
    }

    /// The table of `issuer`, created empty if no event has named it yet.
    pub fn table(&self, issuer: IssuerId) -> Arc<IssuerTable> {
        if let Some(t) = self
            .tables
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&issuer)
        {
            return t.clone();
        }
        self.tables
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(issuer)
            .or_default()
            .clone()
    }

    /// Joins one event into the view. A revocation with a reason a revocation may not carry
    /// ([`EventKind::check`](super::EventKind::check)) is refused: counted, and `Unchanged`.
    pub fn apply(&self, event: &Event) -> Applied {
        if refused(event) {
            return Applied::Unchanged;
        }
        self.table(event.issuer)
            .merge(event.serial, CertRecord::from_event(&event.kind))
    }

    /// Joins a batch of events, taking each issuer's write lock once per run of events of that
    /// issuer; `changed` is called (outside the lock) for each event that changed the view,
    /// with the certificate's status before and after it. Refused events are skipped as in
    /// [`StatusView::apply`].
    pub fn apply_batch(
        &self,
        events: &[Event],
        mut changed: impl FnMut(&Event, CertStatus, CertStatus),
    ) {
        let mut rest = events;
        while let Some(first) = rest.first() {
            // One issuer's run; each event takes only its segment's write lock, so readers
            // (every OCSP answer checks the view) wait for one join, not for the run.
            let run = rest
                .iter()
                .position(|e| e.issuer != first.issuer)
                .unwrap_or(rest.len());
            let (now, later) = rest.split_at(run);
            rest = later;
            let table = self.table(first.issuer);
            let mut statuses = Vec::new();
            for (i, e) in now.iter().enumerate() {
                if refused(e) {
                    continue;
                }
                let joined = merge_into(
                    &mut table.write(&e.serial),
                    e.serial,
                    CertRecord::from_event(&e.kind),
                );
                if let Some((before, after)) = joined {
                    statuses.push((i, before, after));
                }
            }
            for (i, before, after) in statuses {
                changed(&now[i], before, after);
            }
        }
    }

    /// The status of one certificate.
    pub fn status(&self, issuer: IssuerId, serial: &Serial) -> CertStatus {
        self.table(issuer).status(serial)
    }

    /// Every issuer table, in issuer order.
    pub fn issuers(&self) -> Vec<(IssuerId, Arc<IssuerTable>)> {
        let mut v: Vec<_> = self
            .tables
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, t)| (*id, t.clone()))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    /// Number of certificates known, over all issuers.
    pub fn len(&self) -> usize {
        self.tables
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|t| t.len())
            .sum()
    }

    /// True when no certificate is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// True (and counted) for an event the view must not apply: a revocation whose reason a
/// revocation may not carry. Decoding refuses those already; this covers events made in the
/// process.
fn refused(event: &Event) -> bool {
    if event.kind.check().is_ok() {
        return false;
    }
    super::count_rejected(super::Rejected::Event);
    true
}

impl IssuerTable {
    /// The segment holding `serial`.
    fn segment(&self, serial: &Serial) -> &RwLock<Table> {
        &self.segments[partition_of(serial) % VIEW_SEGMENTS]
    }

    fn read(&self, serial: &Serial) -> std::sync::RwLockReadGuard<'_, Table> {
        self.segment(serial)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The segment's exclusive lock, taken without queueing for it: std's `RwLock` holds new
    /// readers back once a writer waits, so a writer that queued behind a scan's copy would
    /// stall every OCSP read of the segment until the copy ended. Trying instead keeps the
    /// readers flowing; the writer (the feed's join, on its own thread) spins briefly, then
    /// yields, until neither a reader nor a scan holds the segment.
    fn write(&self, serial: &Serial) -> std::sync::RwLockWriteGuard<'_, Table> {
        write_without_queueing(self.segment(serial))
    }

    /// Every segment's shared lock, in turn.
    fn each_segment(&self) -> impl Iterator<Item = std::sync::RwLockReadGuard<'_, Table>> {
        self.segments
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The status of one certificate of this issuer, holds included.
    pub fn status(&self, serial: &Serial) -> CertStatus {
        self.status_with(serial, true)
    }

    /// The status of one certificate of this issuer; holds are answered only when `holds`
    /// (the issuer's policy allows them).
    pub fn status_with(&self, serial: &Serial, holds: bool) -> CertStatus {
        match self.read(serial).map.get(serial) {
            Some(r) => r.status_with(holds),
            None => CertStatus::Unissued,
        }
    }

    /// The record of one certificate, if any.
    pub fn record(&self, serial: &Serial) -> Option<CertRecord> {
        self.read(serial).map.get(serial).copied()
    }

    /// Joins `record` into the certificate's record.
    pub fn merge(&self, serial: Serial, record: CertRecord) -> Applied {
        match merge_into(&mut self.write(&serial), serial, record) {
            Some((_, status)) => Applied::Changed { status },
            None => Applied::Unchanged,
        }
    }

    /// Makes room for `additional` more certificates (checkpoint loading sizes the table once;
    /// serials spread evenly over the segments).
    pub fn reserve(&self, additional: usize) {
        let each = additional / VIEW_SEGMENTS + 1;
        for s in self.segments.iter() {
            write_without_queueing(s).map.reserve(each);
        }
    }

    /// A copy of every record, taken one segment at a time.
    pub fn records(&self) -> Vec<(Serial, CertRecord)> {
        self.records_partition(0, 1)
    }

    /// A copy of the records whose serial falls in partition `part` of `parts` (by the serial's
    /// last octet, which is uniform for random and for sequential serials; `parts` at most
    /// 256), so a large table can be copied out in pieces without holding a lock for long or
    /// doubling its memory. Only the segments that can hold the partition are read: with
    /// `parts` a divisor or a multiple of [`VIEW_SEGMENTS`], one segment or a few.
    pub fn records_partition(&self, part: usize, parts: usize) -> Vec<(Serial, CertRecord)> {
        let parts = parts.clamp(1, 256);
        let mut out = Vec::new();
        for (k, seg) in self.segments.iter().enumerate() {
            // Segment k holds the last octets k, k + VIEW_SEGMENTS, ...
            if !(k..256).step_by(VIEW_SEGMENTS).any(|o| o % parts == part) {
                continue;
            }
            let t = seg.read().unwrap_or_else(PoisonError::into_inner);
            out.reserve(t.map.len());
            out.extend(
                t.map
                    .iter()
                    .filter(|(s, _)| partition_of(s) % parts == part)
                    .map(|(s, r)| (*s, *r)),
            );
        }
        out
    }

    /// Joins many records (checkpoint loading).
    pub fn merge_many(&self, records: &[(Serial, CertRecord)]) {
        self.merge_records(records, |_, _, _| {});
    }

    /// Joins many records; `changed` is called (outside the locks) with the serial, the status
    /// before and the status after, for each record that changed the view. Each record takes
    /// its segment's write lock alone, so readers wait for one join at most.
    pub fn merge_records(
        &self,
        records: &[(Serial, CertRecord)],
        mut changed: impl FnMut(&Serial, CertStatus, CertStatus),
    ) {
        let mut out = Vec::new();
        for (s, r) in records {
            if let Some((before, after)) = merge_into(&mut self.write(s), *s, *r) {
                out.push((*s, before, after));
            }
        }
        for (s, before, after) in out {
            changed(&s, before, after);
        }
    }

    /// The number of records and their [`Digest`], read together: every segment's shared lock
    /// is held at once (writers hold one segment at a time, so this cannot deadlock).
    pub fn summary(&self) -> (usize, Digest) {
        let guards: Vec<_> = self.each_segment().collect();
        let mut digest = Digest::default();
        let mut n = 0;
        for t in &guards {
            n += t.map.len();
            digest.combine(&t.digest);
        }
        (n, digest)
    }

    /// Number of certificates of this issuer.
    pub fn len(&self) -> usize {
        self.each_segment().map(|t| t.map.len()).sum()
    }

    /// True when this issuer has no certificates.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` for every certificate, over a copy of one segment at a time: the segment's
    /// shared lock is held only while its records are copied, never while `f` runs, so a
    /// long scan (a CRL's selection, a checkpoint) keeps no reader or writer waiting. A record
    /// changed during the scan is seen before or after the change, never twice or not at all.
    pub fn for_each(&self, mut f: impl FnMut(&Serial, &CertRecord)) {
        let mut copy: Vec<(Serial, CertRecord)> = Vec::new();
        for seg in self.segments.iter() {
            copy.clear();
            {
                let t = seg.read().unwrap_or_else(PoisonError::into_inner);
                copy.extend(t.map.iter().map(|(s, r)| (*s, *r)));
            }
            for (s, r) in &copy {
                f(s, r);
            }
        }
    }
}

impl super::Records for IssuerTable {
    fn each(&self, f: &mut dyn FnMut(&Serial, &CertRecord)) {
        self.for_each(f);
    }
}

/// See [`IssuerTable::write`].
fn write_without_queueing(lock: &RwLock<Table>) -> std::sync::RwLockWriteGuard<'_, Table> {
    let mut tries: u32 = 0;
    loop {
        match lock.try_write() {
            Ok(g) => return g,
            Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                #[cfg(test)]
                BUSY_TRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tries = tries.saturating_add(1);
                if tries < WRITE_SPINS {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// Writers' tries that found their segment busy (tests watch a writer contend).
#[cfg(test)]
static BUSY_TRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Tries a writer spins before it yields its thread between tries: a reader holds a segment
/// for well under a microsecond, a scan's copy for tens to hundreds.
const WRITE_SPINS: u32 = 64;

/// The partition key of a serial: its last octet.
fn partition_of(s: &Serial) -> usize {
    s.as_der_content().last().copied().unwrap_or(0) as usize
}

/// Joins `record` into the certificate's record, keeping the digest: the status before and
/// after when that changed the record (one lookup), None when the record already held it.
fn merge_into(
    t: &mut Table,
    serial: Serial,
    record: CertRecord,
) -> Option<(CertStatus, CertStatus)> {
    match t.map.entry(serial) {
        Entry::Vacant(slot) => {
            slot.insert(record);
            t.digest.toggle(&serial, &record);
            Some((CertStatus::Unissued, record.status()))
        }
        Entry::Occupied(mut slot) => {
            let before = *slot.get();
            let joined = before.join(record);
            if joined == before {
                return None;
            }
            t.digest.toggle(&serial, &before);
            t.digest.toggle(&serial, &joined);
            *slot.get_mut() = joined;
            Some((before.status(), joined.status()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{EventKind, RevocationReason};
    use proptest::prelude::*;

    fn ev(serial: u8, kind: EventKind, origin: &str) -> Event {
        Event {
            issuer: IssuerId([serial % 2; 32]),
            serial: Serial::from_magnitude(&[serial]).expect("serial"),
            kind,
            origin: origin.into(),
            created_at_ms: 0,
        }
    }

    #[test]
    fn revocations_with_hold_or_remove_from_crl_are_not_applied() {
        let view = StatusView::new();
        let issued = ev(3, EventKind::Issued { not_after: 100 }, "a");
        view.apply(&issued);
        for reason in [
            RevocationReason::CertificateHold,
            RevocationReason::RemoveFromCrl,
        ] {
            let bad = ev(3, EventKind::Revoked { time: 5, reason }, "a");
            assert_eq!(view.apply(&bad), Applied::Unchanged);
            let mut seen = 0;
            view.apply_batch(std::slice::from_ref(&bad), |_, _, _| seen += 1);
            assert_eq!(seen, 0);
            assert_eq!(view.status(issued.issuer, &issued.serial), CertStatus::Good);
        }
        // and a snapshot record with removeFromCRL (8) does not decode
        assert_eq!(CertRecord::from_bytes(&[0, 0, 0, 100, 0, 0, 0, 5, 8]), None);
        assert!(CertRecord::from_bytes(&[0, 0, 0, 100, 0, 0, 0, 5, 6]).is_some());
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        let kind = prop_oneof![
            (0i64..2_000_000_000).prop_map(|t| EventKind::Issued { not_after: t }),
            (0i64..2_000_000_000, 0u8..11).prop_filter_map("a revocation reason", |(t, r)| {
                RevocationReason::from_code(r).map(|reason| EventKind::Revoked { time: t, reason })
            }),
            // hold and release times from a small range, so that ties (a hold wins) and
            // releases that undo holds are common
            (0i64..6).prop_map(|t| EventKind::Hold { time: t }),
            (0i64..6).prop_map(|t| EventKind::Release { time: t }),
            (0i64..6).prop_map(|t| EventKind::Hold { time: t }),
        ];
        (1u8..12, kind, prop_oneof![Just("a"), Just("b")]).prop_map(|(s, k, o)| ev(s, k, o))
    }

    fn snapshot(v: &StatusView) -> Vec<(IssuerId, Serial, CertRecord)> {
        let mut out = Vec::new();
        for (id, t) in v.tables.read().expect("lock").iter() {
            t.for_each(|s, r| out.push((*id, *s, *r)));
        }
        out.sort_by_key(|(i, s, _)| (*i, *s));
        out
    }

    /// A scan holds a segment's shared lock while a writer wants that segment: a reader of the
    /// segment still gets through at once (with a queueing writer, std's lock would hold the
    /// reader back until the scan let go), and the write lands once the scan is done.
    #[test]
    fn readers_pass_a_writer_waiting_behind_a_scan() {
        use std::sync::mpsc;
        let t = Arc::new(IssuerTable::default());
        let s = Serial::from_der_content(&[0x01, 0x07]).expect("serial");
        let scan = t.read(&s); // a scan's copy of the segment, in progress
        let (wrote_tx, wrote_rx) = mpsc::channel();
        let writer = {
            let t = t.clone();
            std::thread::spawn(move || {
                t.merge(
                    s,
                    CertRecord::from_event(&EventKind::Revoked {
                        time: 5,
                        reason: RevocationReason::KeyCompromise,
                    }),
                );
                wrote_tx.send(()).expect("send");
            })
        };
        // The writer is contending for the segment once its busy tries pass its spins.
        let busy = || BUSY_TRIES.load(std::sync::atomic::Ordering::Relaxed);
        let before = busy();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while busy() < before + u64::from(WRITE_SPINS) {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer never tried"
            );
            std::thread::yield_now();
        }
        let (read_tx, read_rx) = mpsc::channel();
        let reader = {
            let t = t.clone();
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    std::hint::black_box(t.status(&s));
                }
                read_tx.send(t.status(&s)).expect("send");
            })
        };
        let seen = read_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a reader was held back behind the writer while the scan held the segment");
        assert_eq!(
            seen,
            CertStatus::Unissued,
            "the write cannot land during the scan"
        );
        assert!(
            wrote_rx.try_recv().is_err(),
            "the writer waits for the scan"
        );
        drop(scan);
        wrote_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the write lands once the scan is done");
        assert!(matches!(t.status(&s), CertStatus::Revoked(_)));
        writer.join().expect("writer");
        reader.join().expect("reader");
    }

    #[test]
    fn partitions_cover_every_record_once() {
        let v = StatusView::new();
        for n in 1..=200u8 {
            v.apply(&ev(n, EventKind::Issued { not_after: 5 }, "a"));
        }
        for (_, t) in v.issuers() {
            for parts in [1, 3, 7, 256, 1000] {
                let mut all: Vec<Serial> = (0..parts.min(256))
                    .flat_map(|p| t.records_partition(p, parts))
                    .map(|(s, _)| s)
                    .collect();
                all.sort();
                let mut want: Vec<Serial> = t.records().into_iter().map(|(s, _)| s).collect();
                want.sort();
                assert_eq!(all, want, "{parts} parts");
            }
        }
    }

    #[test]
    fn revoked_is_final() {
        let v = StatusView::new();
        let revoked = ev(
            5,
            EventKind::Revoked {
                time: 10,
                reason: RevocationReason::Superseded,
            },
            "a",
        );
        let issued = ev(5, EventKind::Issued { not_after: 99 }, "a");
        assert!(matches!(v.apply(&revoked), Applied::Changed { .. }));
        assert!(matches!(
            v.apply(&issued),
            Applied::Changed {
                status: CertStatus::Revoked(_)
            }
        ));
        assert_eq!(v.apply(&issued), Applied::Unchanged);
        assert_eq!(v.apply(&revoked), Applied::Unchanged);
        assert!(matches!(
            v.status(issued.issuer, &issued.serial),
            CertStatus::Revoked(_)
        ));
    }

    proptest! {
        /// Any order, any duplication, any split across regions: the same view.
        #[test]
        fn merge_is_a_join(
            events in proptest::collection::vec(arb_event(), 0..40),
            seed in any::<u64>(),
            split in 0usize..40,
        ) {
            let forward = StatusView::new();
            for e in &events { forward.apply(e); }

            // a permutation with duplicates, replayed twice
            let mut shuffled: Vec<&Event> = events.iter().chain(events.iter().take(split)).collect();
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let other = StatusView::new();
            for e in shuffled.iter().chain(shuffled.iter()) { other.apply(e); }
            prop_assert_eq!(snapshot(&forward), snapshot(&other));

            // two regions merged: each region's view folded into a third
            let (a, b) = events.split_at(split.min(events.len()));
            let region_a = StatusView::new();
            let region_b = StatusView::new();
            for e in a { region_a.apply(e); }
            for e in b { region_b.apply(e); }
            let merged = StatusView::new();
            for (id, s, r) in snapshot(&region_b).into_iter().chain(snapshot(&region_a)) {
                merged.table(id).merge(s, r);
            }
            prop_assert_eq!(snapshot(&forward), snapshot(&merged));

            // three regions, each receiving an overlapping subset (a write that reached only
            // some regions, then repaired), applied in batches: still the same view
            let batched = StatusView::new();
            let mut regions: [Vec<Event>; 3] = Default::default();
            for (i, e) in events.iter().enumerate() {
                let mask = 1 + (seed.rotate_left(i as u32 * 3) % 7) as usize;
                for (r, region) in regions.iter_mut().enumerate() {
                    if mask & (1 << r) != 0 {
                        region.push(e.clone());
                    }
                }
            }
            for region in regions.iter().rev() {
                for chunk in region.chunks(split.max(1)) {
                    batched.apply_batch(chunk, |_, _, _| {});
                }
            }
            prop_assert_eq!(snapshot(&forward), snapshot(&batched));
        }
    }
}
