//! A pool of HSMs holding the same key, as HSM HA groups do: each member has a circuit
//! breaker and a monitor thread; signing goes to the first member in service and fails over
//! to the next; a member that fails is taken out and brought back only by a health probe.
//!
//! Each member is a [`HostedKey`]: its key runs in a `vigil pkcs11-host` process of its own
//! (see [`super::pkcs11::host`]). Signatures are sent from the caller's thread (a blocking
//! thread of the answer path), one session each. A call that has not come back after
//! `sign_timeout` marks its HSM as stuck: the next signature takes it out of service and goes
//! to the next HSM, and the pool's
//! [`Signer::timeout`] tells the answer path to stop waiting for the stuck call and ask again.
//! Probes and reconnection run on short-lived threads with a deadline, so a call that never
//! returns cannot hold an HSM out of service for good.
//!
//! Per member:
//!
//! - **closed** (in service): live signatures go to it; its monitor makes a test signature
//!   every `probe_interval` and verifies it against the certificate's key. A lost device,
//!   session or connection, a probe that fails, or `breaker_failures` failed signatures in a
//!   row open the breaker.
//! - **open** (out of service): no live traffic. The monitor reconnects (re-initialising the
//!   module after `CKR_DEVICE_ERROR`, `CKR_DEVICE_REMOVED`, `CKR_SESSION_HANDLE_INVALID`,
//!   `CKR_CRYPTOKI_NOT_INITIALIZED` or a lost connection) with exponential backoff between
//!   `reconnect_backoff_min` and `reconnect_backoff_max`, then probes; a verified probe closes
//!   the breaker.
//! - **failed**: the token rejected the PIN, or holds the wrong key. Out until restart: a
//!   wrong PIN is never retried.
//!
//! With no member in service, [`Signer::sign`] returns [`SignError::Unavailable`] at once, so
//! the answer path serves cached responses until their nextUpdate, then `tryLater`. The
//! optional software key (`danger_software_fallback`, labs only) signs only then.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};

use super::pkcs11::{
    HostedKey, HsmError, KeyDescription, KeySelector, KeySpec, PinError, PinSource, RsaMechanism,
    TokenSelector, read_pin,
};
use super::{SignError, SignatureAlgorithm, Signer, SoftwareSigner};
use crate::config::{self, HsmConfig, HsmPoolConfig, HsmRsaMechanism};
use crate::telemetry;

/// Timing and thresholds of a pool (`[hsm_pool]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Time between health probes of a member in service.
    pub probe_interval: Duration,
    /// Failed signatures in a row that take a member out of service.
    pub breaker_failures: u32,
    /// First wait before reconnecting a member out of service; doubles per failed attempt.
    pub reconnect_backoff_min: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_backoff_max: Duration,
    /// How long a signature waits for a free session when every member in service is busy.
    pub session_wait: Duration,
    /// How long one HSM may take to answer before the signature fails over to the next and
    /// the HSM is taken out of service (a network HSM that stops answering without closing
    /// the connection).
    pub sign_timeout: Duration,
}

impl PoolSettings {
    /// From the `[hsm_pool]` table.
    pub fn from_config(c: &HsmPoolConfig) -> Self {
        PoolSettings {
            probe_interval: c.probe_interval,
            breaker_failures: c.breaker_failures,
            reconnect_backoff_min: c.reconnect_backoff_min,
            reconnect_backoff_max: c.reconnect_backoff_max,
            session_wait: c.session_wait,
            sign_timeout: c.sign_timeout,
        }
    }
}

