//! `VIGIL_*` environment overrides, applied to the file form before it is checked (so an
//! override is held to the same rules as the key it replaces).

use std::path::PathBuf;

use super::error::ConfigError;
use super::file;
use super::{
    ENV_CRL_BASE_URL, ENV_DATA_DIR, ENV_LISTEN, ENV_LOG, ENV_LOG_FORMAT, ENV_NONCE, ENV_OCSP_PREFIX,
};

/// Applies the overrides read through `get`.
pub(super) fn apply(
    f: &mut file::File,
    get: impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if let Some(v) = get(ENV_LISTEN) {
        f.server.listen = v
            .parse()
            .map_err(|e: std::net::AddrParseError| ConfigError::Env {
                var: ENV_LISTEN,
                key: "server.listen",
                reason: e.to_string(),
            })?;
    }
    if let Some(v) = get(ENV_DATA_DIR) {
        f.data_dir = PathBuf::from(v);
    }
    if let Some(v) = get(ENV_OCSP_PREFIX) {
        f.server.ocsp_prefix = v;
    }
    if let Some(v) = get(ENV_NONCE) {
        f.ocsp.nonce = match v.as_str() {
            "ignore" => file::Nonce::Ignore,
            "echo" => file::Nonce::Echo,
            other => {
                return Err(ConfigError::Env {
                    var: ENV_NONCE,
                    key: "ocsp.nonce",
                    reason: format!("unknown policy {other:?}, expected \"ignore\" or \"echo\""),
                });
            }
        };
    }
    if let Some(v) = get(ENV_LOG) {
        f.log.filter = v;
    }
    if let Some(v) = get(ENV_LOG_FORMAT) {
        f.log.format = match v.as_str() {
            "text" => file::LogFormat::Text,
            "json" => file::LogFormat::Json,
            other => {
                return Err(ConfigError::Env {
                    var: ENV_LOG_FORMAT,
                    key: "log.format",
                    reason: format!("unknown format {other:?}, expected \"text\" or \"json\""),
                });
            }
        };
    }
    if let Some(v) = get(ENV_CRL_BASE_URL) {
        f.crl.base_url = Some(v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::ISSUER;
    use super::super::{Config, LogFormat, NoncePolicy};
    use super::*;

    fn with_env(text: &str, get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, get)
    }

    #[test]
    fn env_overrides() {
        let c = with_env(ISSUER, |k| match k {
            ENV_LISTEN => Some("127.0.0.1:9999".into()),
            ENV_NONCE => Some("echo".into()),
            _ => None,
        })
        .expect("env");
        assert_eq!(c.server.listen.port(), 9999);
        assert_eq!(c.ocsp.nonce, NoncePolicy::Echo);
        let e =
            with_env(ISSUER, |k| (k == ENV_NONCE).then(|| "sometimes".into())).expect_err("bad");
        assert!(e.to_string().contains("ocsp.nonce"));
        assert_eq!(e.key(), Some("ocsp.nonce"));
        // an override is held to the rules of its key
        let e = with_env(ISSUER, |k| (k == ENV_OCSP_PREFIX).then(|| "/crl".into()))
            .expect_err("reserved");
        assert!(e.to_string().contains("server.ocsp_prefix"), "{e}");
    }

    #[test]
    fn log_format_from_file_and_env() {
        let text = format!("[log]\nformat = \"json\"\n{ISSUER}");
        assert_eq!(
            Config::parse(&text).expect("parse").log.format,
            LogFormat::Json
        );
        let c = with_env(&text, |k| (k == ENV_LOG_FORMAT).then(|| "text".into())).expect("env");
        assert_eq!(c.log.format, LogFormat::Text);
        let e = with_env(&text, |k| (k == ENV_LOG_FORMAT).then(|| "JSON ".into()))
            .expect_err("bad env");
        assert!(
            e.to_string().contains("log.format (from VIGIL_LOG_FORMAT)"),
            "{e}"
        );
        assert!(e.to_string().contains("\"text\" or \"json\""), "{e}");
        let e = Config::parse(&format!("[log]\nformat = \"xml\"\n{ISSUER}"))
            .expect_err("bad file value");
        assert!(
            e.to_string().contains("format") && e.to_string().contains("xml"),
            "{e}"
        );
        assert_eq!(
            Config::parse(ISSUER).expect("parse").log.format,
            LogFormat::Text
        );
    }
}
