//! The CRL adapters around the pure [`crate::crl`] core: what each replica serves
//! ([`catalog`]), the Redis store with its lease and fencing ([`redis_store`]), the publishing
//! pass ([`publisher`]), and the tasks `vigil serve` runs:
//!
//! - **refresher** (every replica): every `crl.refresh`, asks each region's Redis for the
//!   stored numbers, fetches any CRL newer than the one served, verifies it and serves it,
//!   keeping a copy on disk. Without Redis it re-reads the data directory instead.
//! - **lease** (replicas with `crl.publish` and a CRL signer — a `crl_key` or a `crl_signer`
//!   HSM pool, see [`crl_signer`]): takes and renews the lease of its region every third of
//!   `crl.lease_ttl`; the lease's fencing token goes with every store.
//! - **publisher** (while leader; always without Redis): complete CRLs every `crl.interval`,
//!   and after a revocation (the journal tailer's notification) within `crl.publish_delay`: it
//!   waits a quarter of the delay to gather further revocations, then publishes delta CRLs
//!   (when enabled) or complete ones. Building and signing run on a blocking thread, never
//!   on an async worker: a signature through an HSM pool blocks for a PKCS#11 round trip.

pub mod catalog;
pub mod error;
pub mod publisher;
pub mod redis_store;

use crate::clock::Clock;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{Config, IssuerConfig, KeySource};
use crate::crl::{CrlId, CrlIssuer};
use crate::feed::health::FeedHealth;
use crate::limits::{CRL_SIGNING_QUEUE, CRL_SIGNING_THREADS};
use crate::pki::Issuer;
use crate::signer::service::{ServiceLimits, SigningService};
use crate::signer::{Signer, SignerPool, SoftwareSigner};
use crate::status::StatusView;
use crate::telemetry;
use catalog::{Catalog, IssuerCrls, ServedCrl};
pub use error::{CrlServiceError, FetchError};
use publisher::PublishError;
use publisher::{Mode, PublishIssuer, Publisher, Refusals};
use redis_store::{Fence, Region, StoreOutcome};

/// Everything CRL-related one process runs.
pub struct CrlService {
    /// What this replica serves.
    pub catalog: Arc<Catalog>,
    regions: Arc<Vec<Region>>,
    publisher: Option<Arc<Publisher>>,
    config: Arc<Config>,
    clock: Clock,
}

/// The CRL signer pools started from `[issuer.crl_signer]`, by issuer name.
pub type CrlPools = BTreeMap<String, Arc<SignerPool>>;

/// The key that signs an issuer's CRLs: its `crl_key`, or its `crl_signer` pool (started
/// beforehand, in `pools`). Either must be the key of the CA certificate. The one place a CRL
/// signer is chosen.
pub fn crl_signer(
    ic: &IssuerConfig,
    ca: &Issuer,
    pools: &CrlPools,
) -> Result<Option<Arc<dyn Signer>>, CrlServiceError> {
    let ca_key = ca
        .certificate
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    let (signer, what): (Arc<dyn Signer>, String) = match &ic.crl_key {
        Some(KeySource::File(path)) => {
            let signer =
                SoftwareSigner::from_pem_file(path).map_err(|source| CrlServiceError::CrlKey {
                    issuer: ic.name.clone(),
                    source,
                })?;
            (Arc::new(signer), format!("crl_key {}", path.display()))
        }
        Some(KeySource::Hsm(_)) => {
            let pool = pools
                .get(&ic.name)
                .ok_or_else(|| CrlServiceError::PoolNotStarted {
                    issuer: ic.name.clone(),
                })?;
            (pool.clone(), format!("crl_signer ({})", pool.describe()))
        }
        None => return Ok(None),
    };
    // The pool checked every HSM's key against the CA certificate already; this is the check
    // for the key file, and the invariant for both.
    if signer.public_key() != ca_key {
        return Err(CrlServiceError::NotCaKey {
            issuer: ic.name.clone(),
            what,
        });
    }
    Ok(Some(signer))
}

