//! Each `[[hsm]]` key in a host process of its own: `vigil pkcs11-host`.
//!
//! A PKCS#11 module reads its settings from the process environment when it is loaded or
//! initialised (p11-kit-client: `P11_KIT_SERVER_ADDRESS`; SoftHSM2: `SOFTHSM2_CONF`), and two
//! `[[hsm]]` entries may name the same module with different `module_env`. Changing vigil's
//! own environment at run time races with every thread that reads it (`getenv` in
//! `getaddrinfo`, in the allocator, in the module itself), so vigil never does: a
//! [`HostedKey`] starts its host with [`std::process::Command`], the entry's `module_env`
//! added to the child's environment at spawn, and talks to it over the child's stdin and
//! stdout ([`super::protocol`]). The host runs the in-process [`Pkcs11Key`] — load,
//! initialise, log in, find the key, sign, re-initialise — on `hsm.sessions` + 2 worker
//! threads.
//!
//! Every key is hosted, whether its `module_env` is empty or not: one code path, and the
//! parent can always end a call stuck in a module by killing the host (the call's thread in
//! vigil returns at once with [`HsmError::Lost`]), which in-process code can never do. The cost
//! is one pipe round trip per signature (see `benches/hsm_sign.rs` and docs/HSM.md "Speed").
//!
//! The PIN is read by vigil (from `pin_file` or `pin_env`) and sent in the setup frame; it is
//! never in the host's argv or environment, and never logged.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use super::protocol::{
    PROTOCOL_VERSION, PinBytes, Request, Response, Setup, SetupFrame, read_request, read_response,
    read_setup, write_request, write_response, write_setup,
};
use super::{
    AuthPin, HsmError, KeyDescription, KeySpec, Module, Pkcs11Key, TokenListing, list_tokens, lock,
};
use crate::config::LogFormat;

/// The hidden subcommand of the `vigil` binary that runs a host.
pub const HOST_SUBCOMMAND: &str = "pkcs11-host";

/// How long a new host may take to greet, load and initialise its module. p11-kit-client
/// connects to its server in `C_Initialize`; a server that accepts and stays silent would hang
/// it for good, so the host is killed past this and started again by the next reconnection.
pub const HOST_SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a disconnect may take before vigil stops waiting (the host logs out and closes
/// its sessions; nothing depends on the answer).
const HOST_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);

// === options ===

/// How hosts are started: the program and the log settings they get.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// The `vigil` binary (default: this executable).
    pub program: PathBuf,
    /// `log.filter` for the hosts.
    pub log_filter: String,
    /// `log.format` for the hosts.
    pub log_format: LogFormat,
}

impl HostOptions {
    /// Hosts of this very binary: `/proc/self/exe`, which still names it after a package
    /// upgrade replaced the file (the protocol version then still matches), or where that is
    /// missing, the path it was started from.
    pub fn this_binary(log_filter: &str, log_format: LogFormat) -> Result<Self, HsmError> {
        let proc_self = std::path::Path::new("/proc/self/exe");
        let program = if proc_self.exists() {
            proc_self.to_path_buf()
        } else {
            std::env::current_exe().map_err(|e| {
                HsmError::Config(format!("finding the vigil binary to host PKCS#11: {e}"))
            })?
        };
        Ok(HostOptions {
            program,
            log_filter: log_filter.to_owned(),
            log_format,
        })
    }
}

static OPTIONS: Mutex<Option<HostOptions>> = Mutex::new(None);

/// Environment variables that host processes do not inherit: those read as a PIN (`pin_env`).
static WITHHELD: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Keeps the variable `name` out of the environment of every host started from now on.
pub fn withhold_from_hosts(name: &str) {
    let mut w = lock(&WITHHELD);
    if !w.iter().any(|n| n == name) {
        w.push(name.to_owned());
    }
}

/// Sets how hosts are started from now on. `vigil` calls it at start-up with its log settings;
/// tests and benches, whose executable is not `vigil`, name the binary.
pub fn configure_hosts(options: HostOptions) {
    *lock(&OPTIONS) = Some(options);
}

fn options() -> Result<HostOptions, HsmError> {
    match lock(&OPTIONS).clone() {
        Some(o) => Ok(o),
        None => HostOptions::this_binary("info", LogFormat::Text),
    }
}

