//! CRLs (RFC 5280 §5): building, sharding, numbering and linting. Pure: no IO, no clock, no
//! key. Times are Unix seconds handed in by the caller; [`tbs`] returns the bytes to sign and
//! the caller's signature is wrapped in by [`CrlTbs::assemble`].
//!
//! ```text
//! CertificateList  ::=  SEQUENCE  {
//!      tbsCertList          TBSCertList,
//!      signatureAlgorithm   AlgorithmIdentifier,
//!      signatureValue       BIT STRING  }
//!
//! TBSCertList  ::=  SEQUENCE  {
//!      version                 Version OPTIONAL,
//!                                   -- if present, MUST be v2
//!      signature               AlgorithmIdentifier,
//!      issuer                  Name,
//!      thisUpdate              Time,
//!      nextUpdate              Time OPTIONAL,
//!      revokedCertificates     SEQUENCE OF SEQUENCE  {
//!           userCertificate         CertificateSerialNumber,
//!           revocationDate          Time,
//!           crlEntryExtensions      Extensions OPTIONAL
//!                                    -- if present, version MUST be v2
//!                                }  OPTIONAL,
//!      crlExtensions           [0]  EXPLICIT Extensions OPTIONAL
//!                                    -- if present, version MUST be v2
//!                                }
//! ```
//!
//! - [`build`] encodes a CRL (§5.1) with AKI (§5.2.1), CRLNumber (§5.2.3), and when
//!   asked the delta CRL indicator (§5.2.4), issuing distribution point (§5.2.5) and freshest
//!   CRL (§5.2.6) extensions; entries carry reasonCode (§5.3.1) unless it is unspecified.
//! - [`shard`] says which CRL a certificate belongs to; [`select`] turns the status view into
//!   entries; [`number`] makes CRL numbers.
//! - [`lint`] parses a CRL back and checks every rule above before it is stored, and before a
//!   replica serves a CRL it fetched.

pub mod build;
pub mod der;
pub mod lint;
pub mod number;
pub mod select;
pub mod shard;

use ::der::{Decode, Encode};
use const_oid::db::rfc5280;
use x509_cert::Certificate;
use x509_cert::ext::pkix::SubjectKeyIdentifier;

use crate::status::{RevocationReason, Serial};

pub use build::{CrlSpec, CrlTbs, tbs};
pub use lint::{CrlInfo, Expect, LintError, lint};
pub use shard::{ShardBy, Sharding};

/// The longest validity (nextUpdate − thisUpdate) of a subscriber CRL: CA/Browser Forum BR
/// §4.9.7 ("no more than ten days").
pub const MAX_VALIDITY_SECS: i64 = 10 * 86_400;

/// Why a CRL could not be built.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CrlError {
    /// The CA certificate cannot issue CRLs as configured.
    #[error("CA certificate: {0}")]
    Issuer(String),
    /// The same serial was given twice.
    #[error("serial {0} is listed twice")]
    DuplicateSerial(Serial),
    /// nextUpdate is not after thisUpdate, or too far after it.
    #[error("validity: {0}")]
    Validity(String),
    /// The built CRL failed its lint.
    #[error("lint: {0}")]
    Lint(#[from] LintError),
}

/// What a CRL's issuer contributes: its name, its key identifier, its public key.
#[derive(Debug, Clone)]
pub struct CrlIssuer {
    /// Configured name (used in paths and labels).
    pub name: String,
    /// The CA certificate's subject, DER: copied byte for byte into `issuer` (§5.1.2.3).
    pub subject_der: Vec<u8>,
    /// keyIdentifier for the AKI: the CA's subjectKeyIdentifier, else the SHA-1 of its
    /// subjectPublicKey (§4.2.1.2, method 1).
    pub key_identifier: Vec<u8>,
    /// The CA's subjectPublicKeyInfo, to verify CRL signatures.
    pub spki: spki::SubjectPublicKeyInfoOwned,
    /// The issuer's policy allows holds: its CRLs may list certificateHold entries (and its
    /// delta CRLs removeFromCRL ones). False from [`CrlIssuer::from_certificate`].
    pub allow_hold: bool,
}

