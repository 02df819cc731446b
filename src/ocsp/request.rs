//! Decoding OCSPRequest (RFC 6960 §4.1) from POST bodies and GET paths (RFC 5019 §5, RFC 6960
//! Appendix A.1).
//!
//! DER only: the `der` crate rejects BER forms (indefinite lengths, non-minimal lengths),
//! trailing bytes and out-of-range lengths. Sizes are bounded before decoding (the HTTP layer
//! caps the body and path) and the counts inside by [`RequestLimits`].

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use der::asn1::OctetString;
use der::{Decode, Encode, Tag, Tagged};
use x509_cert::ext::Extension;
use x509_ocsp::{CertId, OcspRequest};

use super::{
    HashAlgorithm, OID_ACCEPTABLE_RESPONSES, OID_NONCE, OID_PREFERRED_SIG_ALGS,
    OID_SERVICE_LOCATOR, OcspError,
};
use crate::limits;
use crate::status::Serial;

/// Bounds on what one request may carry.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Most CertIDs per request.
    pub max_cert_ids: usize,
    /// Longest nonce echoed, in octets (longer ones up to RFC 9654's 128 are ignored).
    pub max_nonce_bytes: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_cert_ids: limits::MAX_CERT_IDS,
            max_nonce_bytes: limits::MAX_NONCE_BYTES,
        }
    }
}

/// One CertID of a request.
#[derive(Debug, Clone)]
pub struct RequestedCert {
    /// The CertID as decoded; echoed unchanged in the SingleResponse.
    pub cert_id: CertId,
    /// The CertID's DER, exactly as the client sent it: the response cache key.
    pub der: Vec<u8>,
    /// Its hash algorithm.
    pub hash: HashAlgorithm,
    /// Its serial number.
    pub serial: Serial,
}

/// A decoded, checked request.
#[derive(Debug, Clone)]
pub struct DecodedRequest {
    /// The CertIDs, in request order (duplicates kept: each gets its own SingleResponse).
    pub certs: Vec<RequestedCert>,
    /// The nonce extension as sent, if any and if it may be echoed (echoed verbatim when nonces
    /// are echoed). `None` also for a nonce longer than `max_nonce_bytes`: ignored (RFC 9654
    /// §2.1 lets a responder answer such a request without a nonce).
    pub nonce: Option<Extension>,
}

/// Decodes and checks a DER OCSPRequest.
pub fn decode_request(der: &[u8], limits: &RequestLimits) -> Result<DecodedRequest, OcspError> {
    let req =
        OcspRequest::from_der(der).map_err(|_| OcspError::Malformed("not a DER OCSPRequest"))?;
    let tbs = req.tbs_request;
    if tbs.request_list.is_empty() {
        return Err(OcspError::Malformed("empty requestList"));
    }
    if tbs.request_list.len() > limits.max_cert_ids {
        return Err(OcspError::Malformed("too many CertIDs in one request"));
    }
    let mut nonce = None;
    if let Some(exts) = &tbs.request_extensions {
        check_no_duplicates(exts)?;
        for ext in exts {
            if ext.extn_id == OID_NONCE {
                if check_nonce(ext, limits.max_nonce_bytes)? == NonceUse::Echo {
                    nonce = Some(ext.clone());
                }
            } else if ext.critical
                && ext.extn_id != OID_ACCEPTABLE_RESPONSES
                && ext.extn_id != OID_PREFERRED_SIG_ALGS
            {
                return Err(OcspError::Malformed("unknown critical request extension"));
            }
        }
    }
    let mut certs = Vec::with_capacity(tbs.request_list.len());
    for r in tbs.request_list {
        if let Some(exts) = &r.single_request_extensions {
            check_no_duplicates(exts)?;
            if exts
                .iter()
                .any(|e| e.critical && e.extn_id != OID_SERVICE_LOCATOR)
            {
                return Err(OcspError::Malformed(
                    "unknown critical singleRequestExtension",
                ));
            }
        }
        let id = r.req_cert;
        let serial = Serial::from_der_content(id.serial_number.as_bytes()).map_err(|_| {
            OcspError::Malformed("serial number is not a positive integer of at most 20 octets")
        })?;
        let hash = HashAlgorithm::from_oid(&id.hash_algorithm.oid)
            .ok_or(OcspError::Unauthorized("unsupported CertID hash algorithm"))?;
        let params_ok = match &id.hash_algorithm.parameters {
            None => true,
            Some(p) => p.tag() == Tag::Null && p.value().is_empty(),
        };
        if !params_ok {
            return Err(OcspError::Unauthorized(
                "unsupported CertID hash parameters",
            ));
        }
        let der = id
            .to_der()
            .map_err(|_| OcspError::Malformed("CertID does not re-encode"))?;
        certs.push(RequestedCert {
            cert_id: id,
            der,
            hash,
            serial,
        });
    }
    Ok(DecodedRequest { certs, nonce })
}

