//! The admin API, on its own listener: record revocations and issuances, read one status.
//!
//! | method and path | body | what |
//! | --- | --- | --- |
//! | `POST /v1/revoke` | `{"issuer", "serial", "reason"?, "time"?, "not_after"?}` | revoke (and record the issuance when `not_after` is given) |
//! | `POST /v1/issue` | `{"issuer", "serial", "not_after"}` or `{"issuer", "certificate"}` | record an issuance; with the certificate (PEM), also the CRL shard its cRLDistributionPoints names (400, nothing written, when it names no CRL of the issuer) |
//! | `POST /v1/hold` | `{"issuer", "serial", "time"?}` | put on hold (issuers with `allow_hold` only) |
//! | `POST /v1/release` | `{"issuer", "serial"}` | release from hold |
//! | `GET /v1/status/{issuer}/{serial}` | | this replica's view of one certificate |
//!
//! Every request needs `Authorization: Bearer <token>`; the token (from `admin.token_file` or
//! `VIGIL_ADMIN_TOKEN`) is compared in constant time through SHA-256 digests, so neither its
//! content nor its length leaks through timing. No token or a wrong one: 401 before the body is
//! read, and nothing is written anywhere. With `admin.client_ca` the listener also requires a
//! client certificate (mutual TLS) and records its subject in the audit log.
//!
//! Each change is written to the append-only audit log (one JSON line, synced) *before* it is
//! published, and its outcome after; a change whose audit line cannot be written is refused.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::config::{AdminConfig, Config, ENV_ADMIN_TOKEN};
use crate::responder::Responder;
use crate::status::{CertStatus, Event, EventKind, IssuerId, RevocationReason, Serial, StatusView};
use crate::telemetry;
use crate::writer::StatusWriter;

/// Most admin connections at once: operators and CA back-ends, not the public.
const MAX_ADMIN_CONNECTIONS: usize = 64;
/// Shortest accepted token, bytes: 128 bits of a random token.
const MIN_TOKEN_BYTES: usize = 16;
/// Time to finish a TLS handshake, send a request head, or a body.
const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(10);

type Body = Full<Bytes>;

/// Everything an admin request needs.
pub struct AdminState {
    token_digest: [u8; 32],
    writer: Arc<StatusWriter>,
    view: Arc<StatusView>,
    /// Name, id and whether holds are allowed, per configured issuer.
    issuers: Vec<(String, IssuerId, bool)>,
    audit: AuditLog,
    tls: Option<TlsAcceptor>,
    max_body: usize,
    origin: String,
    crl_urls: crate::writer::CrlUrls,
    clock: crate::clock::Clock,
}

