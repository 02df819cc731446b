//! Why `vigil serve` or a one-shot command could not start: one type over every step of
//! start-up, each variant naming the step and keeping the cause.

use crate::config::ConfigError;
use crate::crl_service::CrlServiceError;
use crate::demo::DemoError;
use crate::feed::FeedError;
use crate::http::admin::AdminSetupError;
use crate::journal::JournalError;
use crate::pki::PkiError;
use crate::signer::pool::PoolError;
use crate::writer::WriterError;

/// A start-up step that failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration is inconsistent with the certificates it names.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A certificate or key could not be read or used.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// An issuer's OCSP signer pool did not start.
    #[error("issuer {issuer}: {source}")]
    Pool {
        /// The issuer.
        issuer: String,
        /// Why.
        source: PoolError,
    },
    /// An issuer's CRL signer pool did not start.
    #[error(
        "issuer {issuer}: crl_signer (must hold the key of the CA certificate {certificate}): {source}"
    )]
    CrlPool {
        /// The issuer.
        issuer: String,
        /// Its CA certificate, whose key the pool must hold.
        certificate: String,
        /// Why.
        source: PoolError,
    },
    /// The demo PKI of the embedded default could not be made.
    #[error(transparent)]
    Demo(#[from] DemoError),
    /// The journal could not be read or appended to.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The feed's regions are misconfigured or unreachable.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// No feed region could be read (one-shot commands).
    #[error("no feed region reachable: {0}")]
    NoRegionReachable(String),
    /// The CRL service did not start or publish.
    #[error(transparent)]
    Crl(#[from] CrlServiceError),
    /// The status writer (admin API) could not be set up.
    #[error(transparent)]
    Writer(#[from] WriterError),
    /// The admin API could not be set up.
    #[error(transparent)]
    Admin(#[from] AdminSetupError),
    /// A listener could not be bound.
    #[error("{what} {addr}: {source}")]
    Bind {
        /// The config key (`server.listen`, `admin.listen`).
        what: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP server stopped with an error.
    #[error("serving: {0}")]
    Serve(std::io::Error),
    /// No issuer of that name is configured.
    #[error("no issuer named {name:?} (configured: {configured})")]
    NoIssuer {
        /// The name asked for.
        name: String,
        /// The configured names, comma-separated.
        configured: String,
    },
    /// A name could not be encoded.
    #[error("encoding: {0}")]
    Der(#[from] der::Error),
}
