//! Reading a CRL back and checking it: before the publisher stores a CRL (as Boulder lints
//! before it signs), and before a replica serves one it fetched from Redis or disk.
//!
//! The parser walks the DER without copying (a million entries are one pass with no
//! allocation per entry) and checks:
//!
//! - structure: strict DER lengths, nothing trailing, version v2 (§5.1.2.1);
//! - `signature` equals `signatureAlgorithm` (§5.1.1.2) and the signature verifies with the
//!   issuer's public key;
//! - `issuer` is byte-identical to the CA subject (§5.1.2.3);
//! - thisUpdate not in the future, nextUpdate present and at most 10 days later
//!   (§5.1.2.4-5, BR §4.9.7);
//! - revokedCertificates absent when empty (§5.1.2.6), serials positive, strictly increasing
//!   (so never duplicated), reasonCode non-critical and never unspecified, never
//!   certificateHold or removeFromCRL unless the issuer allows holds, never removeFromCRL
//!   outside a delta CRL (§5.3.1);
//! - AKI present with the expected key identifier (§5.2.1), CRLNumber non-critical, equal to
//!   the expected number and above the previous one (§5.2.3), deltaCRLIndicator critical and
//!   only on delta CRLs (§5.2.4), issuing distribution point critical and naming exactly the
//!   expected URI, or absent (§5.2.5); no unknown critical extension (§5.2).

use der::Decode;
use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::AuthorityKeyIdentifier;

use super::der::tag;
use super::{CrlIssuer, Entry, MAX_VALIDITY_SECS};
use crate::status::{RevocationReason, Serial};

/// Clock skew tolerated when checking that thisUpdate is not in the future, seconds.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// A rule the CRL breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LintError(pub String);

fn fail<T>(msg: impl Into<String>) -> Result<T, LintError> {
    Err(LintError(msg.into()))
}

/// Which kind of CRL is expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A complete CRL: no deltaCRLIndicator.
    Full,
    /// A delta CRL; with a base number, its BaseCRLNumber must equal it.
    Delta(Option<u64>),
}

/// What the CRL must say.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// Complete or delta.
    pub kind: Kind,
    /// The exact CRLNumber, when known.
    pub number: Option<u64>,
    /// The CRLNumber must be greater than this (the last one stored for the scope).
    pub previous: Option<u64>,
    /// The issuing distribution point URI; `None`: the extension must be absent.
    pub idp_uri: Option<&'a str>,
    /// Check that thisUpdate is not after this time (plus [`MAX_CLOCK_SKEW_SECS`]).
    pub now: Option<i64>,
}

/// What a CRL that passed says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlInfo {
    /// CRLNumber.
    pub number: u64,
    /// thisUpdate.
    pub this_update: i64,
    /// nextUpdate.
    pub next_update: i64,
    /// BaseCRLNumber, for a delta CRL.
    pub delta_base: Option<u64>,
    /// Entries listed.
    pub entries: usize,
}

/// One TLV: its tag, its content, and the whole encoding.
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
    whole: &'a [u8],
}

/// Reads one DER TLV off the front of `input`: single-octet tags, definite minimal lengths.
fn read_tlv<'a>(input: &mut &'a [u8]) -> Result<Tlv<'a>, LintError> {
    let all = *input;
    let (&tag, rest) = all.split_first().ok_or(LintError("truncated".into()))?;
    if tag & 0x1F == 0x1F {
        return fail("multi-octet tags are not used in CRLs");
    }
    let (&first, rest) = rest.split_first().ok_or(LintError("truncated".into()))?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7F) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return fail("bad or indefinite length");
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| a << 8 | b as usize);
        if rest[0] == 0 || len < 0x80 {
            return fail("length is not minimally encoded (BER, not DER)");
        }
        (len, &rest[n..])
    };
    if rest.len() < len {
        return fail("truncated");
    }
    let header = all.len() - rest.len();
    *input = &rest[len..];
    Ok(Tlv {
        tag,
        content: &rest[..len],
        whole: &all[..header + len],
    })
}

fn expect_tlv<'a>(input: &mut &'a [u8], tag: u8, what: &str) -> Result<Tlv<'a>, LintError> {
    let t = read_tlv(input).map_err(|e| LintError(format!("{what}: {e}")))?;
    if t.tag != tag {
        return fail(format!("{what}: tag 0x{:02X}, expected 0x{tag:02X}", t.tag));
    }
    Ok(t)
}

