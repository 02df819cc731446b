//! `vigil serve`: the steps from a loaded configuration to a listening, draining server, and
//! what keeps the view current: the journal tailer (single node) or the feed consumers, repair,
//! heartbeats and checkpoints (`[feed]`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::{AppError, Signing, load_signing, prepare_embedded, replay_journal, start_crl_pools};
use crate::apply::Applier;
use crate::clock::Clock;
use crate::config::{Config, FeedConfig};
use crate::crl_service::{CrlPools, CrlService};
use crate::feed::consume::{self, FeedState, Reseed};
use crate::feed::health::FeedHealth;
use crate::feed::repair::{Repairer, run_heartbeats};
use crate::feed::{Cursor, checkpoint, region};
use crate::http::{self, AppState, Readiness};
use crate::journal::JournalReader;
use crate::responder::Responder;
use crate::status::StatusView;
use crate::telemetry::{self, Metrics};

/// Warn at start-up when a signing certificate has less than this left.
const SIGNER_EXPIRY_WARNING_SECS: i64 = 14 * 86400;
/// How often the Prometheus upkeep runs and the signer expiry gauges are set again.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How often the feed freshness gauges are set.
const FRESHNESS_GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the server until SIGTERM / SIGINT. Prints the URL (and, for the embedded default, an
/// `openssl ocsp` command) on stdout once listening.
pub async fn serve(cfg: Config, clock: Clock) -> Result<(), AppError> {
    let cfg = Arc::new(cfg);
    prepare_embedded(&cfg, &clock)?;
    // The recorder goes first so the HSM pools register their metrics with it.
    let prometheus = telemetry::install_recorder().ok();
    let Signing { issuers, pools } = load_signing(&cfg)?;
    // Only a node that publishes CRLs connects to the CA key.
    let crl_pools = if cfg.crl.publish {
        start_crl_pools(&cfg)?
    } else {
        CrlPools::new()
    };
    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness {
        signer_pools: pools,
        crl_signer_pools: crl_pools.values().cloned().collect(),
        require_signer: cfg.hsm_pool.readiness_requires_signer,
        ..Readiness::default()
    });
    let (view, source) = load_view(&cfg, &metrics, &readiness).await?;

    let signer_not_after: Vec<(String, i64)> = issuers
        .iter()
        .map(|i| (i.name.clone(), i.signing_certificate_not_after()))
        .collect();
    warn_of_signer_expiry(&signer_not_after, clock.now());
    // CRLs: serve the disk copies, refresh from Redis, publish (the embedded default's first
    // CRL is published here, before the URL is printed).
    let revoked = Arc::new(Notify::new());
    let crl = Arc::new(CrlService::new(
        cfg.clone(),
        &issuers,
        cfg.crl.publish,
        &crl_pools,
        clock.clone(),
    )?);
    let responder = Arc::new(Responder::new(
        &cfg,
        issuers,
        &view,
        metrics.clone(),
        clock.clone(),
    ));
    // Every status change, from the journal or the feed, goes through this one applier.
    let applier = Arc::new(Applier::new(view.clone(), Some(responder.clone())));
    applier.wake_crls_with(revoked.clone());
    let (reader, feed_running) = match source {
        ViewSource::Feed {
            feed,
            cursors,
            fresh_at_ms,
        } => {
            let start = (cursors, fresh_at_ms);
            let running = start_feed(&cfg, feed, start, &applier, &readiness, &clock)?;
            (None, Some(running))
        }
        ViewSource::Journal(reader) => (Some(reader), None),
    };
    // A complete CRL is built only from a complete view: with the feed, once it covers every
    // reachable region; from the journal, once it is read (above).
    let _ = readiness.crl_refusals.set(crl.refusals());
    crl.start(
        view.clone(),
        revoked.clone(),
        feed_running.as_ref().map(|f| f.state.health.clone()),
    )
    .await;

    let listener = bind("server.listen", cfg.server.listen).await?;
    let addr = listener.local_addr().map_err(AppError::Serve)?;
    start_admin(&cfg, &view, &responder, &clock).await?;
    if let Some(reader) = reader {
        tokio::spawn(tail_journal(
            reader,
            cfg.clone(),
            applier.clone(),
            metrics.clone(),
        ));
    }
    announce(&cfg, addr, &crl);
    if let Some(h) = prometheus.clone() {
        tokio::spawn(upkeep(h, signer_not_after, clock.clone()));
    }

    let state = Arc::new(AppState {
        config: cfg.clone(),
        responder,
        view: view.clone(),
        crl: crl.catalog.clone(),
        readiness: readiness.clone(),
        metrics,
        prometheus,
        clock: clock.clone(),
    });
    let drain_delay = cfg.server.drain_delay;
    let shutdown = async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: not ready, draining");
        readiness.draining.store(true, Ordering::Relaxed);
        tokio::time::sleep(drain_delay).await;
    };
    http::serve(listener, state, shutdown)
        .await
        .map_err(AppError::Serve)?;
    if let Some(feed) = feed_running {
        feed.checkpoint(&view).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Where the view came from, and so what keeps it current.
enum ViewSource<'a> {
    /// The local journal, read to its end: the tailer goes on from there.
    Journal(JournalReader),
    /// The checkpoint (or nothing): the feed consumers go on from its cursors.
    Feed {
        feed: &'a FeedConfig,
        cursors: HashMap<String, Cursor>,
        fresh_at_ms: i64,
    },
}