/// The DER of the request that asks about one CertID and nothing else: no version (v1 is the
/// DEFAULT, so DER omits it), no requestorName, no extensions, no signature.
///
/// ```text
/// OCSPRequest ::= SEQUENCE { tbsRequest TBSRequest, ... }
/// TBSRequest  ::= SEQUENCE { requestList SEQUENCE OF Request, ... }
/// Request     ::= SEQUENCE { reqCert CertID, ... }
/// ```
///
/// DER has one encoding per value, so these are the only bytes such a request can have: the
/// front cache keeps only requests equal to this, and a status change drops exactly these forms.
pub fn plain_request_der(cert_id_der: &[u8]) -> Vec<u8> {
    let mut out = cert_id_der.to_vec();
    for _ in 0..4 {
        out = sequence(out);
    }
    out
}

/// The CertID bytes of a request shaped like [`plain_request_der`]'s output: four SEQUENCE
/// headers, each with a definite length that runs exactly to the end of its parent. Anything
/// else (a nonce or other extension, a second CertID, a signature) is `None`.
///
/// This only looks at headers (tens of nanoseconds), so requests that cannot be in the front
/// cache skip its lookup. It does not check the CertID inside: the caller compares it with
/// the re-encoding of a decoded CertID before trusting it.
pub fn plain_cert_id(der: &[u8]) -> Option<&[u8]> {
    let mut rest = der;
    for _ in 0..4 {
        rest = sequence_content(rest)?;
    }
    Some(rest)
}

/// The content of a SEQUENCE that is all of `der`, if its length is definite and exact.
fn sequence_content(der: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (len, rest) = match first {
        0..=0x7f => (first as usize, rest),
        0x81..=0x82 => {
            let n = (first & 0x7f) as usize;
            let octets = rest.get(..n)?;
            (
                octets
                    .iter()
                    .fold(0usize, |acc, &b| (acc << 8) | b as usize),
                &rest[n..],
            )
        }
        _ => return None,
    };
    (len == rest.len()).then_some(rest)
}

/// `content` as the content of a DER SEQUENCE.
fn sequence(content: Vec<u8>) -> Vec<u8> {
    let n = content.len();
    let mut out = Vec::with_capacity(n + 6);
    out.push(0x30);
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let octets = n.to_be_bytes();
        let skip = octets.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (octets.len() - skip) as u8);
        out.extend_from_slice(&octets[skip..]);
    }
    out.extend_from_slice(&content);
    out
}

fn check_no_duplicates(exts: &[Extension]) -> Result<(), OcspError> {
    for (i, a) in exts.iter().enumerate() {
        if exts[i + 1..].iter().any(|b| b.extn_id == a.extn_id) {
            return Err(OcspError::Malformed("duplicate extension"));
        }
    }
    Ok(())
}

/// What RFC 9654 §2.1 lets the responder do with a nonce it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NonceUse {
    /// 1 ..= `max_nonce_bytes` octets: echoed when the policy echoes.
    Echo,
    /// Longer than `max_nonce_bytes`, at most 128 octets: answered without a nonce.
    Ignore,
}

/// RFC 9654 §2.1 (obsoletes RFC 8954):
///
/// ```text
/// Nonce ::= OCTET STRING(SIZE(1..128))
/// ```
///
/// carried inside the extnValue. A nonce of 0 octets or of more than 128 is refused with
/// `malformedRequest`; responders must accept 16 ..= 32 octets and may answer without the
/// nonce for 1 ..= 15 and 33 ..= 128. vigil echoes 1 ..= `max` (config bounds `max` to
/// 32 ..= 128, so 16 ..= 32 are always echoed) and ignores the rest up to 128.
fn check_nonce(ext: &Extension, max: usize) -> Result<NonceUse, OcspError> {
    let inner = OctetString::from_der(ext.extn_value.as_bytes())
        .map_err(|_| OcspError::Malformed("nonce is not an OCTET STRING"))?;
    let n = inner.as_bytes().len();
    if n == 0 {
        return Err(OcspError::Malformed("empty nonce"));
    }
    if n > limits::NONCE_OCTETS_ALLOWED {
        return Err(OcspError::Malformed(
            "nonce longer than 128 octets (RFC 9654)",
        ));
    }
    Ok(if n > max {
        NonceUse::Ignore
    } else {
        NonceUse::Echo
    })
}

