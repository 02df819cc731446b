//! End-to-end OCSP tests against the real `vigil` binary, checked with `openssl ocsp` and with
//! raw HTTP for every bad input in CONFORMANCE.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use common::*;
use der::asn1::{BitString, Null, OctetString};
use der::{Decode, Encode};
use spki::AlgorithmIdentifierOwned;
use x509_cert::ext::Extension;
use x509_cert::serial_number::SerialNumber;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspRequest, OcspResponse, Request, TbsRequest, Version,
};

use vigil::ocsp::{HashAlgorithm, IssuerHashes};

const MALFORMED: &[u8] = &[0x30, 0x03, 0x0A, 0x01, 0x01];
const UNAUTHORIZED: &[u8] = &[0x30, 0x03, 0x0A, 0x01, 0x06];

fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

/// openssl ocsp against the server; returns the combined output.
fn ocsp_query(dir: &Path, url: &str, args: &[&str]) -> String {
    let mut a = vec![
        "ocsp", "-issuer", "ca.pem", "-CAfile", "ca.pem", "-url", url,
    ];
    a.extend_from_slice(args);
    openssl(dir, &a).1
}

/// A request file made by openssl.
fn reqout(dir: &Path, args: &[&str]) -> Vec<u8> {
    let mut a = vec!["ocsp", "-issuer", "ca.pem", "-reqout", "req.der"];
    a.extend_from_slice(args);
    let (ok, text) = openssl(dir, &a);
    assert!(ok, "{text}");
    std::fs::read(dir.join("req.der")).expect("req")
}

/// Verifies a response body with openssl; returns its output.
fn respin(dir: &Path, body: &[u8], cert_args: &[&str]) -> String {
    std::fs::write(dir.join("resp.der"), body).expect("write");
    let mut a = vec![
        "ocsp", "-respin", "resp.der", "-issuer", "ca.pem", "-CAfile", "ca.pem",
    ];
    a.extend_from_slice(cert_args);
    openssl(dir, &a).1
}

fn issuer_hashes(data: &Path) -> IssuerHashes {
    let ca = vigil::pki::read_certificate(&data.join("ca.pem")).expect("ca");
    IssuerHashes::new(
        &ca.tbs_certificate.subject.to_der().expect("der"),
        ca.tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes(),
    )
}

fn cert_id(h: &IssuerHashes, alg: HashAlgorithm, serial: &[u8]) -> CertId {
    CertId {
        hash_algorithm: AlgorithmIdentifierOwned {
            oid: alg.oid(),
            parameters: Some(Null.into()),
        },
        issuer_name_hash: OctetString::new(h.name_hash(alg)).expect("o"),
        issuer_key_hash: OctetString::new(h.key_hash(alg)).expect("o"),
        serial_number: SerialNumber::new(serial).expect("serial"),
    }
}

fn request(ids: Vec<CertId>, exts: Option<Vec<Extension>>) -> OcspRequest {
    OcspRequest {
        tbs_request: TbsRequest {
            version: Version::V1,
            requestor_name: None,
            request_list: ids
                .into_iter()
                .map(|req_cert| Request {
                    req_cert,
                    single_request_extensions: None,
                })
                .collect(),
            request_extensions: exts,
        },
        optional_signature: None,
    }
}

fn basic(body: &[u8]) -> BasicOcspResponse {
    let r = OcspResponse::from_der(body).expect("OCSPResponse");
    let rb = r.response_bytes.expect("responseBytes");
    BasicOcspResponse::from_der(rb.response.as_bytes()).expect("basic")
}

fn serial_of(data: &Path, name: &str) -> String {
    let c = vigil::pki::read_certificate(&data.join("certs").join(format!("{name}.pem")))
        .expect("cert");
    vigil::status::Serial::from_der_content(c.tbs_certificate.serial_number.as_bytes())
        .expect("serial")
        .to_hex()
}

#[test]
fn embedded_default_answers_openssl_over_post() {
    let (_tmp, data) = demo_dir();
    let v = Vigil::start(data.parent().expect("parent"), None, &[]);
    assert!(
        v.stdout_head
            .iter()
            .any(|l| l.starts_with("try: openssl ocsp")),
        "{:?}",
        v.stdout_head
    );
    let url = format!("{}/ocsp", v.url());
    for digest in ["-sha1", "-sha256"] {
        let out = ocsp_query(&data, &url, &[digest, "-cert", "certs/good-1.pem"]);
        assert!(out.contains("Response verify OK"), "{out}");
        assert!(out.contains("certs/good-1.pem: good"), "{out}");
        let out = ocsp_query(&data, &url, &[digest, "-cert", "certs/revoked-1.pem"]);
        assert!(out.contains("Response verify OK"), "{out}");
        assert!(out.contains("certs/revoked-1.pem: revoked"), "{out}");
        assert!(out.contains("Reason: keyCompromise"), "{out}");
        assert!(out.contains("Revocation Time:"), "{out}");
    }
    // at the root path too, and an unissued serial is never good
    let out = ocsp_query(&data, &v.url(), &["-serial", "0x0FEDCBA987", "-no_nonce"]);
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(out.contains("0x0FEDCBA987: unknown"), "{out}");
    // two CertIDs in one request (and a duplicate), each answered
    let out = ocsp_query(
        &data,
        &url,
        &[
            "-cert",
            "certs/good-1.pem",
            "-cert",
            "certs/revoked-1.pem",
            "-cert",
            "certs/good-1.pem",
        ],
    );
    assert!(out.contains("Response verify OK"), "{out}");
    assert_eq!(out.matches("certs/good-1.pem: good").count(), 2, "{out}");
    assert!(out.contains("certs/revoked-1.pem: revoked"), "{out}");
}

