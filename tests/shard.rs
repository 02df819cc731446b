//! A certificate's CRL shard is fixed when its issuance is recorded, against the real `vigil`
//! binary and certificates made by `openssl x509` with cRLDistributionPoints naming shards of one
//! issuer (4 shards):
//!
//! - each revoked certificate is on the shard its CRLDP names and on no other (every shard
//!   checked with `openssl crl -CAfile`), although the serial's CRC-32 would put it elsewhere;
//!   each shard's IDP is byte for byte the CRLDP URI the certificates carry;
//! - raising the shard count to 8 (new configuration, new processes, and a server started on
//!   it) moves none of them; lowering it below a recorded shard publishes nothing and says why;
//! - a CRLDP naming a foreign URL, or a shard the issuer does not have, is refused at issuance
//!   (`vigil issue --cert`, `vigil import --pem`) and nothing is written.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a panic is a failure

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Vigil, ok, openssl, refused, vigil_with};
use vigil::crl::{ShardBy, Sharding};
use vigil::status::Serial;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn config(dir: &Path, pki: &Path, port: u16, shards: u16) -> PathBuf {
    let p = pki.display();
    let text = format!(
        "data_dir = \"{d}/node\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n\
         [status]\njournal = \"{d}/journal.vj\"\n\
         [crl]\nshards = {shards}\nbase_url = \"http://127.0.0.1:{port}\"\n\
         [[issuer]]\nname = \"demo\"\ncertificate = \"{p}/ca.pem\"\n\
         responder_certificate = \"{p}/responder.pem\"\nresponder_key = \"{p}/responder.key\"\n\
         crl_key = \"{p}/ca.key\"\n",
        d = dir.display(),
    );
    let path = dir.join("vigil.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// A certificate of the demo CA with `serial` (hex) and, when given, a CRLDP with `uri`.
fn make_cert(dir: &Path, pki: &Path, name: &str, serial: &str, uri: Option<&str>) -> PathBuf {
    let key = dir.join("leaf.key");
    let csr = dir.join("leaf.csr");
    if !csr.exists() {
        let (done, out) = openssl(
            dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key.display().to_string(),
                "-subj",
                "/CN=leaf.test",
                "-out",
                &csr.display().to_string(),
            ],
        );
        assert!(done, "{out}");
    }
    let ext = dir.join(format!("{name}.cnf"));
    let body = match uri {
        Some(u) => format!("[v3]\nbasicConstraints = CA:FALSE\ncrlDistributionPoints = URI:{u}\n"),
        None => "[v3]\nbasicConstraints = CA:FALSE\n".to_owned(),
    };
    std::fs::write(&ext, body).expect("ext");
    let pem = dir.join(format!("{name}.pem"));
    let (done, out) = openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr.display().to_string(),
            "-CA",
            &pki.join("ca.pem").display().to_string(),
            "-CAkey",
            &pki.join("ca.key").display().to_string(),
            "-set_serial",
            &format!("0x{serial}"),
            "-days",
            "30",
            "-extfile",
            &ext.display().to_string(),
            "-extensions",
            "v3",
            "-out",
            &pem.display().to_string(),
        ],
    );
    assert!(done, "{out}");
    pem
}

fn shard_of(serial: &str, shards: u16) -> u16 {
    Sharding {
        shards,
        by: ShardBy::Serial,
    }
    .shard_of(&Serial::from_hex(serial).expect("serial"), None)
}

/// The CRL at `path` verified with `openssl crl -CAfile`: its IDP URIs and revoked serials.
fn verified_crl(dir: &Path, pki: &Path, path: &Path) -> (Vec<String>, BTreeSet<String>) {
    let (done, out) = openssl(
        dir,
        &[
            "crl",
            "-inform",
            "DER",
            "-noout",
            "-in",
            &path.display().to_string(),
            "-CAfile",
            &pki.join("ca.pem").display().to_string(),
        ],
    );
    assert!(
        done && out.contains("verify OK"),
        "{}: {out}",
        path.display()
    );
    let (done, text) = openssl(
        dir,
        &[
            "crl",
            "-inform",
            "DER",
            "-noout",
            "-text",
            "-in",
            &path.display().to_string(),
        ],
    );
    assert!(done, "{text}");
    assert!(
        text.contains("X509v3 Issuing Distribution Point: critical"),
        "{text}"
    );
    let uris = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("URI:"))
        .map(str::to_owned)
        .collect();
    let serials = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Serial Number: "))
        .map(|s| s.trim().trim_start_matches('0').to_ascii_uppercase())
        .collect();
    (uris, serials)
}

