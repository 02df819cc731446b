//! Status events and their compact, versioned binary encoding.
//!
//! ```text
//! version        u8   1 for issued and revoked, 2 for hold and release, 3 for crl-shard
//! kind           u8   1 issued, 2 revoked, 3 hold, 4 release, 5 crl-shard
//! issuer         [32] IssuerId
//! serial_len     u8   1..=21
//! serial         [serial_len] DER INTEGER content octets
//! time           i64 BE   notAfter (issued), revocationTime (revoked), hold or release time,
//!                         the CRL scope's code (crl-shard: 1 + shard, 65535 unsharded)
//! reason         u8   CRLReason code (revoked), 0 otherwise
//! created_at_ms  i64 BE   when the event was made, Unix milliseconds
//! origin_len     u8   0..=64
//! origin         [origin_len] UTF-8 region name that first wrote the event
//! ```
//!
//! Decoding checks every length against the input and the named bounds and never panics; an
//! unknown version or kind is an error the caller counts and skips. Hold and release are
//! version 2 so that a replica built before holds existed skips them (an unknown version)
//! instead of misreading them; issued and revoked stay version 1, readable by every build.
//! The CRL shard a certificate's cRLDistributionPoints names is its own event, crl-shard
//! (version 3), written beside the issuance it was read with: a build from before shards were
//! recorded skips it as an unknown version and still applies the issuance, and every event
//! written before decodes as it did. Each kind has exactly one version, so every decoded event
//! re-encodes to its input.

use super::{CrlScope, IssuerId, ReasonError, Rejected, RevocationReason, Serial, count_rejected};
use crate::limits::{MAX_EVENT_BYTES, MAX_ORIGIN_BYTES};

/// The encoding version of issued and revoked events.
pub const EVENT_VERSION: u8 = 1;
/// The encoding version of hold and release events.
pub const EVENT_VERSION_HOLD: u8 = 2;
/// The encoding version of crl-shard events.
pub const EVENT_VERSION_SHARD: u8 = 3;

/// One fact about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The issuing CA.
    pub issuer: IssuerId,
    /// The certificate's serial.
    pub serial: Serial,
    /// What happened.
    pub kind: EventKind,
    /// Region (or node) that first wrote the event.
    pub origin: String,
    /// When the event was made, Unix milliseconds.
    pub created_at_ms: i64,
}

/// What happened to a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The CA issued it.
    Issued {
        /// notAfter, Unix seconds.
        not_after: i64,
    },
    /// It was revoked.
    Revoked {
        /// revocationTime, Unix seconds.
        time: i64,
        /// CRLReason.
        reason: RevocationReason,
    },
    /// It was put on hold (RFC 5280 certificateHold): reversible, and only for issuers whose
    /// policy allows holds.
    Hold {
        /// When the hold took effect, Unix seconds (the revocationTime answered).
        time: i64,
    },
    /// It was released from hold.
    Release {
        /// When the release took effect, Unix seconds; later than the hold it undoes.
        time: i64,
    },
    /// Its cRLDistributionPoints names this CRL of its issuer: read from the certificate when
    /// the issuance was recorded, and where it is listed once revoked.
    CrlShard {
        /// The CRL named.
        scope: CrlScope,
    },
}

impl EventKind {
    /// Refuses a revocation whose reason a revocation may not carry (certificateHold,
    /// removeFromCRL): writers check before writing, the view before applying.
    pub fn check(&self) -> Result<(), ReasonError> {
        match *self {
            EventKind::Revoked { reason, .. } if !reason.is_revocation_reason() => {
                Err(ReasonError::NotARevocationReason(reason))
            }
            _ => Ok(()),
        }
    }
}

/// Why an encoded event could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended early or has bytes left over.
    #[error("event is truncated or has trailing bytes")]
    Length,
    /// Written by a newer (or unknown) encoder.
    #[error("unknown event version {0}")]
    Version(u8),
    /// Unknown event kind.
    #[error("unknown event kind {0}")]
    Kind(u8),
    /// A field holds a value vigil does not accept.
    #[error("invalid event field: {0}")]
    Field(&'static str),
    /// A revocation whose reason code a revocation may not carry (certificateHold 6,
    /// removeFromCRL 8, an unassigned code): refused and counted, never applied.
    #[error("revocation reason code {0} is not a revocation reason")]
    Reason(u8),
}

