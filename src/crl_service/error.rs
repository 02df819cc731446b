//! Why the CRL service did not start, publish by hand, or take a CRL from a region.

use super::redis_store::StoreError;
use crate::background::BackgroundError;
use crate::crl::CrlError;
use crate::crl::lint::LintError;
use crate::signer::software::KeyError;

/// Why the CRL service did not start, or `vigil crl publish` did not publish.
#[derive(Debug, thiserror::Error)]
pub enum CrlServiceError {
    /// An issuer certificate vigil loaded has no `[[issuer]]` entry.
    #[error("issuer {issuer}: not configured")]
    NotConfigured {
        /// The issuer.
        issuer: String,
    },
    /// The CA certificate cannot issue CRLs, and the issuer has a CRL key.
    #[error("issuer {issuer}: {source}")]
    Issuer {
        /// The issuer.
        issuer: String,
        /// Why.
        source: CrlError,
    },
    /// The `crl_key` file could not be loaded.
    #[error("issuer {issuer}: crl_key: {source}")]
    CrlKey {
        /// The issuer.
        issuer: String,
        /// Why.
        source: KeyError,
    },
    /// The issuer's `crl_signer` pool is not among those started.
    #[error("issuer {issuer}: crl_signer: its HSM pool was not started")]
    PoolNotStarted {
        /// The issuer.
        issuer: String,
    },
    /// The CRL signer's key is not the CA certificate's.
    #[error("issuer {issuer}: {what} is not the key of the CA certificate")]
    NotCaKey {
        /// The issuer.
        issuer: String,
        /// Which signer (`crl_key <path>` or `crl_signer (<pool>)`).
        what: String,
    },
    /// A region's link could not be set up.
    #[error(transparent)]
    Region(#[from] StoreError),
    /// `vigil crl publish` on a configuration where no issuer signs CRLs.
    #[error("no issuer has a crl_key or crl_signer: nothing to publish")]
    NothingToPublish,
    /// `vigil crl publish`: some CRL was not stored anywhere.
    #[error("{}\nnot published: {}", report.join("\n"), failed.join(", "))]
    NotPublished {
        /// One line per CRL (or failure).
        report: Vec<String>,
        /// The CRLs (or failures) that reached no target.
        failed: Vec<String>,
    },
}

/// Why a newer CRL a region offered was not taken.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The region's Redis failed or did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The CRL was gone by the time it was fetched.
    #[error("vanished")]
    Vanished,
    /// The region's number went down between the two reads.
    #[error("number went from {offered} to {fetched}")]
    WentBack {
        /// The number first read.
        offered: u64,
        /// The number fetched.
        fetched: u64,
    },
    /// The CRL does not verify (signature, issuer, kind, IDP, number).
    #[error("does not verify: {0}")]
    Verify(LintError),
    /// The disk copy could not be written.
    #[error("disk copy: {0}")]
    Disk(std::io::Error),
    /// Verifying ran on the background threads and did not finish.
    #[error(transparent)]
    Background(#[from] BackgroundError),
}