/// The CRLDP URIs of a certificate, as openssl prints them.
fn crldp_uris(dir: &Path, pem: &Path) -> Vec<String> {
    let (done, text) = openssl(
        dir,
        &[
            "x509",
            "-noout",
            "-ext",
            "crlDistributionPoints",
            "-in",
            &pem.display().to_string(),
        ],
    );
    assert!(done, "{text}");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("URI:"))
        .map(str::to_owned)
        .collect()
}

/// Every shard 0..shards: verified, IDP = its URL, and the serials it lists.
fn shards_listed(
    dir: &Path,
    pki: &Path,
    base: &str,
    shards: u16,
) -> BTreeMap<u16, BTreeSet<String>> {
    (0..shards)
        .map(|k| {
            let (uris, serials) =
                verified_crl(dir, pki, &dir.join(format!("node/crl/demo/{k}.crl")));
            assert_eq!(
                uris,
                [format!("{base}/crl/demo/{k}.crl")],
                "IDP of shard {k}"
            );
            (k, serials)
        })
        .collect()
}

#[test]
fn the_shard_a_certificate_names_is_where_it_stays() {
    let (tmp, pki) = common::demo_dir();
    let dir = tmp.path();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let cfg = config(dir, &pki, port, 4);

    // Two certificates per shard, with serials whose CRC-32 names another shard both with 4
    // and with 8 shards: only the recorded CRLDP can put them where they are.
    let mut named: BTreeMap<String, u16> = BTreeMap::new();
    let mut pems: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut n = 0x5A00u32;
    for i in 0..8u16 {
        let k = i % 4;
        let serial = loop {
            n += 1;
            let s = format!("{n:X}");
            if shard_of(&s, 4) != k && shard_of(&s, 8) != k {
                break s;
            }
        };
        let uri = format!("{base}/crl/demo/{k}.crl");
        let pem = make_cert(dir, &pki, &format!("c{i}"), &serial, Some(&uri));
        assert_eq!(crldp_uris(dir, &pem), [uri]);
        let out = ok(&vigil_with(
            &cfg,
            &[
                "issue",
                "--issuer",
                "demo",
                "--cert",
                &pem.display().to_string(),
            ],
        ));
        assert!(out.contains(&format!("on shard {k}")), "{out}");
        named.insert(serial.clone(), k);
        pems.insert(serial, pem);
    }
    // A certificate without a CRLDP goes by the documented function of its serial; one whose
    // CRC-32 gives the same shard with 4 and 8 shards (a serial-sharded certificate moves
    // when the count changes: only recorded ones are fixed).
    let plain = loop {
        n += 1;
        let s = format!("{n:X}");
        if shard_of(&s, 8) < 4 {
            break s;
        }
    };
    let plain_pem = make_cert(dir, &pki, "plain", &plain, None);
    let out = ok(&vigil_with(
        &cfg,
        &[
            "issue",
            "--issuer",
            "demo",
            "--cert",
            &plain_pem.display().to_string(),
        ],
    ));
    assert!(!out.contains("on shard"), "{out}");

    // Foreign URLs and shards the issuer does not have are refused, and nothing is written.
    for (name, uri) in [
        (
            "foreign",
            "http://crl.elsewhere.test/crl/demo/1.crl".to_owned(),
        ),
        ("past", format!("{base}/crl/demo/6.crl")),
        ("https", format!("https://127.0.0.1:{port}/crl/demo/1.crl")),
    ] {
        n += 1;
        let serial = format!("{n:X}");
        let pem = make_cert(dir, &pki, name, &serial, Some(&uri));
        let err = refused(&vigil_with(
            &cfg,
            &[
                "issue",
                "--issuer",
                "demo",
                "--cert",
                &pem.display().to_string(),
            ],
        ));
        assert!(err.contains("names no CRL of issuer \"demo\""), "{err}");
        assert!(err.contains(&uri), "{err}");
        assert!(err.contains(&format!("{base}/crl/demo/0.crl")), "{err}");
        assert!(err.contains("nothing was written"), "{err}");
        let status = ok(&vigil_with(
            &cfg,
            &["status", "--issuer", "demo", "--serial", &serial],
        ));
        assert!(status.contains("not issued"), "{name}: {status}");
        // import --pem: one foreign certificate in the files refuses all of them
        let err = refused(&vigil_with(
            &cfg,
            &[
                "import",
                "--issuer",
                "demo",
                "--pem",
                &plain_pem.display().to_string(),
                &pem.display().to_string(),
            ],
        ));
        assert!(err.contains("refusing the import"), "{err}");
        let status = ok(&vigil_with(
            &cfg,
            &["status", "--issuer", "demo", "--serial", &serial],
        ));
        assert!(status.contains("not issued"), "{name}: {status}");
    }
    // import --pem of good certificates records their shards too (again: idempotent)
    let all: Vec<String> = pems.values().map(|p| p.display().to_string()).collect();
    let mut args = vec!["import", "--issuer", "demo", "--pem"];
    args.extend(all.iter().map(String::as_str));
    let out = ok(&vigil_with(&cfg, &args));
    assert!(
        out.contains("imported 8 certificate(s) for demo, 8 with the CRL shard"),
        "{out}"
    );

    let (first, k) = named.iter().next().map(|(s, k)| (s.clone(), *k)).unwrap();
    let status = ok(&vigil_with(
        &cfg,
        &["status", "--issuer", "demo", "--serial", &first],
    ));
    assert!(status.contains(&format!("listed on shard {k}")), "{status}");

    // Revoked by serial alone: the shard comes from what was recorded at issuance.
    for serial in named.keys().chain([&plain]) {
        ok(&vigil_with(
            &cfg,
            &[
                "revoke",
                "--issuer",
                "demo",
                "--serial",
                serial,
                "--reason",
                "superseded",
            ],
        ));
    }
    let out = ok(&vigil_with(&cfg, &["crl", "publish"]));
    assert_eq!(
        out.lines().filter(|l| l.contains("disk: stored")).count(),
        4,
        "{out}"
    );

    let expect = |named: &BTreeMap<String, u16>, shards: u16| {
        let mut m: BTreeMap<u16, BTreeSet<String>> =
            (0..shards).map(|k| (k, BTreeSet::new())).collect();
        for (s, k) in named {
            m.get_mut(k).unwrap().insert(s.clone());
        }
        m.get_mut(&shard_of(&plain, shards))
            .unwrap()
            .insert(plain.clone());
        m
    };
    let four = shards_listed(dir, &pki, &base, 4);
    assert_eq!(
        four,
        expect(&named, 4),
        "each on the shard its CRLDP names, and on no other"
    );
    // the IDP each certificate's shard carries is byte for byte its CRLDP URI
    for (serial, k) in &named {
        let (idp, _) = verified_crl(dir, &pki, &dir.join(format!("node/crl/demo/{k}.crl")));
        assert_eq!(idp, crldp_uris(dir, &pems[serial]), "{serial}");
    }
    let numbers: Vec<u64> = (0..4)
        .map(|k| {
            let der = std::fs::read(dir.join(format!("node/crl/demo/{k}.crl"))).unwrap();
            vigil::crl::lint::number_of(&der).unwrap()
        })
        .collect();

    // Raise the count to 8: new processes on the new configuration. One more revocation of a
    // certificate recorded on shard 1, and every shard republished.
    let cfg = config(dir, &pki, port, 8);
    let late = loop {
        n += 1;
        let s = format!("{n:X}");
        if shard_of(&s, 8) != 1 && shard_of(&s, 4) != 1 {
            break s;
        }
    };
    let late_pem = make_cert(
        dir,
        &pki,
        "late",
        &late,
        Some(&format!("{base}/crl/demo/1.crl")),
    );
    ok(&vigil_with(
        &cfg,
        &[
            "issue",
            "--issuer",
            "demo",
            "--cert",
            &late_pem.display().to_string(),
        ],
    ));
    ok(&vigil_with(
        &cfg,
        &[
            "revoke",
            "--issuer",
            "demo",
            "--serial",
            &late,
            "--reason",
            "keyCompromise",
        ],
    ));
    named.insert(late.clone(), 1);
    let out = ok(&vigil_with(&cfg, &["crl", "publish"]));
    assert_eq!(
        out.lines().filter(|l| l.contains("disk: stored")).count(),
        8,
        "{out}"
    );
    let eight = shards_listed(dir, &pki, &base, 8);
    assert_eq!(eight, expect(&named, 8), "raising the count moved nothing");
    for k in 0..4u16 {
        let der = std::fs::read(dir.join(format!("node/crl/demo/{k}.crl"))).unwrap();
        assert!(vigil::crl::lint::number_of(&der).unwrap() > numbers[k as usize]);
    }

    // The server on the new configuration serves the same shards, and discloses all 8.
    let v = Vigil::start(dir, Some(&cfg), &[]);
    let listed = common::get(v.addr, "/crl/demo.json", "");
    assert_eq!(listed.status, 200);
    let urls: Vec<String> = serde_json::from_slice(&listed.body).expect("JSON array");
    assert_eq!(urls.len(), 8);
    for (k, url) in urls.iter().enumerate() {
        assert_eq!(url, &format!("{base}/crl/demo/{k}.crl"));
        let r = common::get(v.addr, &format!("/crl/demo/{k}.crl"), "");
        assert_eq!(r.status, 200);
        let disk = std::fs::read(dir.join(format!("node/crl/demo/{k}.crl"))).unwrap();
        assert_eq!(r.body, disk, "shard {k} served as published");
    }
    drop(v);

    // Lowering the count below a recorded shard publishes none of the issuer's CRLs.
    let cfg = config(dir, &pki, port, 2);
    let err = refused(&vigil_with(&cfg, &["crl", "publish"]));
    assert!(err.contains("publishing none of its CRLs"), "{err}");
    assert!(err.contains("at least 4"), "{err}");
    std::thread::sleep(Duration::from_millis(10));
}