/// Why the admin API could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AdminSetupError {
    /// `admin.token_file` could not be read.
    #[error("admin.token_file: {0}")]
    Token(#[source] crate::feed::FeedError),
    /// Neither a token file nor the variable.
    #[error("admin: set admin.token_file or {ENV_ADMIN_TOKEN} (the bearer token)")]
    NoToken,
    /// A token too short to resist guessing.
    #[error("admin: the bearer token must be at least {MIN_TOKEN_BYTES} bytes")]
    ShortToken,
    /// A TLS file (`what` names the setting) that could not be read or used.
    #[error("{what}: {why}")]
    Tls {
        /// The setting and its path.
        what: String,
        /// What went wrong.
        why: String,
    },
    /// The audit log could not be opened.
    #[error("audit log {path}: {source}")]
    Audit {
        /// The file or its directory.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn tls_error(what: &str, path: Option<&Path>, why: impl std::fmt::Display) -> AdminSetupError {
    AdminSetupError::Tls {
        what: match path {
            Some(p) => format!("{what} {}", p.display()),
            None => what.to_string(),
        },
        why: why.to_string(),
    }
}

impl AdminState {
    /// Reads the token, opens the audit log and sets up TLS.
    pub fn new(
        cfg: &Config,
        admin: &AdminConfig,
        writer: Arc<StatusWriter>,
        view: Arc<StatusView>,
        responder: Arc<Responder>,
        clock: crate::clock::Clock,
    ) -> Result<Self, AdminSetupError> {
        let token = match (&admin.token_file, std::env::var(ENV_ADMIN_TOKEN).ok()) {
            (Some(p), _) => crate::feed::region::read_secret(p).map_err(AdminSetupError::Token)?,
            (None, Some(t)) => t,
            (None, None) => return Err(AdminSetupError::NoToken),
        };
        if token.len() < MIN_TOKEN_BYTES {
            return Err(AdminSetupError::ShortToken);
        }
        let tls = match &admin.tls {
            Some(t) => Some(tls_acceptor(
                &t.certificate,
                &t.key,
                t.client_ca.as_deref(),
            )?),
            None => None,
        };
        Ok(AdminState {
            token_digest: sha256(token.as_bytes()),
            writer,
            view,
            issuers: responder
                .issuers()
                .iter()
                .map(|s| {
                    (
                        s.issuer.name.clone(),
                        s.issuer.hashes.id,
                        s.issuer.allow_hold,
                    )
                })
                .collect(),
            audit: AuditLog::open(&cfg.audit_log_path())?,
            tls,
            max_body: admin.max_body_bytes,
            origin: cfg.status.origin.clone(),
            crl_urls: crate::writer::CrlUrls::from_config(cfg),
            clock,
        })
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(presented) = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
        else {
            return false;
        };
        let digest = sha256(presented.trim().as_bytes());
        bool::from(digest.ct_eq(&self.token_digest))
    }

    fn allows_holds(&self, id: IssuerId) -> bool {
        self.issuers.iter().any(|(_, i, allow)| *i == id && *allow)
    }

    fn issuer(&self, name: &str) -> Option<IssuerId> {
        self.issuers
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, id, _)| *id)
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn tls_acceptor(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, AdminSetupError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_error("admin.tls_certificate", Some(cert), e))?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| tls_error("admin.tls_key", Some(key), e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("admin TLS", None, e))?;
    let builder = match client_ca {
        Some(ca) => {
            let bad = |e: &dyn std::fmt::Display| tls_error("admin.client_ca", Some(ca), e);
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad(&e))? {
                let c = c.map_err(|e| bad(&e))?;
                roots.add(c).map_err(|e| bad(&e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| tls_error("admin.client_ca", None, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| tls_error("admin.tls_certificate", None, e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves the admin API until the process ends.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    let limit = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let st = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match &st.tls {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(ADMIN_IO_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, error = %e, "admin TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let client = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| client_subject(c.as_ref()));
                    serve_connection(TokioIo::new(tls), st, peer, client).await;
                }
                None => serve_connection(TokioIo::new(stream), st, peer, None).await,
            }
        });
    }
}

fn client_subject(der: &[u8]) -> Option<String> {
    use der::Decode;
    x509_cert::Certificate::from_der(der)
        .ok()
        .map(|c| c.tbs_certificate.subject.to_string())
}

async fn serve_connection<I>(
    io: TokioIo<I>,
    st: Arc<AdminState>,
    peer: SocketAddr,
    client: Option<String>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let client = Arc::new(client);
    let svc = service_fn(move |req| {
        let (st, client) = (st.clone(), client.clone());
        async move { Ok::<_, std::convert::Infallible>(handle(req, &st, peer, client.as_deref()).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(ADMIN_IO_TIMEOUT)
        .max_buf_size(16 * 1024)
        .serve_connection(io, svc);
    let _ = tokio::time::timeout(Duration::from_secs(300), conn).await;
}

/// `POST /v1/revoke`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    issuer: String,
    serial: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    not_after: Option<String>,
}

/// `POST /v1/hold` and `POST /v1/release`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldBody {
    issuer: String,
    serial: String,
    #[serde(default)]
    time: Option<String>,
}

/// `POST /v1/issue`: `serial` and `not_after`, or the `certificate` (PEM) they are read from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    issuer: String,
    #[serde(default)]
    serial: Option<String>,
    #[serde(default)]
    not_after: Option<String>,
    #[serde(default)]
    certificate: Option<String>,
}

async fn handle(
    req: Request<Incoming>,
    st: &AdminState,
    peer: SocketAddr,
    client: Option<&str>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let endpoint = match path.as_str() {
        "/v1/revoke" => "revoke",
        "/v1/issue" => "issue",
        "/v1/hold" => "hold",
        "/v1/release" => "release",
        p if p.starts_with("/v1/status/") => "status",
        _ => "other",
    };
    let resp = route(req, st, peer, client, endpoint).await;
    metrics::counter!(telemetry::ADMIN_REQUESTS, "endpoint" => endpoint, "code" => resp.status().as_str().to_owned())
        .increment(1);
    resp
}

async fn route(
    req: Request<Incoming>,
    st: &AdminState,
    peer: SocketAddr,
    client: Option<&str>,
    endpoint: &'static str,
) -> Response<Body> {
    if !st.authorized(&req) {
        tracing::warn!(%peer, path = %req.uri().path(), "admin request without a valid bearer token");
        let mut r = json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({"error": "unauthorized"}),
        );
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"vigil-admin\""),
        );
        return r;
    }
    let method = req.method().clone();
    match (endpoint, &method) {
        ("revoke" | "issue" | "hold" | "release", &Method::POST) => {}
        ("status", &Method::GET) => return status(st, req.uri().path()),
        ("revoke" | "issue" | "hold" | "release", _) => return method_not_allowed("POST"),
        ("status", _) => return method_not_allowed("GET"),
        _ => return error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
    let body = match read_body(req, st.max_body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let events = match parse_change(st, endpoint, &body).await {
        Ok(e) => e,
        Err(Refused::Bad(msg)) => return error(StatusCode::BAD_REQUEST, &msg),
        Err(Refused::Unavailable(msg)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("{msg}; nothing was changed"),
            );
        }
    };
    let Some(first) = events.first() else {
        return error(StatusCode::BAD_REQUEST, "nothing to do");
    };
    let (issuer_name, serial) = (issuer_name(st, first.issuer), first.serial.to_hex());
    let change = events.iter().map(describe_event).collect::<Vec<_>>();
    let request_line = serde_json::json!({
        "time": crate::clock::rfc3339_ms(st.clock.now_ms()),
        "phase": "request",
        "peer": peer.to_string(),
        "client": client,
        "action": endpoint,
        "issuer": issuer_name,
        "serial": serial,
        "change": change,
    });
    if let Err(e) = st.audit.append(&request_line).await {
        tracing::error!(error = %e, "audit log not writable: refusing the change");
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "audit log not writable; nothing was changed",
        );
    }
    let result = st.writer.write(events).await;
    let (code, body, outcome) = match &result {
        Ok(w) => (
            StatusCode::OK,
            serde_json::json!({
                "acknowledged": true,
                "issuer": issuer_name,
                "serial": serial,
                "written_to": w.summary,
                "regions": w.regions,
                "missed": w.missed.iter().map(|(r, e)| serde_json::json!({"region": r, "error": e})).collect::<Vec<_>>(),
            }),
            "acknowledged",
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"acknowledged": false, "issuer": issuer_name, "serial": serial, "error": e.to_string()}),
            "failed",
        ),
    };
    let result_line = serde_json::json!({
        "time": crate::clock::rfc3339_ms(st.clock.now_ms()),
        "phase": "result",
        "peer": peer.to_string(),
        "client": client,
        "action": endpoint,
        "issuer": issuer_name,
        "serial": serial,
        "outcome": outcome,
        "detail": match &result { Ok(w) => w.summary.clone(), Err(e) => e.to_string() },
    });
    if let Err(e) = st.audit.append(&result_line).await {
        tracing::error!(error = %e, "audit log not writable after a change");
    }
    json(code, &body)
}

