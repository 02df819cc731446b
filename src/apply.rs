//! The one way a status change enters a running replica.
//!
//! The journal tailer, the feed consumers (tailing, bootstrap, completeness re-reads) and
//! re-seeding all go through [`Applier`]: join into the view → evict the cached responses whose
//! status changed → wake the CRL publisher when what a CRL lists may have changed. The view's
//! per-issuer count and digest, which completeness checks compare with the regions, are kept by
//! the view itself in the same locked step as the join ([`crate::status::view::Digest`]), so
//! no path can forget them.

use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;

use crate::limits::{APPLY_BULK_CHANGES, APPLY_INLINE_EVENTS};
use crate::responder::Responder;
use crate::status::{CertRecord, CertStatus, Event, IssuerId, Serial, StatusView};

/// What one call changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Records the call changed.
    pub changed: usize,
    /// Events or records already reflected in the view.
    pub unchanged: usize,
}

/// Applies status changes to the view and to everything that depends on it.
pub struct Applier {
    /// The status view.
    pub view: Arc<StatusView>,
    /// Evicts cached responses; None outside `serve` (one-shot commands).
    responder: Option<Arc<Responder>>,
    /// Told when a CRL's content may have changed (the CRL publisher waits on it).
    crl_wake: OnceLock<Arc<Notify>>,
}

/// Whether a change from `before` to `after` may change what a CRL lists: a revocation, a
/// stronger reason, a hold or its release.
fn touches_crls(before: CertStatus, after: CertStatus) -> bool {
    before != after
        && (matches!(before, CertStatus::Revoked(_)) || matches!(after, CertStatus::Revoked(_)))
}

/// Whether cached responses of a certificate must go: its answer changed. A certificate merely
/// recorded as issued (unissued → good) is left alone: cache hits are checked against the
/// view's status anyway, and a bootstrap of millions of issuances would otherwise evict
/// millions of entries that cannot exist.
fn evicts(before: CertStatus, after: CertStatus) -> bool {
    before != after && !(before == CertStatus::Unissued && after == CertStatus::Good)
}

/// One certificate whose record a join changed: its issuer, serial, status before and after.
type Change = (IssuerId, Serial, CertStatus, CertStatus);

/// Joins `events` into `view`; one change per event that changed a record.
fn join_events(view: &StatusView, events: &[Event]) -> Vec<Change> {
    let mut changes = Vec::new();
    view.apply_batch(events, |e, before, after| {
        changes.push((e.issuer, e.serial, before, after));
    });
    changes
}

impl Applier {
    /// An applier for `view`, evicting from `responder`'s caches.
    pub fn new(view: Arc<StatusView>, responder: Option<Arc<Responder>>) -> Self {
        Applier {
            view,
            responder,
            crl_wake: OnceLock::new(),
        }
    }

    /// Wakes `notify` whenever a CRL's content may have changed (set once, by the CRL service).
    pub fn wake_crls_with(&self, notify: Arc<Notify>) {
        let _ = self.crl_wake.set(notify);
    }

    /// Wakes the CRL publisher: a CRL's content may have changed, or a feed region lost or
    /// rolled back the CRLs it stored.
    pub fn wake_crls(&self) {
        if let Some(n) = self.crl_wake.get() {
            n.notify_one();
        }
    }

    /// Joins events (from the journal or a feed stream).
    pub async fn events(&self, events: &[Event]) -> Applied {
        let changes = join_events(&self.view, events);
        self.finish(events.len(), &changes, false).await
    }

    /// [`Applier::events`] for a batch the caller owns (a feed read): more than
    /// [`APPLY_INLINE_EVENTS`] are joined on the join thread ([`crate::background::join`]), so
    /// that a read of tens of thousands (a mass revocation) does not hold up the tokio worker
    /// answering OCSP beside it.
    pub async fn events_owned(&self, events: Vec<Event>) -> Applied {
        if events.len() <= APPLY_INLINE_EVENTS {
            return self.events(&events).await;
        }
        let view = self.view.clone();
        let n = events.len();
        let joined = crate::background::join(move || join_events(&view, &events)).await;
        match joined {
            Ok(changes) => self.finish(n, &changes, false).await,
            // The join panicked: nothing to follow up; the completeness check re-reads.
            Err(e) => {
                tracing::error!(error = %e, "joining a batch of events failed");
                Applied::default()
            }
        }
    }