impl CrlService {
    /// Sets up the catalog (loading the disk copies), the regions and, when `publishing`, the
    /// publisher for every issuer with a `crl_key` or a `crl_signer` (whose pools, started
    /// by the caller, are in `pools`). Blocking (reads keys and files).
    pub fn new(
        cfg: Arc<Config>,
        issuers: &[Issuer],
        publishing: bool,
        pools: &CrlPools,
        clock: Clock,
    ) -> Result<Self, CrlServiceError> {
        let mut crl_issuers = Vec::new();
        let mut publish = Vec::new();
        for issuer in issuers {
            let ic = cfg
                .issuers
                .iter()
                .find(|c| c.name == issuer.name)
                .ok_or_else(|| CrlServiceError::NotConfigured {
                    issuer: issuer.name.clone(),
                })?;
            let ci = match CrlIssuer::from_certificate(&issuer.name, &issuer.certificate) {
                Ok(ci) => CrlIssuer {
                    allow_hold: issuer.allow_hold,
                    ..ci
                },
                Err(e) if ic.crl_key.is_none() => {
                    tracing::warn!(issuer = %issuer.name, error = %e, "no CRLs for this issuer");
                    continue;
                }
                Err(source) => {
                    return Err(CrlServiceError::Issuer {
                        issuer: issuer.name.clone(),
                        source,
                    });
                }
            };
            let settings = cfg.crl_of(&issuer.name);
            if publishing && let Some(signer) = crl_signer(ic, issuer, pools)? {
                publish.push(PublishIssuer {
                    issuer: ci.clone(),
                    issuer_id: issuer.hashes.id,
                    signing: SigningService::new(
                        signer,
                        "vigil-crlsign",
                        ServiceLimits {
                            threads: CRL_SIGNING_THREADS,
                            queue: CRL_SIGNING_QUEUE,
                        },
                    ),
                    sharding: settings.sharding(),
                    deltas: settings.delta,
                    validity: settings.validity.as_secs() as i64,
                    interval: settings.interval.as_secs() as i64,
                    base_url: settings.base_url.clone(),
                });
            }
            crl_issuers.push(IssuerCrls {
                issuer: ci,
                sharding: settings.sharding(),
                deltas: settings.delta,
                base_url: settings.base_url.clone(),
                warn_bytes: settings.warn_bytes,
                interval: settings.interval.as_secs() as i64,
            });
        }
        let c = &cfg.crl;
        let catalog = Arc::new(Catalog::new(crl_issuers, cfg.data_dir.join("crl")));
        let n = catalog.load_disk();
        if n > 0 {
            tracing::info!(crls = n, dir = %catalog.dir().display(), "serving CRLs from the disk copies");
        }
        let regions = cfg
            .regions
            .iter()
            .map(|r| Region::from_config(r, c.redis_timeout))
            .collect::<Result<Vec<_>, _>>()?;
        let regions = Arc::new(regions);
        let publisher = (!publish.is_empty()).then(|| {
            Arc::new(Publisher {
                issuers: publish,
                catalog: catalog.clone(),
                regions: regions.clone(),
                refusals: Arc::new(Refusals::default()),
                clock: clock.clone(),
            })
        });
        Ok(CrlService {
            catalog,
            regions,
            publisher,
            config: cfg,
            clock,
        })
    }

    /// Every served CRL's URL under `base`, for the start-up message.
    pub fn urls(&self, base: &str) -> Vec<String> {
        self.catalog
            .ids()
            .iter()
            .filter(|id| !id.delta)
            .map(|id| id.url(base))
            .collect()
    }