/// The key spec and PIN source of one `[[hsm]]` entry.
pub fn key_spec(h: &HsmConfig) -> (KeySpec, PinSource) {
    let spec = KeySpec {
        name: h.name.clone(),
        module: h.module.clone(),
        module_env: h.module_env.clone(),
        token: match &h.token {
            config::TokenSelector::Label(l) => TokenSelector::Label(l.clone()),
            config::TokenSelector::Slot(s) => TokenSelector::Slot(*s),
        },
        key: KeySelector {
            label: h.key.label().map(str::to_owned),
            id: h.key.id().map(<[u8]>::to_vec),
        },
        sessions: h.sessions,
        rsa_mechanism: match h.rsa_mechanism {
            HsmRsaMechanism::Auto => RsaMechanism::Auto,
            HsmRsaMechanism::Sha256RsaPkcs => RsaMechanism::Sha256RsaPkcs,
            HsmRsaMechanism::RsaPkcs => RsaMechanism::RsaPkcs,
        },
    };
    let pin = match &h.pin {
        config::PinSource::File(f) => PinSource::File(f.clone()),
        config::PinSource::Env(e) => PinSource::Env(e.clone()),
    };
    (spec, pin)
}

// === member ===

#[derive(Debug, Clone, PartialEq, Eq)]
enum BreakerState {
    Closed,
    Open,
    Failed,
}

impl BreakerState {
    fn gauge(&self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::Failed => 2.0,
        }
    }
}

struct Breaker {
    state: BreakerState,
    backoff: Duration,
    next_check: Instant,
    last_error: Option<String>,
    /// Reconnection attempts since the member went out (logs only the first few loudly).
    attempts: u32,
}

struct MemberMetrics {
    signatures: Counter,
    latency: Histogram,
    errors: [Counter; 4],
    probes_ok: Counter,
    probes_failed: Counter,
    breaker: Gauge,
}

impl MemberMetrics {
    fn new(hsm: &str) -> Self {
        let h = hsm.to_owned();
        MemberMetrics {
            signatures: metrics::counter!(telemetry::HSM_SIGNATURES, "hsm" => h.clone()),
            latency: metrics::histogram!(telemetry::HSM_SIGN_LATENCY, "hsm" => h.clone()),
            errors: ["pin", "config", "lost", "failed"]
                .map(|k| metrics::counter!(telemetry::HSM_ERRORS, "hsm" => h.clone(), "kind" => k)),
            probes_ok: metrics::counter!(telemetry::HSM_PROBES, "hsm" => h.clone(), "result" => "ok"),
            probes_failed: metrics::counter!(telemetry::HSM_PROBES, "hsm" => h.clone(), "result" => "error"),
            breaker: metrics::gauge!(telemetry::HSM_BREAKER_STATE, "hsm" => h),
        }
    }

    fn error(&self, e: &HsmError) {
        let i = match e {
            HsmError::Pin(_) => 0,
            HsmError::Config(_) => 1,
            HsmError::Lost(_) => 2,
            HsmError::Failed(_) => 3,
            HsmError::Busy(_) => return,
        };
        self.errors[i].increment(1);
    }
}

