//! The OCSP answer path, composed of small steps (after Boulder's responder):
//!
//! 1. decode and check the request ([`crate::ocsp::request`]);
//! 2. match every CertID to a configured issuer by name and key hash (unknown → `unauthorized`);
//! 3. look up each status in the view and apply the issuer's policy for unissued serials;
//! 0. a request of one CertID and nothing else seen before (its bytes are in the front cache):
//!    skip steps 1–3 and the CertID re-encoding, and go on at 4 with the issuer and serial it
//!    resolved to (the status is still read from the view);
//! 4. single CertID without an echoed nonce: serve the cached response if it is fresh *and*
//!    states the current status; otherwise sign once per CertID form (concurrent requests wait
//!    on the same signature, which runs in its own task so a disconnecting client cannot cancel
//!    it) and cache it;
//! 5. if signing fails: serve the cached response while it is before its nextUpdate and states
//!    the current status, else `tryLater`.
//!
//! Signing goes through each issuer's [`SigningService`] (`crate::signer::service`): a fixed
//! number of signing threads, two bounded queues, and `tryLater` at once past them.
//!
//! Files: this one holds the request path (steps 0–3 and answers of several CertIDs);
//! [`refresh`] the cached single-CertID path with checked signing (steps 4–5); [`evict`]
//! dropping cached responses after status changes.

mod evict;
mod refresh;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::Bytes;
use x509_cert::ext::Extension;
use x509_ocsp::CertId;

use crate::cache::{CachedResponse, FrontCache, FrontEntry, ResponseCache};
use crate::config::{Config, NoncePolicy};
use crate::limits::MAX_FRONT_KEY_BYTES;
use crate::ocsp::request::{RequestLimits, decode_request, plain_cert_id};
use crate::ocsp::response::{
    SingleStatus, ValidityPolicy, assemble, extended_revoke_extension, tbs_response_data,
};
use crate::ocsp::{IssuerMatcher, OcspError};
use crate::pki::Issuer;
use crate::signer::service::{ServiceLimits, SigningService};
use crate::status::view::IssuerTable;
use crate::status::{CertStatus, Revocation, RevocationReason, Serial, StatusView, UnissuedPolicy};
use crate::telemetry::Metrics;

/// Most certificates remembered as recently changed.
const CHANGED_MAX_ENTRIES: u64 = 100_000;
/// How long a changed certificate's next signature counts as a status change: long enough for
/// its first request to arrive, short enough that the set stays small.
const CHANGED_TTL: std::time::Duration = std::time::Duration::from_secs(3600);
/// Signatures made for one answer when the status keeps changing under it (checked signing):
/// each re-signature follows a real status change, and a certificate changes status a few
/// times at most (issued, held, released, revoked), so past this the answer is `tryLater`
/// rather than a response of a status that is already gone.
const CHECKED_SIGNING_ATTEMPTS: usize = 3;

pub use crate::signer::service::Priority;
pub use evict::cert_id_forms;

/// An issuer with its slice of the status view and its signing service.
pub struct IssuerState {
    /// Certificates, keys, hashes.
    pub issuer: Issuer,
    /// Its certificates' statuses.
    pub table: Arc<IssuerTable>,
    /// The threads and queues its responses are signed through.
    pub signing: SigningService,
}

/// The result of answering one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A signed response. `shared` is false for responses that echo a nonce (never cached,
    /// never to be cached by HTTP caches either).
    Signed {
        /// The response with its header values.
        response: Arc<CachedResponse>,
        /// Whether HTTP caches may store it.
        shared: bool,
    },
    /// An unsigned error response.
    Error(OcspError),
}

/// Answers OCSP requests for the configured issuers.
pub struct Responder {
    issuers: Vec<IssuerState>,
    matcher: IssuerMatcher,
    cache: ResponseCache,
    /// Requests of one CertID and nothing else, by their bytes.
    front: FrontCache,
    validity: ValidityPolicy,
    nonce: NoncePolicy,
    limits: RequestLimits,
    /// Certificates (issuer index, serial) that changed status recently: the next signature
    /// of any of their CertID forms is a [`Priority::StatusChange`]. Keyed by certificate, not
    /// by its eight CertID forms: a mass revocation marks each certificate once.
    changed: moka::future::Cache<(usize, Serial), ()>,
    metrics: Arc<Metrics>,
}

