//! Signing rate through the HSM pool against the raw rate of the same SoftHSM2 key through
//! cryptoki directly, in one run.
//!
//! - `raw`: `C_Sign(CKM_ECDSA)` over a precomputed SHA-256 digest on an open, logged-in
//!   session: the least any caller can do.
//! - `pool`: `Signer::sign` of a 1 KiB tbsResponseData-sized message through [`SignerPool`]:
//!   hashing, session checkout, breaker and metrics bookkeeping, `r || s` to DER.
//!
//! Both single-threaded (latency, so the difference is the added latency per signature) and
//! with two threads (rate). At the end a summary line gives the rates and their ratio.
//! Skips with a message when SoftHSM2 is not installed.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a bench that cannot set up just stops

#[path = "../tests/support/softhsm.rs"]
mod softhsm;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

use softhsm::{KeyKind, Lab, PIN, SOFTHSM_MODULE};
use vigil::signer::pkcs11::{KeySelector, KeySpec, PinSource, RsaMechanism, TokenSelector};
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

fn pool(lab: &Lab, public_key: Vec<u8>) -> SignerPool {
    let spec = KeySpec {
        name: "bench".into(),
        module: SOFTHSM_MODULE.into(),
        module_env: Default::default(),
        token: TokenSelector::Label("bench".into()),
        key: KeySelector {
            label: Some("ocsp".into()),
            id: None,
        },
        sessions: 4,
        rsa_mechanism: RsaMechanism::Auto,
    };
    SignerPool::start(
        "bench",
        public_key,
        vec![(spec, PinSource::File(lab.pin_file()))],
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

fn main() {
    if let Some(m) = softhsm::missing_tools() {
        println!("hsm_sign: SKIPPED, SoftHSM2 / p11-kit / openssl missing: {m}");
        return;
    }
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
    // Before any thread exists: both the raw context and the pool's module use this config.
    std::env::set_var("SOFTHSM2_CONF", &lab.conf);
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
    let pool = Arc::new(pool(&lab, public_key));

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
    g.bench_function("pool_sign", |b| {
        b.iter(|| pool.sign(black_box(&MESSAGE)).unwrap())
    });
    g.finish();
    c.final_summary();

    // Rates with THREADS threads, interleaved so both see the same machine load.
    let (mut raw_rates, mut pool_rates) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        raw_rates.push(rate(Duration::from_secs(1), |t| {
            raw.sessions[t]
                .lock()
                .unwrap()
                .sign(&Mechanism::Ecdsa, raw.key, &raw.digest)
                .unwrap();
        }));
        pool_rates.push(rate(Duration::from_secs(1), |_| {
            pool.sign(&MESSAGE).unwrap();
        }));
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let (r, p) = (best(&raw_rates), best(&pool_rates));
    // Single-thread latency: rounds interleaved, the best round of each (least disturbed).
    let lat = |f: &dyn Fn()| {
        let n = 500;
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_secs_f64() / n as f64 * 1e6
    };
    let (mut raw_us, mut pool_us) = (f64::MAX, f64::MAX);
    for _ in 0..8 {
        raw_us = raw_us.min(lat(&|| {
            raw.sessions[0]
                .lock()
                .unwrap()
                .sign(&Mechanism::Ecdsa, raw.key, &raw.digest)
                .unwrap();
        }));
        pool_us = pool_us.min(lat(&|| {
            pool.sign(&MESSAGE).unwrap();
        }));
    }
    println!(
        "hsm_sign summary ({THREADS} threads): raw {r:.0}/s, pool {p:.0}/s, pool/raw {:.2}; \
         single-thread latency raw {raw_us:.1} us, pool {pool_us:.1} us, added {:.1} us per signature",
        p / r,
        pool_us - raw_us
    );
    drop(pool);
    drop(raw);
}
