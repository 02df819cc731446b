//! The one error type of configuration: which key (its TOML path), and why.

use std::path::PathBuf;

/// A configuration error. Its message names the key, so an operator can find it in the file;
/// it never holds a secret (a password in a URL is refused without quoting the URL).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config: reading {}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type (toml's message names the key).
    #[error("config: {0}")]
    Syntax(#[from] toml::de::Error),
    /// A value the types allow but the rules do not.
    #[error("config: {key}: {reason}")]
    Invalid {
        /// The TOML path, e.g. `issuer[0].crl.validity` or `hsm[1] (h2)`.
        key: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// An environment override that does not parse.
    #[error("config: {key} (from {var}): {reason}")]
    Env {
        /// The variable, e.g. `VIGIL_LISTEN`.
        var: &'static str,
        /// The key it overrides.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl ConfigError {
    /// The TOML path of the key at fault, when one is known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Env { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Syntax(_) => None,
        }
    }
}

/// `Err(ConfigError::Invalid)` for `key`.
pub(super) fn invalid<T>(
    key: impl Into<String>,
    reason: impl Into<String>,
) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    })
}
