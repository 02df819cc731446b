//! The OCSP answer path without HTTP: `Responder::answer` on a warmed cache, for good, revoked
//! and unissued serials, POST and GET forms. `answer_cache_hit` is what `vigil serve` does: a
//! plain request seen before is a front-cache hit (no decoding; status lookup and freshness
//! check); `answer_decoded_hit` is the same with the front cache off (decode, issuer match,
//! CertID re-encode, status lookup, response-cache hit), as every request with a nonce is
//! answered. And with nonce `echo`, where every answer is a fresh P-256 signature.
//!
//! Each measurement runs its iterations inside one `block_on`, so the runtime's entry cost is
//! not counted per answer.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use vigil::config::NoncePolicy;
use vigil::ocsp::HashAlgorithm;
use vigil::ocsp::request::decode_get_path;
use vigil::responder::{Answer, Responder};

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn expect_signed(a: Answer) -> Answer {
    match a {
        Answer::Signed { .. } => a,
        Answer::Error(e) => panic!("expected a signed response, got {e:?}"),
    }
}

/// Times `iters` answers to `der`, run back to back on the runtime.
fn time_answers(
    rt: &Runtime,
    responder: &Arc<Responder>,
    der: &[u8],
    now: i64,
    iters: u64,
) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(responder.answer(black_box(der), now).await);
        }
        start.elapsed()
    })
}

fn cache_hit(c: &mut Criterion) {
    let pki = support::DemoPki::new(NoncePolicy::Ignore);
    cache_hit_group(c, &pki, "answer_cache_hit", pki.responder());
    cache_hit_group(
        c,
        &pki,
        "answer_decoded_hit",
        pki.responder_without_front_cache(),
    );
}

fn cache_hit_group(
    c: &mut Criterion,
    pki: &support::DemoPki,
    group: &str,
    responder: Arc<Responder>,
) {
    let rt = runtime();
    let now = vigil::clock::Clock::system().now();
    let unissued = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
    let cases = [
        ("post_sha1_good", pki.serial("good-1"), HashAlgorithm::Sha1),
        (
            "post_sha256_good",
            pki.serial("good-1"),
            HashAlgorithm::Sha256,
        ),
        (
            "post_sha1_revoked",
            pki.serial("revoked-1"),
            HashAlgorithm::Sha1,
        ),
        ("post_sha1_unissued", unissued.to_vec(), HashAlgorithm::Sha1),
    ];

    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    for (name, serial, alg) in cases {
        let der = support::request_der(vec![pki.cert_id(alg, &serial)], None);
        // Warm the cache: the first answer signs, every later one is a hit.
        expect_signed(rt.block_on(responder.answer(&der, now)));
        let remembered = rt.block_on(responder.front().get(&der)).is_some();
        assert_eq!(remembered, group == "answer_cache_hit", "{group}/{name}");
        g.bench_function(name, |b| {
            b.iter_custom(|iters| time_answers(&rt, &responder, &der, now, iters))
        });
    }

    // GET: percent-decoding and base64 first, as the HTTP layer does.
    let der = support::request_der(
        vec![pki.cert_id(HashAlgorithm::Sha1, &pki.serial("good-1"))],
        None,
    );
    let path = support::get_path(&der);
    g.bench_function("get_sha1_good", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let der = decode_get_path(black_box(&path)).expect("base64");
                    black_box(responder.answer(&der, now).await);
                }
                start.elapsed()
            })
        })
    });

    // A nonce is ignored by default: still a cache hit.
    let with_nonce = support::request_der(
        vec![pki.cert_id(HashAlgorithm::Sha1, &pki.serial("good-1"))],
        Some(support::nonce_extension(0x42)),
    );
    expect_signed(rt.block_on(responder.answer(&with_nonce, now)));
    g.bench_function("post_sha1_nonce_ignored", |b| {
        b.iter_custom(|iters| time_answers(&rt, &responder, &with_nonce, now, iters))
    });
    g.finish();

    if group != "answer_cache_hit" {
        return;
    }
    // Turning a cached answer into the HTTP response (caching headers, ETag check).
    let hit = expect_signed(rt.block_on(responder.answer(&der, now)));
    let headers = http::HeaderMap::new();
    let mut g = c.benchmark_group("http");
    g.throughput(Throughput::Elements(1));
    g.bench_function("respond_cached", |b| {
        b.iter(|| vigil::http::respond::ocsp(black_box(hit.clone()), &headers, now))
    });
    g.finish();
}

fn nonce_echo(c: &mut Criterion) {
    let rt = runtime();
    let pki = support::DemoPki::new(NoncePolicy::Echo);
    let responder = pki.responder();
    let now = vigil::clock::Clock::system().now();
    // The same nonce every time is fine: echo mode never caches, so every answer is signed.
    let der = support::request_der(
        vec![pki.cert_id(HashAlgorithm::Sha1, &pki.serial("good-1"))],
        Some(support::nonce_extension(0x42)),
    );
    expect_signed(rt.block_on(responder.answer(&der, now)));

    let mut g = c.benchmark_group("answer_signed");
    g.throughput(Throughput::Elements(1));
    g.bench_function("nonce_echo_p256", |b| {
        b.iter_custom(|iters| time_answers(&rt, &responder, &der, now, iters))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = cache_hit, nonce_echo
}
criterion_main!(benches);