// === the parent's end ===

type SpawnRequest = (Box<Command>, mpsc::SyncSender<std::io::Result<Child>>);

static SPAWNER: Mutex<Option<mpsc::Sender<SpawnRequest>>> = Mutex::new(None);

/// Starts `command` from one long-lived thread. The host asks the kernel to kill it when its
/// parent goes (`PR_SET_PDEATHSIG`), and Linux ties that to the *thread* that forked it: a
/// host started from a short-lived check thread would die with that thread.
fn spawn(command: Command) -> std::io::Result<Child> {
    let (tx, rx) = mpsc::sync_channel(1);
    {
        let mut spawner = lock(&SPAWNER);
        let sender = match spawner.as_ref() {
            Some(s) => s.clone(),
            None => {
                let (stx, srx) = mpsc::channel::<SpawnRequest>();
                std::thread::Builder::new()
                    .name("vigil-hsm-host-spawner".into())
                    .spawn(move || {
                        for (mut command, reply) in srx {
                            let _ = reply.send(command.spawn());
                        }
                    })?;
                *spawner = Some(stx.clone());
                stx
            }
        };
        if sender.send((Box::new(command), tx)).is_err() {
            // The thread is gone (it never returns; only a panic in spawn could end it): the
            // next call starts another.
            *spawner = None;
            return Err(std::io::Error::other("the host spawner thread is gone"));
        }
    }
    rx.recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("the host spawner thread is gone")))
}

struct Pending {
    started: Instant,
    sign: bool,
    reply: mpsc::SyncSender<Response>,
}

#[derive(Default)]
struct CallTable {
    pending: HashMap<u64, Pending>,
    /// Why the host can take no more calls, once it cannot.
    closed: Option<String>,
    /// The host greeted with the right protocol version (else it is not a vigil host of this
    /// version: a setting to fix, not a connection to retry).
    greeted: bool,
}

/// One running host process.
struct Host {
    name: String,
    pid: u32,
    child: Mutex<Option<Child>>,
    stdin: Mutex<BufWriter<ChildStdin>>,
    calls: Arc<Mutex<CallTable>>,
    next_id: AtomicU64,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill("vigil no longer uses it");
    }
}

