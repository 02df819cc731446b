//! Sharding: which CRL of an issuer lists a certificate.
//!
//! A sharded CRL is a CRL with a narrowed scope, named by a critical issuing distribution point
//! (RFC 5280 §5.2.5):
//!
//! ```text
//! IssuingDistributionPoint ::= SEQUENCE {
//!      distributionPoint          [0] DistributionPointName OPTIONAL,
//!      onlyContainsUserCerts      [1] BOOLEAN DEFAULT FALSE,
//!      onlyContainsCACerts        [2] BOOLEAN DEFAULT FALSE,
//!      onlySomeReasons            [3] ReasonFlags OPTIONAL,
//!      indirectCRL                [4] BOOLEAN DEFAULT FALSE,
//!      onlyContainsAttributeCerts [5] BOOLEAN DEFAULT FALSE }
//! ```
//!
//! The CA picks a shard for each certificate and puts its URL (`{base_url}/crl/{issuer}/{k}.crl`,
//! as `vigil crl urls` lists them; `{base_url}/crl/{issuer}.crl` when unsharded) in the
//! certificate's cRLDistributionPoints. When the issuance is recorded with the certificate,
//! [`named_scope`] reads which one it names, and that is recorded ([`CrlScope`]): the
//! certificate is listed on that shard once revoked, whatever the shard count later is. The
//! IDP of shard `k` is that same URL, byte for byte (BR §7.2.2.1).
//!
//! Only a certificate whose CRLDP vigil never saw (recorded by serial, or without a CRLDP)
//! goes by a fixed, documented function of the certificate:
//!
//! - `serial`: CRC-32 (IEEE 802.3, as zlib computes it) of the serial's DER INTEGER content
//!   octets, modulo the shard count.
//! - `not_after`: `floor(notAfter / width) mod shards` with notAfter in Unix seconds, so
//!   certificates expiring together share a shard and old shards shrink as they expire
//!   (Boulder's temporal sharding). A certificate whose notAfter vigil does not know (only its
//!   revocation was recorded) goes to shard 0.

use x509_cert::Certificate;
use x509_cert::ext::pkix::CrlDistributionPoints;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};

use crate::status::{CrlScope, Serial};

/// The most shards per issuer.
pub const MAX_SHARDS: u16 = 256;

/// What the shard is a function of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardBy {
    /// The serial number.
    Serial,
    /// notAfter, in windows of `width` seconds.
    NotAfter {
        /// Window width, seconds (at least 1).
        width: i64,
    },
}

/// How an issuer's CRL is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sharding {
    /// Number of shards; 0 or 1 means one unsharded CRL.
    pub shards: u16,
    /// The shard function.
    pub by: ShardBy,
}

impl Sharding {
    /// One CRL for the whole issuer.
    pub fn unsharded() -> Self {
        Sharding {
            shards: 1,
            by: ShardBy::Serial,
        }
    }

    /// True when there is more than one shard.
    pub fn is_sharded(&self) -> bool {
        self.shards > 1
    }

    /// The shard index of a certificate (0 when unsharded).
    pub fn shard_of(&self, serial: &Serial, not_after: Option<i64>) -> u16 {
        if !self.is_sharded() {
            return 0;
        }
        let n = i64::from(self.shards);
        let k = match self.by {
            ShardBy::Serial => i64::from(crc32fast::hash(serial.as_der_content())) % n,
            ShardBy::NotAfter { width } => match not_after {
                Some(t) => t.div_euclid(width.max(1)).rem_euclid(n),
                None => 0,
            },
        };
        k as u16
    }

    /// The scopes: `[None]` when unsharded, else `Some(0) .. Some(shards - 1)`.
    pub fn scopes(&self) -> Vec<Option<u16>> {
        if self.is_sharded() {
            (0..self.shards).map(Some).collect()
        } else {
            vec![None]
        }
    }
}

/// URIs (and issuer URLs) an error message shows at most.
const SHOWN_URIS: usize = 4;

