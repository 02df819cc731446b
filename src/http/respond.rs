//! The one place that turns answers and errors into HTTP responses.

use std::io::Write;

use bytes::Bytes;
use http::header::{
    ALLOW, CACHE_CONTROL, CONTENT_TYPE, ETAG, EXPIRES, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED,
};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::cache::CachedResponse;
use crate::crl_service::catalog::ServedCrl;
use crate::ocsp::OcspError;
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
        Answer::Error(e) => (ocsp_error(&e), outcome_of(&e)),
    }
}

fn outcome_of(e: &OcspError) -> Outcome {
    match e {
        OcspError::Malformed(_) => Outcome::Malformed,
        OcspError::Unauthorized(_) => Outcome::Unauthorized,
        OcspError::TryLater(_) => Outcome::TryLater,
        _ => Outcome::InternalError,
    }
}

/// An unsigned OCSP error: HTTP 200 (RFC 6960 Appendix A.1), `no-cache`.
pub fn ocsp_error(e: &OcspError) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(e.status().error_response())));
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

/// HTTP for a CRL (RFC 5280 §4.2.1.13 names `application/pkix-crl`, RFC 2585 §4.2).
///
/// 304 when `If-None-Match` matches the ETag or, without `If-None-Match`, when
/// `If-Modified-Since` is not before thisUpdate (RFC 9110 §13.1.3, §13.2.2). `max-age` is
/// the time to nextUpdate, capped at `max_age_cap` (the publishing interval) so caches come
/// back for a newer CRL; zero once nextUpdate has passed.
pub fn crl(
    c: &ServedCrl,
    request_headers: &HeaderMap,
    now: i64,
    max_age_cap: i64,
) -> Response<Body> {
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
    let mut r = if not_modified {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(c.der.clone()));
        r.headers_mut().insert(CONTENT_TYPE, PKIX_CRL);
        r
    };
    let max_age = (c.next_update - now).min(max_age_cap).max(0);
    cacheable(&mut r, max_age, &c.etag, &c.last_modified, &c.expires);
    r
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
    fn if_none_match_forms() {
        assert!(etag_matches(b"\"abc\"", b"\"abc\""));
        assert!(etag_matches(b"W/\"abc\"", b"\"abc\""));
        assert!(etag_matches(b"\"x\", \"abc\"", b"\"abc\""));
        assert!(etag_matches(b"*", b"\"abc\""));
        assert!(!etag_matches(b"\"abd\"", b"\"abc\""));
    }
}