fn parse_time(t: &Tlv<'_>, what: &str) -> Result<i64, LintError> {
    x509_cert::time::Time::from_der(t.whole)
        .map(|t| t.to_unix_duration().as_secs() as i64)
        .map_err(|e| LintError(format!("{what}: {e}")))
}

/// A non-negative INTEGER that fits in u64, strictly DER.
fn parse_uint(content: &[u8], what: &str) -> Result<u64, LintError> {
    match content {
        [] => fail(format!("{what}: empty INTEGER")),
        [b, ..] if b & 0x80 != 0 => fail(format!("{what}: negative")),
        [0, b, ..] if b & 0x80 == 0 => fail(format!("{what}: not minimal")),
        _ => {
            let c = if content[0] == 0 && content.len() > 1 {
                &content[1..]
            } else {
                content
            };
            if c.len() > 8 {
                return fail(format!("{what}: larger than vigil's numbers"));
            }
            Ok(c.iter().fold(0u64, |a, &b| a << 8 | u64::from(b)))
        }
    }
}

/// The parts of a CRL, borrowed from its DER.
pub struct ParsedCrl<'a> {
    /// The TBSCertList TLV (what the signature covers).
    pub tbs: &'a [u8],
    /// `signatureAlgorithm` TLV.
    pub signature_algorithm: &'a [u8],
    /// `tbsCertList.signature` TLV.
    pub tbs_signature: &'a [u8],
    /// signatureValue bits.
    pub signature: &'a [u8],
    /// `issuer` TLV.
    pub issuer: &'a [u8],
    /// thisUpdate.
    pub this_update: i64,
    /// nextUpdate.
    pub next_update: Option<i64>,
    /// The content of revokedCertificates, when present.
    pub revoked: Option<&'a [u8]>,
    /// crlExtensions: (OID content octets, critical, extnValue content).
    pub extensions: Vec<(&'a [u8], bool, &'a [u8])>,
}

/// Splits a CRL into its parts (§5.1). Entries are not read: see [`entries`].
pub fn parse(der: &[u8]) -> Result<ParsedCrl<'_>, LintError> {
    let mut input = der;
    let outer = expect_tlv(&mut input, tag::SEQUENCE, "CertificateList")?;
    if !input.is_empty() {
        return fail("trailing bytes after the CertificateList");
    }
    let mut body = outer.content;
    let tbs = expect_tlv(&mut body, tag::SEQUENCE, "tbsCertList")?;
    let alg = expect_tlv(&mut body, tag::SEQUENCE, "signatureAlgorithm")?;
    let sig = expect_tlv(&mut body, tag::BIT_STRING, "signatureValue")?;
    if !body.is_empty() {
        return fail("CertificateList has extra fields");
    }
    let signature = match sig.content.split_first() {
        Some((0, bits)) => bits,
        _ => return fail("signatureValue has unused bits"),
    };
    let mut t = tbs.content;
    let version = expect_tlv(&mut t, tag::INTEGER, "version")?;
    if version.content != [1] {
        return fail("version is not v2 (§5.1.2.1)");
    }
    let tbs_signature = expect_tlv(&mut t, tag::SEQUENCE, "signature")?;
    let issuer = expect_tlv(&mut t, tag::SEQUENCE, "issuer")?;
    let this_update = read_tlv(&mut t)?;
    let this_update = parse_time(&this_update, "thisUpdate")?;
    let mut next_update = None;
    let mut revoked = None;
    let mut extensions = Vec::new();
    while !t.is_empty() {
        let f = read_tlv(&mut t)?;
        match f.tag {
            tag::UTC_TIME | tag::GENERALIZED_TIME if next_update.is_none() && revoked.is_none() => {
                next_update = Some(parse_time(&f, "nextUpdate")?);
            }
            tag::SEQUENCE if revoked.is_none() && extensions.is_empty() => {
                revoked = Some(f.content);
            }
            0xA0 if t.is_empty() => {
                let mut e = f.content;
                let seq = expect_tlv(&mut e, tag::SEQUENCE, "crlExtensions")?;
                if !e.is_empty() {
                    return fail("crlExtensions: trailing bytes");
                }
                extensions = parse_extensions(seq.content, "crlExtensions")?;
                if extensions.is_empty() {
                    return fail("crlExtensions is empty");
                }
            }
            other => {
                return fail(format!(
                    "tbsCertList: unexpected field with tag 0x{other:02X}"
                ))
            }
        }
    }
    Ok(ParsedCrl {
        tbs: tbs.whole,
        signature_algorithm: alg.whole,
        tbs_signature: tbs_signature.whole,
        signature,
        issuer: issuer.whole,
        this_update,
        next_update,
        revoked,
        extensions,
    })
}

