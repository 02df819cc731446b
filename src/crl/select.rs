//! From the status view to CRL entries: which revoked certificates each CRL lists.
//!
//! - Every revoked certificate of the issuer goes to exactly one shard: the one its
//!   cRLDistributionPoints names, recorded when its issuance was recorded with the certificate
//!   ([`crate::status::CrlScope`]); only a certificate whose CRLDP vigil never saw goes by the
//!   documented function of [`Sharding`]. A recorded shard never moves: a sharding that does
//!   not publish a recorded scope publishes nothing ([`Misplaced`]).
//! - An entry stays on the CRL until one complete CRL issued after the certificate's notAfter
//!   has listed it (RFC 5280 §3.3 lets an entry go once the certificate expires; the CA/B Forum
//!   Baseline Requirements want it on at least one CRL after expiry): a CRL keeps an entry
//!   whose notAfter is not before the previous complete CRL's thisUpdate. The first CRL of a
//!   scope (no previous one known) keeps everything.
//! - A delta CRL (§5.2.4) lists the entries that are new or changed (a reason moved to
//!   keyCompromise, a hold made permanent) since its base complete CRL, and, with reason
//!   removeFromCRL, the base's certificateHold entries whose certificate was released since.
//! - For an issuer whose policy allows holds, a certificate on hold is listed with reason
//!   certificateHold and its hold time; elsewhere holds are not listed.

use super::{Entry, Sharding};
use crate::status::{CertRecord, CertStatus, CrlScope, Records, RevocationReason, Serial};

/// A revoked certificate with what retention needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The entry as it would be listed.
    pub entry: Entry,
    /// notAfter, when an issuance was recorded.
    pub not_after: Option<i64>,
}

/// Revoked certificates whose recorded CRL scope the issuer's sharding does not publish: the
/// shard count was lowered below a shard certificates name, or an issuer went from unsharded
/// to sharded (or back) after certificates named its CRL. No CRL of the issuer may be
/// published then: each would leave these certificates off every CRL, and moving them to
/// another shard would move them away from the URL their cRLDistributionPoints names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{count} revoked certificate(s) name a CRL this sharding ({shards} shard(s)) does not publish, \
     e.g. {serial} names {scope}; a certificate's shard never moves: set the issuer's \
     crl.shards back (at least {needed})"
)]
pub struct Misplaced {
    /// How many revoked certificates.
    pub count: usize,
    /// One of them.
    pub serial: Serial,
    /// The scope it names.
    pub scope: CrlScope,
    /// The configured shard count.
    pub shards: u16,
    /// The smallest shard count that publishes every recorded scope seen (1 for the unsharded
    /// CRL).
    pub needed: u16,
}

/// The shard index (into [`Sharding::scopes`]) that lists a certificate: the scope recorded at
/// issuance when there is one, else the documented function of the serial
/// ([`Sharding::shard_of`]). Err with the recorded scope when this sharding does not publish it.
pub fn shard_index(
    sharding: &Sharding,
    serial: &Serial,
    record: &CertRecord,
) -> Result<usize, CrlScope> {
    match (record.crl_scope(), sharding.is_sharded()) {
        (None, _) => Ok(sharding.shard_of(serial, record.not_after()) as usize),
        (Some(CrlScope::Shard(k)), true) if k < sharding.shards => Ok(usize::from(k)),
        (Some(CrlScope::Unsharded), false) => Ok(0),
        (Some(scope), _) => Err(scope),
    }
}

/// The revoked certificates among `records`, by shard (one vector per shard, one when unsharded);
/// with `holds`, the certificates on hold too. A certificate whose scope was recorded at
/// issuance is on that shard; Err when some recorded scope is not published by `sharding`.
pub fn revoked_by_shard(
    records: &(impl Records + ?Sized),
    sharding: &Sharding,
    holds: bool,
) -> Result<Vec<Vec<Candidate>>, Misplaced> {
    let mut out = vec![Vec::new(); sharding.scopes().len()];
    let mut misplaced: Option<Misplaced> = None;
    records.each(&mut |serial, record| {
        if let CertStatus::Revoked(r) = record.status_with(holds) {
            let not_after = record.not_after();
            let k = match shard_index(sharding, serial, record) {
                Ok(k) => k,
                Err(scope) => {
                    let needed = match scope {
                        CrlScope::Shard(k) => k + 1,
                        CrlScope::Unsharded => 1,
                    };
                    let m = misplaced.get_or_insert(Misplaced {
                        count: 0,
                        serial: *serial,
                        scope,
                        shards: sharding.shards,
                        needed,
                    });
                    m.count += 1;
                    m.needed = m.needed.max(needed);
                    return;
                }
            };
            if let Some(v) = out.get_mut(k) {
                v.push(Candidate {
                    entry: Entry {
                        serial: *serial,
                        time: r.time,
                        reason: r.reason,
                    },
                    not_after,
                });
            }
        }
    });
    match misplaced {
        Some(m) => Err(m),
        None => Ok(out),
    }
}

