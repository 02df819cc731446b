//! `[crl]` and each issuer's `crl = { ... }` over it: the CRL settings, held to the Baseline
//! Requirements' CRL rules (§4.9.7, §7.2). Where each rule is kept:
//!
//! - nextUpdate − thisUpdate ≤ 10 days for a subscriber CRL: `validity` (checked here);
//! - a new CRL at least every 7 days: `interval` ≤ 7 days and ≤ `validity` / 2 (here), so a CRL
//!   is replaced well before its nextUpdate;
//! - within 24 hours of a revocation: `publish_delay` ≤ 24h (here; one value for all);
//! - CRLNumber strictly increasing and < 2^159: numbers are u64 milliseconds raised past the
//!   highest stored ([`crate::crl::number`]), so below 2^64, and the store refuses one that does
//!   not increase;
//! - no SHA-1: no signature algorithm vigil can sign with uses SHA-1
//!   ([`crate::signer::SignatureAlgorithm`]), so there is nothing to configure.

use std::time::Duration;

use super::error::{ConfigError, invalid};
use super::{ENV_CRL_BASE_URL, file};

/// What a sharded CRL's shard is a function of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShardByConfig {
    /// CRC-32 of the serial's DER content octets, modulo `crl.shards`.
    #[default]
    Serial,
    /// `floor(notAfter / crl.shard_width) mod crl.shards`.
    NotAfter,
}

/// `[crl]`, or one issuer's merged settings ([`super::Config::crl_of`]).
#[derive(Debug, Clone)]
pub struct CrlConfig {
    /// Public base URL, e.g. `http://crl.example.com`: CRLs are at `{base_url}/crl/...`.
    /// Present whenever `shards > 1` or `delta` (it goes into the issuing distribution point).
    pub base_url: Option<String>,
    /// The region whose Redis holds this node's publisher lease, when not the first
    /// `[[region]]` (a configured region's name).
    pub region: Option<String>,
    /// Take part in publishing (for issuers with a CRL key), under the region's lease.
    pub publish: bool,
    /// nextUpdate − thisUpdate (1h ..= 10d, BR §4.9.7).
    pub validity: Duration,
    /// Complete CRLs are re-published this often (1s ..= validity / 2, ≤ 7d).
    pub interval: Duration,
    /// A revocation is on a published CRL within this delay (100ms ..= 24h, BR §4.9.7).
    pub publish_delay: Duration,
    /// Replicas look for newer CRLs in Redis (or the data directory) this often.
    pub refresh: Duration,
    /// Publisher lease time-to-live in Redis; the leader renews it every third of it.
    pub lease_ttl: Duration,
    /// Timeout of one Redis command (or connection attempt).
    pub redis_timeout: Duration,
    /// CRL shards per issuer (1 ..= 256); 1 means one unsharded CRL.
    pub shards: u16,
    /// What the shard is a function of.
    pub shard_by: ShardByConfig,
    /// Window width for `shard_by = "not_after"` (≥ 1s).
    pub shard_width: Duration,
    /// Also publish delta CRLs (revocations since the last complete CRL).
    pub delta: bool,
    /// A CRL larger than this many bytes is logged and counted; 0 turns the warning off.
    pub warn_bytes: u64,
}

impl CrlConfig {
    /// The sharding of the CRLs these settings describe.
    pub fn sharding(&self) -> crate::crl::Sharding {
        use crate::crl::ShardBy;
        crate::crl::Sharding {
            shards: self.shards.max(1),
            by: match self.shard_by {
                ShardByConfig::Serial => ShardBy::Serial,
                ShardByConfig::NotAfter => ShardBy::NotAfter {
                    width: self.shard_width.as_secs().max(1) as i64,
                },
            },
        }
    }
}

// === impl conversion ===

/// `[crl]` as written, before the issuers' overrides; checked by [`settings`].
pub(super) fn global(c: file::Crl) -> CrlConfig {
    CrlConfig {
        base_url: c.base_url,
        region: c.region,
        publish: c.publish,
        validity: c.validity,
        interval: c.interval,
        publish_delay: c.publish_delay,
        refresh: c.refresh,
        lease_ttl: c.lease_ttl,
        redis_timeout: c.redis_timeout,
        shards: c.shards,
        shard_by: shard_by(c.shard_by),
        shard_width: c.shard_width,
        delta: c.delta,
        warn_bytes: c.warn_bytes,
    }
}

fn shard_by(s: file::ShardBy) -> ShardByConfig {
    match s {
        file::ShardBy::Serial => ShardByConfig::Serial,
        file::ShardBy::NotAfter => ShardByConfig::NotAfter,
    }
}

