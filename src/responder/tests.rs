//! Tests of the answer path.

use super::*;
use std::sync::Mutex;
use std::time::Duration;

use der::Encode;
use der::asn1::OctetString;

use crate::status::IssuerId;

/// Signs only when handed a ticket, so a test decides when signatures finish.
struct Ticketed {
    inner: crate::signer::SoftwareSigner,
    tickets: Mutex<std::sync::mpsc::Receiver<()>>,
    signed: Arc<Mutex<Vec<Vec<u8>>>>,
    entered: Arc<std::sync::atomic::AtomicUsize>,
}

impl crate::signer::Signer for Ticketed {
    fn algorithm(&self) -> crate::signer::SignatureAlgorithm {
        self.inner.algorithm()
    }
    fn public_key(&self) -> &[u8] {
        self.inner.public_key()
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, crate::signer::SignError> {
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = self.tickets.lock().expect("tickets").recv();
        self.signed.lock().expect("signed").push(message.to_vec());
        self.inner.sign(message)
    }
    fn describe(&self) -> String {
        "ticketed".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_is_signed_before_routine_answers_that_queued_first() {
    use crate::status::{EventKind, RevocationReason};
    let dir = tempfile::tempdir().expect("tmp");
    let events = crate::demo::ensure_demo_pki(dir.path(), "test", &crate::clock::Clock::system())
        .expect("demo PKI");
    let mut cfg = Config::embedded_default();
    cfg.ocsp.signing_concurrency = 1;
    let ic = crate::demo::demo_issuer_config(dir.path());
    let key = ic.ocsp_key.file().expect("demo key");
    let (tx, rx) = std::sync::mpsc::channel();
    let signed = Arc::new(Mutex::new(Vec::new()));
    let entered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let signer = Ticketed {
        inner: crate::signer::SoftwareSigner::from_pem_file(key).expect("key"),
        tickets: Mutex::new(rx),
        signed: signed.clone(),
        entered: entered.clone(),
    };
    let issuer = crate::pki::load_issuer_with_signer(
        &ic,
        crate::config::ResponderIdKind::KeyHash,
        Arc::new(signer),
    )
    .expect("issuer");
    // Every demo certificate starts good; the revocation comes later.
    let (revocation, issued): (Vec<_>, Vec<_>) = events
        .into_iter()
        .partition(|e| matches!(e.kind, EventKind::Revoked { .. }));
    let view = StatusView::new();
    for e in &issued {
        view.apply(e);
    }
    let responder = Arc::new(Responder::new(
        &cfg,
        vec![issuer],
        &view,
        Arc::new(Metrics::new()),
        crate::clock::Clock::system(),
    ));
    let request = |serial: &Serial| {
        let forms = cert_id_forms(&responder.issuers[0].issuer, serial);
        let id = <CertId as der::Decode>::from_der(&forms[0]).expect("CertID");
        crate::ocsp::request::tests::request(vec![id], None)
    };
    let ask = |der: Vec<u8>| {
        let r = responder.clone();
        tokio::spawn(async move { r.answer(&der, crate::clock::Clock::system().now()).await })
    };
    // Waits until the signing service is in the given state (signatures started, queued routine,
    // queued changes). Signatures run on the issuer's signing service, fed by its queues.
    let service_is = |want: (usize, usize, usize)| {
        let r = responder.clone();
        let entered = entered.clone();
        async move {
            for _ in 0..500 {
                let now = {
                    let (change, routine) = r.issuers[0].signing.queued();
                    (
                        entered.load(std::sync::atomic::Ordering::SeqCst),
                        routine,
                        change,
                    )
                };
                if now == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the signing service never reached {want:?}");
        }
    };
    let first = ask(request(&issued[0].serial));
    service_is((1, 0, 0)).await; // the only signing thread waits for a ticket
    let queued = ask(request(&issued[1].serial));
    service_is((1, 1, 0)).await;
    let revoked = &revocation[0];
    view.apply(revoked);
    responder.evict(revoked.issuer, &revoked.serial).await;
    let change = ask(request(&revoked.serial));
    service_is((1, 1, 1)).await;
    for _ in 0..3 {
        tx.send(()).expect("ticket");
    }
    let (_, _, change) = (
        first.await.expect("task"),
        queued.await.expect("task"),
        change.await.expect("task"),
    );
    // The order of signatures, told apart by the serial in each tbsResponseData.
    let names = [
        (&issued[0].serial, "routine-first"),
        (&issued[1].serial, "routine-queued"),
        (&revoked.serial, "revocation"),
    ];
    let order: Vec<&str> = signed
        .lock()
        .expect("signed")
        .iter()
        .filter_map(|tbs| {
            names
                .iter()
                .find(|(serial, _)| {
                    tbs.windows(serial.as_der_content().len())
                        .any(|w| w == serial.as_der_content())
                })
                .map(|(_, n)| *n)
        })
        .collect();
    assert_eq!(order, ["routine-first", "revocation", "routine-queued"]);
    match change {
        Answer::Signed { response, .. } => assert_eq!(
            response.status,
            SingleStatus::Revoked(Revocation {
                time: match revoked.kind {
                    EventKind::Revoked { time, .. } => time,
                    _ => 0,
                },
                reason: RevocationReason::KeyCompromise,
            })
        ),
        Answer::Error(e) => panic!("{e:?}"),
    }
}

// === the front cache ===

/// A responder over the demo PKI with every certificate issued and none revoked yet, and
/// the revocation events the demo PKI holds.
fn demo_responder(
    cfg: &Config,
) -> (
    tempfile::TempDir,
    Arc<Responder>,
    StatusView,
    Vec<crate::status::Event>,
) {
    use crate::status::EventKind;
    let dir = tempfile::tempdir().expect("tmp");
    let events = crate::demo::ensure_demo_pki(dir.path(), "test", &crate::clock::Clock::system())
        .expect("demo PKI");
    let ic = crate::demo::demo_issuer_config(dir.path());
    let issuer =
        crate::pki::load_issuer(&ic, crate::config::ResponderIdKind::KeyHash).expect("issuer");
    let (revocations, issued): (Vec<_>, Vec<_>) = events
        .into_iter()
        .partition(|e| matches!(e.kind, EventKind::Revoked { .. }));
    let view = StatusView::new();
    for e in &issued {
        view.apply(e);
    }
    let responder = Arc::new(Responder::new(
        cfg,
        vec![issuer],
        &view,
        Arc::new(Metrics::new()),
        crate::clock::Clock::system(),
    ));
    (dir, responder, view, revocations)
}

/// The CertID of `serial` in form `form` of [`cert_id_forms`].
fn cert_id_of(responder: &Responder, serial: &Serial, form: usize) -> CertId {
    let forms = cert_id_forms(&responder.issuers[0].issuer, serial);
    <CertId as der::Decode>::from_der(&forms[form]).expect("CertID")
}

fn signed_status(a: Answer) -> SingleStatus {
    match a {
        Answer::Signed { response, shared } => {
            assert!(shared, "a cacheable answer");
            response.status
        }
        Answer::Error(e) => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn a_front_cache_hit_after_a_revocation_answers_revoked() {
    let (_dir, responder, view, revocations) = demo_responder(&Config::embedded_default());
    let revocation = &revocations[0];
    let now = crate::clock::Clock::system().now();
    let der = crate::ocsp::request::tests::request(
        vec![cert_id_of(&responder, &revocation.serial, 0)],
        None,
    );
    assert_eq!(
        signed_status(responder.answer(&der, now).await),
        SingleStatus::Good
    );
    let entry = responder.front.get(&der).await.expect("remembered");
    assert_eq!(entry.serial, revocation.serial);
    assert_eq!(
        signed_status(responder.answer(&der, now).await),
        SingleStatus::Good
    );
    // The view has the revocation but neither cache was told (an eviction racing with the
    // answer path): the front entry still points at the good response, and is not served.
    view.apply(revocation);
    let revoked = signed_status(responder.answer(&der, now).await);
    assert!(matches!(revoked, SingleStatus::Revoked(_)), "{revoked:?}");
    // The full path replaced the entry, and the hit now serves the revoked response.
    let entry = responder.front.get(&der).await.expect("replaced");
    assert_eq!(entry.response.status, revoked);
    assert_eq!(signed_status(responder.answer(&der, now).await), revoked);
}

#[tokio::test]
async fn eviction_drops_every_plain_request_form_of_the_certificate() {
    let (_dir, responder, view, revocations) = demo_responder(&Config::embedded_default());
    let revocation = &revocations[0];
    let now = crate::clock::Clock::system().now();
    let forms = cert_id_forms(&responder.issuers[0].issuer, &revocation.serial);
    let mut requests = Vec::new();
    for form in 0..forms.len() {
        let der = crate::ocsp::request::tests::request(
            vec![cert_id_of(&responder, &revocation.serial, form)],
            None,
        );
        assert_eq!(
            signed_status(responder.answer(&der, now).await),
            SingleStatus::Good
        );
        assert!(responder.front.get(&der).await.is_some(), "form {form}");
        requests.push(der);
    }
    view.apply(revocation);
    responder.evict(revocation.issuer, &revocation.serial).await;
    for (form, der) in requests.iter().enumerate() {
        assert!(responder.front.get(der).await.is_none(), "form {form}");
        let status = signed_status(responder.answer(der, now).await);
        assert!(matches!(status, SingleStatus::Revoked(_)), "form {form}");
    }
}

#[tokio::test]
async fn bulk_eviction_drops_the_changed_certificates_entries_and_no_others() {
    let (_dir, responder, view, revocations) = demo_responder(&Config::embedded_default());
    let changed = &revocations[0];
    let (_, table) = &view.issuers()[0];
    let kept = table
        .records()
        .into_iter()
        .map(|(s, _)| s)
        .find(|s| *s != changed.serial)
        .expect("another certificate");
    let now = crate::clock::Clock::system().now();
    let forms = cert_id_forms(&responder.issuers[0].issuer, &changed.serial);
    let mut requests = Vec::new();
    for form in 0..forms.len() {
        let der = crate::ocsp::request::tests::request(
            vec![cert_id_of(&responder, &changed.serial, form)],
            None,
        );
        responder.answer(&der, now).await;
        requests.push(der);
    }
    let other = crate::ocsp::request::tests::request(vec![cert_id_of(&responder, &kept, 1)], None);
    responder.answer(&other, now).await;
    assert!(forms.iter().any(|f| responder.cache.contains(f)));
    // A mass revocation's worth of certificates, far more than is cached: the pass over
    // the cached entries runs.
    let mut certs: Vec<(IssuerId, Serial)> = (0..200u32)
        .map(|n| {
            let serial = Serial::from_magnitude(&(0x7000_0000 + n).to_be_bytes()).expect("serial");
            (changed.issuer, serial)
        })
        .collect();
    certs.push((changed.issuer, changed.serial));
    view.apply(changed);
    responder.evict_bulk(&certs).await;
    for (form, der) in requests.iter().enumerate() {
        assert!(
            responder.front.get(der).await.is_none(),
            "front, form {form}"
        );
        assert!(
            !responder.cache.contains(&forms[form]),
            "cache, form {form}"
        );
    }
    assert!(
        responder.front.get(&other).await.is_some(),
        "an unchanged certificate's entry stays"
    );
    assert!(responder.changed.contains_key(&(0, changed.serial)));
    assert!(
        !responder.changed.contains_key(&(0, certs[0].1)),
        "nothing was cached for it"
    );
    let status = signed_status(responder.answer(&requests[0], now).await);
    assert!(matches!(status, SingleStatus::Revoked(_)));
}

#[tokio::test]
async fn a_stale_front_entry_is_not_served_past_its_refresh_point() {
    let (_dir, responder, _view, revocations) = demo_responder(&Config::embedded_default());
    let serial = &revocations[0].serial;
    let now = crate::clock::Clock::system().now();
    let der = crate::ocsp::request::tests::request(vec![cert_id_of(&responder, serial, 1)], None);
    let Answer::Signed {
        response: first, ..
    } = responder.answer(&der, now).await
    else {
        panic!("signed");
    };
    let later = first.window.refresh_at;
    let Answer::Signed {
        response: again, ..
    } = responder.answer(&der, later).await
    else {
        panic!("signed");
    };
    assert!(
        !Arc::ptr_eq(&first, &again),
        "signed anew at the refresh point"
    );
    let entry = responder.front.get(&der).await.expect("entry");
    assert!(Arc::ptr_eq(&entry.response, &again));
}

#[tokio::test]
async fn requests_with_a_nonce_or_several_cert_ids_bypass_the_front_cache() {
    use crate::ocsp::request::tests::request;
    let (_dir, responder, _view, revocations) = demo_responder(&Config::embedded_default());
    let serial = &revocations[0].serial;
    let now = crate::clock::Clock::system().now();
    let id = cert_id_of(&responder, serial, 0);
    let nonce = Extension {
        extn_id: crate::ocsp::OID_NONCE,
        critical: false,
        extn_value: OctetString::new(
            OctetString::new(vec![7u8; 16])
                .expect("nonce")
                .to_der()
                .expect("der"),
        )
        .expect("extnValue"),
    };
    let with_nonce = request(vec![id.clone()], Some(vec![nonce]));
    assert_eq!(
        signed_status(responder.answer(&with_nonce, now).await),
        SingleStatus::Good
    );
    assert!(responder.front.get(&with_nonce).await.is_none());
    let two = request(vec![id.clone(), id.clone()], None);
    assert!(matches!(
        responder.answer(&two, now).await,
        Answer::Signed { shared: false, .. }
    ));
    assert!(responder.front.get(&two).await.is_none());
    assert_eq!(responder.front.entry_count().await, 0);
    // The plain request of the same CertID is kept (after the nonce one warmed the cache).
    let plain = request(vec![id], None);
    signed_status(responder.answer(&plain, now).await);
    assert!(responder.front.get(&plain).await.is_some());
}

#[tokio::test]
async fn the_front_cache_can_be_turned_off_and_bounds_its_keys() {
    let mut cfg = Config::embedded_default();
    cfg.ocsp.front_cache_max_bytes = 0;
    let (_dir, responder, _view, revocations) = demo_responder(&cfg);
    let now = crate::clock::Clock::system().now();
    let der = crate::ocsp::request::tests::request(
        vec![cert_id_of(&responder, &revocations[0].serial, 0)],
        None,
    );
    for _ in 0..2 {
        assert_eq!(
            signed_status(responder.answer(&der, now).await),
            SingleStatus::Good
        );
    }
    assert!(responder.front.get(&der).await.is_none());

    let Answer::Signed { response, .. } = responder.answer(&der, now).await else {
        panic!("signed");
    };
    let front = FrontCache::new(1024 * 1024, der.len() - 1, crate::clock::Clock::system());
    let entry = FrontEntry {
        issuer: 0,
        serial: revocations[0].serial,
        response,
    };
    assert!(
        !front.insert(&der, entry.clone()).await,
        "over the key limit"
    );
    assert!(front.get(&der).await.is_none());
    assert!(front.insert(&der[..der.len() - 1], entry).await);
    assert!(front.get(&der[..der.len() - 1]).await.is_some());
}

// === checked signing ===

/// Signs only when handed a ticket; on its first signature it runs `during_first` (a
/// revocation landing in the view while the signature is made), and on every later one of
/// `watched_serial` it records what the response cache then holds for `watched`.
struct Revoking {
    inner: crate::signer::SoftwareSigner,
    tickets: Mutex<std::sync::mpsc::Receiver<()>>,
    signed: Arc<Mutex<Vec<Vec<u8>>>>,
    entered: Arc<std::sync::atomic::AtomicUsize>,
    during_first: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    responder: Arc<std::sync::OnceLock<std::sync::Weak<Responder>>>,
    watched: Arc<std::sync::OnceLock<Bytes>>,
    watched_serial: Serial,
    cache_seen: Arc<Mutex<Vec<Option<SingleStatus>>>>,
    runtime: tokio::runtime::Handle,
}

impl crate::signer::Signer for Revoking {
    fn algorithm(&self) -> crate::signer::SignatureAlgorithm {
        self.inner.algorithm()
    }
    fn public_key(&self) -> &[u8] {
        self.inner.public_key()
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, crate::signer::SignError> {
        let n = self
            .entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(f) = self.during_first.lock().expect("hook").take() {
            f();
        } else if n > 0
            && message
                .windows(self.watched_serial.as_der_content().len())
                .any(|w| w == self.watched_serial.as_der_content())
        {
            let r = self.responder.get().and_then(|w| w.upgrade());
            let key = self.watched.get().cloned();
            if let (Some(r), Some(key)) = (r, key) {
                // on a thread of the signing service, outside the runtime
                let held = self.runtime.block_on(r.cache.inner.get(&key));
                self.cache_seen
                    .lock()
                    .expect("seen")
                    .push(held.map(|c| c.status));
            }
        }
        let _ = self.tickets.lock().expect("tickets").recv();
        self.signed.lock().expect("signed").push(message.to_vec());
        self.inner.sign(message)
    }
    fn describe(&self) -> String {
        "revoking".into()
    }
}

/// A revocation that lands while a `good` response is being signed: that response is
/// neither served nor cached, the mismatch is counted, and the revoked response is signed
/// at status-change priority (before a routine signature that queued earlier).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_change_during_the_signature_is_signed_again_and_the_stale_one_dropped() {
    use crate::status::{CertRecord, EventKind};
    let dir = tempfile::tempdir().expect("tmp");
    let events = crate::demo::ensure_demo_pki(dir.path(), "test", &crate::clock::Clock::system())
        .expect("demo PKI");
    let mut cfg = Config::embedded_default();
    cfg.ocsp.signing_concurrency = 1;
    let ic = crate::demo::demo_issuer_config(dir.path());
    let key = ic.ocsp_key.file().expect("demo key");
    let (revocations, issued): (Vec<_>, Vec<_>) = events
        .into_iter()
        .partition(|e| matches!(e.kind, EventKind::Revoked { .. }));
    let view = StatusView::new();
    for e in &issued {
        view.apply(e);
    }
    let revocation = revocations[0].clone();
    let others: Vec<Serial> = issued
        .iter()
        .map(|e| e.serial)
        .filter(|s| *s != revocation.serial)
        .take(2)
        .collect();
    assert_eq!(others.len(), 2, "the demo PKI has other certificates");
    let table = view.table(revocation.issuer);
    let (tx, rx) = std::sync::mpsc::channel();
    let signed = Arc::new(Mutex::new(Vec::new()));
    let entered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let slot = Arc::new(std::sync::OnceLock::new());
    let watched = Arc::new(std::sync::OnceLock::new());
    let cache_seen = Arc::new(Mutex::new(Vec::new()));
    let (serial, kind) = (revocation.serial, revocation.kind);
    let signer = Revoking {
        inner: crate::signer::SoftwareSigner::from_pem_file(key).expect("key"),
        tickets: Mutex::new(rx),
        signed: signed.clone(),
        entered: entered.clone(),
        during_first: Mutex::new(Some(Box::new(move || {
            table.merge(serial, CertRecord::from_event(&kind));
        }))),
        responder: slot.clone(),
        watched: watched.clone(),
        watched_serial: revocation.serial,
        cache_seen: cache_seen.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    let issuer = crate::pki::load_issuer_with_signer(
        &ic,
        crate::config::ResponderIdKind::KeyHash,
        Arc::new(signer),
    )
    .expect("issuer");
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    let metrics = Arc::new(metrics::with_local_recorder(&recorder, Metrics::new));
    let responder = Arc::new(Responder::new(
        &cfg,
        vec![issuer],
        &view,
        metrics,
        crate::clock::Clock::system(),
    ));
    slot.set(Arc::downgrade(&responder)).expect("once");
    let forms = cert_id_forms(&responder.issuers[0].issuer, &revocation.serial);
    watched.set(Bytes::from(forms[0].clone())).expect("once");
    let request = |serial: &Serial| {
        crate::ocsp::request::tests::request(vec![cert_id_of(&responder, serial, 0)], None)
    };
    let ask = |der: Vec<u8>| {
        let r = responder.clone();
        tokio::spawn(async move { r.answer(&der, crate::clock::Clock::system().now()).await })
    };
    // Waits until the signing service is in a state `want` accepts: (signatures started,
    // queued routine, queued changes).
    let service_is = |want: fn((usize, usize, usize)) -> bool| {
        let r = responder.clone();
        let entered = entered.clone();
        async move {
            let mut now = (0, 0, 0);
            for _ in 0..1000 {
                now = {
                    let (change, routine) = r.issuers[0].signing.queued();
                    (
                        entered.load(std::sync::atomic::Ordering::SeqCst),
                        routine,
                        change,
                    )
                };
                if want(now) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("the signing service never reached the state waited for; last {now:?}");
        }
    };
    // The certificate is good when read; the revocation lands during its signature.
    let first = ask(request(&revocation.serial));
    service_is(|s| s == (1, 0, 0)).await;
    let routine_b = ask(request(&others[0]));
    service_is(|s| s == (1, 1, 0)).await;
    let routine_c = ask(request(&others[1]));
    service_is(|s| s == (1, 2, 0)).await;
    tx.send(()).expect("ticket"); // the good response is signed
    // Then two interleavings are possible, and both must keep C behind the re-signature: the
    // thread takes B before A's caller re-queues (B runs, C and the re-signature wait), or A's
    // re-signature is queued first and runs ahead of both routine jobs.
    service_is(|s| s == (2, 1, 1) || s == (2, 2, 0)).await;
    for _ in 0..3 {
        tx.send(()).expect("ticket");
    }
    let answer = first.await.expect("task");
    routine_b.await.expect("task");
    routine_c.await.expect("task");
    let status = signed_status(answer);
    assert!(
        matches!(status, SingleStatus::Revoked(_)),
        "served {status:?}"
    );
    // Signed: A (good), then A again (revoked) before C that queued first; B before C.
    let order: Vec<usize> = signed
        .lock()
        .expect("signed")
        .iter()
        .map(|tbs| {
            let has = |s: &Serial| {
                tbs.windows(s.as_der_content().len())
                    .any(|w| w == s.as_der_content())
            };
            if has(&revocation.serial) {
                0
            } else if has(&others[0]) {
                1
            } else {
                2
            }
        })
        .collect();
    assert!(
        order == [0, 1, 0, 2] || order == [0, 0, 1, 2],
        "signed in the order {order:?}"
    );
    // While the revoked response was being signed the cache held nothing for the
    // certificate (the good one never went in), and now it holds the revoked one.
    let seen = cache_seen.lock().expect("seen").clone();
    assert_eq!(seen, [None], "watched during the re-signature");
    let cached = responder
        .cache
        .inner
        .get(&forms[0][..])
        .await
        .expect("cached");
    assert_eq!(cached.status, status);
    assert!(
        prometheus
            .render()
            .contains("vigil_signing_status_changed_total 1"),
        "{}",
        prometheus.render()
    );
}
