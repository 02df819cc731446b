//! Response building and signing: ResponseData encoding alone, then encode + sign + assemble
//! with the demo's delegated P-256 responder key and with an RSA-2048 key.
//!
//! *ring* cannot generate RSA keys, so the RSA-2048 key comes from `openssl genpkey` at start
//! (the bench is skipped with a message when `openssl` is missing).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::process::Command;
use std::sync::Arc;

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use vigil::config::NoncePolicy;
use vigil::ocsp::HashAlgorithm;
use vigil::ocsp::response::{ResponderProfile, SingleStatus, ValidityPolicy, tbs_response_data};
use vigil::signer::direct::ocsp_response as build_signed;
use vigil::signer::{Signer, SoftwareSigner};
use vigil::status::{Revocation, RevocationReason};

fn rsa_2048_profile() -> Option<(ResponderProfile, Arc<dyn Signer>)> {
    let dir = tempfile::tempdir().expect("a temporary directory for the RSA key");
    let path = dir.path().join("rsa.key");
    let made = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .status();
    if !matches!(made, Ok(s) if s.success()) {
        eprintln!("openssl genpkey failed or is missing: skipping the RSA-2048 benches");
        return None;
    }
    let signer: Arc<dyn Signer> =
        Arc::new(SoftwareSigner::from_pem_file(&path).expect("loading the RSA key"));
    let id = ResponderProfile::key_hash_id(signer.public_key()).expect("responder id");
    let profile = ResponderProfile::new(id, &[], signer.algorithm()).expect("RSA profile");
    Some((profile, signer))
}

fn response(c: &mut Criterion) {
    let pki = support::DemoPki::new(NoncePolicy::Ignore);
    let id = pki.cert_id(HashAlgorithm::Sha1, &pki.serial("good-1"));
    let p256 = &pki.issuer.profile;
    let key = pki.issuer.signer.as_ref();
    let window = ValidityPolicy::default().window(vigil::clock::Clock::system().now());
    let good = [(&id, SingleStatus::Good)];
    let revoked = [(
        &id,
        SingleStatus::Revoked(Revocation {
            time: 1_700_000_000,
            reason: RevocationReason::KeyCompromise,
        }),
    )];

    let mut g = c.benchmark_group("response");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_tbs", |b| {
        b.iter(|| tbs_response_data(p256, &window, black_box(&good), Vec::new()).expect("encodes"))
    });
    let tbs = tbs_response_data(p256, &window, &good, Vec::new()).expect("encodes");
    g.bench_function("sign_only_p256", |b| {
        b.iter(|| key.sign(black_box(&tbs)).expect("signs"))
    });
    g.bench_function("build_signed_p256_good", |b| {
        b.iter(|| build_signed(p256, key, &window, black_box(&good), Vec::new()).expect("builds"))
    });
    g.bench_function("build_signed_p256_revoked", |b| {
        b.iter(|| {
            build_signed(p256, key, &window, black_box(&revoked), Vec::new()).expect("builds")
        })
    });
    if let Some((rsa, rsa_key)) = rsa_2048_profile() {
        g.bench_function("build_signed_rsa2048_good", |b| {
            b.iter(|| {
                build_signed(
                    &rsa,
                    rsa_key.as_ref(),
                    &window,
                    black_box(&good),
                    Vec::new(),
                )
                .expect("builds")
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = response
}
criterion_main!(benches);
