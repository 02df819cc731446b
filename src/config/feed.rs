//! `[feed]`: every region's Redis holds a stream of status events and a per-issuer snapshot.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{ConfigError, invalid};
use super::file;

/// `[feed]`
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// Regions that must hold a write before it is acknowledged (1 ..= the number of regions;
    /// default a majority).
    pub quorum: usize,
    /// About how many events each region's stream keeps (trimmed with `MAXLEN ~`). Replicas
    /// further behind than this re-bootstrap from the snapshot.
    pub maxlen: u64,
    /// Prefix of every Redis key vigil uses (1-64 printable characters, no spaces or braces).
    pub key_prefix: String,
    /// `/readyz` fails when no region has delivered an event or heartbeat for this long
    /// (longer than `heartbeat_interval`).
    pub max_staleness: Duration,
    /// How often a heartbeat is written to each region.
    pub heartbeat_interval: Duration,
    /// Time a write to one region may take before that region counts as failed.
    pub write_timeout: Duration,
    /// Time to connect to a region's Redis (or its Sentinels).
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles on each failure, with jitter.
    pub reconnect_min: Duration,
    /// Longest reconnect delay (≥ `reconnect_min`).
    pub reconnect_max: Duration,
    /// The local checkpoint (view and cursors); default `<data_dir>/checkpoint.vcp`.
    pub checkpoint: PathBuf,
    /// How often the checkpoint is written (also on shutdown).
    pub checkpoint_interval: Duration,
    /// How often a replica hands off repair hints and compares the regions.
    pub repair_interval: Duration,
}

/// `feed.connect_timeout` when not set (also for regions without a `[feed]`).
pub const DEFAULT_FEED_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// `feed.write_timeout` when not set (also for regions without a `[feed]`).
pub const DEFAULT_FEED_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// `feed.key_prefix` when not set (also for regions without a `[feed]`).
pub const DEFAULT_FEED_KEY_PREFIX: &str = "vigil";

/// Shortest of every feed interval and timeout.
const MIN_FEED_INTERVAL: Duration = Duration::from_millis(10);

/// Checks and converts `[feed]` for `regions` configured regions.
pub(super) fn feed(
    f: file::Feed,
    regions: usize,
    data_dir: &Path,
) -> Result<FeedConfig, ConfigError> {
    let n = regions;
    if n == 0 {
        return invalid("feed", "at least one [[region]] is required");
    }
    let quorum = f.quorum.unwrap_or(n / 2 + 1);
    if quorum == 0 || quorum > n {
        return invalid(
            "feed.quorum",
            format!("{quorum} must be between 1 and the number of regions ({n})"),
        );
    }
    if f.maxlen == 0 {
        return invalid("feed.maxlen", "must be at least 1");
    }
    let key_ok = !f.key_prefix.is_empty()
        && f.key_prefix.len() <= 64
        && f.key_prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
    if !key_ok {
        return invalid(
            "feed.key_prefix",
            "1-64 printable characters, no spaces or braces",
        );
    }
    for (key, d) in [
        ("feed.max_staleness", f.max_staleness),
        ("feed.heartbeat_interval", f.heartbeat_interval),
        ("feed.write_timeout", f.write_timeout),
        ("feed.connect_timeout", f.connect_timeout),
        ("feed.reconnect_min", f.reconnect_min),
        ("feed.checkpoint_interval", f.checkpoint_interval),
        ("feed.repair_interval", f.repair_interval),
    ] {
        if d < MIN_FEED_INTERVAL {
            return invalid(key, "at least 10ms");
        }
    }
    if f.reconnect_max < f.reconnect_min {
        return invalid("feed.reconnect_max", "must not be below feed.reconnect_min");
    }
    if f.max_staleness <= f.heartbeat_interval {
        return invalid(
            "feed.max_staleness",
            "must be longer than feed.heartbeat_interval",
        );
    }
    Ok(FeedConfig {
        quorum,
        maxlen: f.maxlen,
        key_prefix: f.key_prefix,
        max_staleness: f.max_staleness,
        heartbeat_interval: f.heartbeat_interval,
        write_timeout: f.write_timeout,
        connect_timeout: f.connect_timeout,
        reconnect_min: f.reconnect_min,
        reconnect_max: f.reconnect_max,
        checkpoint: f
            .checkpoint
            .unwrap_or_else(|| data_dir.join("checkpoint.vcp")),
        checkpoint_interval: f.checkpoint_interval,
        repair_interval: f.repair_interval,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::super::tests::ISSUER;

    const TWO: &str = "[[region]]\nname = \"a\"\nredis = \"redis://127.0.0.1:1/\"\n[[region]]\nname = \"b\"\nredis = \"redis://127.0.0.1:2/\"\n";

    #[test]
    fn the_quorum_defaults_to_a_majority_and_is_bounded() {
        let c = Config::parse(&format!("[feed]\nmax_staleness = \"30s\"\n{TWO}{ISSUER}"))
            .expect("valid");
        let f = c.feed.as_ref().expect("feed");
        assert_eq!(f.quorum, 2);
        assert!(f.checkpoint.ends_with("checkpoint.vcp"));
        for (toml, want) in [
            ("[feed]\nquorum = 3\n", "feed.quorum"),
            (
                "[feed]\nheartbeat_interval = \"5m\"\n",
                "feed.max_staleness",
            ),
            ("[feed]\nkey_prefix = \"a{b}\"\n", "feed.key_prefix"),
        ] {
            let e = Config::parse(&format!("{toml}{TWO}{ISSUER}")).expect_err(want);
            assert!(e.to_string().contains(want), "{e}");
        }
        let e = Config::parse(&format!("[feed]\n{ISSUER}")).expect_err("no region");
        assert!(e.to_string().contains("[[region]]"), "{e}");
    }
}