/// The status view at start: the whole journal on a single node, the checkpoint with `[feed]`.
/// Readiness learns the view is loaded when it can answer (a checkpoint answers until the feed
/// is back, and readiness says how stale it is).
async fn load_view<'a>(
    cfg: &'a Config,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Result<(Arc<StatusView>, ViewSource<'a>), AppError> {
    let Some(feed) = &cfg.feed else {
        let view = Arc::new(StatusView::new());
        let journal_path = cfg.journal_path();
        let mut r = JournalReader::new(&journal_path);
        let n = replay_journal(&mut r, &view, metrics)?;
        tracing::info!(events = n, certificates = view.len(), journal = %journal_path.display(), "status view loaded");
        readiness.view_loaded.store(true, Ordering::Relaxed);
        return Ok((view, ViewSource::Journal(r)));
    };
    let (view, cursors, fresh_at_ms) = load_checkpoint(cfg).await;
    if fresh_at_ms > 0 {
        readiness.view_loaded.store(true, Ordering::Relaxed);
    }
    Ok((
        Arc::new(view),
        ViewSource::Feed {
            feed,
            cursors,
            fresh_at_ms,
        },
    ))
}

async fn bind(what: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { what, addr, source })
}

/// Binds and starts the admin API when `[admin]` is configured.
async fn start_admin(
    cfg: &Arc<Config>,
    view: &Arc<StatusView>,
    responder: &Arc<Responder>,
    clock: &Clock,
) -> Result<(), AppError> {
    let Some(admin) = &cfg.admin else {
        return Ok(());
    };
    let writer = Arc::new(crate::writer::StatusWriter::from_config(cfg)?);
    let admin_listener = bind("admin.listen", admin.listen).await?;
    let admin_state = crate::http::admin::AdminState::new(
        cfg,
        admin,
        writer,
        view.clone(),
        responder.clone(),
        clock.clone(),
    )?;
    let admin_addr = admin_listener.local_addr().map_err(AppError::Serve)?;
    let scheme = if admin.tls.is_some() { "https" } else { "http" };
    println!("vigil admin API on {scheme}://{admin_addr}/");
    tokio::spawn(crate::http::admin::serve(
        admin_listener,
        Arc::new(admin_state),
    ));
    Ok(())
}

