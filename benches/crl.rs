//! CRL speed: build + sign a CRL of 1 000 000 entries with a software P-256 key (target under
//! 2 s), lint it (the publisher does both before storing), and build the HTTP response of a
//! cached CRL. `cargo bench --bench crl`; the CRL's size is printed once.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)] // bench code

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use der::Decode;
use vigil::crl::lint::{self, Kind};
use vigil::crl::{CrlId, CrlIssuer, CrlSpec, Entry, Expect};
use vigil::signer::SoftwareSigner;
use vigil::signer::direct::crl as build;
use vigil::status::{RevocationReason, Serial};

const N: usize = 1_000_000;
const NOW: i64 = 1_780_000_000;

fn setup() -> (CrlIssuer, SoftwareSigner, Vec<Entry>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::OrganizationName, "vigil bench");
    p.distinguished_name
        .push(DnType::CommonName, "vigil bench CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = p.self_signed(&key).expect("sign");
    let ca = x509_cert::Certificate::from_der(cert.der()).expect("parse");
    let issuer = CrlIssuer::from_certificate("bench", &ca).expect("issuer");
    let signer = SoftwareSigner::from_pem(key.serialize_pem().as_bytes(), "bench").expect("key");
    // 16-octet serials (as CAs issue them), a realistic mix of reasons
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let reasons = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::AffiliationChanged,
    ];
    let entries = (0..N)
        .map(|i| {
            let mut b = [0u8; 16];
            for chunk in b.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_be_bytes());
            }
            b[0] = (b[0] & 0x7F) | 0x10;
            Entry {
                serial: Serial::from_magnitude(&b).expect("serial"),
                time: NOW - (i as i64 % 7_776_000),
                reason: reasons[i % reasons.len()],
            }
        })
        .collect();
    (issuer, signer, entries)
}

fn spec() -> CrlSpec<'static> {
    CrlSpec {
        number: 1_780_000_000_000,
        this_update: NOW,
        next_update: NOW + 7 * 86_400,
        idp_uri: Some("http://crl.example.com/crl/bench/0.crl"),
        delta_base: None,
        freshest_uri: None,
    }
}

fn benches(c: &mut Criterion) {
    let (issuer, signer, entries) = setup();
    let der = build(&issuer, &spec(), &mut entries.clone(), &signer).expect("build");
    eprintln!(
        "CRL of {N} entries: {} bytes ({:.1} MiB, {:.1} bytes per entry)",
        der.len(),
        der.len() as f64 / 1048576.0,
        der.len() as f64 / N as f64
    );

    let mut g = c.benchmark_group("crl_1m");
    g.sample_size(10);
    g.bench_function("build_and_sign", |b| {
        b.iter_batched(
            || entries.clone(),
            |mut e| build(&issuer, &spec(), &mut e, &signer).expect("build"),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("lint", |b| {
        b.iter(|| {
            lint::lint(
                &der,
                &issuer,
                &Expect {
                    kind: Kind::Full,
                    number: Some(1_780_000_000_000),
                    previous: Some(1),
                    idp_uri: Some("http://crl.example.com/crl/bench/0.crl"),
                    now: Some(NOW),
                },
            )
            .expect("lint")
        })
    });
    g.finish();

    // The per-request work of serving a cached CRL: headers and a reference-counted body.
    let info = lint::lint(
        &der,
        &issuer,
        &Expect {
            kind: Kind::Full,
            number: None,
            previous: None,
            idp_uri: Some("http://crl.example.com/crl/bench/0.crl"),
            now: None,
        },
    )
    .expect("lint");
    let id = CrlId {
        issuer: "bench".into(),
        shard: Some(0),
        delta: false,
    };
    let served =
        vigil::crl_service::catalog::ServedCrl::new(id, bytes::Bytes::from(der.clone()), &info);
    let mut headers = http::HeaderMap::new();
    c.bench_function("serve_cached_crl_response", |b| {
        b.iter(|| vigil::http::respond::crl(&served, &headers, NOW + 60, 3600))
    });
    headers.insert(http::header::IF_NONE_MATCH, served.etag.clone());
    c.bench_function("serve_cached_crl_304", |b| {
        b.iter(|| vigil::http::respond::crl(&served, &headers, NOW + 60, 3600))
    });
}

criterion_group!(crl, benches);
criterion_main!(crl);
