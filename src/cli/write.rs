//! `vigil revoke|issue|hold|release`: one status change, acknowledged by the feed's quorum or
//! the synced journal.

use super::*;

pub(super) fn parse_time(s: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("bad time {s:?} (expected RFC 3339, e.g. 2026-01-02T03:04:05Z): {e}"))
}

/// The serial, notAfter and certificate of a target (the last two when read from --cert).
pub(super) fn resolve(
    target: &Target,
) -> Result<(Serial, Option<i64>, Option<Certificate>), String> {
    if let Some(path) = &target.cert {
        let cert = vigil::pki::read_certificate(path).map_err(|e| e.to_string())?;
        let (serial, not_after) = vigil::pki::serial_and_not_after(&cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok((serial, Some(not_after), Some(cert)));
    }
    let hex = target.serial.as_deref().unwrap_or_default();
    Ok((
        Serial::from_hex(hex).map_err(|e| format!("--serial {hex:?}: {e}"))?,
        None,
        None,
    ))
}

/// For a revocation or hold given with --cert: the CRL its cRLDistributionPoints names, to
/// record beside the issuance. A revocation is never refused for it: a certificate that names
/// no CRL of the issuer is revoked without one (listed by its serial's shard), with a warning.
pub(super) fn scope_beside(
    cfg: &Config,
    issuer: &str,
    cert: Option<&Certificate>,
) -> Option<CrlScope> {
    let cert = cert?;
    match vigil::writer::CrlUrls::from_config(cfg).scope_of(issuer, cert) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warning: {e}; recording no CRL shard for it");
            None
        }
    }
}

/// Writes events to the feed's regions (with `[feed]`) or the local journal; returns where.
pub(super) fn append(
    cfg: &Config,
    clock: &vigil::clock::Clock,
    events: &[Event],
) -> Result<String, String> {
    for e in events {
        e.kind.check().map_err(|err| err.to_string())?;
    }
    app::prepare_embedded(cfg, clock).map_err(|e| e.to_string())?;
    if cfg.feed.is_none() {
        JournalWriter::open(cfg.journal_path())
            .and_then(|mut w| w.append(events))
            .map_err(|e| e.to_string())?;
        return Ok("the local journal".into());
    }
    let rt = small_runtime()?;
    rt.block_on(async {
        vigil::writer::StatusWriter::from_config(cfg)?
            .write(events.to_vec())
            .await
            .map(|w| w.summary)
    })
    .map_err(|e: vigil::writer::WriterError| e.to_string())
}

pub(super) fn small_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))
}

pub(super) fn event(
    cfg: &Config,
    clock: &vigil::clock::Clock,
    issuer: IssuerId,
    serial: Serial,
    kind: EventKind,
) -> Event {
    Event {
        issuer,
        serial,
        kind,
        origin: cfg.status.origin.clone(),
        created_at_ms: clock.now_ms(),
    }
}

pub(super) fn issuer_id(
    cfg: &Config,
    clock: &vigil::clock::Clock,
    name: &str,
) -> Result<IssuerId, String> {
    app::prepare_embedded(cfg, clock).map_err(|e| e.to_string())?;
    app::issuer_id(cfg, name).map_err(|e| e.to_string())
}

pub(super) fn revoke(
    cfg: &Config,
    clock: &vigil::clock::Clock,
    target: &Target,
    reason: &str,
    time: Option<&str>,
) -> Result<(), String> {
    let reason = RevocationReason::parse(reason).map_err(|e| format!("--reason: {e}"))?;
    let time = match time {
        Some(t) => parse_time(t)?,
        None => clock.now(),
    };
    let id = issuer_id(cfg, clock, &target.issuer)?;
    let (serial, not_after, cert) = resolve(target)?;
    let mut events = Vec::new();
    if let Some(na) = not_after {
        let scope = scope_beside(cfg, &target.issuer, cert.as_ref());
        for kind in vigil::writer::issuance_kinds(na, scope) {
            events.push(event(cfg, clock, id, serial, kind));
        }
    }
    events.push(event(
        cfg,
        clock,
        id,
        serial,
        EventKind::Revoked { time, reason },
    ));
    let at = append(cfg, clock, &events).map_err(|e| format!("revoking {serial}: {e}"))?;
    println!(
        "revoked {serial} of {} ({}), acknowledged by {at}",
        target.issuer,
        reason.name()
    );
    Ok(())
}