/// RFC 9654 §2.1: nonces of 1 ..= 128 octets are accepted (echoed exactly when echoing), 0 and
/// 129 are `malformedRequest`; with the default policy (ignore) every accepted nonce gets the
/// shared response without one. GETs under the prefix that hold no request are 400, never 404.
#[test]
fn nonces_follow_rfc_9654() {
    let (_tmp, data) = demo_dir();
    let dir = data.parent().expect("parent");
    let h = issuer_hashes(&data);
    let good = vigil::pki::read_certificate(&data.join("certs/good-1.pem")).expect("cert");
    let serial = good.tbs_certificate.serial_number.as_bytes().to_vec();
    let nonce_ext = |len: usize| Extension {
        extn_id: vigil::ocsp::OID_NONCE,
        critical: false,
        extn_value: OctetString::new(
            OctetString::new((0..len).map(|i| i as u8 ^ 0x5A).collect::<Vec<u8>>())
                .expect("o")
                .to_der()
                .expect("d"),
        )
        .expect("o"),
    };
    let lengths = [0usize, 1, 16, 32, 33, 64, 128, 129];
    for policy in ["echo", "ignore"] {
        let v = Vigil::start(dir, None, &[("VIGIL_NONCE", policy)]);
        for len in lengths {
            let sent = nonce_ext(len);
            let der = request(
                vec![cert_id(&h, HashAlgorithm::Sha256, &serial)],
                Some(vec![sent.clone()]),
            )
            .to_der()
            .expect("der");
            let r = post(v.addr, "/ocsp", &der);
            assert_eq!(r.status, 200, "{policy}, nonce of {len}");
            if len == 0 || len > 128 {
                assert_eq!(r.body, MALFORMED, "{policy}, nonce of {len}");
                continue;
            }
            let b = basic(&r.body);
            assert!(matches!(
                b.tbs_response_data.responses[0].cert_status,
                CertStatus::Good(_)
            ));
            let echoed = b
                .tbs_response_data
                .response_extensions
                .iter()
                .flatten()
                .find(|e| e.extn_id == vigil::ocsp::OID_NONCE)
                .cloned();
            if policy == "echo" {
                assert_eq!(echoed, Some(sent), "nonce of {len} echoed exactly");
                assert_eq!(r.header("cache-control"), Some("no-cache"));
            } else {
                assert_eq!(echoed, None, "nonce of {len} ignored");
            }
            let out = respin(
                &data,
                &r.body,
                &["-no_nonce", "-sha256", "-cert", "certs/good-1.pem"],
            );
            assert!(
                out.contains("Response verify OK") && out.contains("good-1.pem: good"),
                "{policy}, nonce of {len}: {out}"
            );
        }
        // GETs under the prefix that carry no request, or not base64: 400, never 404
        for path in ["/ocsp", "/ocsp/", "/ocsp//", "/ocsp/!!!", "/ocsp/%zz"] {
            assert_eq!(get(v.addr, path, "").status, 400, "GET {path}");
        }
        // base64 that is not an OCSPRequest: malformedRequest
        let r = get(v.addr, &format!("/ocsp/{}", b64(b"hello")), "");
        assert_eq!((r.status, &r.body[..]), (200, MALFORMED));
    }
    // openssl's own nonce (its default length) is echoed and verified
    let v = Vigil::start(dir, None, &[("VIGIL_NONCE", "echo")]);
    let out = ocsp_query(&data, &v.url(), &["-nonce", "-cert", "certs/good-1.pem"]);
    assert!(
        !out.contains("WARNING") && out.contains("Response verify OK"),
        "{out}"
    );
}

