//! Signing rate through the HSM pool against the raw rate of the same SoftHSM2 key through
//! cryptoki directly, in one run.
//!
//! - `raw`: `C_Sign(CKM_ECDSA)` over a precomputed SHA-256 digest on an open, logged-in
//!   session: the least any caller can do.
//! - `key_in_process`: [`Pkcs11Key::sign`] of a 1 KiB tbsResponseData-sized message in this
//!   process: hashing, session checkout, `r || s` to DER.
//! - `key_hosted`: the same through [`HostedKey`]: one round trip to a `vigil pkcs11-host`
//!   process over its pipes, which runs the in-process key.
//! - `pool`: `Signer::sign` of that message through [`SignerPool`] (hosted keys): the above
//!   plus breaker and metrics bookkeeping.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF`, which the bench does not change in its own environment:
//! it makes the lab, then runs itself again with `SOFTHSM2_CONF` set for the measurements.
//!
//! Both single-threaded (latency, so the difference is the added latency per signature) and
//! with two threads (rate). At the end a summary line gives the rates and their ratio.
//! Skips with a message when SoftHSM2 is not installed.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a bench that cannot set up just stops

#[path = "../tests/support/softhsm.rs"]
mod softhsm;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, black_box};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

use softhsm::{KeyKind, Lab, PIN, SOFTHSM_MODULE};
use vigil::signer::pkcs11::{
    HostOptions, HostedKey, KeySelector, KeySpec, PinSource, Pkcs11Key, RsaMechanism,
    TokenSelector, configure_hosts,
};
use vigil::signer::pool::PoolSettings;
use vigil::signer::{Signer, SignerPool};

const THREADS: usize = 2;
const MESSAGE: [u8; 1024] = [0x5a; 1024];

struct Raw {
    /// One session per thread (a Session is Send, not Sync; the mutex is never contended).
    sessions: Vec<std::sync::Mutex<Session>>,
    key: ObjectHandle,
    digest: Vec<u8>,
}

fn raw(ctx: &Pkcs11) -> Raw {
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == "bench")
        .expect("bench token");
    let sessions: Vec<Session> = (0..THREADS)
        .map(|_| ctx.open_ro_session(slot).unwrap())
        .collect();
    match sessions[0].login(UserType::User, Some(&AuthPin::from(PIN))) {
        Ok(()) => {}
        Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e}"),
    }
    let key = sessions[0]
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"ocsp".to_vec()),
        ])
        .unwrap()[0];
    let digest = ring::digest::digest(&ring::digest::SHA256, &MESSAGE)
        .as_ref()
        .to_vec();
    Raw {
        sessions: sessions.into_iter().map(std::sync::Mutex::new).collect(),
        key,
        digest,
    }
}

fn spec() -> KeySpec {
    KeySpec {
        name: "bench".into(),
        module: SOFTHSM_MODULE.into(),
        // SOFTHSM2_CONF is in this process's environment, which hosts inherit.
        module_env: Default::default(),
        token: TokenSelector::Label("bench".into()),
        key: KeySelector {
            label: Some("ocsp".into()),
            id: None,
        },
        sessions: 4,
        rsa_mechanism: RsaMechanism::Auto,
    }
}

fn pool(pin_file: PathBuf, public_key: Vec<u8>) -> SignerPool {
    SignerPool::start(
        "bench",
        public_key,
        vec![(spec(), PinSource::File(pin_file))],
        None,
        PoolSettings {
            probe_interval: Duration::from_secs(3600),
            breaker_failures: 3,
            reconnect_backoff_min: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(1),
            session_wait: Duration::from_secs(1),
            sign_timeout: Duration::from_secs(2),
        },
    )
    .expect("pool")
}

