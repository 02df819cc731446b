//! Split-custody backup of software keys: Shamir's secret sharing over GF(256).
//!
//! `vigil key split` cuts a PEM key file (a responder key or a CA's CRL-signing key) into N
//! shares of which any T rebuild it; `vigil key combine` rebuilds it. The arithmetic is the
//! `blahaj` crate (the maintained fork of `sharks`, which fixed that crate's biased polynomial
//! coefficients, RUSTSEC-2024-0398): byte-wise GF(256), so the secret is the key file exactly as
//! given and the combined file is byte-identical to it.
//!
//! A share file is text a custodian can print and type back in:
//!
//! ```text
//! vigil-key-share 1
//! index: 2
//! threshold: 3
//! shares: 5
//! split: 5c1e0f...            (random, one per `split` run: shares of two runs never mix)
//! key-fingerprint: sha256:... (SHA-256 of the subjectPublicKey bits of the key's public half)
//! share: <base64 of x || y>
//! checksum: sha256:...        (SHA-256 of every line above, with their newlines)
//! ```
//!
//! Refusals are checked before anything is written: a damaged share (checksum), shares of
//! different keys or splits, a repeated index, fewer than the threshold, and after combining a
//! key whose public half does not match the fingerprint (or `--cert`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::rand::SecureRandom;
use zeroize::Zeroizing;

use crate::limits::{MAX_KEY_FILE_BYTES, MAX_KEY_SHARE_FILE_BYTES};
use crate::signer::Signer;
use crate::signer::software::SoftwareSigner;

/// First line of a share file (format name and version).
pub const SHARE_MAGIC: &str = "vigil-key-share 1";

/// Most shares one split makes (GF(256) has 255 non-zero points).
pub const MAX_SHARES: u8 = 255;