impl Host {
    /// Starts a host for `setup` with `env` added to its environment, and waits for it to
    /// load the module.
    fn start(
        name: &str,
        env: &std::collections::BTreeMap<String, String>,
        setup: Setup,
    ) -> Result<Arc<Host>, HsmError> {
        let options = options()?;
        let mut command = Command::new(&options.program);
        for name in lock(&WITHHELD).iter() {
            command.env_remove(name);
        }
        command
            .arg(HOST_SUBCOMMAND)
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = spawn(command).map_err(|e| {
            HsmError::Config(format!(
                "starting the PKCS#11 host {} {HOST_SUBCOMMAND}: {e}",
                options.program.display()
            ))
        })?;
        let pid = child.id();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HsmError::Failed("the host's pipes were not created".into()));
        };
        let calls: Arc<Mutex<CallTable>> = Arc::default();
        // The setup's answer is call 0; the greeting is checked by the reader first.
        let (tx, rx) = mpsc::sync_channel(1);
        lock(&calls).pending.insert(
            0,
            Pending {
                started: Instant::now(),
                sign: false,
                reply: tx,
            },
        );
        let host = Arc::new(Host {
            name: name.to_owned(),
            pid,
            child: Mutex::new(Some(child)),
            stdin: Mutex::new(BufWriter::new(stdin)),
            calls: calls.clone(),
            next_id: AtomicU64::new(1),
        });
        let reader_calls = calls.clone();
        std::thread::Builder::new()
            .name(format!("vigil-hsm-host-{name}"))
            .spawn(move || read_answers(BufReader::new(stdout), &reader_calls))
            .map_err(|e| HsmError::Failed(format!("starting the host's reader thread: {e}")))?;
        let frame = SetupFrame {
            setup,
            log_filter: options.log_filter,
            log_format: options.log_format,
        };
        // A write that fails (the process exited) is not the end of it: the reader says why.
        let sent = write_setup(&mut *lock(&host.stdin), &frame);
        drop(frame);
        if let Err(e) = &sent {
            tracing::debug!(hsm = name, error = %e, "sending the setup to the PKCS#11 host");
        }
        match rx.recv_timeout(HOST_SETUP_TIMEOUT) {
            Ok(Response::Done) => Ok(host),
            Ok(Response::Error(e)) => {
                host.kill("its setup failed");
                Err(e)
            }
            Ok(other) => {
                host.kill("it answered its setup out of turn");
                Err(HsmError::Failed(format!(
                    "the host answered its setup with {other:?}"
                )))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                host.kill("it did not load the module in time");
                Err(HsmError::Lost(format!(
                    "the module was not loaded and initialised within {HOST_SETUP_TIMEOUT:?} (a server that does not answer?); killed its host"
                )))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let why = host.closed_why();
                if lock(&host.calls).greeted {
                    Err(HsmError::Lost(why))
                } else {
                    Err(HsmError::Config(format!(
                        "{} {HOST_SUBCOMMAND} is not a PKCS#11 host of this vigil: {why}",
                        options.program.display()
                    )))
                }
            }
        }
    }

    fn closed_why(&self) -> String {
        lock(&self.calls)
            .closed
            .clone()
            .unwrap_or_else(|| "the host process is gone".into())
    }

    fn is_closed(&self) -> bool {
        lock(&self.calls).closed.is_some()
    }

    /// Sends `request` and waits for its answer, at most `deadline` if one is given. A host
    /// that exits or is killed answers every call in flight with [`HsmError::Lost`] at once.
    fn call(&self, request: &Request, deadline: Option<Duration>) -> Result<Response, HsmError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut t = lock(&self.calls);
            if let Some(why) = &t.closed {
                return Err(HsmError::Lost(why.clone()));
            }
            t.pending.insert(
                id,
                Pending {
                    started: Instant::now(),
                    sign: matches!(request, Request::Sign { .. }),
                    reply: tx,
                },
            );
        }
        if let Err(e) = write_request(&mut *lock(&self.stdin), id, request) {
            lock(&self.calls).pending.remove(&id);
            self.kill("its pipe failed");
            return Err(HsmError::Lost(format!("writing to the host: {e}")));
        }
        let answer = match deadline {
            None => rx.recv().map_err(|_| None),
            Some(d) => rx.recv_timeout(d).map_err(|e| match e {
                mpsc::RecvTimeoutError::Timeout => Some(d),
                mpsc::RecvTimeoutError::Disconnected => None,
            }),
        };
        match answer {
            Ok(Response::Error(e)) => Err(e),
            Ok(r) => Ok(r),
            Err(Some(d)) => {
                lock(&self.calls).pending.remove(&id);
                Err(HsmError::Lost(format!(
                    "the host did not answer within {d:?}"
                )))
            }
            Err(None) => Err(HsmError::Lost(self.closed_why())),
        }
    }

    /// How long the oldest call in flight (only signatures, with `signatures_only`) has
    /// waited for its answer.
    fn oldest(&self, signatures_only: bool) -> Option<Duration> {
        lock(&self.calls)
            .pending
            .values()
            .filter(|p| p.sign || !signatures_only)
            .map(|p| p.started.elapsed())
            .max()
    }

    /// Kills the process; every call in flight returns [`HsmError::Lost`].
    fn kill(&self, why: &str) {
        {
            let mut t = lock(&self.calls);
            if t.closed.is_none() {
                t.closed = Some(format!(
                    "the PKCS#11 host of {} (pid {}) was stopped: {why}",
                    self.name, self.pid
                ));
            }
            t.pending.clear();
        }
        if let Some(mut child) = lock(&self.child).take() {
            let _ = child.kill();
            // Reaped off the caller's thread: a process in uninterruptible sleep (a driver
            // call) can take its time to go.
            let _ = std::thread::Builder::new()
                .name("vigil-hsm-host-reap".into())
                .spawn(move || child.wait());
        }
    }
}