impl Responder {
    /// Builds the responder over `issuers` and the shared `view`.
    pub fn new(
        cfg: &Config,
        issuers: Vec<Issuer>,
        view: &StatusView,
        metrics: Arc<Metrics>,
        clock: crate::clock::Clock,
    ) -> Self {
        let matcher = IssuerMatcher::new(issuers.iter().map(|i| i.hashes.clone()).collect());
        Responder {
            issuers: issuers
                .into_iter()
                .map(|issuer| IssuerState {
                    table: view.table(issuer.hashes.id),
                    signing: SigningService::new(
                        issuer.signer.clone(),
                        "vigil-signer",
                        ServiceLimits {
                            threads: cfg.ocsp.signing_concurrency,
                            queue: cfg.ocsp.signing_queue,
                        },
                    ),
                    issuer,
                })
                .collect(),
            matcher,
            cache: ResponseCache::new(cfg.ocsp.cache_max_bytes, clock.clone()),
            front: FrontCache::new(cfg.ocsp.front_cache_max_bytes, MAX_FRONT_KEY_BYTES, clock),
            validity: ValidityPolicy {
                validity_secs: cfg.ocsp.validity.as_secs() as i64,
                backdate_secs: cfg.ocsp.backdate.as_secs() as i64,
            },
            nonce: cfg.ocsp.nonce,
            limits: RequestLimits {
                max_cert_ids: cfg.limits.max_cert_ids,
                max_nonce_bytes: cfg.limits.max_nonce_bytes,
            },
            changed: moka::future::Cache::builder()
                .max_capacity(CHANGED_MAX_ENTRIES)
                .time_to_live(CHANGED_TTL)
                .build(),
            metrics,
        }
    }

    /// Signatures waiting in the issuers' signing services, (status changes, routine).
    pub fn signing_queued(&self) -> (usize, usize) {
        self.issuers.iter().fold((0, 0), |(c, r), s| {
            let (sc, sr) = s.signing.queued();
            (c + sc, r + sr)
        })
    }

    /// The configured issuers.
    pub fn issuers(&self) -> &[IssuerState] {
        &self.issuers
    }

    /// The response cache.
    pub fn cache(&self) -> &ResponseCache {
        &self.cache
    }

    /// The front cache of resolved requests.
    pub fn front(&self) -> &FrontCache {
        &self.front
    }

    /// Answers one DER request at `now` (Unix seconds).
    pub async fn answer(self: &Arc<Self>, der: &[u8], now: i64) -> Answer {
        if let Some(a) = self.front_hit(der, now).await {
            return a;
        }
        match self.try_answer(der, now).await {
            Ok(a) => a,
            Err(e) => Answer::Error(e),
        }
    }

    /// The answer from the front cache: only if these exact bytes were answered before, the
    /// response is fresh and it states the status the view gives *now* — the same test as a
    /// hit in the response cache. Anything else (no entry, a changed status, a serial the
    /// issuer's policy refuses, past the refresh point) takes the full path, which decides.
    async fn front_hit(&self, der: &[u8], now: i64) -> Option<Answer> {
        // Requests that cannot be in it (a nonce, several CertIDs) skip the lookup.
        plain_cert_id(der)?;
        let entry = self.front.get(der).await?;
        let state = self.issuers.get(entry.issuer)?;
        let status = self.single_status(state, &entry.serial).ok()?;
        if entry.response.status != status || !entry.response.is_fresh(now) {
            return None;
        }
        self.count_status(&status);
        self.metrics.cache_hits.increment(1);
        self.metrics.front_cache_hits.increment(1);
        Some(Answer::Signed {
            response: entry.response,
            shared: true,
        })
    }

    fn count_status(&self, s: &SingleStatus) {
        match s {
            SingleStatus::Good => self.metrics.status_good.increment(1),
            SingleStatus::Revoked(_) => self.metrics.status_revoked.increment(1),
            SingleStatus::Unknown => self.metrics.status_unknown.increment(1),
        }
    }

