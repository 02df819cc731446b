//! Request decoding: POST bodies (SHA-1 and SHA-256 CertIDs, with and without a nonce) and GET
//! paths (percent-decoding and base64 before the DER decode).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use der::Decode;
use vigil::config::NoncePolicy;
use vigil::ocsp::HashAlgorithm;
use vigil::ocsp::request::{RequestLimits, decode_get_path, decode_request};
use x509_ocsp::OcspRequest;

fn decode(c: &mut Criterion) {
    let pki = support::DemoPki::new(NoncePolicy::Ignore);
    let serial = pki.serial("good-1");
    let limits = RequestLimits::default();
    let sha1 = support::request_der(vec![pki.cert_id(HashAlgorithm::Sha1, &serial)], None);
    let sha1_nonce = support::request_der(
        vec![pki.cert_id(HashAlgorithm::Sha1, &serial)],
        Some(support::nonce_extension(0x5a)),
    );
    let sha256 = support::request_der(vec![pki.cert_id(HashAlgorithm::Sha256, &serial)], None);
    let path = support::get_path(&sha1);

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    // The floor: the DER decode alone, without vigil's checks and cache key.
    g.bench_function("der_only_sha1", |b| {
        b.iter(|| OcspRequest::from_der(black_box(&sha1)).expect("decodes"))
    });
    g.bench_function("post_sha1", |b| {
        b.iter(|| decode_request(black_box(&sha1), &limits).expect("decodes"))
    });
    g.bench_function("post_sha1_nonce", |b| {
        b.iter(|| decode_request(black_box(&sha1_nonce), &limits).expect("decodes"))
    });
    g.bench_function("post_sha256", |b| {
        b.iter(|| decode_request(black_box(&sha256), &limits).expect("decodes"))
    });
    g.bench_function("get_path_only", |b| {
        b.iter(|| decode_get_path(black_box(&path)).expect("base64"))
    });
    g.bench_function("get_sha1", |b| {
        b.iter(|| {
            let der = decode_get_path(black_box(&path)).expect("base64");
            decode_request(&der, &limits).expect("decodes")
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = decode
}
criterion_main!(benches);
