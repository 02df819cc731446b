//! One publishing pass: for every issuer this node can sign CRLs for, and every scope (shard),
//! build a CRL from the status view, lint it, and store it in every region's Redis (or the
//! data directory when there is no Redis), then serve it locally.
//!
//! The numbering input ("previous") and the retention input (the previous complete CRL's
//! thisUpdate) come from what this replica serves, which the refresher keeps in step with
//! Redis; the stores' compare-and-set is what guarantees that numbers never go backwards.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::task::JoinSet;

use super::catalog::{Catalog, Installed, ServedCrl};
use super::redis_store::{Fence, Region, StoreError, StoreOutcome};
use crate::crl::lint::{self, Kind};
use crate::crl::number::next_number;
use crate::crl::select::{self, Candidate};
use crate::crl::{CrlId, CrlIssuer, CrlSpec, Entry, Expect, Sharding};
use crate::signer::service::{Priority, SigningService};
use crate::status::view::IssuerTable;
use crate::status::{IssuerId, StatusView};
use crate::telemetry;

/// An issuer whose CRLs this node signs.
pub struct PublishIssuer {
    /// What the CRLs say about their issuer.
    pub issuer: CrlIssuer,
    /// Its id in the status view.
    pub issuer_id: IssuerId,
    /// The CA key, behind its signing service.
    pub signing: SigningService,
    /// Its shards.
    pub sharding: Sharding,
    /// Publish delta CRLs too.
    pub deltas: bool,
    /// nextUpdate − thisUpdate, seconds.
    pub validity: i64,
    /// Complete CRLs are republished this often, seconds.
    pub interval: i64,
    /// Public base URL (for freshest CRL).
    pub base_url: Option<String>,
}

/// Why a CRL was not built; its label is the `result` of `vigil_crl_publish_total`.
#[derive(Debug, thiserror::Error)]
pub enum NotBuilt {
    /// Encoding or the lint refused it.
    #[error(transparent)]
    Crl(#[from] crate::crl::CrlError),
    /// The signing service gave no signature (queue full, timed out twice, the key failed).
    #[error("signing: {0}")]
    Sign(#[from] crate::signer::service::ServiceError),
}

/// Why a target did not take a CRL (beside the outcomes [`StoreOutcome`] names).
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The region's Redis failed or did not answer.
    #[error(transparent)]
    Region(#[from] StoreError),
    /// The store task did not finish (it panicked, or the runtime is shutting down).
    #[error("store task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The data directory's copy could not be written.
    #[error("disk copy: {0}")]
    Disk(#[from] std::io::Error),
}

/// Why a CRL (or every CRL of an issuer) was not published. Each names the issuer or the CRL.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A revoked certificate names a shard the configured count does not publish.
    #[error("{issuer}: publishing none of its CRLs: {source}")]
    Misplaced {
        /// The issuer.
        issuer: String,
        /// Which certificate, and the count needed.
        source: select::Misplaced,
    },
    /// The scan of the issuer's records did not finish.
    #[error("{issuer}: reading the view: {source}")]
    View {
        /// The issuer.
        issuer: String,
        /// Why.
        source: tokio::task::JoinError,
    },
    /// Building, comparing or checking ran on the background threads and did not finish.
    #[error("{path}: {source}")]
    Background {
        /// The CRL.
        path: String,
        /// Why.
        source: crate::background::BackgroundError,
    },
    /// The served CRL (a delta's base, or the one a complete CRL is checked against) could not
    /// be read back.
    #[error("{path}: reading the {what} CRL: {source}")]
    Served {
        /// The CRL being published.
        path: String,
        /// `base` or `previous`.
        what: &'static str,
        /// Why.
        source: lint::LintError,
    },
    /// The complete CRL would drop serials the served one lists: refused.
    #[error("{path}: {why}")]
    Shrinks {
        /// The CRL.
        path: String,
        /// How many serials, which, and the CRL that lists them.
        why: String,
    },
    /// Encoding, signing or the lint failed.
    #[error("{path}: {source}")]
    NotBuilt {
        /// The CRL.
        path: String,
        /// Why.
        source: NotBuilt,
    },
}

impl NotBuilt {
    fn label(&self) -> &'static str {
        match self {
            Self::Crl(_) => "lint_failed",
            Self::Sign(_) => "sign_failed",
        }
    }
}

/// Complete CRLs, or (when deltas are enabled and a complete CRL exists) delta CRLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Complete CRLs (and fresh, empty deltas against them when deltas are enabled).
    Full,
    /// Delta CRLs against the complete CRLs served now.
    Delta,
}