/// The entries a complete CRL lists, given the previous complete CRL's thisUpdate.
pub fn retained(candidates: &[Candidate], previous_this_update: Option<i64>) -> Vec<Entry> {
    candidates
        .iter()
        .filter(|c| match (c.not_after, previous_this_update) {
            (Some(na), Some(prev)) => na >= prev,
            _ => true,
        })
        .map(|c| c.entry)
        .collect()
}

/// The serials a new complete CRL would drop from `previous`, the complete CRL of the same
/// scope it follows, that it may not drop (CONFORMANCE rule 21: a complete CRL never drops an
/// entry of the one before it). An entry may go only when the certificate is past retention
/// (notAfter before `previous_this_update`, the rule of [`retained`]) or when it was a hold
/// that no longer applies (released, or holds no longer answered: `holds` false). `record`
/// gives the view's record of a serial; a serial the view does not know at all may never go
/// (a view that lacks it is incomplete). `next` need not be sorted.
pub fn dropped(
    previous: &[Entry],
    next: &[Entry],
    previous_this_update: i64,
    holds: bool,
    record: impl Fn(&crate::status::Serial) -> Option<crate::status::CertRecord>,
) -> Vec<crate::status::Serial> {
    let listed: std::collections::HashSet<_> = next.iter().map(|e| e.serial).collect();
    previous
        .iter()
        .filter(|e| !listed.contains(&e.serial))
        .filter(|e| {
            let Some(r) = record(&e.serial) else {
                return true;
            };
            let expired = r.not_after().is_some_and(|na| na < previous_this_update);
            let hold_over = e.reason == RevocationReason::CertificateHold
                && r.revocation().is_none()
                && !(holds && r.hold().is_some_and(|h| h.held));
            !(expired || hold_over)
        })
        .map(|e| e.serial)
        .collect()
}

/// The entries of a delta CRL: those of `current` absent from `base` or listed there
/// differently, and, with reason removeFromCRL (RFC 5280 §5.3.1), the certificateHold entries
/// of `base` that `current` no longer lists (the certificate was released). Both sorted by
/// serial; so is the result.
pub fn delta(current: &[Entry], base: &[Entry]) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut b = base.iter().peekable();
    let released = |x: &Entry| Entry {
        reason: RevocationReason::RemoveFromCrl,
        ..*x
    };
    for e in current {
        while let Some(x) = b.next_if(|x| x.serial < e.serial) {
            if x.reason == RevocationReason::CertificateHold {
                out.push(released(x));
            }
        }
        match b.next_if(|x| x.serial == e.serial) {
            Some(x) if x == e => {}
            _ => out.push(*e),
        }
    }
    out.extend(
        b.filter(|x| x.reason == RevocationReason::CertificateHold)
            .map(released),
    );
    out
}

#[cfg(test)]
mod tests {
    use crate::status::Serial;

    #[test]
    fn a_complete_crl_may_drop_only_expired_entries_and_released_holds() {
        let sn = |n: u8| Serial::from_magnitude(&[n]).expect("serial");
        let entry = |n: u8, reason| Entry {
            serial: sn(n),
            time: 10,
            reason,
        };
        let previous = vec![
            entry(1, RevocationReason::KeyCompromise),
            entry(2, RevocationReason::Unspecified),
            entry(3, RevocationReason::CertificateHold),
            entry(4, RevocationReason::CertificateHold),
            entry(5, RevocationReason::Superseded),
        ];
        let rec = |kinds: &[EventKind]| {
            kinds
                .iter()
                .map(CertRecord::from_event)
                .reduce(CertRecord::join)
                .expect("one")
        };
        let record = |s: &Serial| match s.as_der_content() {
            // revoked, live: must stay
            [1] => Some(rec(&[
                EventKind::Issued { not_after: 500 },
                EventKind::Revoked {
                    time: 10,
                    reason: RevocationReason::KeyCompromise,
                },
            ])),
            // expired before the previous CRL: may go
            [2] => Some(rec(&[
                EventKind::Issued { not_after: 50 },
                EventKind::Revoked {
                    time: 10,
                    reason: RevocationReason::Unspecified,
                },
            ])),
            // released: may go
            [3] => Some(rec(&[
                EventKind::Issued { not_after: 500 },
                EventKind::Hold { time: 10 },
                EventKind::Release { time: 11 },
            ])),
            // still held: must stay
            [4] => Some(rec(&[
                EventKind::Issued { not_after: 500 },
                EventKind::Hold { time: 10 },
            ])),
            // unknown to the view: must stay
            _ => None,
        };
        let next = vec![entry(1, RevocationReason::KeyCompromise)];
        assert_eq!(
            dropped(&previous, &next, 100, true, record),
            vec![sn(4), sn(5)]
        );
        // holds no longer answered: the held entry may go too
        assert_eq!(dropped(&previous, &next, 100, false, record), vec![sn(5)]);
        // an empty CRL after a listed one: everything that must stay is named
        assert_eq!(
            dropped(&previous, &[], 100, true, record),
            vec![sn(1), sn(4), sn(5)]
        );
        assert!(dropped(&previous, &previous, 100, true, record).is_empty());
    }

