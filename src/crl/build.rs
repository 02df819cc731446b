//! Encoding one CRL (RFC 5280 §5.1): [`tbs`] returns the TBSCertList to sign, and
//! [`CrlTbs::assemble`] wraps it with the signature, made wherever the key is
//! (`crate::signer::service`). Only the signature algorithm, as plain data, is needed here.
//!
//! The revoked entries are written straight into the output buffer (a million entries are a
//! single pass with no allocation per entry); the few extensions are encoded by hand too, each
//! quoted below with its section.

use super::der::{self as d, tag};
use super::{CrlError, CrlIssuer, Entry, MAX_VALIDITY_SECS};
use crate::alg::SignatureAlgorithm;
use crate::status::RevocationReason;

/// What varies between two CRLs of one issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrlSpec<'a> {
    /// CRLNumber (§5.2.3).
    pub number: u64,
    /// thisUpdate, Unix seconds (§5.1.2.4).
    pub this_update: i64,
    /// nextUpdate, Unix seconds (§5.1.2.5); at most [`MAX_VALIDITY_SECS`] after thisUpdate.
    pub next_update: i64,
    /// The issuing distribution point's URI (§5.2.5), for a sharded CRL and its delta: the
    /// URL the complete CRL of the shard is served at.
    pub idp_uri: Option<&'a str>,
    /// BaseCRLNumber: makes this a delta CRL against that complete CRL (§5.2.4).
    pub delta_base: Option<u64>,
    /// Where the delta CRL of this scope is served (freshest CRL, §5.2.6); complete CRLs only.
    pub freshest_uri: Option<&'a str>,
}

/// id-ce-authorityKeyIdentifier, 2.5.29.35.
const OID_AKI: &[u8] = &[0x55, 0x1D, 0x23];
/// id-ce-cRLNumber, 2.5.29.20.
const OID_CRL_NUMBER: &[u8] = &[0x55, 0x1D, 0x14];
/// id-ce-deltaCRLIndicator, 2.5.29.27.
const OID_DELTA_CRL_INDICATOR: &[u8] = &[0x55, 0x1D, 0x1B];
/// id-ce-issuingDistributionPoint, 2.5.29.28.
const OID_IDP: &[u8] = &[0x55, 0x1D, 0x1C];
/// id-ce-freshestCRL, 2.5.29.46.
const OID_FRESHEST_CRL: &[u8] = &[0x55, 0x1D, 0x2E];

/// A reasonCode entry extension for `reason`, as the whole `crlEntryExtensions` TLV:
///
/// ```text
/// Extensions ::= SEQUENCE SIZE (1..MAX) OF Extension
/// Extension { extnID id-ce-cRLReasons (2.5.29.21), extnValue OCTET STRING { ENUMERATED } }
/// ```
fn reason_extensions(reason: RevocationReason) -> [u8; 14] {
    [
        0x30,
        0x0C,
        0x30,
        0x0A,
        0x06,
        0x03,
        0x55,
        0x1D,
        0x15,
        0x04,
        0x03,
        0x0A,
        0x01,
        reason as u8,
    ]
}

/// Octets of one revokedCertificates entry's content (it is always under 128, so its header
/// is two octets).
fn entry_content_len(e: &Entry) -> usize {
    let serial = d::tlv_len(e.serial.as_der_content().len());
    let ext = if e.reason == RevocationReason::Unspecified {
        0
    } else {
        14
    };
    serial + d::time_tlv_len(e.time) + ext
}

fn write_entry(out: &mut Vec<u8>, e: &Entry) {
    out.push(tag::SEQUENCE);
    out.push(entry_content_len(e) as u8);
    d::write_tlv(out, tag::INTEGER, e.serial.as_der_content());
    d::write_time(out, e.time);
    if e.reason != RevocationReason::Unspecified {
        out.extend_from_slice(&reason_extensions(e.reason));
    }
}