/// The reader of one host: checks the greeting, then hands each answer to its caller. Ends
/// (closing the call table) when the host exits or sends a frame that does not parse.
fn read_answers(mut out: BufReader<std::process::ChildStdout>, calls: &Mutex<CallTable>) {
    let why = match read_response(&mut out) {
        Ok(Some((_, Response::Hello { version }))) if version == PROTOCOL_VERSION => {
            lock(calls).greeted = true;
            loop {
                match read_response(&mut out) {
                    Ok(Some((id, answer))) => {
                        let waiting = lock(calls).pending.remove(&id);
                        if let Some(p) = waiting {
                            let _ = p.reply.send(answer);
                        }
                    }
                    Ok(None) => break "the host process exited".to_owned(),
                    Err(e) => break format!("the host process sent a bad frame: {e}"),
                }
            }
        }
        Ok(Some((_, Response::Hello { version }))) => format!(
            "the host speaks protocol version {version}, this vigil {PROTOCOL_VERSION} (was the binary replaced?)"
        ),
        Ok(Some(_)) => "the host did not greet first".into(),
        Ok(None) => "the host process exited before greeting".into(),
        Err(e) => format!("the host's greeting: {e}"),
    };
    let mut t = lock(calls);
    if t.closed.is_none() {
        t.closed = Some(why);
    }
    t.pending.clear();
}

fn pin_bytes(pin: &AuthPin) -> PinBytes {
    PinBytes(Zeroizing::new(pin.expose_secret().as_bytes().to_vec()))
}

/// A key on a PKCS#11 token, reached through a host process of its own (see the module
/// docs). The same operations as [`Pkcs11Key`], thread-safe; each signature is one call to
/// the host.
pub struct HostedKey {
    spec: KeySpec,
    pin: AuthPin,
    expected: Option<Vec<u8>>,
    host: Mutex<Option<Arc<Host>>>,
    description: Mutex<Option<KeyDescription>>,
}

