//! Freshness of the feed: per region, when the last event or heartbeat arrived, the apply lag,
//! and whether the replica may call itself ready.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

use crate::telemetry;

/// Freshness of every region of the feed.
pub struct FeedHealth {
    /// One entry per configured region, in config order.
    pub regions: Vec<RegionHealth>,
    max_staleness: Duration,
    /// Wall-clock time (ms) the loaded checkpoint was known fresh at; 0 without one.
    checkpoint_fresh_ms: AtomicI64,
}

/// Freshness of one region, with its metric handles.
pub struct RegionHealth {
    /// Region name.
    pub name: String,
    last_seen_ms: AtomicI64,
    connected: AtomicBool,
    /// A consumer session has tried to reach the region at least once.
    attempted: AtomicBool,
    /// Why the view is not known to hold everything the region holds; None once it is (a
    /// bootstrap or a resume in the region's current epoch, not trimmed past, and the last
    /// completeness check found nothing missing).
    gap: Mutex<Option<String>>,
    /// Why the view is behind the region although it covers the region's state at its cursor:
    /// the stream was trimmed past the cursor (a mass revocation outran the consumer), so the
    /// events after it are being re-read from the snapshot. The view still holds everything it
    /// held (the join never removes anything), so the replica stays ready, degraded; but no
    /// complete CRL is built until it has caught up.
    behind: Mutex<Option<String>>,
    last_error: Mutex<String>,
    /// Events that changed the view.
    pub changed: Counter,
    /// Events already reflected.
    pub unchanged: Counter,
    /// Entries that did not decode.
    pub undecodable: Counter,
    /// Heartbeats received.
    pub heartbeats: Counter,
    /// Apply lag.
    pub lag: Histogram,
    /// Reconnects.
    pub reconnects: Counter,
    /// Bootstraps.
    pub bootstraps: Counter,
    /// Records merged during bootstraps.
    pub bootstrap_records: Counter,
    /// Records written back into the region after it lost them.
    pub reseeded: Counter,
    age: Gauge,
    up: Gauge,
    covered: Gauge,
}

impl FeedHealth {
    /// Health for `regions`, failing readiness after `max_staleness`.
    pub fn new(regions: &[String], max_staleness: Duration) -> Self {
        FeedHealth {
            regions: regions.iter().map(|n| RegionHealth::new(n)).collect(),
            max_staleness,
            checkpoint_fresh_ms: AtomicI64::new(0),
        }
    }

    /// The region named `name`.
    pub fn region(&self, name: &str) -> Option<&RegionHealth> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// Records that the view loaded from a checkpoint was fresh at `ms`.
    pub fn set_checkpoint_fresh(&self, ms: i64) {
        self.checkpoint_fresh_ms.store(ms, Ordering::Relaxed);
    }

    /// The latest time (ms) the view is known to have been current with some region.
    pub fn freshest_ms(&self) -> i64 {
        self.regions
            .iter()
            .map(|r| r.last_seen_ms.load(Ordering::Relaxed))
            .chain([self.checkpoint_fresh_ms.load(Ordering::Relaxed)])
            .max()
            .unwrap_or(0)
    }

    /// `Ok` when the view holds everything every reachable region holds: each region is
    /// covered and not behind, or was tried and is unreachable. Otherwise which regions are
    /// not, and why. The CRL publisher builds complete CRLs only while this is `Ok`.
    pub fn complete(&self) -> Result<(), FeedNotReady> {
        self.covers_cursors()?;
        match self.behind() {
            Some(why) => Err(FeedNotReady::Behind(why)),
            None => Ok(()),
        }
    }

