//! Apply rate: status events joined into the view per second, one core.
//!
//! `cargo bench --bench feed_apply`. Events are issuances, revocations (one in ten) and
//! hold-then-release pairs (one in twenty) of 1 000 000
//! distinct 16-octet serials of one issuer (the shape of a CA's feed), applied one by one (the
//! journal path) and in batches of 1 000 (the feed consumer's `XREAD COUNT`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use vigil::status::{Event, EventKind, IssuerId, RevocationReason, Serial, StatusView};

const CERTS: u64 = 1_000_000;

fn events() -> Vec<Event> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(CERTS as usize + CERTS as usize / 5);
    for i in 0..CERTS {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut octets = [0u8; 16];
        octets[..8].copy_from_slice(&state.to_be_bytes());
        octets[8..].copy_from_slice(&i.to_be_bytes());
        octets[0] = (octets[0] & 0x7F) | 0x01;
        let serial = Serial::from_der_content(&octets).expect("serial");
        out.push(Event {
            issuer: IssuerId([7; 32]),
            serial,
            kind: EventKind::Issued {
                not_after: 1_900_000_000,
            },
            origin: "bench".into(),
            created_at_ms: 0,
        });
        if i % 20 == 5 {
            // a hold and its release: the hold register's join path
            for kind in [
                EventKind::Hold {
                    time: 1_800_000_000,
                },
                EventKind::Release {
                    time: 1_800_000_001,
                },
            ] {
                out.push(Event {
                    issuer: IssuerId([7; 32]),
                    serial,
                    kind,
                    origin: "bench".into(),
                    created_at_ms: 0,
                });
            }
        }
        if i % 10 == 0 {
            out.push(Event {
                issuer: IssuerId([7; 32]),
                serial,
                kind: EventKind::Revoked {
                    time: 1_800_000_000,
                    reason: RevocationReason::KeyCompromise,
                },
                origin: "bench".into(),
                created_at_ms: 0,
            });
        }
    }
    out
}

fn apply(c: &mut Criterion) {
    let events = events();
    let mut g = c.benchmark_group("apply");
    g.sample_size(10);
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("one_by_one_into_empty_view", |b| {
        b.iter_batched(
            StatusView::new,
            |view| {
                for e in &events {
                    view.apply(e);
                }
                view
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("batches_of_1000_into_empty_view", |b| {
        b.iter_batched(
            StatusView::new,
            |view| {
                for chunk in events.chunks(1000) {
                    view.apply_batch(chunk, |_, _, _| {});
                }
                view
            },
            BatchSize::PerIteration,
        )
    });
    // Replays (duplicates from a second region): every event is already reflected.
    let full = StatusView::new();
    for e in &events {
        full.apply(e);
    }
    g.bench_function("batches_of_1000_duplicates", |b| {
        b.iter(|| {
            for chunk in events.chunks(1000) {
                full.apply_batch(chunk, |_, _, _| {});
            }
        })
    });
    g.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