/// Why a split or a combine was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyShareError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The key is not one vigil can use.
    #[error(transparent)]
    Key(#[from] crate::signer::software::KeyError),
    /// The certificate to check the combined key against did not load.
    #[error(transparent)]
    Certificate(#[from] crate::pki::PkiError),
    /// A share file is malformed or its checksum does not match.
    #[error("share {path}: {reason}")]
    BadShare {
        /// The share file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The shares do not belong together, or are too few.
    #[error("{0}")]
    Refused(String),
}

/// One parsed share file.
#[derive(Clone)]
pub struct ShareFile {
    /// The x coordinate (1..=255).
    pub index: u8,
    /// Shares needed to rebuild the key.
    pub threshold: u8,
    /// Shares the split made.
    pub shares: u8,
    /// Identifies the split run.
    pub split: String,
    /// `sha256:` and the hex SHA-256 of the key's public half.
    pub key_fingerprint: String,
    /// x || y, as blahaj serializes a share.
    bytes: Zeroizing<Vec<u8>>,
}

/// The fingerprint share files carry: SHA-256 over the subjectPublicKey bits (for ECDSA the
/// uncompressed point, for RSA the PKCS#1 RSAPublicKey), as `sha256:HEX`.
pub fn fingerprint(public_key: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex(ring::digest::digest(&ring::digest::SHA256, public_key).as_ref())
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_bounded(path: &Path, max: usize) -> Result<Zeroizing<Vec<u8>>, KeyShareError> {
    let io = |source| KeyShareError::Io {
        path: path.display().to_string(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > max as u64 {
        return Err(KeyShareError::Refused(format!(
            "{}: {len} bytes, more than the {max} a key or share file may hold",
            path.display()
        )));
    }
    Ok(Zeroizing::new(std::fs::read(path).map_err(io)?))
}

/// Loads a key file the way `serve` does, so only keys vigil can sign with are split.
fn load_key(pem: &[u8], source: &str) -> Result<SoftwareSigner, KeyShareError> {
    Ok(SoftwareSigner::from_pem(pem, source)?)
}

/// Writes `data` to a new file `path` (mode 0600), refusing to replace an existing one.
fn write_new(path: &Path, data: &[u8]) -> Result<(), KeyShareError> {
    let io = |source| KeyShareError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(io)
}

/// Splits the key at `key` into `shares` share files in `out` (created if missing), any
/// `threshold` of which rebuild it. Returns the files written.
pub fn split(
    key: &Path,
    shares: u8,
    threshold: u8,
    out: &Path,
) -> Result<Vec<PathBuf>, KeyShareError> {
    if threshold < 2 || threshold > shares {
        return Err(KeyShareError::Refused(format!(
            "threshold {threshold} with {shares} shares: need 2 <= threshold <= shares"
        )));
    }
    let pem = read_bounded(key, MAX_KEY_FILE_BYTES)?;
    let signer = load_key(&pem, &key.display().to_string())?;
    let key_fingerprint = fingerprint(signer.public_key());
    let mut split_id = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut split_id)
        .map_err(|_| KeyShareError::Refused("the system random source failed".into()))?;
    let split_id = hex(&split_id);
    std::fs::create_dir_all(out).map_err(|source| KeyShareError::Io {
        path: out.display().to_string(),
        source,
    })?;
    let paths: Vec<PathBuf> = (1..=shares)
        .map(|i| out.join(format!("share-{i}-of-{shares}.txt")))
        .collect();
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        return Err(KeyShareError::Refused(format!(
            "{} exists; refusing to overwrite a share",
            p.display()
        )));
    }
    let dealer = blahaj::Sharks(threshold);
    for (share, path) in dealer.dealer(&pem).take(shares as usize).zip(&paths) {
        let bytes = Zeroizing::new(Vec::from(&share));
        let index = bytes.first().copied().unwrap_or_default();
        let body = Zeroizing::new(format!(
            "{SHARE_MAGIC}\nindex: {index}\nthreshold: {threshold}\nshares: {shares}\n\
             split: {split_id}\nkey-fingerprint: {key_fingerprint}\nshare: {}\n",
            base64::engine::general_purpose::STANDARD.encode(bytes.as_slice())
        ));
        let sum = fingerprint(body.as_bytes());
        let text = Zeroizing::new(format!("{}checksum: {sum}\n", body.as_str()));
        write_new(path, text.as_bytes())?;
    }
    Ok(paths)
}

/// Parses and checks one share file's text.
pub fn parse_share(text: &[u8], path: &str) -> Result<ShareFile, KeyShareError> {
    let bad = |reason: &str| KeyShareError::BadShare {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let text = std::str::from_utf8(text).map_err(|_| bad("not text"))?;
    let Some(sum_at) = text.rfind("checksum: ") else {
        return Err(bad("no checksum line (damaged or not a share file)"));
    };
    let (body, sum_line) = text.split_at(sum_at);
    let claimed = sum_line.trim_start_matches("checksum: ").trim();
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        claimed.as_bytes(),
        fingerprint(body.as_bytes()).as_bytes(),
    )) {
        return Err(bad("checksum mismatch: the share is damaged"));
    }
    let mut lines = body.lines();
    if lines.next() != Some(SHARE_MAGIC) {
        return Err(bad("not a vigil key share (or an unknown version)"));
    }
    let mut fields = BTreeMap::new();
    for line in lines {
        let (k, v) = line.split_once(": ").ok_or_else(|| bad("malformed line"))?;
        fields.insert(k, v);
    }
    let field = |k: &str| {
        fields
            .get(k)
            .copied()
            .ok_or_else(|| bad(&format!("no {k}")))
    };
    let number = |k: &str| -> Result<u8, KeyShareError> {
        field(k)?
            .parse::<u8>()
            .map_err(|_| bad(&format!("bad {k}")))
    };
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(field("share")?)
            .map_err(|_| bad("share is not base64"))?,
    );
    let index = number("index")?;
    if index == 0 || bytes.first() != Some(&index) || bytes.len() < 2 {
        return Err(bad("share value does not match its index"));
    }
    Ok(ShareFile {
        index,
        threshold: number("threshold")?,
        shares: number("shares")?,
        split: field("split")?.to_owned(),
        key_fingerprint: field("key-fingerprint")?.to_owned(),
        bytes,
    })
}

/// Rebuilds the key from `shares` (files) and writes it to `out` (mode 0600, never replacing a
/// file). With `cert`, the key must be the one that certificate certifies. Returns the
/// fingerprint of the key's public half.
pub fn combine(
    shares: &[PathBuf],
    out: &Path,
    cert: Option<&Path>,
) -> Result<String, KeyShareError> {
    if out.exists() {
        return Err(KeyShareError::Refused(format!(
            "{} exists; refusing to overwrite a key",
            out.display()
        )));
    }
    let mut parsed: Vec<ShareFile> = Vec::new();
    for p in shares {
        let text = read_bounded(p, MAX_KEY_SHARE_FILE_BYTES)?;
        parsed.push(parse_share(&text, &p.display().to_string())?);
    }
    let Some(first) = parsed.first().cloned() else {
        return Err(KeyShareError::Refused("no shares given".into()));
    };
    for (s, p) in parsed.iter().zip(shares) {
        if s.key_fingerprint != first.key_fingerprint {
            return Err(KeyShareError::Refused(format!(
                "{} is a share of another key ({}, not {})",
                p.display(),
                s.key_fingerprint,
                first.key_fingerprint
            )));
        }
        if s.split != first.split || s.threshold != first.threshold || s.shares != first.shares {
            return Err(KeyShareError::Refused(format!(
                "{} comes from another split of this key (split {}, {} of {}; not split {}, {} of {})",
                p.display(),
                s.split,
                s.threshold,
                s.shares,
                first.split,
                first.threshold,
                first.shares
            )));
        }
    }
    let mut indexes: Vec<u8> = parsed.iter().map(|s| s.index).collect();
    indexes.sort_unstable();
    if indexes.windows(2).any(|w| w[0] == w[1]) {
        return Err(KeyShareError::Refused(
            "the same share was given twice (repeated index)".into(),
        ));
    }
    if parsed.len() < first.threshold as usize {
        return Err(KeyShareError::Refused(format!(
            "{} share(s) given; this key needs {} of its {} shares",
            parsed.len(),
            first.threshold,
            first.shares
        )));
    }
    let mut values = Vec::new();
    for s in &parsed {
        values.push(
            blahaj::Share::try_from(s.bytes.as_slice())
                .map_err(|e| KeyShareError::Refused(e.to_owned()))?,
        );
    }
    let pem = Zeroizing::new(
        blahaj::Sharks(first.threshold)
            .recover(values.iter())
            .map_err(|e| KeyShareError::Refused(e.to_owned()))?,
    );
    let signer = load_key(&pem, "the combined key").map_err(|_| {
        KeyShareError::Refused(
            "the combined shares are not a key: a share was altered (checksums can be recomputed)"
                .into(),
        )
    })?;
    let got = fingerprint(signer.public_key());
    if got != first.key_fingerprint {
        return Err(KeyShareError::Refused(format!(
            "the combined key's public half is {got}, the shares name {}: a share was altered",
            first.key_fingerprint
        )));
    }
    if let Some(cert) = cert {
        let c = crate::pki::read_certificate(cert)?;
        let cert_key = c
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes();
        if cert_key != signer.public_key() {
            return Err(KeyShareError::Refused(format!(
                "the combined key ({got}) is not the key of {} ({})",
                cert.display(),
                fingerprint(cert_key)
            )));
        }
    }
    // Written last: every refusal above leaves no file behind. A temp name in the same
    // directory, then a rename, so a crash never leaves half a key under the final name.
    let tmp = out.with_extension("combine-tmp");
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, &pem)?;
    std::fs::rename(&tmp, out).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        KeyShareError::Io {
            path: out.display().to_string(),
            source,
        }
    })?;
    Ok(got)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn key_file(dir: &Path, name: &str) -> PathBuf {
        let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, k.serialize_pem()).unwrap();
        p
    }

    #[test]
    fn any_threshold_subset_rebuilds_the_file_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(dir.path(), "k.pem");
        let files = split(&key, 4, 2, &dir.path().join("s")).unwrap();
        for (n, pair) in [[0, 1], [0, 3], [2, 3], [1, 2]].iter().enumerate() {
            let out = dir.path().join(format!("out{n}.pem"));
            let picked: Vec<PathBuf> = pair.iter().map(|&i| files[i].clone()).collect();
            combine(&picked, &out, None).unwrap();
            assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&key).unwrap());
        }
    }

    #[test]
    fn refusals_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = split(&key_file(dir.path(), "a.pem"), 3, 2, &dir.path().join("a")).unwrap();
        let b = split(&key_file(dir.path(), "b.pem"), 3, 2, &dir.path().join("b")).unwrap();
        let out = dir.path().join("out.pem");
        let e = combine(&a[..1], &out, None).unwrap_err().to_string();
        assert!(e.contains("needs 2"), "{e}");
        let e = combine(&[a[0].clone(), b[1].clone()], &out, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("another key"), "{e}");
        let e = combine(&[a[0].clone(), a[0].clone()], &out, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
        assert!(!out.exists());
        assert!(split(&a[0], 3, 2, &dir.path().join("c")).is_err());
        assert!(split(&dir.path().join("a.pem"), 3, 4, &dir.path().join("c")).is_err());
    }

    #[test]
    fn parser_refuses_garbage_without_panicking() {
        for text in [
            &b""[..],
            b"checksum: ",
            b"\xff\xfe",
            b"vigil-key-share 1\nindex: 0\nchecksum: sha256:00\n",
        ] {
            assert!(parse_share(text, "t").is_err());
        }
    }
}