    /// Starts the refresher, lease and publisher tasks. Before returning it refreshes once from
    /// Redis and, without Redis, publishes any CRL that is due, so the first start serves CRLs.
    ///
    /// With `complete` (the feed's health), CRLs are built only while the view covers every
    /// reachable region ([`FeedHealth::complete`]): a replica that has not loaded the whole
    /// state — a fresh one still bootstrapping, one trimmed past — publishes nothing.
    pub async fn start(
        self: &Arc<Self>,
        view: Arc<StatusView>,
        revoked: Arc<Notify>,
        complete: Option<Arc<FeedHealth>>,
    ) {
        let rt = runtime().unwrap_or_else(tokio::runtime::Handle::current);
        {
            let me = self.clone();
            let first = rt.spawn(async move { refresh_once(&me.catalog, &me.regions).await });
            let _ = first.await;
        }
        let (fence_tx, fence_rx) = watch::channel(None::<Fence>);
        // The refresher tells the publisher when a region keeps holding an older CRL.
        let lagging = Arc::new(Notify::new());
        if let Some(publisher) = &self.publisher {
            if self.regions.is_empty() {
                if self.full_due_in(&HashMap::new()).is_zero() {
                    log_results(&publisher.publish(&view, Mode::Full, None).await);
                }
            } else if let Some(region) = self.config.lease_region() {
                let idx = self
                    .regions
                    .iter()
                    .position(|r| r.name == region.name)
                    .unwrap_or(0);
                rt.spawn(run_lease(
                    self.regions.clone(),
                    idx,
                    self.config.crl.lease_ttl,
                    fence_tx,
                ));
            }
            rt.spawn(run_publisher(
                self.clone(),
                publisher.clone(),
                view,
                revoked,
                lagging.clone(),
                fence_rx,
                complete,
            ));
        }
        rt.spawn(run_refresher(self.clone(), lagging));
    }

    /// Complete CRLs refused for dropping entries (empty on a node that does not publish).
    pub fn refusals(&self) -> Arc<Refusals> {
        self.publisher
            .as_ref()
            .map_or_else(Default::default, |p| p.refusals.clone())
    }

    /// `vigil crl publish`: refreshes from Redis, publishes complete CRLs (and empty deltas)
    /// once with no lease, and reports per CRL. An error when a CRL failed its lint or no
    /// target stored it.
    pub async fn publish_once(
        &self,
        view: Arc<StatusView>,
    ) -> Result<Vec<String>, CrlServiceError> {
        let Some(publisher) = &self.publisher else {
            return Err(CrlServiceError::NothingToPublish);
        };
        refresh_once(&self.catalog, &self.regions).await;
        let results = publisher.publish(&view, Mode::Full, None).await;
        let mut lines = Vec::new();
        let mut failed = Vec::new();
        for r in results {
            match r {
                Ok(p) => {
                    let targets: Vec<String> = p
                        .results
                        .iter()
                        .map(|(t, r)| match r {
                            Ok(o) => format!("{t}: {}", o.label()),
                            Err(e) => format!("{t}: error ({e})"),
                        })
                        .collect();
                    if !p.stored() {
                        failed.push(p.id.path());
                    }
                    lines.push(format!(
                        "{}: CRLNumber {}, {} entries; {}",
                        p.id.path(),
                        p.number,
                        p.entries,
                        targets.join(", ")
                    ));
                }
                Err(e) => {
                    let e = e.to_string();
                    lines.push(e.clone());
                    failed.push(e);
                }
            }
        }
        if failed.is_empty() {
            Ok(lines)
        } else {
            Err(CrlServiceError::NotPublished {
                report: lines,
                failed,
            })
        }
    }

    /// Time until the complete CRLs of some published issuer are due ([`full_due_at`]).
    fn full_due_in(&self, attempted: &HashMap<String, i64>) -> Duration {
        let Some(p) = &self.publisher else {
            return Duration::MAX;
        };
        let now = self.clock.now();
        let due = p
            .issuers
            .iter()
            .map(|pi| full_due_at(&self.catalog, pi, now, attempted.get(&pi.issuer.name)))
            .min()
            .unwrap_or(i64::MAX);
        Duration::from_secs((due - now).max(0) as u64)
    }
}

/// When the complete CRLs of `pi` are next due, Unix seconds: its `interval` after the oldest
/// one served (now when one is missing), and not before `interval` after this leader's last
/// attempt (`attempted`), so an issuer whose publishing fails is not retried in a loop.
fn full_due_at(catalog: &Catalog, pi: &PublishIssuer, now: i64, attempted: Option<&i64>) -> i64 {
    let served = CrlId::all(&pi.issuer.name, &pi.sharding, false)
        .iter()
        .map(|id| {
            catalog
                .current(id)
                .map_or(now, |c| c.this_update.saturating_add(pi.interval))
        })
        .min()
        .unwrap_or(now);
    match attempted {
        Some(a) => served.max(a.saturating_add(pi.interval)),
        None => served,
    }
}

