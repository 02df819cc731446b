//! The in-process cache of signed responses (moka), keyed by the CertID DER exactly as asked.
//!
//! An entry lives until its nextUpdate (so it can still be served while no signer is
//! reachable) and is *fresh* until its refresh point. Every hit is checked against the
//! certificate's current status, so a response signed before a revocation is never served
//! after the view has the revocation, even if an eviction raced with an insert.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use moka::Expiry;
use moka::future::Cache;

use crate::clock::Clock;
use crate::ocsp::response::{SingleStatus, Window};
use crate::status::Serial;

/// A signed response with the HTTP headers it is served with.
#[derive(Debug)]
pub struct CachedResponse {
    /// The OCSPResponse DER.
    pub der: Bytes,
    /// The status it states (single-CertID responses).
    pub status: SingleStatus,
    /// Its times.
    pub window: Window,
    /// `ETag`: a hash of the bytes.
    pub etag: HeaderValue,
    /// `Last-Modified`: thisUpdate.
    pub last_modified: HeaderValue,
    /// `Expires`: nextUpdate.
    pub expires: HeaderValue,
}

impl CachedResponse {
    /// Wraps freshly signed bytes.
    pub fn new(der: Vec<u8>, status: SingleStatus, window: Window) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &der);
        let etag = format!("\"{}\"", crate::status::hex(&digest.as_ref()[..16]));
        CachedResponse {
            der: Bytes::from(der),
            status,
            window,
            etag: header(&etag),
            last_modified: header(&http_date(window.this_update)),
            expires: header(&http_date(window.next_update)),
        }
    }

    /// Fresh: before its refresh point.
    pub fn is_fresh(&self, now: i64) -> bool {
        now < self.window.refresh_at
    }

    /// Still valid to serve: before its nextUpdate.
    pub fn is_valid(&self, now: i64) -> bool {
        now < self.window.next_update
    }
}

fn header(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""))
}

/// An HTTP date (RFC 9110 §5.6.7) for Unix seconds.
pub fn http_date(t: i64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64))
}

/// moka's expiry: an entry is dropped at its nextUpdate, read from the one clock (moka keeps
/// its own monotonic time only to schedule the drop).
struct UntilNextUpdate(Clock);

impl Expiry<Bytes, Arc<CachedResponse>> for UntilNextUpdate {
    fn expire_after_create(
        &self,
        _: &Bytes,
        v: &Arc<CachedResponse>,
        _: Instant,
    ) -> Option<Duration> {
        Some(remaining(v, &self.0))
    }

    fn expire_after_update(
        &self,
        _: &Bytes,
        v: &Arc<CachedResponse>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(remaining(v, &self.0))
    }
}

fn remaining(v: &CachedResponse, clock: &Clock) -> Duration {
    Duration::from_secs((v.window.next_update - clock.now()).max(0) as u64)
}

/// Signed responses by CertID DER.
#[derive(Clone)]
pub struct ResponseCache {
    /// The moka cache (public so the answer path can use its per-key compute).
    pub inner: Cache<Bytes, Arc<CachedResponse>>,
}

impl ResponseCache {
    /// A cache holding at most about `max_bytes` of responses, each until its nextUpdate by
    /// `clock`.
    pub fn new(max_bytes: u64, clock: Clock) -> Self {
        ResponseCache {
            inner: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|k: &Bytes, v: &Arc<CachedResponse>| {
                    (k.len() + v.der.len() + 256).min(u32::MAX as usize) as u32
                })
                .expire_after(UntilNextUpdate(clock))
                .build(),
        }
    }

    /// Drops the entry for one CertID form.
    pub async fn invalidate(&self, key: &[u8]) {
        self.inner.invalidate(key).await;
    }

    /// Number of entries (approximate).
    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }

    /// Whether a response for this CertID form is cached (no lock, no await).
    pub fn contains(&self, key: &[u8]) -> bool {
        self.inner.contains_key(key)
    }

    /// Every cached CertID (a snapshot as iteration meets them; entries may come and go).
    pub fn keys(&self) -> Vec<Bytes> {
        self.inner.iter().map(|(k, _)| Bytes::clone(&k)).collect()
    }
}

