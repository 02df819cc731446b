//! The one place that turns answers and errors into HTTP responses.

use std::io::Write;

use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, ALLOW, CACHE_CONTROL, CONTENT_RANGE, CONTENT_TYPE, ETAG, EXPIRES,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, RANGE,
};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::cache::CachedResponse;
use crate::crl_service::catalog::ServedCrl;
use crate::ocsp::{OcspError, ResponseStatus};
use crate::responder::Answer;
use crate::telemetry::Outcome;

/// The response body type.
pub type Body = Full<Bytes>;

const OCSP_RESPONSE: HeaderValue = HeaderValue::from_static("application/ocsp-response");
const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");
const PKIX_CRL: HeaderValue = HeaderValue::from_static("application/pkix-crl");

/// HTTP for an OCSP answer, and the outcome to count.
pub fn ocsp(answer: Answer, request_headers: &HeaderMap, now: i64) -> (Response<Body>, Outcome) {
    match answer {
        Answer::Signed { response, shared } => signed(&response, shared, request_headers, now),
        Answer::Error(e) => {
            let (status, outcome) = error_mapping(&e);
            (ocsp_error(status), outcome)
        }
    }
}

/// The one mapping of an OCSP error: the OCSPResponseStatus that reports it (sent with HTTP
/// 200, RFC 6960 Appendix A.1) and the outcome it is counted under.
pub fn error_mapping(e: &OcspError) -> (ResponseStatus, Outcome) {
    match e {
        OcspError::Malformed(_) => (ResponseStatus::MalformedRequest, Outcome::Malformed),
        OcspError::Unauthorized(_) => (ResponseStatus::Unauthorized, Outcome::Unauthorized),
        OcspError::TryLater(_) => (ResponseStatus::TryLater, Outcome::TryLater),
        OcspError::Internal(_) => (ResponseStatus::InternalError, Outcome::InternalError),
    }
}

/// An unsigned OCSP error response: HTTP 200, `no-cache`.
fn ocsp_error(status: ResponseStatus) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(status.error_response())));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, OCSP_RESPONSE);
    h.insert(CACHE_CONTROL, NO_CACHE);
    r
}

fn signed(
    resp: &CachedResponse,
    shared: bool,
    request_headers: &HeaderMap,
    now: i64,
) -> (Response<Body>, Outcome) {
    if !shared {
        let mut r = Response::new(Full::new(resp.der.clone()));
        r.headers_mut().insert(CONTENT_TYPE, OCSP_RESPONSE);
        r.headers_mut().insert(CACHE_CONTROL, NO_CACHE);
        return (r, Outcome::Successful);
    }
    let not_modified = request_headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .any(|v| etag_matches(v.as_bytes(), resp.etag.as_bytes()));
    let (mut r, outcome) = if not_modified {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        (r, Outcome::NotModified)
    } else {
        let mut r = Response::new(Full::new(resp.der.clone()));
        r.headers_mut().insert(CONTENT_TYPE, OCSP_RESPONSE);
        (r, Outcome::Successful)
    };
    // RFC 5019 §6.2: max-age no later than nextUpdate; we use the refresh point, which is earlier.
    let max_age = (resp.window.refresh_at.min(resp.window.next_update) - now).max(0);
    cacheable(
        &mut r,
        max_age,
        &resp.etag,
        &resp.last_modified,
        &resp.expires,
    );
    (r, outcome)
}