/// The result of publishing one CRL.
#[derive(Debug)]
pub struct Published {
    /// Which CRL.
    pub id: CrlId,
    /// Its number.
    pub number: u64,
    /// Entries listed.
    pub entries: usize,
    /// Per target (region name or `disk`): the outcome or the error.
    pub results: Vec<(String, Result<StoreOutcome, TargetError>)>,
}

impl Published {
    /// True when at least one target stored it.
    pub fn stored(&self) -> bool {
        self.results
            .iter()
            .any(|(_, r)| matches!(r, Ok(StoreOutcome::Stored)))
    }
}

/// Builds, lints and stores CRLs.
pub struct Publisher {
    /// Issuers this node signs for, each with its CRL settings.
    pub issuers: Vec<PublishIssuer>,
    /// What this replica serves.
    pub catalog: Arc<Catalog>,
    /// Every region's Redis (empty: the data directory is the store).
    pub regions: Arc<Vec<Region>>,
    /// Complete CRLs refused for dropping entries, by path (for `/readyz`).
    pub refusals: Arc<Refusals>,
    /// The one clock: thisUpdate and the CRL number come from it.
    pub clock: crate::clock::Clock,
}

/// Complete CRLs refused because they would drop entries of the previous one, by CRL path:
/// `/readyz` reports the replica degraded, naming them, until that scope's next complete CRL
/// lists everything it must.
#[derive(Debug, Default)]
pub struct Refusals(std::sync::Mutex<std::collections::BTreeMap<String, String>>);

