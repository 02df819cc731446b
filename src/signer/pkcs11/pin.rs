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

/// Reads a PIN. Errors name the source, never the PIN.
pub fn read_pin(source: &PinSource) -> Result<AuthPin, String> {
    match source {
        PinSource::File(path) => {
            let bytes = Zeroizing::new(
                std::fs::read(path).map_err(|e| format!("pin_file {}: {e}", path.display()))?,
            );
            warn_if_readable_by_others(path);
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| format!("pin_file {}: not UTF-8", path.display()))?;
            let text = text.strip_suffix('\n').unwrap_or(text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            if text.is_empty() {
                return Err(format!("pin_file {}: empty", path.display()));
            }
            Ok(AuthPin::from(text))
        }
        PinSource::Env(name) => {
            // A variable that holds a PIN is not passed on to PKCS#11 host processes (they
            // get the PIN over their pipe, from the key that needs it).
            super::host::withhold_from_hosts(name);
            match std::env::var(name) {
                Ok(v) if !v.is_empty() => Ok(AuthPin::from(v)),
                _ => Err(format!(
                    "pin_env: the environment variable {name} is not set, empty or not UTF-8"
                )),
            }
        }
    }
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(pin_file = %path.display(), "the PIN file is readable by group or others; chmod 600 it");
        }
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
        assert!(read_pin(&PinSource::File(p)).is_err());
        let e = read_pin(&PinSource::Env("VIGIL_TEST_SURELY_UNSET_PIN".into())).expect_err("unset");
        assert!(e.contains("VIGIL_TEST_SURELY_UNSET_PIN"), "{e}");
    }
}