/// One HSM of a pool.
struct Member {
    key: HostedKey,
    in_service: AtomicBool,
    failures: AtomicU32,
    breaker: Mutex<Breaker>,
    wake: Condvar,
    metrics: MemberMetrics,
    /// Bumped each time the member is put in service: an error from a call made before
    /// that (a call that was stuck on the old connection) does not take it out again.
    epoch: AtomicU64,
    /// Probes and reconnections running on their own threads (some may be stuck in the
    /// module).
    checking: Arc<AtomicUsize>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent on every path; a panic elsewhere does not poison it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Member {
    fn name(&self) -> &str {
        self.key.name()
    }

    /// A live signature on the caller's thread: metrics and the breaker.
    fn sign(&self, message: &[u8], wait: Duration, shared: &Shared) -> Result<Vec<u8>, HsmError> {
        let started = Instant::now();
        let epoch = self.epoch.load(Ordering::Acquire);
        let r = self.key.sign(message, wait);
        match &r {
            Ok(_) => {
                self.metrics.signatures.increment(1);
                self.metrics.latency.record(started.elapsed().as_secs_f64());
                if self.failures.load(Ordering::Relaxed) != 0 {
                    self.failures.store(0, Ordering::Relaxed);
                }
            }
            Err(HsmError::Busy(_)) => {}
            Err(e) => {
                self.metrics.error(e);
                let open = match e {
                    HsmError::Failed(_) => {
                        self.failures.fetch_add(1, Ordering::Relaxed) + 1
                            >= shared.settings.breaker_failures
                    }
                    _ => true,
                };
                if open && self.epoch.load(Ordering::Acquire) == epoch {
                    self.take_out(e, shared);
                }
            }
        }
        r
    }

    /// Takes the member out if a call has been waiting for the token past `sign_timeout`.
    fn check_stuck(&self, shared: &Shared) -> bool {
        match self.key.oldest_call() {
            Some(age) if age > shared.settings.sign_timeout => {
                let e = HsmError::Lost(format!(
                    "a signature has had no answer for {age:.1?} (sign_timeout {:?})",
                    shared.settings.sign_timeout
                ));
                self.metrics.error(&e);
                self.take_out(&e, shared);
                true
            }
            _ => false,
        }
    }

    /// Opens the breaker (or fails the member for good on a permanent error).
    fn take_out(&self, e: &HsmError, shared: &Shared) {
        let mut b = lock(&self.breaker);
        if b.state == BreakerState::Failed {
            return;
        }
        self.in_service.store(false, Ordering::Release);
        let was = b.state.clone();
        b.last_error = Some(e.to_string());
        if e.is_permanent() {
            b.state = BreakerState::Failed;
            tracing::error!(hsm = self.name(), issuer = %shared.issuer, error = %e, "HSM taken out of service until restart");
        } else if was == BreakerState::Closed {
            b.state = BreakerState::Open;
            b.backoff = shared.settings.reconnect_backoff_min;
            b.next_check = Instant::now() + b.backoff;
            b.attempts = 0;
            tracing::warn!(hsm = self.name(), issuer = %shared.issuer, error = %e, "HSM out of service; failing over");
        }
        self.metrics.breaker.set(b.state.gauge());
        drop(b);
        shared.update_gauge();
        self.wake.notify_all();
    }

    fn put_in_service(&self, shared: &Shared, how: &str) {
        let mut b = lock(&self.breaker);
        if b.state == BreakerState::Failed {
            return;
        }
        let was = b.state.clone();
        b.state = BreakerState::Closed;
        b.backoff = shared.settings.reconnect_backoff_min;
        b.next_check = Instant::now() + shared.settings.probe_interval;
        b.last_error = None;
        b.attempts = 0;
        self.failures.store(0, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.in_service.store(true, Ordering::Release);
        self.metrics.breaker.set(0.0);
        drop(b);
        shared.update_gauge();
        if was != BreakerState::Closed {
            tracing::info!(hsm = self.name(), issuer = %shared.issuer, "HSM in service ({how})");
        }
    }

    /// A test signature, verified against the certificate's key.
    fn probe(&self, shared: &Shared) -> Result<(), HsmError> {
        let message = format!("vigil health probe {} {}", self.name(), probe_number());
        let d = self
            .key
            .description()
            .ok_or_else(|| HsmError::Lost("not connected".into()))?;
        let sig = self
            .key
            .sign(message.as_bytes(), shared.settings.session_wait)?;
        if !super::verify(d.algorithm, &shared.public_key, message.as_bytes(), &sig) {
            return Err(HsmError::Failed(
                "the probe signature does not verify with the certificate's key".into(),
            ));
        }
        Ok(())
    }
}

// === pool ===

struct Shared {
    issuer: String,
    public_key: Vec<u8>,
    settings: PoolSettings,
    stop: AtomicBool,
    members: Mutex<Vec<Arc<Member>>>,
    up: Gauge,
}

impl Shared {
    fn update_gauge(&self) {
        let up = lock(&self.members)
            .iter()
            .filter(|m| m.in_service.load(Ordering::Acquire))
            .count();
        self.up.set(up as f64);
    }
}

/// The state of one member, for `/readyz` and `vigil hsm test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Configured name.
    pub name: String,
    /// `in service`, `out of service` or `failed`.
    pub state: &'static str,
    /// Why it is out, if it is.
    pub last_error: Option<String>,
}

/// HSMs holding one issuer's signing key, plus an optional software key of last resort.
pub struct SignerPool {
    shared: Arc<Shared>,
    members: Vec<Arc<Member>>,
    algorithm: SignatureAlgorithm,
    fallback: Option<SoftwareSigner>,
    fallback_signatures: Counter,
}

impl Drop for SignerPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for m in &self.members {
            let _b = lock(&m.breaker);
            m.wake.notify_all();
        }
    }
}