fn issuer_name(st: &AdminState, id: IssuerId) -> String {
    st.issuers
        .iter()
        .find(|(_, i, _)| *i == id)
        .map(|(n, _, _)| n.clone())
        .unwrap_or_default()
}

fn describe_event(e: &Event) -> serde_json::Value {
    match e.kind {
        EventKind::Issued { not_after } => {
            serde_json::json!({"kind": "issued", "not_after": rfc3339(not_after)})
        }
        EventKind::Revoked { time, reason } => {
            serde_json::json!({"kind": "revoked", "time": rfc3339(time), "reason": reason.name()})
        }
        EventKind::Hold { time } => serde_json::json!({"kind": "hold", "time": rfc3339(time)}),
        EventKind::Release { time } => {
            serde_json::json!({"kind": "release", "time": rfc3339(time)})
        }
        EventKind::CrlShard { scope } => {
            let crl = match scope {
                crate::status::CrlScope::Shard(k) => serde_json::json!(k),
                crate::status::CrlScope::Unsharded => serde_json::json!("unsharded"),
            };
            serde_json::json!({"kind": "crl_shard", "shard": crl})
        }
    }
}

/// Why a change was not made.
enum Refused {
    /// The request is wrong (400).
    Bad(String),
    /// What the change depends on could not be read (503).
    Unavailable(String),
}