type RawExtension<'a> = (&'a [u8], bool, &'a [u8]);

fn parse_extensions<'a>(mut seq: &'a [u8], what: &str) -> Result<Vec<RawExtension<'a>>, LintError> {
    let mut out = Vec::new();
    while !seq.is_empty() {
        let ext = expect_tlv(&mut seq, tag::SEQUENCE, what)?;
        let mut e = ext.content;
        let oid = expect_tlv(&mut e, tag::OID, what)?;
        let mut next = read_tlv(&mut e)?;
        let mut critical = false;
        if next.tag == tag::BOOLEAN {
            if next.content != [0xFF] {
                return fail(format!(
                    "{what}: critical must be TRUE when present (DER omits DEFAULT FALSE)"
                ));
            }
            critical = true;
            next = read_tlv(&mut e)?;
        }
        if next.tag != tag::OCTET_STRING || !e.is_empty() {
            return fail(format!("{what}: bad extnValue"));
        }
        if out.iter().any(|(o, _, _)| *o == oid.content) {
            return fail(format!("{what}: an extension appears twice"));
        }
        out.push((oid.content, critical, next.content));
    }
    Ok(out)
}

/// Reads the revoked entries of a parsed CRL in order, calling `f` for each. Stops at the
/// first malformed entry.
pub fn entries(
    revoked: &[u8],
    mut f: impl FnMut(Entry) -> Result<(), LintError>,
) -> Result<(), LintError> {
    let mut input = revoked;
    while !input.is_empty() {
        let entry = expect_tlv(&mut input, tag::SEQUENCE, "revokedCertificates entry")?;
        let mut e = entry.content;
        let serial = expect_tlv(&mut e, tag::INTEGER, "userCertificate")?;
        let serial = Serial::from_der_content(serial.content)
            .map_err(|x| LintError(format!("userCertificate: {x}")))?;
        let time = read_tlv(&mut e)?;
        let time = parse_time(&time, "revocationDate")?;
        let mut reason = RevocationReason::Unspecified;
        if !e.is_empty() {
            let exts = expect_tlv(&mut e, tag::SEQUENCE, "crlEntryExtensions")?;
            if !e.is_empty() {
                return fail(format!("entry {serial}: trailing bytes"));
            }
            let exts = parse_extensions(exts.content, "crlEntryExtensions")?;
            if exts.is_empty() {
                return fail(format!("entry {serial}: empty crlEntryExtensions"));
            }
            for (oid, critical, value) in exts {
                if oid == [0x55, 0x1D, 0x15] {
                    if critical {
                        return fail(format!("entry {serial}: reasonCode is critical"));
                    }
                    let code = match value {
                        [tag::ENUMERATED, 1, c] => *c,
                        _ => return fail(format!("entry {serial}: bad reasonCode")),
                    };
                    reason = match RevocationReason::from_crl_code(code) {
                        Some(RevocationReason::Unspecified) => {
                            return fail(format!(
                                "entry {serial}: reasonCode unspecified must be omitted (§5.3.1)"
                            ))
                        }
                        Some(r) => r,
                        None => {
                            return fail(format!(
                                "entry {serial}: reasonCode {code} is not allowed"
                            ))
                        }
                    };
                } else if critical {
                    return fail(format!("entry {serial}: unknown critical entry extension"));
                }
            }
        }
        f(Entry {
            serial,
            time,
            reason,
        })?;
    }
    Ok(())
}