impl HostedKey {
    /// Starts the host, which loads the module and prepares the key; does not connect.
    /// `expected`: the public key the token's key must have (from the certificate). Fails on
    /// a module that cannot be loaded; a host that cannot start for a reason that may pass is
    /// started again by [`HostedKey::connect`].
    pub fn new(spec: KeySpec, pin: AuthPin, expected: Option<Vec<u8>>) -> Result<Self, HsmError> {
        if !spec.module.is_file() {
            return Err(HsmError::Config(format!(
                "module {}: no such file",
                spec.module.display()
            )));
        }
        let key = HostedKey {
            spec,
            pin,
            expected,
            host: Mutex::new(None),
            description: Mutex::new(None),
        };
        match key.start() {
            Ok(h) => *lock(&key.host) = Some(h),
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) => {
                tracing::warn!(hsm = %key.spec.name, error = %e, "the PKCS#11 host did not start; retrying when connecting")
            }
        }
        Ok(key)
    }

    fn start(&self) -> Result<Arc<Host>, HsmError> {
        let setup = Setup::Key {
            name: self.spec.name.clone(),
            module: self.spec.module.clone(),
            token: self.spec.token.clone(),
            key: self.spec.key.clone(),
            sessions: u32::try_from(self.spec.sessions).unwrap_or(u32::MAX),
            rsa_mechanism: self.spec.rsa_mechanism,
            expected: self.expected.clone(),
            pin: pin_bytes(&self.pin),
        };
        Host::start(&self.spec.name, &self.spec.module_env, setup)
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The process id of the current host, if one runs.
    pub fn host_pid(&self) -> Option<u32> {
        lock(&self.host).as_ref().map(|h| h.pid)
    }

    fn live_host(&self) -> Option<Arc<Host>> {
        lock(&self.host).clone().filter(|h| !h.is_closed())
    }

    /// The running host, or a new one if it is gone.
    fn host_or_start(&self) -> Result<Arc<Host>, HsmError> {
        if let Some(h) = self.live_host() {
            return Ok(h);
        }
        self.restart(None)
    }

    /// Kills the current host (if any) and starts a new one.
    fn restart(&self, why: Option<&str>) -> Result<Arc<Host>, HsmError> {
        let old = lock(&self.host).take();
        if let Some(old) = &old {
            old.kill(why.unwrap_or("it is replaced"));
        }
        let h = self.start()?;
        if let Some(why) = why {
            tracing::warn!(hsm = %self.spec.name, old_pid = old.as_ref().map(|o| o.pid), pid = h.pid, "{why}: killed its PKCS#11 host and loaded a fresh instance of the module");
        }
        *lock(&self.host) = Some(h.clone());
        Ok(h)
    }

    /// Signs `message` (the host hashes it first for ECDSA / `CKM_RSA_PKCS`), waiting up to
    /// `wait` for a free session. ECDSA signatures come back DER-encoded.
    pub fn sign(&self, message: &[u8], wait: Duration) -> Result<Vec<u8>, HsmError> {
        let host = self
            .live_host()
            .ok_or_else(|| HsmError::Lost("not connected (no host process)".into()))?;
        let request = Request::Sign {
            message: message.to_vec(),
            wait_ms: millis(wait),
        };
        match host.call(&request, None)? {
            Response::Signature(s) => Ok(s),
            other => Err(out_of_turn(&other)),
        }
    }

    /// How long the oldest signature in flight has been waiting for its answer, if one is in
    /// flight. A call that never comes back (a network HSM gone silent) shows here, so the
    /// pool can take the key out of service.
    pub fn oldest_call(&self) -> Option<Duration> {
        self.live_host()?.oldest(true)
    }

    /// The connected key's description, if connected.
    pub fn description(&self) -> Option<KeyDescription> {
        lock(&self.description).clone()
    }

    /// Ends the connection without another call into the module: kills the host, so every
    /// call stuck in it returns at once.
    pub fn abandon(&self) {
        *lock(&self.description) = None;
        if let Some(h) = lock(&self.host).take() {
            h.kill("the connection was abandoned");
        }
    }

    /// Drops the connection: the host closes its sessions (the login ends with the last one).
    pub fn disconnect(&self) {
        *lock(&self.description) = None;
        if let Some(h) = self.live_host() {
            let _ = h.call(&Request::Disconnect, Some(HOST_DISCONNECT_TIMEOUT));
        }
    }

    /// Connects: finds the token, logs in, finds the key and its public key, picks the
    /// mechanism, and checks the public key against the expected one. Starts a new host if
    /// the last one is gone.
    pub fn connect(&self) -> Result<KeyDescription, HsmError> {
        *lock(&self.description) = None;
        let host = self.host_or_start()?;
        self.described(host.call(&Request::Connect, None)?)
    }

    /// Reconnects after a loss. When a call has been waiting longer than `wait`, or the host
    /// is gone, the host is killed and a new one loads the module afresh (every module, even
    /// one that keeps one state per process, starts clean in a new process); otherwise the
    /// host reconnects in place, re-initialising the module if need be
    /// ([`Pkcs11Key::recover`]).
    pub fn recover(&self, wait: Duration) -> Result<KeyDescription, HsmError> {
        *lock(&self.description) = None;
        let host = match self.live_host() {
            Some(h) => match h.oldest(false) {
                Some(age) if age >= wait => self.restart(Some(&format!(
                    "a call into the module has not returned in {age:.1?}"
                )))?,
                _ => h,
            },
            None => {
                let had = lock(&self.host).is_some();
                self.restart(had.then_some("its host process had stopped"))?
            }
        };
        let answer = host.call(
            &Request::Recover {
                wait_ms: millis(wait),
            },
            None,
        )?;
        self.described(answer)
    }

    fn described(&self, answer: Response) -> Result<KeyDescription, HsmError> {
        match answer {
            Response::Described(d) => {
                *lock(&self.description) = Some(d.clone());
                Ok(d)
            }
            other => Err(out_of_turn(&other)),
        }
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn out_of_turn(r: &Response) -> HsmError {
    HsmError::Failed(format!("the host answered out of turn: {r:?}"))
}

/// What `vigil hsm list` shows of one module, read by a host started with `env`.
pub struct ModuleListing {
    /// `C_GetInfo`, or why it failed.
    pub info: Result<String, HsmError>,
    /// The tokens, or why they could not be listed.
    pub tokens: Result<Vec<TokenListing>, HsmError>,
}

/// Lists a module's tokens in a host started with `env`, logging in to each token that
/// `pins` names by label (a PIN with an empty label is for every token). Fails when the
/// module cannot be loaded.
pub fn list_module(
    module: &std::path::Path,
    env: &std::collections::BTreeMap<String, String>,
    pins: Vec<(String, AuthPin)>,
) -> Result<ModuleListing, HsmError> {
    if !module.is_file() {
        return Err(HsmError::Config(format!(
            "module {}: no such file",
            module.display()
        )));
    }
    let host = Host::start(
        "hsm-list",
        env,
        Setup::Module {
            module: module.to_path_buf(),
        },
    )?;
    let info = host.call(&Request::Info, None).and_then(|r| match r {
        Response::Text(t) => Ok(t),
        other => Err(out_of_turn(&other)),
    });
    let pins = pins
        .into_iter()
        .map(|(label, pin)| (label, pin_bytes(&pin)))
        .collect();
    let tokens = host
        .call(&Request::ListTokens { pins }, None)
        .and_then(|r| match r {
            Response::Tokens(t) => Ok(t),
            other => Err(out_of_turn(&other)),
        });
    Ok(ModuleListing { info, tokens })
}

// === the host's end ===

type Answers = Arc<Mutex<BufWriter<File>>>;

fn answer(out: &Answers, id: u64, r: &Response) {
    if let Err(e) = write_response(&mut *lock(out), id, r) {
        // The parent is gone or the pipe broke: nothing more to do here.
        tracing::error!(error = %e, "writing to vigil; the PKCS#11 host exits");
        std::process::exit(3);
    }
}

fn auth_pin(mut pin: PinBytes) -> Result<AuthPin, HsmError> {
    // The buffer moves into the String and then the secret (its capacity is its length, so
    // nothing is copied and left behind).
    let bytes = std::mem::take(&mut *pin.0);
    String::from_utf8(bytes).map(AuthPin::from).map_err(|e| {
        let _ = Zeroizing::new(e.into_bytes());
        HsmError::Pin("the PIN is not UTF-8".into())
    })
}

/// `vigil pkcs11-host`: runs one key (or one module) for the vigil that started it, until its
/// stdin closes. Its stdout carries frames only; anything else written to stdout (a module
/// that prints) goes to stderr with the logs.
pub fn run_host() -> ExitCode {
    #[cfg(target_os = "linux")]
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let frames = match rustix::io::dup(std::io::stdout()) {
        Ok(fd) => File::from(fd),
        Err(e) => {
            eprintln!("vigil pkcs11-host: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = rustix::stdio::dup2_stdout(std::io::stderr()) {
        eprintln!("vigil pkcs11-host: {e}");
        return ExitCode::from(2);
    }
    let out: Answers = Arc::new(Mutex::new(BufWriter::new(frames)));
    answer(
        &out,
        0,
        &Response::Hello {
            version: PROTOCOL_VERSION,
        },
    );
    let mut input = BufReader::new(std::io::stdin());
    let setup = match read_setup(&mut input) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vigil pkcs11-host: reading the setup: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init_tracing(&setup.log_filter, setup.log_format);
    match setup.setup {
        Setup::Key {
            name,
            module,
            token,
            key,
            sessions,
            rsa_mechanism,
            expected,
            pin,
        } => {
            let spec = KeySpec {
                name,
                module,
                module_env: Default::default(),
                token,
                key,
                sessions: sessions as usize,
                rsa_mechanism,
            };
            let workers = spec.sessions.max(1) + 2;
            let key = match auth_pin(pin).and_then(|pin| Pkcs11Key::new(spec, pin, expected)) {
                Ok(k) => Arc::new(k),
                Err(e) => {
                    answer(&out, 0, &Response::Error(e));
                    return ExitCode::SUCCESS;
                }
            };
            answer(&out, 0, &Response::Done);
            serve_key(&key, input, &out, workers)
        }
        Setup::Module { module } => {
            let module = match Module::load(&module) {
                Ok(m) => m,
                Err(e) => {
                    answer(&out, 0, &Response::Error(e));
                    return ExitCode::SUCCESS;
                }
            };
            answer(&out, 0, &Response::Done);
            serve_module(&module, &mut input, &out)
        }
    }
}

/// Each worker takes the next frame from the pipe itself and answers it: no hand-off between
/// threads inside the host (a signature costs one wake-up here, not two). The pipe is the
/// queue, bounded by the kernel's pipe buffer.
fn serve_key(
    key: &Arc<Pkcs11Key>,
    input: BufReader<std::io::Stdin>,
    out: &Answers,
    workers: usize,
) -> ExitCode {
    let input = Arc::new(Mutex::new(input));
    let mut threads = Vec::with_capacity(workers);
    for i in 0..workers {
        let (key, input, out) = (key.clone(), input.clone(), out.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("vigil-p11-worker-{i}"))
            .spawn(move || loop {
                let next = read_request(&mut *lock(&input));
                match next {
                    Ok(Some((id, request))) => {
                        let r = handle_key_call(&key, request);
                        answer(&out, id, &r);
                    }
                    // vigil closed the pipe: it is done with this key (or gone). Calls stuck
                    // in the module do not hold the process.
                    Ok(None) => std::process::exit(0),
                    Err(e) => {
                        tracing::error!(error = %e, "a bad frame from vigil; the PKCS#11 host exits");
                        std::process::exit(2);
                    }
                }
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                tracing::error!(error = %e, "starting a PKCS#11 host worker");
                return ExitCode::from(2);
            }
        }
    }
    for t in threads {
        let _ = t.join();
    }
    ExitCode::from(2)
}

fn handle_key_call(key: &Pkcs11Key, request: Request) -> Response {
    let result = match request {
        Request::Connect => key.connect().map(Response::Described),
        Request::Sign { message, wait_ms } => key
            .sign(&message, Duration::from_millis(wait_ms.into()))
            .map(Response::Signature),
        Request::Recover { wait_ms } => key
            .recover(Duration::from_millis(wait_ms.into()))
            .map(Response::Described),
        Request::Disconnect => {
            key.disconnect();
            Ok(Response::Done)
        }
        Request::Info => key.module().info().map(Response::Text),
        Request::ListTokens { .. } => Err(HsmError::Config(
            "this host runs a key, not a module listing".into(),
        )),
    };
    result.unwrap_or_else(Response::Error)
}

fn serve_module(module: &Module, input: &mut impl std::io::Read, out: &Answers) -> ExitCode {
    loop {
        let (id, request) = match read_request(input) {
            Ok(Some(call)) => call,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "a bad frame from vigil; the PKCS#11 host exits");
                return ExitCode::from(2);
            }
        };
        let result = match request {
            Request::Info => module.info().map(Response::Text),
            Request::ListTokens { pins } => {
                let pin_for = |label: &str| {
                    pins.iter()
                        .find(|(l, _)| l == label)
                        .or_else(|| pins.iter().find(|(l, _)| l.is_empty()))
                        .and_then(|(_, p)| std::str::from_utf8(p).ok())
                        .map(AuthPin::from)
                };
                list_tokens(module, pin_for).map(Response::Tokens)
            }
            _ => Err(HsmError::Config(
                "this host lists a module; it runs no key".into(),
            )),
        };
        answer(out, id, &result.unwrap_or_else(Response::Error));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_module_is_refused_before_a_host_starts() {
        let spec = KeySpec {
            name: "nowhere".into(),
            module: "/nonexistent/libpkcs11.so".into(),
            module_env: [(
                "P11_KIT_SERVER_ADDRESS".to_owned(),
                "unix:path=/x".to_owned(),
            )]
            .into(),
            token: super::super::TokenSelector::Label("t".into()),
            key: Default::default(),
            sessions: 1,
            rsa_mechanism: Default::default(),
        };
        let e = HostedKey::new(spec, AuthPin::from("1234"), None)
            .err()
            .expect("no module");
        assert!(e.is_permanent(), "{e}");
        assert!(e.to_string().contains("/nonexistent/libpkcs11.so"), "{e}");
    }

    #[test]
    fn a_program_that_is_not_a_host_is_a_setting_to_fix() {
        // `echo pkcs11-host` answers with text: its first bytes read as a frame length far
        // over the bound. The only lib test that starts a host, so the option is its own.
        configure_hosts(HostOptions {
            program: "/bin/echo".into(),
            log_filter: "info".into(),
            log_format: LogFormat::Text,
        });
        let spec = KeySpec {
            name: "echo".into(),
            module: "/bin/sh".into(), // a file; never loaded
            module_env: Default::default(),
            token: super::super::TokenSelector::Label("t".into()),
            key: Default::default(),
            sessions: 1,
            rsa_mechanism: Default::default(),
        };
        let e = HostedKey::new(spec, AuthPin::from("1234"), None)
            .err()
            .expect("not a host");
        *lock(&OPTIONS) = None;
        assert!(e.is_permanent(), "{e}");
        let text = e.to_string();
        assert!(text.contains("not a PKCS#11 host"), "{text}");
        assert!(text.contains("over the bound"), "{text}");
        assert!(!text.contains("1234"), "{text}");
    }
}