impl From<String> for Refused {
    fn from(msg: String) -> Self {
        Refused::Bad(msg)
    }
}

async fn parse_change(st: &AdminState, endpoint: &str, body: &[u8]) -> Result<Vec<Event>, Refused> {
    let now_ms = st.clock.now_ms();
    let event = |issuer, serial, kind| Event {
        issuer,
        serial,
        kind,
        origin: st.origin.clone(),
        created_at_ms: now_ms,
    };
    let target = |issuer: &str, serial: &str| -> Result<(IssuerId, Serial), Refused> {
        let id = st
            .issuer(issuer)
            .ok_or_else(|| format!("no issuer named {issuer:?}"))?;
        let serial = Serial::from_hex(serial).map_err(|e| format!("serial {serial:?}: {e}"))?;
        Ok((id, serial))
    };
    if endpoint == "hold" || endpoint == "release" {
        let b: HoldBody = serde_json::from_slice(body).map_err(|e| format!("bad JSON: {e}"))?;
        let (id, serial) = target(&b.issuer, &b.serial)?;
        if !st.allows_holds(id) {
            return Err(Refused::Bad(format!(
                "issuer {:?} does not allow holds (allow_hold = false)",
                b.issuer
            )));
        }
        let requested = match (&b.time, endpoint) {
            (Some(_), "release") => {
                return Err(Refused::Bad("a release takes no time: it is now".into()));
            }
            (Some(t), _) => Some(parse_rfc3339(t)?),
            (None, _) => None,
        };
        let now = now_ms / 1000;
        if requested.is_some_and(|t| t > now + crate::crl::lint::MAX_CLOCK_SKEW_SECS) {
            return Err(Refused::Bad("a hold time may not be in the future".into()));
        }
        // Decided on the same state as `vigil hold`/`release`: the join of every reachable
        // region (or the journal), joined with this replica's view, which may lag the regions
        // (or hold what a region lost). The write is then ordered after the hold or release it
        // supersedes.
        let joined = st
            .writer
            .current_record(id, &serial)
            .await
            .map_err(|e| Refused::Unavailable(e.to_string()))?;
        let current = match (joined, st.view.table(id).record(&serial)) {
            (Some(a), Some(b)) => Some(a.join(b)),
            (a, b) => a.or(b),
        };
        let kind = crate::status::hold_change(current.as_ref(), endpoint == "hold", now, requested)
            .map_err(|e| e.to_string())?;
        return Ok(vec![event(id, serial, kind)]);
    }
    if endpoint == "revoke" {
        let b: RevokeBody = serde_json::from_slice(body).map_err(|e| format!("bad JSON: {e}"))?;
        let (id, serial) = target(&b.issuer, &b.serial)?;
        let reason = match b.reason.as_deref() {
            None => RevocationReason::Unspecified,
            Some(r) => RevocationReason::parse(r).map_err(|e| format!("reason: {e}"))?,
        };
        let time = match &b.time {
            Some(t) => parse_rfc3339(t)?,
            None => now_ms / 1000,
        };
        let mut events = Vec::new();
        if let Some(na) = &b.not_after {
            events.push(event(
                id,
                serial,
                EventKind::Issued {
                    not_after: parse_rfc3339(na)?,
                },
            ));
        }
        events.push(event(id, serial, EventKind::Revoked { time, reason }));
        Ok(events)
    } else {
        let b: IssueBody = serde_json::from_slice(body).map_err(|e| format!("bad JSON: {e}"))?;
        let (id, serial, not_after, scope) = match (&b.certificate, &b.serial, &b.not_after) {
            (Some(pem), None, None) => {
                let id = st
                    .issuer(&b.issuer)
                    .ok_or_else(|| format!("no issuer named {:?}", b.issuer))?;
                let cert = crate::pki::certificate_from_pem(pem.as_bytes())
                    .map_err(|e| format!("certificate: {e}"))?;
                let (serial, not_after) =
                    crate::pki::serial_and_not_after(&cert).map_err(|e| e.to_string())?;
                let scope = st
                    .crl_urls
                    .scope_of(&b.issuer, &cert)
                    .map_err(|e| format!("certificate {serial}: {e}; nothing was written"))?;
                (id, serial, not_after, scope)
            }
            (Some(_), _, _) => {
                return Err(Refused::Bad(
                    "give the certificate alone: serial and not_after are read from it".into(),
                ));
            }
            (None, Some(serial), Some(na)) => {
                let (id, serial) = target(&b.issuer, serial)?;
                (id, serial, parse_rfc3339(na)?, None)
            }
            (None, _, _) => {
                return Err(Refused::Bad(
                    "serial and not_after are required (or the certificate)".into(),
                ));
            }
        };
        Ok(crate::writer::issuance_kinds(not_after, scope)
            .into_iter()
            .map(|kind| event(id, serial, kind))
            .collect())
    }
}