/// An Extension: `SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }`.
fn write_extension(out: &mut Vec<u8>, oid: &[u8], critical: bool, value: &[u8]) {
    let content = d::tlv_len(oid.len()) + if critical { 3 } else { 0 } + d::tlv_len(value.len());
    d::write_header(out, tag::SEQUENCE, content);
    d::write_tlv(out, tag::OID, oid);
    if critical {
        out.extend_from_slice(&[tag::BOOLEAN, 1, 0xFF]);
    }
    d::write_tlv(out, tag::OCTET_STRING, value);
}

/// `DistributionPointName` holding one URI, as the content of a `[0]` (EXPLICIT, since it is
/// a CHOICE) distributionPoint:
///
/// ```text
/// DistributionPointName ::= CHOICE {
///      fullName                [0]     GeneralNames,
///      nameRelativeToCRLIssuer [1]     RelativeDistinguishedName }
/// GeneralName ::= CHOICE { ... uniformResourceIdentifier [6] IA5String, ... }
/// ```
fn distribution_point_uri(uri: &str) -> Vec<u8> {
    let general_name = d::tlv(0x86, uri.as_bytes());
    let full_name = d::tlv(0xA0, &general_name);
    d::tlv(0xA0, &full_name)
}

/// The crlExtensions, as the `[0] EXPLICIT Extensions` TLV.
fn crl_extensions(issuer: &CrlIssuer, spec: &CrlSpec<'_>) -> Vec<u8> {
    let mut exts = Vec::with_capacity(256);
    // §5.2.1: AuthorityKeyIdentifier ::= SEQUENCE { keyIdentifier [0] KeyIdentifier OPTIONAL, ... }
    let aki = d::tlv(tag::SEQUENCE, &d::tlv(0x80, &issuer.key_identifier));
    write_extension(&mut exts, OID_AKI, false, &aki);
    // §5.2.3: CRLNumber ::= INTEGER (0..MAX), non-critical.
    let number = d::tlv(tag::INTEGER, &d::uint_content(spec.number));
    write_extension(&mut exts, OID_CRL_NUMBER, false, &number);
    // §5.2.4: BaseCRLNumber ::= CRLNumber, critical.
    if let Some(base) = spec.delta_base {
        let base = d::tlv(tag::INTEGER, &d::uint_content(base));
        write_extension(&mut exts, OID_DELTA_CRL_INDICATOR, true, &base);
    }
    // §5.2.5: IssuingDistributionPoint ::= SEQUENCE { distributionPoint [0] ..., ... },
    // critical; only distributionPoint is set, so the scope is every certificate of the shard.
    if let Some(uri) = spec.idp_uri {
        let idp = d::tlv(tag::SEQUENCE, &distribution_point_uri(uri));
        write_extension(&mut exts, OID_IDP, true, &idp);
    }
    // §5.2.6: FreshestCRL ::= CRLDistributionPoints, non-critical;
    // DistributionPoint ::= SEQUENCE { distributionPoint [0] DistributionPointName OPTIONAL, ... }
    if let Some(uri) = spec.freshest_uri {
        let dp = d::tlv(tag::SEQUENCE, &distribution_point_uri(uri));
        write_extension(
            &mut exts,
            OID_FRESHEST_CRL,
            false,
            &d::tlv(tag::SEQUENCE, &dp),
        );
    }
    d::tlv(0xA0, &d::tlv(tag::SEQUENCE, &exts))
}

/// Sorts `entries` by serial (numeric order: for positive minimal DER integers, shorter is
/// smaller) and refuses duplicates.
pub fn sort_entries(entries: &mut [Entry]) -> Result<(), CrlError> {
    entries.sort_unstable_by_key(|e| e.serial);
    match entries.windows(2).find(|w| w[0].serial == w[1].serial) {
        Some(w) => Err(CrlError::DuplicateSerial(w[0].serial)),
        None => Ok(()),
    }
}