    use super::*;
    use crate::crl::ShardBy;
    use crate::crl::testutil::serial;
    use crate::status::view::IssuerTable;
    use crate::status::{CertRecord, EventKind, RevocationReason};

    fn revoke(t: &IssuerTable, n: u64, not_after: Option<i64>) {
        if let Some(na) = not_after {
            t.merge(
                serial(n),
                CertRecord::from_event(&EventKind::Issued { not_after: na }),
            );
        }
        t.merge(
            serial(n),
            CertRecord::from_event(&EventKind::Revoked {
                time: 100,
                reason: RevocationReason::Superseded,
            }),
        );
    }

    #[test]
    fn every_revoked_serial_in_exactly_one_shard() {
        let t = IssuerTable::default();
        for n in 1..200 {
            revoke(&t, n, Some(1000 + n as i64 * 3600));
        }
        t.merge(
            serial(999),
            CertRecord::from_event(&EventKind::Issued { not_after: 5 }),
        );
        for by in [ShardBy::Serial, ShardBy::NotAfter { width: 7200 }] {
            let s = Sharding { shards: 5, by };
            let shards = revoked_by_shard(&t, &s, false).expect("no recorded scopes");
            assert_eq!(shards.len(), 5);
            let mut all: Vec<_> = shards.iter().flatten().map(|c| c.entry.serial).collect();
            all.sort();
            let expected: Vec<_> = (1..200).map(serial).collect();
            assert_eq!(all, expected, "{by:?}");
        }
    }

    #[test]
    fn a_recorded_shard_never_moves() {
        let t = IssuerTable::default();
        let shard = |k| {
            CertRecord::from_event(&EventKind::CrlShard {
                scope: CrlScope::Shard(k),
            })
        };
        // serials 1..=40 revoked, each recorded on shard n % 4; 41..=60 revoked, never seen
        for n in 1..=60u64 {
            revoke(&t, n, Some(9_000));
            if n <= 40 {
                t.merge(serial(n), shard((n % 4) as u16));
            }
        }
        let placed = |shards: u16| {
            let s = Sharding {
                shards,
                by: ShardBy::Serial,
            };
            let by = revoked_by_shard(&t, &s, false).expect("placed");
            let mut at = std::collections::BTreeMap::new();
            for (k, v) in by.iter().enumerate() {
                for c in v {
                    assert!(at.insert(c.entry.serial, k).is_none(), "on two shards");
                }
            }
            assert_eq!(at.len(), 60);
            at
        };
        for shards in [4u16, 5, 8, 256] {
            let at = placed(shards);
            for n in 1..=40u64 {
                assert_eq!(at[&serial(n)], (n % 4) as usize, "{n} with {shards} shards");
            }
            let s = Sharding {
                shards,
                by: ShardBy::Serial,
            };
            for n in 41..=60u64 {
                assert_eq!(at[&serial(n)], usize::from(s.shard_of(&serial(n), None)));
            }
        }
        // lowering the count below a recorded shard publishes nothing, and says what is needed
        let e = revoked_by_shard(
            &t,
            &Sharding {
                shards: 3,
                by: ShardBy::Serial,
            },
            false,
        )
        .expect_err("shard 3 is recorded");
        assert_eq!((e.count, e.needed, e.scope), (10, 4, CrlScope::Shard(3)));
        let e = revoked_by_shard(&t, &Sharding::unsharded(), false).expect_err("sharded");
        assert_eq!(e.count, 40);
        // the unsharded CRL a certificate names stays where it is only while unsharded
        let u = IssuerTable::default();
        revoke(&u, 7, Some(9_000));
        u.merge(
            serial(7),
            CertRecord::from_event(&EventKind::CrlShard {
                scope: CrlScope::Unsharded,
            }),
        );
        assert_eq!(
            revoked_by_shard(&u, &Sharding::unsharded(), false).expect("placed")[0].len(),
            1
        );
        let e = revoked_by_shard(
            &u,
            &Sharding {
                shards: 2,
                by: ShardBy::Serial,
            },
            false,
        )
        .expect_err("unsharded");
        assert_eq!((e.scope, e.needed), (CrlScope::Unsharded, 1));
    }