/// The CRL service's own runtime: one thread (`vigil-crl`) that drives the lease, the
/// publisher and the refresher, and with them the Redis connections they open. A CRL of a
/// million entries is 36 MB that every replica fetches and the leader stores; parsing such a
/// reply on the runtime that answers OCSP held one of its workers for milliseconds each time,
/// the answers queued there with it (cached-OCSP p99 during a mass revocation). The heavy work
/// (build, lint, verify) goes on to the background threads from here as before. None when the
/// thread or runtime cannot be made: the caller's runtime is used instead.
fn runtime() -> Option<tokio::runtime::Handle> {
    static RUNTIME: std::sync::LazyLock<Option<tokio::runtime::Handle>> = std::sync::LazyLock::new(
        || {
            let (tx, rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("vigil-crl".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => {
                            let _ = tx.send(Some(rt.handle().clone()));
                            rt.block_on(std::future::pending::<()>());
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "no runtime for the CRL service; it shares the server's");
                            let _ = tx.send(None);
                        }
                    }
                });
            match spawned {
                Ok(_) => rx.recv().ok().flatten(),
                Err(e) => {
                    tracing::error!(error = %e, "no thread for the CRL service; it shares the server's runtime");
                    None
                }
            }
        },
    );
    RUNTIME.clone()
}

/// Logs failures; true when some CRL did not reach every target (a region's store failed, or
/// a delta's base was not the complete CRL the region holds).
fn log_results(results: &[Result<publisher::Published, PublishError>]) -> bool {
    let mut missed = false;
    for r in results {
        match r {
            Err(e) => tracing::error!(error = %e, "CRL publishing failed"),
            // A region whose complete CRL is not the delta's base holds an older one (it was
            // restored or flushed): it needs the complete CRLs again, like a failed store.
            Ok(p) => {
                missed |= p
                    .results
                    .iter()
                    .any(|(_, r)| matches!(r, Err(_) | Ok(StoreOutcome::BaseMismatch)))
            }
        }
    }
    missed
}

/// After a pass in which a target missed a CRL, the complete CRLs are published again a second
/// later, then at doubling intervals up to this bound while a target keeps failing (each pass
/// builds and signs them again).
const CRL_STORE_RETRY_MAX: Duration = Duration::from_secs(60);

/// When the complete CRLs are published again after a pass in which a target missed one.
struct StoreRetry {
    first: Duration,
    next: Duration,
    /// Every issuer's complete CRLs are due at the next full pass, whatever their interval.
    forced: bool,
}

impl StoreRetry {
    /// A target missed a CRL (or holds an older one): every issuer's complete CRLs are due
    /// again after `next`, which doubles (up to [`CRL_STORE_RETRY_MAX`]) until a complete pass
    /// reaches every target.
    fn missed(&mut self, next_full: &mut Instant) {
        self.forced = true;
        *next_full = (*next_full).min(Instant::now() + self.next);
        self.next = (self.next * 2).min(CRL_STORE_RETRY_MAX);
    }

    /// A complete pass reached every target.
    fn reached_all(&mut self) {
        self.forced = false;
        self.next = self.first;
    }
}

/// Takes and renews the lease in `regions[idx]`; publishes the fence while held.
async fn run_lease(
    regions: Arc<Vec<Region>>,
    idx: usize,
    ttl: Duration,
    fence: watch::Sender<Option<Fence>>,
) {
    let holder = holder_id();
    let Some(region) = regions.get(idx) else {
        return;
    };
    let gauge = metrics::gauge!(telemetry::CRL_LEADER, "region" => region.name.clone());
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let held = match region.lease(&holder, ttl).await {
            Ok(Some(token)) => Some(Fence {
                region: region.name.clone(),
                token,
                lease_value: format!("{holder} {token}"),
            }),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "renewing the CRL publisher lease");
                None
            }
        };
        let before = fence.borrow().clone();
        if before != held {
            match &held {
                Some(f) => {
                    tracing::info!(region = %f.region, token = f.token, holder = %holder, "CRL publisher lease taken")
                }
                None => tracing::info!(region = %region.name, "CRL publisher lease not held"),
            }
            gauge.set(if held.is_some() { 1.0 } else { 0.0 });
            let _ = fence.send(held);
        }
    }
}

/// `pid{pid}-{random}`: unique per process, and names the process in logs.
fn holder_id() -> String {
    let mut b = [0u8; 6];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    format!("pid{}-{}", std::process::id(), crate::status::hex(&b))
}

