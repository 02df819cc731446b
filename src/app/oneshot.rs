//! The one-shot commands that need start-up's steps: `vigil crl publish`, and the view of
//! every reachable region for the commands that read the feed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{AppError, load_issuers, prepare_embedded, replay_journal, start_crl_pools};
use crate::apply::Applier;
use crate::clock::Clock;
use crate::config::Config;
use crate::crl_service::CrlService;
use crate::feed::consume::{self, FeedState};
use crate::feed::health::FeedHealth;
use crate::feed::region;
use crate::journal::JournalReader;
use crate::status::StatusView;
use crate::telemetry::Metrics;

/// The staleness bound of a one-shot view's health (it is read once, never served).
const ONESHOT_STALENESS: Duration = Duration::from_secs(60);

/// `vigil crl publish`: connects the CRL signers (keys and HSM pools), builds the status view
/// from the journal, then publishes every issuer's complete CRLs once (no lease) into every region's Redis, or the data directory.
pub async fn publish_crls(cfg: Config, clock: Clock) -> Result<Vec<String>, AppError> {
    prepare_embedded(&cfg, &clock)?;
    let issuers = load_issuers(&cfg)?;
    let crl_pools = start_crl_pools(&cfg)?;
    let view = if cfg.feed.is_some() {
        view_from_regions(&cfg, &clock).await?
    } else {
        let view = Arc::new(StatusView::new());
        let metrics = Metrics::new();
        replay_journal(&mut JournalReader::new(cfg.journal_path()), &view, &metrics)?;
        view
    };
    let crl = CrlService::new(Arc::new(cfg), &issuers, true, &crl_pools, clock)?;
    Ok(crl.publish_once(view).await?)
}

/// With `[feed]`: the join of every reachable region's snapshot, for one-shot commands. Fails
/// when no region is reachable; warns when some are not (their writes that missed the others
/// may be absent until repair).
pub async fn view_from_regions(cfg: &Config, clock: &Clock) -> Result<Arc<StatusView>, AppError> {
    let regions = region::regions(cfg)?;
    let names: Vec<String> = regions.iter().map(|r| r.name.clone()).collect();
    let health = Arc::new(FeedHealth::new(&names, ONESHOT_STALENESS));
    let view = Arc::new(StatusView::new());
    let applier = Arc::new(Applier::new(view.clone(), None));
    let state = FeedState::new(
        applier,
        health.clone(),
        None,
        HashMap::new(),
        None,
        clock.clone(),
    );
    let mut failed = Vec::new();
    for r in &regions {
        let Some(h) = health.region(&r.name) else {
            continue;
        };
        let result = async {
            let mut c = r.connect(Some(r.write_timeout())).await?;
            let epoch = consume::ensure_epoch(r, &mut c).await?;
            consume::bootstrap(&state, r, h, &mut c, &epoch).await
        }
        .await;
        if let Err(e) = result {
            failed.push((r.name.clone(), e.to_string()));
        }
    }
    let failures = crate::feed::publish::describe_failures(&failed);
    if failed.len() == regions.len() {
        return Err(AppError::NoRegionReachable(failures));
    }
    if !failed.is_empty() {
        tracing::warn!(regions = %failures, "some feed regions are unreachable; using the others");
    }
    Ok(view)
}
