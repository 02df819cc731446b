//! The HTTP adapter: listener, connection limits and timeouts, graceful drain.
//!
//! Routing is in [`routes`]; turning answers and errors into HTTP responses is in [`respond`]
//! (the one place that decides status codes and caching headers).

pub mod admin;
pub mod respond;
pub mod routes;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::config::Config;
use crate::crl_service::catalog::Catalog;
use crate::responder::Responder;
use crate::signer::SignerPool;
use crate::status::StatusView;
use crate::telemetry::{self, Metrics};

/// Whether this replica should receive traffic.
#[derive(Default)]
pub struct Readiness {
    /// The status view has been loaded from its sources.
    pub view_loaded: AtomicBool,
    /// SIGTERM received: draining.
    pub draining: AtomicBool,
    /// The HSM pools; one with no HSM in service makes the replica degraded ("no signer").
    pub signer_pools: Vec<Arc<SignerPool>>,
    /// The CRL signer pools (`[issuer.crl_signer]`, on publishing nodes). One with no HSM in
    /// service is reported by `/readyz` but never makes the replica unready: OCSP answers and
    /// CRL serving do not need it; only publishing waits.
    pub crl_signer_pools: Vec<Arc<SignerPool>>,
    /// `hsm_pool.readiness_requires_signer`: "no signer" makes the replica not ready.
    pub require_signer: bool,
    /// Freshness of the feed, when `[feed]` is configured.
    pub feed: std::sync::OnceLock<Arc<crate::feed::health::FeedHealth>>,
    /// Complete CRLs refused for dropping entries of the previous one: degraded, named.
    pub crl_refusals: std::sync::OnceLock<Arc<crate::crl_service::publisher::Refusals>>,
}

/// One reason a replica is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReadyReason {
    /// SIGTERM received.
    #[error("shutting down")]
    Draining,
    /// The status view is not loaded yet.
    #[error("status view not loaded")]
    ViewNotLoaded,
    /// `hsm_pool.readiness_requires_signer` and an issuer has no HSM in service.
    #[error("{0}")]
    NoSigner(String),
    /// The feed does not cover the regions, or is stale.
    #[error(transparent)]
    Feed(#[from] crate::feed::health::FeedNotReady),
}

/// Every reason a replica is not ready (at least one), as `/readyz` states them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady(pub Vec<NotReadyReason>);

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl std::error::Error for NotReady {}

impl Readiness {
    /// `Ok` when ready at `now_ms` (the feed's freshness is judged against it), else every
    /// reason it is not.
    pub fn check(&self, now_ms: i64) -> Result<(), NotReady> {
        let mut why = Vec::new();
        if self.draining.load(Ordering::Relaxed) {
            why.push(NotReadyReason::Draining);
        }
        if !self.view_loaded.load(Ordering::Relaxed) {
            why.push(NotReadyReason::ViewNotLoaded);
        }
        if self.require_signer {
            why.extend(self.no_ocsp_signer().map(NotReadyReason::NoSigner));
        }
        if let Some(feed) = self.feed.get()
            && let Err(e) = feed.check(now_ms)
        {
            why.push(NotReadyReason::Feed(e));
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(NotReady(why))
        }
    }