/// Prometheus upkeep, and the signer expiry gauges set again: a gauge of seconds left goes
/// stale unless it is, and the expiry alert of the Helm chart reads it from replicas that run
/// for weeks.
async fn upkeep(
    h: metrics_exporter_prometheus::PrometheusHandle,
    signer_not_after: Vec<(String, i64)>,
    clock: Clock,
) {
    loop {
        tokio::time::sleep(UPKEEP_INTERVAL).await;
        h.run_upkeep();
        set_signer_expiry(&signer_not_after, clock.now());
    }
}

/// Sets the expiry gauges and warns of a signing certificate that expires soon.
fn warn_of_signer_expiry(not_after: &[(String, i64)], now: i64) {
    set_signer_expiry(not_after, now);
    for (name, not_after) in not_after {
        let left = not_after - now;
        if left < SIGNER_EXPIRY_WARNING_SECS {
            tracing::warn!(issuer = %name, days = left / 86400, "the signing certificate expires soon");
        }
    }
}

/// Loads the checkpoint (view, cursors, freshness); a missing or damaged one gives an empty view
/// and no cursors, so every region is bootstrapped.
async fn load_checkpoint(cfg: &Config) -> (StatusView, HashMap<String, Cursor>, i64) {
    let path = cfg.checkpoint_path();
    let started = std::time::Instant::now();
    let p = path.clone();
    match tokio::task::spawn_blocking(move || checkpoint::load(&p)).await {
        Ok(Ok(Some(l))) => {
            tracing::info!(checkpoint = %path.display(), certificates = l.certificates,
                regions = l.cursors.len(), elapsed_ms = started.elapsed().as_millis() as u64,
                "status view loaded from the checkpoint");
            (l.view, l.cursors, l.fresh_at_ms)
        }
        Ok(Ok(None)) => {
            tracing::info!(checkpoint = %path.display(), "no checkpoint yet: bootstrapping from the feed");
            (StatusView::new(), HashMap::new(), 0)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "ignoring the checkpoint: bootstrapping every region from its snapshot");
            (StatusView::new(), HashMap::new(), 0)
        }
        Err(e) => {
            tracing::warn!(error = %e, "checkpoint loader failed: bootstrapping every region");
            (StatusView::new(), HashMap::new(), 0)
        }
    }
}

/// The running feed machinery of a replica.
struct RunningFeed {
    state: Arc<FeedState>,
    path: std::path::PathBuf,
}

impl RunningFeed {
    /// Writes a checkpoint: cursors first, then the view (see [`checkpoint`]).
    async fn checkpoint(&self, view: &Arc<StatusView>) {
        let cursors = self.state.cursors();
        if cursors.is_empty() && view.is_empty() {
            return;
        }
        let fresh = self.state.health.freshest_ms();
        let (path, view) = (self.path.clone(), view.clone());
        let started = std::time::Instant::now();
        let r =
            crate::background::run(move || checkpoint::write(&path, &view, &cursors, fresh)).await;
        metrics::histogram!(telemetry::CHECKPOINT_DURATION).record(started.elapsed().as_secs_f64());
        match r {
            Ok(Ok(n)) => {
                metrics::counter!(telemetry::CHECKPOINT_WRITES, "result" => "ok").increment(1);
                tracing::debug!(
                    certificates = n,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "checkpoint written"
                );
            }
            Ok(Err(e)) => {
                metrics::counter!(telemetry::CHECKPOINT_WRITES, "result" => "error").increment(1);
                tracing::warn!(error = %e, "checkpoint not written");
            }
            Err(e) => tracing::warn!(error = %e, "checkpoint task failed"),
        }
    }
}

