//! The DER walk under the lint: TLVs, the parts of a CertificateList (RFC 5280 §5.1) borrowed
//! from its bytes, and its entries one at a time, with no allocation per entry.

use der::Decode;

use super::{LintError, fail};
use crate::crl::Entry;
use crate::crl::der::tag;
use crate::status::{RevocationReason, Serial};

/// One TLV: its tag, its content, and the whole encoding.
pub(super) struct Tlv<'a> {
    pub(super) tag: u8,
    pub(super) content: &'a [u8],
    pub(super) whole: &'a [u8],
}

/// Reads one DER TLV off the front of `input`: single-octet tags, definite minimal lengths.
pub(super) fn read_tlv<'a>(input: &mut &'a [u8]) -> Result<Tlv<'a>, LintError> {
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

pub(super) fn expect_tlv<'a>(
    input: &mut &'a [u8],
    tag: u8,
    what: &str,
) -> Result<Tlv<'a>, LintError> {
    let t = read_tlv(input).map_err(|e| LintError(format!("{what}: {e}")))?;
    if t.tag != tag {
        return fail(format!("{what}: tag 0x{:02X}, expected 0x{tag:02X}", t.tag));
    }
    Ok(t)
}

pub(super) fn parse_time(t: &Tlv<'_>, what: &str) -> Result<i64, LintError> {
    x509_cert::time::Time::from_der(t.whole)
        .map(|t| t.to_unix_duration().as_secs() as i64)
        .map_err(|e| LintError(format!("{what}: {e}")))
}

/// A non-negative INTEGER that fits in u64, strictly DER.
pub(super) fn parse_uint(content: &[u8], what: &str) -> Result<u64, LintError> {
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
                ));
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

pub(super) fn parse_extensions<'a>(
    mut seq: &'a [u8],
    what: &str,
) -> Result<Vec<RawExtension<'a>>, LintError> {
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
                            ));
                        }
                        Some(r) => r,
                        None => {
                            return fail(format!(
                                "entry {serial}: reasonCode {code} is not allowed"
                            ));
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