/// The CRLNumber of a CRL, without checking anything else.
pub fn number_of(der: &[u8]) -> Result<u64, LintError> {
    let p = parse(der)?;
    for (oid, _, value) in &p.extensions {
        if *oid == [0x55, 0x1D, 0x14] {
            return match value {
                [tag::INTEGER, len, rest @ ..] if *len as usize == rest.len() => {
                    parse_uint(rest, "cRLNumber")
                }
                _ => fail("cRLNumber: bad INTEGER"),
            };
        }
    }
    fail("cRLNumber is absent")
}

/// Every entry of a CRL, in order (for tests and for delta CRLs' base).
pub fn read_entries(der: &[u8]) -> Result<Vec<Entry>, LintError> {
    let p = parse(der)?;
    let mut out = Vec::new();
    if let Some(r) = p.revoked {
        entries(r, |e| {
            out.push(e);
            Ok(())
        })?;
    }
    Ok(out)
}

/// Checks `der` against every rule in the module documentation.
pub fn lint(der: &[u8], issuer: &CrlIssuer, expect: &Expect<'_>) -> Result<CrlInfo, LintError> {
    let p = parse(der)?;
    if p.signature_algorithm != p.tbs_signature {
        return fail("signature and signatureAlgorithm differ (§5.1.1.2)");
    }
    if p.issuer != issuer.subject_der.as_slice() {
        return fail("issuer is not byte-identical to the CA subject (§5.1.2.3)");
    }
    let alg = spki::AlgorithmIdentifierOwned::from_der(p.signature_algorithm)
        .map_err(|e| LintError(format!("signatureAlgorithm: {e}")))?;
    match verify_signature(&issuer.spki, &alg, p.tbs, p.signature) {
        Ok(true) => {}
        Ok(false) => return fail("the signature does not verify with the issuer's key"),
        Err(e) => return fail(e),
    }
    if let Some(now) = expect.now {
        if p.this_update > now + MAX_CLOCK_SKEW_SECS {
            return fail("thisUpdate is in the future");
        }
    }
    let Some(next_update) = p.next_update else {
        return fail("nextUpdate is absent (§5.1.2.5 and BR §7.2.2 require it)");
    };
    if next_update <= p.this_update || next_update - p.this_update > MAX_VALIDITY_SECS {
        return fail("nextUpdate is not within 10 days after thisUpdate (BR §4.9.7)");
    }

    let mut number = None;
    let mut aki_ok = false;
    let mut delta_base = None;
    let mut idp = None;
    for (oid, critical, value) in &p.extensions {
        match *oid {
            [0x55, 0x1D, 0x23] => {
                let aki = AuthorityKeyIdentifier::from_der(value)
                    .map_err(|e| LintError(format!("authorityKeyIdentifier: {e}")))?;
                aki_ok = !*critical
                    && aki.key_identifier.as_ref().map(|k| k.as_bytes())
                        == Some(issuer.key_identifier.as_slice());
            }
            [0x55, 0x1D, 0x14] => {
                if *critical {
                    return fail("cRLNumber is critical (§5.2.3)");
                }
                match value {
                    [tag::INTEGER, len, rest @ ..] if *len as usize == rest.len() => {
                        number = Some(parse_uint(rest, "cRLNumber")?);
                    }
                    _ => return fail("cRLNumber: bad INTEGER"),
                }
            }
            [0x55, 0x1D, 0x1B] => {
                if !*critical {
                    return fail("deltaCRLIndicator is not critical (§5.2.4)");
                }
                match value {
                    [tag::INTEGER, len, rest @ ..] if *len as usize == rest.len() => {
                        delta_base = Some(parse_uint(rest, "BaseCRLNumber")?);
                    }
                    _ => return fail("deltaCRLIndicator: bad INTEGER"),
                }
            }
            [0x55, 0x1D, 0x1C] => {
                if !*critical {
                    return fail("issuingDistributionPoint is not critical (§5.2.5)");
                }
                idp = Some(
                    IssuingDistributionPoint::from_der(value)
                        .map_err(|e| LintError(format!("issuingDistributionPoint: {e}")))?,
                );
            }
            [0x55, 0x1D, 0x2E] if *critical => {
                return fail("freshestCRL is critical (§5.2.6)");
            }
            _ if *critical => return fail("unknown critical CRL extension"),
            _ => {}
        }
    }
    if !aki_ok {
        return fail("authorityKeyIdentifier is absent, critical or names another key (§5.2.1)");
    }
    let Some(number) = number else {
        return fail("cRLNumber is absent (§5.2.3)");
    };
    if let Some(n) = expect.number {
        if n != number {
            return fail(format!("cRLNumber is {number}, expected {n}"));
        }
    }
    if let Some(prev) = expect.previous {
        if number <= prev {
            return fail(format!(
                "cRLNumber {number} does not increase past {prev} (§5.2.3)"
            ));
        }
    }
    match (expect.kind, delta_base) {
        (Kind::Full, None) | (Kind::Delta(None), Some(_)) => {}
        (Kind::Delta(Some(b)), Some(got)) if b == got => {}
        (Kind::Full, Some(_)) => return fail("a complete CRL carries deltaCRLIndicator"),
        (Kind::Delta(_), None) => return fail("a delta CRL lacks deltaCRLIndicator (§5.2.4)"),
        (Kind::Delta(Some(b)), Some(got)) => {
            return fail(format!("BaseCRLNumber is {got}, expected {b}"))
        }
    }
    if let Some(base) = delta_base {
        if base >= number {
            return fail("BaseCRLNumber is not below the delta's own number (§5.2.4)");
        }
    }
    check_idp(idp.as_ref(), expect.idp_uri)?;

    let mut count = 0usize;
    if let Some(revoked) = p.revoked {
        if revoked.is_empty() {
            return fail("revokedCertificates is present but empty (§5.1.2.6)");
        }
        let mut last: Option<Serial> = None;
        let is_delta = delta_base.is_some();
        entries(revoked, |e| {
            if last.is_some_and(|l| l >= e.serial) {
                return fail(format!(
                    "serial {} is out of order or listed twice",
                    e.serial
                ));
            }
            if e.reason == RevocationReason::RemoveFromCrl && !is_delta {
                return fail(format!(
                    "entry {}: removeFromCRL outside a delta CRL",
                    e.serial
                ));
            }
            let hold_reason = matches!(
                e.reason,
                RevocationReason::CertificateHold | RevocationReason::RemoveFromCrl
            );
            if hold_reason && !issuer.allow_hold {
                return fail(format!(
                    "entry {}: {} on the CRL of an issuer that does not allow holds",
                    e.serial,
                    e.reason.name()
                ));
            }
            last = Some(e.serial);
            count += 1;
            Ok(())
        })?;
    }
    Ok(CrlInfo {
        number,
        this_update: p.this_update,
        next_update,
        delta_base,
        entries: count,
    })
}

