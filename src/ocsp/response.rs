//! Building BasicOCSPResponse (RFC 6960 §4.2.1) and wrapping it in OCSPResponse.
//!
//! Pure: [`tbs_response_data`] encodes ResponseData (the bytes to sign), the caller has it
//! signed wherever its key is (`crate::signer::service`), and [`assemble`] wraps data and
//! signature. Only the signature algorithm, as plain data, is needed here.

use std::time::Duration;

use der::asn1::{GeneralizedTime, Null, OctetString};
use der::{Encode, Header, Length, Tag, TagNumber};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::CrlReason;
use x509_ocsp::{
    CertId, CertStatus as OcspCertStatus, OcspGeneralizedTime, ResponderId, ResponseData,
    RevokedInfo, SingleResponse, Version,
};

use super::{HashAlgorithm, OID_BASIC_RESPONSE, OID_EXTENDED_REVOKE, OcspError};
use crate::alg::SignatureAlgorithm;
use crate::status::{Revocation, RevocationReason};

/// How thisUpdate, nextUpdate and the refresh point follow from the signing time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidityPolicy {
    /// nextUpdate − thisUpdate, seconds. BR §4.9.10: at least 8 hours, at most 10 days.
    pub validity_secs: i64,
    /// thisUpdate = now − backdate, seconds, so clients with slow clocks accept the response.
    pub backdate_secs: i64,
}

/// The shortest validity the Baseline Requirements (§4.9.10) allow: 8 hours.
pub const MIN_VALIDITY_SECS: i64 = 8 * 3600;
/// The longest validity the Baseline Requirements (§4.9.10) allow: 10 days.
pub const MAX_VALIDITY_SECS: i64 = 10 * 86400;

impl Default for ValidityPolicy {
    fn default() -> Self {
        ValidityPolicy {
            validity_secs: 4 * 86400,
            backdate_secs: 300,
        }
    }
}

/// The times of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// producedAt: the signing time.
    pub produced_at: i64,
    /// thisUpdate.
    pub this_update: i64,
    /// nextUpdate.
    pub next_update: i64,
    /// When a new response should replace this one: half-way through the validity (BR §4.9.10).
    pub refresh_at: i64,
}

impl ValidityPolicy {
    /// The window of a response signed at `now` (Unix seconds).
    pub fn window(&self, now: i64) -> Window {
        let this_update = now - self.backdate_secs.max(0);
        Window {
            produced_at: now,
            this_update,
            next_update: this_update + self.validity_secs,
            refresh_at: this_update + self.validity_secs / 2,
        }
    }
}

/// The status to put in one SingleResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SingleStatus {
    /// good.
    Good,
    /// revoked, with time and reason (the reason is omitted when unspecified).
    Revoked(Revocation),
    /// unknown.
    Unknown,
}

/// How the responder names itself and what its responses carry besides the signature: the
/// signer's algorithm and the delegated responder's certificate. Plain data; the key is
/// elsewhere.
#[derive(Debug, Clone)]
pub struct ResponderProfile {
    /// responderID.
    pub responder_id: ResponderId,
    /// `[0] EXPLICIT SEQUENCE OF Certificate` for the `certs` field, or None when the CA signs.
    pub certs_field: Option<Vec<u8>>,
    /// The algorithm of the key that signs.
    pub algorithm: SignatureAlgorithm,
    signature_algorithm: Vec<u8>,
}

impl ResponderProfile {
    /// A profile. `certs` are DER certificates to include (the delegated responder's);
    /// `algorithm` is the signing key's.
    pub fn new(
        responder_id: ResponderId,
        certs: &[Vec<u8>],
        algorithm: SignatureAlgorithm,
    ) -> Result<Self, OcspError> {
        let certs_field = if certs.is_empty() {
            None
        } else {
            let seq = tlv(Tag::Sequence, certs.iter().map(|c| c.as_slice()))?;
            Some(tlv(context0(), [seq.as_slice()])?)
        };
        Ok(ResponderProfile {
            responder_id,
            certs_field,
            algorithm,
            signature_algorithm: algorithm.algorithm_identifier_der(),
        })
    }

