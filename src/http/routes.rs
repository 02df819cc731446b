//! Request routing.
//!
//! | path | methods |
//! |---|---|
//! | `/healthz`, `/readyz`, `/metrics` | GET, HEAD |
//! | `/crl/{issuer}.crl`, `/crl/{issuer}/{shard}.crl` (and `.delta.crl`) | GET, HEAD |
//! | `/crl/{issuer}.json` (CCADB's JSON array of the issuer's CRL URLs) | GET, HEAD |
//! | `/` and `{ocsp_prefix}` | POST an OCSPRequest |
//! | `/{base64}` and `{ocsp_prefix}/{base64}` | GET an OCSPRequest |
//!
//! At the root, a GET path is read as OCSP only if it starts with `M` after its slashes: the
//! base64 of every DER OCSPRequest does (its first octet is 0x30), so `/favicon.ico` is a 404
//! rather than a malformed request. Under the prefix every GET path is OCSP: one that is empty
//! or not base64 is a 400 (never a 404), one that decodes to something other than an
//! OCSPRequest is `malformedRequest`. Nothing here merges slashes or redirects.
//!
//! A CRL path is looked up exactly (the raw path, escapes undecoded) among the CRLs the
//! configuration defines, so `..`, `%2F`, doubled slashes and every other variation are 404.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::AppState;
use super::respond::{self, Body};
use crate::ocsp::request::decode_get_path;
use crate::telemetry::{self, PathClass};

/// Handles one request: the operations paths, the CRLs, or OCSP.
pub async fn handle(req: Request<Incoming>, st: Arc<AppState>) -> Response<Body> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let target_len = parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > st.config.limits.max_get_path_bytes {
        let r = respond::text(StatusCode::URI_TOO_LONG, "request target too long\n");
        return other(&st, r, PathClass::Ocsp);
    }
    let is_get = parts.method == Method::GET || parts.method == Method::HEAD;
    let path = parts.uri.path();
    if let Some(r) = ops(&st, path, is_get) {
        return other(&st, r, PathClass::Ops);
    }
    if path == "/crl" || path.starts_with("/crl/") {
        let r = crl(&st, &parts, path, is_get);
        return other(&st, r, PathClass::Crl);
    }
    ocsp(&st, &parts, body, started).await
}

/// `/healthz`, `/readyz` and `/metrics`; None for any other path.
fn ops(st: &AppState, path: &str, is_get: bool) -> Option<Response<Body>> {
    Some(match path {
        "/healthz" | "/readyz" | "/metrics" if !is_get => respond::method_not_allowed("GET, HEAD"),
        "/healthz" => respond::text(StatusCode::OK, "ok\n"),
        "/readyz" => match st.readiness.check(st.clock.now_ms()) {
            Ok(()) => match st.readiness.degraded() {
                Some(why) => respond::text(StatusCode::OK, format!("ready, degraded: {why}\n")),
                None => respond::text(StatusCode::OK, "ready\n"),
            },
            Err(why) => respond::text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => metrics(st),
        _ => return None,
    })
}

/// A CRL, or an issuer's JSON array of CRL URLs, looked up exactly by its path.
fn crl(st: &AppState, parts: &http::request::Parts, path: &str, is_get: bool) -> Response<Body> {
    if !is_get {
        return respond::method_not_allowed("GET, HEAD");
    }
    let name = path.strip_prefix("/crl/").unwrap_or_default();
    if let Some(json) = st.crl.disclosure(name) {
        return respond::json(json);
    }
    match st.crl.lookup(name) {
        None => respond::text(StatusCode::NOT_FOUND, "no such CRL\n"),
        Some(None) => respond::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "this CRL has not been published yet\n",
        ),
        Some(Some(crl)) => {
            let interval = st.crl.interval(&crl.id);
            respond::crl(&crl, &parts.headers, st.clock.now(), interval)
        }
    }
}

