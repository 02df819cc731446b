//! Backup health: the metrics file of a successful `vigil backup create`, its record in the
//! regions, and the gauge of the newest one that replicas and the archive role export.

use std::path::Path;

use super::error::io_at;
use super::{BackupError, Created, chosen_regions, temp_path};
use crate::clock::Clock;
use crate::config::Config;

/// How often a replica reads the last backup's record from the regions.
pub const LAST_SUCCESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// The key, in each region, where every successful `vigil backup create` from the regions
/// records itself (JSON: Unix time, file name, size, SHA-256), so the archive role's
/// `/metrics` can say how old the last backup is wherever the backup job ran.
pub fn last_success_key(cfg: &Config) -> String {
    let prefix = cfg.feed.as_ref().map_or("vigil", |f| f.key_prefix.as_str());
    format!("{prefix}:backup:last-success")
}

/// Writes the backup's health metrics to `path` in the Prometheus text format (for
/// node_exporter's textfile collector): written to a temporary name and renamed, so the
/// collector never reads half a file; only after a backup succeeded, so a failing job leaves
/// the old timestamp to age. The time of success is read from `clock`.
pub fn write_metrics_file(
    path: &Path,
    created: &Created,
    seconds: f64,
    clock: &Clock,
) -> Result<(), BackupError> {
    let now = clock.now_ms() as f64 / 1000.0;
    let name = crate::telemetry::BACKUP_LAST_SUCCESS;
    let text = format!(
        "# HELP {name} Unix time of the last successful vigil backup create.\n\
         # TYPE {name} gauge\n{name} {now:.3}\n\
         # HELP vigil_backup_last_size_bytes Size of the last successful backup.\n\
         # TYPE vigil_backup_last_size_bytes gauge\nvigil_backup_last_size_bytes {}\n\
         # HELP vigil_backup_last_duration_seconds How long the last successful backup took.\n\
         # TYPE vigil_backup_last_duration_seconds gauge\nvigil_backup_last_duration_seconds {seconds:.3}\n",
        created.bytes
    );
    let tmp = temp_path(path);
    std::fs::write(&tmp, text).map_err(io_at(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_at(path))
}

/// Records a successful backup in every region it was taken from (best effort: a region
/// that cannot be written only misses this record; the backup itself is done), at the time
/// `clock` reads.
pub async fn record_success(cfg: &Config, only: Option<&str>, created: &Created, clock: &Clock) {
    let Ok(regions) = chosen_regions(cfg, only) else {
        return;
    };
    let value = serde_json::json!({
        "at": clock.now_ms() as f64 / 1000.0,
        "bytes": created.bytes,
        "sha256": created.manifest.sha256,
    })
    .to_string();
    let key = last_success_key(cfg);
    for r in regions {
        let done = async {
            let mut c = r.writer().await?;
            redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .query_async::<()>(&mut c)
                .await
                .map_err(crate::feed::FeedError::from)
        };
        if let Err(e) = done.await {
            tracing::warn!(region = %r.name, error = %e, "could not record the backup's success in the region");
        }
    }
}

/// The newest successful backup recorded in any region, Unix seconds (`Some(0.0)` when the
/// regions that answered hold no record; `None` when no region answered).
pub async fn last_success(cfg: &Config) -> Option<f64> {
    let regions = crate::feed::region::regions(cfg).ok()?;
    let key = last_success_key(cfg);
    let mut newest: Option<f64> = None;
    for r in regions {
        let Ok(mut c) = r.writer().await else {
            continue;
        };
        let Ok(v) = redis::cmd("GET")
            .arg(&key)
            .query_async::<Option<String>>(&mut c)
            .await
        else {
            r.reset_writer().await;
            continue;
        };
        let at = v
            .and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok())
            .and_then(|j| j["at"].as_f64())
            .unwrap_or(0.0);
        newest = Some(newest.map_or(at, |n| n.max(at)));
    }
    newest
}

/// Keeps the `vigil_backup_last_success_timestamp_seconds` gauge at the newest backup any
/// region records, every `every` (the archive role's `/metrics`, and every replica of a feed).
/// 0 when the regions hold no record, which an age alert reads as "never"; unchanged while
/// no region answers.
pub async fn watch_last_success(cfg: Config, every: std::time::Duration) {
    let gauge = metrics::gauge!(crate::telemetry::BACKUP_LAST_SUCCESS);
    loop {
        if let Some(at) = last_success(&cfg).await {
            gauge.set(at);
        }
        tokio::time::sleep(every).await;
    }
}