#[test]
fn nonce_is_echoed_only_when_configured() {
    let (_tmp, data) = demo_dir();
    let dir = data.parent().expect("parent");
    let v = Vigil::start(dir, None, &[]);
    let out = ocsp_query(&data, &v.url(), &["-nonce", "-cert", "certs/good-1.pem"]);
    assert!(out.contains("WARNING: no nonce in response"), "{out}");
    assert!(out.contains("Response verify OK"), "{out}");
    drop(v);
    let v = Vigil::start(dir, None, &[("VIGIL_NONCE", "echo")]);
    let out = ocsp_query(&data, &v.url(), &["-nonce", "-cert", "certs/good-1.pem"]);
    assert!(!out.contains("WARNING"), "{out}");
    assert!(
        out.contains("Response verify OK") && out.contains("good-1.pem: good"),
        "{out}"
    );
    let out = ocsp_query(
        &data,
        &v.url(),
        &["-no_nonce", "-cert", "certs/revoked-1.pem"],
    );
    assert!(
        out.contains("Response verify OK") && out.contains("revoked-1.pem: revoked"),
        "{out}"
    );
}

#[test]
fn get_in_every_form_clients_send() {
    let (_tmp, data) = demo_dir();
    let v = Vigil::start(data.parent().expect("parent"), None, &[]);
    let der = reqout(
        &data,
        &["-sha256", "-cert", "certs/good-2.pem", "-no_nonce"],
    );
    let std = b64(&der);
    let forms = [
        format!("/ocsp/{std}"),
        format!("/{std}"),
        format!("//{std}"),
        format!("/ocsp//{std}"),
        format!("/ocsp/{}", std.trim_end_matches('=')),
        format!(
            "/ocsp/{}",
            std.replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
        ),
    ];
    let mut etag = None;
    for path in &forms {
        let r = get(v.addr, path, "");
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some("application/ocsp-response"));
        let out = respin(&data, &r.body, &["-sha256", "-cert", "certs/good-2.pem"]);
        assert!(
            out.contains("Response verify OK") && out.contains("good-2.pem: good"),
            "{path}: {out}"
        );
        // the CertID is echoed exactly as asked (SHA-256 here)
        let b = basic(&r.body);
        let asked = OcspRequest::from_der(&der)
            .expect("req")
            .tbs_request
            .request_list[0]
            .req_cert
            .clone();
        assert_eq!(b.tbs_response_data.responses[0].cert_id, asked);
        let e = r.header("etag").expect("etag").to_string();
        assert_eq!(
            etag.get_or_insert(e.clone()),
            &e,
            "one cached response for every form"
        );
    }
}

#[test]
fn caching_headers_and_304() {
    let (_tmp, data) = demo_dir();
    let v = Vigil::start(data.parent().expect("parent"), None, &[]);
    let der = reqout(&data, &["-cert", "certs/good-1.pem", "-no_nonce"]);
    let path = format!("/ocsp/{}", b64(&der));
    let r = get(v.addr, &path, "");
    assert_eq!(r.status, 200);
    let cc = r.header("cache-control").expect("cache-control");
    assert!(
        cc.contains("public") && cc.contains("no-transform") && cc.contains("must-revalidate"),
        "{cc}"
    );
    let max_age: i64 = cc
        .split(',')
        .find_map(|p| p.trim().strip_prefix("max-age="))
        .expect("max-age")
        .parse()
        .expect("number");
    let b = basic(&r.body);
    let single = &b.tbs_response_data.responses[0];
    let next = single
        .next_update
        .expect("nextUpdate always present")
        .0
        .to_unix_duration()
        .as_secs() as i64;
    let this = single.this_update.0.to_unix_duration().as_secs() as i64;
    let produced = b
        .tbs_response_data
        .produced_at
        .0
        .to_unix_duration()
        .as_secs() as i64;
    let now = vigil::clock::Clock::system().now();
    assert!(
        max_age > 0 && max_age <= next - now + 1,
        "max-age {max_age} vs nextUpdate-now {}",
        next - now
    );
    assert!(
        this <= produced && produced <= now + 1,
        "thisUpdate <= producedAt <= now"
    );
    assert_eq!(next - this, 4 * 86400, "default validity");
    assert_eq!(
        r.header("last-modified"),
        Some(vigil::cache::http_date(this).as_str())
    );
    assert_eq!(
        r.header("expires"),
        Some(vigil::cache::http_date(next).as_str())
    );
    let etag = r.header("etag").expect("etag");
    let r2 = get(v.addr, &path, &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(r2.status, 304);
    assert!(r2.body.is_empty());
    assert_eq!(r2.header("etag"), Some(etag));
    let r3 = get(v.addr, &path, "If-None-Match: \"other\"\r\n");
    assert_eq!(r3.status, 200);
    assert_eq!(r3.body, r.body, "served from the cache: same bytes");
    // errors are not cacheable
    let bad = post(v.addr, "/ocsp", b"garbage");
    assert_eq!(bad.header("cache-control"), Some("no-cache"));
}

#[test]
fn unknown_issuer_and_unsupported_hash_are_unauthorized() {
    let (_tmp, data) = demo_dir();
    let v = Vigil::start(data.parent().expect("parent"), None, &[]);
    // another CA, made with openssl
    let (ok, t) = openssl(
        &data,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.pem",
            "-subj",
            "/CN=other CA",
            "-days",
            "2",
        ],
    );
    assert!(ok, "{t}");
    let out = openssl(
        &data,
        &[
            "ocsp",
            "-issuer",
            "other.pem",
            "-serial",
            "0x10",
            "-url",
            &v.url(),
            "-no_nonce",
        ],
    )
    .1;
    assert!(out.contains("unauthorized"), "{out}");
    let h = issuer_hashes(&data);
    let mut id = cert_id(&h, HashAlgorithm::Sha1, &[0x10]);
    id.hash_algorithm.oid = const_oid::db::rfc5912::ID_MD_5;
    let r = post(v.addr, "/", &request(vec![id], None).to_der().expect("der"));
    assert_eq!((r.status, r.body.as_slice()), (200, UNAUTHORIZED));
    // known key hash, wrong name hash
    let mut id = cert_id(&h, HashAlgorithm::Sha256, &[0x10]);
    id.issuer_name_hash = OctetString::new(vec![0u8; 32]).expect("o");
    let r = post(v.addr, "/", &request(vec![id], None).to_der().expect("der"));
    assert_eq!(r.body, UNAUTHORIZED);
}