/// Why a pool did not start, or a member failed `vigil hsm test`.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A member's PIN could not be read.
    #[error("hsm {hsm:?}: {source}")]
    Pin {
        /// The member.
        hsm: String,
        /// Why.
        source: PinError,
    },
    /// A member's token refused for good (PIN rejected, wrong key, no module), or failed.
    #[error("hsm {hsm:?}: {source}")]
    Hsm {
        /// The member.
        hsm: String,
        /// Why.
        source: HsmError,
    },
    /// A member's key is of another algorithm than the first member's.
    #[error("hsm {hsm:?}: its key algorithm differs from the pool's")]
    AlgorithmDiffers {
        /// The member.
        hsm: String,
    },
    /// The software fallback key is not the certificate's.
    #[error("danger_software_fallback: the key does not match the certificate's public key")]
    FallbackMismatch,
    /// No member reached at start-up, and no fallback.
    #[error("no HSM can sign for this issuer: {}", unreachable.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    NoSigner {
        /// Why each member could not be reached.
        unreachable: Vec<PoolError>,
    },
    /// A monitor thread could not be started.
    #[error("starting the HSM monitor thread: {0}")]
    MonitorThread(std::io::Error),
    /// A test signature does not verify with the certificate's key.
    #[error("the signature does not verify with the certificate's key")]
    NotVerified,
    /// The software fallback did not sign.
    #[error("{0}")]
    Fallback(SignError),
    /// The software fallback key could not be loaded.
    #[error("danger_software_fallback: {0}")]
    FallbackKey(crate::signer::software::KeyError),
}

impl PoolError {
    /// The cause without the member's name, for a report that lists members by name (`vigil
    /// hsm test`); the whole error for those that name no member.
    pub fn cause(&self) -> &dyn std::fmt::Display {
        match self {
            PoolError::Pin { source, .. } => source,
            PoolError::Hsm { source, .. } => source,
            other => other,
        }
    }
}

