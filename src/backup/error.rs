//! The backup module's one error type.

use std::path::{Path, PathBuf};

use super::format::FormatError;
use crate::archive::ArchiveError;
use crate::feed::FeedError;

/// Why a backup could not be made, checked or restored, or a drill not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The backup file is damaged, truncated or not a backup.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Something went wrong with one region.
    #[error("region {region}: {source}")]
    Region {
        /// The region's name.
        region: String,
        /// What.
        source: Box<BackupError>,
    },
    /// Something is wrong with one issuer's snapshot.
    #[error("issuer {issuer}: {source}")]
    Issuer {
        /// The issuer id (hex).
        issuer: String,
        /// What.
        source: Box<BackupError>,
    },
    /// Reaching a region failed.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// A Redis command failed.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// The `STATE` script's reply is not what it returns.
    #[error("the region's state is not [id, (issuer, count, digest)...]")]
    BadState,
    /// An issuers set member that is not an issuer id.
    #[error("malformed issuer id {0:?} in the issuers set")]
    BadIssuerId(String),
    /// A serial in a snapshot that is not one vigil writes.
    #[error("a serial in the snapshot: {0}")]
    SnapshotSerial(crate::status::SerialError),
    /// A record in a snapshot that does not decode.
    #[error("a malformed record in the snapshot")]
    SnapshotRecord,
    /// No region is configured.
    #[error(
        "no [[region]] is configured (use --from-checkpoint, or a config without a feed for the journal)"
    )]
    NoRegions,
    /// No region has the name asked for.
    #[error("no region is named {0:?}")]
    NoSuchRegion(String),
    /// The checkpoint could not be read.
    #[error("{}: {source}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// Why.
        source: crate::feed::checkpoint::CheckpointError,
    },
    /// No checkpoint at the path.
    #[error("{}: no checkpoint there", .0.display())]
    NoCheckpoint(PathBuf),
    /// The journal could not be read.
    #[error(transparent)]
    Journal(crate::journal::JournalError),
    /// The CRL store failed.
    #[error(transparent)]
    CrlStore(crate::crl_service::redis_store::StoreError),
    /// `--recipient` is not an age X25519 recipient.
    #[error("--recipient {text:?} is not an age X25519 recipient (age1…): {why}")]
    Recipient {
        /// What was given.
        text: String,
        /// age's reason.
        why: &'static str,
    },
    /// age could not start encrypting.
    #[error("age: {0}")]
    Encrypt(#[from] age::EncryptError),
    /// An encrypted backup and no identity.
    #[error("{}: the backup is encrypted (age); give the identity file with --identity", .0.display())]
    NeedIdentity(PathBuf),
    /// The identity file is over [`crate::limits::MAX_KEY_FILE_BYTES`].
    #[error("{}: larger than an identity file", .0.display())]
    IdentityTooLarge(PathBuf),
    /// The identity file is not an age identity file.
    #[error("{}: not an age identity file: {source}", path.display())]
    NotIdentity {
        /// The identity file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The backup starts as an age file but is not one.
    #[error("{}: not a readable age file: {source}", path.display())]
    NotAge {
        /// The backup.
        path: PathBuf,
        /// Why.
        source: age::DecryptError,
    },
    /// The backup is encrypted to other recipients than the identities given.
    #[error("{}: the backup is encrypted to another recipient than {}'s identities", backup.display(), identity.display())]
    WrongIdentity {
        /// The backup.
        backup: PathBuf,
        /// The identity file.
        identity: PathBuf,
    },
    /// Decrypting failed.
    #[error("{}: {source}", path.display())]
    Decrypt {
        /// The backup.
        path: PathBuf,
        /// Why.
        source: age::DecryptError,
    },
    /// The file holds no manifest.
    #[error("no manifest")]
    NoManifest,
    /// The file holds no header.
    #[error("no header")]
    NoHeader,
    /// The thread reading the backup failed.
    #[error("reading the backup: {0}")]
    Reading(tokio::task::JoinError),
    /// The backup's time does not parse.
    #[error("{}: the backup's time: {source}", path.display())]
    BackupTime {
        /// The backup.
        path: PathBuf,
        /// Why.
        source: crate::clock::TimeParseError,
    },
    /// A point-in-time restore from a backup newer than its time.
    #[error("{}: the backup finished at {finished}, after {until}: a point-in-time restore starts from a backup older than its time (the archive only adds events; it cannot take newer ones away)", path.display())]
    BackupAfterTime {
        /// The backup.
        path: PathBuf,
        /// When it finished (RFC 3339).
        finished: String,
        /// The time asked for (RFC 3339).
        until: String,
    },
    /// The archive could not be read or is damaged.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A region's loader task ended early.
    #[error("a region's restore stopped")]
    RestoreStopped,
    /// A region's loader task panicked or was cancelled.
    #[error("a restore task failed: {0}")]
    RestoreTask(tokio::task::JoinError),
    /// The drill's scratch Redis is a live region.
    #[error("--scratch-redis {url} is region {region}: the drill never writes to a live region")]
    ScratchIsLive {
        /// The scratch URL.
        url: String,
        /// The region it is.
        region: String,
    },
    /// The drill's backup does not verify.
    #[error("the backup does not verify: {0}")]
    DoesNotVerify(Box<BackupError>),
    /// The scratch URL made no region.
    #[error("no scratch region")]
    NoScratch,
    /// The scratch region could not be reached.
    #[error("scratch {url}: {source}")]
    ScratchUnreachable {
        /// The scratch URL.
        url: String,
        /// Why.
        source: FeedError,
    },
    /// A command on the scratch failed.
    #[error("scratch: {0}")]
    Scratch(redis::RedisError),
    /// The scratch holds keys of the prefix, and `--flush-scratch` was not given.
    #[error(
        "the scratch Redis already holds {count} key(s) under {prefix}: (e.g. {example}); pass --flush-scratch to delete them first"
    )]
    ScratchNotEmpty {
        /// Keys there.
        count: usize,
        /// The feed's key prefix.
        prefix: String,
        /// One of them.
        example: String,
    },
}

impl BackupError {
    pub(super) fn in_region(region: &str) -> impl Fn(BackupError) -> BackupError + '_ {
        move |e| BackupError::Region {
            region: region.to_owned(),
            source: Box::new(e),
        }
    }
}

pub(super) fn io_at(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}
