//! OCSP (RFC 6960, profiled by RFC 5019 / RFC 9919): request decoding, issuer matching and
//! response building. Pure: no IO, no clock; time and the signer come in as arguments.

pub mod issuer;
pub mod request;
pub mod response;

use const_oid::ObjectIdentifier;

pub use issuer::{IssuerHashes, IssuerMatcher};
pub use request::{DecodedRequest, RequestLimits, RequestedCert, decode_request};

/// id-pkix-ocsp-nonce (RFC 6960 §4.4.1).
pub const OID_NONCE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2");
/// id-pkix-ocsp-response, acceptable response types (RFC 6960 §4.4.3).
pub const OID_ACCEPTABLE_RESPONSES: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.4");
/// id-pkix-ocsp-nocheck (RFC 6960 §4.2.2.2.1).
pub const OID_NOCHECK: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.5");
/// id-pkix-ocsp-service-locator (RFC 6960 §4.4.6).
pub const OID_SERVICE_LOCATOR: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.7");
/// id-pkix-ocsp-pref-sig-algs (RFC 6960 §4.4.7).
pub const OID_PREFERRED_SIG_ALGS: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.8");
/// id-pkix-ocsp-extended-revoke (RFC 6960 §4.4.8).
pub const OID_EXTENDED_REVOKE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.9");
/// id-pkix-ocsp-basic (RFC 6960 §4.2.1).
pub const OID_BASIC_RESPONSE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
/// id-kp-OCSPSigning (RFC 5280 §4.2.1.12).
pub const OID_KP_OCSP_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.9");

/// The hash algorithms a CertID may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgorithm {
    /// SHA-1, still what most clients send (RFC 5019 §2.1.1).
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlgorithm {
    /// Every supported algorithm.
    pub const ALL: [HashAlgorithm; 4] = [Self::Sha1, Self::Sha256, Self::Sha384, Self::Sha512];

    /// The algorithm's OID.
    pub fn oid(self) -> ObjectIdentifier {
        use const_oid::db::rfc5912;
        match self {
            Self::Sha1 => rfc5912::ID_SHA_1,
            Self::Sha256 => rfc5912::ID_SHA_256,
            Self::Sha384 => rfc5912::ID_SHA_384,
            Self::Sha512 => rfc5912::ID_SHA_512,
        }
    }

    /// The algorithm for an OID, if supported.
    pub fn from_oid(oid: &ObjectIdentifier) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.oid() == *oid)
    }

    /// Digest length in octets.
    pub fn output_len(self) -> usize {
        self.ring().output_len()
    }

    /// Hashes `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        ring::digest::digest(self.ring(), data).as_ref().to_vec()
    }

    fn ring(self) -> &'static ring::digest::Algorithm {
        match self {
            Self::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => &ring::digest::SHA256,
            Self::Sha384 => &ring::digest::SHA384,
            Self::Sha512 => &ring::digest::SHA512,
        }
    }
}

/// OCSPResponseStatus (RFC 6960 §4.2.1). `sigRequired` (5) exists in the RFC but vigil never
/// sends it: request signatures are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ResponseStatus {
    /// successful (0).
    Successful = 0,
    /// malformedRequest (1).
    MalformedRequest = 1,
    /// internalError (2).
    InternalError = 2,
    /// tryLater (3).
    TryLater = 3,
    /// unauthorized (6).
    Unauthorized = 6,
}

impl ResponseStatus {
    /// The unsigned OCSPResponse carrying only this status (no responseBytes), as DER.
    pub fn error_response(self) -> &'static [u8] {
        match self {
            Self::Successful => &[0x30, 0x03, 0x0A, 0x01, 0x00],
            Self::MalformedRequest => &[0x30, 0x03, 0x0A, 0x01, 0x01],
            Self::InternalError => &[0x30, 0x03, 0x0A, 0x01, 0x02],
            Self::TryLater => &[0x30, 0x03, 0x0A, 0x01, 0x03],
            Self::Unauthorized => &[0x30, 0x03, 0x0A, 0x01, 0x06],
        }
    }

    /// Label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Successful => "successful",
            Self::MalformedRequest => "malformed",
            Self::InternalError => "internal_error",
            Self::TryLater => "try_later",
            Self::Unauthorized => "unauthorized",
        }
    }
}

/// Everything that stops a request from getting a signed answer. The only place that decides
/// what goes on the wire for an error is [`OcspError::status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OcspError {
    /// The request is not a well-formed DER OCSPRequest within the limits.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The responder may not answer for this CertID (unknown issuer, unsupported hash, policy).
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// Cannot answer now (no signer, signing queue full); the client should retry.
    #[error("try later: {0}")]
    TryLater(String),
    /// A bug or an unexpected failure.
    #[error("internal error: {0}")]
    Internal(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Decode;

    #[test]
    fn error_responses_decode_without_response_bytes() {
        for s in [
            ResponseStatus::MalformedRequest,
            ResponseStatus::InternalError,
            ResponseStatus::TryLater,
            ResponseStatus::Unauthorized,
        ] {
            let r = x509_ocsp::OcspResponse::from_der(s.error_response()).expect("decode");
            assert_eq!(r.response_status as u8, s as u8);
            assert!(r.response_bytes.is_none());
        }
    }
}