/// The DER of the TBSCertList. `entries` must be sorted and unique ([`sort_entries`]).
pub fn tbs_cert_list(
    issuer: &CrlIssuer,
    spec: &CrlSpec<'_>,
    signature_algorithm: &[u8],
    entries: &[Entry],
) -> Result<Vec<u8>, CrlError> {
    if spec.next_update <= spec.this_update {
        return Err(CrlError::Validity(
            "nextUpdate is not after thisUpdate".into(),
        ));
    }
    if spec.next_update - spec.this_update > MAX_VALIDITY_SECS {
        return Err(CrlError::Validity(format!(
            "{}s is longer than 10 days (BR §4.9.7)",
            spec.next_update - spec.this_update
        )));
    }
    let extensions = crl_extensions(issuer, spec);
    let revoked_len: usize = entries.iter().map(|e| 2 + entry_content_len(e)).sum();
    // §5.1.2.6: when there are no revoked certificates, revokedCertificates is absent.
    let revoked_tlv = if entries.is_empty() {
        0
    } else {
        d::tlv_len(revoked_len)
    };
    let content = 3 // version v2: INTEGER 1
        + signature_algorithm.len()
        + issuer.subject_der.len()
        + d::time_tlv_len(spec.this_update)
        + d::time_tlv_len(spec.next_update)
        + revoked_tlv
        + extensions.len();
    let mut out = Vec::with_capacity(d::tlv_len(content));
    d::write_header(&mut out, tag::SEQUENCE, content);
    out.extend_from_slice(&[tag::INTEGER, 1, 1]);
    out.extend_from_slice(signature_algorithm);
    out.extend_from_slice(&issuer.subject_der);
    d::write_time(&mut out, spec.this_update);
    d::write_time(&mut out, spec.next_update);
    if !entries.is_empty() {
        d::write_header(&mut out, tag::SEQUENCE, revoked_len);
        for e in entries {
            write_entry(&mut out, e);
        }
    }
    out.extend_from_slice(&extensions);
    debug_assert_eq!(out.len(), d::tlv_len(content));
    Ok(out)
}

/// A TBSCertList to sign, and what turns its signature into the CertificateList.
#[derive(Debug, Clone)]
pub struct CrlTbs {
    der: bytes::Bytes,
    algorithm: Vec<u8>,
}

impl CrlTbs {
    /// The DER to sign. Cheap to clone: a signing thread gets a reference, not a copy of a
    /// CRL of a million entries.
    pub fn message(&self) -> bytes::Bytes {
        self.der.clone()
    }

    /// The CertificateList: `SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue }`
    /// (§5.1.1), with `signature` as the BIT STRING's contents.
    pub fn assemble(&self, signature: &[u8]) -> Vec<u8> {
        let bits = 1 + signature.len();
        let content = self.der.len() + self.algorithm.len() + d::tlv_len(bits);
        let mut out = Vec::with_capacity(d::tlv_len(content));
        d::write_header(&mut out, tag::SEQUENCE, content);
        out.extend_from_slice(&self.der);
        out.extend_from_slice(&self.algorithm);
        d::write_header(&mut out, tag::BIT_STRING, bits);
        out.push(0);
        out.extend_from_slice(signature);
        out
    }
}