impl Event {
    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (version, kind, time, reason) = match self.kind {
            EventKind::Issued { not_after } => (EVENT_VERSION, 1u8, not_after, 0u8),
            EventKind::Revoked { time, reason } => (EVENT_VERSION, 2u8, time, reason as u8),
            EventKind::Hold { time } => (EVENT_VERSION_HOLD, 3u8, time, 0u8),
            EventKind::Release { time } => (EVENT_VERSION_HOLD, 4u8, time, 0u8),
            EventKind::CrlShard { scope } => (EVENT_VERSION_SHARD, 5u8, i64::from(scope.code()), 0),
        };
        let serial = self.serial.as_der_content();
        let origin = truncate_utf8(&self.origin, MAX_ORIGIN_BYTES);
        out.push(version);
        out.push(kind);
        out.extend_from_slice(&self.issuer.0);
        out.push(serial.len() as u8);
        out.extend_from_slice(serial);
        out.extend_from_slice(&time.to_be_bytes());
        out.push(reason);
        out.extend_from_slice(&self.created_at_ms.to_be_bytes());
        out.push(origin.len() as u8);
        out.extend_from_slice(origin.as_bytes());
    }

    /// The encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(96);
        self.encode(&mut v);
        v
    }

    /// Decodes exactly one event from `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(DecodeError::Length);
        }
        let mut r = Cursor(bytes);
        let version = r.u8()?;
        if !matches!(
            version,
            EVENT_VERSION | EVENT_VERSION_HOLD | EVENT_VERSION_SHARD
        ) {
            return Err(DecodeError::Version(version));
        }
        let kind = r.u8()?;
        let mut issuer = [0u8; 32];
        issuer.copy_from_slice(r.take(32)?);
        let serial_len = r.u8()? as usize;
        let serial = Serial::from_der_content(r.take(serial_len)?)
            .map_err(|_| DecodeError::Field("serial"))?;
        let time = r.i64()?;
        let reason = r.u8()?;
        let created_at_ms = r.i64()?;
        let origin_len = r.u8()? as usize;
        if origin_len > MAX_ORIGIN_BYTES {
            return Err(DecodeError::Field("origin"));
        }
        let origin = std::str::from_utf8(r.take(origin_len)?)
            .map_err(|_| DecodeError::Field("origin"))?
            .to_owned();
        if !r.0.is_empty() {
            return Err(DecodeError::Length);
        }
        // Canonical form only: each kind has one version, and only a revocation carries a
        // reason, so every decoded event re-encodes to the same bytes.
        let kind = match (version, kind) {
            (EVENT_VERSION, 1 | 2) | (EVENT_VERSION_HOLD, 3 | 4) | (EVENT_VERSION_SHARD, 5) => kind,
            (_, 1..=5) => return Err(DecodeError::Version(version)),
            (_, other) => return Err(DecodeError::Kind(other)),
        };
        if kind != 2 && reason != 0 {
            return Err(DecodeError::Field("reason"));
        }
        let kind = match kind {
            1 => EventKind::Issued { not_after: time },
            2 => EventKind::Revoked {
                time,
                reason: RevocationReason::from_code(reason).ok_or_else(|| {
                    count_rejected(Rejected::Event);
                    DecodeError::Reason(reason)
                })?,
            },
            3 => EventKind::Hold { time },
            4 => EventKind::Release { time },
            _ => EventKind::CrlShard {
                scope: u16::try_from(time)
                    .ok()
                    .and_then(CrlScope::from_code)
                    .ok_or(DecodeError::Field("scope"))?,
            },
        };
        Ok(Event {
            issuer: IssuerId(issuer),
            serial,
            kind,
            origin,
            created_at_ms,
        })
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Length);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(i64::from_be_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Event {
        Event {
            issuer: IssuerId([7; 32]),
            serial: Serial::from_hex("01AB").expect("serial"),
            kind: EventKind::Revoked {
                time: 1_700_000_000,
                reason: RevocationReason::KeyCompromise,
            },
            origin: "eu-west".into(),
            created_at_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn round_trip() {
        let e = sample();
        assert_eq!(Event::decode(&e.to_bytes()), Ok(e));
    }

    #[test]
    fn rejects_versions_kinds_and_trailing_bytes() {
        let mut b = sample().to_bytes();
        b.push(0);
        assert_eq!(Event::decode(&b), Err(DecodeError::Length));
        let mut b = sample().to_bytes();
        b[0] = 9;
        assert_eq!(Event::decode(&b), Err(DecodeError::Version(9)));
        let mut b = sample().to_bytes();
        b[1] = 7;
        assert_eq!(Event::decode(&b), Err(DecodeError::Kind(7)));
    }

    /// Found by the `event_decode` fuzz target: an issuance with a non-zero reason octet decoded
    /// but re-encoded differently.
    #[test]
    fn issuance_with_a_reason_is_rejected() {
        let mut e = sample();
        e.kind = EventKind::Issued { not_after: 5 };
        let mut b = e.to_bytes();
        let reason_at = 2 + 32 + 1 + e.serial.as_der_content().len() + 8;
        assert_eq!(Event::decode(&b), Ok(e));
        b[reason_at] = 220;
        assert_eq!(Event::decode(&b), Err(DecodeError::Field("reason")));
    }

    #[test]
    fn hold_and_release_are_version_2_only() {
        for kind in [EventKind::Hold { time: 7 }, EventKind::Release { time: 8 }] {
            let mut e = sample();
            e.kind = kind;
            let b = e.to_bytes();
            assert_eq!(b[0], EVENT_VERSION_HOLD);
            assert_eq!(Event::decode(&b), Ok(e));
            let mut v1 = b.clone();
            v1[0] = EVENT_VERSION;
            assert_eq!(Event::decode(&v1), Err(DecodeError::Version(1)));
        }
        let mut b = sample().to_bytes();
        b[0] = EVENT_VERSION_HOLD;
        assert_eq!(Event::decode(&b), Err(DecodeError::Version(2)));
    }

    #[test]
    fn crl_shard_is_version_3_and_old_events_decode_as_before() {
        let mut e = sample();
        e.kind = EventKind::CrlShard {
            scope: CrlScope::Shard(3),
        };
        let b = e.to_bytes();
        assert_eq!((b[0], b[1]), (EVENT_VERSION_SHARD, 5));
        assert_eq!(Event::decode(&b), Ok(e.clone()));
        let time_at = 2 + 32 + 1 + e.serial.as_der_content().len();
        assert_eq!(&b[time_at..time_at + 8], &4i64.to_be_bytes());
        for bad in [0i64, 257, 70_000, -1] {
            let mut x = b.clone();
            x[time_at..time_at + 8].copy_from_slice(&bad.to_be_bytes());
            assert_eq!(Event::decode(&x), Err(DecodeError::Field("scope")), "{bad}");
        }
        let mut v1 = b.clone();
        v1[0] = EVENT_VERSION;
        assert_eq!(Event::decode(&v1), Err(DecodeError::Version(1)));
        // an issuance written before shards were recorded: version 1, unchanged
        let mut old = sample();
        old.kind = EventKind::Issued { not_after: 9 };
        let ob = old.to_bytes();
        assert_eq!(ob[0], EVENT_VERSION);
        assert_eq!(Event::decode(&ob), Ok(old));
    }

    #[test]
    fn hold_and_remove_from_crl_are_refused_as_revocation_reasons() {
        let reason_at = |e: &Event| 2 + 32 + 1 + e.serial.as_der_content().len() + 8;
        for code in [6u8, 7, 8, 11, 200] {
            let e = sample();
            let mut b = e.to_bytes();
            b[reason_at(&e)] = code;
            assert_eq!(
                Event::decode(&b),
                Err(DecodeError::Reason(code)),
                "code {code}"
            );
        }
        for r in [
            RevocationReason::CertificateHold,
            RevocationReason::RemoveFromCrl,
        ] {
            let kind = EventKind::Revoked { time: 1, reason: r };
            assert_eq!(kind.check(), Err(ReasonError::NotARevocationReason(r)));
        }
        assert_eq!(sample().kind.check(), Ok(()));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(e) = Event::decode(&bytes) {
                prop_assert_eq!(e.to_bytes(), bytes);
            }
        }

        #[test]
        fn every_truncation_is_an_error(cut in 0usize..60) {
            let b = sample().to_bytes();
            prop_assume!(cut < b.len());
            prop_assert!(Event::decode(&b[..cut]).is_err());
        }
    }
}
