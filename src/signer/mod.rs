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
