//! The `vigil` command.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use der::Decode;

use vigil::app;
use vigil::config::Config;
use vigil::journal::{JournalReader, JournalWriter};
use vigil::status::{
    CertStatus, CrlScope, Event, EventKind, IssuerId, RevocationReason, Serial, StatusView,
};
use x509_cert::Certificate;

#[derive(Parser)]
#[command(
    name = "vigil",
    version,
    about = "Active-active OCSP and CRL validation responder"
)]
struct Cli {
    /// Config file (TOML). Without one, vigil runs its embedded default in ./vigil-data.
    #[arg(long, global = true, env = vigil::config::ENV_CONFIG)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve OCSP (the default command).
    Serve,
    /// Record a revocation.
    Revoke {
        #[command(flatten)]
        target: Target,
        /// CRLReason name, e.g. keyCompromise, superseded, cessationOfOperation.
        #[arg(long, default_value = "unspecified")]
        reason: String,
        /// revocationTime, RFC 3339 (default: now).
        #[arg(long)]
        time: Option<String>,
    },
    /// Put a certificate on hold (certificateHold; issuers with `allow_hold` only).
    Hold {
        #[command(flatten)]
        target: Target,
        /// When the hold took effect, RFC 3339 (default: now; not in the future).
        #[arg(long)]
        time: Option<String>,
    },
    /// Release a certificate from hold.
    Release {
        #[command(flatten)]
        target: Target,
    },
    /// Record an issuance.
    Issue {
        #[command(flatten)]
        target: Target,
        /// notAfter, RFC 3339 (taken from --cert when given).
        #[arg(long)]
        not_after: Option<String>,
    },
    /// Import an OpenSSL CA database (index.txt), or certificates (PEM files).
    Import {
        /// The index.txt file.
        #[arg(long, required_unless_present = "pem", conflicts_with = "pem")]
        openssl_index: Option<PathBuf>,
        /// PEM files of certificates (each may hold several): each issuance is recorded with
        /// the CRL shard its cRLDistributionPoints names; one naming no CRL of the issuer
        /// refuses the whole import, writing nothing.
        #[arg(long, num_args = 1..)]
        pem: Vec<PathBuf>,
        /// Issuer (configured name) the database belongs to.
        #[arg(long)]
        issuer: String,
    },
    /// Show what the local status view holds.
    Status {
        /// Issuer (configured name).
        #[arg(long)]
        issuer: String,
        /// Serial in hex; without it, counts are shown.
        #[arg(long)]
        serial: Option<String>,
    },
    /// Validate the configuration, certificates and keys, then exit.
    CheckConfig,
    /// CRL operations.
    Crl {
        #[command(subcommand)]
        command: CrlCommand,
    },
    /// PKCS#11 HSMs: what the modules show, and a test signature with each.
    Hsm {
        #[command(subcommand)]
        command: HsmCommand,
    },
    /// Check a live deployment without changing it (readiness, verified answers, a
    /// consistency audit across replicas and regions, feed lag, CRL freshness, certificate
    /// expiry); `--write` adds a canary revocation timed to every replica. Needs no config.
    /// Exit 0: every check passed (warnings allowed); 1: something falls short.
    Drill(Box<DrillArgs>),
    /// Backups of the status data and stored CRLs: create, verify, restore.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// The revocation archive: follow every region's stream into hash-chained segment files
    /// in --dir (resuming where the archive stands; a stream trimmed past that position is
    /// filled from the region's snapshot), or `verify` a directory.
    #[command(args_conflicts_with_subcommands = true)]
    Archive {
        #[command(subcommand)]
        command: Option<ArchiveCommand>,
        /// The archive directory (a volume, or an object-store mount).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Close a segment (seal it, start the next) once it holds this many bytes.
        #[arg(long, default_value_t = vigil::archive::DEFAULT_SEGMENT_BYTES)]
        segment_bytes: u64,
        /// Serve /metrics (vigil_archive_lag_seconds, vigil_backup_last_success_timestamp_seconds)
        /// on this address, e.g. 0.0.0.0:9464.
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Only this region (repeat; default: every configured region).
        #[arg(long = "region")]
        regions: Vec<String>,
    },
    /// Split-custody backup of software keys (Shamir's secret sharing). Needs no config.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Internal: one PKCS#11 key in a process of its own, started by vigil with the key's
    /// `module_env` and driven over stdin/stdout (src/signer/pkcs11/host.rs). Not for people.
    #[command(name = "pkcs11-host", hide = true)]
    Pkcs11Host,
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Write one consistent backup file: every region's snapshot at one stream position per
    /// region and the stored CRLs (or --from-checkpoint, or the single-node journal).
    Create {
        /// The backup file (written to a temporary name, then renamed).
        #[arg(long)]
        out: PathBuf,
        /// Back up a replica's checkpoint file instead of the regions.
        #[arg(long, conflicts_with = "region")]
        from_checkpoint: Option<PathBuf>,
        /// Only this region.
        #[arg(long)]
        region: Option<String>,
        /// Scan every region, also one that holds exactly what an earlier region holds (the
        /// same count and digest of every issuer when the backup starts), which is otherwise
        /// backed up as that region.
        #[arg(long, conflicts_with = "from_checkpoint")]
        every_region: bool,
        /// Also write vigil_backup_last_success_timestamp_seconds (and the backup's size and
        /// duration) to this file in the Prometheus text format, atomically, on success only:
        /// for node_exporter's textfile collector.
        #[arg(long)]
        metrics_file: Option<PathBuf>,
        /// Encrypt the backup to this age X25519 recipient (`age1…`, from `age-keygen`): no
        /// plaintext is written; verify and restore need the identity (--identity).
        #[arg(long)]
        recipient: Option<String>,
    },
    /// Check every section's checksum, the manifest's counts and digests and the file's
    /// SHA-256; print counts per source and issuer. Exit 1 on any mismatch. Needs no config.
    Verify {
        /// The backup file.
        file: PathBuf,
        /// The age identity file, for an encrypted backup.
        #[arg(long)]
        identity: Option<PathBuf>,
    },
    /// Merge a backup into every region (or one): the feed's join, so a restore never removes
    /// or downgrades a newer revocation. Verifies the whole file first.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Only this region.
        #[arg(long)]
        region: Option<String>,
        /// Point in time: the archive directory whose events (up to --until) are joined onto
        /// the backup, which must have finished before --until.
        #[arg(long, requires = "until")]
        archive: Option<PathBuf>,
        /// Point in time: RFC 3339. The state as of this time is rebuilt.
        #[arg(long, requires = "archive")]
        until: Option<String>,
        /// With --until: write the rebuilt state to this backup file instead of the regions
        /// (to show an auditor, or to check before restoring).
        #[arg(long, requires = "until")]
        out: Option<PathBuf>,
        /// The age identity file, for an encrypted backup.
        #[arg(long)]
        identity: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DrillCommand {
    /// The restore test: verify a backup, restore it into a scratch Redis (never a configured
    /// region), check the scratch holds exactly the backup, and compare it with every live
    /// region (counts and digests per issuer, differences listed). Exit 0: pass; 1: fail.
    Restore {
        /// The backup file.
        #[arg(long)]
        backup: PathBuf,
        /// The scratch Redis, redis://host:port[/db].
        #[arg(long)]
        scratch_redis: String,
        /// Delete the keys the scratch already holds under the feed's key prefix first (a
        /// previous drill's); without it, a non-empty scratch is refused.
        #[arg(long)]
        flush_scratch: bool,
        /// The age identity file, for an encrypted backup.
        #[arg(long)]
        identity: Option<PathBuf>,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ArchiveCommand {
    /// Check every segment: each block's chain value, each segment's header (index, the
    /// previous segment's SHA-256) and seal; names the first bad segment. Exit 1 on damage.
    /// Needs no config.
    Verify {
        /// The archive directory.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Split a PEM key (responder key, CA CRL-signing key) into share files, one per custodian;
    /// any --threshold of them rebuild it.
    Split {
        /// The key file (PEM: PKCS#8 ECDSA P-256/P-384 or RSA, or PKCS#1 RSA).
        #[arg(long)]
        key: PathBuf,
        /// Shares to make (one per custodian), 2..=255.
        #[arg(long, default_value_t = 5)]
        shares: u8,
        /// Shares needed to rebuild the key, 2..=shares.
        #[arg(long, default_value_t = 3)]
        threshold: u8,
        /// Directory for the share files (created if missing; existing shares are never replaced).
        #[arg(long)]
        out: PathBuf,
    },
    /// Rebuild a key from share files; refuses (writing nothing) with too few shares, shares of
    /// different keys, or a damaged share.
    Combine {
        /// Where to write the key (mode 0600; must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Check that the rebuilt key is this certificate's key.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// The share files.
        #[arg(required = true)]
        shares: Vec<PathBuf>,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct DrillArgs {
    #[command(subcommand)]
    command: Option<DrillCommand>,
    /// Replica base URL, e.g. http://10.0.0.5:8080 (repeat for each replica; not the LB).
    #[arg(long = "replica", required = true)]
    replicas: Vec<String>,
    /// Region Redis, NAME=redis://host:port (repeat per region).
    #[arg(long = "redis")]
    regions: Vec<String>,
    /// Feed key prefix (feed.key_prefix).
    #[arg(long, default_value = "vigil")]
    key_prefix: String,
    /// Issuer, NAME=ca.pem: its configured name (for /crl/NAME.crl) and CA certificate.
    #[arg(long = "issuer", required = true)]
    issuers: Vec<String>,
    /// Serial (hex) to audit on every replica (repeat; a few good, revoked and unissued ones).
    #[arg(long = "serial")]
    serials: Vec<String>,
    /// Feed lag above this fails the drill.
    #[arg(long, default_value = "10s")]
    max_lag: humantime::Duration,
    /// Certificates expiring within this are a warning.
    #[arg(long, default_value = "14d")]
    expiry_warning: humantime::Duration,
    /// Revoke a canary certificate through the admin API and time its propagation.
    #[arg(long, requires_all = ["admin", "canary_serial"])]
    write: bool,
    /// Admin API base URL (with --write).
    #[arg(long)]
    admin: Option<String>,
    /// File holding the admin bearer token (or VIGIL_ADMIN_TOKEN).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Canary serial (hex) to revoke (a certificate issued for this purpose).
    #[arg(long)]
    canary_serial: Option<String>,
    /// Issuer of the canary (default: the first --issuer).
    #[arg(long)]
    canary_issuer: Option<String>,
    /// Longest wait for the canary to reach every replica.
    #[arg(long, default_value = "30s")]
    canary_timeout: humantime::Duration,
    /// Read every issuer's CRLs as an aggregator does: the URLs of /crl/NAME.json, with retries
    /// and Range resumes; signature, IDP == URL, freshness, shards (and with --redis the view).
    #[arg(long)]
    crl_consumer: bool,
    /// With --crl-consumer: a CRL whose thisUpdate is older than this fails (CRLite: 336h).
    #[arg(long, default_value = "336h")]
    crl_max_age: humantime::Duration,
    /// With --crl-consumer: keep each URL's last thisUpdate and CRLNumber in this file between
    /// runs (cron), so a CRL that goes back is caught across runs.
    #[arg(long, requires = "crl_consumer")]
    crl_state: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write a timeline of the run's requests (per second, by outcome, with latency and
    /// the canary marked) to this file: a self-contained HTML page.
    #[arg(long)]
    report_html: Option<PathBuf>,
}

#[derive(Subcommand)]
enum CrlCommand {
    /// Build, sign, lint and store every issuer's CRLs once (no lease; the stores'
    /// compare-and-set still keeps numbers increasing), then exit.
    Publish,
    /// Print the URL of every complete CRL of an issuer: one a line, or with --json the "JSON
    /// Array of Partitioned CRLs" to disclose in CCADB (the same document as
    /// `GET /crl/<issuer>.json`). Needs `crl.base_url`.
    Urls {
        /// The issuer's configured name.
        #[arg(long)]
        issuer: String,
        /// Print the JSON array instead of one URL a line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum HsmCommand {
    /// List the modules, tokens and keys that the configured [[hsm]] entries (or --module)
    /// can see. Logs in (read-only) where a configured PIN is available, to show private keys.
    List {
        /// List this module instead of the configured ones.
        #[arg(long)]
        module: Option<PathBuf>,
        /// With --module: environment variable holding a user PIN, to show private keys.
        #[arg(long, requires = "module")]
        pin_env: Option<String>,
    },
    /// Sign a test message with each HSM of each issuer's pools (and the software fallback, if
    /// set) and verify it: the OCSP signer against the responder (or CA) certificate, the CRL
    /// signer (`crl_signer`) against the CA certificate.
    Test {
        /// Only this issuer.
        #[arg(long)]
        issuer: Option<String>,
    },
}

#[derive(Args)]
struct Target {
    /// Issuer (configured name; `demo` for the embedded default).
    #[arg(long)]
    issuer: String,
    /// Serial number in hex.
    #[arg(long, conflicts_with = "cert", required_unless_present = "cert")]
    serial: Option<String>,
    /// The certificate (PEM) instead of --serial.
    #[arg(long)]
    cert: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The one wall clock of the CLI, handed to every command that reads the time.
    let clock = vigil::clock::Clock::system();
    // rustls (Redis over TLS, the admin listener) uses ring, the only provider compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Some(Command::Drill(args)) = &cli.command {
        if args.command.is_none() {
            return drill(args, &clock);
        }
    }
    if let Some(Command::Key { command }) = &cli.command {
        return key(command);
    }
    if let Some(Command::Pkcs11Host) = &cli.command {
        // Before any config or thread: the host's environment is what vigil started it with.
        return vigil::signer::pkcs11::run_host();
    }
    if let Some(Command::Backup {
        command: BackupCommand::Verify { file, identity },
    }) = &cli.command
    {
        return backup_verify(file, identity.as_deref());
    }
    if let Some(Command::Archive {
        command: Some(ArchiveCommand::Verify { dir }),
        ..
    }) = &cli.command
    {
        return archive_verify(dir);
    }
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vigil: {e}");
            return ExitCode::from(2);
        }
    };
    vigil::telemetry::init_tracing(&cfg.log.filter, cfg.log.format);
    // PKCS#11 keys run in host processes of this binary, logging as this process does.
    if let Ok(o) = vigil::signer::pkcs11::HostOptions::this_binary(&cfg.log.filter, cfg.log.format)
    {
        vigil::signer::pkcs11::configure_hosts(o);
    }
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cfg, clock),
        Command::Revoke {
            target,
            reason,
            time,
        } => revoke(&cfg, &clock, &target, &reason, time.as_deref()),
        Command::Issue { target, not_after } => issue(&cfg, &clock, &target, not_after.as_deref()),
        Command::Hold { target, time } => hold(&cfg, &clock, &target, true, time.as_deref()),
        Command::Release { target } => hold(&cfg, &clock, &target, false, None),
        Command::Import {
            openssl_index,
            pem,
            issuer,
        } => match openssl_index {
            Some(index) => import(&cfg, &clock, &index, &issuer),
            None => import_pem(&cfg, &clock, &pem, &issuer),
        },
        Command::Status { issuer, serial } => status(&cfg, &clock, &issuer, serial.as_deref()),
        Command::CheckConfig => check_config(&cfg, &clock),
        Command::Crl {
            command: CrlCommand::Publish,
        } => crl_publish(cfg, &clock),
        Command::Crl {
            command: CrlCommand::Urls { issuer, json },
        } => crl_urls(&cfg, &issuer, json),
        Command::Hsm {
            command: HsmCommand::List { module, pin_env },
        } => hsm_list(&cfg, module.as_deref(), pin_env.as_deref()),
        Command::Hsm {
            command: HsmCommand::Test { issuer },
        } => hsm_test(&cfg, issuer.as_deref()),
        Command::Backup { command } => backup(&cfg, cli.config.as_deref(), command, &clock),
        Command::Archive {
            command: None,
            dir,
            segment_bytes,
            metrics_addr,
            regions,
        } => archive(&cfg, dir, segment_bytes, metrics_addr, regions, &clock),
        Command::Archive {
            command: Some(_), ..
        } => Err("archive verify is handled before the config is loaded".into()),
        Command::Drill(args) => match args.command {
            Some(DrillCommand::Restore {
                backup,
                scratch_redis,
                flush_scratch,
                json,
                identity,
            }) => {
                return drill_restore(
                    &cfg,
                    &backup,
                    identity.as_deref(),
                    &scratch_redis,
                    flush_scratch,
                    json.as_deref(),
                )
            }
            None => Err("drill is handled before the config is loaded".into()),
        },
        Command::Key { .. } | Command::Pkcs11Host => {
            Err("drill, key and pkcs11-host are handled before the config is loaded".into())
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

fn pair(text: &str, what: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .ok_or_else(|| format!("{what} {text:?}: expected NAME=VALUE"))
}

fn drill_target(a: &DrillArgs) -> Result<vigil::drill::Target, String> {
    let regions = a
        .regions
        .iter()
        .map(|r| pair(r, "--redis"))
        .collect::<Result<Vec<_>, _>>()?;
    let issuers = a
        .issuers
        .iter()
        .map(|i| pair(i, "--issuer").map(|(n, p)| (n, PathBuf::from(p))))
        .collect::<Result<Vec<_>, _>>()?;
    let canary = if a.write {
        let token = match (&a.admin_token_file, std::env::var("VIGIL_ADMIN_TOKEN")) {
            (Some(f), _) => std::fs::read_to_string(f)
                .map_err(|e| format!("{}: {e}", f.display()))?
                .trim()
                .to_owned(),
            (None, Ok(t)) => t,
            (None, Err(_)) => {
                return Err("--write needs --admin-token-file or VIGIL_ADMIN_TOKEN".into())
            }
        };
        let issuer = match &a.canary_issuer {
            Some(i) => i.clone(),
            None => issuers.first().map(|(n, _)| n.clone()).unwrap_or_default(),
        };
        Some((
            a.admin.clone().unwrap_or_default(),
            token,
            issuer,
            a.canary_serial.clone().unwrap_or_default(),
        ))
    } else {
        None
    };
    Ok(vigil::drill::Target {
        replicas: a
            .replicas
            .iter()
            .map(|r| r.trim_end_matches('/').to_owned())
            .collect(),
        regions,
        key_prefix: a.key_prefix.clone(),
        issuers,
        serials: a.serials.clone(),
        max_lag: a.max_lag.into(),
        expiry_warning: a.expiry_warning.into(),
        canary,
        canary_timeout: a.canary_timeout.into(),
        crl_consumer: a.crl_consumer.then(|| vigil::drill::ConsumerOptions {
            max_age: a.crl_max_age.into(),
            state: a.crl_state.clone(),
        }),
    })
}

fn drill(a: &DrillArgs, clock: &vigil::clock::Clock) -> ExitCode {
    let target = match drill_target(a) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("vigil: {e}");
            return ExitCode::from(2);
        }
    };
    let report = vigil::drill::run(&target, clock);
    print!("{}", report.text());
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("vigil: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if let Some(path) = &a.report_html {
        let page = vigil::report::timeline::html(
            "vigil drill",
            &format!(
                "Checks of {} replica(s), every request on one timeline.",
                target.replicas.len()
            ),
            &[report.timeline("vigil drill")],
        )
        .map_err(|e| e.to_string())
        .and_then(|page| std::fs::write(path, page).map_err(|e| e.to_string()));
        if let Err(e) = page {
            eprintln!("vigil: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if report.worst() == vigil::drill::Level::Fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_counts(m: &vigil::backup::format::Manifest) {
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

fn print_same_as(same: &[vigil::backup::format::SameAs]) {
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

fn backup_verify(file: &Path, identity: Option<&Path>) -> ExitCode {
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

fn backup(
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
    let started = std::time::Instant::now();
    match command {
        BackupCommand::Create {
            out,
            from_checkpoint,
            region,
            every_region,
            metrics_file,
            recipient,
        } => {
            let source = match (&from_checkpoint, &region) {
                (Some(p), _) => vigil::backup::Source::Checkpoint(p),
                (None, r) if !cfg.regions.is_empty() && every_region => {
                    vigil::backup::Source::EveryRegion(r.as_deref())
                }
                (None, r) if !cfg.regions.is_empty() => {
                    vigil::backup::Source::Regions(r.as_deref())
                }
                (None, Some(_)) => return Err("--region needs configured [[region]]s".into()),
                (None, None) => vigil::backup::Source::Journal,
            };
            let digest = vigil::backup::config_digest(config_path);
            let created = rt
                .block_on(vigil::backup::create(
                    cfg,
                    source,
                    &out,
                    digest,
                    recipient.as_deref(),
                    clock,
                ))
                .map_err(|e| e.to_string())?;
            let seconds = started.elapsed().as_secs_f64();
            if let Some(m) = &metrics_file {
                vigil::backup::write_metrics_file(m, &created, seconds, clock)
                    .map_err(|e| e.to_string())?;
            }
            if from_checkpoint.is_none() && !cfg.regions.is_empty() {
                rt.block_on(vigil::backup::record_success(
                    cfg,
                    region.as_deref(),
                    &created,
                    clock,
                ));
            }
            print_counts(&created.manifest);
            print_same_as(&created.same_as);
            println!(
                "{}: {} bytes, sha256 {}, written in {:.1} s",
                out.display(),
                created.bytes,
                created.manifest.sha256,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        BackupCommand::Verify { .. } => Err("verify is handled before the config is loaded".into()),
        BackupCommand::Restore {
            file,
            region,
            archive: Some(archive),
            until: Some(until),
            out,
            identity,
        } => {
            let until_ms = vigil::clock::parse_rfc3339_ms(&until).map_err(|e| e.to_string())?;
            let pit = vigil::backup::state_at(&file, identity.as_deref(), &archive, until_ms)
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
                    vigil::backup::config_digest(config_path),
                    &out,
                    clock,
                )
                .map_err(|e| e.to_string())?;
                println!(
                    "{}: the state as of {until}, {} bytes, sha256 {}",
                    out.display(),
                    created.bytes,
                    created.manifest.sha256
                );
            } else {
                let report = rt
                    .block_on(vigil::backup::merge_view(cfg, &pit.view, region.as_deref()))
                    .map_err(|e| e.to_string())?;
                for (region, r) in &report {
                    for (issuer, (sent, changed)) in &r.issuers {
                        println!("{region} issuer {issuer}: {sent} certificates merged, {changed} changed the region");
                    }
                }
            }
            println!("restored in {:.1} s", started.elapsed().as_secs_f64());
            Ok(())
        }
        BackupCommand::Restore {
            file,
            region,
            identity,
            ..
        } => {
            let report = rt
                .block_on(vigil::backup::restore(
                    cfg,
                    &file,
                    region.as_deref(),
                    identity.as_deref(),
                ))
                .map_err(|e| e.to_string())?;
            for (region, r) in &report {
                for (issuer, (sent, changed)) in &r.issuers {
                    let same = r.identical.get(issuer).copied().unwrap_or(0);
                    let note = if same > 0 {
                        format!(" ({same} more in another source of the backup, identical: not sent again)")
                    } else {
                        String::new()
                    };
                    println!("{region} issuer {issuer}: {sent} certificates merged, {changed} changed the region{note}");
                }
                println!(
                    "{region}: {} CRL(s) stored, {} already there at that number or newer",
                    r.crls_stored, r.crls_newer_there
                );
            }
            println!("restored in {:.1} s", started.elapsed().as_secs_f64());
            Ok(())
        }
    }
}

fn archive(
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

fn drill_restore(
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
                    if c.missing.is_empty() { String::new() } else { format!(" ({})", c.missing.join(", ")) },
                    c.behind_count,
                    if c.behind.is_empty() { String::new() } else { format!(" ({})", c.behind.join(", ")) },
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

fn archive_verify(dir: &Path) -> ExitCode {
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

fn key(command: &KeyCommand) -> ExitCode {
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

fn serve(cfg: Config, clock: vigil::clock::Clock) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    rt.block_on(app::serve(cfg, clock))
        .map_err(|e| e.to_string())
}

fn crl_publish(cfg: Config, clock: &vigil::clock::Clock) -> Result<(), String> {
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

fn crl_urls(cfg: &Config, issuer: &str, json: bool) -> Result<(), String> {
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

fn check_config(cfg: &Config, clock: &vigil::clock::Clock) -> Result<(), String> {
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

fn hsm_list(cfg: &Config, module: Option<&Path>, pin_env: Option<&str>) -> Result<(), String> {
    use std::collections::BTreeMap;
    use vigil::signer::pkcs11::{list_module, read_pin, PinSource};
    use vigil::signer::pool::key_spec;

    // (module, env) → the [[hsm]] entries on it.
    let mut modules: Vec<(
        PathBuf,
        BTreeMap<String, String>,
        Vec<&vigil::config::HsmConfig>,
    )> = Vec::new();
    match module {
        Some(m) => modules.push((m.to_path_buf(), BTreeMap::new(), Vec::new())),
        None => {
            for h in &cfg.hsms {
                match modules
                    .iter_mut()
                    .find(|(p, e, _)| p == &h.module && e == &h.module_env)
                {
                    Some((_, _, hs)) => hs.push(h),
                    None => modules.push((h.module.clone(), h.module_env.clone(), vec![h])),
                }
            }
        }
    }
    if modules.is_empty() {
        println!("no [[hsm]] is configured; name a module with --module");
        return Ok(());
    }
    let mut failed = false;
    for (path, env, hsms) in &modules {
        let env_text: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "module {}{}",
            path.display(),
            if env_text.is_empty() {
                String::new()
            } else {
                format!(" ({})", env_text.join(" "))
            }
        );
        // The PINs by token label ("" for every token): the host logs in with them.
        let pins = match pin_env {
            Some(var) => read_pin(&PinSource::Env(var.to_owned()))
                .ok()
                .map(|p| (String::new(), p))
                .into_iter()
                .collect(),
            None => hsms
                .iter()
                .filter_map(|h| match &h.token {
                    vigil::config::TokenSelector::Label(l) => {
                        Some((l.clone(), read_pin(&key_spec(h).1).ok()?))
                    }
                    vigil::config::TokenSelector::Slot(_) => None,
                })
                .collect(),
        };
        let listing = match list_module(path, env, pins) {
            Ok(l) => l,
            Err(e) => {
                println!("  cannot load: {e}");
                failed = true;
                continue;
            }
        };
        match listing.info {
            Ok(i) => println!("  {i}"),
            Err(e) => println!("  C_GetInfo: {e}"),
        }
        let tokens = match listing.tokens {
            Ok(t) => t,
            Err(e) => {
                println!("  listing tokens: {e}");
                failed = true;
                continue;
            }
        };
        if tokens.is_empty() {
            println!("  no token present");
        }
        for t in tokens {
            let used_by: Vec<&str> = hsms
                .iter()
                .filter(|h| match &h.token {
                    vigil::config::TokenSelector::Label(l) => l == &t.label,
                    vigil::config::TokenSelector::Slot(s) => *s == t.slot,
                })
                .map(|h| h.name.as_str())
                .collect();
            println!(
                "  slot {}: token {:?} ({}, serial {}){}",
                t.slot,
                t.label,
                t.model,
                t.serial,
                if used_by.is_empty() {
                    String::new()
                } else {
                    format!(" used by [[hsm]] {}", used_by.join(", "))
                }
            );
            if !t.initialized {
                println!("    not initialised");
                continue;
            }
            if let Some(e) = &t.error {
                println!("    listing keys failed: {e}");
                failed = true;
            }
            match (&t.login_error, t.logged_in) {
                (Some(e), _) => {
                    println!("    login failed: {e}");
                    failed = true;
                }
                (None, false) => println!("    not logged in: private keys are not shown"),
                (None, true) => {}
            }
            for k in &t.keys {
                println!(
                    "    {} key {:?} id {} ({})",
                    k.class,
                    k.label,
                    if k.id.is_empty() { "-" } else { &k.id },
                    k.key_type
                );
            }
        }
    }
    if failed {
        Err("some modules or tokens could not be listed".into())
    } else {
        Ok(())
    }
}

fn hsm_test(cfg: &Config, only: Option<&str>) -> Result<(), String> {
    use vigil::signer::pool::{key_spec, test_members};
    let mut tested = 0;
    let mut failures = 0;
    for ic in &cfg.issuers {
        if only.is_some_and(|n| n != ic.name) {
            continue;
        }
        // The OCSP signer (the responder's key, or the CA's), then the CRL signer (the CA's).
        let ocsp = ic.ocsp_key.hsm().map(|sc| {
            let whose = if ic.responder_certificate.is_some() {
                "responder"
            } else {
                "CA"
            };
            (
                sc,
                ic.name.clone(),
                format!("key of the {whose} certificate"),
                vigil::pki::signing_public_key(ic),
            )
        });
        let crl = ic.crl_key.as_ref().and_then(|k| k.hsm()).map(|sc| {
            (
                sc,
                app::crl_pool_label(&ic.name),
                "key of the CA certificate, signs CRLs".to_owned(),
                vigil::pki::ca_public_key(ic),
            )
        });
        for (sc, label, whose, public_key) in ocsp.into_iter().chain(crl) {
            let public_key = public_key.map_err(|e| e.to_string())?;
            let fallback = match &sc.danger_software_fallback {
                Some(p) => Some(
                    vigil::signer::SoftwareSigner::from_pem_file(p)
                        .map_err(|e| format!("issuer {label}: {e}"))?,
                ),
                None => None,
            };
            let members = app::issuer_hsms(cfg, sc)
                .into_iter()
                .map(key_spec)
                .collect();
            println!("issuer {label} ({whose}):");
            for t in test_members(&public_key, members, fallback.as_ref()) {
                tested += 1;
                match t.result {
                    Ok(what) => println!("  ok    {}: {what}", t.name),
                    Err(e) => {
                        failures += 1;
                        println!("  FAIL  {}: {e}", t.name);
                    }
                }
            }
        }
    }
    if tested == 0 {
        return Err(match only {
            Some(n) => format!(
                "issuer {n:?} has no [issuer.signer] nor [issuer.crl_signer] (or does not exist)"
            ),
            None => "no issuer signs through HSMs ([issuer.signer], [issuer.crl_signer])".into(),
        });
    }
    if failures > 0 {
        return Err(format!("{failures} of {tested} signer(s) failed"));
    }
    println!("all {tested} signer(s) signed and verified");
    Ok(())
}

fn parse_time(s: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("bad time {s:?} (expected RFC 3339, e.g. 2026-01-02T03:04:05Z): {e}"))
}

/// The serial, notAfter and certificate of a target (the last two when read from --cert).
fn resolve(target: &Target) -> Result<(Serial, Option<i64>, Option<Certificate>), String> {
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
fn scope_beside(cfg: &Config, issuer: &str, cert: Option<&Certificate>) -> Option<CrlScope> {
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
fn append(cfg: &Config, clock: &vigil::clock::Clock, events: &[Event]) -> Result<String, String> {
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

fn small_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))
}

fn event(
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

fn issuer_id(cfg: &Config, clock: &vigil::clock::Clock, name: &str) -> Result<IssuerId, String> {
    app::prepare_embedded(cfg, clock).map_err(|e| e.to_string())?;
    app::issuer_id(cfg, name).map_err(|e| e.to_string())
}

fn revoke(
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

fn issue(
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
fn hold(
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

/// OpenSSL `ca` database: tab-separated status (V, R, E), expiry, revocation
/// (`date[,reason[,...]]`), serial (hex), file name, subject. Dates are `YYMMDDHHMMSSZ` or
/// `YYYYMMDDHHMMSSZ`.
///
/// Streamed, in two passes over the file: the first checks every line (a bad line anywhere
/// writes nothing), the second writes batches of [`IMPORT_BATCH_CERTIFICATES`] certificates,
/// [`IMPORT_BATCHES_IN_FLIGHT`] at once, each acknowledged like a revocation (quorum, or the
/// synced journal). Memory is bounded by the batches in flight, not the file. A batch that
/// fails stops the import: the report says how many certificates were acknowledged before it,
/// and running it again is safe (the merge is idempotent).
fn import(
    cfg: &Config,
    clock: &vigil::clock::Clock,
    path: &Path,
    issuer: &str,
) -> Result<(), String> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    use vigil::limits::{IMPORT_BATCHES_IN_FLIGHT, IMPORT_BATCH_CERTIFICATES};
    let id = issuer_id(cfg, clock, issuer)?;
    let allow_hold = cfg.allows_holds(issuer);
    let parse = IndexParser {
        cfg,
        clock,
        id,
        issuer,
        allow_hold,
        path,
    };
    let (issued, revoked) = parse.check()?;
    let writer = vigil::writer::StatusWriter::from_config(cfg).map_err(|e| e.to_string())?;
    let rt = small_runtime()?;
    let mut lines = parse.lines()?;
    let mut summary = String::new();
    let acknowledged = rt.block_on(async {
        let mut in_flight = FuturesUnordered::new();
        let mut acknowledged = 0usize;
        let mut done = false;
        loop {
            while !done && in_flight.len() < IMPORT_BATCHES_IN_FLIGHT {
                let mut batch = Vec::with_capacity(IMPORT_BATCH_CERTIFICATES * 2);
                let mut certificates = 0;
                while certificates < IMPORT_BATCH_CERTIFICATES {
                    match lines.next_certificate(&mut batch)? {
                        true => certificates += 1,
                        false => {
                            done = true;
                            break;
                        }
                    }
                }
                if certificates == 0 {
                    break;
                }
                let w = &writer;
                in_flight.push(async move { (certificates, w.write(batch).await) });
            }
            let Some((n, result)) = in_flight.next().await else {
                break;
            };
            match result {
                Ok(w) => {
                    acknowledged += n;
                    summary = w.summary;
                }
                Err(e) => {
                    return Err(format!(
                        "import stopped: {acknowledged} of {issued} certificate(s) acknowledged before a batch failed ({e}); running it again is safe"
                    ))
                }
            }
        }
        Ok::<_, String>(acknowledged)
    })?;
    println!(
        "imported {acknowledged} certificate(s), {revoked} revoked, for {issuer}; acknowledged by {summary}"
    );
    Ok(())
}

/// `vigil import --pem`: records the issuance of every certificate in the PEM files, each with
/// the CRL shard its cRLDistributionPoints names. Every file is read and every certificate
/// checked first: a file that does not read, a certificate that does not parse, or one whose
/// cRLDistributionPoints names no CRL of the issuer refuses the whole import, writing nothing.
/// Then batches of [`IMPORT_BATCH_CERTIFICATES`](vigil::limits::IMPORT_BATCH_CERTIFICATES) are
/// written in turn, each acknowledged like a revocation; running it again is safe.
fn import_pem(
    cfg: &Config,
    clock: &vigil::clock::Clock,
    files: &[PathBuf],
    issuer: &str,
) -> Result<(), String> {
    use vigil::limits::{IMPORT_BATCH_CERTIFICATES, MAX_IMPORT_PEM_BYTES};
    let id = issuer_id(cfg, clock, issuer)?;
    let urls = vigil::writer::CrlUrls::from_config(cfg);
    let mut events = Vec::new();
    let mut certificates = 0usize;
    let mut on_shard = 0usize;
    for path in files {
        let len = std::fs::metadata(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?
            .len();
        if len > MAX_IMPORT_PEM_BYTES {
            return Err(format!(
                "{}: {len} bytes, more than the {MAX_IMPORT_PEM_BYTES} a PEM file may have; split it",
                path.display()
            ));
        }
        let text = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let certs = Certificate::load_pem_chain(&text)
            .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: holds no certificate", path.display()));
        }
        for (i, cert) in certs.iter().enumerate() {
            let at = || format!("{} (certificate {})", path.display(), i + 1);
            let (serial, not_after) =
                vigil::pki::serial_and_not_after(cert).map_err(|e| format!("{}: {e}", at()))?;
            let scope = urls.scope_of(issuer, cert).map_err(|e| {
                format!(
                    "refusing the import: {}, serial {serial}: {e}; nothing was written",
                    at()
                )
            })?;
            on_shard += usize::from(scope.is_some());
            let mut one = Vec::with_capacity(2);
            for kind in vigil::writer::issuance_kinds(not_after, scope) {
                one.push(event(cfg, clock, id, serial, kind));
            }
            events.push(one);
            certificates += 1;
        }
    }
    app::prepare_embedded(cfg, clock).map_err(|e| e.to_string())?;
    let writer = vigil::writer::StatusWriter::from_config(cfg).map_err(|e| e.to_string())?;
    let rt = small_runtime()?;
    let mut acknowledged = 0usize;
    let mut summary = String::new();
    for batch in events.chunks(IMPORT_BATCH_CERTIFICATES) {
        let n = batch.len();
        let flat: Vec<Event> = batch.iter().flatten().cloned().collect();
        match rt.block_on(writer.write(flat)) {
            Ok(w) => {
                acknowledged += n;
                summary = w.summary;
            }
            Err(e) => {
                return Err(format!(
                    "import stopped: {acknowledged} of {certificates} certificate(s) acknowledged before a batch failed ({e}); running it again is safe"
                ))
            }
        }
    }
    println!(
        "imported {acknowledged} certificate(s) for {issuer}, {on_shard} with the CRL shard their cRLDistributionPoints names; acknowledged by {summary}"
    );
    Ok(())
}

/// Reads an OpenSSL index line by line into events.
struct IndexParser<'a> {
    cfg: &'a Config,
    clock: &'a vigil::clock::Clock,
    id: IssuerId,
    issuer: &'a str,
    allow_hold: bool,
    path: &'a Path,
}

/// The lines of an index being read, for [`IndexParser::lines`].
struct IndexLines<'a> {
    parser: &'a IndexParser<'a>,
    reader: std::io::BufReader<std::fs::File>,
    line: String,
    n: usize,
}

impl IndexParser<'_> {
    fn open(&self) -> Result<std::io::BufReader<std::fs::File>, String> {
        std::fs::File::open(self.path)
            .map(|f| std::io::BufReader::with_capacity(1 << 20, f))
            .map_err(|e| format!("reading {}: {e}", self.path.display()))
    }

    fn lines(&self) -> Result<IndexLines<'_>, String> {
        Ok(IndexLines {
            parser: self,
            reader: self.open()?,
            line: String::new(),
            n: 0,
        })
    }

    /// Checks every line; returns (certificates, revoked or held).
    fn check(&self) -> Result<(usize, usize), String> {
        let mut lines = self.lines()?;
        let (mut issued, mut revoked) = (0, 0);
        let mut events = Vec::with_capacity(2);
        loop {
            events.clear();
            if !lines.next_certificate(&mut events)? {
                return Ok((issued, revoked));
            }
            issued += 1;
            revoked += usize::from(events.len() > 1);
        }
    }

    /// The events of one line: the issuance, and the revocation or hold if any.
    fn parse(&self, n: usize, line: &str, out: &mut Vec<Event>) -> Result<(), String> {
        let at = |msg: String| format!("{}:{}: {msg}", self.path.display(), n);
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 4 {
            return Err(at("expected at least 4 tab-separated fields".into()));
        }
        let serial = Serial::from_hex(f[3]).map_err(|e| at(format!("serial {:?}: {e}", f[3])))?;
        let not_after = asn1_time(f[1]).map_err(at)?;
        out.push(event(
            self.cfg,
            self.clock,
            self.id,
            serial,
            EventKind::Issued { not_after },
        ));
        if f[0] == "R" {
            let mut parts = f[2].split(',');
            let time = asn1_time(parts.next().unwrap_or_default()).map_err(at)?;
            let kind = match parts.next() {
                None | Some("") => EventKind::Revoked {
                    time,
                    reason: RevocationReason::Unspecified,
                },
                // OpenSSL records a hold as a revocation with reason certificateHold.
                Some(r) if r.eq_ignore_ascii_case("certificateHold") => {
                    if !self.allow_hold {
                        return Err(at(format!(
                            "certificateHold, but issuer {:?} does not allow holds (allow_hold)",
                            self.issuer
                        )));
                    }
                    EventKind::Hold { time }
                }
                Some(r) => EventKind::Revoked {
                    time,
                    reason: RevocationReason::parse(r).map_err(|e| at(e.to_string()))?,
                },
            };
            out.push(event(self.cfg, self.clock, self.id, serial, kind));
        }
        Ok(())
    }
}

impl IndexLines<'_> {
    /// Appends the next certificate's events to `out`; false at the end of the file.
    fn next_certificate(&mut self, out: &mut Vec<Event>) -> Result<bool, String> {
        use std::io::{BufRead, Read};
        use vigil::limits::MAX_INDEX_LINE_BYTES;
        loop {
            self.line.clear();
            self.n += 1;
            let read = (&mut self.reader)
                .take(MAX_INDEX_LINE_BYTES as u64 + 1)
                .read_line(&mut self.line)
                .map_err(|e| format!("{}:{}: {e}", self.parser.path.display(), self.n))?;
            if read == 0 {
                return Ok(false);
            }
            if self.line.len() > MAX_INDEX_LINE_BYTES {
                return Err(format!(
                    "{}:{}: line longer than {MAX_INDEX_LINE_BYTES} bytes",
                    self.parser.path.display(),
                    self.n
                ));
            }
            let line = self.line.trim_end_matches(['\n', '\r']);
            if line.trim().is_empty() {
                continue;
            }
            self.parser.parse(self.n, line, out)?;
            return Ok(true);
        }
    }
}

/// `vigil status` with `[feed]`: what each region's snapshot holds, and their join.
fn feed_status(
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
fn print_crl_scope(serial: &Serial, r: Option<&vigil::status::CertRecord>) {
    if let Some(scope) = r.and_then(|r| r.crl_scope()) {
        println!("{serial}: listed on {scope} (named by its cRLDistributionPoints)");
    }
}

fn describe_record(r: Option<&vigil::status::CertRecord>) -> String {
    match r.map(|r| r.status()) {
        None | Some(CertStatus::Unissued) => {
            "not issued (answered per the issuer's unissued policy)".into()
        }
        Some(CertStatus::Good) => "good".into(),
        Some(CertStatus::Revoked(r)) => format!("revoked at {} ({})", r.time, r.reason.name()),
    }
}

fn asn1_time(s: &str) -> Result<i64, String> {
    let t = if s.len() == 13 {
        der::asn1::UtcTime::from_der(&der_wrap(0x17, s)).map(|t| t.to_unix_duration())
    } else {
        der::asn1::GeneralizedTime::from_der(&der_wrap(0x18, s)).map(|t| t.to_unix_duration())
    };
    t.map(|d| d.as_secs() as i64)
        .map_err(|e| format!("bad time {s:?}: {e}"))
}

fn der_wrap(tag: u8, s: &str) -> Vec<u8> {
    let mut v = vec![tag, s.len().min(127) as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

fn status(
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