    #[test]
    fn expired_entries_stay_for_one_crl() {
        let t = IssuerTable::default();
        revoke(&t, 1, Some(1000));
        revoke(&t, 2, Some(5000));
        revoke(&t, 3, None);
        let c = &revoked_by_shard(&t, &Sharding::unsharded(), false).expect("placed")[0];
        assert_eq!(retained(c, None).len(), 3);
        // previous CRL at 900: cert 1 had not yet expired then, so it is listed once more
        assert_eq!(retained(c, Some(900)).len(), 3);
        // previous CRL at 1100 already listed it after its expiry: it goes
        let mut kept: Vec<_> = retained(c, Some(1100)).iter().map(|e| e.serial).collect();
        kept.sort();
        assert_eq!(kept, vec![serial(2), serial(3)]);
    }

    #[test]
    fn delta_lists_new_and_changed() {
        let e = |n, reason| Entry {
            serial: serial(n),
            time: 1,
            reason,
        };
        let base = [
            e(1, RevocationReason::Superseded),
            e(3, RevocationReason::Superseded),
        ];
        let current = [
            e(1, RevocationReason::Superseded),
            e(2, RevocationReason::Unspecified),
            e(3, RevocationReason::KeyCompromise),
        ];
        assert_eq!(delta(&current, &base), vec![current[1], current[2]]);
        assert!(delta(&base, &base).is_empty());
    }

    #[test]
    fn holds_are_listed_only_where_allowed_and_releases_leave_by_delta() {
        let t = IssuerTable::default();
        revoke(&t, 1, Some(9_000));
        for n in [2, 4] {
            t.merge(
                serial(n),
                CertRecord::from_event(&EventKind::Issued { not_after: 9_000 }),
            );
            t.merge(
                serial(n),
                CertRecord::from_event(&EventKind::Hold { time: 50 }),
            );
        }
        let listed = |holds| {
            let mut v: Vec<Entry> = revoked_by_shard(&t, &Sharding::unsharded(), holds)
                .expect("placed")[0]
                .iter()
                .map(|c| c.entry)
                .collect();
            v.sort_by_key(|e| e.serial);
            v
        };
        assert_eq!(listed(false).len(), 1);
        let base = listed(true);
        assert_eq!(base.len(), 3);
        assert_eq!(base[1].reason, RevocationReason::CertificateHold);
        assert_eq!(base[1].time, 50);

        // 2 is released, 4 stays held, 3 is newly held: the delta removes 2 and adds 3
        t.merge(
            serial(2),
            CertRecord::from_event(&EventKind::Release { time: 60 }),
        );
        t.merge(
            serial(3),
            CertRecord::from_event(&EventKind::Hold { time: 61 }),
        );
        let d = delta(&listed(true), &base);
        let got: Vec<_> = d.iter().map(|e| (e.serial, e.reason)).collect();
        assert_eq!(
            got,
            vec![
                (serial(2), RevocationReason::RemoveFromCrl),
                (serial(3), RevocationReason::CertificateHold)
            ]
        );
        // a hold made permanent is listed with its new reason, not removed
        t.merge(
            serial(4),
            CertRecord::from_event(&EventKind::Revoked {
                time: 70,
                reason: RevocationReason::KeyCompromise,
            }),
        );
        let d = delta(&listed(true), &base);
        assert!(
            d.iter()
                .any(|e| e.serial == serial(4) && e.reason == RevocationReason::KeyCompromise)
        );
        assert!(
            !d.iter()
                .any(|e| e.serial == serial(4) && e.reason == RevocationReason::RemoveFromCrl)
        );
        // a released last entry is still removed
        let d = delta(&listed(true)[..1], &base);
        assert_eq!(
            d.last().map(|e| e.reason),
            Some(RevocationReason::RemoveFromCrl)
        );
    }
}