/// What a request's bytes resolved to: enough to answer the same bytes again without decoding
/// them.
#[derive(Debug, Clone)]
pub struct FrontEntry {
    /// Index of the issuer the CertID matched.
    pub issuer: usize,
    /// The CertID's serial number.
    pub serial: Serial,
    /// The response served for it. A hit still checks it against the certificate's current
    /// status and its refresh point, as a hit in [`ResponseCache`] does.
    pub response: Arc<CachedResponse>,
}

/// Resolved requests by their DER bytes exactly as received (the POST body, or the GET path
/// after percent- and base64-decoding), for requests of one CertID and nothing else (no nonce,
/// no other extension, no requestor name, no signature).
///
/// A hit skips DER decoding, issuer matching and the CertID re-encoding; it does *not* skip the
/// status check: the entry only says which certificate the bytes ask about, and the response is
/// served only if it is fresh and states the status the view gives now. Entries expire at the
/// response's nextUpdate, and [`crate::responder::Responder::evict`] drops every plain request
/// form of a certificate whose status changed, with its [`ResponseCache`] entries.
///
/// Clients choose the keys, so the keys are hashed with moka's default (SipHash-1-3 under
/// per-process random keys), a key longer than `max_key_bytes` is never stored, and the entries
/// are bounded in bytes (key + response + overhead).
#[derive(Clone)]
pub struct FrontCache {
    inner: Option<Cache<Bytes, FrontEntry>>,
    max_key_bytes: usize,
}

/// Bytes counted per front-cache entry besides its key and response: the entry itself and
/// moka's bookkeeping.
const FRONT_ENTRY_OVERHEAD: usize = 256;

struct FrontUntilNextUpdate(Clock);

impl Expiry<Bytes, FrontEntry> for FrontUntilNextUpdate {
    fn expire_after_create(&self, _: &Bytes, v: &FrontEntry, _: Instant) -> Option<Duration> {
        Some(remaining(&v.response, &self.0))
    }

    fn expire_after_update(
        &self,
        _: &Bytes,
        v: &FrontEntry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(remaining(&v.response, &self.0))
    }
}

impl FrontCache {
    /// A cache of at most about `max_bytes` (0: none at all) whose keys are at most
    /// `max_key_bytes` long; entries go at their response's nextUpdate by `clock`.
    pub fn new(max_bytes: u64, max_key_bytes: usize, clock: Clock) -> Self {
        let inner = (max_bytes > 0).then(|| {
            Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|k: &Bytes, v: &FrontEntry| {
                    (k.len() + v.response.der.len() + FRONT_ENTRY_OVERHEAD).min(u32::MAX as usize)
                        as u32
                })
                .expire_after(FrontUntilNextUpdate(clock))
                .build()
        });
        FrontCache {
            inner,
            max_key_bytes,
        }
    }

    /// The entry for these request bytes, if any.
    pub async fn get(&self, request: &[u8]) -> Option<FrontEntry> {
        self.inner.as_ref()?.get(request).await
    }

    /// Remembers what `request` resolved to; false (and nothing stored) if the cache is off or
    /// the key is longer than the limit.
    pub async fn insert(&self, request: &[u8], entry: FrontEntry) -> bool {
        match &self.inner {
            Some(c) if request.len() <= self.max_key_bytes => {
                c.insert(Bytes::copy_from_slice(request), entry).await;
                true
            }
            _ => false,
        }
    }

    /// Drops the entry for these request bytes.
    pub async fn invalidate(&self, request: &[u8]) {
        if let Some(c) = &self.inner {
            c.invalidate(request).await;
        }
    }

    /// Whether these request bytes have an entry (no lock, no await).
    pub fn contains(&self, request: &[u8]) -> bool {
        self.inner.as_ref().is_some_and(|c| c.contains_key(request))
    }

    /// Number of entries as last counted (no pending work is run).
    pub fn approx_entry_count(&self) -> u64 {
        self.inner.as_ref().map_or(0, |c| c.entry_count())
    }

    /// Every entry's request bytes, issuer index and serial.
    pub fn entries(&self) -> Vec<(Bytes, usize, Serial)> {
        match &self.inner {
            Some(c) => c
                .iter()
                .map(|(k, v)| (Bytes::clone(&k), v.issuer, v.serial))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Number of entries (approximate; after pending work is done).
    pub async fn entry_count(&self) -> u64 {
        match &self.inner {
            Some(c) => {
                c.run_pending_tasks().await;
                c.entry_count()
            }
            None => 0,
        }
    }
}