impl CrlIssuer {
    /// Reads what CRLs need from the CA certificate. Refuses a certificate whose keyUsage
    /// lacks cRLSign (§4.2.1.3).
    pub fn from_certificate(name: &str, ca: &Certificate) -> Result<Self, CrlError> {
        use x509_cert::ext::pkix::{KeyUsage, KeyUsages};
        let tbs = &ca.tbs_certificate;
        let subject_der = tbs
            .subject
            .to_der()
            .map_err(|e| CrlError::Issuer(e.to_string()))?;
        let mut key_identifier = None;
        for ext in tbs.extensions.iter().flatten() {
            if ext.extn_id == rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER {
                let ski = SubjectKeyIdentifier::from_der(ext.extn_value.as_bytes())
                    .map_err(|e| CrlError::Issuer(format!("subjectKeyIdentifier: {e}")))?;
                key_identifier = Some(ski.0.as_bytes().to_vec());
            } else if ext.extn_id == rfc5280::ID_CE_KEY_USAGE {
                let ku = KeyUsage::from_der(ext.extn_value.as_bytes())
                    .map_err(|e| CrlError::Issuer(format!("keyUsage: {e}")))?;
                if !ku.0.contains(KeyUsages::CRLSign) {
                    return Err(CrlError::Issuer("keyUsage lacks cRLSign".into()));
                }
            }
        }
        let key = tbs.subject_public_key_info.subject_public_key.raw_bytes();
        let key_identifier = key_identifier.unwrap_or_else(|| {
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, key)
                .as_ref()
                .to_vec()
        });
        Ok(CrlIssuer {
            name: name.to_owned(),
            subject_der,
            key_identifier,
            spki: tbs.subject_public_key_info.clone(),
            allow_hold: false,
        })
    }
}

/// Names one CRL: its issuer, its shard (none for an unsharded CRL), and whether it is the
/// delta CRL of that scope. Its [`path`](CrlId::path) is where it is served under `/crl/`,
/// where it is kept on disk under `<data_dir>/crl/`, and part of its Redis key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CrlId {
    /// The issuer's configured name.
    pub issuer: String,
    /// The shard, for sharded CRLs.
    pub shard: Option<u16>,
    /// The delta CRL of the scope rather than the complete CRL.
    pub delta: bool,
}

impl CrlId {
    /// `demo.crl`, `demo.delta.crl`, `demo/3.crl`, `demo/3.delta.crl`.
    pub fn path(&self) -> String {
        let kind = if self.delta { ".delta.crl" } else { ".crl" };
        match self.shard {
            None => format!("{}{kind}", self.issuer),
            Some(k) => format!("{}/{k}{kind}", self.issuer),
        }
    }

    /// The complete CRL of the same scope.
    pub fn full(&self) -> CrlId {
        CrlId {
            delta: false,
            ..self.clone()
        }
    }

    /// The delta CRL of the same scope.
    pub fn delta(&self) -> CrlId {
        CrlId {
            delta: true,
            ..self.clone()
        }
    }

    /// The scope (issuer and shard), shared by the complete and the delta CRL: they share one
    /// numbering sequence (§5.2.4).
    pub fn scope(&self) -> String {
        match self.shard {
            None => self.issuer.clone(),
            Some(k) => format!("{}/{k}", self.issuer),
        }
    }

    /// The URL this CRL is served at, under `base_url` (no trailing slash needed).
    pub fn url(&self, base_url: &str) -> String {
        format!("{}/crl/{}", base_url.trim_end_matches('/'), self.path())
    }

    /// Every CRL of `issuer` under `sharding`, complete CRLs first.
    pub fn all(issuer: &str, sharding: &Sharding, deltas: bool) -> Vec<CrlId> {
        let mut out = Vec::new();
        for delta in [false, true] {
            if delta && !deltas {
                continue;
            }
            for shard in sharding.scopes() {
                out.push(CrlId {
                    issuer: issuer.to_owned(),
                    shard,
                    delta,
                });
            }
        }
        out
    }
}

/// One revokedCertificates entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// userCertificate.
    pub serial: Serial,
    /// revocationDate, Unix seconds.
    pub time: i64,
    /// reasonCode; omitted from the CRL when unspecified (§5.3.1).
    pub reason: RevocationReason,
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Serials for the CRL tests (the CA and its key are in `crate::testkit`).
    use super::*;

    /// Serial from a number.
    pub fn serial(n: u64) -> Serial {
        Serial::from_magnitude(&n.to_be_bytes()).expect("serial")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let id = CrlId {
            issuer: "demo".into(),
            shard: None,
            delta: false,
        };
        assert_eq!(id.path(), "demo.crl");
        assert_eq!(id.delta().path(), "demo.delta.crl");
        let s = CrlId {
            shard: Some(3),
            ..id.clone()
        };
        assert_eq!(s.path(), "demo/3.crl");
        assert_eq!(s.url("http://x.test/"), "http://x.test/crl/demo/3.crl");
        assert_eq!(s.delta().scope(), "demo/3");
        let all = CrlId::all(
            "demo",
            &Sharding {
                shards: 2,
                by: ShardBy::Serial,
            },
            true,
        );
        let paths: Vec<String> = all.iter().map(CrlId::path).collect();
        assert_eq!(
            paths,
            [
                "demo/0.crl",
                "demo/1.crl",
                "demo/0.delta.crl",
                "demo/1.delta.crl"
            ]
        );
    }

    #[test]
    fn issuer_key_identifier() {
        let (ca, _) = crate::testkit::ca();
        let i = CrlIssuer::from_certificate("t", &ca).expect("issuer");
        assert_eq!(
            i.subject_der,
            ca.tbs_certificate.subject.to_der().expect("der")
        );
        assert!(!i.key_identifier.is_empty());
    }
}