#[test]
fn unissued_policy_revoked_uses_extended_revoked_definition() {
    let (_tmp, data) = demo_dir();
    let cfg = data.join("vigil.toml");
    std::fs::write(&cfg, "data_dir = \".\"\n[[issuer]]\nname = \"demo\"\ncertificate = \"ca.pem\"\nresponder_certificate = \"responder.pem\"\nresponder_key = \"responder.key\"\nunissued = \"revoked\"\n").expect("cfg");
    let v = Vigil::start(&data, Some(&cfg), &[]);
    let h = issuer_hashes(&data);
    for alg in [HashAlgorithm::Sha384, HashAlgorithm::Sha512] {
        let r = post(
            v.addr,
            "/ocsp",
            &request(vec![cert_id(&h, alg, &[0x55, 0x66])], None)
                .to_der()
                .expect("der"),
        );
        let b = basic(&r.body);
        match &b.tbs_response_data.responses[0].cert_status {
            CertStatus::Revoked(info) => {
                assert_eq!(info.revocation_time.0.to_unix_duration().as_secs(), 0);
                assert_eq!(info.revocation_reason, None, "never certificateHold");
            }
            other => panic!("unissued serial answered {other:?}"),
        }
        let exts = b.tbs_response_data.response_extensions.expect("extensions");
        assert!(
            exts.iter()
                .any(|e| e.extn_id == vigil::ocsp::OID_EXTENDED_REVOKE)
        );
    }
    let out = ocsp_query(&data, &v.url(), &["-cert", "certs/good-1.pem", "-no_nonce"]);
    assert!(
        out.contains("good-1.pem: good") && out.contains("Response verify OK"),
        "{out}"
    );
    drop(v);
    std::fs::write(&cfg, "data_dir = \".\"\n[[issuer]]\nname = \"demo\"\ncertificate = \"ca.pem\"\nresponder_certificate = \"responder.pem\"\nresponder_key = \"responder.key\"\nunissued = \"unauthorized\"\n").expect("cfg");
    let v = Vigil::start(&data, Some(&cfg), &[]);
    let r = post(
        v.addr,
        "/ocsp",
        &request(vec![cert_id(&h, HashAlgorithm::Sha1, &[0x55])], None)
            .to_der()
            .expect("der"),
    );
    assert_eq!(r.body, UNAUTHORIZED);
}

