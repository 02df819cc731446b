//! `vigil status`: what the journal or each feed region holds for an issuer or a certificate.

use super::*;

/// `vigil status` with `[feed]`: what each region's snapshot holds, and their join.
pub(super) fn feed_status(
    cfg: &Config,
    issuer: &str,
    id: IssuerId,
    serial: Option<&str>,
) -> Result<(), String> {
    let regions = vigil::feed::region::regions(cfg).map_err(|e| e.to_string())?;
    let serial = serial
        .map(|hex| Serial::from_hex(hex).map_err(|e| format!("--serial {hex:?}: {e}")))
        .transpose()?;
    small_runtime()?.block_on(async {
        let mut joined: Option<vigil::status::CertRecord> = None;
        let mut reached = 0;
        for r in &regions {
            match &serial {
                Some(s) => match r.snapshot_record(&id, s).await {
                    Ok(rec) => {
                        reached += 1;
                        println!("region {}: {}", r.name, describe_record(rec.as_ref()));
                        if let Some(rec) = rec {
                            joined = Some(joined.map_or(rec, |j| j.join(rec)));
                        }
                    }
                    Err(e) => println!("region {}: unreachable ({e})", r.name),
                },
                None => match r.snapshot_len(&id).await {
                    Ok(n) => {
                        reached += 1;
                        println!("region {}: {n} certificate(s) of {issuer}", r.name);
                    }
                    Err(e) => println!("region {}: unreachable ({e})", r.name),
                },
            }
        }
        if let Some(s) = &serial {
            println!("{s}: {}", describe_record(joined.as_ref()));
            print_crl_scope(s, joined.as_ref());
        }
        if reached == 0 {
            return Err("no region reachable".to_owned());
        }
        Ok(())
    })
}

/// The CRL the certificate's cRLDistributionPoints names, when recorded at issuance.
pub(super) fn print_crl_scope(serial: &Serial, r: Option<&vigil::status::CertRecord>) {
    if let Some(scope) = r.and_then(|r| r.crl_scope()) {
        println!("{serial}: listed on {scope} (named by its cRLDistributionPoints)");
    }
}

pub(super) fn describe_record(r: Option<&vigil::status::CertRecord>) -> String {
    match r.map(|r| r.status()) {
        None | Some(CertStatus::Unissued) => {
            "not issued (answered per the issuer's unissued policy)".into()
        }
        Some(CertStatus::Good) => "good".into(),
        Some(CertStatus::Revoked(r)) => format!("revoked at {} ({})", r.time, r.reason.name()),
    }
}

pub(super) fn status(
    cfg: &Config,
    clock: &vigil::clock::Clock,
    issuer: &str,
    serial: Option<&str>,
) -> Result<(), String> {
    let id = issuer_id(cfg, clock, issuer)?;
    if cfg.feed.is_some() {
        return feed_status(cfg, issuer, id, serial);
    }
    let view = StatusView::new();
    let metrics = vigil::telemetry::Metrics::new();
    app::replay_journal(&mut JournalReader::new(cfg.journal_path()), &view, &metrics)
        .map_err(|e| e.to_string())?;
    let table = view.table(id);
    match serial {
        Some(hex) => {
            let serial = Serial::from_hex(hex).map_err(|e| format!("--serial {hex:?}: {e}"))?;
            match table.status_with(&serial, cfg.allows_holds(issuer)) {
                CertStatus::Good => println!("{serial}: good"),
                CertStatus::Revoked(r) => {
                    println!("{serial}: revoked at {} ({})", r.time, r.reason.name())
                }
                CertStatus::Unissued => {
                    println!("{serial}: not issued (answered per the issuer's unissued policy)")
                }
            }
            print_crl_scope(&serial, table.record(&serial).as_ref());
        }
        None => {
            let (mut total, mut revoked) = (0usize, 0usize);
            table.for_each(|_, r| {
                total += 1;
                revoked += usize::from(r.revocation().is_some());
            });
            println!("{issuer}: {total} certificate(s), {revoked} revoked");
        }
    }
    Ok(())
}