async fn run_publisher(
    svc: Arc<CrlService>,
    publisher: Arc<Publisher>,
    view: Arc<StatusView>,
    revoked: Arc<Notify>,
    lagging: Arc<Notify>,
    mut fence: watch::Receiver<Option<Fence>>,
    complete: Option<Arc<FeedHealth>>,
) {
    let redis_mode = !svc.regions.is_empty();
    // Not complete: nothing is built, and the due CRL is tried again a second later.
    let incomplete = || match complete.as_ref().map(|h| h.complete()) {
        Some(Err(why)) => {
            metrics::counter!(telemetry::CRL_PUBLISH, "issuer" => "*", "target" => "none", "result" => "view_incomplete")
                .increment(1);
            tracing::warn!(why = %why, "not publishing CRLs from an incomplete status view");
            true
        }
        _ => false,
    };
    let retry = Duration::from_secs(1);
    let cfg = &svc.config.crl;
    let batch = cfg.publish_delay / 4;
    // Per issuer, when this leader last began publishing its complete CRLs.
    let mut attempted: HashMap<String, i64> = HashMap::new();
    let mut next_full = Instant::now() + svc.full_due_in(&attempted);
    let mut pending: Option<Instant> = None;
    // A region that missed a CRL (its store failed, or a delta's base was not the complete CRL
    // it holds) or that the refresher finds holding an older one (restored from an old copy,
    // flushed, with no store failing) would keep an old CRL until the next revocation or
    // interval: every complete CRL (and with it a fresh delta) is published again, whatever its
    // interval, after `store_retry`, which doubles while a region keeps missing them.
    let mut store_retry = StoreRetry {
        first: retry,
        next: retry,
        forced: false,
    };
    let far = || Instant::now() + Duration::from_secs(86400 * 365);
    loop {
        let leader = !redis_mode || fence.borrow().is_some();
        tokio::select! {
            r = fence.changed(), if redis_mode => {
                if r.is_err() {
                    return;
                }
                if fence.borrow().is_some() {
                    // A new leader publishes at once what is due (a failover, or the start),
                    // and, a publish delay later, what its predecessor may not have published:
                    // a leader killed or replaced between a revocation and its CRL leaves
                    // nothing behind that says a CRL is due, and a successor whose view came
                    // from a bootstrap was never woken for those revocations.
                    attempted.clear();
                    next_full = Instant::now() + svc.full_due_in(&attempted);
                    pending = Some(Instant::now() + cfg.publish_delay);
                }
            }
            () = revoked.notified() => {
                if pending.is_none() {
                    pending = Some(Instant::now() + batch);
                }
            }
            () = lagging.notified() => {
                // A region holds an older complete CRL than the one served (restored from an
                // old RDB or flushed while no store failed, so nothing else would say so until
                // the next revocation or interval): the complete CRLs are due again, with the
                // store retry's backoff.
                if leader {
                    store_retry.missed(&mut next_full);
                }
            }
            () = tokio::time::sleep_until(next_full) => {
                if leader && incomplete() {
                    next_full = Instant::now() + retry;
                    continue;
                }
                if leader {
                    let f = fence.borrow().clone();
                    let now = svc.clock.now();
                    let due: Vec<String> = publisher
                        .issuers
                        .iter()
                        .filter(|pi| store_retry.forced || full_due_at(&svc.catalog, pi, now, attempted.get(&pi.issuer.name)) <= now)
                        .map(|pi| pi.issuer.name.clone())
                        .collect();
                    let results = publisher
                        .publish_issuers(&view, Mode::Full, f.as_ref(), |pi| due.contains(&pi.issuer.name))
                        .await;
                    let missed = log_results(&results);
                    if due.len() == publisher.issuers.len() {
                        // every issuer's complete CRLs now list every revocation
                        pending = None;
                    }
                    for name in due {
                        attempted.insert(name, now);
                    }
                    next_full = Instant::now() + svc.full_due_in(&attempted).max(retry);
                    if missed {
                        store_retry.missed(&mut next_full);
                    } else {
                        store_retry.reached_all();
                    }
                } else {
                    next_full = Instant::now() + svc.full_due_in(&attempted).max(retry);
                }
            }
            () = tokio::time::sleep_until(pending.unwrap_or_else(far)), if pending.is_some() => {
                if leader && incomplete() {
                    pending = Some(Instant::now() + retry);
                    continue;
                }
                pending = None;
                if leader {
                    let f = fence.borrow().clone();
                    if log_results(&publisher.publish(&view, Mode::Delta, f.as_ref()).await) {
                        store_retry.missed(&mut next_full);
                    }
                }
            }
        }
    }
}

