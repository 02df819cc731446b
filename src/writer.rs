//! Where status changes go: the regions of the feed when `[feed]` is configured, the local
//! journal otherwise. Used by `vigil revoke` / `issue` / `import` and the admin API.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::feed::publish::{describe_failures, Publisher};
use crate::feed::region;
use crate::status::journal::JournalWriter;
use crate::status::Event;
use crate::telemetry;

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
    pub fn from_config(cfg: &Config) -> Result<Self, String> {
        match &cfg.feed {
            Some(f) => {
                let regions = region::regions(cfg).map_err(|e| e.to_string())?;
                Ok(StatusWriter::Feed(Arc::new(Publisher::new(regions, f))))
            }
            None => Ok(StatusWriter::Journal(cfg.journal_path())),
        }
    }

    /// Writes `events`; `Ok` only once they are acknowledged (synced to the journal, or held by
    /// a quorum of regions).
    pub async fn write(&self, events: Vec<Event>) -> Result<Written, String> {
        match self {
            StatusWriter::Journal(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    JournalWriter::open(path).and_then(|mut w| w.append(&events))
                })
                .await
                .map_err(|e| format!("journal task: {e}"))?
                .map_err(|e| e.to_string())?;
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
                    Err(e.to_string())
                }
            },
        }
    }
}