    /// Follows up the `changes` of `n` events or records; bulk when `bulk` or when there are
    /// many (a mass revocation read in one go: evict what is cached, but do not mark a million
    /// certificates no client asked about for status-change priority).
    async fn finish(&self, n: usize, changes: &[Change], bulk: bool) -> Applied {
        self.follow_up(changes, bulk || changes.len() > APPLY_BULK_CHANGES)
            .await;
        Applied {
            changed: changes.len(),
            unchanged: n - changes.len(),
        }
    }

    /// Joins records of one issuer (a snapshot scan, a checkpoint, a backup).
    pub async fn records(&self, issuer: IssuerId, records: &[(Serial, CertRecord)]) -> Applied {
        let mut changes = Vec::new();
        self.view
            .table(issuer)
            .merge_records(records, |serial, before, after| {
                changes.push((issuer, *serial, before, after));
            });
        self.finish(records.len(), &changes, true).await
    }

    async fn follow_up(&self, changes: &[Change], bulk: bool) {
        let wake = changes.iter().any(|(_, _, b, a)| touches_crls(*b, *a));
        let evicted = changes.iter().filter(|(_, _, b, a)| evicts(*b, *a));
        match &self.responder {
            Some(r) if bulk => {
                let certs: Vec<(IssuerId, Serial)> = evicted.map(|(i, s, _, _)| (*i, *s)).collect();
                r.evict_bulk(&certs).await;
            }
            Some(r) => {
                for (issuer, serial, _, _) in evicted {
                    r.evict(*issuer, serial).await;
                }
            }
            None => {}
        }
        if wake {
            self.wake_crls();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{EventKind, Revocation, RevocationReason};

    fn revoked(reason: RevocationReason) -> CertStatus {
        CertStatus::Revoked(Revocation { time: 5, reason })
    }

    #[test]
    fn releases_and_upgrades_wake_the_publisher_issuances_do_not() {
        let held = revoked(RevocationReason::CertificateHold);
        assert!(touches_crls(
            CertStatus::Good,
            revoked(RevocationReason::Unspecified)
        ));
        assert!(touches_crls(held, CertStatus::Good));
        assert!(touches_crls(
            revoked(RevocationReason::Superseded),
            revoked(RevocationReason::KeyCompromise)
        ));
        assert!(!touches_crls(CertStatus::Unissued, CertStatus::Good));
        assert!(!evicts(CertStatus::Unissued, CertStatus::Good));
        assert!(evicts(CertStatus::Unissued, held));
        assert!(evicts(held, CertStatus::Good));
    }

    #[tokio::test]
    async fn every_path_wakes_on_a_release() {
        let view = Arc::new(StatusView::new());
        let a = Applier::new(view.clone(), None);
        let wake = Arc::new(Notify::new());
        a.wake_crls_with(wake.clone());
        let issuer = IssuerId([3; 32]);
        let serial = Serial::from_magnitude(&[9]).expect("serial");
        let ev = |kind| Event {
            issuer,
            serial,
            kind,
            origin: "t".into(),
            created_at_ms: 0,
        };
        let hold = a
            .events(&[
                ev(EventKind::Issued { not_after: 99 }),
                ev(EventKind::Hold { time: 1 }),
            ])
            .await;
        assert_eq!(hold.changed, 2);
        // The hold woke the publisher: the permit is stored.
        tokio::time::timeout(std::time::Duration::from_secs(1), wake.notified())
            .await
            .expect("woken by the hold");
        // A release arriving as a snapshot record (bootstrap, re-read) wakes it too.
        let released = view
            .table(issuer)
            .record(&serial)
            .expect("record")
            .join(CertRecord::from_event(&EventKind::Release { time: 2 }));
        let r = a.records(issuer, &[(serial, released)]).await;
        assert_eq!(
            r,
            Applied {
                changed: 1,
                unchanged: 0
            }
        );
        tokio::time::timeout(std::time::Duration::from_secs(1), wake.notified())
            .await
            .expect("woken by the release");
        assert_eq!(view.status(issuer, &serial), CertStatus::Good);
    }
}