/// An OCSP request by POST (the body) or GET (the base64 path), answered and counted.
async fn ocsp(
    st: &AppState,
    parts: &http::request::Parts,
    body: Incoming,
    started: Instant,
) -> Response<Body> {
    let is_post = parts.method == Method::POST;
    let is_get = parts.method == Method::GET || parts.method == Method::HEAD;
    if !is_get && !is_post {
        let r = respond::method_not_allowed("GET, HEAD, POST");
        return other(st, r, PathClass::Ocsp);
    }
    let path = parts.uri.path();
    let prefix = st.config.server.ocsp_prefix.as_str();
    let (rest, under_prefix) = match path.strip_prefix(prefix) {
        Some(r) if !prefix.is_empty() && (r.is_empty() || r.starts_with('/')) => (r, true),
        _ => (path, false),
    };
    let encoded = rest.trim_start_matches('/');
    let not_found = || respond::text(StatusCode::NOT_FOUND, "not found\n");
    // A POST body stays the `Bytes` hyper gave; a GET path decodes into one buffer.
    let (der, method): (Bytes, _) = if is_post {
        if !encoded.is_empty() {
            return other(st, not_found(), PathClass::Ocsp);
        }
        match read_body(body, &parts.headers, st).await {
            Ok(b) => (b, telemetry::Method::Post),
            Err(r) => return other(st, r, PathClass::Ocsp),
        }
    } else {
        if !under_prefix && (encoded.is_empty() || !encoded.starts_with('M')) {
            return other(st, not_found(), PathClass::Ocsp);
        }
        if encoded.is_empty() {
            // Under the prefix every GET is OCSP: one without a request is a bad request.
            let r = respond::text(StatusCode::BAD_REQUEST, "OCSP GET path holds no request\n");
            return other(st, r, PathClass::Ocsp);
        }
        // The raw path keeps its percent-escapes: decode_get_path undoes them.
        match decode_get_path(encoded) {
            Ok(d) => (Bytes::from(d), telemetry::Method::Get),
            Err(_) => {
                let r = respond::text(StatusCode::BAD_REQUEST, "OCSP GET path is not base64\n");
                return other(st, r, PathClass::Ocsp);
            }
        }
    };
    let now = st.clock.now();
    let answer = st.responder.answer(&der, now).await;
    let (resp, outcome) = respond::ocsp(answer, &parts.headers, now);
    st.metrics
        .request(method, outcome, started.elapsed().as_secs_f64());
    resp
}

/// Reads a POST body within `limits.max_request_bytes` and `server.body_read_timeout`; a body
/// over the cap is refused from its Content-Length, or as soon as it passes the cap.
async fn read_body(
    body: Incoming,
    headers: &http::HeaderMap,
    st: &AppState,
) -> Result<Bytes, Response<Body>> {
    let max = st.config.limits.max_request_bytes;
    let too_large = || respond::text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let collect = Limited::new(body, max).collect();
    match tokio::time::timeout(st.config.server.body_read_timeout, collect).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Ok(Err(_)) => Err(respond::text(StatusCode::BAD_REQUEST, "bad request body\n")),
        Err(_) => Err(respond::text(
            StatusCode::REQUEST_TIMEOUT,
            "request body too slow\n",
        )),
    }
}

fn metrics(st: &AppState) -> Response<Body> {
    let Some(handle) = &st.prometheus else {
        return respond::text(StatusCode::NOT_FOUND, "metrics are not enabled\n");
    };
    metrics::gauge!(telemetry::VIEW_CERTIFICATES).set(st.view.len() as f64);
    // What /readyz would answer now: 1 ready (degraded or not), 0 not ready; 1 degraded.
    let ready = st.readiness.check(st.clock.now_ms()).is_ok();
    metrics::gauge!(telemetry::READY).set(if ready { 1.0 } else { 0.0 });
    let degraded = ready && st.readiness.degraded().is_some();
    metrics::gauge!(telemetry::DEGRADED).set(if degraded { 1.0 } else { 0.0 });
    let (status_change, routine) = st.responder.signing_queued();
    metrics::gauge!(telemetry::SIGNING_QUEUE_DEPTH, "priority" => "status_change")
        .set(status_change as f64);
    metrics::gauge!(telemetry::SIGNING_QUEUE_DEPTH, "priority" => "routine").set(routine as f64);
    st.crl.update_age_gauges(st.clock.now());
    let mut r = respond::text(StatusCode::OK, handle.render());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn other(st: &AppState, r: Response<Body>, class: PathClass) -> Response<Body> {
    st.metrics.http_other(class, r.status().as_u16());
    r
}