    /// Why the replica is degraded, if it is: OCSP answered only from its cache for some
    /// issuer, CRLs not published for lack of a CRL signer, a complete CRL refused, or the
    /// view catching up with a region whose stream was trimmed past its cursor.
    pub fn degraded(&self) -> Option<String> {
        let why: Vec<String> = self
            .no_ocsp_signer()
            .into_iter()
            .chain(self.no_crl_signer())
            .chain(self.crl_refusals.get().and_then(|r| r.describe()))
            .chain(self.feed.get().and_then(|f| f.behind()))
            .collect();
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// With no HSM in service, cached responses are served until their nextUpdate, then
    /// `tryLater`.
    fn no_ocsp_signer(&self) -> Option<String> {
        no_signer(&self.signer_pools).map(|(issuers, fallback)| {
            format!(
                "no signer (no HSM in service) for issuer {issuers}{}",
                if fallback {
                    ": signing with danger_software_fallback"
                } else {
                    ": serving cached responses until their nextUpdate"
                }
            )
        })
    }

    /// With no HSM of a CRL signer in service, that issuer's CRLs are not published (the
    /// served ones stay until their nextUpdate).
    fn no_crl_signer(&self) -> Option<String> {
        no_signer(&self.crl_signer_pools).map(|(pools, fallback)| {
            format!(
                "no CRL signer (no HSM in service) for {pools}{}",
                if fallback {
                    ": signing CRLs with danger_software_fallback"
                } else {
                    ": CRLs are not published until one is back"
                }
            )
        })
    }
}

/// The pools with no HSM in service (comma-separated labels), and whether each of them has a
/// software fallback.
fn no_signer(pools: &[Arc<SignerPool>]) -> Option<(String, bool)> {
    let without: Vec<&SignerPool> = pools
        .iter()
        .filter(|p| p.in_service() == 0)
        .map(|p| p.as_ref())
        .collect();
    if without.is_empty() {
        return None;
    }
    let labels: Vec<&str> = without.iter().map(|p| p.issuer()).collect();
    Some((labels.join(", "), without.iter().all(|p| p.has_fallback())))
}

/// Everything a request handler needs.
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// The OCSP answer path.
    pub responder: Arc<Responder>,
    /// The status view (for gauges).
    pub view: Arc<StatusView>,
    /// The CRLs served under `/crl/`.
    pub crl: Arc<Catalog>,
    /// Readiness.
    pub readiness: Arc<Readiness>,
    /// Hot-path metric handles.
    pub metrics: Arc<Metrics>,
    /// Renders `/metrics`; None when another recorder owns the process (tests).
    pub prometheus: Option<PrometheusHandle>,
    /// The one clock.
    pub clock: crate::clock::Clock,
}

/// Serves `listener` until `shutdown` resolves, then drains: readiness turns false, after
/// `server.drain_delay` the listener closes, and open connections finish their in-flight
/// requests for up to `server.shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let cfg = state.config.clone();
    let max_conns = cfg.server.max_connections;
    let conn_limit = Arc::new(Semaphore::new(max_conns));
    let (stop_tx, stop_rx) = watch::channel(false);
    let open = metrics::gauge!(telemetry::CONNECTIONS);

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.server.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(64 * 1024)
        .max_headers(64);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .max_header_list_size(16 * 1024)
        .max_pending_accept_reset_streams(64)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = if cfg.server.http2 {
        builder
    } else {
        builder.http1_only()
    };
    let builder = Arc::new(builder);

    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = conn_limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(IdleIo {
            inner: stream,
            activity: activity.clone(),
        });
        let st = state.clone();
        let svc = service_fn(move |req| {
            let st = st.clone();
            async move { Ok::<_, std::convert::Infallible>(routes::handle(req, st).await) }
        });
        let conn = builder.serve_connection(io, svc).into_owned();
        let mut stop = stop_rx.clone();
        let idle = cfg.server.idle_timeout;
        let open = open.clone();
        open.increment(1.0);
        tokio::spawn(async move {
            tokio::pin!(conn);
            let mut draining = false;
            loop {
                tokio::select! {
                    _ = &mut conn => break,
                    _ = activity.idle_for(idle) => break,
                    r = stop.changed(), if !draining => {
                        draining = true;
                        if r.is_ok() {
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
            open.decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Wait until every connection has returned its permit, or the timeout.
    let all = u32::try_from(max_conns).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(cfg.server.shutdown_timeout, conn_limit.acquire_many(all)).await;
    Ok(())
}

/// Whether bytes moved on a connection: a count of reads and writes that moved bytes, bumped
/// by the IO wrapper without reading a clock (two clock reads per request showed in profiles);
/// the watchdog reads the clock only when it wakes.
struct Activity {
    moved: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            moved: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        // Only this connection's task writes it: a plain load and store, no locked instruction.
        let n = self.moved.load(Ordering::Relaxed);
        self.moved.store(n.wrapping_add(1), Ordering::Relaxed);
    }

    /// Resolves once no bytes have moved for `limit`: the count has not changed at any check
    /// since the first check that saw its current value, and that was at least `limit` ago
    /// (so a silent connection is closed between `limit` and `limit` + one check interval
    /// after its last byte).
    async fn idle_for(&self, limit: Duration) {
        let check = (limit / 4).max(Duration::from_millis(100));
        let mut seen = self.moved.load(Ordering::Relaxed);
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(check).await;
            let now = self.moved.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                since = Instant::now();
            } else if since.elapsed() >= limit {
                return;
            }
        }
    }
}

/// A TCP stream that records activity, so silent connections (including HTTP/2 and clients
/// that never send a first byte) are closed after `server.idle_timeout`.
struct IdleIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for IdleIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
