//! `[[hsm]]` and `[hsm_pool]`: PKCS#11 keys and how their pools probe, fail over and reconnect.
//! Every "exactly one of" pair of the file is an enum here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::error::{ConfigError, invalid};
use super::file;
use super::valid_name;
use crate::limits;

/// `[[hsm]]`: one signing key on one PKCS#11 token.
#[derive(Debug, Clone)]
pub struct HsmConfig {
    /// Name used by `issuer.signer.hsm`, in logs, and as the `hsm` metrics label.
    pub name: String,
    /// The PKCS#11 module: the vendor library, `libsofthsm2.so`, or `p11-kit-client.so` for
    /// a token behind `p11-kit server`.
    pub module: PathBuf,
    /// Environment of the entry's PKCS#11 host process (on top of vigil's, set when it is
    /// started), e.g. `{ P11_KIT_SERVER_ADDRESS = "unix:path=/run/hsm1.sock" }`.
    pub module_env: BTreeMap<String, String>,
    /// The token (`token_label` or `slot`).
    pub token: TokenSelector,
    /// The private key (`key_label`, `key_id`, or both).
    pub key: KeySelector,
    /// Where the user PIN is read from (`pin_file` or `pin_env`).
    pub pin: PinSource,
    /// Most signing sessions open on this token at once (1 ..= 64).
    pub sessions: usize,
    /// How RSA keys sign.
    pub rsa_mechanism: HsmRsaMechanism,
}

/// Which token: `token_label` or `slot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token whose label is this.
    Label(String),
    /// The slot with this id.
    Slot(u64),
}

/// Which private key: by CKA_LABEL, CKA_ID (parsed from hex), or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySelector {
    /// `key_label` only.
    Label(String),
    /// `key_id` only.
    Id(Vec<u8>),
    /// Both, and the key must match both.
    LabelAndId(String, Vec<u8>),
}

impl KeySelector {
    /// The CKA_LABEL, when given.
    pub fn label(&self) -> Option<&str> {
        match self {
            KeySelector::Label(l) | KeySelector::LabelAndId(l, _) => Some(l),
            KeySelector::Id(_) => None,
        }
    }

    /// The CKA_ID, when given.
    pub fn id(&self) -> Option<&[u8]> {
        match self {
            KeySelector::Id(id) | KeySelector::LabelAndId(_, id) => Some(id),
            KeySelector::Label(_) => None,
        }
    }
}

/// Where the user PIN comes from: `pin_file` or `pin_env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// A file holding the PIN (one trailing newline is ignored).
    File(PathBuf),
    /// The name of an environment variable holding the PIN (not empty).
    Env(String),
}

/// `hsm.rsa_mechanism`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HsmRsaMechanism {
    /// `CKM_SHA256_RSA_PKCS` when the token lists it, else `CKM_RSA_PKCS` over a DigestInfo.
    #[default]
    Auto,
    /// `CKM_SHA256_RSA_PKCS`.
    Sha256RsaPkcs,
    /// `CKM_RSA_PKCS` over a SHA-256 DigestInfo made by vigil.
    RsaPkcs,
}

/// `[hsm_pool]`
#[derive(Debug, Clone)]
pub struct HsmPoolConfig {
    /// Time between health probes (a verified test signature) of an HSM in service (≥ 100ms).
    pub probe_interval: Duration,
    /// Failed signatures in a row that take an HSM out of service (≥ 1).
    pub breaker_failures: u32,
    /// First wait before reconnecting an HSM out of service; doubles per failed attempt.
    pub reconnect_backoff_min: Duration,
    /// Longest wait between reconnection attempts (≥ `reconnect_backoff_min`).
    pub reconnect_backoff_max: Duration,
    /// How long a signature waits for a session when every HSM in service is busy (≤ 60s).
    pub session_wait: Duration,
    /// How long one HSM may take to sign before the signature fails over to the next HSM and
    /// this one is taken out of service (10ms ..= 60s).
    pub sign_timeout: Duration,
    /// `/readyz` answers 503 (not just "degraded") while an issuer has no HSM in service.
    pub readiness_requires_signer: bool,
}

// === impl conversion ===

