//! Step 4–5 of the answer path: one CertID without an echoed nonce is answered from the
//! response cache, or signed once for every concurrent caller and cached; what was signed is
//! checked against the view before it is served (checked signing).

use std::sync::Arc;

use bytes::Bytes;
use moka::ops::compute::{CompResult, Op};
use x509_ocsp::CertId;

use super::{Answer, CHECKED_SIGNING_ATTEMPTS, Priority, Responder};
use crate::cache::CachedResponse;
use crate::ocsp::OcspError;
use crate::ocsp::response::{SingleStatus, assemble, tbs_response_data};
use crate::signer::service::ServiceError;
use crate::status::Serial;

impl Responder {
    pub(super) async fn cached_or_signed(
        self: &Arc<Self>,
        issuer: usize,
        key: Bytes,
        cert_id: &CertId,
        serial: Serial,
        status: SingleStatus,
        now: i64,
    ) -> Result<Answer, OcspError> {
        if let Some(hit) = self.cache.inner.get(&key).await
            && hit.status == status
            && hit.is_fresh(now)
        {
            self.metrics.cache_hits.increment(1);
            return Ok(Answer::Signed {
                response: hit,
                shared: true,
            });
        }
        self.metrics.cache_misses.increment(1);
        let this = Arc::clone(self);
        let cert_id = cert_id.clone();
        // Its own task: a client that goes away does not cancel a signature others wait on.
        let task = tokio::spawn(async move {
            this.refresh(issuer, key, cert_id, serial, status, now)
                .await
        });
        match task.await {
            Ok(r) => r,
            Err(e) => Err(OcspError::Internal(format!("refresh task: {e}"))),
        }
    }

    /// Signs and caches a response for one CertID form, once for all concurrent callers.
    ///
    /// Checked signing (after Boulder's `checked_redis_source`): once signed, the status is
    /// read from the view again. If it changed while the signature waited or ran, that response
    /// is neither served nor cached: the change is counted and the new status signed, at
    /// status-change priority, up to [`CHECKED_SIGNING_ATTEMPTS`] signatures in all.
    async fn refresh(
        &self,
        issuer: usize,
        key: Bytes,
        cert_id: CertId,
        serial: Serial,
        status: SingleStatus,
        now: i64,
    ) -> Result<Answer, OcspError> {
        let mut failure: Option<OcspError> = None;
        let fail = &mut failure;
        // The status the response must state: the caller's, or what the view said after a
        // signature that turned out stale.
        let mut wanted = status;
        let want = &mut wanted;
        let changed = self.changed.contains_key(&(issuer, serial));
        let result = self
            .cache
            .inner
            .entry(key.clone())
            .and_compute_with(|existing| async move {
                let existing = existing.map(|e| e.into_value());
                if let Some(e) = &existing
                    && e.status == status
                    && e.is_fresh(now)
                {
                    return Op::Nop; // signed by the caller we waited behind
                }
                let mut priority = match &existing {
                    Some(e) if e.status != status => Priority::StatusChange,
                    _ if changed => Priority::StatusChange,
                    _ => Priority::Routine,
                };
                for _ in 0..CHECKED_SIGNING_ATTEMPTS {
                    let signed = self
                        .sign_single(issuer, &cert_id, *want, now, priority)
                        .await;
                    let fresh = match signed {
                        Ok(fresh) => fresh,
                        Err(err) => {
                            *fail = Some(err);
                            return match existing {
                                Some(e) if e.status == *want && e.is_valid(now) => Op::Nop,
                                Some(_) => Op::Remove,
                                None => Op::Nop,
                            };
                        }
                    };
                    match self.single_status(&self.issuers[issuer], &serial) {
                        Ok(current) if current == *want => return Op::Put(Arc::new(fresh)),
                        Ok(current) => {
                            self.metrics.signing_status_changed.increment(1);
                            *want = current;
                            priority = Priority::StatusChange;
                        }
                        Err(err) => {
                            *fail = Some(err);
                            return Op::Remove;
                        }
                    }
                }
                *fail = Some(OcspError::TryLater(
                    "the status changed during every signature".into(),
                ));
                match existing {
                    Some(e) if e.status == *want && e.is_valid(now) => Op::Nop,
                    Some(_) => Op::Remove,
                    None => Op::Nop,
                }
            })
            .await;
        let served = match result {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e) => {
                Some(e.into_value())
            }
            CompResult::Removed(_) | CompResult::StillNone(_) => None,
        };
        if changed && failure.is_none() {
            self.changed.invalidate(&(issuer, serial)).await;
        }
        match served {
            Some(r) if r.status == wanted && r.is_valid(now) => {
                if failure.is_some() {
                    self.metrics.cache_stale_served.increment(1);
                }
                Ok(Answer::Signed {
                    response: r,
                    shared: true,
                })
            }
            _ => {
                Err(failure.unwrap_or_else(|| OcspError::TryLater("no response available".into())))
            }
        }
    }

    async fn sign_single(
        &self,
        issuer: usize,
        cert_id: &CertId,
        status: SingleStatus,
        now: i64,
        priority: Priority,
    ) -> Result<CachedResponse, OcspError> {
        let profile = &self.issuers[issuer].issuer.profile;
        let window = self.validity.window(now);
        let tbs = Bytes::from(tbs_response_data(
            profile,
            &window,
            &[(cert_id, status)],
            self.base_extensions(issuer)?,
        )?);
        let sig = self.sign(issuer, tbs.clone(), priority).await?;
        let der = assemble(profile, &tbs, &sig)?;
        Ok(CachedResponse::new(der, status, window))
    }

    /// Signs `tbs` through issuer `issuer`'s signing service; the one place a signing
    /// failure becomes an OCSP error and a metric: a full queue is shed (`tryLater`, counted
    /// as shed), a timeout or a failed signature is `tryLater` (counted as a signing error).
    pub(super) async fn sign(
        &self,
        issuer: usize,
        tbs: Bytes,
        priority: Priority,
    ) -> Result<Vec<u8>, OcspError> {
        let service = &self.issuers[issuer].signing;
        match service.sign(tbs, priority).await {
            Ok(signed) => {
                self.metrics
                    .signing_latency
                    .record(signed.took.as_secs_f64());
                Ok(signed.signature)
            }
            Err(ServiceError::Shed) => {
                self.metrics.signing_shed.increment(1);
                Err(OcspError::TryLater("signing queue full".into()))
            }
            Err(e) => {
                self.metrics.signing_errors.increment(1);
                tracing::warn!(error = %e, "signing failed");
                Err(match e {
                    ServiceError::Stopped(_) => OcspError::Internal(e.to_string()),
                    _ => OcspError::TryLater(e.to_string()),
                })
            }
        }
    }
}