fn check_idp(idp: Option<&IssuingDistributionPoint>, uri: Option<&str>) -> Result<(), LintError> {
    match (idp, uri) {
        (None, None) => Ok(()),
        (Some(_), None) => fail("issuingDistributionPoint present on an unsharded CRL"),
        (None, Some(_)) => fail("issuingDistributionPoint absent on a sharded CRL (§5.2.5)"),
        (Some(idp), Some(uri)) => {
            if idp.only_some_reasons.is_some()
                || idp.indirect_crl
                || idp.only_contains_attribute_certs
            {
                return fail("issuingDistributionPoint narrows the scope unexpectedly");
            }
            let names = match &idp.distribution_point {
                Some(DistributionPointName::FullName(names)) => names,
                _ => return fail("issuingDistributionPoint has no fullName"),
            };
            let ok = names.len() == 1
                && matches!(&names[0], GeneralName::UniformResourceIdentifier(u) if u.as_str() == uri);
            if ok {
                Ok(())
            } else {
                fail(format!(
                    "issuingDistributionPoint does not name exactly {uri}"
                ))
            }
        }
    }
}

/// Verifies `signature` over `message` with `spki` under `algorithm` (ECDSA P-256/P-384 with
/// SHA-256/384, RSA PKCS#1 v1.5 with SHA-256/384/512). Unknown combinations are an error.
pub fn verify_signature(
    spki: &spki::SubjectPublicKeyInfoOwned,
    algorithm: &spki::AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> Result<bool, String> {
    use const_oid::db::rfc5912;
    use ring::signature as sig;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<const_oid::ObjectIdentifier>().ok());
    let p256 = curve == Some(rfc5912::SECP_256_R_1);
    let p384 = curve == Some(rfc5912::SECP_384_R_1);
    let rsa = spki.algorithm.oid == rfc5912::RSA_ENCRYPTION;
    let oid = algorithm.oid;
    let alg: &dyn sig::VerificationAlgorithm = match oid {
        o if o == rfc5912::ECDSA_WITH_SHA_256 && p256 => &sig::ECDSA_P256_SHA256_ASN1,
        o if o == rfc5912::ECDSA_WITH_SHA_384 && p256 => &sig::ECDSA_P256_SHA384_ASN1,
        o if o == rfc5912::ECDSA_WITH_SHA_256 && p384 => &sig::ECDSA_P384_SHA256_ASN1,
        o if o == rfc5912::ECDSA_WITH_SHA_384 && p384 => &sig::ECDSA_P384_SHA384_ASN1,
        o if o == rfc5912::SHA_256_WITH_RSA_ENCRYPTION && rsa => &sig::RSA_PKCS1_2048_8192_SHA256,
        o if o == rfc5912::SHA_384_WITH_RSA_ENCRYPTION && rsa => &sig::RSA_PKCS1_2048_8192_SHA384,
        o if o == rfc5912::SHA_512_WITH_RSA_ENCRYPTION && rsa => &sig::RSA_PKCS1_2048_8192_SHA512,
        other => {
            return Err(format!(
                "unsupported signature algorithm {other} for this key"
            ))
        }
    };
    Ok(
        sig::UnparsedPublicKey::new(alg, spki.subject_public_key.raw_bytes())
            .verify(message, signature)
            .is_ok(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::build::{tbs_cert_list, CrlSpec};
    use super::super::testutil::serial;
    use super::*;
    use crate::testkit::{ca, sign, signed_crl as build};

    const T: i64 = 1_700_000_000;

    fn spec<'a>() -> CrlSpec<'a> {
        CrlSpec {
            number: 42,
            this_update: T,
            next_update: T + 86_400,
            idp_uri: None,
            delta_base: None,
            freshest_uri: None,
        }
    }

    fn expect<'a>() -> Expect<'a> {
        Expect {
            kind: Kind::Full,
            number: Some(42),
            previous: Some(41),
            idp_uri: None,
            now: Some(T),
        }
    }

    fn entries_n(n: u64) -> Vec<Entry> {
        (1..=n)
            .map(|i| Entry {
                serial: serial(i * 1000 + 1),
                time: T - 10,
                reason: if i % 2 == 0 {
                    RevocationReason::KeyCompromise
                } else {
                    RevocationReason::Unspecified
                },
            })
            .collect()
    }

    #[test]
    fn a_good_crl_passes_and_reads_back() {
        let (cacert, signer) = ca();
        let issuer = CrlIssuer::from_certificate("t", &cacert).expect("issuer");
        let mut es = entries_n(10);
        let der = build(&issuer, &spec(), &mut es, &signer).expect("build");
        let info = lint(&der, &issuer, &expect()).expect("lint");
        assert_eq!(info.number, 42);
        assert_eq!(info.entries, 10);
        assert_eq!(info.next_update, T + 86_400);
        assert_eq!(read_entries(&der).expect("entries"), es);
    }

    #[test]
    fn each_rule_is_enforced() {
        let (cacert, signer) = ca();
        let issuer = CrlIssuer::from_certificate("t", &cacert).expect("issuer");
        let der = build(&issuer, &spec(), &mut entries_n(3), &signer).expect("build");
        let no_prev = Expect {
            previous: Some(42),
            ..expect()
        };
        assert!(
            lint(&der, &issuer, &no_prev).is_err(),
            "number must increase"
        );
        let idp = Expect {
            idp_uri: Some("http://x/crl/t/0.crl"),
            ..expect()
        };
        assert!(lint(&der, &issuer, &idp).is_err(), "IDP expected");
        let delta = Expect {
            kind: Kind::Delta(None),
            ..expect()
        };
        assert!(
            lint(&der, &issuer, &delta).is_err(),
            "delta indicator expected"
        );
        let past = Expect {
            now: Some(T - 3600),
            ..expect()
        };
        assert!(lint(&der, &issuer, &past).is_err(), "future thisUpdate");

        // another CA's key
        let (other, _) = ca();
        let mut wrong = CrlIssuer::from_certificate("t", &other).expect("issuer");
        wrong.subject_der = issuer.subject_der.clone();
        wrong.key_identifier = issuer.key_identifier.clone();
        let e = lint(&der, &wrong, &expect()).expect_err("bad signature");
        assert!(e.0.contains("signature"), "{e}");

        // a flipped bit anywhere in the signed part
        let mut bad = der.clone();
        let at = bad.len() / 2;
        bad[at] ^= 1;
        assert!(lint(&bad, &issuer, &expect()).is_err());
        // trailing byte
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(lint(&trailing, &issuer, &expect()).is_err());
        // truncation never panics
        for cut in 0..der.len() {
            assert!(parse(&der[..cut]).is_err() || cut == der.len());
        }
    }

    #[test]
    fn hold_entries_only_for_issuers_that_allow_holds() {
        let (cacert, signer) = ca();
        let strict = CrlIssuer::from_certificate("t", &cacert).expect("issuer");
        let holding = CrlIssuer {
            allow_hold: true,
            ..strict.clone()
        };
        let mut es = entries_n(3);
        es[1].reason = RevocationReason::CertificateHold;
        let der = build(&holding, &spec(), &mut es, &signer).expect("build");
        assert_eq!(lint(&der, &holding, &expect()).expect("lint").entries, 3);
        assert_eq!(read_entries(&der).expect("entries"), es);
        let e = lint(&der, &strict, &expect()).expect_err("hold refused");
        assert!(e.0.contains("certificateHold"), "{e}");

        // removeFromCRL: only in a delta, only where holds are allowed
        es[1].reason = RevocationReason::RemoveFromCrl;
        let full = build(&holding, &spec(), &mut es.clone(), &signer).expect("build");
        assert!(lint(&full, &holding, &expect()).is_err());
        let s = CrlSpec {
            delta_base: Some(40),
            ..spec()
        };
        let delta = build(&holding, &s, &mut es, &signer).expect("build");
        let d = Expect {
            kind: Kind::Delta(Some(40)),
            ..expect()
        };
        assert!(lint(&delta, &holding, &d).is_ok());
        assert!(lint(&delta, &strict, &d).is_err());
    }

    #[test]
    fn sharded_and_delta_extensions() {
        let (cacert, signer) = ca();
        let issuer = CrlIssuer::from_certificate("t", &cacert).expect("issuer");
        let uri = "http://vigil.test/crl/t/1.crl";
        let s = CrlSpec {
            idp_uri: Some(uri),
            delta_base: Some(40),
            ..spec()
        };
        let der = build(&issuer, &s, &mut entries_n(2), &signer).expect("build");
        let e = Expect {
            kind: Kind::Delta(Some(40)),
            idp_uri: Some(uri),
            ..expect()
        };
        let info = lint(&der, &issuer, &e).expect("lint");
        assert_eq!(info.delta_base, Some(40));
        let wrong_uri = Expect {
            idp_uri: Some("http://vigil.test/crl/t/2.crl"),
            ..e
        };
        assert!(lint(&der, &issuer, &wrong_uri).is_err());
        let wrong_base = Expect {
            kind: Kind::Delta(Some(39)),
            ..e
        };
        assert!(lint(&der, &issuer, &wrong_base).is_err());
    }

    /// Hand-assembles a CRL around a TBS with a duplicated entry: lint refuses it.
    #[test]
    fn duplicates_are_refused() {
        let (cacert, signer) = ca();
        let issuer = CrlIssuer::from_certificate("t", &cacert).expect("issuer");
        let e = Entry {
            serial: serial(9),
            time: T,
            reason: RevocationReason::Superseded,
        };
        let alg = crate::alg::SignatureAlgorithm::EcdsaP256Sha256.algorithm_identifier_der();
        let tbs = tbs_cert_list(&issuer, &spec(), &alg, &[e, e]).expect("tbs");
        let sig = sign(&signer, &tbs);
        let mut body = tbs.clone();
        body.extend_from_slice(&alg);
        let mut bits = vec![0];
        bits.extend_from_slice(&sig);
        super::super::der::write_tlv(&mut body, tag::BIT_STRING, &bits);
        let der = super::super::der::tlv(tag::SEQUENCE, &body);
        let err = lint(&der, &issuer, &expect()).expect_err("duplicate");
        assert!(err.0.contains("twice"), "{err}");
    }
}