#[test]
fn bad_inputs_get_the_right_answer() {
    let (_tmp, data) = demo_dir();
    let v = Vigil::start(data.parent().expect("parent"), None, &[]);
    let h = issuer_hashes(&data);
    let good = request(vec![cert_id(&h, HashAlgorithm::Sha1, &[0x42])], None)
        .to_der()
        .expect("der");
    let mut trailing = good.clone();
    trailing.push(0);
    let mut ber = vec![0x30, 0x80];
    ber.extend_from_slice(&good[2..]);
    ber.extend_from_slice(&[0, 0]);
    let mut deep = Vec::new();
    for _ in 0..2000 {
        deep.extend_from_slice(&[0x30, 0x80]);
    }
    let huge_len = vec![0x30, 0x84, 0x7F, 0xFF, 0xFF, 0xFF, 0x30];
    let empty_list = vec![0x30, 0x04, 0x30, 0x02, 0x30, 0x00];
    let malformed_bodies: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"hello, world".to_vec()),
        ("empty", Vec::new()),
        ("truncated", good[..good.len() - 3].to_vec()),
        ("trailing bytes", trailing),
        ("BER indefinite length", ber),
        ("deep nesting", deep),
        ("huge length", huge_len),
        ("empty requestList", empty_list),
    ];
    for (what, body) in malformed_bodies {
        let r = post(v.addr, "/ocsp", &body);
        assert_eq!((r.status, r.body.as_slice()), (200, MALFORMED), "{what}");
    }
    // serials: zero, negative, longer than 20 octets
    for serial in [vec![0u8], vec![0xFF, 0x01], vec![0x11; 22]] {
        let id = cert_id(&h, HashAlgorithm::Sha1, &[1]);
        let mut der_int = vec![0x02, serial.len() as u8];
        der_int.extend_from_slice(&serial);
        // SerialNumber::new refuses these, so splice the raw INTEGER into the DER
        let ok_der = request(vec![id], None).to_der().expect("der");
        let pos = ok_der
            .windows(3)
            .rposition(|w| w == [0x02, 0x01, 0x01])
            .expect("serial");
        let mut bytes = ok_der[..pos].to_vec();
        bytes.extend_from_slice(&der_int);
        bytes.extend_from_slice(&ok_der[pos + 3..]);
        let delta = der_int.len() as i64 - 3;
        fix_lengths(&mut bytes, delta);
        let r = post(v.addr, "/ocsp", &bytes);
        assert_eq!(r.body, MALFORMED, "serial {serial:02x?}");
    }
    // thousands of CertIDs: refused above the cap, no signature
    let many: Vec<CertId> = (0..1000u32)
        .map(|i| cert_id(&h, HashAlgorithm::Sha1, &[(i % 200 + 1) as u8]))
        .collect();
    let r = post(v.addr, "/ocsp", &request(many, None).to_der().expect("der"));
    assert_eq!(r.status, 413, "1000 CertIDs exceed the body cap");
    let ids33: Vec<CertId> = (1..=33u8)
        .map(|i| cert_id(&h, HashAlgorithm::Sha1, &[i]))
        .collect();
    let r = post(
        v.addr,
        "/ocsp",
        &request(ids33, None).to_der().expect("der"),
    );
    assert_eq!(r.body, MALFORMED, "33 CertIDs");
    // nonce of 0 bytes and of 129 bytes (RFC 9654 §2.1)
    for len in [0usize, 129] {
        let ext = Extension {
            extn_id: vigil::ocsp::OID_NONCE,
            critical: false,
            extn_value: OctetString::new(
                OctetString::new(vec![1u8; len])
                    .expect("o")
                    .to_der()
                    .expect("d"),
            )
            .expect("o"),
        };
        let r = post(
            v.addr,
            "/ocsp",
            &request(
                vec![cert_id(&h, HashAlgorithm::Sha1, &[0x42])],
                Some(vec![ext]),
            )
            .to_der()
            .expect("der"),
        );
        assert_eq!(r.body, MALFORMED, "nonce of {len}");
    }
    // unknown critical extension
    let ext = Extension {
        extn_id: const_oid::ObjectIdentifier::new_unwrap("1.2.3.4.5"),
        critical: true,
        extn_value: OctetString::new(vec![5, 0]).expect("o"),
    };
    let r = post(
        v.addr,
        "/ocsp",
        &request(
            vec![cert_id(&h, HashAlgorithm::Sha1, &[0x42])],
            Some(vec![ext]),
        )
        .to_der()
        .expect("der"),
    );
    assert_eq!(r.body, MALFORMED, "unknown critical extension");
    // a request signature is ignored
    let mut signed = request(vec![cert_id(&h, HashAlgorithm::Sha1, &[0x42])], None);
    signed.optional_signature = Some(x509_ocsp::Signature {
        signature_algorithm: AlgorithmIdentifierOwned {
            oid: const_oid::db::rfc5912::ECDSA_WITH_SHA_256,
            parameters: None,
        },
        signature: BitString::from_bytes(&[1, 2, 3]).expect("bits"),
        certs: None,
    });
    let r = post(v.addr, "/ocsp", &signed.to_der().expect("der"));
    assert_eq!(r.status, 200);
    assert!(
        OcspResponse::from_der(&r.body)
            .expect("resp")
            .response_bytes
            .is_some(),
        "answered despite the bogus signature"
    );

    // HTTP-level bounds
    let big = vec![0x30u8; 20_000];
    assert_eq!(post(v.addr, "/ocsp", &big).status, 413);
    let r = raw(
        v.addr,
        b"POST /ocsp HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 999999999\r\n\r\n",
    );
    assert_eq!(r.status, 413, "refused from Content-Length before reading");
    let long = format!("/ocsp/M{}", "A".repeat(5000));
    assert_eq!(get(v.addr, &long, "").status, 414);
    assert_eq!(get(v.addr, "/ocsp/!!!notbase64", "").status, 400);
    assert_eq!(get(v.addr, "/favicon.ico", "").status, 404);
    assert_eq!(get(v.addr, "/nope/deeper", "").status, 404);
    assert_eq!(get(v.addr, "/crl/../etc/passwd", "").status, 404);
    assert_eq!(get(v.addr, "/crl/%2e%2e%2fetc", "").status, 404);
    for m in ["PUT", "DELETE", "PATCH", "OPTIONS"] {
        let r = raw(
            v.addr,
            format!(
                "{m} /ocsp HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(r.status, 405, "{m}");
        assert!(r.header("allow").is_some());
    }
    // still serving after all of that
    let out = ocsp_query(&data, &v.url(), &["-cert", "certs/good-1.pem", "-no_nonce"]);
    assert!(out.contains("good-1.pem: good"), "{out}");
}

/// Adds `delta` to every definite DER length on the path to a changed INTEGER (the outer
/// SEQUENCEs of a single-CertID request with short or one-byte long lengths).
fn fix_lengths(bytes: &mut [u8], delta: i64) {
    // OCSPRequest > TBSRequest > requestList > Request > CertID: five SEQUENCE headers.
    let mut pos = 0;
    for _ in 0..5 {
        assert_eq!(bytes[pos], 0x30);
        let (len, hdr) = if bytes[pos + 1] < 0x80 {
            (bytes[pos + 1] as i64, 2)
        } else {
            assert_eq!(bytes[pos + 1], 0x81);
            (bytes[pos + 2] as i64, 3)
        };
        let new = len + delta;
        assert!(
            new < 0x80 || hdr == 3,
            "test helper handles short lengths only"
        );
        if hdr == 2 {
            bytes[pos + 1] = new as u8;
        } else {
            bytes[pos + 2] = new as u8;
        }
        pos += hdr;
    }
}

#[test]
fn slow_clients_time_out_and_others_are_served() {
    use std::io::{Read, Write};
    let (_tmp, data) = demo_dir();
    let cfg = data.join("vigil.toml");
    std::fs::write(&cfg, "data_dir = \".\"\n[server]\nheader_read_timeout = \"1s\"\nbody_read_timeout = \"1s\"\nidle_timeout = \"3s\"\n[[issuer]]\nname = \"demo\"\ncertificate = \"ca.pem\"\nresponder_certificate = \"responder.pem\"\nresponder_key = \"responder.key\"\n").expect("cfg");
    let v = Vigil::start(&data, Some(&cfg), &[]);
    // slowloris on the head, on the body, and a silent connection
    let mut head = std::net::TcpStream::connect(v.addr).expect("c");
    head.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .expect("w");
    let mut body = std::net::TcpStream::connect(v.addr).expect("c");
    body.write_all(b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0")
        .expect("w");
    let mut silent = std::net::TcpStream::connect(v.addr).expect("c");
    // a well-behaved client meanwhile
    let out = ocsp_query(&data, &v.url(), &["-cert", "certs/good-1.pem", "-no_nonce"]);
    assert!(out.contains("good-1.pem: good"), "{out}");
    for (what, s, limit) in [
        ("head", &mut head, 4),
        ("body", &mut body, 4),
        ("silent", &mut silent, 8),
    ] {
        s.set_read_timeout(Some(Duration::from_secs(limit)))
            .expect("t");
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        let r = s.read_to_end(&mut buf);
        assert!(
            r.is_ok(),
            "{what}: the server closed the connection ({r:?})"
        );
        assert!(started.elapsed() < Duration::from_secs(limit), "{what}");
        if what == "body" {
            assert!(
                String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"),
                "{what}: {}",
                String::from_utf8_lossy(&buf)
            );
        }
    }
}

#[test]
fn revocation_survives_kill_9_and_evicts_the_cache() {
    let (tmp, data) = demo_dir();
    let dir = tmp.path();
    let mut v = Vigil::start(dir, None, &[]);
    let url = v.url();
    let out = ocsp_query(&data, &url, &["-cert", "certs/good-2.pem", "-no_nonce"]);
    assert!(out.contains("good-2.pem: good"), "{out}");
    let serial = serial_of(&data, "good-2");
    let o = vigil_cmd(
        dir,
        &[
            "revoke",
            "--issuer",
            "demo",
            "--serial",
            &serial,
            "--reason",
            "superseded",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // the cached good answer is replaced within the journal poll interval
    assert!(
        eventually(Duration::from_secs(5), || ocsp_query(
            &data,
            &url,
            &["-cert", "certs/good-2.pem", "-no_nonce"]
        )
        .contains("good-2.pem: revoked")),
        "revocation not visible"
    );
    let o = vigil_cmd(dir, &["status", "--issuer", "demo", "--serial", &serial]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("revoked"),
        "{o:?}"
    );
    v.kill9();
    let v = Vigil::start(dir, None, &[]);
    let out = ocsp_query(&data, &v.url(), &["-cert", "certs/good-2.pem", "-no_nonce"]);
    assert!(
        out.contains("good-2.pem: revoked") && out.contains("Reason: superseded"),
        "{out}"
    );
    // the demo PKI was reused, not remade
    let out = ocsp_query(&data, &v.url(), &["-cert", "certs/good-1.pem", "-no_nonce"]);
    assert!(
        out.contains("Response verify OK") && out.contains("good-1.pem: good"),
        "{out}"
    );
}

#[test]
fn torn_journal_tail_is_dropped_with_a_warning() {
    let (tmp, data) = demo_dir();
    let journal = data.join("journal.vj");
    let mut bytes = std::fs::read(&journal).expect("journal");
    bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3]);
    std::fs::write(&journal, &bytes).expect("write");
    let v = Vigil::start(tmp.path(), None, &[]);
    let out = ocsp_query(
        &data,
        &v.url(),
        &["-cert", "certs/revoked-1.pem", "-no_nonce"],
    );
    assert!(out.contains("revoked-1.pem: revoked"), "{out}");
    // a writer truncates the torn record and appends after it
    let serial = serial_of(&data, "good-1");
    let o = vigil_cmd(
        tmp.path(),
        &["revoke", "--issuer", "demo", "--serial", &serial],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(eventually(Duration::from_secs(5), || ocsp_query(
        &data,
        &v.url(),
        &["-cert", "certs/good-1.pem", "-no_nonce"]
    )
    .contains("good-1.pem: revoked")));
}

#[test]
fn import_openssl_index() {
    let (tmp, data) = demo_dir();
    let good1 = serial_of(&data, "good-1");
    let index = format!(
        "V\t301231235959Z\t\t{good1}\tunknown\t/CN=a\nR\t301231235959Z\t240102030405Z,cessationOfOperation\t0ABCDEF1\tunknown\t/CN=b\nV\t20501231235959Z\t\t0ABCDEF2\tunknown\t/CN=c\n"
    );
    std::fs::write(tmp.path().join("index.txt"), index).expect("index");
    let o = vigil_cmd(
        tmp.path(),
        &["import", "--openssl-index", "index.txt", "--issuer", "demo"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("imported 3 certificate(s), 1 revoked"));
    let v = Vigil::start(tmp.path(), None, &[]);
    let out = ocsp_query(&data, &v.url(), &["-serial", "0x0ABCDEF1", "-no_nonce"]);
    assert!(
        out.contains("revoked") && out.contains("Reason: cessationOfOperation"),
        "{out}"
    );
    assert!(
        out.contains("Revocation Time: Jan  2 03:04:05 2024 GMT"),
        "{out}"
    );
    let out = ocsp_query(&data, &v.url(), &["-serial", "0x0ABCDEF2", "-no_nonce"]);
    assert!(out.contains("0x0ABCDEF2: good"), "{out}");
    let bad = "X\tnonsense\n";
    std::fs::write(tmp.path().join("bad.txt"), bad).expect("bad");
    let o = vigil_cmd(
        tmp.path(),
        &["import", "--openssl-index", "bad.txt", "--issuer", "demo"],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bad.txt:1"),
        "{o:?}"
    );
}

#[test]
fn health_readiness_metrics_and_graceful_shutdown() {
    let (tmp, data) = demo_dir();
    let mut v = Vigil::start(tmp.path(), None, &[]);
    assert_eq!(get(v.addr, "/healthz", "").status, 200);
    let r = get(v.addr, "/readyz", "");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ready\n"[..]));
    let _ = ocsp_query(&data, &v.url(), &["-cert", "certs/good-1.pem", "-no_nonce"]);
    let _ = ocsp_query(&data, &v.url(), &["-cert", "certs/good-1.pem", "-no_nonce"]);
    let m = String::from_utf8(get(v.addr, "/metrics", "").body).expect("utf8");
    assert!(
        m.contains("vigil_ocsp_requests_total{method=\"POST\",outcome=\"successful\"} 2"),
        "{m}"
    );
    assert!(m.contains("vigil_ocsp_cache_hits_total 1"), "{m}");
    // openssl's -no_nonce request is one CertID and nothing else: the repeat is a front hit.
    assert!(m.contains("vigil_ocsp_front_cache_hits_total 1"), "{m}");
    assert!(
        m.contains("vigil_ocsp_request_duration_seconds_bucket"),
        "{m}"
    );
    assert_eq!(
        raw(
            v.addr,
            b"POST /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        .status,
        405
    );
    let status = v.terminate();
    assert!(status.success(), "exit {status:?}");
}

#[test]
fn bad_config_exits_non_zero_naming_the_key() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "[ocsp]\nvalidity = \"30d\"\n[[issuer]]\nname = \"x\"\ncertificate = \"a\"\nresponder_key = \"b\"\n").expect("w");
    let o = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ocsp.validity"),
        "{o:?}"
    );
    std::fs::write(&cfg, "[server]\nlisten = \"nope\"\n").expect("w");
    let o = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("listen"),
        "{o:?}"
    );
    // a responder key that does not match the responder certificate
    let (_t, data) = demo_dir();
    let cfg = data.join("mismatch.toml");
    std::fs::write(&cfg, "data_dir = \".\"\n[[issuer]]\nname = \"demo\"\ncertificate = \"ca.pem\"\nresponder_certificate = \"responder.pem\"\nresponder_key = \"ca.key\"\n").expect("w");
    let o = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not match"),
        "{o:?}"
    );
}