/// Signatures per second with `THREADS` threads for `dur`.
fn rate(dur: Duration, sign: impl Fn(usize) + Sync) -> f64 {
    let done = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (sign, done) = (&sign, &done);
            s.spawn(move || {
                while started.elapsed() < dur {
                    sign(t);
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    done.into_inner() as f64 / started.elapsed().as_secs_f64()
}

/// Names of the variables through which the first run hands the lab to the second.
const LAB_PIN_FILE: &str = "VIGIL_BENCH_HSM_PIN_FILE";
const LAB_PUBLIC_KEY: &str = "VIGIL_BENCH_HSM_PUBLIC_KEY";

fn main() {
    if let Some(m) = softhsm::missing_tools() {
        println!("hsm_sign: SKIPPED, SoftHSM2 / p11-kit / openssl missing: {m}");
        return;
    }
    match (
        std::env::var_os(LAB_PIN_FILE),
        std::env::var(LAB_PUBLIC_KEY),
    ) {
        (Some(pin_file), Ok(public_key)) => measure(pin_file.into(), unhex(&public_key)),
        _ => {
            let lab = Lab::new();
            lab.token("bench");
            let key = lab.key("responder", KeyKind::P256);
            lab.import("bench", &key, "ocsp", "01");
            let pki = lab.pki(&key);
            let public_key = vigil::pki::read_certificate(&pki.responder)
                .unwrap()
                .tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes()
                .to_vec();
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args(std::env::args_os().skip(1))
                .env("SOFTHSM2_CONF", &lab.conf)
                .env(LAB_PIN_FILE, lab.pin_file())
                .env(LAB_PUBLIC_KEY, vigil::status::hex(&public_key))
                .status()
                .expect("running the measurements");
            assert!(status.success(), "{status}");
        }
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn measure(pin_file: PathBuf, public_key: Vec<u8>) {
    configure_hosts(HostOptions {
        program: env!("CARGO_BIN_EXE_vigil").into(),
        log_filter: "warn".into(),
        log_format: Default::default(),
    });
    let _ = vigil::telemetry::install_recorder(); // metrics cost as in production

    let ctx = Pkcs11::new(SOFTHSM_MODULE).unwrap();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::CryptokiAlreadyInitialized,
            _,
        )) => {}
        Err(e) => panic!("C_Initialize: {e}"),
    }
    let raw = Arc::new(raw(&ctx));
    let in_process = Pkcs11Key::new(spec(), AuthPin::from(PIN), None).expect("key");
    in_process.connect().expect("connect in process");
    let hosted = HostedKey::new(spec(), AuthPin::from(PIN), None).expect("hosted key");
    hosted.connect().expect("connect hosted");
    let pool = Arc::new(pool(pin_file, public_key));
    let wait = Duration::from_secs(1);

    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let mut g = c.benchmark_group("hsm_sign_p256");
    g.bench_function("raw_cryptoki_c_sign", |b| {
        b.iter(|| {
            raw.sessions[0]
                .lock()
                .unwrap()
                .sign(&Mechanism::Ecdsa, raw.key, black_box(&raw.digest))
                .unwrap()
        })
    });
    g.bench_function("key_in_process", |b| {
        b.iter(|| in_process.sign(black_box(&MESSAGE), wait).unwrap())
    });
    g.bench_function("key_hosted", |b| {
        b.iter(|| hosted.sign(black_box(&MESSAGE), wait).unwrap())
    });
    g.bench_function("pool_sign", |b| {
        b.iter(|| pool.sign(black_box(&MESSAGE)).unwrap())
    });
    g.finish();
    c.final_summary();

    // Rates with THREADS threads, interleaved so all see the same machine load.
    let (mut raw_rates, mut local_rates, mut pool_rates) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        raw_rates.push(rate(Duration::from_secs(1), |t| {
            raw.sessions[t]
                .lock()
                .unwrap()
                .sign(&Mechanism::Ecdsa, raw.key, &raw.digest)
                .unwrap();
        }));
        local_rates.push(rate(Duration::from_secs(1), |_| {
            in_process.sign(&MESSAGE, wait).unwrap();
        }));
        pool_rates.push(rate(Duration::from_secs(1), |_| {
            pool.sign(&MESSAGE).unwrap();
        }));
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let (r, l, p) = (best(&raw_rates), best(&local_rates), best(&pool_rates));
    // Single-thread latency: rounds interleaved, the best round of each (least disturbed).
    let lat = |f: &dyn Fn()| {
        let n = 500;
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_secs_f64() / n as f64 * 1e6
    };
    let (mut raw_us, mut local_us, mut hosted_us, mut pool_us) =
        (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..8 {
        raw_us = raw_us.min(lat(&|| {
            raw.sessions[0]
                .lock()
                .unwrap()
                .sign(&Mechanism::Ecdsa, raw.key, &raw.digest)
                .unwrap();
        }));
        local_us = local_us.min(lat(&|| {
            in_process.sign(&MESSAGE, wait).unwrap();
        }));
        hosted_us = hosted_us.min(lat(&|| {
            hosted.sign(&MESSAGE, wait).unwrap();
        }));
        pool_us = pool_us.min(lat(&|| {
            pool.sign(&MESSAGE).unwrap();
        }));
    }
    println!(
        "hsm_sign summary ({THREADS} threads): raw {r:.0}/s, key in process {l:.0}/s, pool (hosted) {p:.0}/s, \
         pool/raw {:.2}, pool/in-process {:.2}; single-thread latency raw {raw_us:.1} us, \
         in process {local_us:.1} us, hosted {hosted_us:.1} us (the host adds {:.1} us), \
         pool {pool_us:.1} us, pool - raw {:.1} us per signature",
        p / r,
        p / l,
        hosted_us - local_us,
        pool_us - raw_us
    );
    drop(pool);
    drop(raw);
}
