//! A signer over a private key held in process memory (PEM, PKCS#8 or PKCS#1), on *ring*,
//! one of the two crypto providers built into rustls.

use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};

use super::{SignError, SignatureAlgorithm, Signer};

enum Key {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A software key. For development, labs, and deployments that accept a key on disk.
pub struct SoftwareSigner {
    key: Key,
    algorithm: SignatureAlgorithm,
    public_key: Vec<u8>,
    rng: SystemRandom,
    source: String,
}

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("reading key {path}: {source}")]
    Read {
        /// The key file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a key vigil can use.
    #[error("key {path}: {reason}")]
    Unsupported {
        /// The key file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Smallest RSA modulus accepted, in bits (CA/Browser Forum BR §6.1.5).
pub const MIN_RSA_BITS: usize = 2048;

impl SoftwareSigner {
    /// Loads a PEM file holding a `PRIVATE KEY` (PKCS#8: ECDSA P-256, P-384 or RSA) or an
    /// `RSA PRIVATE KEY` (PKCS#1).
    pub fn from_pem_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_pem(&text, &path.display().to_string())
    }

    /// Loads a PEM key; `source` names it in messages.
    pub fn from_pem(pem: &[u8], source: &str) -> Result<Self, KeyError> {
        let unsupported = |reason: String| KeyError::Unsupported {
            path: source.to_owned(),
            reason,
        };
        let (label, der) =
            pem_rfc7468::decode_vec(pem).map_err(|e| unsupported(format!("not PEM: {e}")))?;
        let rng = SystemRandom::new();
        let (key, algorithm) = match label {
            "PRIVATE KEY" => {
                if let Ok(k) =
                    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &der, &rng)
                {
                    (Key::Ecdsa(k), SignatureAlgorithm::EcdsaP256Sha256)
                } else if let Ok(k) =
                    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, &der, &rng)
                {
                    (Key::Ecdsa(k), SignatureAlgorithm::EcdsaP384Sha384)
                } else {
                    let k = RsaKeyPair::from_pkcs8(&der).map_err(|e| {
                        unsupported(format!(
                            "PKCS#8 key is not ECDSA P-256/P-384 or RSA {MIN_RSA_BITS}+ bits ({e})"
                        ))
                    })?;
                    (Key::Rsa(k), SignatureAlgorithm::RsaPkcs1Sha256)
                }
            }
            "RSA PRIVATE KEY" => {
                let k = RsaKeyPair::from_der(&der)
                    .map_err(|e| unsupported(format!("bad PKCS#1 RSA key ({e})")))?;
                (Key::Rsa(k), SignatureAlgorithm::RsaPkcs1Sha256)
            }
            "EC PRIVATE KEY" => {
                return Err(unsupported(
                    "SEC1 EC keys are not read; convert with `openssl pkcs8 -topk8 -nocrypt`"
                        .into(),
                ));
            }
            other => return Err(unsupported(format!("unexpected PEM label {other:?}"))),
        };
        if let Key::Rsa(k) = &key {
            let bits = k.public().modulus_len() * 8;
            if bits < MIN_RSA_BITS {
                return Err(unsupported(format!(
                    "RSA key has {bits} bits, at least {MIN_RSA_BITS} are required"
                )));
            }
        }
        let public_key = match &key {
            Key::Ecdsa(k) => k.public_key().as_ref().to_vec(),
            Key::Rsa(k) => k.public_key().as_ref().to_vec(),
        };
        Ok(SoftwareSigner {
            key,
            algorithm,
            public_key,
            rng,
            source: source.to_owned(),
        })
    }
}

impl Signer for SoftwareSigner {
    fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }

    fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        match &self.key {
            Key::Ecdsa(k) => k
                .sign(&self.rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| SignError::Failed("ECDSA signing failed".into())),
            Key::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &self.rng, message, &mut sig)
                    .map_err(|_| SignError::Failed("RSA signing failed".into()))?;
                Ok(sig)
            }
        }
    }

    fn describe(&self) -> String {
        format!("software key {}", self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_every_algorithm() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
        ] {
            let key = rcgen::KeyPair::generate_for(alg).expect("keygen");
            let signer =
                SoftwareSigner::from_pem(key.serialize_pem().as_bytes(), "test").expect("load");
            let sig = signer.sign(b"tbs").expect("sign");
            assert!(super::super::verify(
                signer.algorithm(),
                signer.public_key(),
                b"tbs",
                &sig
            ));
            assert!(!super::super::verify(
                signer.algorithm(),
                signer.public_key(),
                b"tbx",
                &sig
            ));
        }
    }

    #[test]
    fn refuses_garbage_and_sec1() {
        assert!(SoftwareSigner::from_pem(b"hello", "t").is_err());
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        let err = SoftwareSigner::from_pem(sec1.as_bytes(), "t")
            .err()
            .expect("error");
        assert!(err.to_string().contains("pkcs8"), "{err}");
    }
}
