//! One private key on one PKCS#11 token, through `cryptoki`.
//!
//! A [`Pkcs11Key`] names its module (the vendor's `.so`), its token (by label or slot) and its
//! key (by label and/or id). It logs in once per token on a dedicated *anchor* session that
//! stays open for as long as the connection lives — PKCS#11 keeps the login state per
//! application and token, and drops it when the last session closes — and signs on a bounded
//! pool of read-only sessions, on the caller's (blocking) thread.
//!
//! Mechanisms (PKCS#11 v2.40 §2.3.6 and §2.1.6):
//! - ECDSA P-256 / P-384: vigil hashes (SHA-256 / SHA-384), the token signs the digest with
//!   `CKM_ECDSA`, and the raw `r || s` it returns is re-encoded as the DER `ECDSA-Sig-Value`
//!   that X.509 and OCSP carry (RFC 5480 §2.2 / RFC 5758 §3.2).
//! - RSA: `CKM_SHA256_RSA_PKCS` where the token offers it, otherwise `CKM_RSA_PKCS` over the
//!   DER `DigestInfo` for SHA-256 that vigil builds (RFC 8017 §9.2).
//!
//! Modules are loaded once per (path, environment) and shared by every key that names them;
//! [`Module::reinitialize`] runs `C_Finalize` + `C_Initialize` to recover from a lost device or
//! connection. Every call into a module holds its read lock and re-initialising takes the write
//! lock, so no call is in flight while the module is finalized, and a session handle from an
//! older initialisation is forgotten rather than closed (the number may belong to a new session).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{
    Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard,
    TryLockError,
};
use std::time::{Duration, Instant};

use const_oid::db::rfc5912;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use der::{Decode, Encode};
use zeroize::Zeroizing;

pub use cryptoki::types::AuthPin;

use super::software::MIN_RSA_BITS;
use super::SignatureAlgorithm;

// === errors ===

/// Why an operation on a token failed, sorted by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HsmError {
    /// The token rejected the user PIN. Never retried: repeated attempts lock the token.
    #[error("the token rejected the user PIN ({0}); vigil does not retry a rejected PIN (retries lock tokens): fix pin_file / pin_env and restart")]
    Pin(String),
    /// A setting or the token's content is wrong; retrying cannot help.
    #[error("{0}")]
    Config(String),
    /// The device, the session, the login or the connection to a network HSM is gone:
    /// reconnect, re-initialising the module if need be.
    #[error("{0}")]
    Lost(String),
    /// One operation failed; the device may be fine.
    #[error("{0}")]
    Failed(String),
    /// Every session of the key is in use.
    #[error("all {0} sessions are busy")]
    Busy(usize),
}

impl HsmError {
    /// A low-cardinality label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            HsmError::Pin(_) => "pin",
            HsmError::Config(_) => "config",
            HsmError::Lost(_) => "lost",
            HsmError::Failed(_) => "failed",
            HsmError::Busy(_) => "busy",
        }
    }

    /// Whether retrying can ever help (false for a rejected PIN or a wrong setting).
    pub fn is_permanent(&self) -> bool {
        matches!(self, HsmError::Pin(_) | HsmError::Config(_))
    }
}

/// `CKR_PIN_INCORRECT` from `RvError::PinIncorrect`: the names of the specification.
pub fn ckr_name(rv: &RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Sorts a cryptoki error (PKCS#11 v2.40 §5.1 return values) into what to do about it.
pub fn classify(e: &CkError) -> HsmError {
    match e {
        CkError::Pkcs11(rv, function) => {
            let what = format!("C_{function:?}: {}", ckr_name(rv));
            match rv {
                RvError::PinIncorrect
                | RvError::PinInvalid
                | RvError::PinLenRange
                | RvError::PinExpired
                | RvError::PinLocked
                | RvError::UserPinNotInitialized => HsmError::Pin(what),
                RvError::DeviceError
                | RvError::DeviceRemoved
                | RvError::DeviceMemory
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::CryptokiNotInitialized
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::GeneralError
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::SlotIdInvalid => HsmError::Lost(what),
                _ => HsmError::Failed(what),
            }
        }
        CkError::LibraryLoading(e) => HsmError::Config(format!("loading the module: {e}")),
        CkError::MissingSymbol(s) => {
            HsmError::Config(format!("the module is not a PKCS#11 module (no {s})"))
        }
        other => HsmError::Failed(other.to_string()),
    }
}

fn lost(e: CkError) -> HsmError {
    classify(&e)
}

// === PIN ===

/// Where a user PIN comes from. The PIN itself is never logged, and vigil holds it only as an
/// [`AuthPin`], which zeroizes its memory when dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// A file holding the PIN (one trailing newline is ignored).
    File(PathBuf),
    /// An environment variable holding the PIN.
    Env(String),
}

/// Reads a PIN. Errors name the source, never the PIN.
pub fn read_pin(source: &PinSource) -> Result<AuthPin, String> {
    match source {
        PinSource::File(path) => {
            let bytes = Zeroizing::new(
                std::fs::read(path).map_err(|e| format!("pin_file {}: {e}", path.display()))?,
            );
            warn_if_readable_by_others(path);
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| format!("pin_file {}: not UTF-8", path.display()))?;
            let text = text.strip_suffix('\n').unwrap_or(text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            if text.is_empty() {
                return Err(format!("pin_file {}: empty", path.display()));
            }
            Ok(AuthPin::from(text))
        }
        PinSource::Env(name) => match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(AuthPin::from(v)),
            _ => Err(format!(
                "pin_env: the environment variable {name} is not set, empty or not UTF-8"
            )),
        },
    }
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(pin_file = %path.display(), "the PIN file is readable by group or others; chmod 600 it");
        }
    }
}

// === module ===

#[derive(Debug, Clone, Copy)]
struct ModuleState {
    /// Unique per initialisation; sessions and handles of another one are void.
    generation: u64,
    initialized: bool,
}

/// One loaded function list of a module (one `C_GetFunctionList`) and its initialisation.
/// Every call into it holds the read lock; `C_Finalize` / `C_Initialize` take the write lock.
pub struct Instance {
    context: Pkcs11,
    state: RwLock<ModuleState>,
    /// A call into it did not come back: connect no more through it; re-initialise it once
    /// its calls are back, or load the module afresh.
    stuck: AtomicBool,
}

