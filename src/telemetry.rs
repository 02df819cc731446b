//! Metric names (constants), pre-registered handles for the hot path, the Prometheus recorder,
//! and tracing set-up. Labels stay low-cardinality: method, outcome, status, issuer — never a
//! serial.

use std::io::IsTerminal;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::LogFormat;

/// OCSP requests by `method` and `outcome` (the OCSPResponseStatus, or `not_modified`).
pub const OCSP_REQUESTS: &str = "vigil_ocsp_requests_total";
/// OCSP request latency in seconds, from the request head to the response, by `method`.
pub const OCSP_LATENCY: &str = "vigil_ocsp_request_duration_seconds";
/// SingleResponses by certificate `status` (good, revoked, unknown).
pub const OCSP_CERT_STATUS: &str = "vigil_ocsp_cert_status_total";
/// Response cache lookups that found a fresh response.
pub const CACHE_HITS: &str = "vigil_ocsp_cache_hits_total";
/// Of the cache hits, those answered from the front cache (the request's bytes seen before,
/// not decoded again).
pub const FRONT_CACHE_HITS: &str = "vigil_ocsp_front_cache_hits_total";
/// Response cache lookups that had to sign.
pub const CACHE_MISSES: &str = "vigil_ocsp_cache_misses_total";
/// Cached responses served past their refresh point because signing failed.
pub const CACHE_STALE_SERVED: &str = "vigil_ocsp_cache_stale_served_total";
/// Signing latency in seconds (queue wait excluded).
pub const SIGNING_LATENCY: &str = "vigil_signing_duration_seconds";
/// Signing failures.
pub const SIGNING_ERRORS: &str = "vigil_signing_errors_total";
/// Signed responses discarded because the certificate's status changed between the read and
/// the signature (checked signing): never served or cached; the new status is signed instead.
pub const SIGNING_STATUS_CHANGED: &str = "vigil_signing_status_changed_total";
/// Requests shed because the signing queue was full.
pub const SIGNING_SHED: &str = "vigil_signing_shed_total";
/// Gauge, label `priority` (status_change, routine): signatures waiting for a signing slot or
/// thread, read at each scrape.
pub const SIGNING_QUEUE_DEPTH: &str = "vigil_signing_queue_depth";
/// Gauge: 1 while `/readyz` answers ready (degraded or not), 0 while it answers 503; read at
/// each scrape.
pub const READY: &str = "vigil_ready";
/// Gauge: 1 while `/readyz` answers "ready, degraded", else 0; read at each scrape.
pub const DEGRADED: &str = "vigil_degraded";
/// Status events applied to the view, by `result` (changed, unchanged).
pub const EVENTS_APPLIED: &str = "vigil_status_events_total";
/// Journal records skipped because they did not decode.
pub const EVENTS_UNDECODABLE: &str = "vigil_status_events_undecodable_total";
/// Revocations refused because their reason is not one a revocation may carry
/// (certificateHold, removeFromCRL, an unassigned code), by `input`: `event` (feed entries,
/// journal records, hints) or `record` (snapshot and checkpoint records). Never applied.
pub const STATUS_REJECTED: &str = "vigil_status_rejected_total";
/// Certificates in the status view.
pub const VIEW_CERTIFICATES: &str = "vigil_status_view_certificates";
/// HTTP responses that are not OCSP, by `path` class and `code`.
pub const HTTP_OTHER: &str = "vigil_http_responses_total";
/// Open connections.
pub const CONNECTIONS: &str = "vigil_http_connections";
/// Feed stream entries read, by `region` and `result` (changed, unchanged, undecodable,
/// heartbeat).
pub const FEED_ENTRIES: &str = "vigil_feed_entries_total";
/// Snapshot records merged during bootstraps, by `region`.
pub const FEED_BOOTSTRAP_RECORDS: &str = "vigil_feed_bootstrap_records_total";
/// Bootstraps from a region's snapshot, by `region`.
pub const FEED_BOOTSTRAPS: &str = "vigil_feed_bootstraps_total";
/// Seconds since the last event or heartbeat from `region`.
pub const FEED_LAST_SEEN_AGE: &str = "vigil_feed_last_event_age_seconds";
/// Apply lag (now − event creation time), by `region`.
pub const FEED_APPLY_LAG: &str = "vigil_feed_apply_lag_seconds";
/// 1 while the consumer of `region` is connected.
pub const FEED_CONNECTED: &str = "vigil_feed_region_connected";
/// Reconnects of the consumer of `region`.
pub const FEED_RECONNECTS: &str = "vigil_feed_reconnects_total";
/// Feed writes, by `result` (acknowledged, failed).
pub const FEED_WRITES: &str = "vigil_feed_writes_total";
/// Records copied into `region` by repair, by `kind` (hint, full).
pub const FEED_REPAIRED: &str = "vigil_feed_repaired_records_total";
/// Completeness checks that found this replica's view missing records of a region
/// (`{region, why}`: trimmed, count, digest, epoch, rollback).
pub const FEED_INCOMPLETE: &str = "vigil_feed_incomplete_total";
/// Completeness rounds comparing the view with a region (`{region, result}`: ok, short — the
/// view held fewer records than the region —, mismatch — digests differ, not yet for a whole
/// round —, diverged — they differed the same way for a whole round).
pub const FEED_CHECKS: &str = "vigil_feed_completeness_checks_total";
/// Records this replica wrote back into a region that had lost them (`{region}`).
pub const FEED_RESEEDED: &str = "vigil_feed_reseeded_records_total";
/// 1 while this replica's view covers the region (`{region}`), else 0.
pub const FEED_COVERED: &str = "vigil_feed_region_covered";
/// Seconds since the archive role last had everything a region's stream held on disk
/// (`vigil archive`), per region.
pub const ARCHIVE_LAG: &str = "vigil_archive_lag_seconds";
/// Blocks the archive role appended, by kind.
pub const ARCHIVE_BLOCKS: &str = "vigil_archive_blocks_total";
/// Unix time of the last successful `vigil backup create` (in its `--metrics-file`, and on
/// the archive role's `/metrics`, read from the regions where each backup records itself).
pub const BACKUP_LAST_SUCCESS: &str = "vigil_backup_last_success_timestamp_seconds";
/// Checkpoint writes, by `result` (ok, error).
pub const CHECKPOINT_WRITES: &str = "vigil_checkpoint_writes_total";
/// Time to write a checkpoint.
pub const CHECKPOINT_DURATION: &str = "vigil_checkpoint_write_duration_seconds";
/// Admin API requests, by `endpoint` and `code`.
pub const ADMIN_REQUESTS: &str = "vigil_admin_requests_total";
/// Seconds until the signing certificate of `issuer` expires.
pub const SIGNER_CERT_EXPIRY: &str = "vigil_signer_certificate_expiry_seconds";
/// CRLNumber of the CRL this replica serves, by `issuer` and `crl` (its path under `/crl/`).
pub const CRL_NUMBER: &str = "vigil_crl_number";
/// Seconds since the thisUpdate of the CRL this replica serves, by `issuer` and `crl`.
pub const CRL_AGE: &str = "vigil_crl_age_seconds";
/// Size in bytes of the CRL this replica serves, by `issuer` and `crl`.
pub const CRL_BYTES: &str = "vigil_crl_bytes";
/// CRLs installed that were larger than `crl.warn_bytes`, by `issuer` and `crl`.
pub const CRL_OVERSIZE: &str = "vigil_crl_oversize_total";
/// Publication passes that published none of an issuer's CRLs because a revoked certificate
/// names (by its recorded cRLDistributionPoints) a shard the configured count does not
/// publish, by `issuer`.
pub const CRL_MISPLACED: &str = "vigil_crl_misplaced_total";
/// CRL store attempts by `issuer`, `target` (a region name, or `disk`) and `result`
/// (stored, stale, fenced, not_leader, base_mismatch, error, lint_failed, sign_failed).
pub const CRL_PUBLISH: &str = "vigil_crl_publish_total";
/// Time to build, sign and lint one CRL, seconds, by `issuer`.
pub const CRL_BUILD_LATENCY: &str = "vigil_crl_build_duration_seconds";
/// 1 while this replica holds its region's CRL publisher lease, else 0.
pub const CRL_LEADER: &str = "vigil_crl_publisher_leader";
/// Failed CRL refreshes (a Redis unreachable, a CRL that did not verify), by `source`.
pub const CRL_REFRESH_ERRORS: &str = "vigil_crl_refresh_errors_total";
/// Reports that a region's Redis holds an older complete CRL than this replica serves (or
/// none), by `region`: it was restored from an old copy or flushed, or missed a store. A
/// leader publishes the complete CRLs again on each report.
pub const CRL_REGION_LAGGING: &str = "vigil_crl_region_lagging_total";
/// Signatures made by each HSM, by `hsm` (probes excluded).
pub const HSM_SIGNATURES: &str = "vigil_hsm_signatures_total";
/// HSM errors by `hsm` and `kind`: `pin`, `config`, `lost` (device, session or connection),
/// `failed` (one operation).
pub const HSM_ERRORS: &str = "vigil_hsm_errors_total";
/// Time of one signature on an HSM in seconds, session wait included, by `hsm`.
pub const HSM_SIGN_LATENCY: &str = "vigil_hsm_sign_duration_seconds";
/// Circuit breaker of each HSM, by `hsm`: 0 closed (in service), 1 open (out, reconnecting),
/// 2 failed (out until restart: PIN rejected or wrong key).
pub const HSM_BREAKER_STATE: &str = "vigil_hsm_breaker_state";
/// Health probes by `hsm` and `result` (`ok`, `error`).
pub const HSM_PROBES: &str = "vigil_hsm_probes_total";
/// HSMs in service, by `issuer`.
pub const SIGNER_POOL_UP: &str = "vigil_signer_pool_members_up";
/// Signatures made by `danger_software_fallback` because no HSM could, by `issuer`.
pub const SIGNER_FALLBACK_SIGNATURES: &str = "vigil_signer_software_fallback_signatures_total";