/// A region's Redis holding an older complete CRL of a scope than this replica serves (or
/// none): restored from an old copy, flushed, or missed by a store that did not fail.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lagging {
    /// The region.
    pub region: String,
    /// The CRL's path.
    pub path: String,
    /// The number the region holds (`None`: no CRL of the scope at all).
    pub held: Option<u64>,
}

/// Refresh rounds in a row a region must lag with the same number before the publisher is
/// told: a store in flight (one region written, the next not yet) is not a lag.
const LAG_ROUNDS: u32 = 2;

/// The longest wait, in refresh rounds, between two reports of one unchanging lag: the reports
/// go out at doubling intervals, so a region a publish cannot bring up to date (fenced, not
/// the leader's to write) does not have the complete CRLs re-signed every round.
const LAG_REPORT_MAX_ROUNDS: u32 = 64;

/// Which lags to report this round: each lag's rounds in a row are counted in `seen`; one is
/// reported at [`LAG_ROUNDS`] rounds, then at doubling counts up to every
/// [`LAG_REPORT_MAX_ROUNDS`]. Lags gone this round are forgotten.
fn lags_to_report(seen: &mut HashMap<Lagging, u32>, now: Vec<Lagging>) -> Vec<Lagging> {
    let mut next = HashMap::with_capacity(now.len());
    let mut report = Vec::new();
    for lag in now {
        let rounds = seen.get(&lag).copied().unwrap_or(0) + 1;
        let due = rounds >= LAG_ROUNDS && {
            let since = rounds - LAG_ROUNDS;
            if since < LAG_REPORT_MAX_ROUNDS {
                since == 0 || since.is_power_of_two()
            } else {
                since.is_multiple_of(LAG_REPORT_MAX_ROUNDS)
            }
        };
        if due {
            report.push(lag.clone());
        }
        next.insert(lag, rounds);
    }
    *seen = next;
    report
}

async fn run_refresher(svc: Arc<CrlService>, lagging: Arc<Notify>) {
    let mut seen = HashMap::new();
    loop {
        tokio::time::sleep(svc.config.crl.refresh).await;
        let lags = refresh_once(&svc.catalog, &svc.regions).await;
        let report = lags_to_report(&mut seen, lags);
        if !report.is_empty() {
            for lag in &report {
                metrics::counter!(telemetry::CRL_REGION_LAGGING, "region" => lag.region.clone())
                    .increment(1);
                tracing::warn!(region = %lag.region, crl = %lag.path, held = ?lag.held, "a region holds an older CRL than this replica serves");
            }
            // A leader publishes the complete CRLs again (and with them the region's copy).
            lagging.notify_one();
        }
        svc.catalog.update_age_gauges(svc.clock.now());
    }
}

