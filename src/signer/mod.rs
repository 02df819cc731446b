//! Signing: the [`Signer`] trait that every key source implements, the software signer, and
//! the PKCS#11 key ([`pkcs11`]) with its pool of HSMs ([`pool`]).
//!
//! The OCSP and CRL builders only see this trait, so a PKCS#11 key plugs in exactly like a key
//! file. `sign` is synchronous and may block (an HSM round trip): callers run it off the async
//! reactor.

pub mod pkcs11;
pub mod pool;
pub mod software;

use der::Encode;
use spki::AlgorithmIdentifierOwned;

pub use pool::SignerPool;
pub use software::SoftwareSigner;

/// The signature algorithms vigil produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    /// ECDSA on P-256 with SHA-256 (ecdsa-with-SHA256, RFC 5758 §3.2).
    EcdsaP256Sha256,
    /// ECDSA on P-384 with SHA-384 (ecdsa-with-SHA384, RFC 5758 §3.2).
    EcdsaP384Sha384,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (sha256WithRSAEncryption, RFC 4055 §5).
    RsaPkcs1Sha256,
}

impl SignatureAlgorithm {
    /// The AlgorithmIdentifier as DER: ECDSA with absent parameters (RFC 5758), RSA with NULL.
    pub fn algorithm_identifier(self) -> AlgorithmIdentifierOwned {
        use const_oid::db::rfc5912;
        match self {
            Self::EcdsaP256Sha256 => AlgorithmIdentifierOwned {
                oid: rfc5912::ECDSA_WITH_SHA_256,
                parameters: None,
            },
            Self::EcdsaP384Sha384 => AlgorithmIdentifierOwned {
                oid: rfc5912::ECDSA_WITH_SHA_384,
                parameters: None,
            },
            Self::RsaPkcs1Sha256 => AlgorithmIdentifierOwned {
                oid: rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
                parameters: Some(der::asn1::Null.into()),
            },
        }
    }

    /// A name for people: `ECDSA P-256 SHA-256`.
    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256Sha256 => "ECDSA P-256 SHA-256",
            Self::EcdsaP384Sha384 => "ECDSA P-384 SHA-384",
            Self::RsaPkcs1Sha256 => "RSA PKCS#1 v1.5 SHA-256",
        }
    }

    /// The AlgorithmIdentifier, DER-encoded.
    pub fn algorithm_identifier_der(self) -> Vec<u8> {
        // Encoding a fixed OID with fixed parameters cannot fail.
        self.algorithm_identifier().to_der().unwrap_or_default()
    }

    /// The verification algorithm for a signature made with this algorithm.
    pub fn verification(self) -> &'static dyn ring::signature::VerificationAlgorithm {
        match self {
            Self::EcdsaP256Sha256 => &ring::signature::ECDSA_P256_SHA256_ASN1,
            Self::EcdsaP384Sha384 => &ring::signature::ECDSA_P384_SHA384_ASN1,
            Self::RsaPkcs1Sha256 => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        }
    }
}

/// Why a signature could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignError {
    /// No key is reachable now (HSM down, pool empty); the caller may answer `tryLater`.
    #[error("no signer available: {0}")]
    Unavailable(String),
    /// The key refused or failed the operation.
    #[error("signing failed: {0}")]
    Failed(String),
}

/// A private key that signs OCSP responses and CRLs.
pub trait Signer: Send + Sync {
    /// The algorithm of every signature this signer makes.
    fn algorithm(&self) -> SignatureAlgorithm;

    /// The public key: the subjectPublicKey BIT STRING contents of the matching certificate.
    fn public_key(&self) -> &[u8];

    /// Signs `message` (the DER to be signed), returning the signature as it goes into the BIT
    /// STRING (DER `ECDSA-Sig-Value` for ECDSA). May block.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError>;

    /// A short description for logs (never a secret).
    fn describe(&self) -> String;