pub(super) fn issue(
    cfg: &Config,
    clock: &vigil::clock::Clock,
    target: &Target,
    not_after: Option<&str>,
) -> Result<(), String> {
    let id = issuer_id(cfg, clock, &target.issuer)?;
    let (serial, from_cert, cert) = resolve(target)?;
    let not_after = match (not_after, from_cert) {
        (Some(t), _) => parse_time(t)?,
        (None, Some(t)) => t,
        (None, None) => return Err("--not-after is required with --serial".into()),
    };
    // The CRL the certificate names is fixed now; one naming no CRL of the issuer is refused
    // before anything is written.
    let scope = match &cert {
        Some(c) => vigil::writer::CrlUrls::from_config(cfg)
            .scope_of(&target.issuer, c)
            .map_err(|e| format!("refusing the issuance of {serial}: {e}; nothing was written"))?,
        None => None,
    };
    let events: Vec<Event> = vigil::writer::issuance_kinds(not_after, scope)
        .into_iter()
        .map(|kind| event(cfg, clock, id, serial, kind))
        .collect();
    let at = append(cfg, clock, &events).map_err(|e| format!("recording {serial}: {e}"))?;
    let on = match scope {
        Some(s) => format!(" on {s}"),
        None => String::new(),
    };
    println!(
        "issued {serial} of {}{on}, acknowledged by {at}",
        target.issuer
    );
    Ok(())
}

/// `vigil hold` / `vigil release`: reads what is known of the certificate now (every reachable
/// region's snapshot, or the local journal), so the event is ordered after the hold or release
/// it supersedes, then writes it like a revocation.
pub(super) fn hold(
    cfg: &Config,
    clock: &vigil::clock::Clock,
    target: &Target,
    hold: bool,
    time: Option<&str>,
) -> Result<(), String> {
    let id = issuer_id(cfg, clock, &target.issuer)?;
    if !cfg.allows_holds(&target.issuer) {
        return Err(format!(
            "issuer {:?} does not allow holds (set allow_hold = true in its [[issuer]])",
            target.issuer
        ));
    }
    let (serial, not_after, cert) = resolve(target)?;
    let now = clock.now();
    let requested = time.map(parse_time).transpose()?;
    if requested.is_some_and(|t| t > now + vigil::crl::lint::MAX_CLOCK_SKEW_SECS) {
        return Err("--time: a hold may not start in the future".into());
    }
    let writer = vigil::writer::StatusWriter::from_config(cfg).map_err(|e| e.to_string())?;
    let current = small_runtime()?
        .block_on(writer.current_record(id, &serial))
        .map_err(|e| e.to_string())?;
    let kind = vigil::status::hold_change(current.as_ref(), hold, now, requested)
        .map_err(|e| format!("{serial}: {e}"))?;
    let mut events = Vec::new();
    if let (Some(na), true) = (not_after, hold) {
        let scope = scope_beside(cfg, &target.issuer, cert.as_ref());
        for kind in vigil::writer::issuance_kinds(na, scope) {
            events.push(event(cfg, clock, id, serial, kind));
        }
    }
    events.push(event(cfg, clock, id, serial, kind));
    let verb = if hold { "held" } else { "released" };
    let at = append(cfg, clock, &events).map_err(|e| format!("{verb} {serial}: {e}"))?;
    println!("{verb} {serial} of {}, acknowledged by {at}", target.issuer);
    Ok(())
}
