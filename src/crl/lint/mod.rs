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

mod parse;
mod verify;

use der::Decode;
use x509_cert::ext::pkix::AuthorityKeyIdentifier;
use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};

pub use parse::{ParsedCrl, entries, number_of, parse, read_entries};
pub use verify::{UnsupportedAlgorithm, verify_signature};

use super::der::tag;
use super::{CrlIssuer, MAX_VALIDITY_SECS};
use crate::status::{RevocationReason, Serial};
use parse::parse_uint;

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
        Err(e) => return fail(e.to_string()),
    }
    if let Some(now) = expect.now
        && p.this_update > now + MAX_CLOCK_SKEW_SECS
    {
        return fail("thisUpdate is in the future");
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
    if let Some(n) = expect.number
        && n != number
    {
        return fail(format!("cRLNumber is {number}, expected {n}"));
    }
    if let Some(prev) = expect.previous
        && number <= prev
    {
        return fail(format!(
            "cRLNumber {number} does not increase past {prev} (§5.2.3)"
        ));
    }
    match (expect.kind, delta_base) {
        (Kind::Full, None) | (Kind::Delta(None), Some(_)) => {}
        (Kind::Delta(Some(b)), Some(got)) if b == got => {}
        (Kind::Full, Some(_)) => return fail("a complete CRL carries deltaCRLIndicator"),
        (Kind::Delta(_), None) => return fail("a delta CRL lacks deltaCRLIndicator (§5.2.4)"),
        (Kind::Delta(Some(b)), Some(got)) => {
            return fail(format!("BaseCRLNumber is {got}, expected {b}"));
        }
    }
    if let Some(base) = delta_base
        && base >= number
    {
        return fail("BaseCRLNumber is not below the delta's own number (§5.2.4)");
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

#[cfg(test)]
mod tests {
    use super::super::build::{CrlSpec, tbs_cert_list};
    use super::super::testutil::serial;
    use super::*;
    use crate::crl::Entry;
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
