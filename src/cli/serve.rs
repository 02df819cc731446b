//! `vigil serve`, `vigil crl publish|urls` and `vigil check-config`.

use super::*;

pub(super) fn serve(cfg: Config, clock: vigil::clock::Clock) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    rt.block_on(app::serve(cfg, clock))
        .map_err(|e| e.to_string())
}

pub(super) fn crl_publish(cfg: Config, clock: &vigil::clock::Clock) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    for line in rt
        .block_on(app::publish_crls(cfg, clock.clone()))
        .map_err(|e| e.to_string())?
    {
        println!("{line}");
    }
    Ok(())
}

pub(super) fn crl_urls(cfg: &Config, issuer: &str, json: bool) -> Result<(), String> {
    if !cfg.issuers.iter().any(|i| i.name == issuer) {
        return Err(format!("no [[issuer]] named {issuer:?}"));
    }
    let settings = cfg.crl_of(issuer);
    let base = settings.base_url.as_deref().ok_or(
        "crl.base_url is not set (nor the issuer's crl.base_url): CCADB needs absolute CRL URLs (set it, or VIGIL_CRL_BASE_URL)",
    )?;
    let urls = vigil::crl_service::catalog::shard_urls(issuer, &settings.sharding(), base);
    if json {
        let doc = serde_json::to_string(&urls).map_err(|e| e.to_string())?;
        println!("{doc}");
    } else {
        for u in urls {
            println!("{u}");
        }
    }
    Ok(())
}

pub(super) fn check_config(cfg: &Config, clock: &vigil::clock::Clock) -> Result<(), String> {
    app::prepare_embedded(cfg, clock).map_err(|e| e.to_string())?;
    let issuers = app::load_issuers(cfg).map_err(|e| e.to_string())?;
    // CRL keys and CRL signer HSMs match their CA certificates, and the disk copies verify.
    let crl_pools = app::start_crl_pools(cfg).map_err(|e| e.to_string())?;
    vigil::crl_service::CrlService::new(
        std::sync::Arc::new(cfg.clone()),
        &issuers,
        true,
        &crl_pools,
        clock.clone(),
    )
    .map_err(|e| e.to_string())?;
    println!(
        "config OK: {} issuer(s): {}",
        issuers.len(),
        issuers
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
