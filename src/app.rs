//! Start-up of `vigil serve`: config → issuers → status view → responder → listener, and what
//! keeps the view current: the journal tailer (single node) or the feed consumers, repair,
//! heartbeats and checkpoints (`[feed]`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::apply::Applier;
use crate::clock::Clock;
use crate::config::{Config, FeedConfig, KeySource};
use crate::crl_service::{CrlPools, CrlService};
use crate::feed::consume::{self, FeedState, Reseed};
use crate::feed::health::FeedHealth;
use crate::feed::repair::{run_heartbeats, Repairer};
use crate::feed::{checkpoint, region, Cursor};
use crate::http::{self, AppState, Readiness};
use crate::journal::{JournalReader, JournalWriter};
use crate::pki::{self, Issuer};
use crate::responder::Responder;
use crate::signer::pool::{key_spec, PoolSettings};
use crate::signer::{SignerPool, SoftwareSigner};
use crate::status::StatusView;
use crate::telemetry::{self, Metrics};

/// Loads every configured issuer (certificates, keys, checks).
pub fn load_issuers(cfg: &Config) -> Result<Vec<Issuer>, String> {
    load_signing(cfg).map(|s| s.issuers)
}

/// The issuers, and the HSM pools that sign for some of them.
pub struct Signing {
    /// Every configured issuer.
    pub issuers: Vec<Issuer>,
    /// One pool per issuer with an `[issuer.signer]`.
    pub pools: Vec<Arc<SignerPool>>,
}

/// Loads every issuer; for those with an `[issuer.signer]`, connects the HSM pool first
/// (logging in once per token, checking each HSM's key against the certificate).
pub fn load_signing(cfg: &Config) -> Result<Signing, String> {
    let keys = cfg
        .issuers
        .iter()
        .map(pki::ca_public_key)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    cfg.validate_issuer_keys(&keys).map_err(|e| e.to_string())?;
    let mut issuers = Vec::with_capacity(cfg.issuers.len());
    let mut pools = Vec::new();
    for ic in &cfg.issuers {
        let Some(sc) = ic.ocsp_key.hsm() else {
            issuers.push(pki::load_issuer(ic, cfg.ocsp.responder_id).map_err(|e| e.to_string())?);
            continue;
        };
        let public_key = pki::signing_public_key(ic).map_err(|e| e.to_string())?;
        let pool = Arc::new(
            start_pool(cfg, &ic.name, sc, public_key)
                .map_err(|e| format!("issuer {}: {e}", ic.name))?,
        );
        issuers.push(
            pki::load_issuer_with_signer(ic, cfg.ocsp.responder_id, pool.clone())
                .map_err(|e| e.to_string())?,
        );
        pools.push(pool);
    }
    Ok(Signing { issuers, pools })
}

/// Connects the CRL signer pool of every issuer with an `[issuer.crl_signer]`, checking each
/// HSM's key against the **CA** certificate (CRLs are signed by the CA key, never by a
/// delegated responder's). Each pool is labelled `<issuer>/crl` in logs and metrics. Only
/// nodes that publish CRLs need this (`crl.publish`, `vigil crl publish`, `check-config`).
pub fn start_crl_pools(cfg: &Config) -> Result<CrlPools, String> {
    let mut pools = CrlPools::new();
    for ic in &cfg.issuers {
        let Some(sc) = ic.crl_key.as_ref().and_then(KeySource::hsm) else {
            continue;
        };
        let fail = |e: String| {
            format!(
                "issuer {}: crl_signer (must hold the key of the CA certificate {}): {e}",
                ic.name,
                ic.certificate.display()
            )
        };
        let ca_key = pki::ca_public_key(ic).map_err(|e| e.to_string())?;
        let pool = start_pool(cfg, &crl_pool_label(&ic.name), sc, ca_key).map_err(fail)?;
        pools.insert(ic.name.clone(), Arc::new(pool));
    }
    Ok(pools)
}

/// The name of an issuer's CRL signer pool in logs and in the `issuer` label of its metrics.
pub fn crl_pool_label(issuer: &str) -> String {
    format!("{issuer}/crl")
}

/// The `[[hsm]]` entries an issuer names, in its order.
pub fn issuer_hsms<'a>(
    cfg: &'a Config,
    sc: &crate::config::IssuerSignerConfig,
) -> Vec<&'a crate::config::HsmConfig> {
    sc.hsm
        .iter()
        .filter_map(|n| cfg.hsms.iter().find(|h| &h.name == n))
        .collect()
}