/// `POST /v1/issue` with the certificate: its serial, notAfter and the shard its CRLDP names
/// are recorded; a foreign CRLDP is a 400 and nothing is written.
#[test]
fn the_admin_api_records_the_shard_and_refuses_a_foreign_crldp() {
    const TOKEN: &str = "test-admin-token-0123456789";
    let (tmp, pki) = common::demo_dir();
    let dir = tmp.path();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let cfg = config(dir, &pki, port, 4);
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text = text.replace(
        "[crl]",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n[crl]",
            token.display()
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    let v = Vigil::start(dir, Some(&cfg), &[]);
    let admin = v
        .stdout_head
        .iter()
        .find_map(|l| l.strip_prefix("vigil admin API on http://"))
        .map(|a| a.trim_end_matches('/').to_owned())
        .expect("admin listener");
    let admin: std::net::SocketAddr = admin.parse().expect("admin address");
    let call = |method: &str, path: &str, body: &str| -> (u16, String) {
        let r = common::raw(
            admin,
            format!(
                "{method} {path} HTTP/1.1\r\nHost: vigil\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    };
    let body = |pem: &Path| {
        serde_json::json!({
            "issuer": "demo",
            "certificate": std::fs::read_to_string(pem).unwrap(),
        })
        .to_string()
    };

    let good = make_cert(
        dir,
        &pki,
        "good",
        "7C01",
        Some(&format!("{base}/crl/demo/2.crl")),
    );
    let (code, resp) = call("POST", "/v1/issue", &body(&good));
    assert_eq!(code, 200, "{resp}");
    let recorded = common::eventually(Duration::from_secs(10), || {
        let (_, s) = call("GET", "/v1/status/demo/7C01", "");
        s.contains("\"good\"") && s.contains("\"crl_shard\":2")
    });
    assert!(recorded, "{}", call("GET", "/v1/status/demo/7C01", "").1);

    let foreign = make_cert(
        dir,
        &pki,
        "foreign",
        "7C02",
        Some("http://crl.elsewhere.test/2.crl"),
    );
    let (code, resp) = call("POST", "/v1/issue", &body(&foreign));
    assert_eq!(code, 400, "{resp}");
    assert!(resp.contains("names no CRL of issuer"), "{resp}");
    assert!(resp.contains("nothing was written"), "{resp}");
    // serial and notAfter come from the certificate, not beside it
    let mut both: serde_json::Value = serde_json::from_str(&body(&good)).unwrap();
    both["serial"] = serde_json::json!("7C01");
    let (code, resp) = call("POST", "/v1/issue", &both.to_string());
    assert_eq!(code, 400, "{resp}");
    std::thread::sleep(Duration::from_millis(500));
    let (_, s) = call("GET", "/v1/status/demo/7C02", "");
    assert!(s.contains("unissued"), "{s}");
    // the journal holds the one issuance and its shard, nothing of the refused ones
    let batch = vigil::journal::JournalReader::new(dir.join("journal.vj"))
        .read_new()
        .unwrap();
    let kinds: Vec<_> = batch
        .events
        .iter()
        .map(|e| (e.serial.to_hex(), e.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("7C01".to_owned(), kinds[0].1),
            (
                "7C01".to_owned(),
                vigil::status::EventKind::CrlShard {
                    scope: vigil::status::CrlScope::Shard(2)
                }
            )
        ]
    );
    assert!(matches!(
        kinds[0].1,
        vigil::status::EventKind::Issued { .. }
    ));
}