/// Brings the catalog up to the newest verified CRLs: from every region's Redis, or without
/// Redis from the data directory. Returns the regions that answered holding an older complete
/// CRL of some scope than the one now served (none without Redis).
pub async fn refresh_once(catalog: &Arc<Catalog>, regions: &Arc<Vec<Region>>) -> Vec<Lagging> {
    if regions.is_empty() {
        let c = catalog.clone();
        let _ = tokio::task::spawn_blocking(move || c.load_disk()).await;
        return Vec::new();
    }
    let ids = Arc::new(catalog.ids());
    let mut set = JoinSet::new();
    for i in 0..regions.len() {
        let (regions, ids) = (regions.clone(), ids.clone());
        // i < regions.len(): the loop's range (here and below, where i comes from this set).
        set.spawn(async move { (i, regions[i].numbers(&ids).await) });
    }
    // For each CRL, the regions holding a newer number than served, best first.
    let mut offers: Vec<Vec<(u64, usize)>> = vec![Vec::new(); ids.len()];
    // Each region that answered, with the number it holds of each CRL.
    let mut held: Vec<(usize, Vec<Option<u64>>)> = Vec::new();
    while let Some(joined) = set.join_next().await {
        let Ok((i, r)) = joined else { continue };
        match r {
            Ok(numbers) => {
                for (offer, n) in offers.iter_mut().zip(&numbers) {
                    if let Some(n) = *n {
                        offer.push((n, i));
                    }
                }
                held.push((i, numbers));
            }
            Err(e) => {
                metrics::counter!(telemetry::CRL_REFRESH_ERRORS, "source" => regions[i].name.clone())
                    .increment(1);
                tracing::debug!(error = %e, "CRL refresh");
            }
        }
    }
    for (id, mut offer) in ids.iter().zip(offers) {
        let served = catalog.current(id).map_or(0, |c| c.number);
        offer.retain(|(n, _)| *n > served);
        offer.sort_by(|a, b| b.cmp(a));
        for (n, i) in offer {
            match fetch_verified(catalog, &regions[i], id, n).await {
                Ok(()) => break,
                Err(e) => {
                    metrics::counter!(telemetry::CRL_REFRESH_ERRORS, "source" => regions[i].name.clone())
                        .increment(1);
                    tracing::warn!(crl = %id.path(), region = %regions[i].name, error = %e, "CRL refresh");
                }
            }
        }
    }
    // Against what is served now (newer copies fetched above included).
    let mut lagging = Vec::new();
    for (i, numbers) in held {
        for (id, n) in ids.iter().zip(numbers) {
            let served = catalog.current(id).map(|c| c.number);
            if !id.delta && served.is_some_and(|s| n.is_none_or(|n| n < s)) {
                lagging.push(Lagging {
                    region: regions[i].name.clone(),
                    path: id.path(),
                    held: n,
                });
            }
        }
    }
    lagging
}

async fn fetch_verified(
    catalog: &Arc<Catalog>,
    region: &Region,
    id: &CrlId,
    number: u64,
) -> Result<(), FetchError> {
    let Some((n, der)) = region.fetch(id).await? else {
        return Err(FetchError::Vanished);
    };
    if n < number {
        return Err(FetchError::WentBack {
            offered: number,
            fetched: n,
        });
    }
    let (catalog, id) = (catalog.clone(), id.clone());
    crate::background::run(move || {
        let info = catalog
            .verify(&id, &der, Some(n))
            .map_err(FetchError::Verify)?;
        let crl = ServedCrl::new(id, bytes::Bytes::from(der), &info);
        catalog
            .install(crl, true)
            .map(|_| ())
            .map_err(FetchError::Disk)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lag(held: Option<u64>) -> Lagging {
        Lagging {
            region: "a".into(),
            path: "demo.crl".into(),
            held,
        }
    }

    #[test]
    fn a_lag_is_reported_from_its_second_round_then_at_doubling_intervals() {
        let mut seen = HashMap::new();
        let mut reported_at = Vec::new();
        for round in 1..=200u32 {
            if !lags_to_report(&mut seen, vec![lag(Some(7))]).is_empty() {
                reported_at.push(round);
            }
        }
        // once a store in flight would have landed, then 1, 2, 4, … 64 rounds apart
        assert_eq!(
            reported_at,
            [2, 3, 4, 6, 10, 18, 34, 66, 130, 194],
            "{reported_at:?}"
        );
    }

    #[test]
    fn a_lag_that_changes_or_goes_starts_again() {
        let mut seen = HashMap::new();
        assert!(lags_to_report(&mut seen, vec![lag(Some(7))]).is_empty());
        // the region moved on (a store landed), but still behind: a new lag
        assert!(lags_to_report(&mut seen, vec![lag(Some(8))]).is_empty());
        assert_eq!(
            lags_to_report(&mut seen, vec![lag(Some(8))]),
            [lag(Some(8))]
        );
        // caught up: forgotten
        assert!(lags_to_report(&mut seen, vec![]).is_empty());
        assert!(seen.is_empty());
        assert!(lags_to_report(&mut seen, vec![lag(None)]).is_empty());
        assert_eq!(lags_to_report(&mut seen, vec![lag(None)]), [lag(None)]);
    }
}