impl Refusals {
    fn set(&self, id: &CrlId, why: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.path(), why.to_owned());
    }

    fn clear(&self, id: &CrlId) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id.path());
    }

    /// What is refused now, if anything.
    pub fn describe(&self) -> Option<String> {
        let m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (!m.is_empty()).then(|| {
            m.iter()
                .map(|(path, why)| format!("CRL {path}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

impl Publisher {
    /// One pass over every issuer and scope. Never panics; failures are in the results.
    pub async fn publish(
        &self,
        view: &Arc<StatusView>,
        mode: Mode,
        fence: Option<&Fence>,
    ) -> Vec<Result<Published, PublishError>> {
        self.publish_issuers(view, mode, fence, |_| true).await
    }

    /// One pass over the issuers `which` picks.
    pub async fn publish_issuers(
        &self,
        view: &Arc<StatusView>,
        mode: Mode,
        fence: Option<&Fence>,
        which: impl Fn(&PublishIssuer) -> bool,
    ) -> Vec<Result<Published, PublishError>> {
        let mut out = Vec::new();
        for pi in self.issuers.iter().filter(|pi| which(pi)) {
            let table = view.table(pi.issuer_id);
            let scan = table.clone();
            let sharding = pi.sharding;
            let holds = pi.issuer.allow_hold;
            // At normal priority, not on the background threads: the scan copies one segment at
            // a time under its read lock, and a low-priority thread preempted while copying
            // would keep the feed's writer waiting, and the OCSP reads of that segment behind it.
            let candidates = match tokio::task::spawn_blocking(move || {
                select::revoked_by_shard(&*scan, &sharding, holds)
            })
            .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(misplaced)) => {
                    metrics::counter!(telemetry::CRL_MISPLACED, "issuer" => pi.issuer.name.clone())
                        .increment(1);
                    // Shown by /readyz (degraded) until a pass publishes the scope again.
                    let why = misplaced.to_string();
                    for id in CrlId::all(&pi.issuer.name, &pi.sharding, false) {
                        self.refusals.set(&id, &why);
                    }
                    out.push(Err(PublishError::Misplaced {
                        issuer: pi.issuer.name.clone(),
                        source: misplaced,
                    }));
                    continue;
                }
                Err(source) => {
                    out.push(Err(PublishError::View {
                        issuer: pi.issuer.name.clone(),
                        source,
                    }));
                    continue;
                }
            };
            for (scope, cands) in pi.sharding.scopes().into_iter().zip(candidates) {
                let full_id = CrlId {
                    issuer: pi.issuer.name.clone(),
                    shard: scope,
                    delta: false,
                };
                let results = self
                    .publish_scope(pi, &table, full_id, Arc::new(cands), mode, fence)
                    .await;
                out.extend(results);
            }
        }
        out
    }

    async fn publish_scope(
        &self,
        pi: &PublishIssuer,
        table: &Arc<IssuerTable>,
        full_id: CrlId,
        cands: Arc<Vec<Candidate>>,
        mode: Mode,
        fence: Option<&Fence>,
    ) -> Vec<Result<Published, PublishError>> {
        let prev_full = self.catalog.current(&full_id);
        let prev_delta = if pi.deltas {
            self.catalog.current(&full_id.delta())
        } else {
            None
        };
        let previous = prev_full
            .as_ref()
            .map(|c| c.number)
            .max(prev_delta.as_ref().map(|c| c.number));
        let mut out = Vec::new();
        match (mode, prev_full) {
            (Mode::Delta, Some(base)) if pi.deltas => {
                let cands = cands.clone();
                let base2 = base.clone();
                let entries = crate::background::run(move || {
                    let base_entries = lint::read_entries(&base2.der)?;
                    let mut current = select::retained(&cands, Some(base2.this_update));
                    crate::crl::build::sort_entries(&mut current)
                        .map_err(|e| lint::LintError(e.to_string()))?;
                    Ok::<_, lint::LintError>(select::delta(&current, &base_entries))
                })
                .await;
                let entries = match entries {
                    Ok(Ok(e)) => e,
                    Ok(Err(source)) => {
                        out.push(Err(PublishError::Served {
                            path: full_id.path(),
                            what: "base",
                            source,
                        }));
                        return out;
                    }
                    Err(source) => {
                        out.push(Err(PublishError::Background {
                            path: full_id.path(),
                            source,
                        }));
                        return out;
                    }
                };
                out.push(
                    self.publish_one(
                        pi,
                        full_id.delta(),
                        entries,
                        Some(base.number),
                        previous,
                        fence,
                        None,
                    )
                    .await,
                );
            }
            (_, prev_full) => {
                let entries = select::retained(&cands, prev_full.as_ref().map(|c| c.this_update));
                let entries = match self
                    .refuse_shrinking(pi, table, &full_id, prev_full.as_ref(), entries)
                    .await
                {
                    Ok(e) => e,
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                };
                let checked_against = Some(prev_full.as_ref().map_or(0, |c| c.number));
                let full = self
                    .publish_one(
                        pi,
                        full_id.clone(),
                        entries,
                        None,
                        previous,
                        fence,
                        checked_against,
                    )
                    .await;
                let base = match &full {
                    Ok(p) if p.stored() => Some(p.number),
                    _ => None,
                };
                out.push(full);
                if let (true, Some(base)) = (pi.deltas, base) {
                    out.push(
                        self.publish_one(
                            pi,
                            full_id.delta(),
                            Vec::new(),
                            Some(base),
                            Some(base),
                            fence,
                            None,
                        )
                        .await,
                    );
                }
            }
        }
        out
    }

    /// Passes `entries` on when they list every entry of `previous` (the complete CRL of the
    /// scope served now) that may not go ([`select::dropped`]); otherwise refuses the CRL: not
    /// signed or stored, counted, logged with the number of serials it would drop, and named in
    /// `/readyz` (degraded) until a complete CRL of the scope is stored again. The previous CRL
    /// keeps being served.
    async fn refuse_shrinking(
        &self,
        pi: &PublishIssuer,
        table: &Arc<IssuerTable>,
        id: &CrlId,
        previous: Option<&Arc<ServedCrl>>,
        entries: Vec<Entry>,
    ) -> Result<Vec<Entry>, PublishError> {
        let Some(prev) = previous.cloned() else {
            self.refusals.clear(id);
            return Ok(entries);
        };
        let table = table.clone();
        let holds = pi.issuer.allow_hold;
        let checked = crate::background::run(move || {
            let before = lint::read_entries(&prev.der)?;
            let dropped = select::dropped(&before, &entries, prev.this_update, holds, |s| {
                table.record(s)
            });
            Ok::<_, lint::LintError>((entries, dropped, prev.number))
        })
        .await
        .map_err(|source| PublishError::Background {
            path: id.path(),
            source,
        })?;
        let (entries, dropped, prev_number) = match checked {
            Ok(x) => x,
            // The served CRL passed lint when it was installed; one that cannot be read now
            // cannot be compared, so nothing replaces it.
            Err(source) => {
                return Err(PublishError::Served {
                    path: id.path(),
                    what: "previous",
                    source,
                });
            }
        };
        if dropped.is_empty() {
            self.refusals.clear(id);
            return Ok(entries);
        }
        metrics::counter!(telemetry::CRL_PUBLISH, "issuer" => pi.issuer.name.clone(), "target" => "none", "result" => "shrink_refused")
            .increment(1);
        let why = format!(
            "a complete CRL would drop {} serial(s) listed on CRL {} (e.g. {}); refused, the previous CRL stays",
            dropped.len(),
            prev_number,
            dropped
                .iter()
                .take(3)
                .map(|s| crate::status::hex(s.as_der_content()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        tracing::error!(crl = %id.path(), dropped = dropped.len(), previous = prev_number, "complete CRL refused: it would drop serials the previous one lists");
        self.refusals.set(id, &why);
        Err(PublishError::Shrinks {
            path: id.path(),
            why,
        })
    }

    /// Builds, signs and lints one CRL off the reactor, then stores it.
    #[allow(clippy::too_many_arguments)]
    async fn publish_one(
        &self,
        pi: &PublishIssuer,
        id: CrlId,
        mut entries: Vec<Entry>,
        delta_base: Option<u64>,
        previous: Option<u64>,
        fence: Option<&Fence>,
        checked_against: Option<u64>,
    ) -> Result<Published, PublishError> {
        let name = pi.issuer.name.clone();
        let now_ms = self.clock.now_ms();
        let now = now_ms.div_euclid(1000);
        let number = next_number(now_ms, previous);
        let idp_uri = self.catalog.idp_uri(&id).map(str::to_owned);
        let freshest_uri = match (&pi.base_url, pi.deltas && !id.delta) {
            (Some(b), true) => Some(id.delta().url(b)),
            _ => None,
        };
        let issuer = pi.issuer.clone();
        let algorithm = pi.signing.signer().algorithm();
        let validity = pi.validity;
        let started = Instant::now();
        // Encoding, signing and linting are three steps: the CPU work on the background
        // threads, the signature on the issuer's signing service (a call stuck in a silent HSM
        // is asked again there).
        let tbs = {
            let (issuer, idp_uri, freshest_uri) =
                (issuer.clone(), idp_uri.clone(), freshest_uri.clone());
            crate::background::run(move || {
                let spec = CrlSpec {
                    number,
                    this_update: now,
                    next_update: now + validity,
                    idp_uri: idp_uri.as_deref(),
                    delta_base,
                    freshest_uri: freshest_uri.as_deref(),
                };
                crate::crl::tbs(&issuer, &spec, &mut entries, algorithm)
            })
            .await
            .map_err(|source| PublishError::Background {
                path: id.path(),
                source,
            })?
        };
        let signed = match tbs {
            Ok(tbs) => match pi.signing.sign(tbs.message(), Priority::Routine).await {
                Ok(s) => Ok((tbs, s.signature)),
                Err(e) => Err(NotBuilt::Sign(e)),
            },
            Err(e) => Err(NotBuilt::Crl(e)),
        };
        let built = match signed {
            Ok((tbs, signature)) => crate::background::run(move || {
                let der = tbs.assemble(&signature);
                let info = crate::crl::lint(
                    &der,
                    &issuer,
                    &Expect {
                        kind: match delta_base {
                            Some(b) => Kind::Delta(Some(b)),
                            None => Kind::Full,
                        },
                        number: Some(number),
                        previous,
                        idp_uri: idp_uri.as_deref(),
                        now: Some(now),
                    },
                )
                .map_err(|e| NotBuilt::Crl(e.into()))?;
                Ok::<_, NotBuilt>((der, info))
            })
            .await
            .map_err(|source| PublishError::Background {
                path: id.path(),
                source,
            })?,
            Err(e) => Err(e),
        };
        metrics::histogram!(telemetry::CRL_BUILD_LATENCY, "issuer" => name.clone())
            .record(started.elapsed().as_secs_f64());
        let (der, info) = match built {
            Ok(x) => x,
            Err(e) => {
                metrics::counter!(telemetry::CRL_PUBLISH, "issuer" => name.clone(), "target" => "none", "result" => e.label())
                    .increment(1);
                tracing::error!(crl = %id.path(), error = %e, "CRL not published");
                return Err(PublishError::NotBuilt {
                    path: id.path(),
                    source: e,
                });
            }
        };
        let der = Bytes::from(der);
        let results = self.store(&id, &der, &info, fence, checked_against).await;
        for (target, r) in &results {
            let result = match r {
                Ok(o) => o.label(),
                Err(_) => "error",
            };
            metrics::counter!(telemetry::CRL_PUBLISH, "issuer" => name.clone(), "target" => target.clone(), "result" => result)
                .increment(1);
            match r {
                Ok(StoreOutcome::Stored) => {
                    tracing::info!(crl = %id.path(), number, target = %target, entries = info.entries, "CRL stored")
                }
                Ok(o) => {
                    tracing::info!(crl = %id.path(), number, target = %target, outcome = ?o, "CRL not stored")
                }
                Err(e) => {
                    tracing::warn!(crl = %id.path(), number, target = %target, error = %e, "CRL store failed")
                }
            }
        }
        Ok(Published {
            id,
            number,
            entries: info.entries,
            results,
        })
    }

    async fn store(
        &self,
        id: &CrlId,
        der: &Bytes,
        info: &crate::crl::CrlInfo,
        fence: Option<&Fence>,
        checked_against: Option<u64>,
    ) -> Vec<(String, Result<StoreOutcome, TargetError>)> {
        let mut results = Vec::new();
        if !self.regions.is_empty() {
            let mut set = JoinSet::new();
            for i in 0..self.regions.len() {
                let regions = self.regions.clone();
                let (id, der, fence) = (id.clone(), der.clone(), fence.cloned());
                let (number, this_update, base) = (info.number, info.this_update, info.delta_base);
                set.spawn(async move {
                    // i < regions.len(): the loop's range.
                    let r = &regions[i];
                    let out = r
                        .store(
                            &id,
                            der,
                            number,
                            this_update,
                            base,
                            fence.as_ref(),
                            checked_against,
                        )
                        .await;
                    (r.name.clone(), out.map_err(TargetError::from))
                });
            }
            while let Some(r) = set.join_next().await {
                match r {
                    Ok(x) => results.push(x),
                    Err(e) => results.push(("?".into(), Err(TargetError::Task(e)))),
                }
            }
            results.sort_by(|a, b| a.0.cmp(&b.0));
            if !results
                .iter()
                .any(|(_, r)| matches!(r, Ok(StoreOutcome::Stored)))
            {
                return results;
            }
        }
        // Serve it here (and keep the disk copy, which is the store without Redis).
        let catalog = self.catalog.clone();
        let crl = ServedCrl::new(id.clone(), der.clone(), info);
        let disk = tokio::task::spawn_blocking(move || catalog.install(crl, true)).await;
        let disk = match disk {
            Ok(Ok(Installed::Newer)) => Ok(StoreOutcome::Stored),
            Ok(Ok(Installed::NotNewer)) => Ok(StoreOutcome::Stale(String::new())),
            Ok(Err(e)) => Err(TargetError::Disk(e)),
            Err(e) => Err(TargetError::Task(e)),
        };
        if self.regions.is_empty() {
            results.push(("disk".into(), disk));
        } else if let Err(e) = disk {
            tracing::warn!(crl = %id.path(), error = %e, "writing the local CRL copy");
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::service::ServiceLimits;
    use crate::signer::{SignError, Signer, SoftwareSigner};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// An HSM pool whose first call goes silent (until the test lets it go); later calls sign.
    struct FirstCallHangs {
        inner: SoftwareSigner,
        calls: AtomicUsize,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Signer for FirstCallHangs {
        fn algorithm(&self) -> crate::alg::SignatureAlgorithm {
            self.inner.algorithm()
        }
        fn public_key(&self) -> &[u8] {
            self.inner.public_key()
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                if let Ok(rx) = self.release.lock() {
                    let _ = rx.recv_timeout(Duration::from_secs(30));
                }
                return Err(SignError::Unavailable("abandoned call came back".into()));
            }
            self.inner.sign(message)
        }
        fn describe(&self) -> String {
            "first call hangs".into()
        }
        fn timeout(&self) -> Option<Duration> {
            Some(Duration::from_millis(200))
        }
    }

    /// The CRL path signs through the signing service: a call stuck past the signer's deadline
    /// is asked again and the CRL is published, signed by the second call, and lints.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crl_whose_signature_hangs_is_signed_by_the_second_call() {
        let (cert, key) = crate::testkit::ca();
        let issuer = CrlIssuer::from_certificate("t", &cert).expect("issuer");
        let (release, rx) = std::sync::mpsc::channel();
        let signer = Arc::new(FirstCallHangs {
            inner: key,
            calls: AtomicUsize::new(0),
            release: Mutex::new(rx),
        });
        let dir = tempfile::tempdir().expect("tmp");
        let catalog = Arc::new(Catalog::new(
            vec![super::super::catalog::IssuerCrls::unsharded(issuer.clone())],
            dir.path().join("crl"),
        ));
        let issuer_id = crate::ocsp::IssuerHashes::new(&issuer.subject_der, signer.public_key()).id;
        let publisher = Publisher {
            issuers: vec![PublishIssuer {
                issuer: issuer.clone(),
                issuer_id,
                signing: SigningService::new(
                    signer.clone(),
                    "test-crl-sign",
                    ServiceLimits {
                        threads: 1,
                        queue: 4,
                    },
                ),
                sharding: Sharding::unsharded(),
                deltas: false,
                validity: 86_400,
                interval: 3600,
                base_url: None,
            }],
            catalog: catalog.clone(),
            regions: Arc::new(Vec::new()),
            refusals: Arc::new(Refusals::default()),
            clock: crate::clock::Clock::manual(1_700_000_000_000),
        };
        let view = Arc::new(StatusView::new());
        let results = publisher.publish(&view, Mode::Full, None).await;
        release.send(()).expect("the stuck call is let go");
        assert_eq!(results.len(), 1);
        let published = results[0].as_ref().expect("published");
        assert!(published.stored(), "{published:?}");
        assert_eq!(signer.calls.load(Ordering::SeqCst), 2);
        let id = CrlId {
            issuer: "t".into(),
            shard: None,
            delta: false,
        };
        let served = catalog.current(&id).expect("served");
        catalog
            .verify(&id, &served.der, None)
            .expect("the CRL signed by the second call verifies");
    }
}
