//! `[[issuer]]`: the CAs answered for, where each one's OCSP and CRL signing keys are, and its
//! own CRL settings merged over `[crl]`.

use std::path::PathBuf;

use super::crl::{self, CrlConfig};
use super::error::{ConfigError, invalid};
use super::hsm::HsmConfig;
use super::{file, valid_name};
use crate::status::UnissuedPolicy;

/// `[[issuer]]`
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Short name used in CLI commands, metrics labels and CRL paths (1-64 of `[A-Za-z0-9_-]`).
    pub name: String,
    /// The CA certificate (PEM).
    pub certificate: PathBuf,
    /// Delegated responder certificate (PEM). Absent: the CA key signs responses itself.
    pub responder_certificate: Option<PathBuf>,
    /// The key that signs OCSP responses (the responder's, or the CA's): `responder_key` or
    /// `signer`.
    pub ocsp_key: KeySource,
    /// Answer for serials with no issuance record.
    pub unissued: UnissuedPolicy,
    /// Allow certificates of this issuer to be put on hold (off by default: the Baseline
    /// Requirements forbid holds for TLS issuers).
    pub allow_hold: bool,
    /// The CA key that signs this issuer's CRLs: `crl_key` or `crl_signer`. Absent: this node
    /// does not publish CRLs for the issuer (it still serves those published elsewhere).
    pub crl_key: Option<KeySource>,
    /// This issuer's CRL settings: `[crl]` with its own `crl = { ... }` over it, validated.
    pub crl: CrlConfig,
}

/// Where a signing key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A PEM private key file (`responder_key`, `crl_key`).
    File(PathBuf),
    /// A pool of `[[hsm]]` keys (`signer`, `crl_signer`).
    Hsm(IssuerSignerConfig),
}

impl KeySource {
    /// The key file, when the key is one.
    pub fn file(&self) -> Option<&std::path::Path> {
        match self {
            KeySource::File(p) => Some(p),
            KeySource::Hsm(_) => None,
        }
    }

    /// The HSM pool, when the key is in HSMs.
    pub fn hsm(&self) -> Option<&IssuerSignerConfig> {
        match self {
            KeySource::Hsm(sc) => Some(sc),
            KeySource::File(_) => None,
        }
    }
}

/// `issuer.signer` / `issuer.crl_signer`: the HSM pool that holds an issuer's signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerSignerConfig {
    /// Names of `[[hsm]]` entries holding the same key, in order of preference (at least one,
    /// each configured, none twice).
    pub hsm: Vec<String>,
    /// LABS ONLY: a PEM file with the same private key, used when no HSM can sign. It puts the
    /// key on disk, which defeats the HSM.
    pub danger_software_fallback: Option<PathBuf>,
}

// === impl conversion ===

/// Checks and converts the issuers; `global` is `[crl]` and `hsms` the (converted)
/// `[[hsm]]`s. The merged CRL settings are checked by the caller, after `[crl]`.
pub(super) fn issuers(
    raw: Vec<file::Issuer>,
    global: &CrlConfig,
    hsms: &[HsmConfig],
) -> Result<Vec<IssuerConfig>, ConfigError> {
    if raw.is_empty() {
        return invalid("issuer", "at least one [[issuer]] is required");
    }
    let mut out: Vec<IssuerConfig> = Vec::with_capacity(raw.len());
    for (i, iss) in raw.into_iter().enumerate() {
        if !valid_name(&iss.name) {
            return invalid(
                format!("issuer[{i}].name"),
                format!("{:?} must be 1-64 of [A-Za-z0-9_-]", iss.name),
            );
        }
        if out.iter().any(|o| o.name == iss.name) {
            return invalid(
                format!("issuer[{i}].name"),
                format!("{:?} is used twice", iss.name),
            );
        }
        let at = format!("issuer[{i}] ({})", iss.name);
        let ocsp_key = match (iss.responder_key, iss.signer) {
            (Some(k), None) => KeySource::File(k),
            (None, Some(sc)) => KeySource::Hsm(signer(&format!("issuer[{i}].signer"), sc, hsms)?),
            (Some(_), Some(_)) => {
                return invalid(at, "set either responder_key or signer, not both");
            }
            (None, None) => return invalid(at, "responder_key or signer is required"),
        };
        let crl_key = match (iss.crl_key, iss.crl_signer) {
            (Some(k), None) => Some(KeySource::File(k)),
            (None, Some(sc)) => Some(KeySource::Hsm(signer(
                &format!("issuer[{i}].crl_signer"),
                sc,
                hsms,
            )?)),
            (Some(_), Some(_)) => return invalid(at, "set either crl_key or crl_signer, not both"),
            (None, None) => None,
        };
        out.push(IssuerConfig {
            name: iss.name,
            certificate: iss.certificate,
            responder_certificate: iss.responder_certificate,
            ocsp_key,
            unissued: match iss.unissued {
                file::Unissued::Unknown => UnissuedPolicy::Unknown,
                file::Unissued::Unauthorized => UnissuedPolicy::Unauthorized,
                file::Unissued::Revoked => UnissuedPolicy::Revoked,
            },
            allow_hold: iss.allow_hold,
            crl_key,
            crl: crl::merged(global, iss.crl),
        });
    }
    Ok(out)
}

/// `at.hsm` names one or more `[[hsm]]` entries, each once.
fn signer(
    at: &str,
    sc: file::Signer,
    hsms: &[HsmConfig],
) -> Result<IssuerSignerConfig, ConfigError> {
    if sc.hsm.is_empty() {
        return invalid(format!("{at}.hsm"), "name at least one [[hsm]]");
    }
    for (j, name) in sc.hsm.iter().enumerate() {
        if !hsms.iter().any(|h| &h.name == name) {
            return invalid(format!("{at}.hsm"), format!("no [[hsm]] is named {name:?}"));
        }
        if sc.hsm[..j].contains(name) {
            return invalid(format!("{at}.hsm"), format!("{name:?} is listed twice"));
        }
    }
    Ok(IssuerSignerConfig {
        hsm: sc.hsm,
        danger_software_fallback: sc.danger_software_fallback,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::super::tests::ISSUER;
    use super::*;

    #[test]
    fn issuers_need_one_key_and_unique_names() {
        let c = Config::parse(&format!(
            "{ISSUER}unissued = \"revoked\"\nallow_hold = true\n"
        ))
        .expect("valid");
        assert_eq!(c.issuers[0].ocsp_key, KeySource::File("k.pem".into()));
        assert_eq!(c.issuers[0].unissued, UnissuedPolicy::Revoked);
        assert!(c.allows_holds("a") && !c.allows_holds("b"));
        assert!(c.issuers[0].crl_key.is_none());
        for (toml, want) in [
            ("", "issuer: at least one [[issuer]] is required"),
            (
                "[[issuer]]\nname = \"a b\"\ncertificate = \"c\"\nresponder_key = \"k\"\n",
                "issuer[0].name",
            ),
            (
                &format!("{ISSUER}{ISSUER}"),
                "issuer[1].name: \"a\" is used twice",
            ),
            (
                &format!("{ISSUER}crl_key = \"a\"\n[[issuer]]\nname = \"a\"\n"),
                "missing field",
            ),
        ] {
            let e = Config::parse(toml).expect_err(want).to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