impl Instance {
    fn read(&self) -> RwLockReadGuard<'_, ModuleState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The write lock, if every call in flight returns within `wait`. Polls rather than
    /// blocks, so calls keep flowing on other sessions meanwhile.
    fn try_write_for(&self, wait: Duration) -> Option<RwLockWriteGuard<'_, ModuleState>> {
        let deadline = Instant::now() + wait;
        loop {
            match self.state.try_write() {
                Ok(g) => return Some(g),
                Err(TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TryLockError::WouldBlock) => return None,
            }
        }
    }

    fn initialize(
        &self,
        env: &BTreeMap<String, String>,
        st: &mut ModuleState,
    ) -> Result<(), CkError> {
        initialize(&self.context, env)?;
        st.initialized = true;
        Ok(())
    }

    /// Closes `session` if it belongs to the current initialisation and its connection is not
    /// known to be lost, else forgets it: after a re-initialisation its handle number may name
    /// someone else's session, and closing on a lost device only fails.
    fn discard(&self, generation: u64, session: Session, lost: bool) {
        let st = self.read();
        if !lost && st.initialized && st.generation == generation {
            drop(session); // C_CloseSession, under the read lock
        } else {
            std::mem::forget(session);
        }
    }
}

/// `C_Initialize`, with the module's environment; "already initialised" is success.
fn initialize(context: &Pkcs11, env: &BTreeMap<String, String>) -> Result<(), CkError> {
    let args = CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK);
    match with_env(env, || context.initialize(args)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A PKCS#11 module, shared by the keys that name the same path and environment. Holds its
/// current [`Instance`]; re-initialising may replace it (see [`Module::reinitialize`]).
pub struct Module {
    path: PathBuf,
    env: BTreeMap<String, String>,
    current: Mutex<Arc<Instance>>,
    generations: AtomicU64,
    /// Keys on this module that are currently healthy; the module is re-initialised only when
    /// none is (finalizing would tear down their sessions too).
    healthy_keys: AtomicUsize,
}

static MODULES: OnceLock<Mutex<Vec<Arc<Module>>>> = OnceLock::new();

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; carry on with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Who may change the process environment for a module, until when. A lease rather than a
/// lock: `C_Initialize` of a network module can hang (a server that accepted and went
/// silent), and a stuck holder must not keep every other module from starting.
struct EnvLease {
    holder: Mutex<Option<(u64, Instant)>>,
    freed: Condvar,
    next: AtomicU64,
}

static ENV_LEASE: EnvLease = EnvLease {
    holder: Mutex::new(None),
    freed: Condvar::new(),
    next: AtomicU64::new(1),
};

/// How long one module load or initialisation may hold the environment.
const ENV_LEASE_TIME: Duration = Duration::from_secs(5);

/// Runs `f` with `env` set in the process environment, then restores it. Modules such as
/// p11-kit-client read their settings (`P11_KIT_SERVER_ADDRESS`) when they are loaded, others
/// (SoftHSM2) when initialised, so each module instance can have its own. Callers take turns;
/// one whose `f` outlasts [`ENV_LEASE_TIME`] loses its turn and leaves the environment alone
/// afterwards. Nothing else in vigil reads the environment after start-up.
fn with_env<R>(env: &BTreeMap<String, String>, f: impl FnOnce() -> R) -> R {
    if env.is_empty() {
        return f();
    }
    let me = ENV_LEASE.next.fetch_add(1, Ordering::Relaxed);
    {
        let mut holder = lock(&ENV_LEASE.holder);
        loop {
            match *holder {
                Some((_, until)) if Instant::now() < until => {
                    let wait = until.saturating_duration_since(Instant::now());
                    holder = ENV_LEASE
                        .freed
                        .wait_timeout(holder, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                _ => break,
            }
        }
        *holder = Some((me, Instant::now() + ENV_LEASE_TIME));
    }
    let saved: Vec<(String, Option<std::ffi::OsString>)> = env
        .keys()
        .map(|k| (k.clone(), std::env::var_os(k)))
        .collect();
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    let r = f();
    let mut holder = lock(&ENV_LEASE.holder);
    if matches!(*holder, Some((who, _)) if who == me) {
        for (k, v) in saved {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
        *holder = None;
        ENV_LEASE.freed.notify_all();
    }
    r
}

impl Module {
    /// Loads (or finds already loaded) the module at `path` with `env`, and initialises it.
    /// Only a module that cannot be loaded is an error here; one whose `C_Initialize` fails is
    /// returned uninitialised, and the keys on it report [`HsmError::Lost`] until
    /// [`Module::reinitialize`] succeeds.
    pub fn load(path: &Path, env: &BTreeMap<String, String>) -> Result<Arc<Module>, HsmError> {
        let mut modules = lock(MODULES.get_or_init(Default::default));
        if let Some(m) = modules.iter().find(|m| m.path == path && &m.env == env) {
            return Ok(m.clone());
        }
        let context = load_context(path, env)?;
        let mut st = ModuleState {
            generation: 1,
            initialized: false,
        };
        match initialize(&context, env) {
            Ok(()) => st.initialized = true,
            Err(e) => {
                tracing::warn!(module = %path.display(), error = %classify(&e), "C_Initialize failed; will retry")
            }
        }
        let module = Arc::new(Module {
            path: path.to_path_buf(),
            env: env.clone(),
            current: Mutex::new(Arc::new(Instance {
                context,
                state: RwLock::new(st),
                stuck: AtomicBool::new(false),
            })),
            generations: AtomicU64::new(1),
            healthy_keys: AtomicUsize::new(0),
        });
        modules.push(module.clone());
        Ok(module)
    }

    /// The module's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The instance calls go to now.
    pub fn instance(&self) -> Arc<Instance> {
        lock(&self.current).clone()
    }

    fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Starts the module again, unless another caller already did so since generation
    /// `seen`. Returns the generation now current.
    ///
    /// Normally `C_Finalize` + `C_Initialize` on the current instance, once the calls in
    /// flight have returned. If one has not returned within `wait` — a network HSM that went
    /// silent, or a client library that lost track of a reply — the module is loaded afresh
    /// (modules such as p11-kit-client give each load its own state and connection) and the
    /// stuck instance is left to the stuck call. A module that keeps one state per process
    /// cannot be loaded afresh; then this fails until the stuck call returns.
    pub fn reinitialize(&self, seen: u64, wait: Duration) -> Result<u64, HsmError> {
        let instance = self.instance();
        if let Some(mut st) = instance.try_write_for(wait) {
            if st.generation != seen && st.initialized {
                return Ok(st.generation);
            }
            if st.initialized {
                // The device may be gone; whatever C_Finalize says, start again.
                let _ = instance.context.clone().finalize();
                st.initialized = false;
            }
            st.generation = self.next_generation();
            instance.stuck.store(false, Ordering::Release);
            instance.initialize(&self.env, &mut st).map_err(lost)?;
            tracing::info!(module = %self.path.display(), generation = st.generation, "PKCS#11 module re-initialised");
            return Ok(st.generation);
        }
        let context = load_context(&self.path, &self.env)?;
        match with_env(&self.env, || {
            context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        }) {
            Ok(()) => {}
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                return Err(HsmError::Lost(format!(
                    "a call into {} has not returned in {wait:?}, and the module keeps one state per process; waiting for it",
                    self.path.display()
                )))
            }
            Err(e) => return Err(classify(&e)),
        }
        let generation = self.next_generation();
        *lock(&self.current) = Arc::new(Instance {
            context,
            state: RwLock::new(ModuleState {
                generation,
                initialized: true,
            }),
            stuck: AtomicBool::new(false),
        });
        tracing::warn!(module = %self.path.display(), generation, "a call into the module has not returned; loaded a fresh instance and left the stuck one");
        Ok(generation)
    }

    /// Library description and version (`C_GetInfo`).
    pub fn info(&self) -> Result<String, HsmError> {
        let instance = self.instance();
        let _st = instance.read();
        let i = instance.context.get_library_info().map_err(lost)?;
        Ok(format!(
            "{} {}.{} ({}), PKCS#11 {}.{}",
            i.library_description().trim(),
            i.library_version().major(),
            i.library_version().minor(),
            i.manufacturer_id().trim(),
            i.cryptoki_version().major(),
            i.cryptoki_version().minor()
        ))
    }
}

fn load_context(path: &Path, env: &BTreeMap<String, String>) -> Result<Pkcs11, HsmError> {
    with_env(env, || Pkcs11::new(path))
        .map_err(|e| HsmError::Config(format!("module {}: {}", path.display(), classify(&e))))
}

// === key ===

/// Which token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token whose label (CK_TOKEN_INFO.label, blank-padded) is this.
    Label(String),
    /// The slot with this id.
    Slot(u64),
}

/// Which key: by CKA_LABEL, CKA_ID, or both.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeySelector {
    /// CKA_LABEL.
    pub label: Option<String>,
    /// CKA_ID.
    pub id: Option<Vec<u8>>,
}

impl KeySelector {
    fn template(&self, class: ObjectClass) -> Vec<Attribute> {
        let mut t = vec![Attribute::Class(class)];
        if let Some(l) = &self.label {
            t.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        if let Some(id) = &self.id {
            t.push(Attribute::Id(id.clone()));
        }
        t
    }

    fn describe(&self) -> String {
        match (&self.label, &self.id) {
            (Some(l), Some(id)) => format!("label {l:?} id {}", crate::status::hex(id)),
            (Some(l), None) => format!("label {l:?}"),
            (None, Some(id)) => format!("id {}", crate::status::hex(id)),
            (None, None) => "(any)".into(),
        }
    }
}

/// How RSA keys sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RsaMechanism {
    /// `CKM_SHA256_RSA_PKCS` if the token lists it, else `CKM_RSA_PKCS` over a DigestInfo.
    #[default]
    Auto,
    /// Always `CKM_SHA256_RSA_PKCS`.
    Sha256RsaPkcs,
    /// Always `CKM_RSA_PKCS` over a DigestInfo built by vigil.
    RsaPkcs,
}

/// Everything needed to reach one key.
#[derive(Debug, Clone)]
pub struct KeySpec {
    /// Name for logs and metrics.
    pub name: String,
    /// The module file.
    pub module: PathBuf,
    /// Environment the module is loaded with (e.g. `P11_KIT_SERVER_ADDRESS`).
    pub module_env: BTreeMap<String, String>,
    /// The token.
    pub token: TokenSelector,
    /// The key.
    pub key: KeySelector,
    /// Most sessions open for signing at once.
    pub sessions: usize,
    /// RSA mechanism choice.
    pub rsa_mechanism: RsaMechanism,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignMechanism {
    /// `CKM_ECDSA` over a digest made in vigil; `field` is the size of r and s in bytes.
    Ecdsa { field: usize },
    /// `CKM_SHA256_RSA_PKCS` over the message.
    Sha256RsaPkcs,
    /// `CKM_RSA_PKCS` over the SHA-256 DigestInfo.
    RsaPkcsDigestInfo,
}

impl SignMechanism {
    fn name(self) -> &'static str {
        match self {
            SignMechanism::Ecdsa { .. } => "CKM_ECDSA",
            SignMechanism::Sha256RsaPkcs => "CKM_SHA256_RSA_PKCS",
            SignMechanism::RsaPkcsDigestInfo => "CKM_RSA_PKCS (DigestInfo)",
        }
    }
}

struct SessionSlots {
    idle: Vec<Session>,
    open: usize,
}

/// One login on one token: the anchor session holding the login, the key handle, and the
/// signing sessions.
struct Connection {
    instance: Arc<Instance>,
    generation: u64,
    slot: Slot,
    token_label: String,
    key: ObjectHandle,
    mechanism: SignMechanism,
    algorithm: SignatureAlgorithm,
    public_key: Vec<u8>,
    anchor: Mutex<Option<Session>>,
    sessions: Mutex<SessionSlots>,
    returned: Condvar,
    max_sessions: usize,
    /// A call on this connection reported a lost device, session or connection.
    lost: AtomicBool,
    /// Start times ([`micros_now`]) of the `C_Sign` calls in flight, one slot per session;
    /// 0 is a free slot. Lets a caller see that a call has not come back.
    calls: Box<[AtomicU64]>,
}

/// Microseconds since the first call, plus one (0 means "no call").
fn micros_now() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1
}