/// Why a certificate's cRLDistributionPoints names no CRL of its issuer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// The extension does not decode.
    #[error("its cRLDistributionPoints extension does not decode: {0}")]
    Malformed(String),
    /// No URI of the extension is a CRL URL of the issuer.
    #[error(
        "its cRLDistributionPoints names no CRL of issuer {issuer:?} ({named}); the issuer's CRLs \
         are {expected} (`vigil crl urls --issuer {issuer}`)"
    )]
    Foreign {
        /// The issuer's configured name.
        issuer: String,
        /// The URIs the certificate names, quoted and joined (or a note that it names none).
        named: String,
        /// The issuer's CRL URLs, joined.
        expected: String,
    },
    /// URIs of two different CRLs of the issuer.
    #[error("its cRLDistributionPoints names two CRLs of issuer {issuer:?}: {first} and {second}")]
    Ambiguous {
        /// The issuer's configured name.
        issuer: String,
        /// One scope named.
        first: CrlScope,
        /// Another.
        second: CrlScope,
    },
}

/// Which CRL of `issuer` (sharded as `sharding`, its CRLs under `base_url`) the certificate's
/// cRLDistributionPoints names: `Ok(None)` when the certificate has no such extension, the
/// scope when a fullName URI of a distribution point without cRLIssuer is byte for byte one of
/// the issuer's CRL URLs ([`crate::crl::CrlId::url`], the URL each CRL's IDP carries). Other
/// URIs beside it (a mirror, LDAP) are allowed; none of the issuer's, or two different ones,
/// is an error.
pub fn named_scope(
    cert: &Certificate,
    issuer: &str,
    sharding: &Sharding,
    base_url: &str,
) -> Result<Option<CrlScope>, ScopeError> {
    let Some(ext) = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_CRL_DISTRIBUTION_POINTS)
    else {
        return Ok(None);
    };
    use der::Decode;
    let dps = CrlDistributionPoints::from_der(ext.extn_value.as_bytes())
        .map_err(|e| ScopeError::Malformed(e.to_string()))?;
    let urls: Vec<(String, CrlScope)> = crate::crl::CrlId::all(issuer, sharding, false)
        .into_iter()
        .map(|id| {
            let scope = id.shard.map_or(CrlScope::Unsharded, CrlScope::Shard);
            (id.url(base_url), scope)
        })
        .collect();
    let mut named = Vec::new();
    let mut found: Option<CrlScope> = None;
    for dp in dps.0.iter().filter(|dp| dp.crl_issuer.is_none()) {
        let Some(DistributionPointName::FullName(names)) = &dp.distribution_point else {
            continue;
        };
        for name in names {
            let GeneralName::UniformResourceIdentifier(uri) = name else {
                continue;
            };
            let uri = uri.as_str();
            if named.len() < SHOWN_URIS {
                named.push(format!("{:?}", uri.chars().take(200).collect::<String>()));
            }
            let Some((_, scope)) = urls.iter().find(|(u, _)| u.as_bytes() == uri.as_bytes()) else {
                continue;
            };
            match found {
                Some(first) if first != *scope => {
                    return Err(ScopeError::Ambiguous {
                        issuer: issuer.to_owned(),
                        first,
                        second: *scope,
                    });
                }
                _ => found = Some(*scope),
            }
        }
    }
    match found {
        Some(s) => Ok(Some(s)),
        None => Err(ScopeError::Foreign {
            issuer: issuer.to_owned(),
            named: if named.is_empty() {
                "no URI".into()
            } else {
                named.join(", ")
            },
            expected: match urls.as_slice() {
                [first, .., last] if urls.len() > SHOWN_URIS => {
                    format!("{} .. {} ({} shards)", first.0, last.0, urls.len())
                }
                all => all
                    .iter()
                    .map(|(u, _)| u.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crl::testutil::serial;

    #[test]
    fn serial_shards_are_stable_and_spread() {
        let s = Sharding {
            shards: 4,
            by: ShardBy::Serial,
        };
        // the documented function: CRC-32 of the content octets
        assert_eq!(
            s.shard_of(&serial(0x1234), None),
            (crc32fast::hash(&[0x12, 0x34]) % 4) as u16
        );
        let mut counts = [0usize; 4];
        for n in 1..4000u64 {
            counts[s.shard_of(&serial(n), None) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    fn cert_with_crldp(uris: &[&[&str]]) -> Certificate {
        use der::Decode;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut p = rcgen::CertificateParams::new(vec!["leaf.test".into()]).expect("params");
        p.crl_distribution_points = uris
            .iter()
            .map(|dp| rcgen::CrlDistributionPoint {
                uris: dp.iter().map(|u| u.to_string()).collect(),
            })
            .collect();
        let c = p.self_signed(&key).expect("sign");
        Certificate::from_der(c.der()).expect("parse")
    }

    #[test]
    fn the_crldp_names_the_shard() {
        let four = Sharding {
            shards: 4,
            by: ShardBy::Serial,
        };
        let base = "http://crl.test";
        let scope =
            |uris: &[&[&str]], s: &Sharding| named_scope(&cert_with_crldp(uris), "ca", s, base);
        assert_eq!(
            scope(&[&["http://crl.test/crl/ca/2.crl"]], &four),
            Ok(Some(CrlScope::Shard(2)))
        );
        // a mirror beside it is fine; a second distribution point of the same shard too
        assert_eq!(
            scope(
                &[
                    &["http://crl.test/crl/ca/3.crl", "ldap://x/cn=ca"],
                    &["http://crl.test/crl/ca/3.crl"]
                ],
                &four
            ),
            Ok(Some(CrlScope::Shard(3)))
        );
        assert_eq!(
            scope(&[&["http://crl.test/crl/ca.crl"]], &Sharding::unsharded()),
            Ok(Some(CrlScope::Unsharded))
        );
        assert_eq!(scope(&[], &four), Ok(None));
        // byte for byte: another host, scheme, a shard past the count, a trailing slash
        for foreign in [
            "http://other.test/crl/ca/1.crl",
            "https://crl.test/crl/ca/1.crl",
            "http://crl.test/crl/ca/4.crl",
            "http://crl.test/crl/ca/1.crl/",
            "http://crl.test/crl/ca.crl",
            "http://crl.test/crl/ca/01.crl",
        ] {
            let e = scope(&[&[foreign]], &four).expect_err(foreign);
            assert!(matches!(e, ScopeError::Foreign { .. }), "{foreign}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(foreign), "{msg}");
            assert!(msg.contains("http://crl.test/crl/ca/0.crl"), "{msg}");
        }
        assert!(matches!(
            scope(
                &[&[
                    "http://crl.test/crl/ca/1.crl",
                    "http://crl.test/crl/ca/2.crl"
                ]],
                &four
            ),
            Err(ScopeError::Ambiguous { .. })
        ));
        // the URL it names is the IDP URI the shard's CRL carries
        let id = crate::crl::CrlId {
            issuer: "ca".into(),
            shard: Some(2),
            delta: false,
        };
        assert_eq!(id.url(base), "http://crl.test/crl/ca/2.crl");
    }

    #[test]
    fn not_after_shards() {
        let s = Sharding {
            shards: 3,
            by: ShardBy::NotAfter { width: 86_400 },
        };
        assert_eq!(s.shard_of(&serial(1), Some(0)), 0);
        assert_eq!(s.shard_of(&serial(1), Some(86_400)), 1);
        assert_eq!(s.shard_of(&serial(9), Some(86_400 * 3 + 5)), 0);
        assert_eq!(s.shard_of(&serial(9), None), 0);
        assert_eq!(Sharding::unsharded().shard_of(&serial(9), Some(1)), 0);
        assert_eq!(Sharding::unsharded().scopes(), vec![None]);
        assert_eq!(s.scopes(), vec![Some(0), Some(1), Some(2)]);
    }
}
