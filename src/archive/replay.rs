//! Point in time: the archive's events up to a time, joined into a status view (on top of a
//! backup older than that time, [`crate::backup::restore_until`]).
//!
//! An event counts as of the time its region's stream recorded it (the stream id's
//! milliseconds): that is when the write was acknowledged there. The same event archived from
//! two regions' streams is joined twice, which changes nothing. A gap fill's records count as
//! of the fill's end (when its whole snapshot had been read); a time between the archived
//! position before a fill and the fill's end falls in a gap of that region, which the result
//! names in its warnings.

use std::collections::BTreeMap;
use std::path::Path;

use super::segment::Block;
use super::{ArchiveError, walk};
use crate::status::{Event, StatusView};

/// What a replay joined.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Events joined (at or before the time).
    pub events: u64,
    /// Events after the time, left out.
    pub later: u64,
    /// Events that did not decode (left out).
    pub undecodable: u64,
    /// Fill records joined (of fills that ended at or before the time).
    pub fill_records: u64,
    /// Times that fall in a gap, and other things the reader should know.
    pub warnings: Vec<String>,
    /// The archive's head (last chain value).
    pub head: String,
    /// Segments read.
    pub segments: u64,
}

/// Joins into `view` every archived event recorded at or before `until_ms` and the records of
/// every fill that ended by then. The whole archive is checked first (a damaged archive joins
/// nothing).
pub fn replay_until(
    dir: &Path,
    until_ms: i64,
    view: &StatusView,
) -> Result<Replayed, ArchiveError> {
    // Pass 1: check everything, and learn when each region's fills ended.
    let mut ends: BTreeMap<String, Vec<Option<i64>>> = BTreeMap::new();
    let walked = walk(dir, |_, b| {
        match b {
            Block::FillBegin(m) => ends.entry(m.region.clone()).or_default().push(None),
            Block::FillEnd(m) => {
                if let Some(last) = ends.entry(m.region.clone()).or_default().last_mut() {
                    *last = Some(m.at_ms);
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    // Pass 2: join.
    let mut out = Replayed {
        head: walked.head.clone(),
        segments: walked.segments,
        ..Replayed::default()
    };
    let mut fill_no: BTreeMap<String, usize> = BTreeMap::new();
    let mut in_fill: BTreeMap<String, bool> = BTreeMap::new();
    let mut last_ms: BTreeMap<String, i64> = BTreeMap::new();
    walk(dir, |_, b| {
        match b {
            Block::Events(e) => {
                let mut batch = Vec::with_capacity(e.events.len());
                for (id, bytes) in &e.events {
                    if id.ms as i64 > until_ms {
                        out.later += 1;
                        continue;
                    }
                    match Event::decode(bytes) {
                        Ok(ev) => batch.push(ev),
                        Err(_) => out.undecodable += 1,
                    }
                }
                out.events += batch.len() as u64;
                view.apply_batch(&batch, |_, _, _| {});
                if e.last.ms as i64 <= until_ms {
                    last_ms.insert(e.region.clone(), e.last.ms as i64);
                }
            }
            Block::FillBegin(m) => {
                let n = fill_no.entry(m.region.clone()).or_default();
                let end = ends
                    .get(&m.region)
                    .and_then(|v| v.get(*n))
                    .copied()
                    .flatten();
                *n += 1;
                let take = end.is_some_and(|t| t <= until_ms);
                in_fill.insert(m.region.clone(), take);
                let before = last_ms.get(&m.region).copied().unwrap_or(0);
                match end {
                    Some(t) if before <= until_ms && until_ms < t => out.warnings.push(format!(
                        "region {}: {} falls in a gap of its archive ({}; filled from its snapshot at {}): events of that region in the gap are missing from this state unless another region's stream had them",
                        m.region,
                        crate::clock::rfc3339_ms(until_ms),
                        m.reason,
                        crate::clock::rfc3339_ms(t),
                    )),
                    None if m.at_ms <= until_ms => out.warnings.push(format!(
                        "region {}: a fill begun at {} never ended (the archive role stopped during it); its records are left out",
                        m.region,
                        crate::clock::rfc3339_ms(m.at_ms)
                    )),
                    _ => {}
                }
            }
            Block::FillRecords(f) if in_fill.get(&f.region).copied().unwrap_or(false) => {
                out.fill_records += f.records.len() as u64;
                view.table(f.issuer).merge_many(&f.records);
            }
            Block::FillEnd(m) => {
                in_fill.insert(m.region.clone(), false);
                if m.at_ms <= until_ms {
                    last_ms.insert(m.region.clone(), m.at_ms);
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    if let Some(t) = &walked.torn {
        out.warnings.push(t.clone());
    }
    Ok(out)
}