/// Why a GET path did not yield request bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GetPathError {
    /// Percent-decoding produced something that is not base64 of a request.
    #[error("path is not base64")]
    NotBase64,
}

const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(false),
);

/// Turns the part of a GET path after the OCSP prefix into request DER.
///
/// Accepts what real clients send: percent-encoding (`%2B`, `%2F`, `%3D`, any case), a raw `+`
/// (never read as a space), missing `=` padding, leading or doubled `/` (base64 itself contains
/// `/`), and the URL-safe alphabet. The caller bounds the path length first.
pub fn decode_get_path(encoded: &str) -> Result<Vec<u8>, GetPathError> {
    // One pass that percent-decodes (like `percent_encoding::percent_decode`: `%` and two hex
    // digits is one octet, any other `%` stays), drops leading slashes and maps the URL-safe
    // alphabet and spaces; then one base64 decode. This is on every GET, so one buffer only.
    let src = encoded.as_bytes();
    let mut b64: Vec<u8> = Vec::with_capacity(src.len());
    let mut leading = true;
    let mut i = 0;
    while let Some(&byte) = src.get(i) {
        i += 1;
        let mut c = byte;
        if c == b'%'
            && let (Some(h), Some(l)) = (
                src.get(i).and_then(|&d| hex_digit(d)),
                src.get(i + 1).and_then(|&d| hex_digit(d)),
            )
        {
            c = (h << 4) | l;
            i += 2;
        }
        if leading && c == b'/' {
            continue;
        }
        leading = false;
        b64.push(match c {
            b'-' => b'+',
            b'_' => b'/',
            b' ' => b'+',
            other => other,
        });
    }
    BASE64.decode(&b64).map_err(|_| GetPathError::NotBase64)
}