const LATENCY_BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Installs the Prometheus recorder for this process; the handle renders `/metrics`.
pub fn install_recorder() -> Result<PrometheusHandle, TelemetryError> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)?
        .install_recorder()?)
}

/// Why the metrics recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The Prometheus recorder refused its buckets, or another recorder is installed.
    #[error(transparent)]
    Recorder(#[from] metrics_exporter_prometheus::BuildError),
}

/// Sets up logging to stderr with `filter` (an `EnvFilter` directive) in `format`.
///
/// Text lines carry ANSI colour only when stderr is a terminal and `NO_COLOR` is unset or
/// empty (<https://no-color.org>): `vigil serve 2> file` and log collectors get plain text.
/// JSON lines never carry colour.
pub fn init_tracing(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(colour_wanted(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// Whether text log lines get ANSI colour: only on a terminal, never with a non-empty
/// `NO_COLOR`.
fn colour_wanted(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// HTTP method label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
}

/// Outcome label of one OCSP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// successful.
    Successful,
    /// 304 on If-None-Match.
    NotModified,
    /// malformedRequest.
    Malformed,
    /// unauthorized.
    Unauthorized,
    /// tryLater.
    TryLater,
    /// internalError.
    InternalError,
}

const OUTCOMES: [(Outcome, &str); 6] = [
    (Outcome::Successful, "successful"),
    (Outcome::NotModified, "not_modified"),
    (Outcome::Malformed, "malformed"),
    (Outcome::Unauthorized, "unauthorized"),
    (Outcome::TryLater, "try_later"),
    (Outcome::InternalError, "internal_error"),
];

/// The `path` label of [`HTTP_OTHER`]: which part of the server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathClass {
    /// `/healthz`, `/readyz`, `/metrics`.
    Ops,
    /// `/crl/...`.
    Crl,
    /// OCSP paths refused before decoding (404, 405, 400, 408, 413, 414).
    Ocsp,
}

const PATH_CLASSES: [&str; 3] = ["ops", "crl", "ocsp"];

/// The `code` labels of [`HTTP_OTHER`]; any other status counts as `other` (the last).
const HTTP_CODES: [(u16, &str); 10] = [
    (200, "200"),
    (304, "304"),
    (400, "400"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (413, "413"),
    (414, "414"),
    (503, "503"),
    (0, "other"),
];

/// Handles registered once, so the hot path only bumps atomics.
pub struct Metrics {
    http_other: [[Counter; HTTP_CODES.len()]; PATH_CLASSES.len()],
    requests: [[Counter; 6]; 2],
    latency: [Histogram; 2],
    /// good / revoked / unknown SingleResponses.
    pub status_good: Counter,
    /// revoked SingleResponses.
    pub status_revoked: Counter,
    /// unknown SingleResponses.
    pub status_unknown: Counter,
    /// Fresh cache hits.
    pub cache_hits: Counter,
    /// Of the fresh cache hits, those answered from the front cache.
    pub front_cache_hits: Counter,
    /// Cache misses.
    pub cache_misses: Counter,
    /// Stale responses served because signing failed.
    pub cache_stale_served: Counter,
    /// Signing latency.
    pub signing_latency: Histogram,
    /// Signing failures.
    pub signing_errors: Counter,
    /// Shed signing requests.
    pub signing_shed: Counter,
    /// Signatures discarded by checked signing (the status changed meanwhile).
    pub signing_status_changed: Counter,
    /// Events that changed the view.
    pub events_changed: Counter,
    /// Events already reflected.
    pub events_unchanged: Counter,
    /// Undecodable journal records.
    pub events_undecodable: Counter,
}

impl Metrics {
    /// Registers every handle with the installed recorder (no-op handles if none).
    pub fn new() -> Self {
        let methods = ["GET", "POST"];
        Metrics {
            http_other: PATH_CLASSES.map(|path| {
                HTTP_CODES
                    .map(|(_, code)| metrics::counter!(HTTP_OTHER, "path" => path, "code" => code))
            }),
            requests: methods.map(|m| {
                OUTCOMES
                    .map(|(_, o)| metrics::counter!(OCSP_REQUESTS, "method" => m, "outcome" => o))
            }),
            latency: methods.map(|m| metrics::histogram!(OCSP_LATENCY, "method" => m)),
            status_good: metrics::counter!(OCSP_CERT_STATUS, "status" => "good"),
            status_revoked: metrics::counter!(OCSP_CERT_STATUS, "status" => "revoked"),
            status_unknown: metrics::counter!(OCSP_CERT_STATUS, "status" => "unknown"),
            cache_hits: metrics::counter!(CACHE_HITS),
            front_cache_hits: metrics::counter!(FRONT_CACHE_HITS),
            cache_misses: metrics::counter!(CACHE_MISSES),
            cache_stale_served: metrics::counter!(CACHE_STALE_SERVED),
            signing_latency: metrics::histogram!(SIGNING_LATENCY),
            signing_errors: metrics::counter!(SIGNING_ERRORS),
            signing_shed: metrics::counter!(SIGNING_SHED),
            signing_status_changed: metrics::counter!(SIGNING_STATUS_CHANGED),
            events_changed: metrics::counter!(EVENTS_APPLIED, "result" => "changed"),
            events_unchanged: metrics::counter!(EVENTS_APPLIED, "result" => "unchanged"),
            events_undecodable: metrics::counter!(EVENTS_UNDECODABLE),
        }
    }

    /// Counts one response that is not an OCSP answer.
    pub fn http_other(&self, class: PathClass, status: u16) {
        let code = HTTP_CODES
            .iter()
            .position(|(c, _)| *c == status)
            .unwrap_or(HTTP_CODES.len() - 1);
        self.http_other[class as usize][code].increment(1);
    }

    /// Counts one OCSP request and its latency.
    pub fn request(&self, method: Method, outcome: Outcome, seconds: f64) {
        let m = method as usize;
        let o = OUTCOMES
            .iter()
            .position(|(x, _)| *x == outcome)
            .unwrap_or(0);
        self.requests[m][o].increment(1);
        self.latency[m].record(seconds);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_wanted(true, None));
        assert!(colour_wanted(true, Some(OsStr::new(""))));
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(!colour_wanted(false, None));
        assert!(!colour_wanted(false, Some(OsStr::new(""))));
    }
}