impl SignerPool {
    /// Connects every member, checks each key against `public_key` (the responder or CA
    /// certificate's subjectPublicKey), makes one verified test signature per member, and
    /// starts the monitors. Fails when a token rejects its PIN (no retry), when a key does
    /// not match the certificate, or when no member (nor the fallback) can sign. A member that
    /// is only unreachable starts out of service and joins once its probe passes.
    pub fn start(
        issuer: &str,
        public_key: Vec<u8>,
        members: Vec<(KeySpec, PinSource)>,
        fallback: Option<SoftwareSigner>,
        settings: PoolSettings,
    ) -> Result<SignerPool, PoolError> {
        let shared = Arc::new(Shared {
            issuer: issuer.to_owned(),
            public_key: public_key.clone(),
            settings,
            stop: AtomicBool::new(false),
            members: Mutex::new(Vec::new()),
            up: metrics::gauge!(telemetry::SIGNER_POOL_UP, "issuer" => issuer.to_owned()),
        });
        let mut algorithm = None;
        let mut built = Vec::new();
        let mut unreachable = Vec::new();
        for (spec, pin_source) in members {
            let name = spec.name.clone();
            let hsm_error = |source: HsmError| PoolError::Hsm {
                hsm: name.clone(),
                source,
            };
            let key = member_key(spec, &pin_source, public_key.clone())?;
            let member = Arc::new(Member {
                epoch: AtomicU64::new(0),
                checking: Arc::new(AtomicUsize::new(0)),
                key,
                in_service: AtomicBool::new(false),
                failures: AtomicU32::new(0),
                breaker: Mutex::new(Breaker {
                    state: BreakerState::Open,
                    backoff: settings.reconnect_backoff_min,
                    next_check: Instant::now() + settings.reconnect_backoff_min,
                    last_error: None,
                    attempts: 0,
                }),
                wake: Condvar::new(),
                metrics: MemberMetrics::new(&name),
            });
            member.metrics.breaker.set(1.0);
            lock(&shared.members).push(member.clone());
            match member
                .key
                .connect()
                .and_then(|d| member.probe(&shared).map(|()| d))
            {
                Ok(d) => {
                    if *algorithm.get_or_insert(d.algorithm) != d.algorithm {
                        return Err(PoolError::AlgorithmDiffers { hsm: name });
                    }
                    tracing::info!(hsm = %name, issuer, token = %d.token_label, slot = d.slot, mechanism = d.mechanism, "HSM key found and verified");
                    member.put_in_service(&shared, "start-up probe passed");
                }
                Err(e) if e.is_permanent() => return Err(hsm_error(e)),
                Err(e) => {
                    tracing::warn!(hsm = %name, issuer, error = %e, "HSM unreachable at start-up; it joins once a probe passes");
                    lock(&member.breaker).last_error = Some(e.to_string());
                    unreachable.push(hsm_error(e));
                }
            }
            built.push(member);
        }
        if let Some(f) = &fallback {
            if f.public_key() != public_key.as_slice() {
                return Err(PoolError::FallbackMismatch);
            }
            tracing::warn!(issuer, key = %f.describe(), "danger_software_fallback is set: a key on disk signs when no HSM can (labs only)");
        }
        let algorithm = match (algorithm, &fallback) {
            (Some(a), _) => a,
            (None, Some(f)) => f.algorithm(),
            (None, None) => return Err(PoolError::NoSigner { unreachable }),
        };
        shared.update_gauge();
        for m in &built {
            let (m, s) = (m.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("vigil-hsm-{}", m.name()))
                .spawn(move || monitor(&m, &s))
                .map_err(PoolError::MonitorThread)?;
        }
        Ok(SignerPool {
            shared,
            members: built,
            algorithm,
            fallback,
            fallback_signatures: metrics::counter!(telemetry::SIGNER_FALLBACK_SIGNATURES, "issuer" => issuer.to_owned()),
        })
    }

    /// The issuer this pool signs for.
    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    /// Members in service.
    pub fn in_service(&self) -> usize {
        self.members
            .iter()
            .filter(|m| m.in_service.load(Ordering::Acquire))
            .count()
    }

    /// Whether the software fallback is configured.
    pub fn has_fallback(&self) -> bool {
        self.fallback.is_some()
    }

    /// Each member's state.
    pub fn status(&self) -> Vec<MemberStatus> {
        self.members
            .iter()
            .map(|m| {
                let b = lock(&m.breaker);
                MemberStatus {
                    name: m.name().to_owned(),
                    state: match b.state {
                        BreakerState::Closed => "in service",
                        BreakerState::Open => "out of service",
                        BreakerState::Failed => "failed",
                    },
                    last_error: b.last_error.clone(),
                }
            })
            .collect()
    }
}

