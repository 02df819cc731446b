//! Where status changes go: the regions of the feed when `[feed]` is configured, the local
//! journal otherwise. Used by `vigil revoke` / `issue` / `import` and the admin API.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::crl::Sharding;
use crate::feed::publish::{Publisher, describe_failures};
use crate::feed::region;
use crate::journal::{JournalReader, JournalWriter};
use crate::status::{CertRecord, CrlScope, Event, EventKind, IssuerId, Serial, StatusView};
use crate::telemetry;
use x509_cert::Certificate;

/// Why a status change was not written, or the current record not read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriterError {
    /// No issuer of that name is configured.
    #[error("no issuer named {0:?}")]
    NoIssuer(String),
    /// The certificate's cRLDistributionPoints names no CRL of the issuer, or two.
    #[error(transparent)]
    Scope(#[from] crate::crl::shard::ScopeError),
    /// The feed's regions could not be set up.
    #[error(transparent)]
    Feed(#[from] crate::feed::FeedError),
    /// Every region failed to answer a read.
    #[error("no region reachable ({})", describe_region_errors(.0))]
    NoRegionReachable(Vec<(String, crate::feed::FeedError)>),
    /// The quorum of regions did not acknowledge the write.
    #[error(transparent)]
    Quorum(#[from] crate::feed::publish::QuorumError),
    /// The journal could not be opened or appended to.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// The blocking task doing journal IO failed.
    #[error("journal task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// An event that may not be written (e.g. a revocation reason a revocation may not carry).
    #[error("{serial}: {source}")]
    Refused {
        /// The event's serial.
        serial: Serial,
        /// Why.
        source: crate::status::ReasonError,
    },
}

fn describe_region_errors(errors: &[(String, crate::feed::FeedError)]) -> String {
    errors
        .iter()
        .map(|(r, e)| format!("{r}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Where each issuer's CRLs are published, to read which one a certificate's
/// cRLDistributionPoints names when its issuance is recorded with the certificate
/// (`vigil issue --cert`, `vigil import --pem`, `POST /v1/issue` with `certificate`).
#[derive(Debug, Clone, Default)]
pub struct CrlUrls(Vec<(String, Sharding, Option<String>)>);

impl CrlUrls {
    /// Every configured issuer's sharding and base URL ([`Config::crl_of`]).
    pub fn from_config(cfg: &Config) -> Self {
        CrlUrls(
            cfg.issuers
                .iter()
                .map(|i| {
                    let c = cfg.crl_of(&i.name);
                    (i.name.clone(), c.sharding(), c.base_url.clone())
                })
                .collect(),
        )
    }

    /// The CRL of `issuer` that `cert`'s cRLDistributionPoints names, to record with the
    /// issuance ([`crate::crl::shard::named_scope`]). `Ok(None)` when the certificate has no
    /// cRLDistributionPoints, or when the issuer has no `crl.base_url` (vigil then knows no URL
    /// of its CRLs to compare with, and the certificate goes by the serial's shard). An error
    /// (the issuance is refused) when it names no CRL of the issuer, or two.
    pub fn scope_of(
        &self,
        issuer: &str,
        cert: &Certificate,
    ) -> Result<Option<CrlScope>, WriterError> {
        let Some((_, sharding, base)) = self.0.iter().find(|(n, _, _)| n == issuer) else {
            return Err(WriterError::NoIssuer(issuer.to_owned()));
        };
        let Some(base) = base else {
            return Ok(None);
        };
        Ok(crate::crl::shard::named_scope(
            cert, issuer, sharding, base,
        )?)
    }
}

/// The kinds of the events that record an issuance: the issuance itself, and the CRL the
/// certificate's cRLDistributionPoints names when there is one.
pub fn issuance_kinds(not_after: i64, scope: Option<CrlScope>) -> Vec<EventKind> {
    let mut out = vec![EventKind::Issued { not_after }];
    if let Some(scope) = scope {
        out.push(EventKind::CrlShard { scope });
    }
    out
}

/// The destination of status changes.
pub enum StatusWriter {
    /// The local journal (single node).
    Journal(PathBuf),
    /// The feed's regions, acknowledged at the quorum.
    Feed(Arc<Publisher>),
}

/// An acknowledged write.
#[derive(Debug, Clone)]
pub struct Written {
    /// Where it was written: `the local journal`, or the regions.
    pub summary: String,
    /// Regions holding it (empty for the journal).
    pub regions: Vec<String>,
    /// Regions that missed it, with the reason; repair brings them in line.
    pub missed: Vec<(String, String)>,
}

impl StatusWriter {
    /// The writer the configuration asks for.
    pub fn from_config(cfg: &Config) -> Result<Self, WriterError> {
        match &cfg.feed {
            Some(f) => {
                let regions = region::regions(cfg)?;
                Ok(StatusWriter::Feed(Arc::new(Publisher::new(regions, f))))
            }
            None => Ok(StatusWriter::Journal(cfg.journal_path())),
        }
    }

    /// What is known of one certificate now, as every writer must see it before a change
    /// that depends on it (a hold or release is ordered after the one it supersedes): the join
    /// of every reachable region's snapshot record — an error when no region is reachable — or,
    /// for the journal, the join of the whole journal. `vigil hold`/`release` and
    /// `POST /v1/hold`/`/v1/release` both decide on this, never on one replica's view alone
    /// (which may lag the regions).
    pub async fn current_record(
        &self,
        issuer: IssuerId,
        serial: &Serial,
    ) -> Result<Option<CertRecord>, WriterError> {
        match self {
            StatusWriter::Journal(path) => {
                let path = path.clone();
                let serial = *serial;
                tokio::task::spawn_blocking(move || {
                    let view = StatusView::new();
                    let metrics = telemetry::Metrics::new();
                    crate::app::replay_journal(&mut JournalReader::new(path), &view, &metrics)?;
                    Ok(view.table(issuer).record(&serial))
                })
                .await?
            }
            StatusWriter::Feed(p) => {
                let reads = futures_util::future::join_all(
                    p.regions()
                        .iter()
                        .map(|r| async move { (r, r.snapshot_record(&issuer, serial).await) }),
                )
                .await;
                let mut joined: Option<CertRecord> = None;
                let mut errors = Vec::new();
                for (r, read) in reads {
                    match read {
                        Ok(Some(rec)) => joined = Some(joined.map_or(rec, |j| j.join(rec))),
                        Ok(None) => {}
                        Err(e) => errors.push((r.name.clone(), e)),
                    }
                }
                if errors.len() == p.regions().len() {
                    return Err(WriterError::NoRegionReachable(errors));
                }
                Ok(joined)
            }
        }
    }

    /// Writes `events`; `Ok` only once they are acknowledged (synced to the journal, or held by
    /// a quorum of regions). A revocation with a reason a revocation may not carry
    /// (certificateHold, removeFromCRL) is refused before anything is written.
    pub async fn write(&self, events: Vec<Event>) -> Result<Written, WriterError> {
        for e in &events {
            e.kind.check().map_err(|source| WriterError::Refused {
                serial: e.serial,
                source,
            })?;
        }
        match self {
            StatusWriter::Journal(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    JournalWriter::open(path).and_then(|mut w| w.append(&events))
                })
                .await??;
                Ok(Written {
                    summary: "the local journal".into(),
                    regions: Vec::new(),
                    missed: Vec::new(),
                })
            }
            StatusWriter::Feed(p) => match p.publish(&events).await {
                Ok(report) => {
                    metrics::counter!(telemetry::FEED_WRITES, "result" => "acknowledged")
                        .increment(1);
                    let mut summary = format!(
                        "region(s) {} (quorum {})",
                        report.written.join(", "),
                        report.quorum
                    );
                    if !report.failed.is_empty() {
                        summary.push_str(&format!(
                            "; missed by {}, left a hint for repair",
                            describe_failures(&report.failed)
                        ));
                    }
                    Ok(Written {
                        summary,
                        regions: report.written,
                        missed: report.failed,
                    })
                }
                Err(e) => {
                    metrics::counter!(telemetry::FEED_WRITES, "result" => "failed").increment(1);
                    Err(e.into())
                }
            },
        }
    }
}