    /// responderID byKey: SHA-1 of the responder's subjectPublicKey contents (RFC 6960 §4.2.2.3).
    pub fn key_hash_id(public_key: &[u8]) -> Result<ResponderId, OcspError> {
        Ok(ResponderId::ByKey(
            OctetString::new(HashAlgorithm::Sha1.digest(public_key)).map_err(internal)?,
        ))
    }
}

fn internal(e: der::Error) -> OcspError {
    OcspError::Internal(format!("DER encoding: {e}"))
}

fn context0() -> Tag {
    Tag::ContextSpecific {
        constructed: true,
        number: TagNumber::N0,
    }
}

fn tlv<'a>(
    tag: Tag,
    parts: impl IntoIterator<Item = &'a [u8]> + Clone,
) -> Result<Vec<u8>, OcspError> {
    let len: usize = parts.clone().into_iter().map(<[u8]>::len).sum();
    let header = Header::new(tag, Length::try_from(len).map_err(internal)?).map_err(internal)?;
    let mut out = Vec::with_capacity(len + 6);
    header.encode_to_vec(&mut out).map_err(internal)?;
    for p in parts {
        out.extend_from_slice(p);
    }
    Ok(out)
}

fn time(t: i64) -> Result<OcspGeneralizedTime, OcspError> {
    let secs = u64::try_from(t).map_err(|_| OcspError::Internal("time before 1970".into()))?;
    Ok(OcspGeneralizedTime(
        GeneralizedTime::from_unix_duration(Duration::from_secs(secs)).map_err(internal)?,
    ))
}

fn crl_reason(r: RevocationReason) -> CrlReason {
    match r {
        RevocationReason::Unspecified => CrlReason::Unspecified,
        RevocationReason::KeyCompromise => CrlReason::KeyCompromise,
        RevocationReason::CaCompromise => CrlReason::CaCompromise,
        RevocationReason::AffiliationChanged => CrlReason::AffiliationChanged,
        RevocationReason::Superseded => CrlReason::Superseded,
        RevocationReason::CessationOfOperation => CrlReason::CessationOfOperation,
        RevocationReason::CertificateHold => CrlReason::CertificateHold,
        RevocationReason::RemoveFromCrl => CrlReason::RemoveFromCRL,
        RevocationReason::PrivilegeWithdrawn => CrlReason::PrivilegeWithdrawn,
        RevocationReason::AaCompromise => CrlReason::AaCompromise,
    }
}

/// The Extended Revoked Definition extension (RFC 6960 §4.4.8): extnValue is NULL.
pub fn extended_revoke_extension() -> Result<Extension, OcspError> {
    Ok(Extension {
        extn_id: OID_EXTENDED_REVOKE,
        critical: false,
        extn_value: OctetString::new(vec![0x05, 0x00]).map_err(internal)?,
    })
}

/// Encodes ResponseData for `answers` (CertIDs echoed as given).
pub fn tbs_response_data(
    profile: &ResponderProfile,
    window: &Window,
    answers: &[(&CertId, SingleStatus)],
    extensions: Vec<Extension>,
) -> Result<Vec<u8>, OcspError> {
    let this_update = time(window.this_update)?;
    let next_update = time(window.next_update)?;
    let mut responses = Vec::with_capacity(answers.len());
    for (id, status) in answers {
        let cert_status = match status {
            SingleStatus::Good => OcspCertStatus::Good(Null),
            SingleStatus::Unknown => OcspCertStatus::Unknown(Null),
            SingleStatus::Revoked(r) => OcspCertStatus::Revoked(RevokedInfo {
                revocation_time: time(r.time)?,
                revocation_reason: (r.reason != RevocationReason::Unspecified)
                    .then(|| crl_reason(r.reason)),
            }),
        };
        responses.push(SingleResponse {
            cert_id: (*id).clone(),
            cert_status,
            this_update,
            next_update: Some(next_update),
            single_extensions: None,
        });
    }
    ResponseData {
        version: Version::V1,
        responder_id: profile.responder_id.clone(),
        produced_at: time(window.produced_at)?,
        responses,
        response_extensions: (!extensions.is_empty()).then_some(extensions),
    }
    .to_der()
    .map_err(internal)
}