/// HTTP for a CRL (RFC 5280 §4.2.1.13 names `application/pkix-crl`, RFC 2585 §4.2), as the
/// aggregators (CRLite, CRLSets) and CDNs in front of vigil fetch it.
///
/// - 304 when `If-None-Match` matches the ETag or, without `If-None-Match`, when
///   `If-Modified-Since` is not before thisUpdate (RFC 9110 §13.1.3, §13.2.2).
/// - `Range: bytes=…` (RFC 9110 §14.2): one range gets 206 with `Content-Range`, a range that
///   starts past the end 416 with `Content-Range: bytes */len`; several ranges, or an
///   `If-Range` that names another version (strong ETag or the exact Last-Modified), get the
///   whole CRL (200). Fetchers resume an interrupted download this way.
/// - Freshness ends at the next planned publication: `max-age` and `Expires` are
///   `min(thisUpdate + publishing interval, nextUpdate)` (`planned_next`). After that a cache may
///   keep serving its copy while it revalidates or while vigil is unreachable
///   (`stale-while-revalidate`, `stale-if-error`, RFC 5861) — but never past nextUpdate, so
///   `must-revalidate` (which forbids both) is not sent.
pub fn crl(c: &ServedCrl, request_headers: &HeaderMap, now: i64, interval: i64) -> Response<Body> {
    let inm: Vec<&HeaderValue> = request_headers.get_all(IF_NONE_MATCH).iter().collect();
    let not_modified = if inm.is_empty() {
        request_headers
            .get(IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .is_some_and(|since| since.as_secs() as i64 >= c.this_update)
    } else {
        inm.iter()
            .any(|v| etag_matches(v.as_bytes(), c.etag.as_bytes()))
    };
    let len = c.der.len() as u64;
    let mut r = if not_modified {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let range = request_headers
            .get(RANGE)
            .filter(|_| if_range_holds(request_headers, c))
            .and_then(|v| parse_range(v.as_bytes(), len));
        match range {
            None => {
                let mut r = Response::new(Full::new(c.der.clone()));
                r.headers_mut().insert(CONTENT_TYPE, PKIX_CRL);
                r
            }
            Some(ByteRange::Unsatisfiable) => {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                r.headers_mut()
                    .insert(CONTENT_RANGE, header_value(format_args!("bytes */{len}")));
                r
            }
            Some(ByteRange::Bytes { first, last }) => {
                // parse_range keeps first <= last < len, so the slice is in bounds.
                let body = c.der.slice(first as usize..=last as usize);
                let mut r = Response::new(Full::new(body));
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                let h = r.headers_mut();
                h.insert(CONTENT_TYPE, PKIX_CRL);
                h.insert(
                    CONTENT_RANGE,
                    header_value(format_args!("bytes {first}-{last}/{len}")),
                );
                r
            }
        }
    };
    let planned_next = planned_next(c, interval);
    let max_age = (planned_next - now).max(0);
    let stale = (c.next_update - now - max_age).max(0);
    let h = r.headers_mut();
    h.insert(
        CACHE_CONTROL,
        header_value(format_args!(
            "max-age={max_age}, public, no-transform, stale-while-revalidate={stale}, stale-if-error={stale}"
        )),
    );
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(ETAG, c.etag.clone());
    h.insert(LAST_MODIFIED, c.last_modified.clone());
    h.insert(EXPIRES, c.expires_at(planned_next));
    r
}

/// When the next CRL of this scope is planned: one publishing interval after thisUpdate, and
/// never after nextUpdate.
pub fn planned_next(c: &ServedCrl, interval: i64) -> i64 {
    c.this_update
        .saturating_add(interval.max(0))
        .min(c.next_update)
}

/// One range of a `Range` header, resolved against the representation's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRange {
    /// `first ..= last`, both inside the representation.
    Bytes { first: u64, last: u64 },
    /// The range starts at or past the end (or asks for a zero-length suffix): 416.
    Unsatisfiable,
}

/// `Range: bytes=a-b`, `bytes=a-`, `bytes=-n` (RFC 9110 §14.1.2). `None` (serve the whole
/// representation) for other units, several ranges, or a header that does not parse: a server
/// may ignore a Range it does not support (§14.2).
fn parse_range(header: &[u8], len: u64) -> Option<ByteRange> {
    let spec = std::str::from_utf8(header).ok()?.trim();
    let (unit, set) = spec.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return None;
    }
    let (a, b) = set.trim().split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let digits = |s: &str| !s.is_empty() && s.len() <= 19 && s.bytes().all(|d| d.is_ascii_digit());
    if a.is_empty() {
        // suffix: the last n bytes
        if !digits(b) {
            return None;
        }
        let n: u64 = b.parse().ok()?;
        if n == 0 || len == 0 {
            return Some(ByteRange::Unsatisfiable);
        }
        return Some(ByteRange::Bytes {
            first: len.saturating_sub(n),
            last: len - 1,
        });
    }
    if !digits(a) || !(b.is_empty() || digits(b)) {
        return None;
    }
    let first: u64 = a.parse().ok()?;
    let last: u64 = if b.is_empty() {
        u64::MAX
    } else {
        b.parse().ok()?
    };
    if last < first {
        return None;
    }
    if first >= len {
        return Some(ByteRange::Unsatisfiable);
    }
    Some(ByteRange::Bytes {
        first,
        last: last.min(len - 1),
    })
}

