//! `vigil backup`, `vigil archive`, `vigil drill restore` and `vigil key`: disaster recovery
//! from the command line.

use super::*;

pub(super) fn print_counts(m: &vigil::backup::format::Manifest) {
    for (source, issuers) in &m.counts {
        for (issuer, c) in issuers {
            println!(
                "{source} issuer {issuer}: {} certificates, {} revoked, {} on hold, digest {}",
                c.records, c.revoked, c.held, c.digest
            );
        }
    }
    println!("{} CRL(s)", m.crls);
}

pub(super) fn print_same_as(same: &[vigil::backup::format::SameAs]) {
    for s in same {
        for (issuer, (records, digest)) in &s.issuers {
            println!(
                "{} issuer {issuer}: {records} certificates, digest {digest}: the same as {} when the backup started, backed up as {}",
                s.source, s.same_as, s.same_as
            );
        }
        if s.issuers.is_empty() {
            println!("{}: empty, as {} was", s.source, s.same_as);
        }
    }
}

pub(super) fn backup_verify(file: &Path, identity: Option<&Path>) -> ExitCode {
    let started = std::time::Instant::now();
    match vigil::backup::verify(file, identity) {
        Ok(v) => {
            println!(
                "{}: vigil backup v{} of {} taken {}, sha256 {}",
                file.display(),
                v.header.version,
                v.header.source,
                v.header.created_at,
                v.manifest.sha256
            );
            for p in &v.header.positions {
                println!(
                    "  {} epoch {} at stream id {}",
                    p.source, p.epoch, p.stream_id
                );
            }
            print_counts(&v.manifest);
            print_same_as(&v.header.same_as);
            println!(
                "ok: every checksum matches ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vigil: {}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

pub(super) fn backup(
    cfg: &Config,
    config_path: Option<&Path>,
    command: BackupCommand,
    clock: &vigil::clock::Clock,
) -> Result<(), String> {
    // Two workers: the regions' scans (create) and loaders (restore) run beside the thread that
    // writes or reads the file.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    let run = BackupRun {
        cfg,
        config_path,
        rt,
        started: std::time::Instant::now(),
        clock,
    };
    match command {
        BackupCommand::Create {
            out,
            from_checkpoint,
            region,
            every_region,
            metrics_file,
            recipient,
        } => run.create(
            &out,
            from_checkpoint.as_deref(),
            region.as_deref(),
            every_region,
            metrics_file.as_deref(),
            recipient.as_deref(),
        ),
        BackupCommand::Verify { .. } => Err("verify is handled before the config is loaded".into()),
        BackupCommand::Restore {
            file,
            region,
            archive: Some(archive),
            until: Some(until),
            out,
            identity,
        } => run.restore_at(
            &file,
            region.as_deref(),
            &archive,
            &until,
            out.as_deref(),
            identity.as_deref(),
        ),
        BackupCommand::Restore {
            file,
            region,
            identity,
            ..
        } => run.restore(&file, region.as_deref(), identity.as_deref()),
    }
}

/// What every `vigil backup` command runs with.
struct BackupRun<'a> {
    cfg: &'a Config,
    config_path: Option<&'a Path>,
    rt: tokio::runtime::Runtime,
    started: std::time::Instant,
    clock: &'a vigil::clock::Clock,
}

impl BackupRun<'_> {
    /// `vigil backup create`: from a checkpoint, the regions (one or every one) or the journal.
    fn create(
        &self,
        out: &Path,
        from_checkpoint: Option<&Path>,
        region: Option<&str>,
        every_region: bool,
        metrics_file: Option<&Path>,
        recipient: Option<&str>,
    ) -> Result<(), String> {
        let source = match (from_checkpoint, region) {
            (Some(p), _) => vigil::backup::Source::Checkpoint(p),
            (None, r) if !self.cfg.regions.is_empty() && every_region => {
                vigil::backup::Source::EveryRegion(r)
            }
            (None, r) if !self.cfg.regions.is_empty() => vigil::backup::Source::Regions(r),
            (None, Some(_)) => return Err("--region needs configured [[region]]s".into()),
            (None, None) => vigil::backup::Source::Journal,
        };
        let digest = vigil::backup::config_digest(self.config_path);
        let created = self
            .rt
            .block_on(vigil::backup::create(
                self.cfg, source, out, digest, recipient, self.clock,
            ))
            .map_err(|e| e.to_string())?;
        let seconds = self.started.elapsed().as_secs_f64();
        if let Some(m) = &metrics_file {
            vigil::backup::write_metrics_file(m, &created, seconds, self.clock)
                .map_err(|e| e.to_string())?;
        }
        if from_checkpoint.is_none() && !self.cfg.regions.is_empty() {
            self.rt.block_on(vigil::backup::record_success(
                self.cfg, region, &created, self.clock,
            ));
        }
        print_counts(&created.manifest);
        print_same_as(&created.same_as);
        println!(
            "{}: {} bytes, sha256 {}, written in {:.1} s",
            out.display(),
            created.bytes,
            created.manifest.sha256,
            self.started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// `vigil backup restore --archive --until`: the state at a time, written to a file or
    /// merged into the regions.
    fn restore_at(
        &self,
        file: &Path,
        region: Option<&str>,
        archive: &Path,
        until: &str,
        out: Option<&Path>,
        identity: Option<&Path>,
    ) -> Result<(), String> {
        let until_ms = vigil::clock::parse_rfc3339_ms(until).map_err(|e| e.to_string())?;
        let pit = vigil::backup::state_at(file, identity, archive, until_ms)
            .map_err(|e| e.to_string())?;
        let r = &pit.replayed;
        println!(
            "backup {} (finished {}) + archive {} ({} segment(s), head {}): {} event(s) up to {until} joined, {} later left out, {} fill record(s), {} undecodable",
            file.display(),
            pit.backup_finished_at,
            archive.display(),
            r.segments,
            r.head,
            r.events,
            r.later,
            r.fill_records,
            r.undecodable
        );
        for w in &r.warnings {
            println!("warning: {w}");
        }
        for (id, table) in pit.view.issuers() {
            let mut t = vigil::backup::format::Tally::default();
            table.for_each(|s, rec| t.add(s, rec));
            println!(
                "state as of {until}: issuer {}: {} certificates, {} revoked, {} on hold",
                vigil::status::hex(&id.0),
                t.records,
                t.revoked,
                t.held
            );
        }
        if let Some(out) = out {
            let created = vigil::backup::write_view_file(
                &pit.view,
                "point-in-time",
                pit.header.positions.clone(),
                vigil::backup::config_digest(self.config_path),
                out,
                self.clock,
            )
            .map_err(|e| e.to_string())?;
            println!(
                "{}: the state as of {until}, {} bytes, sha256 {}",
                out.display(),
                created.bytes,
                created.manifest.sha256
            );
        } else {
            let report = self
                .rt
                .block_on(vigil::backup::merge_view(self.cfg, &pit.view, region))
                .map_err(|e| e.to_string())?;
            for (region, r) in &report {
                for (issuer, (sent, changed)) in &r.issuers {
                    println!(
                        "{region} issuer {issuer}: {sent} certificates merged, {changed} changed the region"
                    );
                }
            }
        }
        println!("restored in {:.1} s", self.started.elapsed().as_secs_f64());
        Ok(())
    }

    /// `vigil backup restore`: the backup merged into the regions, its CRLs stored.
    fn restore(
        &self,
        file: &Path,
        region: Option<&str>,
        identity: Option<&Path>,
    ) -> Result<(), String> {
        let report = self
            .rt
            .block_on(vigil::backup::restore(self.cfg, file, region, identity))
            .map_err(|e| e.to_string())?;
        for (region, r) in &report {
            for (issuer, (sent, changed)) in &r.issuers {
                let same = r.identical.get(issuer).copied().unwrap_or(0);
                let note = if same > 0 {
                    format!(
                        " ({same} more in another source of the backup, identical: not sent again)"
                    )
                } else {
                    String::new()
                };
                println!(
                    "{region} issuer {issuer}: {sent} certificates merged, {changed} changed the region{note}"
                );
            }
            println!(
                "{region}: {} CRL(s) stored, {} already there at that number or newer",
                r.crls_stored, r.crls_newer_there
            );
        }
        println!("restored in {:.1} s", self.started.elapsed().as_secs_f64());
        Ok(())
    }
}

pub(super) fn archive(
    cfg: &Config,
    dir: Option<PathBuf>,
    segment_bytes: u64,
    metrics_addr: Option<std::net::SocketAddr>,
    regions: Vec<String>,
    clock: &vigil::clock::Clock,
) -> Result<(), String> {
    let dir = dir.ok_or("vigil archive needs --dir (or `vigil archive verify DIR`)")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    rt.block_on(async {
        if let Some(addr) = metrics_addr {
            let handle = vigil::telemetry::install_recorder().map_err(|e| e.to_string())?;
            vigil::archive::serve_metrics(addr, handle)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(vigil::backup::watch_last_success(
                cfg.clone(),
                std::time::Duration::from_secs(5),
            ));
        }
        let opts = vigil::archive::RoleOptions {
            dir,
            segment_bytes,
            regions,
        };
        tokio::select! {
            r = vigil::archive::run(cfg, opts, clock) => r.map_err(|e| e.to_string()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

pub(super) fn drill_restore(
    cfg: &Config,
    backup: &Path,
    identity: Option<&Path>,
    scratch: &str,
    flush: bool,
    json: Option<&Path>,
) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = std::time::Instant::now();
    let report = match rt.block_on(vigil::backup::drill::restore_drill(
        cfg, backup, identity, scratch, flush,
    )) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vigil: drill restore: {e}");
            println!("FAIL: the restore drill could not run: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (ih, c) in &report.backup {
        let r = report.restored.get(ih);
        println!(
            "issuer {ih}: backup {} certificates ({} revoked, {} held, digest {}); restored {}",
            c.records,
            c.revoked,
            c.held,
            c.digest,
            match r {
                Some(r) if r == c => "the same".to_owned(),
                Some(r) => format!("{} certificates, digest {}", r.records, r.digest),
                None => "nothing".to_owned(),
            }
        );
    }
    for (region, per) in &report.live {
        for (ih, c) in per {
            if c.identical {
                println!(
                    "live region {region}: issuer {ih}: {} certificates, identical to the backup",
                    c.records
                );
            } else {
                println!(
                    "live region {region}: issuer {ih}: {} certificates; since the backup {} changed and {} new; {} missing{}, {} behind{}",
                    c.records,
                    c.ahead,
                    c.newer,
                    c.missing_count,
                    if c.missing.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", c.missing.join(", "))
                    },
                    c.behind_count,
                    if c.behind.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", c.behind.join(", "))
                    },
                );
            }
        }
    }
    let timings: Vec<String> = report
        .timings
        .iter()
        .map(|(step, s)| format!("{step} {s:.2} s"))
        .collect();
    println!(
        "timings: {}; total {:.2} s",
        timings.join(", "),
        started.elapsed().as_secs_f64()
    );
    for f in &report.failures {
        println!("failure: {f}");
    }
    if let Some(path) = json {
        let doc = serde_json::json!({
            "passed": report.passed(),
            "failures": report.failures,
            "timings": report.timings.iter().map(|(k, v)| (k.to_string(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
            "backup": report.backup,
            "restored": report.restored,
            "live": report.live.iter().map(|(r, per)| (r.clone(), per.iter().map(|(ih, c)| (ih.clone(), serde_json::json!({
                "records": c.records, "identical": c.identical, "changed_since": c.ahead,
                "new_since": c.newer, "missing": c.missing_count, "behind": c.behind_count,
                "missing_serials": c.missing, "behind_serials": c.behind,
            }))).collect::<std::collections::BTreeMap<_, _>>())).collect::<std::collections::BTreeMap<_, _>>(),
        });
        if let Err(e) = std::fs::write(path, doc.to_string()) {
            eprintln!("vigil: {}: {e}", path.display());
        }
    }
    if report.passed() {
        println!("PASS: the backup restores completely and no live region lost what it holds");
        ExitCode::SUCCESS
    } else {
        println!("FAIL: {} problem(s)", report.failures.len());
        ExitCode::FAILURE
    }
}

pub(super) fn archive_verify(dir: &Path) -> ExitCode {
    match vigil::archive::verify(dir) {
        Ok(w) => {
            for (region, p) in &w.positions {
                println!(
                    "{region}: archived up to stream id {} (epoch {})",
                    p.id, p.epoch
                );
            }
            for f in &w.fills {
                println!(
                    "gap filled: region {} from its snapshot ({} records), ended {}: {}",
                    f.region,
                    f.records,
                    vigil::clock::rfc3339_ms(f.at_ms),
                    f.reason
                );
            }
            if let Some(t) = &w.torn {
                println!("warning: {t}");
            }
            let span = match (w.first_event_ms, w.last_event_ms) {
                (Some(a), Some(b)) => format!(
                    ", {} .. {}",
                    vigil::clock::rfc3339_ms(a as i64),
                    vigil::clock::rfc3339_ms(b as i64)
                ),
                _ => String::new(),
            };
            println!(
                "ok: {} segment(s){}, {} blocks, {} events{span}; head {}",
                w.segments,
                if w.open { " (the last open)" } else { "" },
                w.blocks,
                w.events,
                w.head
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vigil: archive {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

pub(super) fn key(command: &KeyCommand) -> ExitCode {
    let result = match command {
        KeyCommand::Split {
            key,
            shares,
            threshold,
            out,
        } => vigil::keyshare::split(key, *shares, *threshold, out).map(|files| {
            for f in &files {
                println!("{}", f.display());
            }
            println!(
                "{} shares written; any {threshold} rebuild the key. Give one to each custodian, \
                 then delete {} where policy says so.",
                files.len(),
                key.display()
            );
        }),
        KeyCommand::Combine { out, cert, shares } => {
            vigil::keyshare::combine(shares, out, cert.as_deref()).map(|fp| {
                println!("{}: key rebuilt (public half {fp})", out.display());
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil: {e}");
            ExitCode::FAILURE
        }
    }
}
