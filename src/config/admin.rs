//! `[admin]`: the admin API on its own listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::error::{ConfigError, invalid};
use super::file;

/// `[admin]`
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Address and port of the admin listener (keep it off the public network).
    pub listen: SocketAddr,
    /// File holding the bearer token (else `VIGIL_ADMIN_TOKEN`, read when the API starts).
    pub token_file: Option<PathBuf>,
    /// Append-only audit log of every change; default `<data_dir>/audit.log`.
    pub audit_log: PathBuf,
    /// Serve over TLS (`tls_certificate` and `tls_key`, and `client_ca` for mutual TLS).
    pub tls: Option<AdminTls>,
    /// Largest request body, bytes (1 ..= 65536).
    pub max_body_bytes: usize,
}

/// The admin listener's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTls {
    /// Server certificate chain (PEM).
    pub certificate: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
    /// CA (PEM) client certificates must chain to: requires mutual TLS.
    pub client_ca: Option<PathBuf>,
}

/// Largest `admin.max_body_bytes`.
const MAX_BODY_BYTES_BOUND: usize = 64 * 1024;

pub(super) fn admin(a: file::Admin, data_dir: &Path) -> Result<AdminConfig, ConfigError> {
    let tls = match (a.tls_certificate, a.tls_key, a.client_ca) {
        (Some(certificate), Some(key), client_ca) => Some(AdminTls {
            certificate,
            key,
            client_ca,
        }),
        (None, None, None) => None,
        (None, None, Some(_)) => {
            return invalid(
                "admin.client_ca",
                "mutual TLS needs admin.tls_certificate and admin.tls_key",
            );
        }
        _ => return invalid("admin.tls_key", "tls_certificate and tls_key go together"),
    };
    if a.max_body_bytes == 0 || a.max_body_bytes > MAX_BODY_BYTES_BOUND {
        return invalid("admin.max_body_bytes", "1 to 65536");
    }
    Ok(AdminConfig {
        listen: a.listen,
        token_file: a.token_file,
        audit_log: a.audit_log.unwrap_or_else(|| data_dir.join("audit.log")),
        tls,
        max_body_bytes: a.max_body_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::super::tests::ISSUER;
    use super::*;

    #[test]
    fn tls_files_go_together() {
        let c = Config::parse(&format!(
            "data_dir = \"/d\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntls_certificate = \"c\"\ntls_key = \"k\"\n{ISSUER}"
        ))
        .expect("valid");
        let a = c.admin.as_ref().expect("admin");
        assert_eq!(a.audit_log, Path::new("/d/audit.log"));
        assert_eq!(
            a.tls,
            Some(AdminTls {
                certificate: "c".into(),
                key: "k".into(),
                client_ca: None
            })
        );
        for (keys, want) in [
            ("tls_certificate = \"c\"\n", "admin.tls_key"),
            ("client_ca = \"ca\"\n", "admin.client_ca"),
            ("max_body_bytes = 0\n", "admin.max_body_bytes"),
        ] {
            let e = Config::parse(&format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\n{keys}{ISSUER}"
            ))
            .expect_err(want);
            assert!(e.to_string().contains(want), "{e}");
        }
    }
}