/// Encodes a CRL to sign. Sorts `entries` and refuses duplicate serials. `algorithm` is the
/// signing key's, written in both `signature` and `signatureAlgorithm` (§5.1.1.2).
pub fn tbs(
    issuer: &CrlIssuer,
    spec: &CrlSpec<'_>,
    entries: &mut [Entry],
    algorithm: SignatureAlgorithm,
) -> Result<CrlTbs, CrlError> {
    sort_entries(entries)?;
    let alg = algorithm.algorithm_identifier_der();
    let der = tbs_cert_list(issuer, spec, &alg, entries)?;
    Ok(CrlTbs {
        der: der.into(),
        algorithm: alg,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::serial;
    use super::*;
    use crate::testkit::{ca, signed_crl as build};
    use der::{Decode, Encode};
    use x509_cert::crl::CertificateList;

    fn spec() -> CrlSpec<'static> {
        CrlSpec {
            number: 1_700_000_000_123,
            this_update: 1_700_000_000,
            next_update: 1_700_000_000 + 7 * 86_400,
            idp_uri: None,
            delta_base: None,
            freshest_uri: None,
        }
    }

    #[test]
    fn decodes_with_x509_cert_and_matches_the_input() {
        let (cacert, signer) = ca();
        let issuer = CrlIssuer::from_certificate("t", &cacert).expect("issuer");
        let mut entries = vec![
            Entry {
                serial: serial(0x80),
                time: 1_600_000_000,
                reason: RevocationReason::KeyCompromise,
            },
            Entry {
                serial: serial(3),
                time: 1_600_000_001,
                reason: RevocationReason::Unspecified,
            },
        ];
        let der = build(&issuer, &spec(), &mut entries, &signer).expect("build");
        let crl = CertificateList::from_der(&der).expect("decodes");
        let tbs = &crl.tbs_cert_list;
        assert_eq!(tbs.version, x509_cert::Version::V2);
        assert_eq!(crl.signature_algorithm, tbs.signature);
        assert_eq!(tbs.issuer.to_der().expect("der"), issuer.subject_der);
        let revoked = tbs.revoked_certificates.as_ref().expect("entries");
        assert_eq!(revoked.len(), 2);
        // sorted numerically: 3 before 0x80
        assert_eq!(revoked[0].serial_number.as_bytes(), &[3]);
        assert!(revoked[0].crl_entry_extensions.is_none());
        assert_eq!(revoked[1].serial_number.as_bytes(), &[0, 0x80]);
        let ext = &revoked[1].crl_entry_extensions.as_ref().expect("reason")[0];
        assert!(!ext.critical);
        assert_eq!(ext.extn_value.as_bytes(), &[0x0A, 0x01, 0x01]);
        let exts = tbs.crl_extensions.as_ref().expect("extensions");
        assert_eq!(exts.len(), 2);
        assert!(exts.iter().all(|e| !e.critical));
        // re-encoding what x509-cert decoded gives the same bytes: the DER is canonical
        assert_eq!(crl.to_der().expect("re-encode"), der);
    }

    #[test]
    fn empty_crl_has_no_revoked_certificates_field() {
        let (cacert, signer) = ca();
        let issuer = CrlIssuer::from_certificate("t", &cacert).expect("issuer");
        let der = build(&issuer, &spec(), &mut [], &signer).expect("build");
        let crl = CertificateList::from_der(&der).expect("decodes");
        assert!(crl.tbs_cert_list.revoked_certificates.is_none());
    }

    #[test]
    fn refuses_duplicates_and_long_validity() {
        let (cacert, signer) = ca();
        let issuer = CrlIssuer::from_certificate("t", &cacert).expect("issuer");
        let e = Entry {
            serial: serial(5),
            time: 0,
            reason: RevocationReason::Superseded,
        };
        assert!(matches!(
            build(&issuer, &spec(), &mut [e, e], &signer),
            Err(CrlError::DuplicateSerial(s)) if s == serial(5)
        ));
        let long = CrlSpec {
            next_update: spec().this_update + MAX_VALIDITY_SECS + 1,
            ..spec()
        };
        assert!(matches!(
            build(&issuer, &long, &mut [], &signer),
            Err(CrlError::Validity(_))
        ));
    }

    #[test]
    fn large_lengths_encode() {
        let (cacert, signer) = ca();
        let issuer = CrlIssuer::from_certificate("t", &cacert).expect("issuer");
        let mut entries: Vec<Entry> = (1..5000u64)
            .map(|n| Entry {
                serial: serial(n * 7919),
                time: 1_600_000_000 + n as i64,
                reason: RevocationReason::from_code((n % 6) as u8)
                    .unwrap_or(RevocationReason::Superseded),
            })
            .collect();
        let der = build(&issuer, &spec(), &mut entries, &signer).expect("build");
        let crl = CertificateList::from_der(&der).expect("decodes");
        assert_eq!(
            crl.tbs_cert_list
                .revoked_certificates
                .as_ref()
                .map(Vec::len),
            Some(4999)
        );
    }
}