pub(super) fn hsms(raw: Vec<file::Hsm>) -> Result<Vec<HsmConfig>, ConfigError> {
    let mut out: Vec<HsmConfig> = Vec::with_capacity(raw.len());
    for (i, h) in raw.into_iter().enumerate() {
        if !valid_name(&h.name) {
            return invalid(
                format!("hsm[{i}].name"),
                format!("{:?} must be 1-64 of [A-Za-z0-9_-]", h.name),
            );
        }
        if out.iter().any(|o| o.name == h.name) {
            return invalid(
                format!("hsm[{i}].name"),
                format!("{:?} is used twice", h.name),
            );
        }
        out.push(hsm(&format!("hsm[{i}] ({})", h.name), h)?);
    }
    Ok(out)
}

fn hsm(at: &str, h: file::Hsm) -> Result<HsmConfig, ConfigError> {
    if h.module.as_os_str().is_empty() {
        return invalid(format!("{at}.module"), "required");
    }
    for k in h.module_env.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return invalid(
                format!("{at}.module_env"),
                format!("{k:?} is not a variable name"),
            );
        }
    }
    let token = match (h.token_label, h.slot) {
        (Some(l), None) => TokenSelector::Label(l),
        (None, Some(s)) => TokenSelector::Slot(s),
        _ => return invalid(at, "set exactly one of token_label and slot"),
    };
    let id = match &h.key_id {
        Some(id) => Some(crate::hex::parse(id).ok_or_else(|| ConfigError::Invalid {
            key: format!("{at}.key_id"),
            reason: format!("{id:?} is not hex (e.g. \"01\" or \"a1:b2\")"),
        })?),
        None => None,
    };
    let key = match (h.key_label, id) {
        (Some(l), None) => KeySelector::Label(l),
        (None, Some(id)) => KeySelector::Id(id),
        (Some(l), Some(id)) => KeySelector::LabelAndId(l, id),
        (None, None) => return invalid(at, "set key_label, key_id, or both"),
    };
    let pin = match (h.pin_file, h.pin_env) {
        (Some(f), None) => PinSource::File(f),
        (None, Some(v)) if !v.is_empty() => PinSource::Env(v),
        _ => return invalid(at, "set exactly one of pin_file and pin_env"),
    };
    if h.sessions == 0 || h.sessions > limits::MAX_HSM_SESSIONS {
        return invalid(
            format!("{at}.sessions"),
            format!("1 ..= {}", limits::MAX_HSM_SESSIONS),
        );
    }
    Ok(HsmConfig {
        name: h.name,
        module: h.module,
        module_env: h.module_env,
        token,
        key,
        pin,
        sessions: h.sessions,
        rsa_mechanism: match h.rsa_mechanism {
            file::RsaMechanism::Auto => HsmRsaMechanism::Auto,
            file::RsaMechanism::Sha256RsaPkcs => HsmRsaMechanism::Sha256RsaPkcs,
            file::RsaMechanism::RsaPkcs => HsmRsaMechanism::RsaPkcs,
        },
    })
}

/// Shortest `hsm_pool.probe_interval`.
const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Longest `hsm_pool.session_wait`.
const MAX_SESSION_WAIT: Duration = Duration::from_secs(60);
/// Bounds of `hsm_pool.sign_timeout`: above a token's slowest RSA-4096 signature, below a
/// minute of a replica answering nothing.
const SIGN_TIMEOUT_BOUNDS: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(60));

