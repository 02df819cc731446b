//! Signing: the [`Signer`] trait that every key source implements, the software signer, and
//! the PKCS#11 key ([`pkcs11`]) with its pool of HSMs ([`pool`]).
//!
//! The OCSP and CRL builders see no key at all: they return the bytes to sign. A key of any
//! source signs through [`service`], the one signing service of the answer path and the CRL
//! publisher (bounded threads per signer, one deadline/abandon/ask-again mechanism), or, where
//! nothing competes for it (CLI, tests, benches), on the caller's thread through [`direct`].
//! `sign` is synchronous and may block (an HSM round trip).

pub mod direct;
pub mod pkcs11;
pub mod pool;
pub mod service;
pub mod software;

pub use crate::alg::{SignatureAlgorithm, verify};
pub use pool::SignerPool;
pub use software::SoftwareSigner;

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