fn hex_digit(d: u8) -> Option<u8> {
    match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        b'A'..=b'F' => Some(d - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use der::asn1::Null;
    use proptest::prelude::*;
    use spki::AlgorithmIdentifierOwned;
    use x509_cert::serial_number::SerialNumber;
    use x509_ocsp::{Request, TbsRequest, Version};

    pub(crate) fn cert_id(alg: HashAlgorithm, serial: &[u8], null_params: bool) -> CertId {
        CertId {
            hash_algorithm: AlgorithmIdentifierOwned {
                oid: alg.oid(),
                parameters: null_params.then(|| Null.into()),
            },
            issuer_name_hash: OctetString::new(alg.digest(b"name")).expect("octets"),
            issuer_key_hash: OctetString::new(alg.digest(b"key")).expect("octets"),
            serial_number: SerialNumber::new(serial).expect("serial"),
        }
    }

    pub(crate) fn request(ids: Vec<CertId>, exts: Option<Vec<Extension>>) -> Vec<u8> {
        OcspRequest {
            tbs_request: TbsRequest {
                version: Version::V1,
                requestor_name: None,
                request_list: ids
                    .into_iter()
                    .map(|req_cert| Request {
                        req_cert,
                        single_request_extensions: None,
                    })
                    .collect(),
                request_extensions: exts,
            },
            optional_signature: None,
        }
        .to_der()
        .expect("encode")
    }

    fn nonce(len: usize, critical: bool) -> Extension {
        Extension {
            extn_id: OID_NONCE,
            critical,
            extn_value: OctetString::new(
                OctetString::new(vec![7u8; len])
                    .expect("o")
                    .to_der()
                    .expect("der"),
            )
            .expect("o"),
        }
    }

    #[test]
    fn every_hash_round_trips_exactly() {
        for alg in HashAlgorithm::ALL {
            for null in [true, false] {
                let id = cert_id(alg, &[0x01, 0x02], null);
                let der = request(vec![id.clone()], None);
                let d = decode_request(&der, &RequestLimits::default()).expect("decode");
                assert_eq!(d.certs.len(), 1);
                assert_eq!(d.certs[0].hash, alg);
                assert_eq!(d.certs[0].der, id.to_der().expect("der"));
                assert_eq!(d.certs[0].serial.as_der_content(), &[1, 2]);
            }
        }
    }

    #[test]
    fn plain_request_is_the_encoded_single_request() {
        for alg in HashAlgorithm::ALL {
            for null in [true, false] {
                let mut high_bit = vec![0xff; 20];
                high_bit[0] = 0;
                for serial in [vec![0x01], vec![0x7f; 20], high_bit] {
                    let id = cert_id(alg, &serial, null);
                    let want = request(vec![id.clone()], None);
                    assert_eq!(plain_request_der(&id.to_der().expect("der")), want);
                }
            }
        }
        // And back.
        let id = cert_id(HashAlgorithm::Sha512, &[0x7f; 20], true)
            .to_der()
            .expect("der");
        assert_eq!(plain_cert_id(&plain_request_der(&id)), Some(&id[..]));
        let nonce = request(
            vec![cert_id(HashAlgorithm::Sha1, &[5], true)],
            Some(vec![nonce(16, false)]),
        );
        assert_eq!(plain_cert_id(&nonce), None);
        let two = request(
            vec![
                cert_id(HashAlgorithm::Sha1, &[5], true),
                cert_id(HashAlgorithm::Sha1, &[6], true),
            ],
            None,
        );
        assert_eq!(plain_cert_id(&two), None);
        let mut trailing = plain_request_der(&id);
        trailing.push(0);
        assert_eq!(plain_cert_id(&trailing), None);
        assert_eq!(plain_cert_id(&[0x30, 0x80, 0, 0]), None);
        // Lengths of one, two and three octets.
        for n in [0x7f, 0x80, 0xff, 0x100, 0x1_0000] {
            let der = sequence(vec![0; n]);
            let header = der.len() - n;
            assert_eq!(
                der::Header::from_der(&der[..header])
                    .expect("header")
                    .length,
                der::Length::try_from(n).expect("length")
            );
        }
    }

    #[test]
    fn limits_and_bad_forms() {
        let lim = RequestLimits::default();
        let ids = |n| {
            (0..n)
                .map(|_| cert_id(HashAlgorithm::Sha1, &[5], true))
                .collect()
        };
        assert_eq!(
            decode_request(&request(ids(32), None), &lim)
                .expect("ok")
                .certs
                .len(),
            32
        );
        assert!(matches!(
            decode_request(&request(ids(33), None), &lim),
            Err(OcspError::Malformed(_))
        ));
        assert!(matches!(
            decode_request(&request(ids(0), None), &lim),
            Err(OcspError::Malformed(_))
        ));
        let mut trailing = request(ids(1), None);
        trailing.push(0);
        assert!(matches!(
            decode_request(&trailing, &lim),
            Err(OcspError::Malformed(_))
        ));
        // zero serial
        assert!(matches!(
            decode_request(
                &request(vec![cert_id(HashAlgorithm::Sha1, &[0], true)], None),
                &lim
            ),
            Err(OcspError::Malformed(_))
        ));
        // nonce bounds
        // (length, accepted, echoed) with the default limit (128) and with a limit of 32
        for (len, ok, echoed, echoed_at_32) in [
            (0, false, false, false),
            (1, true, true, true),
            (16, true, true, true),
            (32, true, true, true),
            (33, true, true, false),
            (64, true, true, false),
            (128, true, true, false),
            (129, false, false, false),
        ] {
            let der = request(ids(1), Some(vec![nonce(len, false)]));
            let r = decode_request(&der, &lim);
            assert_eq!(r.is_ok(), ok, "nonce of {len}");
            assert_eq!(
                r.as_ref().is_ok_and(|d| d.nonce.is_some()),
                echoed,
                "nonce of {len}"
            );
            let at_32 = RequestLimits {
                max_nonce_bytes: 32,
                ..lim
            };
            let r = decode_request(&der, &at_32);
            assert_eq!(r.is_ok(), ok, "nonce of {len}, limit 32");
            assert_eq!(
                r.is_ok_and(|d| d.nonce.is_some()),
                echoed_at_32,
                "nonce of {len}, limit 32"
            );
        }
        // unknown critical extension
        let mut ext = nonce(8, true);
        ext.extn_id = const_oid::ObjectIdentifier::new_unwrap("1.2.3.4");
        assert!(matches!(
            decode_request(&request(ids(1), Some(vec![ext])), &lim),
            Err(OcspError::Malformed(_))
        ));
        // BER: indefinite length outer SEQUENCE
        let der = request(ids(1), None);
        let mut ber = vec![0x30, 0x80];
        ber.extend_from_slice(&der[2..]);
        ber.extend_from_slice(&[0, 0]);
        assert!(matches!(
            decode_request(&ber, &lim),
            Err(OcspError::Malformed(_))
        ));
    }

    #[test]
    fn unsupported_hash_is_unauthorized() {
        let mut id = cert_id(HashAlgorithm::Sha1, &[5], true);
        id.hash_algorithm.oid = const_oid::db::rfc5912::ID_MD_5;
        let r = decode_request(&request(vec![id], None), &RequestLimits::default());
        assert!(matches!(r, Err(OcspError::Unauthorized(_))));
    }

    #[test]
    fn get_path_forms() {
        let der = request(
            vec![cert_id(HashAlgorithm::Sha256, &[0x7f, 0xfe, 0xfb], true)],
            None,
        );
        let std = base64::engine::general_purpose::STANDARD.encode(&der);
        let forms = [
            std.clone(),
            std.trim_end_matches('=').to_string(),
            std.replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D"),
            std.replace('+', "%2b").replace('/', "%2f"),
            format!("/{std}"),
            format!("//{std}"),
            std.replace('+', "-").replace('/', "_"),
        ];
        for f in forms {
            assert_eq!(decode_get_path(&f).expect(&f), der, "{f}");
        }
        assert!(decode_get_path("favicon.ico").is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_error(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_request(&bytes, &RequestLimits::default());
        }

        #[test]
        fn mutated_requests_decode_or_error(pos in 0usize..200, byte in any::<u8>()) {
            let mut der = request(vec![cert_id(HashAlgorithm::Sha1, &[9, 9], true)], Some(vec![nonce(16, false)]));
            let p = pos % der.len();
            der[p] = byte;
            let _ = decode_request(&der, &RequestLimits::default());
        }

        #[test]
        fn any_path_decodes_or_errors(s in "\\PC{0,300}") {
            let _ = decode_get_path(&s);
        }

        /// The one-pass decoder agrees with the straightforward one built on
        /// `percent_encoding`, on arbitrary text and on percent-heavy paths.
        #[test]
        fn get_path_matches_reference(
            s in prop_oneof!["\\PC{0,200}", "[A-Za-z0-9+/=%_ -]{0,200}", "(%[0-9a-fA-FgG]{0,2}|[A-Za-z0-9/+])*"]
        ) {
            prop_assert_eq!(decode_get_path(&s), reference_get_path(&s));
        }

        /// Base64 of any bytes, each character raw, percent-encoded (either case) or in the
        /// URL-safe alphabet, after some slashes: decodes to the bytes, like the reference.
        #[test]
        fn encoded_paths_match_reference(
            bytes in proptest::collection::vec(any::<u8>(), 1..120),
            forms in proptest::collection::vec(0u8..4, 0..200),
            slashes in 0usize..3,
        ) {
            let std = base64::engine::general_purpose::STANDARD.encode(&bytes);
            let mut s = "/".repeat(slashes);
            for (i, ch) in std.chars().enumerate() {
                match (forms.get(i).copied().unwrap_or(0), ch) {
                    (1, _) => s.push_str(&format!("%{:02X}", ch as u32)),
                    (2, _) => s.push_str(&format!("%{:02x}", ch as u32)),
                    (3, '+') => s.push('-'),
                    (3, '/') => s.push('_'),
                    _ => s.push(ch),
                }
            }
            let got = decode_get_path(&s);
            // A leading '/' of the base64 itself is taken for a path slash (requests start
            // with 'M', so this never matters for OCSP).
            if !std.starts_with('/') {
                prop_assert_eq!(got.as_ref().ok(), Some(&bytes));
            }
            prop_assert_eq!(got, reference_get_path(&s));
        }
    }

    /// `decode_get_path` as first written: percent-decode, then strip and map, then base64.
    fn reference_get_path(encoded: &str) -> Result<Vec<u8>, GetPathError> {
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(encoded).collect();
        let mut b64: Vec<u8> = Vec::with_capacity(decoded.len());
        let mut leading = true;
        for &c in &decoded {
            if leading && c == b'/' {
                continue;
            }
            leading = false;
            b64.push(match c {
                b'-' => b'+',
                b'_' => b'/',
                b' ' => b'+',
                other => other,
            });
        }
        BASE64.decode(&b64).map_err(|_| GetPathError::NotBase64)
    }
}
