//! Signature algorithms as plain data: what the pure core (`ocsp/`, `crl/`) writes into
//! `signatureAlgorithm` and what a signature is checked with. No key lives here; the signer
//! ([`crate::signer`]) re-exports these.

use der::Encode;
use spki::AlgorithmIdentifierOwned;

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
