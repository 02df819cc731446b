//! Disaster recovery against real files, real `openssl` and the real `vigil` binary:
//! split-custody key backup (`vigil key split` / `combine`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn ok(out: &std::process::Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

fn refused(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected a refusal; got {text}");
    text
}

#[test]
fn every_three_of_five_shares_rebuild_a_responder_key_openssl_verifies() {
    let (tmp, data) = demo_dir();
    let root = tmp.path();
    let original = std::fs::read(data.join("responder.key")).unwrap();
    ok(&vigil_cmd(
        root,
        &[
            "key",
            "split",
            "--key",
            "vigil-data/responder.key",
            "--shares",
            "5",
            "--threshold",
            "3",
            "--out",
            "shares",
        ],
    ));
    let shares: Vec<PathBuf> = (1..=5)
        .map(|i| root.join(format!("shares/share-{i}-of-5.txt")))
        .collect();
    let head = std::fs::read_to_string(&shares[1]).unwrap();
    assert!(head.contains("index: 2\n"), "{head}");
    assert!(head.contains("threshold: 3\n"), "{head}");
    assert!(head.contains("key-fingerprint: sha256:"), "{head}");
    // The key leaves the data directory: only the shares can bring it back.
    std::fs::remove_file(data.join("responder.key")).unwrap();
    let mut subsets = Vec::new();
    for a in 0..5 {
        for b in a + 1..5 {
            for c in b + 1..5 {
                subsets.push([a, b, c]);
            }
        }
    }
    assert_eq!(subsets.len(), 10);
    for subset in subsets {
        let mut args: Vec<String> = [
            "key",
            "combine",
            "--out",
            "vigil-data/responder.key",
            "--cert",
            "vigil-data/responder.pem",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(subset.iter().map(|&i| shares[i].display().to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&vigil_cmd(root, &argv));
        assert_eq!(
            std::fs::read(data.join("responder.key")).unwrap(),
            original,
            "{subset:?}"
        );
        // vigil serves with the rebuilt key; openssl checks the signature against the
        // responder certificate (-VAfile) it must have been made with.
        let v = Vigil::start(root, None, &[]);
        let (_, out) = openssl(
            &data,
            &[
                "ocsp",
                "-issuer",
                "ca.pem",
                "-CAfile",
                "ca.pem",
                "-VAfile",
                "responder.pem",
                "-url",
                &format!("{}/ocsp", v.url()),
                "-cert",
                "certs/revoked-1.pem",
            ],
        );
        assert!(out.contains("Response verify OK"), "{subset:?}: {out}");
        assert!(out.contains("certs/revoked-1.pem: revoked"), "{out}");
        drop(v);
        std::fs::remove_file(data.join("responder.key")).unwrap();
    }
    let out = root.join("out.pem");
    let combine = |files: &[&Path], cert: Option<&str>| {
        let mut args = vec![
            "key".to_string(),
            "combine".into(),
            "--out".into(),
            out.display().to_string(),
        ];
        if let Some(c) = cert {
            args.extend(["--cert".to_string(), c.to_string()]);
        }
        args.extend(files.iter().map(|f| f.display().to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        vigil_cmd(root, &argv)
    };
    // Two shares are not enough.
    let e = refused(&combine(&[&shares[0], &shares[3]], None));
    assert!(e.contains("2 share(s) given; this key needs 3"), "{e}");
    assert!(!out.exists());
    // Shares of another key (the CA key, split separately) do not mix.
    ok(&vigil_cmd(
        root,
        &[
            "key",
            "split",
            "--key",
            "vigil-data/ca.key",
            "--shares",
            "5",
            "--threshold",
            "3",
            "--out",
            "ca-shares",
        ],
    ));
    let other = root.join("ca-shares/share-3-of-5.txt");
    let e = refused(&combine(&[&shares[0], &shares[1], &other], None));
    assert!(e.contains("is a share of another key"), "{e}");
    assert!(!out.exists());
    // A damaged share: one character of its value changed.
    let text = std::fs::read_to_string(&shares[4]).unwrap();
    let at = text.find("share: ").unwrap() + 12;
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let damaged = root.join("damaged.txt");
    std::fs::write(&damaged, bytes).unwrap();
    let e = refused(&combine(&[&shares[0], &shares[1], &damaged], None));
    assert!(
        e.contains("damaged.txt") && e.contains("checksum mismatch"),
        "{e}"
    );
    assert!(!out.exists());
    // The right shares against the wrong certificate (the CA's): refused too.
    let e = refused(&combine(
        &[&shares[0], &shares[1], &shares[2]],
        Some("vigil-data/ca.pem"),
    ));
    assert!(e.contains("is not the key of"), "{e}");
    assert!(!out.exists());
    // The CA key rebuilt from its shares matches the CA certificate.
    let ca: Vec<PathBuf> = [1, 4, 5]
        .iter()
        .map(|i| root.join(format!("ca-shares/share-{i}-of-5.txt")))
        .collect();
    let refs: Vec<&Path> = ca.iter().map(PathBuf::as_path).collect();
    ok(&combine(&refs, Some("vigil-data/ca.pem")));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(data.join("ca.key")).unwrap()
    );
}