/// Starts the pool of the HSMs `sc` names (and its lab fallback), whose key must be
/// `public_key` (a certificate's subjectPublicKey); `label` names the pool in logs and metrics.
pub fn start_pool(
    cfg: &Config,
    label: &str,
    sc: &crate::config::IssuerSignerConfig,
    public_key: Vec<u8>,
) -> Result<SignerPool, String> {
    let fallback = match &sc.danger_software_fallback {
        Some(p) => Some(SoftwareSigner::from_pem_file(p).map_err(|e| e.to_string())?),
        None => None,
    };
    let members = issuer_hsms(cfg, sc).into_iter().map(key_spec).collect();
    SignerPool::start(
        label,
        public_key,
        members,
        fallback,
        PoolSettings::from_config(&cfg.hsm_pool),
    )
}

/// For the embedded default: makes the demo PKI on first start and journals its events.
pub fn prepare_embedded(cfg: &Config) -> Result<(), String> {
    if !cfg.embedded {
        return Ok(());
    }
    let events = crate::demo::ensure_demo_pki(&cfg.data_dir, &cfg.status.origin)?;
    if !events.is_empty() {
        JournalWriter::open(cfg.journal_path())
            .and_then(|mut w| w.append(&events))
            .map_err(|e| e.to_string())?;
        tracing::info!(dir = %cfg.data_dir.display(), "made the demo PKI");
    }
    Ok(())
}

/// Reads the whole journal into `view`, warning about a torn tail or corruption.
pub fn replay_journal(
    reader: &mut JournalReader,
    view: &StatusView,
    metrics: &Metrics,
) -> Result<usize, String> {
    let batch = reader.read_new().map_err(|e| e.to_string())?;
    if batch.torn_tail {
        tracing::warn!(
            offset = reader.offset(),
            "journal ends in an incomplete record; it is ignored (the next write truncates it)"
        );
    }
    if let Some(at) = batch.corrupt_at {
        tracing::error!(
            offset = at,
            "journal is corrupt at this offset; records after it are not read"
        );
    }
    metrics
        .events_undecodable
        .increment(batch.undecodable as u64);
    for e in &batch.events {
        view.apply(e);
    }
    Ok(batch.events.len())
}