    async fn try_answer(self: &Arc<Self>, der: &[u8], now: i64) -> Result<Answer, OcspError> {
        let mut req = decode_request(der, &self.limits)?;
        let mut issuer_index = None;
        let mut answers = Vec::with_capacity(req.certs.len());
        for c in &req.certs {
            let i = self
                .matcher
                .find(
                    c.hash,
                    c.cert_id.issuer_name_hash.as_bytes(),
                    c.cert_id.issuer_key_hash.as_bytes(),
                )
                .ok_or(OcspError::Unauthorized("unknown issuer"))?;
            if *issuer_index.get_or_insert(i) != i {
                return Err(OcspError::Unauthorized("CertIDs of more than one issuer"));
            }
            let state = &self.issuers[i];
            answers.push(self.single_status(state, &c.serial)?);
        }
        let i = issuer_index.ok_or(OcspError::Malformed("empty requestList"))?;
        for s in &answers {
            self.count_status(s);
        }
        let echo = match (&req.nonce, self.nonce) {
            (Some(n), NoncePolicy::Echo) => Some(n.clone()),
            _ => None,
        };
        if req.certs.len() == 1 && echo.is_none() {
            // Only a request of this one CertID and nothing else goes into the front cache: a
            // nonce or any other extension would make every request a new key.
            let plain = der.len() <= MAX_FRONT_KEY_BYTES
                && plain_cert_id(der) == Some(&req.certs[0].der[..]);
            // Moved, not copied: the hit path makes no copy of the key.
            let key = Bytes::from(std::mem::take(&mut req.certs[0].der));
            let answer = self
                .cached_or_signed(
                    i,
                    key,
                    &req.certs[0].cert_id,
                    req.certs[0].serial,
                    answers[0],
                    now,
                )
                .await?;
            if let Answer::Signed { response, .. } = &answer
                && plain
                && response.status == answers[0]
                && response.is_fresh(now)
            {
                let entry = FrontEntry {
                    issuer: i,
                    serial: req.certs[0].serial,
                    response: response.clone(),
                };
                self.front.insert(der, entry).await;
            }
            return Ok(answer);
        }
        // Several CertIDs or an echoed nonce: one fresh signature, not cached.
        let mut extensions = self.base_extensions(i)?;
        extensions.extend(echo);
        let ids: Vec<(&CertId, SingleStatus)> = req
            .certs
            .iter()
            .map(|c| &c.cert_id)
            .zip(answers.iter().copied())
            .collect();
        let window = self.validity.window(now);
        let profile = &self.issuers[i].issuer.profile;
        let serials: Vec<Serial> = req.certs.iter().map(|c| c.serial).collect();
        let mut ids = ids;
        let mut priority = Priority::Routine;
        let mut attempts = 0;
        let der = loop {
            let tbs = Bytes::from(tbs_response_data(
                profile,
                &window,
                &ids,
                extensions.clone(),
            )?);
            let sig = self.sign(i, tbs.clone(), priority).await?;
            // Checked signing: what was signed is compared with the view after the signature.
            let now_statuses = serials
                .iter()
                .map(|s| self.single_status(&self.issuers[i], s))
                .collect::<Result<Vec<_>, _>>()?;
            if now_statuses == answers {
                break assemble(profile, &tbs, &sig)?;
            }
            self.metrics.signing_status_changed.increment(1);
            attempts += 1;
            if attempts >= CHECKED_SIGNING_ATTEMPTS {
                return Err(OcspError::TryLater(
                    "the status changed during every signature".into(),
                ));
            }
            answers = now_statuses;
            for ((_, st), now) in ids.iter_mut().zip(&answers) {
                *st = *now;
            }
            priority = Priority::StatusChange;
        };
        let status = if answers.len() == 1 {
            answers[0]
        } else {
            SingleStatus::Unknown
        };
        Ok(Answer::Signed {
            response: Arc::new(CachedResponse::new(der, status, window)),
            shared: false,
        })
    }

    fn single_status(
        &self,
        state: &IssuerState,
        serial: &Serial,
    ) -> Result<SingleStatus, OcspError> {
        Ok(
            match state.table.status_with(serial, state.issuer.allow_hold) {
                CertStatus::Good => SingleStatus::Good,
                CertStatus::Revoked(r) => SingleStatus::Revoked(r),
                CertStatus::Unissued => match state.issuer.unissued {
                    UnissuedPolicy::Unknown => SingleStatus::Unknown,
                    UnissuedPolicy::Unauthorized => {
                        return Err(OcspError::Unauthorized("serial not issued by this CA"));
                    }
                    // RFC 6960 §2.2: revocationTime 1970-01-01, and no certificateHold reason.
                    UnissuedPolicy::Revoked => SingleStatus::Revoked(Revocation {
                        time: 0,
                        reason: RevocationReason::Unspecified,
                    }),
                },
            },
        )
    }

    fn base_extensions(&self, issuer: usize) -> Result<Vec<Extension>, OcspError> {
        Ok(match self.issuers[issuer].issuer.unissued {
            UnissuedPolicy::Revoked => vec![extended_revoke_extension()?],
            _ => Vec::new(),
        })
    }
}
