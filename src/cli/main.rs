//! The `vigil` command: its arguments (clap) and the dispatch. Each group of commands is a
//! module of its own; they share the imports below. Errors become the exit message here, so
//! this is the one place text errors are allowed (tests/layers.rs).
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

mod backup;
mod drill;
mod hsm;
mod import;
mod serve;
mod status;
mod write;

use backup::*;
use drill::*;
use hsm::*;
use import::*;
use serve::*;
use status::*;
use write::*;

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
    if let Some(Command::Drill(args)) = &cli.command
        && args.command.is_none()
    {
        return drill(args, &clock);
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
                );
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