impl Signer for SignerPool {
    fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }

    fn public_key(&self) -> &[u8] {
        &self.shared.public_key
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let mut errors: Vec<String> = Vec::new();
        let mut busy: Vec<&Arc<Member>> = Vec::new();
        // First pass: the first member in service with a free session.
        for m in &self.members {
            if !m.in_service.load(Ordering::Acquire) || m.check_stuck(&self.shared) {
                continue;
            }
            match m.sign(message, Duration::ZERO, &self.shared) {
                Ok(sig) => return Ok(sig),
                Err(HsmError::Busy(_)) => busy.push(m),
                Err(e) => errors.push(format!("{}: {e}", m.name())),
            }
        }
        // Every member in service is busy: wait for a session, in order of preference.
        for m in busy {
            if !m.in_service.load(Ordering::Acquire) {
                continue;
            }
            match m.sign(message, self.shared.settings.session_wait, &self.shared) {
                Ok(sig) => return Ok(sig),
                Err(e) => errors.push(format!("{}: {e}", m.name())),
            }
        }
        if let Some(f) = &self.fallback {
            self.fallback_signatures.increment(1);
            tracing::warn!(issuer = %self.shared.issuer, "no HSM in service: signing with danger_software_fallback");
            return f.sign(message);
        }
        if errors.is_empty() {
            errors.push("no HSM in service".into());
        }
        Err(SignError::Unavailable(errors.join("; ")))
    }

    /// Past this, the caller should stop waiting and ask again: by then the stuck HSM is
    /// taken out (its call is older than `sign_timeout`) and the signature fails over.
    fn timeout(&self) -> Option<Duration> {
        Some(self.shared.settings.session_wait + self.shared.settings.sign_timeout)
    }

    fn describe(&self) -> String {
        let names: Vec<&str> = self.members.iter().map(|m| m.name()).collect();
        format!(
            "HSM pool of issuer {} ({}{})",
            self.shared.issuer,
            names.join(", "),
            if self.fallback.is_some() {
                ", then danger_software_fallback"
            } else {
                ""
            }
        )
    }
}

/// Checks of one member that may be outstanding at once. A check stuck in a silent HSM keeps
/// its thread until a later reconnection kills the stuck host process (which returns it at
/// once); this bounds the threads a silent HSM can hold meanwhile.
const MAX_CHECKS_OUTSTANDING: usize = 3;

/// Runs `check` on its own thread and waits at most `deadline` for it. Fails when it did not
/// finish in time (it may be stuck in the module; its thread stays counted in `running` until
/// it returns) or when [`MAX_CHECKS_OUTSTANDING`] checks have not come back.
fn bounded<R: Send + 'static>(
    running: &Arc<AtomicUsize>,
    name: &str,
    deadline: Duration,
    check: impl FnOnce() -> R + Send + 'static,
) -> Result<R, HsmError> {
    if running.fetch_add(1, Ordering::AcqRel) >= MAX_CHECKS_OUTSTANDING {
        running.fetch_sub(1, Ordering::AcqRel);
        return Err(HsmError::Lost(format!(
            "{MAX_CHECKS_OUTSTANDING} earlier checks have not come back from the module"
        )));
    }
    let (tx, rx) = mpsc::sync_channel(1);
    let count = running.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("vigil-hsm-check-{name}"))
        .spawn(move || {
            let r = check();
            count.fetch_sub(1, Ordering::AcqRel);
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        running.fetch_sub(1, Ordering::AcqRel);
        return Err(HsmError::Failed(format!("starting a check thread: {e}")));
    }
    rx.recv_timeout(deadline)
        .map_err(|_| HsmError::Lost(format!("no answer within {deadline:?}")))
}

fn probe_bounded(member: &Arc<Member>, shared: &Arc<Shared>) -> Result<(), HsmError> {
    let (m, s) = (member.clone(), shared.clone());
    let deadline = shared.settings.session_wait + shared.settings.sign_timeout;
    bounded(&member.checking, member.name(), deadline, move || {
        m.probe(&s)
    })?
}

fn recover_bounded(member: &Arc<Member>, shared: &Arc<Shared>) -> Result<(), HsmError> {
    let (m, s) = (member.clone(), shared.clone());
    // Re-initialising waits up to sign_timeout for calls in flight, then loads afresh.
    let deadline = RECOVERY_DEADLINE + 2 * shared.settings.sign_timeout;
    bounded(&member.checking, member.name(), deadline, move || {
        m.key
            .recover(s.settings.sign_timeout)
            .and_then(|_| m.probe(&s))
    })?
}