    /// How long a caller should wait for one signature before giving up on that call and
    /// asking again (a signer that can get stuck — an HSM gone silent — fails over on the
    /// second call). `None`: wait as long as it takes.
    fn timeout(&self) -> Option<std::time::Duration> {
        None
    }
}

/// For callers already on a blocking thread (the CRL build): a signature that is not back
/// within the inner signer's [`Signer::timeout`] is left behind on its own thread and asked
/// once more, which an HSM pool sends to another HSM (by then the stuck one is taken out).
/// Signers without a timeout sign on the caller's thread. This is the blocking-side
/// counterpart of what the OCSP answer path does with `spawn_blocking` and a deadline.
pub struct AskAgainOnTimeout(pub std::sync::Arc<dyn Signer>);

impl Signer for AskAgainOnTimeout {
    fn algorithm(&self) -> SignatureAlgorithm {
        self.0.algorithm()
    }

    fn public_key(&self) -> &[u8] {
        self.0.public_key()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let Some(limit) = self.0.timeout() else {
            return self.0.sign(message);
        };
        let message: std::sync::Arc<[u8]> = message.into();
        for _ in 0..2 {
            let (tx, rx) = std::sync::mpsc::channel();
            let (signer, m) = (self.0.clone(), message.clone());
            std::thread::Builder::new()
                .name("vigil-sign".into())
                .spawn(move || {
                    // The receiver is gone when the caller gave up on this call.
                    let _ = tx.send(signer.sign(&m));
                })
                .map_err(|e| SignError::Unavailable(format!("starting a signing thread: {e}")))?;
            match rx.recv_timeout(limit) {
                Ok(r) => return r,
                Err(_) => {
                    tracing::warn!(signer = %self.0.describe(), ?limit, "a signature did not finish in time; asking again");
                }
            }
        }
        Err(SignError::Unavailable(format!(
            "no signature within {limit:?}, twice"
        )))
    }

    fn describe(&self) -> String {
        self.0.describe()
    }

    fn timeout(&self) -> Option<std::time::Duration> {
        // Waiting is handled here: callers wait as long as this takes (at most twice the
        // inner timeout).
        None
    }
}

/// Checks that `signature` over `message` verifies with `public_key` under `algorithm`.
pub fn verify(
    algorithm: SignatureAlgorithm,
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    ring::signature::UnparsedPublicKey::new(algorithm.verification(), public_key)
        .verify(message, signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Its first call hangs (an HSM gone silent); later calls answer at once.
    struct FirstCallHangs {
        calls: AtomicUsize,
        timeout: Option<Duration>,
    }

    impl Signer for FirstCallHangs {
        fn algorithm(&self) -> SignatureAlgorithm {
            SignatureAlgorithm::EcdsaP256Sha256
        }
        fn public_key(&self) -> &[u8] {
            &[]
        }
        fn sign(&self, _message: &[u8]) -> Result<Vec<u8>, SignError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_secs(3));
                return Ok(b"late".to_vec());
            }
            Ok(b"second".to_vec())
        }
        fn describe(&self) -> String {
            "test".into()
        }
        fn timeout(&self) -> Option<Duration> {
            self.timeout
        }
    }

    #[test]
    fn a_stuck_signature_is_asked_again_after_the_timeout() {
        let inner = Arc::new(FirstCallHangs {
            calls: AtomicUsize::new(0),
            timeout: Some(Duration::from_millis(100)),
        });
        let signer = AskAgainOnTimeout(inner.clone());
        let started = Instant::now();
        assert_eq!(signer.sign(b"m").expect("signed"), b"second");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
        assert_eq!(signer.timeout(), None);
    }

    #[test]
    fn without_a_timeout_the_caller_waits_on_its_own_thread() {
        let inner = Arc::new(FirstCallHangs {
            calls: AtomicUsize::new(1),
            timeout: None,
        });
        let signer = AskAgainOnTimeout(inner.clone());
        assert_eq!(signer.sign(b"m").expect("signed"), b"second");
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    }
}