#[test]
fn several_issuers_rsa_and_p384_keys_ca_signing_and_responder_id_by_name() {
    let (tmp, data) = demo_dir();
    let dir = tmp.path();
    // Two more CAs made by openssl: RSA-2048 and P-384, each signing its own responses.
    for (name, alg) in [
        ("rsa", vec!["-newkey", "rsa:2048"]),
        (
            "p384",
            vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
        ),
    ] {
        let mut args = vec!["req", "-x509"];
        args.extend(alg);
        let key = format!("{name}.key");
        let cert = format!("{name}.pem");
        let subj = format!("/CN={name} CA");
        args.extend([
            "-nodes", "-keyout", &key, "-out", &cert, "-subj", &subj, "-days", "30",
        ]);
        let (ok, t) = openssl(dir, &args);
        assert!(ok, "{t}");
    }
    let cfg = dir.join("multi.toml");
    std::fs::write(
        &cfg,
        "data_dir = \"vigil-data\"\n[ocsp]\nresponder_id = \"name\"\nnonce = \"echo\"\n\
         [[issuer]]\nname = \"demo\"\ncertificate = \"vigil-data/ca.pem\"\nresponder_certificate = \"vigil-data/responder.pem\"\nresponder_key = \"vigil-data/responder.key\"\n\
         [[issuer]]\nname = \"rsa\"\ncertificate = \"rsa.pem\"\nresponder_key = \"rsa.key\"\n\
         [[issuer]]\nname = \"p384\"\ncertificate = \"p384.pem\"\nresponder_key = \"p384.key\"\n",
    )
    .expect("cfg");
    let cfg_s = cfg.to_str().expect("utf8");
    let o = vigil_cmd(dir, &["--config", cfg_s, "check-config"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("3 issuer(s)"),
        "{o:?}"
    );
    for name in ["rsa", "p384"] {
        let o = vigil_cmd(
            dir,
            &[
                "--config",
                cfg_s,
                "issue",
                "--issuer",
                name,
                "--serial",
                "0x1234",
                "--not-after",
                "2030-01-01T00:00:00Z",
            ],
        );
        assert!(o.status.success(), "{o:?}");
        let o = vigil_cmd(
            dir,
            &[
                "--config",
                cfg_s,
                "revoke",
                "--issuer",
                name,
                "--serial",
                "0x99",
                "--reason",
                "affiliationChanged",
            ],
        );
        assert!(o.status.success(), "{o:?}");
    }
    let v = Vigil::start(dir, Some(&cfg), &[]);
    for name in ["rsa", "p384"] {
        let issuer = format!("{name}.pem");
        let base = [
            "ocsp",
            "-issuer",
            issuer.as_str(),
            "-CAfile",
            issuer.as_str(),
            "-url",
        ];
        let mut a = base.to_vec();
        let url = v.url();
        a.extend([url.as_str(), "-serial", "0x1234"]);
        let out = openssl(dir, &a).1;
        assert!(
            out.contains("Response verify OK") && out.contains("0x1234: good"),
            "{name}: {out}"
        );
        assert!(!out.contains("WARNING"), "nonce echoed: {out}");
        let mut a = base.to_vec();
        a.extend([url.as_str(), "-serial", "0x99", "-resp_text"]);
        let out = openssl(dir, &a).1;
        assert!(
            out.contains("0x99: revoked") && out.contains("Reason: affiliationChanged"),
            "{name}: {out}"
        );
        assert!(
            out.contains(&format!("Responder Id: CN = {name} CA")),
            "{name}: {out}"
        );
    }
    let out = ocsp_query(
        &data,
        &v.url(),
        &["-cert", "certs/good-1.pem", "-resp_text"],
    );
    assert!(
        out.contains("Response verify OK") && out.contains("good-1.pem: good"),
        "{out}"
    );
    assert!(
        out.contains("Responder Id: O = vigil demo, CN = vigil demo OCSP responder"),
        "{out}"
    );
}
