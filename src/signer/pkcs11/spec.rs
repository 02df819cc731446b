//! What names a key: its module, token, key object and signing mechanism.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cryptoki::object::{Attribute, ObjectClass};

/// Which token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token whose label (CK_TOKEN_INFO.label, blank-padded) is this.
    Label(String),
    /// The slot with this id.
    Slot(u64),
}

/// Which key: by CKA_LABEL, CKA_ID, or both.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeySelector {
    /// CKA_LABEL.
    pub label: Option<String>,
    /// CKA_ID.
    pub id: Option<Vec<u8>>,
}

impl KeySelector {
    pub(super) fn template(&self, class: ObjectClass) -> Vec<Attribute> {
        let mut t = vec![Attribute::Class(class)];
        if let Some(l) = &self.label {
            t.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        if let Some(id) = &self.id {
            t.push(Attribute::Id(id.clone()));
        }
        t
    }

    pub(super) fn describe(&self) -> String {
        match (&self.label, &self.id) {
            (Some(l), Some(id)) => format!("label {l:?} id {}", crate::status::hex(id)),
            (Some(l), None) => format!("label {l:?}"),
            (None, Some(id)) => format!("id {}", crate::status::hex(id)),
            (None, None) => "(any)".into(),
        }
    }
}

/// How RSA keys sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RsaMechanism {
    /// `CKM_SHA256_RSA_PKCS` if the token lists it, else `CKM_RSA_PKCS` over a DigestInfo.
    #[default]
    Auto,
    /// Always `CKM_SHA256_RSA_PKCS`.
    Sha256RsaPkcs,
    /// Always `CKM_RSA_PKCS` over a DigestInfo built by vigil.
    RsaPkcs,
}

/// Everything needed to reach one key.
#[derive(Debug, Clone)]
pub struct KeySpec {
    /// Name for logs and metrics.
    pub name: String,
    /// The module file.
    pub module: PathBuf,
    /// Environment the module is loaded with (e.g. `P11_KIT_SERVER_ADDRESS`).
    pub module_env: BTreeMap<String, String>,
    /// The token.
    pub token: TokenSelector,
    /// The key.
    pub key: KeySelector,
    /// Most sessions open for signing at once.
    pub sessions: usize,
    /// RSA mechanism choice.
    pub rsa_mechanism: RsaMechanism,
}