    /// `Ok` when, for every reachable region, the view holds everything the region held at
    /// the consumer's cursor (no gap; a region being caught up with after a trim is covered
    /// up to its cursor). Readiness needs this.
    pub fn covers_cursors(&self) -> Result<(), FeedNotReady> {
        let gaps: Vec<String> = self
            .regions
            .iter()
            .filter_map(|r| r.gap().map(|g| format!("{}: {g}", r.name)))
            .collect();
        if gaps.is_empty() {
            Ok(())
        } else {
            Err(FeedNotReady::Gap(gaps.join("; ")))
        }
    }

    /// Which reachable regions the view is catching up with (trimmed past its cursor), if
    /// any: the replica is degraded, not unready.
    pub fn behind(&self) -> Option<String> {
        let behind: Vec<String> = self
            .regions
            .iter()
            .filter_map(|r| r.behind().map(|b| format!("{}: {b}", r.name)))
            .collect();
        (!behind.is_empty()).then(|| {
            format!(
                "catching up with feed region(s) {}; no complete CRL until then",
                behind.join("; ")
            )
        })
    }

    /// `Ok` while the view covers every reachable region up to its cursor
    /// ([`FeedHealth::covers_cursors`]) and some region delivered an event or heartbeat within
    /// `max_staleness`; otherwise why not, naming each region's last error.
    pub fn check(&self, now_ms: i64) -> Result<(), FeedNotReady> {
        self.covers_cursors()?;
        self.check_fresh(now_ms)
    }

    fn check_fresh(&self, now_ms: i64) -> Result<(), FeedNotReady> {
        let freshest = self.freshest_ms();
        let limit = self.max_staleness.as_millis() as i64;
        if freshest > 0 && now_ms - freshest <= limit {
            return Ok(());
        }
        let regions = self
            .regions
            .iter()
            .map(|r| format!("{}: {}", r.name, r.describe()))
            .collect::<Vec<_>>()
            .join("; ");
        if freshest == 0 {
            Err(FeedNotReady::NeverReached { regions })
        } else {
            Err(FeedNotReady::Stale {
                silent_secs: (now_ms - freshest) / 1000,
                max_staleness_secs: self.max_staleness.as_secs(),
                regions,
            })
        }
    }

    /// Updates the age and connected gauges (called once a second).
    pub fn update_gauges(&self, now_ms: i64) {
        for r in &self.regions {
            let seen = r.last_seen_ms.load(Ordering::Relaxed);
            if seen > 0 {
                r.age.set((now_ms - seen).max(0) as f64 / 1000.0);
            }
            r.covered.set(if r.gap().is_none() && r.behind().is_none() {
                1.0
            } else {
                0.0
            });
            r.up.set(if r.connected.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            });
        }
    }
}

/// Why the feed keeps the view from being complete or the replica from being ready. Each
/// variant carries the regions' own descriptions, for `/readyz` and the logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedNotReady {
    /// Some reachable region holds events the view has not read up to its cursor.
    #[error("the status view does not yet cover every reachable feed region ({0})")]
    Gap(String),
    /// The view is catching up with a region trimmed past its cursor.
    #[error("the status view is {0}")]
    Behind(String),
    /// No region has been reached since start.
    #[error("no feed region reached yet ({regions})")]
    NeverReached {
        /// Each region's state.
        regions: String,
    },
    /// Every region has been silent for longer than `feed.max_staleness`.
    #[error(
        "no feed region has delivered an event or heartbeat for {silent_secs}s (feed.max_staleness is {max_staleness_secs}s) ({regions})"
    )]
    Stale {
        /// Seconds since the freshest region was last heard from.
        silent_secs: i64,
        /// The configured bound.
        max_staleness_secs: u64,
        /// Each region's state.
        regions: String,
    },
}

