//! Loading a PKCS#11 module, and starting it again after a lost device or connection.
//!
//! Modules are loaded once per path in a process and shared by every key that names them;
//! [`Module::reinitialize`] runs `C_Finalize` + `C_Initialize` to recover from a lost device or
//! connection. Every call into a module holds its read lock and re-initialising takes the write
//! lock, so no call is in flight while the module is finalized, and a session handle from an
//! older initialisation is forgotten rather than closed (the number may belong to a new session).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::Session;

use super::{HsmError, classify, lock, lost};

#[derive(Debug, Clone, Copy)]
pub(super) struct ModuleState {
    /// Unique per initialisation; sessions and handles of another one are void.
    pub(super) generation: u64,
    pub(super) initialized: bool,
}

/// One loaded function list of a module (one `C_GetFunctionList`) and its initialisation.
/// Every call into it holds the read lock; `C_Finalize` / `C_Initialize` take the write lock.
pub struct Instance {
    pub(super) context: Pkcs11,
    state: RwLock<ModuleState>,
    /// A call into it did not come back: connect no more through it; re-initialise it once
    /// its calls are back, or load the module afresh.
    pub(super) stuck: AtomicBool,
}

impl Instance {
    pub(super) fn read(&self) -> RwLockReadGuard<'_, ModuleState> {
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

    fn initialize(&self, st: &mut ModuleState) -> Result<(), CkError> {
        initialize(&self.context)?;
        st.initialized = true;
        Ok(())
    }

    /// Closes `session` if it belongs to the current initialisation and its connection is not
    /// known to be lost, else forgets it: after a re-initialisation its handle number may name
    /// someone else's session, and closing on a lost device only fails.
    pub(super) fn discard(&self, generation: u64, session: Session, lost: bool) {
        let st = self.read();
        if !lost && st.initialized && st.generation == generation {
            drop(session); // C_CloseSession, under the read lock
        } else {
            std::mem::forget(session);
        }
    }
}

/// `C_Initialize`; "already initialised" is success.
fn initialize(context: &Pkcs11) -> Result<(), CkError> {
    let args = CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK);
    match context.initialize(args) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A PKCS#11 module, shared by the keys of this process that name the same path. Holds its
/// current [`Instance`]; re-initialising may replace it (see [`Module::reinitialize`]).
pub struct Module {
    path: PathBuf,
    current: Mutex<Arc<Instance>>,
    generations: AtomicU64,
    /// Keys on this module that are currently healthy; the module is re-initialised only when
    /// none is (finalizing would tear down their sessions too).
    pub(super) healthy_keys: AtomicUsize,
}

static MODULES: OnceLock<Mutex<Vec<Arc<Module>>>> = OnceLock::new();

impl Module {
    /// Loads (or finds already loaded) the module at `path`, and initialises it. The module
    /// reads the environment of this process (a module with a `module_env` of its own runs in
    /// a host process started with it: see [`super::host`]).
    /// Only a module that cannot be loaded is an error here; one whose `C_Initialize` fails is
    /// returned uninitialised, and the keys on it report [`HsmError::Lost`] until
    /// [`Module::reinitialize`] succeeds.
    pub fn load(path: &Path) -> Result<Arc<Module>, HsmError> {
        let mut modules = lock(MODULES.get_or_init(Default::default));
        if let Some(m) = modules.iter().find(|m| m.path == path) {
            return Ok(m.clone());
        }
        let context = load_context(path)?;
        let mut st = ModuleState {
            generation: 1,
            initialized: false,
        };
        match initialize(&context) {
            Ok(()) => st.initialized = true,
            Err(e) => {
                tracing::warn!(module = %path.display(), error = %classify(&e), "C_Initialize failed; will retry")
            }
        }
        let module = Arc::new(Module {
            path: path.to_path_buf(),
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
            instance.initialize(&mut st).map_err(lost)?;
            tracing::info!(module = %self.path.display(), generation = st.generation, "PKCS#11 module re-initialised");
            return Ok(st.generation);
        }
        let context = load_context(&self.path)?;
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => {}
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                return Err(HsmError::Lost(format!(
                    "a call into {} has not returned in {wait:?}, and the module keeps one state per process; waiting for it",
                    self.path.display()
                )));
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

fn load_context(path: &Path) -> Result<Pkcs11, HsmError> {
    Pkcs11::new(path)
        .map_err(|e| HsmError::Config(format!("module {}: {}", path.display(), classify(&e))))
}