/// Time a reconnection (load, initialise, find the token, log in, find the key, probe) may
/// take on top of the waits for stuck calls: generous for a network HSM across a WAN.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(5);

/// The monitor of one member: probes it while in service, reconnects it with backoff while
/// out, and stops for good when it has failed or the pool is gone.
fn monitor(member: &Arc<Member>, shared: &Arc<Shared>) {
    loop {
        let state = {
            let mut b = lock(&member.breaker);
            loop {
                if shared.stop.load(Ordering::Acquire) || b.state == BreakerState::Failed {
                    return;
                }
                let now = Instant::now();
                if now >= b.next_check {
                    break;
                }
                let wait = b.next_check - now;
                b = member
                    .wake
                    .wait_timeout(b, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            b.state.clone()
        };
        match state {
            BreakerState::Closed => match probe_bounded(member, shared) {
                Ok(()) => {
                    member.metrics.probes_ok.increment(1);
                    lock(&member.breaker).next_check =
                        Instant::now() + shared.settings.probe_interval;
                }
                Err(HsmError::Busy(_)) => {
                    lock(&member.breaker).next_check =
                        Instant::now() + shared.settings.probe_interval;
                }
                Err(e) => {
                    member.metrics.probes_failed.increment(1);
                    member.metrics.error(&e);
                    member.take_out(&e, shared);
                }
            },
            BreakerState::Open => {
                let result = recover_bounded(member, shared);
                match result {
                    Ok(()) => {
                        member.metrics.probes_ok.increment(1);
                        member.put_in_service(shared, "probe passed after reconnecting");
                    }
                    Err(e) if e.is_permanent() => {
                        member.metrics.probes_failed.increment(1);
                        member.metrics.error(&e);
                        member.take_out(&e, shared);
                    }
                    Err(e) => {
                        member.metrics.probes_failed.increment(1);
                        let mut b = lock(&member.breaker);
                        b.attempts += 1;
                        b.backoff = (b.backoff * 2).min(shared.settings.reconnect_backoff_max);
                        b.next_check = Instant::now() + b.backoff;
                        b.last_error = Some(e.to_string());
                        if b.attempts <= 3 || b.attempts.is_multiple_of(20) {
                            tracing::warn!(hsm = member.name(), issuer = %shared.issuer, attempt = b.attempts, retry_in = ?b.backoff, error = %e, "HSM still out of service");
                        }
                    }
                }
            }
            BreakerState::Failed => return,
        }
    }
}

/// A number for each test message this process signs, so no two probes sign the same bytes
/// (a token that returned a cached signature would not pass).
fn probe_number() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The result of `vigil hsm test` for one member.
#[derive(Debug)]
pub struct MemberTest {
    /// Configured name (or `danger_software_fallback`).
    pub name: String,
    /// What was found and how long the signature took, or what went wrong.
    pub result: Result<String, PoolError>,
}

/// A member's key in a host process of its own, its PIN read from `pin_source`, to be checked
/// against `public_key` (the certificate's).
fn member_key(
    spec: KeySpec,
    pin_source: &PinSource,
    public_key: Vec<u8>,
) -> Result<HostedKey, PoolError> {
    let hsm = spec.name.clone();
    let pin = read_pin(pin_source).map_err(|source| PoolError::Pin {
        hsm: hsm.clone(),
        source,
    })?;
    HostedKey::new(spec, pin, Some(public_key)).map_err(|source| PoolError::Hsm { hsm, source })
}

/// Connects each member (and the fallback key), signs a test message, and verifies the
/// signature against `public_key` (the certificate's). No pool, no monitors.
pub fn test_members(
    public_key: &[u8],
    members: Vec<(KeySpec, PinSource)>,
    fallback: Option<&SoftwareSigner>,
) -> Vec<MemberTest> {
    let mut out = Vec::new();
    for (spec, pin_source) in members {
        let name = spec.name.clone();
        let result = (|| {
            let hsm_error = |source: HsmError| PoolError::Hsm {
                hsm: name.clone(),
                source,
            };
            let key = member_key(spec, &pin_source, public_key.to_vec())?;
            let d: KeyDescription = key.connect().map_err(hsm_error)?;
            let message = format!("vigil hsm test {}", probe_number());
            let started = Instant::now();
            let sig = key
                .sign(message.as_bytes(), Duration::from_secs(5))
                .map_err(hsm_error)?;
            let took = started.elapsed();
            if !super::verify(d.algorithm, public_key, message.as_bytes(), &sig) {
                return Err(PoolError::NotVerified);
            }
            key.disconnect();
            Ok(format!(
                "token {:?} slot {}, {} via {}, signed and verified in {:.1} ms",
                d.token_label,
                d.slot,
                d.algorithm.name(),
                d.mechanism,
                took.as_secs_f64() * 1000.0
            ))
        })();
        out.push(MemberTest { name, result });
    }
    if let Some(f) = fallback {
        let message = b"vigil hsm test (software fallback)";
        let result = match f.sign(message) {
            Ok(sig) if super::verify(f.algorithm(), public_key, message, &sig) => {
                Ok(format!("{} signed and verified", f.describe()))
            }
            Ok(_) => Err(PoolError::NotVerified),
            Err(e) => Err(PoolError::Fallback(e)),
        };
        out.push(MemberTest {
            name: "danger_software_fallback".into(),
            result,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_have_a_deadline_and_a_cap_on_stuck_ones() {
        let running = Arc::new(AtomicUsize::new(0));
        assert_eq!(
            bounded(&running, "t", Duration::from_secs(5), || 7).expect("done"),
            7
        );
        assert_eq!(running.load(Ordering::Acquire), 0);
        // Three checks that never come back (until released) ...
        let (release, gate) = mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        for _ in 0..MAX_CHECKS_OUTSTANDING {
            let g = gate.clone();
            let e = bounded(&running, "t", Duration::from_millis(20), move || {
                let _ = lock(&g).recv();
            })
            .expect_err("stuck");
            assert!(e.to_string().contains("no answer"), "{e}");
        }
        // ... and the next is refused at once.
        let e = bounded(&running, "t", Duration::from_secs(5), || ()).expect_err("capped");
        assert!(e.to_string().contains("have not come back"), "{e}");
        for _ in 0..MAX_CHECKS_OUTSTANDING {
            release.send(()).expect("release");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while running.load(Ordering::Acquire) != 0 {
            assert!(Instant::now() < deadline, "checks did not finish");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(bounded(&running, "t", Duration::from_secs(5), || ()).is_ok());
    }

    #[test]
    fn a_pool_with_only_unreachable_members_does_not_start() {
        let spec = KeySpec {
            name: "nowhere".into(),
            module: "/nonexistent/libpkcs11.so".into(),
            module_env: Default::default(),
            token: TokenSelector::Label("t".into()),
            key: KeySelector::default(),
            sessions: 1,
            rsa_mechanism: RsaMechanism::Auto,
        };
        let dir = tempfile::tempdir().expect("tmp");
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, "1234\n").expect("pin file");
        let settings = PoolSettings {
            probe_interval: Duration::from_secs(5),
            breaker_failures: 3,
            reconnect_backoff_min: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(1),
            session_wait: Duration::from_millis(100),
            sign_timeout: Duration::from_secs(1),
        };
        let e = SignerPool::start(
            "a",
            vec![1, 2, 3],
            vec![(spec, PinSource::File(pin_file))],
            None,
            settings,
        )
        .err()
        .expect("no module")
        .to_string();
        assert!(
            e.contains("nowhere") && e.contains("/nonexistent/libpkcs11.so"),
            "{e}"
        );
    }
}
