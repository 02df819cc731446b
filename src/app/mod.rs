//! Start-up of vigil: config → issuers (keys, HSM pools) → status view → responder → listener
//! (`serve`), and the one-shot commands that need the same steps (`oneshot`). Every step's
//! failure is an [`AppError`].

use std::sync::Arc;

use crate::clock::Clock;
use crate::config::{Config, HsmConfig, IssuerSignerConfig, KeySource};
use crate::crl_service::CrlPools;
use crate::journal::{JournalReader, JournalWriter};
use crate::pki::{self, Issuer};
use crate::signer::pool::{PoolError, PoolSettings, key_spec};
use crate::signer::{SignerPool, SoftwareSigner};
use crate::status::StatusView;
use crate::telemetry::Metrics;

mod error;
mod oneshot;
mod serve;

pub use error::AppError;
pub use oneshot::{publish_crls, view_from_regions};
pub use serve::serve;

/// Loads every configured issuer (certificates, keys, checks).
pub fn load_issuers(cfg: &Config) -> Result<Vec<Issuer>, AppError> {
    load_signing(cfg).map(|s| s.issuers)
}

/// The issuers, and the HSM pools that sign for some of them.
pub struct Signing {
    /// Every configured issuer.
    pub issuers: Vec<Issuer>,
    /// One pool per issuer with an `[issuer.signer]`.
    pub pools: Vec<Arc<SignerPool>>,
}

/// Loads every issuer; for those with an `[issuer.signer]`, connects the HSM pool first
/// (logging in once per token, checking each HSM's key against the certificate).
pub fn load_signing(cfg: &Config) -> Result<Signing, AppError> {
    let keys = cfg
        .issuers
        .iter()
        .map(pki::ca_public_key)
        .collect::<Result<Vec<_>, _>>()?;
    cfg.validate_issuer_keys(&keys)?;
    let mut issuers = Vec::with_capacity(cfg.issuers.len());
    let mut pools = Vec::new();
    for ic in &cfg.issuers {
        let Some(sc) = ic.ocsp_key.hsm() else {
            issuers.push(pki::load_issuer(ic, cfg.ocsp.responder_id)?);
            continue;
        };
        let public_key = pki::signing_public_key(ic)?;
        let pool = Arc::new(start_pool(cfg, &ic.name, sc, public_key).map_err(|source| {
            AppError::Pool {
                issuer: ic.name.clone(),
                source,
            }
        })?);
        issuers.push(pki::load_issuer_with_signer(
            ic,
            cfg.ocsp.responder_id,
            pool.clone(),
        )?);
        pools.push(pool);
    }
    Ok(Signing { issuers, pools })
}

/// Connects the CRL signer pool of every issuer with an `[issuer.crl_signer]`, checking each
/// HSM's key against the **CA** certificate (CRLs are signed by the CA key, never by a
/// delegated responder's). Each pool is labelled `<issuer>/crl` in logs and metrics. Only
/// nodes that publish CRLs need this (`crl.publish`, `vigil crl publish`, `check-config`).
pub fn start_crl_pools(cfg: &Config) -> Result<CrlPools, AppError> {
    let mut pools = CrlPools::new();
    for ic in &cfg.issuers {
        let Some(sc) = ic.crl_key.as_ref().and_then(KeySource::hsm) else {
            continue;
        };
        let ca_key = pki::ca_public_key(ic)?;
        let pool = start_pool(cfg, &crl_pool_label(&ic.name), sc, ca_key).map_err(|source| {
            AppError::CrlPool {
                issuer: ic.name.clone(),
                certificate: ic.certificate.display().to_string(),
                source,
            }
        })?;
        pools.insert(ic.name.clone(), Arc::new(pool));
    }
    Ok(pools)
}

/// The name of an issuer's CRL signer pool in logs and in the `issuer` label of its metrics.
pub fn crl_pool_label(issuer: &str) -> String {
    format!("{issuer}/crl")
}

/// The `[[hsm]]` entries an issuer names, in its order.
pub fn issuer_hsms<'a>(cfg: &'a Config, sc: &IssuerSignerConfig) -> Vec<&'a HsmConfig> {
    sc.hsm
        .iter()
        .filter_map(|n| cfg.hsms.iter().find(|h| &h.name == n))
        .collect()
}

/// Starts the pool of the HSMs `sc` names (and its lab fallback), whose key must be
/// `public_key` (a certificate's subjectPublicKey); `label` names the pool in logs and metrics.
pub fn start_pool(
    cfg: &Config,
    label: &str,
    sc: &IssuerSignerConfig,
    public_key: Vec<u8>,
) -> Result<SignerPool, PoolError> {
    let fallback = match &sc.danger_software_fallback {
        Some(p) => Some(SoftwareSigner::from_pem_file(p).map_err(PoolError::FallbackKey)?),
        None => None,
    };
    let members = issuer_hsms(cfg, sc).into_iter().map(key_spec).collect();
    SignerPool::start(
        label,
        public_key,
        members,
        fallback,
        PoolSettings::from_config(&cfg.hsm_pool),
    )
}

/// For the embedded default: makes the demo PKI on first start and journals its events.
pub fn prepare_embedded(cfg: &Config, clock: &Clock) -> Result<(), AppError> {
    if !cfg.embedded {
        return Ok(());
    }
    let events = crate::demo::ensure_demo_pki(&cfg.data_dir, &cfg.status.origin, clock)?;
    if !events.is_empty() {
        JournalWriter::open(cfg.journal_path()).and_then(|mut w| w.append(&events))?;
        tracing::info!(dir = %cfg.data_dir.display(), "made the demo PKI");
    }
    Ok(())
}

/// Reads the whole journal into `view`, warning about a torn tail or corruption.
pub fn replay_journal(
    reader: &mut JournalReader,
    view: &StatusView,
    metrics: &Metrics,
) -> Result<usize, crate::journal::JournalError> {
    let batch = reader.read_new()?;
    if batch.torn_tail {
        tracing::warn!(
            offset = reader.offset(),
            "journal ends in an incomplete record; it is ignored (the next write truncates it)"
        );
    }
    if let Some(at) = batch.corrupt_at {
        tracing::error!(
            offset = at,
            "journal is corrupt at this offset; records after it are not read"
        );
    }
    metrics
        .events_undecodable
        .increment(batch.undecodable as u64);
    for e in &batch.events {
        view.apply(e);
    }
    Ok(batch.events.len())
}

/// The issuer id of a configured issuer, from its CA certificate only (for CLI commands).
pub fn issuer_id(cfg: &Config, name: &str) -> Result<crate::status::IssuerId, AppError> {
    use der::Encode;
    let ic = cfg
        .issuers
        .iter()
        .find(|i| i.name == name)
        .ok_or_else(|| AppError::NoIssuer {
            name: name.to_string(),
            configured: cfg
                .issuers
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let cert = pki::read_certificate(&ic.certificate)?;
    let subject = cert.tbs_certificate.subject.to_der()?;
    Ok(crate::ocsp::IssuerHashes::new(
        &subject,
        cert.tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes(),
    )
    .id)
}