/// `global` with one issuer's own keys over it.
pub(super) fn merged(global: &CrlConfig, o: file::IssuerCrl) -> CrlConfig {
    let mut c = global.clone();
    if let Some(v) = o.base_url {
        c.base_url = Some(v);
    }
    c.validity = o.validity.unwrap_or(c.validity);
    c.interval = o.interval.unwrap_or(c.interval);
    c.shards = o.shards.unwrap_or(c.shards);
    c.shard_by = o.shard_by.map(shard_by).unwrap_or(c.shard_by);
    c.shard_width = o.shard_width.unwrap_or(c.shard_width);
    c.delta = o.delta.unwrap_or(c.delta);
    c.warn_bytes = o.warn_bytes.unwrap_or(c.warn_bytes);
    c
}

/// Shortest CRL validity.
const MIN_VALIDITY: Duration = Duration::from_secs(3600);
/// BR §4.9.7: CRLs are reissued at least every seven days.
const MAX_INTERVAL: Duration = Duration::from_secs(7 * 86400);
/// BR §4.9.7: a revocation is on a CRL within 24 hours; the floor keeps the publisher from
/// spinning.
const PUBLISH_DELAY_BOUNDS: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(86400));
/// Longest base URL (it is written into every CRL and certificate).
const MAX_BASE_URL_BYTES: usize = 512;

