//! Where a user PIN comes from, and reading it.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::AuthPin;

/// Where a user PIN comes from. The PIN itself is never logged, and vigil holds it only as an
/// [`AuthPin`], which zeroizes its memory when dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// A file holding the PIN (one trailing newline is ignored).
    File(PathBuf),
    /// An environment variable holding the PIN.
    Env(String),
}

/// Why a PIN could not be read. Names the source, never the PIN.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The PIN file could not be read.
    #[error("pin_file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The PIN file is not UTF-8.
    #[error("pin_file {}: not UTF-8", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
    },
    /// The PIN file holds nothing but a newline.
    #[error("pin_file {}: empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The PIN variable is missing, empty or not UTF-8.
    #[error("pin_env: the environment variable {name} is not set, empty or not UTF-8")]
    Env {
        /// The variable.
        name: String,
    },
}

/// Reads a PIN.
pub fn read_pin(source: &PinSource) -> Result<AuthPin, PinError> {
    match source {
        PinSource::File(path) => {
            let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| PinError::Read {
                path: path.clone(),
                source,
            })?);
            warn_if_readable_by_others(path);
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| PinError::NotUtf8 { path: path.clone() })?;
            let text = text.strip_suffix('\n').unwrap_or(text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            if text.is_empty() {
                return Err(PinError::Empty { path: path.clone() });
            }
            Ok(AuthPin::from(text))
        }
        PinSource::Env(name) => {
            // A variable that holds a PIN is not passed on to PKCS#11 host processes (they
            // get the PIN over their pipe, from the key that needs it).
            super::host::withhold_from_hosts(name);
            match std::env::var(name) {
                Ok(v) if !v.is_empty() => Ok(AuthPin::from(v)),
                _ => Err(PinError::Env { name: name.clone() }),
            }
        }
    }
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(pin_file = %path.display(), "the PIN file is readable by group or others; chmod 600 it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_files_lose_one_newline_and_env_pins_are_read() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("pin");
        std::fs::write(&p, "12 34\r\n").expect("write");
        let pin = read_pin(&PinSource::File(p.clone())).expect("pin");
        use secrecy::ExposeSecret;
        assert_eq!(pin.expose_secret(), "12 34");
        std::fs::write(&p, "\n").expect("write");
        assert!(matches!(
            read_pin(&PinSource::File(p)),
            Err(PinError::Empty { .. })
        ));
        let e = read_pin(&PinSource::Env("VIGIL_TEST_SURELY_UNSET_PIN".into())).expect_err("unset");
        assert!(e.to_string().contains("VIGIL_TEST_SURELY_UNSET_PIN"), "{e}");
    }
}