/// One PEM certificate, as `POST /v1/issue` takes it (its size is bounded by the body's).
fn status(st: &AdminState, path: &str) -> Response<Body> {
    let rest = path.trim_start_matches("/v1/status/");
    let Some((issuer, serial)) = rest.split_once('/') else {
        return error(
            StatusCode::NOT_FOUND,
            "expected /v1/status/{issuer}/{serial}",
        );
    };
    let Some(id) = st.issuer(issuer) else {
        return error(StatusCode::NOT_FOUND, "no such issuer");
    };
    let Ok(serial) = Serial::from_hex(serial) else {
        return error(StatusCode::BAD_REQUEST, "bad serial");
    };
    let table = st.view.table(id);
    let not_after = table
        .record(&serial)
        .and_then(|r| r.not_after())
        .map(rfc3339);
    let body = match table.status_with(&serial, st.allows_holds(id)) {
        CertStatus::Good => serde_json::json!({"status": "good", "not_after": not_after}),
        CertStatus::Revoked(r) => serde_json::json!({
            "status": "revoked",
            "revocation_time": rfc3339(r.time),
            "reason": r.reason.name(),
            "not_after": not_after,
        }),
        CertStatus::Unissued => serde_json::json!({"status": "unissued"}),
    };
    let mut body = body;
    match table.record(&serial).and_then(|r| r.crl_scope()) {
        Some(crate::status::CrlScope::Shard(k)) => body["crl_shard"] = serde_json::json!(k),
        Some(crate::status::CrlScope::Unsharded) => {
            body["crl_shard"] = serde_json::json!("unsharded")
        }
        None => {}
    }
    body["issuer"] = serde_json::Value::from(issuer);
    body["serial"] = serde_json::Value::from(serial.to_hex());
    json(StatusCode::OK, &body)
}

async fn read_body(req: Request<Incoming>, max: usize) -> Result<Bytes, Response<Body>> {
    let too_large = || error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let collect = Limited::new(req.into_body(), max).collect();
    match tokio::time::timeout(ADMIN_IO_TIMEOUT, collect).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Ok(Err(_)) => Err(error(StatusCode::BAD_REQUEST, "bad request body")),
        Err(_) => Err(error(StatusCode::REQUEST_TIMEOUT, "request body too slow")),
    }
}

fn json(code: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut body = v.to_string();
    body.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

fn error(code: StatusCode, msg: &str) -> Response<Body> {
    json(code, &serde_json::json!({ "error": msg }))
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    r
}

fn parse_rfc3339(s: &str) -> Result<i64, Refused> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| Refused::Bad(format!("bad time {s:?} (expected RFC 3339): {e}")))
}

fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

/// The append-only audit log: one JSON object per line, synced before the call returns.
pub struct AuditLog {
    file: Arc<Mutex<File>>,
}

impl AuditLog {
    /// Opens (creating) the log for appending.
    pub fn open(path: &Path) -> Result<Self, AdminSetupError> {
        let failed = |p: &Path| {
            let path = p.to_path_buf();
            move |source| AdminSetupError::Audit { path, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(failed(dir))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(failed(path))?;
        Ok(AuditLog {
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// Appends one line and syncs it.
    pub async fn append(&self, line: &serde_json::Value) -> std::io::Result<()> {
        let mut text = line.to_string();
        text.push('\n');
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let mut f = file.lock().unwrap_or_else(PoisonError::into_inner);
            f.write_all(text.as_bytes())?;
            f.sync_data()
        })
        .await
        .map_err(std::io::Error::other)?
    }
}