/// `If-Range` (RFC 9110 §13.1.5): absent, or naming this version — a strong ETag compared
/// strongly, or an HTTP date equal to Last-Modified.
fn if_range_holds(request_headers: &HeaderMap, c: &ServedCrl) -> bool {
    let Some(v) = request_headers.get(IF_RANGE) else {
        return true;
    };
    let v = v.as_bytes().trim_ascii();
    if v.starts_with(b"\"") {
        return v == c.etag.as_bytes();
    }
    v == c.last_modified.as_bytes()
}

/// A header value from formatted ASCII (numbers and fixed text only).
fn header_value(args: std::fmt::Arguments<'_>) -> HeaderValue {
    let mut buf = [0u8; 160];
    let mut w = &mut buf[..];
    match w.write_fmt(args) {
        Ok(()) => {
            let n = 160 - w.len();
            HeaderValue::from_bytes(&buf[..n]).unwrap_or(NO_CACHE)
        }
        Err(_) => NO_CACHE,
    }
}

/// The headers of a response HTTP caches may keep for `max_age` seconds.
fn cacheable(
    r: &mut Response<Body>,
    max_age: i64,
    etag: &HeaderValue,
    last_modified: &HeaderValue,
    expires: &HeaderValue,
) {
    // Written on the stack and copied once into the header value: this is on every answer.
    let mut buf = [0u8; 80];
    let mut w = &mut buf[..];
    let cache_control = match write!(
        w,
        "max-age={max_age}, public, no-transform, must-revalidate"
    ) {
        Ok(()) => {
            let n = 80 - w.len();
            HeaderValue::from_bytes(&buf[..n]).unwrap_or(NO_CACHE)
        }
        Err(_) => NO_CACHE,
    };
    let h = r.headers_mut();
    h.insert(CACHE_CONTROL, cache_control);
    h.insert(ETAG, etag.clone());
    h.insert(LAST_MODIFIED, last_modified.clone());
    h.insert(EXPIRES, expires.clone());
}

/// If-None-Match: `*`, or a list of (possibly weak) entity tags (RFC 9110 §13.1.2).
fn etag_matches(header: &[u8], etag: &[u8]) -> bool {
    header.split(|&b| b == b',').any(|t| {
        let t = t.trim_ascii();
        let t = t.strip_prefix(b"W/").unwrap_or(t);
        t == b"*" || t == etag
    })
}

/// A JSON document (the CCADB disclosure of an issuer's CRL URLs): cacheable for an hour, it
/// changes only with the configuration.
pub fn json(body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("max-age=3600, public, no-transform"),
    );
    r
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(CACHE_CONTROL, NO_CACHE);
    r
}

/// 405 with the methods that are allowed.
pub fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use ByteRange::*;
        let r = |h: &str, len| parse_range(h.as_bytes(), len);
        assert_eq!(r("bytes=0-9", 100), Some(Bytes { first: 0, last: 9 }));
        assert_eq!(
            r("bytes=90-", 100),
            Some(Bytes {
                first: 90,
                last: 99
            })
        );
        assert_eq!(
            r("bytes=90-500", 100),
            Some(Bytes {
                first: 90,
                last: 99
            })
        );
        assert_eq!(
            r("bytes=-10", 100),
            Some(Bytes {
                first: 90,
                last: 99
            })
        );
        assert_eq!(r("bytes=-500", 100), Some(Bytes { first: 0, last: 99 }));
        assert_eq!(r("BYTES = 5-5", 100), Some(Bytes { first: 5, last: 5 }));
        assert_eq!(r("bytes=100-", 100), Some(Unsatisfiable));
        assert_eq!(r("bytes=-0", 100), Some(Unsatisfiable));
        for ignored in [
            "bytes=0-1,5-6",
            "bytes=9-1",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=+1-2",
            "bytes=99999999999999999999-",
            "bytes",
        ] {
            assert_eq!(r(ignored, 100), None, "{ignored}");
        }
    }

    #[test]
    fn if_none_match_forms() {
        assert!(etag_matches(b"\"abc\"", b"\"abc\""));
        assert!(etag_matches(b"W/\"abc\"", b"\"abc\""));
        assert!(etag_matches(b"\"x\", \"abc\"", b"\"abc\""));
        assert!(etag_matches(b"*", b"\"abc\""));
        assert!(!etag_matches(b"\"abd\"", b"\"abc\""));
    }
}
