//! The pure core does no IO (docs/ARCHITECTURE.md, "Layers"): `ocsp/` and `crl/` take bytes,
//! records and a time and return the bytes to sign and the assembled DER. This test fails the
//! build's test run when a file there names a signer, a runtime, Redis or PKCS#11 — tests
//! inside those files included, since a `#[cfg(test)]` import is still an import.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};

/// Each core directory with the paths it may not name.
const RULES: &[(&str, &[&str])] = &[
    ("src/ocsp", FORBIDDEN_IN_CORE),
    ("src/crl", FORBIDDEN_IN_CORE),
];

/// Paths that mean IO or a key: the signer (and its service), the async runtime, Redis,
/// PKCS#11, the clock, the config file.
const FORBIDDEN_IN_CORE: &[&str] = &[
    "crate::signer",
    "vigil::signer",
    "tokio",
    "redis",
    "cryptoki",
    "crate::clock",
    "crate::config",
    "std::fs",
    "std::net",
    "SystemTime",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Code without its comments: a doc comment may name the signer that signs the core's bytes.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let code = line.split("//").next().unwrap_or("");
        (!code.trim().is_empty()).then_some((i + 1, code))
    })
}

#[test]
fn the_pure_core_imports_no_signer_runtime_redis_or_pkcs11() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut broken = Vec::new();
    let mut checked = 0;
    for (dir, forbidden) in RULES {
        let mut files = Vec::new();
        rust_files(&root.join(dir), &mut files);
        assert!(
            !files.is_empty(),
            "{dir} has no Rust files: the rule checks nothing"
        );
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read");
            checked += 1;
            for (n, code) in code_lines(&text) {
                for word in *forbidden {
                    if code.contains(word) {
                        broken.push(format!(
                            "{}:{n}: names {word}",
                            file.strip_prefix(root).unwrap_or(&file).display()
                        ));
                    }
                }
            }
        }
    }
    assert!(checked >= 10, "only {checked} files checked");
    assert!(
        broken.is_empty(),
        "the pure core reaches out:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_rule_catches_an_import() {
    let sample = "use crate::signer::Signer; // a comment naming tokio\n/// docs: tokio\n";
    let hits: Vec<&str> = code_lines(sample)
        .filter(|(_, c)| FORBIDDEN_IN_CORE.iter().any(|w| c.contains(w)))
        .map(|(_, c)| c)
        .collect();
    assert_eq!(hits, ["use crate::signer::Signer; "]);
}