impl RegionHealth {
    fn new(name: &str) -> Self {
        let n = name.to_owned();
        let entries = |result: &'static str| metrics::counter!(telemetry::FEED_ENTRIES, "region" => n.clone(), "result" => result);
        RegionHealth {
            changed: entries("changed"),
            unchanged: entries("unchanged"),
            undecodable: entries("undecodable"),
            heartbeats: entries("heartbeat"),
            lag: metrics::histogram!(telemetry::FEED_APPLY_LAG, "region" => n.clone()),
            reconnects: metrics::counter!(telemetry::FEED_RECONNECTS, "region" => n.clone()),
            bootstraps: metrics::counter!(telemetry::FEED_BOOTSTRAPS, "region" => n.clone()),
            bootstrap_records: metrics::counter!(telemetry::FEED_BOOTSTRAP_RECORDS, "region" => n.clone()),
            reseeded: metrics::counter!(telemetry::FEED_RESEEDED, "region" => n.clone()),
            covered: metrics::gauge!(telemetry::FEED_COVERED, "region" => n.clone()),
            age: metrics::gauge!(telemetry::FEED_LAST_SEEN_AGE, "region" => n.clone()),
            up: metrics::gauge!(telemetry::FEED_CONNECTED, "region" => n.clone()),
            name: n,
            last_seen_ms: AtomicI64::new(0),
            connected: AtomicBool::new(false),
            attempted: AtomicBool::new(false),
            gap: Mutex::new(Some("not reached yet".into())),
            behind: Mutex::new(None),
            last_error: Mutex::new("not connected yet".into()),
        }
    }

    /// An event or heartbeat arrived (or a bootstrap finished) at `now_ms`; `created_ms` is
    /// when it was made (None for a bootstrap).
    pub fn seen(&self, now_ms: i64, created_ms: Option<i64>) {
        self.last_seen_ms.fetch_max(now_ms, Ordering::Relaxed);
        if let Some(c) = created_ms {
            self.lag.record((now_ms - c).max(0) as f64 / 1000.0);
        }
    }

    /// The consumer connected.
    pub fn connected(&self) {
        self.attempted.store(true, Ordering::Relaxed);
        self.connected.store(true, Ordering::Relaxed);
    }