/// One `C_Sign` in flight, recorded in a [`Connection::calls`] slot until dropped.
struct CallInFlight<'a>(Option<&'a AtomicU64>);

impl Drop for CallInFlight<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.0 {
            slot.store(0, Ordering::Release);
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let lost = self.lost.load(Ordering::Acquire);
        let idle: Vec<Session> = std::mem::take(&mut lock(&self.sessions).idle);
        for s in idle {
            self.instance.discard(self.generation, s, lost);
        }
        if let Some(a) = lock(&self.anchor).take() {
            self.instance.discard(self.generation, a, lost);
        }
    }
}

impl Connection {
    fn checkout(&self, wait: Duration) -> Result<Session, HsmError> {
        let deadline = Instant::now() + wait;
        let mut slots = lock(&self.sessions);
        loop {
            if let Some(s) = slots.idle.pop() {
                return Ok(s);
            }
            if slots.open < self.max_sessions {
                slots.open += 1;
                drop(slots);
                let opened = {
                    let st = self.instance.read();
                    if !st.initialized || st.generation != self.generation {
                        Err(HsmError::Lost("the module was re-initialised".into()))
                    } else {
                        self.instance
                            .context
                            .open_ro_session(self.slot)
                            .map_err(lost)
                    }
                };
                if let Err(e) = &opened {
                    if matches!(e, HsmError::Lost(_)) {
                        self.lost.store(true, Ordering::Release);
                    }
                    lock(&self.sessions).open -= 1;
                    self.returned.notify_one();
                }
                return opened;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HsmError::Busy(self.max_sessions));
            }
            slots = self
                .returned
                .wait_timeout(slots, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn checkin(&self, session: Session) {
        lock(&self.sessions).idle.push(session);
        self.returned.notify_one();
    }

    fn throw_away(&self, session: Session) {
        self.lost.store(true, Ordering::Release);
        lock(&self.sessions).open -= 1;
        self.returned.notify_one();
        self.instance.discard(self.generation, session, true);
    }

    /// Records a call in a free slot (there is one per session, and a call holds a session).
    fn call_started(&self) -> CallInFlight<'_> {
        let now = micros_now();
        CallInFlight(self.calls.iter().find(|slot| {
            slot.compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        }))
    }

    /// How long the oldest call in flight has been waiting for the token.
    fn oldest_call(&self) -> Option<Duration> {
        let now = micros_now();
        self.calls
            .iter()
            .map(|slot| slot.load(Ordering::Acquire))
            .filter(|start| *start != 0)
            .min()
            .map(|start| Duration::from_micros(now.saturating_sub(start)))
    }

    fn sign(&self, message: &[u8], wait: Duration) -> Result<Vec<u8>, HsmError> {
        let (mechanism, input): (Mechanism<'_>, Cow<'_, [u8]>) = match self.mechanism {
            SignMechanism::Ecdsa { .. } => {
                let alg = match self.algorithm {
                    SignatureAlgorithm::EcdsaP384Sha384 => &ring::digest::SHA384,
                    _ => &ring::digest::SHA256,
                };
                let d = ring::digest::digest(alg, message);
                (Mechanism::Ecdsa, Cow::Owned(d.as_ref().to_vec()))
            }
            SignMechanism::Sha256RsaPkcs => (Mechanism::Sha256RsaPkcs, Cow::Borrowed(message)),
            SignMechanism::RsaPkcsDigestInfo => {
                (Mechanism::RsaPkcs, Cow::Owned(sha256_digest_info(message)))
            }
        };
        let session = self.checkout(wait)?;
        let result = {
            let st = self.instance.read();
            if !st.initialized || st.generation != self.generation {
                Err(HsmError::Lost("the module was re-initialised".into()))
            } else {
                let _call = self.call_started();
                session.sign(&mechanism, self.key, &input).map_err(lost)
            }
        };
        match result {
            Ok(raw) => {
                self.checkin(session);
                match self.mechanism {
                    SignMechanism::Ecdsa { field } => ecdsa_raw_to_der(&raw, field),
                    _ => Ok(raw),
                }
            }
            Err(e) => {
                if matches!(e, HsmError::Lost(_)) {
                    self.throw_away(session);
                } else {
                    self.checkin(session);
                }
                Err(e)
            }
        }
    }
}

/// A key on a PKCS#11 token: connects, signs, reconnects. Thread-safe; each signature uses
/// one session from a pool of at most [`KeySpec::sessions`].
pub struct Pkcs11Key {
    spec: KeySpec,
    module: Arc<Module>,
    pin: AuthPin,
    /// The subjectPublicKey the key must have: the certificate's.
    expected: Option<Vec<u8>>,
    connection: Mutex<Option<Arc<Connection>>>,
    /// Module generation of the last connection attempt.
    seen_generation: AtomicU64,
    healthy: AtomicBool,
}

/// What a connected key looks like.
#[derive(Debug, Clone)]
pub struct KeyDescription {
    /// The token's label.
    pub token_label: String,
    /// The slot id.
    pub slot: u64,
    /// The signature algorithm.
    pub algorithm: SignatureAlgorithm,
    /// The mechanism used.
    pub mechanism: &'static str,
    /// The subjectPublicKey BIT STRING contents.
    pub public_key: Vec<u8>,
}

impl Pkcs11Key {
    /// Loads the module (once per path and environment) and prepares the key; does not
    /// connect. `expected`: the public key the token's key must have (from the certificate).
    pub fn new(spec: KeySpec, pin: AuthPin, expected: Option<Vec<u8>>) -> Result<Self, HsmError> {
        let module = Module::load(&spec.module, &spec.module_env)?;
        let seen = module.instance().read().generation;
        Ok(Pkcs11Key {
            spec,
            module,
            pin,
            expected,
            connection: Mutex::new(None),
            seen_generation: AtomicU64::new(seen),
            healthy: AtomicBool::new(false),
        })
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The module this key is reached through.
    pub fn module(&self) -> &Arc<Module> {
        &self.module
    }

    /// Signs `message` (hashing it first for ECDSA / `CKM_RSA_PKCS`), waiting up to `wait`
    /// for a free session. ECDSA signatures come back DER-encoded.
    pub fn sign(&self, message: &[u8], wait: Duration) -> Result<Vec<u8>, HsmError> {
        let conn = lock(&self.connection)
            .clone()
            .ok_or_else(|| HsmError::Lost("not connected".into()))?;
        conn.sign(message, wait)
    }

    /// How long the oldest signature in flight on the current connection has been waiting
    /// for the token, if one is in flight. A call that never comes back (a network HSM gone
    /// silent) shows here, so the pool can take the key out of service.
    pub fn oldest_call(&self) -> Option<Duration> {
        lock(&self.connection).as_ref()?.oldest_call()
    }

    /// The connected key's description, if connected.
    pub fn description(&self) -> Option<KeyDescription> {
        lock(&self.connection).as_ref().map(|c| KeyDescription {
            token_label: c.token_label.clone(),
            slot: c.slot.id(),
            algorithm: c.algorithm,
            mechanism: c.mechanism.name(),
            public_key: c.public_key.clone(),
        })
    }

    /// Marks the key healthy or not (the module is re-initialised only when no key on it is
    /// healthy).
    pub fn set_healthy(&self, healthy: bool) {
        if self.healthy.swap(healthy, Ordering::AcqRel) != healthy {
            if healthy {
                self.module.healthy_keys.fetch_add(1, Ordering::AcqRel);
            } else {
                self.module.healthy_keys.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Drops the connection without another call into it (its sessions are forgotten), and
    /// marks its module instance as stuck.
    pub fn abandon(&self) {
        let old = lock(&self.connection).take();
        if let Some(c) = old {
            c.lost.store(true, Ordering::Release);
            c.instance.stuck.store(true, Ordering::Release);
        }
    }

    /// Drops the connection: closes its sessions (the login ends with the last one).
    pub fn disconnect(&self) {
        let old = lock(&self.connection).take();
        drop(old);
    }

    /// Connects: finds the token, logs in, finds the key and its public key, picks the
    /// mechanism, and checks the public key against the expected one.
    pub fn connect(&self) -> Result<KeyDescription, HsmError> {
        self.disconnect();
        let conn = self.open_connection()?;
        if let Some(expected) = &self.expected {
            if &conn.public_key != expected {
                return Err(HsmError::Config(format!(
                    "the key ({}) on token {:?} does not match the certificate's public key",
                    self.spec.key.describe(),
                    conn.token_label
                )));
            }
        }
        let conn = Arc::new(conn);
        *lock(&self.connection) = Some(conn);
        self.description()
            .ok_or_else(|| HsmError::Lost("disconnected while connecting".into()))
    }

    /// Reconnects after a loss: a fresh connection, and, when that fails with a lost device
    /// and no other key on the module is healthy (or the module is not initialised),
    /// `C_Finalize` + `C_Initialize` of the module and one more attempt. When a call on the
    /// current connection has been waiting longer than `wait`, that connection is abandoned
    /// untouched (its sessions forgotten, not closed: closing would wait too) and the module is
    /// started again at once — afresh if the stuck call still holds it.
    ///
    /// `wait`: how long calls in flight get to return before the module is loaded afresh.
    pub fn recover(&self, wait: Duration) -> Result<KeyDescription, HsmError> {
        self.set_healthy(false);
        if self.oldest_call().is_some_and(|age| age >= wait)
            || self.module.instance().stuck.load(Ordering::Acquire)
        {
            self.abandon();
            let seen = self.seen_generation.load(Ordering::Acquire);
            self.module.reinitialize(seen, wait)?;
            return self.connect();
        }
        match self.connect() {
            Ok(d) => Ok(d),
            Err(HsmError::Lost(why)) => {
                let others_healthy = self.module.healthy_keys.load(Ordering::Acquire) > 0;
                let uninitialised = !self.module.instance().read().initialized
                    || why.contains("CKR_CRYPTOKI_NOT_INITIALIZED");
                if others_healthy && !uninitialised {
                    return Err(HsmError::Lost(why));
                }
                self.disconnect();
                let seen = self.seen_generation.load(Ordering::Acquire);
                self.module.reinitialize(seen, wait)?;
                self.connect()
            }
            Err(e) => Err(e),
        }
    }

    fn open_connection(&self) -> Result<Connection, HsmError> {
        let instance = self.module.instance();
        let st = instance.read();
        if !st.initialized {
            return Err(HsmError::Lost(
                "the module is not initialised (CKR_CRYPTOKI_NOT_INITIALIZED)".into(),
            ));
        }
        let generation = st.generation;
        self.seen_generation.store(generation, Ordering::Release);
        let ctx = &instance.context;
        let (slot, token_label) = find_token(ctx, &self.spec.token)?;
        let info = ctx.get_token_info(slot).map_err(lost)?;
        let anchor = ctx.open_ro_session(slot).map_err(lost)?;
        let found =
            self.log_in_and_find_key(ctx, slot, &token_label, info.login_required(), &anchor);
        let (key, algorithm, public_key, mechanism) = match found {
            Ok(f) => f,
            Err(e) => {
                if matches!(e, HsmError::Lost(_)) {
                    // Closing on a lost device only fails; the handle dies with the module.
                    std::mem::forget(anchor);
                }
                return Err(e);
            }
        };
        drop(st);
        Ok(Connection {
            instance: instance.clone(),
            generation,
            slot,
            token_label,
            key,
            mechanism,
            algorithm,
            public_key,
            anchor: Mutex::new(Some(anchor)),
            sessions: Mutex::new(SessionSlots {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
            max_sessions: self.spec.sessions.max(1),
            lost: AtomicBool::new(false),
            calls: (0..self.spec.sessions.max(1))
                .map(|_| AtomicU64::new(0))
                .collect(),
        })
    }

    /// Logs in on `anchor` (once per token: the login holds while any session is open) and
    /// finds the key, its public key and the mechanism.
    fn log_in_and_find_key(
        &self,
        ctx: &Pkcs11,
        slot: Slot,
        token_label: &str,
        login_required: bool,
        anchor: &Session,
    ) -> Result<(ObjectHandle, SignatureAlgorithm, Vec<u8>, SignMechanism), HsmError> {
        if login_required {
            match anchor.login(UserType::User, Some(&self.pin)) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                Err(e) => return Err(classify(&e)),
            }
        }
        let keys = anchor
            .find_objects(&self.spec.key.template(ObjectClass::PRIVATE_KEY))
            .map_err(lost)?;
        let key = match keys.as_slice() {
            [k] => *k,
            [] => {
                return Err(HsmError::Config(format!(
                    "no private key with {} on token {token_label:?}",
                    self.spec.key.describe()
                )))
            }
            many => {
                return Err(HsmError::Config(format!(
                "{} private keys match {} on token {token_label:?}; set both key_label and key_id",
                many.len(),
                self.spec.key.describe()
            )))
            }
        };
        let (algorithm, public_key) = read_public_key(anchor, key, &self.spec.key)?;
        let mechanism = match algorithm {
            SignatureAlgorithm::EcdsaP256Sha256 => SignMechanism::Ecdsa { field: 32 },
            SignatureAlgorithm::EcdsaP384Sha384 => SignMechanism::Ecdsa { field: 48 },
            SignatureAlgorithm::RsaPkcs1Sha256 => match self.spec.rsa_mechanism {
                RsaMechanism::Sha256RsaPkcs => SignMechanism::Sha256RsaPkcs,
                RsaMechanism::RsaPkcs => SignMechanism::RsaPkcsDigestInfo,
                RsaMechanism::Auto => {
                    let list = ctx.get_mechanism_list(slot).map_err(lost)?;
                    if list.contains(&MechanismType::SHA256_RSA_PKCS) {
                        SignMechanism::Sha256RsaPkcs
                    } else if list.contains(&MechanismType::RSA_PKCS) {
                        SignMechanism::RsaPkcsDigestInfo
                    } else {
                        return Err(HsmError::Config(format!(
                            "token {token_label:?} offers neither CKM_SHA256_RSA_PKCS nor CKM_RSA_PKCS"
                        )));
                    }
                }
            },
        };
        Ok((key, algorithm, public_key, mechanism))
    }
}

fn find_token(ctx: &Pkcs11, selector: &TokenSelector) -> Result<(Slot, String), HsmError> {
    let slots = ctx.get_slots_with_token().map_err(lost)?;
    let mut seen = Vec::new();
    for slot in slots {
        let label = match ctx.get_token_info(slot) {
            Ok(i) => i.label().trim_end().to_owned(),
            Err(e) => {
                let e = classify(&e);
                if matches!(e, HsmError::Lost(_))
                    && matches!(selector, TokenSelector::Slot(id) if *id == slot.id())
                {
                    return Err(e);
                }
                continue;
            }
        };
        let hit = match selector {
            TokenSelector::Label(l) => l.trim_end() == label,
            TokenSelector::Slot(id) => *id == slot.id(),
        };
        if hit {
            return Ok((slot, label));
        }
        seen.push(label);
    }
    let wanted = match selector {
        TokenSelector::Label(l) => format!("no token labelled {l:?} is present"),
        TokenSelector::Slot(id) => format!("no token is present in slot {id}"),
    };
    Err(HsmError::Lost(format!(
        "{wanted} (tokens present: {})",
        if seen.is_empty() {
            "none".into()
        } else {
            seen.join(", ")
        }
    )))
}

fn attribute_bytes(attrs: &[Attribute], want: AttributeType) -> Option<Vec<u8>> {
    attrs.iter().find_map(|a| match (a, want) {
        (Attribute::EcParams(v), AttributeType::EcParams)
        | (Attribute::EcPoint(v), AttributeType::EcPoint)
        | (Attribute::Modulus(v), AttributeType::Modulus)
        | (Attribute::PublicExponent(v), AttributeType::PublicExponent) => Some(v.clone()),
        _ => None,
    })
}

/// Reads the key type and public key: from the public key object with the same label / id,
/// or (RSA) from the private key's own modulus and exponent.
fn read_public_key(
    session: &Session,
    private: ObjectHandle,
    selector: &KeySelector,
) -> Result<(SignatureAlgorithm, Vec<u8>), HsmError> {
    let key_type = session
        .get_attributes(private, &[AttributeType::KeyType])
        .map_err(lost)?
        .into_iter()
        .find_map(|a| match a {
            Attribute::KeyType(t) => Some(t),
            _ => None,
        })
        .ok_or_else(|| HsmError::Config("the private key has no CKA_KEY_TYPE".into()))?;
    let public = session
        .find_objects(&selector.template(ObjectClass::PUBLIC_KEY))
        .map_err(lost)?;
    if key_type == KeyType::EC {
        let handle = public.first().copied().ok_or_else(|| {
            HsmError::Config(format!(
                "no public key object with {} next to the EC private key (import it: pkcs11-tool --write-object pub.der --type pubkey)",
                selector.describe()
            ))
        })?;
        let attrs = session
            .get_attributes(handle, &[AttributeType::EcParams, AttributeType::EcPoint])
            .map_err(lost)?;
        let params = attribute_bytes(&attrs, AttributeType::EcParams)
            .ok_or_else(|| HsmError::Config("the EC public key has no CKA_EC_PARAMS".into()))?;
        let point = attribute_bytes(&attrs, AttributeType::EcPoint)
            .ok_or_else(|| HsmError::Config("the EC public key has no CKA_EC_POINT".into()))?;
        let curve = const_oid::ObjectIdentifier::from_der(&params)
            .map_err(|_| HsmError::Config("CKA_EC_PARAMS is not a named curve OID".into()))?;
        let (alg, field) = if curve == rfc5912::SECP_256_R_1 {
            (SignatureAlgorithm::EcdsaP256Sha256, 32)
        } else if curve == rfc5912::SECP_384_R_1 {
            (SignatureAlgorithm::EcdsaP384Sha384, 48)
        } else {
            return Err(HsmError::Config(format!(
                "EC curve {curve} is not supported (P-256 and P-384 are)"
            )));
        };
        Ok((alg, ec_point(&point, field)?))
    } else if key_type == KeyType::RSA {
        let wanted = [AttributeType::Modulus, AttributeType::PublicExponent];
        let mut attrs = match public.first() {
            Some(h) => session.get_attributes(*h, &wanted).map_err(lost)?,
            None => Vec::new(),
        };
        if attribute_bytes(&attrs, AttributeType::Modulus).is_none() {
            attrs = session.get_attributes(private, &wanted).map_err(lost)?;
        }
        let n = attribute_bytes(&attrs, AttributeType::Modulus)
            .ok_or_else(|| HsmError::Config("cannot read the RSA modulus".into()))?;
        let e = attribute_bytes(&attrs, AttributeType::PublicExponent)
            .ok_or_else(|| HsmError::Config("cannot read the RSA public exponent".into()))?;
        let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
        if bits < MIN_RSA_BITS {
            return Err(HsmError::Config(format!(
                "RSA key has about {bits} bits, at least {MIN_RSA_BITS} are required"
            )));
        }
        Ok((
            SignatureAlgorithm::RsaPkcs1Sha256,
            rsa_public_key_der(&n, &e)?,
        ))
    } else {
        Err(HsmError::Config(format!(
            "key type {key_type} is not supported (EC P-256/P-384 and RSA are)"
        )))
    }
}

/// CKA_EC_POINT is the DER OCTET STRING of the uncompressed point (PKCS#11 v2.40 §2.3.3);
/// some tokens return the bare point. Returns the bare point (the BIT STRING contents).
fn ec_point(value: &[u8], field: usize) -> Result<Vec<u8>, HsmError> {
    let bare_len = 1 + 2 * field;
    if value.len() == bare_len && value[0] == 0x04 {
        return Ok(value.to_vec());
    }
    let inner = der::asn1::OctetString::from_der(value)
        .map_err(|e| HsmError::Config(format!("CKA_EC_POINT: {e}")))?;
    let bytes = inner.as_bytes();
    if bytes.len() != bare_len || bytes[0] != 0x04 {
        return Err(HsmError::Config(
            "CKA_EC_POINT is not an uncompressed point on the key's curve".into(),
        ));
    }
    Ok(bytes.to_vec())
}

fn der_sequence_of_uints(parts: &[&[u8]]) -> Result<Vec<u8>, der::Error> {
    let uints = parts
        .iter()
        .map(|p| der::asn1::UintRef::new(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut len = der::Length::ZERO;
    for u in &uints {
        len = (len + u.encoded_len()?)?;
    }
    let mut out = Vec::new();
    der::Header::new(der::Tag::Sequence, len)?.encode_to_vec(&mut out)?;
    for u in &uints {
        u.encode_to_vec(&mut out)?;
    }
    Ok(out)
}

/// RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER } (RFC 8017 §A.1.1).
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Result<Vec<u8>, HsmError> {
    der_sequence_of_uints(&[n, e])
        .map_err(|err| HsmError::Config(format!("encoding the RSA public key: {err}")))
}

/// `r || s` (each `field` bytes, PKCS#11 v2.40 §2.3.1) to
/// `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` (RFC 5480 §2.2).
pub fn ecdsa_raw_to_der(raw: &[u8], field: usize) -> Result<Vec<u8>, HsmError> {
    if raw.len() != 2 * field {
        return Err(HsmError::Failed(format!(
            "the token returned a {}-byte ECDSA signature, expected {}",
            raw.len(),
            2 * field
        )));
    }
    let (r, s) = raw.split_at(field);
    der_sequence_of_uints(&[r, s])
        .map_err(|e| HsmError::Failed(format!("encoding the ECDSA signature: {e}")))
}

/// DER DigestInfo for SHA-256 (RFC 8017 §9.2, note 1): the fixed prefix, then the hash.
pub fn sha256_digest_info(message: &[u8]) -> Vec<u8> {
    const PREFIX: [u8; 19] = [
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    let d = ring::digest::digest(&ring::digest::SHA256, message);
    let mut out = Vec::with_capacity(PREFIX.len() + 32);
    out.extend_from_slice(&PREFIX);
    out.extend_from_slice(d.as_ref());
    out
}

// === inventory (`vigil hsm list`) ===

/// One token as `vigil hsm list` shows it.
#[derive(Debug, Clone)]
pub struct TokenListing {
    /// Slot id.
    pub slot: u64,
    /// Token label.
    pub label: String,
    /// Manufacturer and model.
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// Whether the token is initialised (a blank slot is not).
    pub initialized: bool,
    /// Whether the listing logged in (private objects visible).
    pub logged_in: bool,
    /// Why logging in failed, if it did.
    pub login_error: Option<String>,
    /// Why its objects could not be listed, if they could not.
    pub error: Option<String>,
    /// Keys: (class, label, id hex, type).
    pub keys: Vec<ObjectListing>,
}

/// One key object.
#[derive(Debug, Clone)]
pub struct ObjectListing {
    /// `private` or `public`.
    pub class: &'static str,
    /// CKA_LABEL.
    pub label: String,
    /// CKA_ID, hex.
    pub id: String,
    /// Key type, e.g. `EC` or `RSA`.
    pub key_type: String,
}

fn list_keys(
    ctx: &Pkcs11,
    slot: Slot,
    listing: &mut TokenListing,
    pin_for: &impl Fn(&str) -> Option<AuthPin>,
) -> Result<(), HsmError> {
    let session = ctx.open_ro_session(slot).map_err(lost)?;
    if let Some(pin) = pin_for(&listing.label) {
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                listing.logged_in = true
            }
            Err(e) => listing.login_error = Some(classify(&e).to_string()),
        }
    }
    for (class, name) in [
        (ObjectClass::PRIVATE_KEY, "private"),
        (ObjectClass::PUBLIC_KEY, "public"),
    ] {
        for h in session
            .find_objects(&[Attribute::Class(class)])
            .map_err(lost)?
        {
            let attrs = session
                .get_attributes(
                    h,
                    &[
                        AttributeType::Label,
                        AttributeType::Id,
                        AttributeType::KeyType,
                    ],
                )
                .map_err(lost)?;
            let mut o = ObjectListing {
                class: name,
                label: String::new(),
                id: String::new(),
                key_type: String::new(),
            };
            for a in attrs {
                match a {
                    Attribute::Label(l) => o.label = String::from_utf8_lossy(&l).into_owned(),
                    Attribute::Id(id) => o.id = crate::status::hex(&id),
                    Attribute::KeyType(t) => o.key_type = t.to_string(),
                    _ => {}
                }
            }
            listing.keys.push(o);
        }
    }
    if listing.logged_in {
        let _ = session.logout();
    }
    Ok(())
}

/// Lists the tokens of `module` and, on the token that `pin_for` gives a PIN for, the keys
/// (private keys need a login). Read-only sessions only; an error on one token is recorded
/// in its listing.
pub fn list_tokens(
    module: &Module,
    pin_for: impl Fn(&str) -> Option<AuthPin>,
) -> Result<Vec<TokenListing>, HsmError> {
    let instance = module.instance();
    let _st = instance.read();
    let ctx = &instance.context;
    let mut out = Vec::new();
    for slot in ctx.get_slots_with_token().map_err(lost)? {
        let info = ctx.get_token_info(slot).map_err(lost)?;
        let mut listing = TokenListing {
            slot: slot.id(),
            label: info.label().trim_end().to_owned(),
            model: format!("{} {}", info.manufacturer_id().trim(), info.model().trim()),
            serial: info.serial_number().trim().to_owned(),
            initialized: info.token_initialized(),
            logged_in: false,
            login_error: None,
            error: None,
            keys: Vec::new(),
        };
        if listing.initialized {
            if let Err(e) = list_keys(ctx, slot, &mut listing, &pin_for) {
                listing.error = Some(e.to_string());
            }
        }
        out.push(listing);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ckr_names_follow_the_specification() {
        assert_eq!(ckr_name(&RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            ckr_name(&RvError::CryptokiNotInitialized),
            "CKR_CRYPTOKI_NOT_INITIALIZED"
        );
        assert_eq!(
            ckr_name(&RvError::SessionHandleInvalid),
            "CKR_SESSION_HANDLE_INVALID"
        );
    }

    #[test]
    fn errors_are_sorted_by_what_to_do() {
        use cryptoki::context::Function;
        let e = |rv| classify(&CkError::Pkcs11(rv, Function::Sign));
        assert!(matches!(e(RvError::PinIncorrect), HsmError::Pin(_)));
        assert!(matches!(e(RvError::PinLocked), HsmError::Pin(_)));
        for rv in [
            RvError::DeviceError,
            RvError::DeviceRemoved,
            RvError::SessionHandleInvalid,
            RvError::CryptokiNotInitialized,
        ] {
            assert!(matches!(e(rv), HsmError::Lost(_)), "{rv:?}");
        }
        assert!(matches!(e(RvError::DataLenRange), HsmError::Failed(_)));
        assert!(e(RvError::PinIncorrect)
            .to_string()
            .contains("CKR_PIN_INCORRECT"));
        assert!(e(RvError::PinIncorrect).is_permanent());
        assert!(!e(RvError::DeviceError).is_permanent());
    }

    #[test]
    fn raw_ecdsa_becomes_der_that_ring_verifies() {
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("keygen");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("key");
        // Sign many times so that r or s with a high bit or leading zeros turn up.
        for i in 0..64u8 {
            let msg = [i; 40];
            let raw = key.sign(&rng, &msg).expect("sign");
            let der = ecdsa_raw_to_der(raw.as_ref(), 32).expect("der");
            assert!(crate::signer::verify(
                SignatureAlgorithm::EcdsaP256Sha256,
                key.public_key().as_ref(),
                &msg,
                &der
            ));
        }
        assert!(ecdsa_raw_to_der(&[1; 63], 32).is_err());
        // Leading zeros are stripped and a high bit gets a 0x00 pad.
        let mut raw = [0u8; 64];
        raw[31] = 0x01;
        raw[32] = 0x80;
        let der = ecdsa_raw_to_der(&raw, 32).expect("der");
        assert_eq!(&der[..5], &[0x30, 0x26, 0x02, 0x01, 0x01]);
        assert_eq!(&der[5..8], &[0x02, 0x21, 0x00]);
    }

    #[test]
    fn ec_point_accepts_der_and_bare_forms() {
        let mut bare = vec![0x04];
        bare.extend_from_slice(&[7; 64]);
        let wrapped = der::asn1::OctetString::new(bare.clone())
            .expect("octets")
            .to_der()
            .expect("der");
        assert_eq!(ec_point(&bare, 32).expect("bare"), bare);
        assert_eq!(ec_point(&wrapped, 32).expect("wrapped"), bare);
        assert!(ec_point(&wrapped, 48).is_err());
    }

    #[test]
    fn digest_info_matches_rfc_8017() {
        let di = sha256_digest_info(b"abc");
        assert_eq!(di.len(), 51);
        // Parse it back: SEQUENCE { AlgorithmIdentifier { sha256, NULL }, OCTET STRING }.
        let any = der::asn1::Any::from_der(&di).expect("der");
        assert_eq!(der::Tagged::tag(&any), der::Tag::Sequence);
        assert!(di.ends_with(ring::digest::digest(&ring::digest::SHA256, b"abc").as_ref()));
    }

    #[test]
    fn rsa_public_key_is_pkcs1() {
        let der = rsa_public_key_der(&[0x80, 0, 1], &[1, 0, 1]).expect("der");
        assert_eq!(
            der,
            [0x30, 0x0b, 0x02, 0x04, 0x00, 0x80, 0x00, 0x01, 0x02, 0x03, 0x01, 0x00, 0x01]
        );
    }

    #[test]
    fn module_environment_is_set_for_the_call_and_restored() {
        let name = "VIGIL_TEST_MODULE_ENV";
        let env: BTreeMap<String, String> = [(name.to_owned(), "inside".to_owned())].into();
        std::env::set_var(name, "before");
        let seen = with_env(&env, || std::env::var(name).ok());
        assert_eq!(seen.as_deref(), Some("inside"));
        assert_eq!(std::env::var(name).ok().as_deref(), Some("before"));
        std::env::remove_var(name);
        with_env(&env, || ());
        assert!(std::env::var_os(name).is_none());
        // Concurrent callers take turns: each sees its own value.
        let handles: Vec<_> = (0..4)
            .map(|i| {
                std::thread::spawn(move || {
                    let env: BTreeMap<String, String> =
                        [("VIGIL_TEST_MODULE_ENV_2".to_owned(), i.to_string())].into();
                    (0..50).all(|_| {
                        with_env(&env, || {
                            std::env::var("VIGIL_TEST_MODULE_ENV_2").ok() == Some(i.to_string())
                        })
                    })
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().expect("thread"));
        }
    }

    #[test]
    fn pin_files_lose_one_newline_and_env_pins_are_read() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("pin");
        std::fs::write(&p, "12 34\r\n").expect("write");
        let pin = read_pin(&PinSource::File(p.clone())).expect("pin");
        use secrecy::ExposeSecret;
        assert_eq!(pin.expose_secret(), "12 34");
        std::fs::write(&p, "\n").expect("write");
        assert!(read_pin(&PinSource::File(p)).is_err());
        let e = read_pin(&PinSource::Env("VIGIL_TEST_SURELY_UNSET_PIN".into())).expect_err("unset");
        assert!(e.contains("VIGIL_TEST_SURELY_UNSET_PIN"), "{e}");
    }
}