/// Checks one set of CRL settings, naming keys under `key` (`crl` or `issuer[i].crl`);
/// `regions` are the configured region names.
pub(super) fn settings(key: &str, c: &CrlConfig, regions: &[&str]) -> Result<(), ConfigError> {
    let secs = |d: Duration| d.as_secs_f64();
    if c.validity < MIN_VALIDITY || secs(c.validity) > crate::crl::MAX_VALIDITY_SECS as f64 {
        return invalid(
            format!("{key}.validity"),
            format!(
                "{} is outside 1h ..= 10d (BR §4.9.7: a subscriber CRL's nextUpdate is at most 10 days after its thisUpdate)",
                humantime::format_duration(c.validity)
            ),
        );
    }
    if c.interval > MAX_INTERVAL {
        return invalid(
            format!("{key}.interval"),
            format!(
                "{} is over 7d (BR §4.9.7: CRLs are reissued at least every seven days)",
                humantime::format_duration(c.interval)
            ),
        );
    }
    if c.interval < Duration::from_secs(1) || c.interval > c.validity / 2 {
        return invalid(
            format!("{key}.interval"),
            format!(
                "{} must be between 1s and half of {key}.validity ({}), so a CRL is replaced before its nextUpdate",
                humantime::format_duration(c.interval),
                humantime::format_duration(c.validity)
            ),
        );
    }
    if c.publish_delay < PUBLISH_DELAY_BOUNDS.0 || c.publish_delay > PUBLISH_DELAY_BOUNDS.1 {
        return invalid(
            "crl.publish_delay",
            "between 100ms and 24h (BR §4.9.7: a revocation is on a CRL within 24 hours)",
        );
    }
    if c.refresh < Duration::from_millis(100) {
        return invalid("crl.refresh", "at least 100ms");
    }
    if c.lease_ttl < Duration::from_secs(1) {
        return invalid("crl.lease_ttl", "at least 1s");
    }
    if c.redis_timeout.is_zero() {
        return invalid("crl.redis_timeout", "must be greater than zero");
    }
    if c.shards == 0 || c.shards > crate::crl::shard::MAX_SHARDS {
        return invalid(
            format!("{key}.shards"),
            format!("1 ..= {}", crate::crl::shard::MAX_SHARDS),
        );
    }
    if c.shard_width < Duration::from_secs(1) {
        return invalid(format!("{key}.shard_width"), "at least 1s");
    }
    match &c.base_url {
        Some(u) => {
            let ok = (u.starts_with("http://") || u.starts_with("https://"))
                && !u.contains(['?', '#', ' '])
                && u.len() <= MAX_BASE_URL_BYTES;
            if !ok {
                return invalid(
                    format!("{key}.base_url"),
                    format!("{u:?} must be an http:// or https:// URL without query or fragment"),
                );
            }
            if (c.shards > 1 || c.delta) && !u.starts_with("http://") {
                return invalid(
                    format!("{key}.base_url"),
                    format!(
                        "{u:?} goes into the CRLs' issuing distribution point, which is byte for byte the certificates' CRL distribution point: that is an http:// URL (BR §7.1.2.11.2, §7.2.2.1)"
                    ),
                );
            }
        }
        None if c.shards > 1 || c.delta => {
            return invalid(
                format!("{key}.base_url"),
                format!(
                    "required when {key}.shards > 1 or {key}.delta (it is written into the CRLs); or set {ENV_CRL_BASE_URL}"
                ),
            );
        }
        None => {}
    }
    if let Some(r) = &c.region
        && !regions.contains(&r.as_str())
    {
        return invalid(
            "crl.region",
            format!("{r:?} is not a configured [[region]]"),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::super::tests::ISSUER;
    use super::*;

    #[test]
    fn crl_and_regions() {
        let c = Config::parse(&format!(
            "[crl]\nshards = 4\nbase_url = \"http://crl.test\"\nregion = \"b\"\n\
             [[region]]\nname = \"a\"\nredis = \"redis://127.0.0.1:1\"\n\
             [[region]]\nname = \"b\"\nredis = \"redis://127.0.0.1:2\"\n{ISSUER}crl_key = \"ca.key\"\n"
        ))
        .expect("valid");
        assert_eq!(c.lease_region().map(|r| r.name.as_str()), Some("b"));
        assert!(c.crl.sharding().is_sharded());
        for (toml, key) in [
            ("[crl]\nshards = 2\n", "crl.base_url"),
            ("[crl]\nvalidity = \"11d\"\n", "crl.validity"),
            ("[crl]\ninterval = \"6d\"\n", "crl.interval"),
            ("[crl]\nregion = \"x\"\n", "crl.region"),
            (
                "[[region]]\nname = \"a\"\nredis = \"nope://\"\n",
                "region[0].redis",
            ),
        ] {
            let e = Config::parse(&format!("{toml}{ISSUER}")).expect_err(key);
            assert!(e.to_string().contains(key), "{e}");
        }
        let e = Config::parse("[crl]\nshard = 2\n").expect_err("unknown key");
        assert!(e.to_string().contains("shard"), "{e}");
    }

    #[test]
    fn per_issuer_crl_settings_override_crl_and_are_held_to_the_br() {
        let two = "[[issuer]]\nname = \"b\"\ncertificate = \"b.pem\"\nresponder_key = \"k.pem\"\n";
        let c = Config::parse(&format!(
            "[crl]\nbase_url = \"http://crl.test\"\nvalidity = \"5d\"\n\
             {ISSUER}crl = {{ shards = 8, validity = \"2d\", interval = \"6h\", delta = true, \
             shard_by = \"not_after\", shard_width = \"12h\", warn_bytes = 5000 }}\n{two}"
        ))
        .expect("valid");
        let a = c.crl_of("a");
        assert_eq!(a.shards, 8);
        assert_eq!(a.validity, Duration::from_secs(2 * 86400));
        assert_eq!(a.interval, Duration::from_secs(6 * 3600));
        assert!(a.delta);
        assert_eq!(a.warn_bytes, 5000);
        assert_eq!(
            a.sharding(),
            crate::crl::Sharding {
                shards: 8,
                by: crate::crl::ShardBy::NotAfter { width: 43_200 }
            }
        );
        assert_eq!(a.base_url.as_deref(), Some("http://crl.test"));
        // the other issuer keeps [crl]
        let b = c.crl_of("b");
        assert_eq!((b.shards, b.delta), (1, false));
        assert_eq!(b.validity, Duration::from_secs(5 * 86400));
        assert_eq!(b.interval, c.crl.interval);

        for (over, key, why) in [
            ("validity = \"11d\"", "issuer[0].crl.validity", "10 days"),
            ("validity = \"30m\"", "issuer[0].crl.validity", "1h ..= 10d"),
            ("interval = \"8d\"", "issuer[0].crl.interval", "seven days"),
            // inherits [crl] validity 5d: more than half of it
            (
                "interval = \"3d\"",
                "issuer[0].crl.interval",
                "half of issuer[0].crl.validity (5days)",
            ),
            ("shards = 0", "issuer[0].crl.shards", "1 ..= 256"),
            ("shards = 257", "issuer[0].crl.shards", "1 ..= 256"),
            (
                "shards = 2, base_url = \"https://crl.test\"",
                "issuer[0].crl.base_url",
                "http:// URL",
            ),
            (
                "base_url = \"ftp://x\"",
                "issuer[0].crl.base_url",
                "http://",
            ),
        ] {
            let e = Config::parse(&format!(
                "[crl]\nbase_url = \"http://crl.test\"\nvalidity = \"5d\"\n{ISSUER}crl = {{ {over} }}\n"
            ))
            .expect_err(key)
            .to_string();
            assert!(e.contains(key) && e.contains(why), "{over}: {e}");
        }
        // no base_url anywhere: sharding one issuer needs one
        let e = Config::parse(&format!("{ISSUER}crl = {{ shards = 2 }}\n"))
            .expect_err("base_url")
            .to_string();
        assert!(e.contains("issuer[0].crl.base_url: required"), "{e}");
        // an issuer's own base_url is enough
        Config::parse(&format!(
            "{ISSUER}crl = {{ shards = 2, base_url = \"http://a.test\" }}\n"
        ))
        .expect("valid");
        let e = Config::parse(&format!("{ISSUER}crl = {{ publish_delay = \"1h\" }}\n"))
            .expect_err("publish_delay is global");
        assert!(e.to_string().contains("publish_delay"), "{e}");
    }
}