    /// The view holds everything this region held at the consumer's cursor.
    pub fn set_covered(&self) {
        *self.gap.lock().unwrap_or_else(PoisonError::into_inner) = None;
        *self.behind.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The stream was trimmed past the consumer's cursor: the view covers the region up to the
    /// cursor and is being caught up from the snapshot. Counted and logged like a gap; a region
    /// that has a gap keeps it (a gap is the stronger state).
    pub fn set_behind(&self, kind: &'static str, why: String) {
        metrics::counter!(telemetry::FEED_INCOMPLETE, "region" => self.name.clone(), "why" => kind)
            .increment(1);
        tracing::warn!(region = %self.name, why = %why, "the status view is behind this region; catching up from its snapshot");
        *self.behind.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
    }

    /// Why the view is behind this region, while it is and the region is reachable.
    pub fn behind(&self) -> Option<String> {
        if self.attempted.load(Ordering::Relaxed) && !self.is_connected() {
            return None;
        }
        self.behind
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The view is known, or feared, to lack records this region holds; `why` goes to
    /// `/readyz` and the log, `kind` to the `vigil_feed_incomplete_total` label.
    pub fn set_gap(&self, kind: &'static str, why: String) {
        metrics::counter!(telemetry::FEED_INCOMPLETE, "region" => self.name.clone(), "why" => kind)
            .increment(1);
        tracing::warn!(region = %self.name, why = %why, "the status view is not complete for this region");
        *self.gap.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
    }

    /// Why the view may lack this region's records, when that matters: a region that was
    /// tried and is unreachable holds nothing the view could read, so it is no gap.
    pub fn gap(&self) -> Option<String> {
        if self.attempted.load(Ordering::Relaxed) && !self.is_connected() {
            return None;
        }
        self.gap
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// True while the consumer is connected.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The consumer lost the region (or never reached it).
    pub fn disconnected(&self, error: &str) {
        self.attempted.store(true, Ordering::Relaxed);
        self.connected.store(false, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error.to_owned();
    }

    /// Last time (ms) an event or heartbeat arrived; 0 never.
    pub fn last_seen_ms(&self) -> i64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        if self.is_connected() {
            "connected, no heartbeat".into()
        } else {
            self.last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_only_once_every_reachable_region_is_covered() {
        let h = FeedHealth::new(&["a".into(), "b".into()], Duration::from_secs(10));
        let e = h.complete().expect_err("nothing reached");
        assert!(matches!(e, FeedNotReady::Gap(_)), "{e:?}");
        let e = e.to_string();
        assert!(
            e.contains("a: not reached yet") && e.contains("b: not reached yet"),
            "{e}"
        );
        h.regions[0].connected();
        h.regions[0].set_covered();
        // b not tried yet: its records may be missing.
        let e = h.complete().expect_err("b not tried").to_string();
        assert!(e.contains("b: not reached yet") && !e.contains("a:"), "{e}");
        // b tried and unreachable: nothing of it to read.
        h.regions[1].disconnected("connection refused");
        assert!(h.complete().is_ok());
        // b back, not yet read: a gap again.
        h.regions[1].connected();
        assert!(h.complete().is_err());
        h.regions[1].set_covered();
        h.regions[0].set_gap("count", "the region holds 5 records the view lacks".into());
        let e = h.complete().expect_err("a incomplete").to_string();
        assert!(e.contains("a: the region holds 5 records"), "{e}");
        h.regions[0].seen(1_000_000, None);
        assert!(h.check(1_000_500).is_err(), "incomplete is not ready");
    }

    #[test]
    fn trimmed_past_a_covered_view_is_behind_ready_but_not_complete() {
        let h = FeedHealth::new(&["a".into(), "b".into()], Duration::from_secs(10));
        for r in &h.regions {
            r.connected();
            r.set_covered();
            r.seen(1_000_000, None);
        }
        assert!(h.complete().is_ok() && h.behind().is_none());
        h.regions[1].set_behind(
            "trimmed",
            "the stream was trimmed past the cursor 5-0".into(),
        );
        // Ready (what it answers is at least what it answered before), degraded, no CRL.
        assert!(h.check(1_000_500).is_ok());
        let b = h.behind().expect("behind");
        assert!(
            b.contains("b: the stream was trimmed past the cursor 5-0"),
            "{b}"
        );
        let e = h.complete().expect_err("no complete CRL while behind");
        assert!(matches!(e, FeedNotReady::Behind(_)), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("catching up with feed region(s) b:"), "{e}");
        // Region b unreachable: nothing of it to catch up with.
        h.regions[1].disconnected("connection refused");
        assert!(h.complete().is_ok());
        h.regions[1].connected();
        assert!(h.complete().is_err());
        // Caught up.
        h.regions[1].set_covered();
        assert!(h.complete().is_ok() && h.behind().is_none());
    }

    #[test]
    fn ready_while_any_region_is_fresh() {
        let h = FeedHealth::new(&["a".into(), "b".into()], Duration::from_secs(10));
        for r in &h.regions {
            r.connected();
            r.set_covered();
            r.disconnected("not connected yet");
        }
        let e = h.check(1_000_000).expect_err("never seen");
        assert!(matches!(e, FeedNotReady::NeverReached { .. }), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("no feed region reached yet") && e.contains("a: not connected yet"));
        h.regions[1].seen(1_000_000, Some(999_000));
        assert!(h.check(1_005_000).is_ok());
        h.regions[1].disconnected("connection refused");
        let e = h.check(1_011_000).expect_err("stale");
        assert!(
            matches!(
                e,
                FeedNotReady::Stale {
                    silent_secs: 11,
                    max_staleness_secs: 10,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(
            e.contains("for 11s") && e.contains("b: connection refused"),
            "{e}"
        );
        h.set_checkpoint_fresh(1_010_000);
        assert!(h.check(1_011_000).is_ok());
    }
}
