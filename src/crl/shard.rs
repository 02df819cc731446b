//! Sharding: which CRL of an issuer lists a certificate.
//!
//! A sharded CRL is a CRL with a narrowed scope, named by a critical issuing distribution point
//! (RFC 5280 §5.2.5):
//!
//! ```text
//! IssuingDistributionPoint ::= SEQUENCE {
//!      distributionPoint          [0] DistributionPointName OPTIONAL,
//!      onlyContainsUserCerts      [1] BOOLEAN DEFAULT FALSE,
//!      onlyContainsCACerts        [2] BOOLEAN DEFAULT FALSE,
//!      onlySomeReasons            [3] ReasonFlags OPTIONAL,
//!      indirectCRL                [4] BOOLEAN DEFAULT FALSE,
//!      onlyContainsAttributeCerts [5] BOOLEAN DEFAULT FALSE }
//! ```
//!
//! The CA puts the same URI in the certificate's cRLDistributionPoints, so it must compute the
//! same shard: the function is fixed and documented here.
//!
//! - `serial`: CRC-32 (IEEE 802.3, as zlib computes it) of the serial's DER INTEGER content
//!   octets, modulo the shard count.
//! - `not_after`: `floor(notAfter / width) mod shards` with notAfter in Unix seconds, so
//!   certificates expiring together share a shard and old shards shrink as they expire
//!   (Boulder's temporal sharding). A certificate whose notAfter vigil does not know (only its
//!   revocation was recorded) goes to shard 0.

use crate::status::Serial;

/// The most shards per issuer.
pub const MAX_SHARDS: u16 = 256;

/// What the shard is a function of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardBy {
    /// The serial number.
    Serial,
    /// notAfter, in windows of `width` seconds.
    NotAfter {
        /// Window width, seconds (at least 1).
        width: i64,
    },
}

/// How an issuer's CRL is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sharding {
    /// Number of shards; 0 or 1 means one unsharded CRL.
    pub shards: u16,
    /// The shard function.
    pub by: ShardBy,
}

impl Sharding {
    /// One CRL for the whole issuer.
    pub fn unsharded() -> Self {
        Sharding {
            shards: 1,
            by: ShardBy::Serial,
        }
    }

    /// True when there is more than one shard.
    pub fn is_sharded(&self) -> bool {
        self.shards > 1
    }

    /// The shard index of a certificate (0 when unsharded).
    pub fn shard_of(&self, serial: &Serial, not_after: Option<i64>) -> u16 {
        if !self.is_sharded() {
            return 0;
        }
        let n = i64::from(self.shards);
        let k = match self.by {
            ShardBy::Serial => i64::from(crc32fast::hash(serial.as_der_content())) % n,
            ShardBy::NotAfter { width } => match not_after {
                Some(t) => t.div_euclid(width.max(1)).rem_euclid(n),
                None => 0,
            },
        };
        k as u16
    }

    /// The scopes: `[None]` when unsharded, else `Some(0) .. Some(shards - 1)`.
    pub fn scopes(&self) -> Vec<Option<u16>> {
        if self.is_sharded() {
            (0..self.shards).map(Some).collect()
        } else {
            vec![None]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crl::testutil::serial;

    #[test]
    fn serial_shards_are_stable_and_spread() {
        let s = Sharding {
            shards: 4,
            by: ShardBy::Serial,
        };
        // the documented function: CRC-32 of the content octets
        assert_eq!(
            s.shard_of(&serial(0x1234), None),
            (crc32fast::hash(&[0x12, 0x34]) % 4) as u16
        );
        let mut counts = [0usize; 4];
        for n in 1..4000u64 {
            counts[s.shard_of(&serial(n), None) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn not_after_shards() {
        let s = Sharding {
            shards: 3,
            by: ShardBy::NotAfter { width: 86_400 },
        };
        assert_eq!(s.shard_of(&serial(1), Some(0)), 0);
        assert_eq!(s.shard_of(&serial(1), Some(86_400)), 1);
        assert_eq!(s.shard_of(&serial(9), Some(86_400 * 3 + 5)), 0);
        assert_eq!(s.shard_of(&serial(9), None), 0);
        assert_eq!(Sharding::unsharded().shard_of(&serial(9), Some(1)), 0);
        assert_eq!(Sharding::unsharded().scopes(), vec![None]);
        assert_eq!(s.scopes(), vec![Some(0), Some(1), Some(2)]);
    }
}