/// Wraps signed ResponseData into a complete, successful OCSPResponse.
pub fn assemble(
    profile: &ResponderProfile,
    tbs: &[u8],
    signature: &[u8],
) -> Result<Vec<u8>, OcspError> {
    let bit_string = tlv(Tag::BitString, [&[0u8][..], signature])?;
    let basic = tlv(
        Tag::Sequence,
        [
            tbs,
            profile.signature_algorithm.as_slice(),
            bit_string.as_slice(),
            profile.certs_field.as_deref().unwrap_or(&[]),
        ],
    )?;
    let basic_octets = tlv(Tag::OctetString, [basic.as_slice()])?;
    let oid = OID_BASIC_RESPONSE.to_der().map_err(internal)?;
    let response_bytes = tlv(Tag::Sequence, [oid.as_slice(), basic_octets.as_slice()])?;
    let explicit = tlv(context0(), [response_bytes.as_slice()])?;
    tlv(
        Tag::Sequence,
        [&[0x0A, 0x01, 0x00][..], explicit.as_slice()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocsp::request::tests::cert_id;
    use der::Decode;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
    use x509_ocsp::{BasicOcspResponse, OcspResponse, OcspResponseStatus};

    /// A P-256 key held here, with *ring*: the core's tests need no signer module.
    fn key() -> EcdsaKeyPair {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("key");
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .expect("load")
    }

    fn profile(key: &EcdsaKeyPair) -> ResponderProfile {
        let id = ResponderProfile::key_hash_id(key.public_key().as_ref()).expect("id");
        ResponderProfile::new(id, &[], SignatureAlgorithm::EcdsaP256Sha256).expect("profile")
    }

    #[test]
    fn builds_a_verifiable_response() {
        let key = key();
        let p = profile(&key);
        let w = ValidityPolicy::default().window(1_700_000_000);
        assert!(w.this_update <= w.produced_at && w.refresh_at < w.next_update);
        let good = cert_id(HashAlgorithm::Sha1, &[1], true);
        let revoked = cert_id(HashAlgorithm::Sha256, &[2], false);
        let rev = Revocation {
            time: 1_600_000_000,
            reason: RevocationReason::KeyCompromise,
        };
        let tbs = tbs_response_data(
            &p,
            &w,
            &[
                (&good, SingleStatus::Good),
                (&revoked, SingleStatus::Revoked(rev)),
            ],
            vec![extended_revoke_extension().expect("ext")],
        )
        .expect("tbs");
        let rng = ring::rand::SystemRandom::new();
        let sig = key.sign(&rng, &tbs).expect("sign");
        let der = assemble(&p, &tbs, sig.as_ref()).expect("assemble");
        let resp = OcspResponse::from_der(&der).expect("decode");
        assert_eq!(resp.response_status, OcspResponseStatus::Successful);
        let rb = resp.response_bytes.expect("bytes");
        assert_eq!(rb.response_type, OID_BASIC_RESPONSE);
        let basic = BasicOcspResponse::from_der(rb.response.as_bytes()).expect("basic");
        let data = &basic.tbs_response_data;
        assert_eq!(data.responses.len(), 2);
        assert_eq!(data.responses[0].cert_id, good);
        assert_eq!(data.responses[1].cert_id, revoked);
        match &data.responses[1].cert_status {
            OcspCertStatus::Revoked(info) => {
                assert_eq!(info.revocation_reason, Some(CrlReason::KeyCompromise))
            }
            other => panic!("not revoked: {other:?}"),
        }
        assert!(data.responses[0].next_update.is_some());
        assert_eq!(data.to_der().expect("tbs"), tbs);
        assert_eq!(
            basic.signature_algorithm,
            p.algorithm.algorithm_identifier()
        );
        assert!(crate::alg::verify(
            p.algorithm,
            key.public_key().as_ref(),
            &tbs,
            basic.signature.raw_bytes()
        ));
    }
}