pub(super) fn pool(p: file::HsmPool) -> Result<HsmPoolConfig, ConfigError> {
    if p.probe_interval < MIN_PROBE_INTERVAL {
        return invalid("hsm_pool.probe_interval", "at least 100ms");
    }
    if p.breaker_failures == 0 {
        return invalid("hsm_pool.breaker_failures", "at least 1");
    }
    if p.reconnect_backoff_min.is_zero() {
        return invalid(
            "hsm_pool.reconnect_backoff_min",
            "must be greater than zero",
        );
    }
    if p.reconnect_backoff_max < p.reconnect_backoff_min {
        return invalid(
            "hsm_pool.reconnect_backoff_max",
            "must be at least reconnect_backoff_min",
        );
    }
    if p.session_wait > MAX_SESSION_WAIT {
        return invalid("hsm_pool.session_wait", "at most 60s");
    }
    if p.sign_timeout < SIGN_TIMEOUT_BOUNDS.0 || p.sign_timeout > SIGN_TIMEOUT_BOUNDS.1 {
        return invalid("hsm_pool.sign_timeout", "10ms ..= 60s");
    }
    Ok(HsmPoolConfig {
        probe_interval: p.probe_interval,
        breaker_failures: p.breaker_failures,
        reconnect_backoff_min: p.reconnect_backoff_min,
        reconnect_backoff_max: p.reconnect_backoff_max,
        session_wait: p.session_wait,
        sign_timeout: p.sign_timeout,
        readiness_requires_signer: p.readiness_requires_signer,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::ISSUER;
    use super::super::{Config, KeySource};
    use super::*;
    use std::path::Path;

    const HSMS: &str = "[[hsm]]\nname = \"h1\"\nmodule = \"/m.so\"\ntoken_label = \"t\"\nkey_label = \"k\"\npin_env = \"PIN\"\n\
                        [[hsm]]\nname = \"h2\"\nmodule = \"/m.so\"\nmodule_env = { A = \"b\" }\nslot = 3\nkey_id = \"0a:0b\"\npin_file = \"pin\"\n";
    const HSM_ISSUER: &str =
        "[[issuer]]\nname = \"a\"\ncertificate = \"ca.pem\"\nsigner = { hsm = [\"h1\", \"h2\"] }\n";

    fn hsm_signer(k: &KeySource) -> &super::super::IssuerSignerConfig {
        match k {
            KeySource::Hsm(sc) => sc,
            KeySource::File(p) => panic!("a key file {}", p.display()),
        }
    }

    #[test]
    fn hsm_pools_parse_into_enums() {
        let c = Config::parse(&format!(
            "[hsm_pool]\nprobe_interval = \"1s\"\nsign_timeout = \"500ms\"\n{HSMS}{HSM_ISSUER}"
        ))
        .expect("valid");
        assert_eq!(c.hsms.len(), 2);
        assert_eq!(c.hsms[0].token, TokenSelector::Label("t".into()));
        assert_eq!(c.hsms[0].key, KeySelector::Label("k".into()));
        assert_eq!(c.hsms[0].pin, PinSource::Env("PIN".into()));
        assert_eq!(c.hsms[1].token, TokenSelector::Slot(3));
        assert_eq!(c.hsms[1].key, KeySelector::Id(vec![10, 11]));
        assert_eq!(c.hsms[1].key.label(), None);
        assert_eq!(c.hsms[1].module_env.get("A").map(String::as_str), Some("b"));
        assert_eq!(c.hsms[0].sessions, limits::HSM_SESSIONS);
        assert_eq!(c.hsm_pool.sign_timeout, Duration::from_millis(500));
        let signer = hsm_signer(&c.issuers[0].ocsp_key);
        assert_eq!(signer.hsm, ["h1", "h2"]);
        assert!(signer.danger_software_fallback.is_none());
        assert!(c.issuers[0].crl_key.is_none());

        let c = Config::parse(&format!(
            "{HSMS}{HSM_ISSUER}crl_signer = {{ hsm = [\"h2\", \"h1\"] }}\n"
        ))
        .expect("valid");
        let crl = c.issuers[0].crl_key.as_ref().expect("crl_signer");
        assert_eq!(hsm_signer(crl).hsm, ["h2", "h1"]);
    }

    #[test]
    fn hsm_errors_name_the_key() {
        let check = |text: String, want: &str| {
            let e = Config::parse(&text).expect_err(want);
            assert!(e.to_string().contains(want), "{e} lacks {want:?}");
        };
        check(
            format!(
                "{HSMS}[[issuer]]\nname = \"a\"\ncertificate = \"c\"\nresponder_key = \"k\"\nsigner = {{ hsm = [\"h1\"] }}\n"
            ),
            "either responder_key or signer",
        );
        check(
            format!("{HSMS}[[issuer]]\nname = \"a\"\ncertificate = \"c\"\n"),
            "responder_key or signer is required",
        );
        check(
            format!(
                "{HSMS}[[issuer]]\nname = \"a\"\ncertificate = \"c\"\nsigner = {{ hsm = [\"h9\"] }}\n"
            ),
            "issuer[0].signer.hsm: no [[hsm]] is named \"h9\"",
        );
        check(
            format!(
                "{HSMS}[[issuer]]\nname = \"a\"\ncertificate = \"c\"\nsigner = {{ hsm = [] }}\n"
            ),
            "issuer[0].signer.hsm",
        );
        check(
            format!("{HSMS}{HSM_ISSUER}crl_key = \"ca.key\"\ncrl_signer = {{ hsm = [\"h2\"] }}\n"),
            "issuer[0] (a): set either crl_key or crl_signer, not both",
        );
        check(
            format!("{HSMS}{HSM_ISSUER}crl_signer = {{ hsm = [\"h9\"] }}\n"),
            "issuer[0].crl_signer.hsm: no [[hsm]] is named \"h9\"",
        );
        check(
            format!("{HSMS}{HSM_ISSUER}crl_signer = {{ hsm = [] }}\n"),
            "issuer[0].crl_signer.hsm: name at least one [[hsm]]",
        );
        check(
            format!("{HSMS}{HSM_ISSUER}crl_signer = {{ hsm = [\"h2\", \"h2\"] }}\n"),
            "issuer[0].crl_signer.hsm: \"h2\" is listed twice",
        );
        let one = |extra: &str| {
            format!(
                "[[hsm]]\nname = \"h1\"\nmodule = \"/m.so\"\n{extra}\n{}",
                ISSUER
            )
        };
        check(
            one("token_label = \"t\"\nslot = 1\nkey_label = \"k\"\npin_env = \"P\""),
            "hsm[0] (h1): set exactly one of token_label and slot",
        );
        check(
            one("key_label = \"k\"\npin_env = \"P\""),
            "hsm[0] (h1): set exactly one of token_label and slot",
        );
        check(
            one("token_label = \"t\"\npin_env = \"P\""),
            "hsm[0] (h1): set key_label, key_id, or both",
        );
        check(
            one("token_label = \"t\"\nkey_id = \"xyz\"\npin_env = \"P\""),
            "hsm[0] (h1).key_id",
        );
        check(
            one("token_label = \"t\"\nkey_label = \"k\"\npin_env = \"P\"\npin_file = \"f\""),
            "exactly one of pin_file and pin_env",
        );
        check(
            one("token_label = \"t\"\nkey_label = \"k\"\npin_env = \"\""),
            "exactly one of pin_file and pin_env",
        );
        check(
            one("token_label = \"t\"\nkey_label = \"k\"\npin_env = \"P\"\nsessions = 0"),
            "hsm[0] (h1).sessions",
        );
        check(
            one("token_label = \"t\"\nkey_label = \"k\"\npin = \"1234\""),
            "unknown field `pin`",
        );
        check(
            format!("[hsm_pool]\nsign_timeout = \"0s\"\n{HSMS}{HSM_ISSUER}"),
            "hsm_pool.sign_timeout",
        );
        check(
            format!(
                "[hsm_pool]\nreconnect_backoff_min = \"5s\"\nreconnect_backoff_max = \"1s\"\n{HSMS}{HSM_ISSUER}"
            ),
            "hsm_pool.reconnect_backoff_max",
        );
    }

    #[test]
    fn hsm_paths_resolve_against_the_config_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("vigil.toml");
        std::fs::write(
            &path,
            format!("{HSMS}[[issuer]]\nname = \"a\"\ncertificate = \"ca.pem\"\nsigner = {{ hsm = [\"h2\"], danger_software_fallback = \"k.pem\" }}\n\
                     crl_signer = {{ hsm = [\"h1\"], danger_software_fallback = \"ca.key\" }}\n"),
        )
        .expect("write");
        let c = Config::load(Some(&path)).expect("load");
        assert_eq!(c.hsms[1].pin, PinSource::File(dir.path().join("pin")));
        assert_eq!(c.hsms[0].module, Path::new("/m.so"));
        let fallback = hsm_signer(&c.issuers[0].ocsp_key)
            .danger_software_fallback
            .clone();
        assert_eq!(fallback, Some(dir.path().join("k.pem")));
        let crl = c.issuers[0].crl_key.as_ref().expect("crl_signer");
        assert_eq!(
            hsm_signer(crl).danger_software_fallback,
            Some(dir.path().join("ca.key"))
        );
    }
}