/// Starts one consumer and one heartbeat writer per region, the repairer, the checkpoint timer
/// and the freshness gauges.
fn start_feed(
    cfg: &Config,
    feed: &FeedConfig,
    (cursors, fresh_at_ms): (HashMap<String, Cursor>, i64),
    applier: &Arc<Applier>,
    readiness: &Arc<Readiness>,
    clock: &Clock,
) -> Result<Arc<RunningFeed>, AppError> {
    let view = &applier.view;
    let regions = region::regions(cfg)?;
    let names: Vec<String> = regions.iter().map(|r| r.name.clone()).collect();
    let health = Arc::new(FeedHealth::new(&names, feed.max_staleness));
    health.set_checkpoint_fresh(fresh_at_ms);
    let _ = readiness.feed.set(health.clone());
    let state = Arc::new(FeedState::new(
        applier.clone(),
        health.clone(),
        Some(readiness.clone()),
        cursors,
        Some(Reseed {
            maxlen: feed.maxlen,
            origin: cfg.status.origin.clone(),
            check_interval: feed.repair_interval,
        }),
        clock.clone(),
    ));
    for r in &regions {
        tokio::spawn(consume::run(
            state.clone(),
            r.clone(),
            feed.reconnect_min,
            feed.reconnect_max,
        ));
        tokio::spawn(run_heartbeats(
            r.clone(),
            feed.maxlen,
            cfg.status.origin.clone(),
            feed.heartbeat_interval,
            clock.clone(),
        ));
    }
    let repairer = Repairer::new(state.clone(), regions, feed.maxlen, &cfg.status.origin);
    tokio::spawn(repairer.run(feed.repair_interval));
    // The last backup's age is alerted on from the replicas' own metrics (VigilBackupStale).
    tokio::spawn(crate::backup::watch_last_success(
        cfg.clone(),
        crate::backup::LAST_SUCCESS_INTERVAL,
    ));
    let running = Arc::new(RunningFeed {
        state,
        path: cfg.checkpoint_path(),
    });
    let (r, v, every) = (running.clone(), view.clone(), feed.checkpoint_interval);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            r.checkpoint(&v).await;
        }
    });
    let clock = clock.clone();
    tokio::spawn(async move {
        loop {
            health.update_gauges(clock.now_ms());
            tokio::time::sleep(FRESHNESS_GAUGE_INTERVAL).await;
        }
    });
    Ok(running)
}

/// Sets `vigil_signer_certificate_expiry_seconds` of each issuer: seconds from `now` to the
/// notAfter of its signing certificate.
fn set_signer_expiry(not_after: &[(String, i64)], now: i64) {
    for (name, t) in not_after {
        metrics::gauge!(telemetry::SIGNER_CERT_EXPIRY, "issuer" => name.clone())
            .set((t - now) as f64);
    }
}

fn announce(cfg: &Config, addr: std::net::SocketAddr, crl: &CrlService) {
    let base = format!("http://{addr}");
    println!(
        "vigil listening on {base}/ (OCSP at / and {}/)",
        cfg.server.ocsp_prefix
    );
    let urls = crl.urls(&base);
    if !urls.is_empty() {
        println!("CRLs: {}", urls.join(" "));
    }
    if cfg.embedded {
        let d = cfg.data_dir.display();
        let cert = crate::demo::demo_cert_paths(&cfg.data_dir)
            .into_iter()
            .next()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        println!(
            "demo PKI in {d}: ca.pem, responder.pem, certs/*.pem (certs/revoked-1.pem is revoked)"
        );
        println!(
            "try: openssl ocsp -issuer {d}/ca.pem -cert {cert} -url {base}{} -CAfile {d}/ca.pem -resp_text",
            cfg.server.ocsp_prefix
        );
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Applies journal records appended by `vigil revoke` / `vigil issue` (or another writer).
async fn tail_journal(
    mut reader: JournalReader,
    cfg: Arc<Config>,
    applier: Arc<Applier>,
    metrics: Arc<Metrics>,
) {
    loop {
        tokio::time::sleep(cfg.status.journal_poll).await;
        let (r, batch) = match tokio::task::spawn_blocking(move || {
            let b = reader.read_new();
            (reader, b)
        })
        .await
        {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "journal reader task failed");
                return;
            }
        };
        reader = r;
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "reading the journal");
                continue;
            }
        };
        metrics
            .events_undecodable
            .increment(batch.undecodable as u64);
        let applied = applier.events(&batch.events).await;
        metrics.events_changed.increment(applied.changed as u64);
        metrics.events_unchanged.increment(applied.unchanged as u64);
    }
}