/// Runs the server until SIGTERM / SIGINT. Prints the URL (and, for the embedded default, an
/// `openssl ocsp` command) on stdout once listening.
pub async fn serve(cfg: Config, clock: Clock) -> Result<(), String> {
    let cfg = Arc::new(cfg);
    prepare_embedded(&cfg)?;
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

    let mut reader = None;
    let mut feed_start = None;
    let view = match &cfg.feed {
        None => {
            let view = Arc::new(StatusView::new());
            let journal_path = cfg.journal_path();
            let mut r = JournalReader::new(&journal_path);
            let n = replay_journal(&mut r, &view, &metrics)?;
            tracing::info!(events = n, certificates = view.len(), journal = %journal_path.display(), "status view loaded");
            readiness.view_loaded.store(true, Ordering::Relaxed);
            reader = Some(r);
            view
        }
        Some(_) => {
            let (view, cursors, fresh_at_ms) = load_checkpoint(&cfg).await;
            if fresh_at_ms > 0 {
                // The checkpoint answers until the feed is back (and readiness says how stale).
                readiness.view_loaded.store(true, Ordering::Relaxed);
            }
            feed_start = Some((cursors, fresh_at_ms));
            Arc::new(view)
        }
    };

    let now = clock.now();
    let signer_not_after: Vec<(String, i64)> = issuers
        .iter()
        .map(|i| (i.name.clone(), i.signing_certificate_not_after()))
        .collect();
    set_signer_expiry(&signer_not_after, now);
    for (name, not_after) in &signer_not_after {
        let left = not_after - now;
        if left < 14 * 86400 {
            tracing::warn!(issuer = %name, days = left / 86400, "the signing certificate expires soon");
        }
    }
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
    let responder = Arc::new(Responder::new(&cfg, issuers, &view, metrics.clone()));
    // Every status change, from the journal or the feed, goes through this one applier.
    let applier = Arc::new(Applier::new(view.clone(), Some(responder.clone())));
    applier.wake_crls_with(revoked.clone());
    let feed_running = match (&cfg.feed, feed_start) {
        (Some(feed), Some(start)) => {
            Some(start_feed(&cfg, feed, start, &applier, &readiness, &clock)?)
        }
        _ => None,
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

    let listener = TcpListener::bind(cfg.server.listen)
        .await
        .map_err(|e| format!("server.listen {}: {e}", cfg.server.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;

    let writer =
        Arc::new(crate::writer::StatusWriter::from_config(&cfg).map_err(|e| e.to_string())?);
    if let Some(admin) = &cfg.admin {
        let admin_listener = TcpListener::bind(admin.listen)
            .await
            .map_err(|e| format!("admin.listen {}: {e}", admin.listen))?;
        let admin_state = crate::http::admin::AdminState::new(
            &cfg,
            admin,
            writer.clone(),
            view.clone(),
            responder.clone(),
            clock.clone(),
        )
        .map_err(|e| e.to_string())?;
        let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;
        let scheme = if admin.tls.is_some() { "https" } else { "http" };
        println!("vigil admin API on {scheme}://{admin_addr}/");
        tokio::spawn(crate::http::admin::serve(
            admin_listener,
            Arc::new(admin_state),
        ));
    }

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
        let clock = clock.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                h.run_upkeep();
                // A gauge of seconds left goes stale unless it is set again: the expiry alert
                // of the Helm chart reads it from replicas that run for weeks.
                set_signer_expiry(&signer_not_after, clock.now());
            }
        });
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
        .map_err(|e| e.to_string())?;
    if let Some(feed) = feed_running {
        feed.checkpoint(&view).await;
    }
    tracing::info!("stopped");
    Ok(())
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
) -> Result<Arc<RunningFeed>, String> {
    let view = &applier.view;
    let regions = region::regions(cfg).map_err(|e| e.to_string())?;
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
            tokio::time::sleep(Duration::from_secs(1)).await;
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
        println!("try: openssl ocsp -issuer {d}/ca.pem -cert {cert} -url {base}{} -CAfile {d}/ca.pem -resp_text", cfg.server.ocsp_prefix);
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
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

/// `vigil crl publish`: connects the CRL signers (keys and HSM pools), builds the status view
/// from the journal, then publishes every issuer's complete CRLs once (no lease) into every region's Redis, or the data directory.
pub async fn publish_crls(cfg: Config, clock: Clock) -> Result<Vec<String>, String> {
    prepare_embedded(&cfg)?;
    let issuers = load_issuers(&cfg)?;
    let crl_pools = start_crl_pools(&cfg)?;
    let view = if cfg.feed.is_some() {
        view_from_regions(&cfg, &clock).await?
    } else {
        let view = Arc::new(StatusView::new());
        let metrics = Metrics::new();
        replay_journal(&mut JournalReader::new(cfg.journal_path()), &view, &metrics)?;
        view
    };
    let crl = CrlService::new(Arc::new(cfg), &issuers, true, &crl_pools, clock)?;
    crl.publish_once(view).await
}

/// With `[feed]`: the join of every reachable region's snapshot, for one-shot commands. Fails
/// when no region is reachable; warns when some are not (their writes that missed the others
/// may be absent until repair).
pub async fn view_from_regions(cfg: &Config, clock: &Clock) -> Result<Arc<StatusView>, String> {
    let regions = region::regions(cfg).map_err(|e| e.to_string())?;
    let names: Vec<String> = regions.iter().map(|r| r.name.clone()).collect();
    let health = Arc::new(FeedHealth::new(&names, Duration::from_secs(60)));
    let view = Arc::new(StatusView::new());
    let applier = Arc::new(Applier::new(view.clone(), None));
    let state = FeedState::new(
        applier,
        health.clone(),
        None,
        HashMap::new(),
        None,
        clock.clone(),
    );
    let mut failed = Vec::new();
    for r in &regions {
        let Some(h) = health.region(&r.name) else {
            continue;
        };
        let result = async {
            let mut c = r.connect(Some(r.write_timeout())).await?;
            let epoch = consume::ensure_epoch(r, &mut c).await?;
            consume::bootstrap(&state, r, h, &mut c, &epoch).await
        }
        .await;
        if let Err(e) = result {
            failed.push((r.name.clone(), e.to_string()));
        }
    }
    let failures = crate::feed::publish::describe_failures(&failed);
    if failed.len() == regions.len() {
        return Err(format!("no feed region reachable: {failures}"));
    }
    if !failed.is_empty() {
        tracing::warn!(regions = %failures, "some feed regions are unreachable; using the others");
    }
    Ok(view)
}

/// The issuer id of a configured issuer, from its CA certificate only (for CLI commands).
pub fn issuer_id(cfg: &Config, name: &str) -> Result<crate::status::IssuerId, String> {
    use der::Encode;
    let ic = cfg.issuers.iter().find(|i| i.name == name).ok_or_else(|| {
        let names: Vec<&str> = cfg.issuers.iter().map(|i| i.name.as_str()).collect();
        format!(
            "no issuer named {name:?} (configured: {})",
            names.join(", ")
        )
    })?;
    let cert = pki::read_certificate(&ic.certificate).map_err(|e| e.to_string())?;
    let subject = cert
        .tbs_certificate
        .subject
        .to_der()
        .map_err(|e| e.to_string())?;
    Ok(crate::ocsp::IssuerHashes::new(
        &subject,
        cert.tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes(),
    )
    .id)
}
