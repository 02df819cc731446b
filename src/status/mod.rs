//! The status model: what vigil knows about each certificate, and how knowledge merges.
//!
//! Pure: no IO, no clock. Times are Unix seconds handed in by the caller.
//!
//! Every fact is an [`Event`] (issued, revoked). The state of a certificate is the join of all
//! events seen for it, so applying events in any order, any number of times, gives the same
//! state; the feed and the journal rely on that.

pub mod event;
pub mod view;

use std::fmt;

use crate::limits::MAX_SERIAL_OCTETS;

pub use event::{Event, EventKind};
pub use view::StatusView;

/// Identifies an issuer independently of configuration: the SHA-256 hash of the issuer's
/// subjectPublicKey BIT STRING contents, the same value a SHA-256 CertID carries as
/// `issuerKeyHash`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IssuerId(pub [u8; 32]);

impl fmt::Debug for IssuerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuerId({})", hex(&self.0[..8]))
    }
}

/// A certificate serial number as the DER INTEGER content octets: minimal two's complement,
/// positive, at most [`MAX_SERIAL_OCTETS`] octets. Stored inline so the view holds no pointers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial {
    len: u8,
    octets: [u8; MAX_SERIAL_OCTETS],
}

/// Why a serial number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    /// Empty, zero or negative: RFC 5280 §4.1.2.2 requires a positive integer.
    #[error("serial number must be a positive integer")]
    NotPositive,
    /// Not minimally encoded (a redundant leading 0x00 or 0xFF octet).
    #[error("serial number is not minimally encoded")]
    NotMinimal,
    /// Longer than RFC 5280 allows.
    #[error("serial number is longer than 20 octets")]
    TooLong,
}

impl Serial {
    /// Takes DER INTEGER content octets as they appear in a certificate or CertID.
    pub fn from_der_content(octets: &[u8]) -> Result<Self, SerialError> {
        let first = *octets.first().ok_or(SerialError::NotPositive)?;
        if first & 0x80 != 0 {
            return Err(SerialError::NotPositive);
        }
        if octets.len() > 1 && first == 0 && octets[1] & 0x80 == 0 {
            return Err(SerialError::NotMinimal);
        }
        if octets.iter().all(|&b| b == 0) {
            return Err(SerialError::NotPositive);
        }
        if octets.len() > MAX_SERIAL_OCTETS || (octets.len() == MAX_SERIAL_OCTETS && first != 0) {
            return Err(SerialError::TooLong);
        }
        let mut s = Serial {
            len: octets.len() as u8,
            octets: [0; MAX_SERIAL_OCTETS],
        };
        s.octets[..octets.len()].copy_from_slice(octets);
        Ok(s)
    }

    /// Takes an unsigned big-endian magnitude (as written in hex by OpenSSL's `index.txt` or
    /// on the command line) and encodes it as DER content octets.
    pub fn from_magnitude(bytes: &[u8]) -> Result<Self, SerialError> {
        let start = bytes
            .iter()
            .position(|&b| b != 0)
            .ok_or(SerialError::NotPositive)?;
        let trimmed = &bytes[start..];
        if trimmed[0] & 0x80 != 0 {
            let mut v = Vec::with_capacity(trimmed.len() + 1);
            v.push(0);
            v.extend_from_slice(trimmed);
            Self::from_der_content(&v)
        } else {
            Self::from_der_content(trimmed)
        }
    }

    /// Parses hex, with or without a `0x` prefix and `:` separators.
    pub fn from_hex(text: &str) -> Result<Self, SerialError> {
        let t = text.trim();
        let t = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        let mut digits: Vec<u8> = t.bytes().filter(|&b| b != b':').collect();
        if digits.is_empty() || digits.len() > 2 * (MAX_SERIAL_OCTETS + 1) {
            return Err(SerialError::TooLong);
        }
        if digits.len() % 2 == 1 {
            digits.insert(0, b'0');
        }
        let nibble = |d: u8| (d as char).to_digit(16).map(|v| v as u8);
        let mut bytes = Vec::with_capacity(digits.len() / 2);
        for pair in digits.chunks_exact(2) {
            let (hi, lo) = nibble(pair[0])
                .zip(nibble(pair[1]))
                .ok_or(SerialError::NotPositive)?;
            bytes.push(hi << 4 | lo);
        }
        Self::from_magnitude(&bytes)
    }

    /// The DER INTEGER content octets.
    pub fn as_der_content(&self) -> &[u8] {
        &self.octets[..self.len as usize]
    }

    /// Upper-case hex of the magnitude, without leading zero octets (OpenSSL's style).
    pub fn to_hex(&self) -> String {
        let b = self.as_der_content();
        let b = if b.len() > 1 && b[0] == 0 { &b[1..] } else { b };
        hex(b).to_uppercase()
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({})", self.to_hex())
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// CRLReason (RFC 5280 §5.3.1).
///
/// Two codes are not reasons a revocation can carry, and every place a revocation enters vigil
/// refuses them ([`RevocationReason::parse`] for text, [`RevocationReason::from_code`] for
/// events and records, [`EventKind::check`] for events made in the process):
///
/// - `certificateHold` (6): a hold is its own event ([`EventKind::Hold`]), reversible, and
///   answered only for issuers whose policy allows holds (the Baseline Requirements forbid them
///   for TLS);
/// - `removeFromCRL` (8): RFC 5280 §5.3.1 uses it only in delta CRLs, for a certificate released
///   from hold. A revocation carrying it is final, so every later complete CRL would list it
///   with a reason the lint refuses outside a delta CRL, and the issuer's CRLs would stop.
///
/// Both stay variants of this type because CRL entries carry them ([`Self::from_crl_code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum RevocationReason {
    /// unspecified (0): omitted from responses and CRL entries.
    Unspecified = 0,
    /// keyCompromise (1).
    KeyCompromise = 1,
    /// cACompromise (2).
    CaCompromise = 2,
    /// affiliationChanged (3).
    AffiliationChanged = 3,
    /// superseded (4).
    Superseded = 4,
    /// cessationOfOperation (5).
    CessationOfOperation = 5,
    /// certificateHold (6): the certificate is on hold ([`EventKind::Hold`]).
    CertificateHold = 6,
    /// removeFromCRL (8): only meaningful in delta CRLs.
    RemoveFromCrl = 8,
    /// privilegeWithdrawn (9).
    PrivilegeWithdrawn = 9,
    /// aACompromise (10).
    AaCompromise = 10,
}

impl RevocationReason {
    const ALL: [(RevocationReason, &'static str); 10] = [
        (Self::Unspecified, "unspecified"),
        (Self::KeyCompromise, "keyCompromise"),
        (Self::CaCompromise, "cACompromise"),
        (Self::AffiliationChanged, "affiliationChanged"),
        (Self::Superseded, "superseded"),
        (Self::CessationOfOperation, "cessationOfOperation"),
        (Self::CertificateHold, "certificateHold"),
        (Self::RemoveFromCrl, "removeFromCRL"),
        (Self::PrivilegeWithdrawn, "privilegeWithdrawn"),
        (Self::AaCompromise, "aACompromise"),
    ];

    /// The reason for a CRLReason code, if a revocation may carry it (not certificateHold, not
    /// removeFromCRL).
    pub fn from_code(code: u8) -> Option<Self> {
        Self::from_crl_code(code).filter(|r| r.is_revocation_reason())
    }

    /// Parses the RFC 5280 name (case-insensitive), as OpenSSL's `-crl_reason` spells it, if a
    /// revocation may carry it. [`Self::parse`] says why a name was refused.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::parse(name).ok()
    }

    /// Parses the reason of a revocation from its RFC 5280 name (case-insensitive); refuses
    /// certificateHold, removeFromCRL and unknown names with a message saying what to do.
    pub fn parse(name: &str) -> Result<Self, ReasonError> {
        match Self::ALL
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(r, _)| *r)
        {
            Some(r) if r.is_revocation_reason() => Ok(r),
            Some(r) => Err(ReasonError::NotARevocationReason(r)),
            None => Err(ReasonError::Unknown(name.chars().take(64).collect())),
        }
    }

    /// The reason for a CRLReason code as a CRL entry may carry it: every code RFC 5280
    /// defines, certificateHold and removeFromCRL included.
    pub fn from_crl_code(code: u8) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(r, _)| *r as u8 == code)
            .map(|(r, _)| *r)
    }

    /// False for certificateHold and removeFromCRL, which a CRL entry may carry but a
    /// revocation may not.
    pub fn is_revocation_reason(self) -> bool {
        !matches!(self, Self::CertificateHold | Self::RemoveFromCrl)
    }

    /// The RFC 5280 name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(r, _)| *r == self)
            .map(|(_, n)| *n)
            .unwrap_or("unspecified")
    }
}

/// Why a revocation reason was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReasonError {
    /// certificateHold or removeFromCRL: CRL entry reasons, not revocation reasons.
    #[error("{}", not_a_revocation_reason(*.0))]
    NotARevocationReason(RevocationReason),
    /// Not an RFC 5280 reason name.
    #[error(
        "unknown revocation reason {0:?}; one of: unspecified, keyCompromise, cACompromise, affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn, aACompromise"
    )]
    Unknown(String),
}

fn not_a_revocation_reason(r: RevocationReason) -> &'static str {
    match r {
        RevocationReason::CertificateHold => {
            "certificateHold is not a revocation reason: a hold is reversible and is its own \
             change (`vigil hold`, POST /v1/hold; issuers with allow_hold only)"
        }
        _ => {
            "removeFromCRL is not a revocation reason: it only appears in delta CRLs, for a \
             certificate released from hold (`vigil release`, POST /v1/release); a revocation \
             is final"
        }
    }
}

/// A revocation: when, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Revocation {
    /// revocationTime, Unix seconds.
    pub time: i64,
    /// The reason.
    pub reason: RevocationReason,
}

impl Revocation {
    /// The join of two revocations of one certificate. Revoked is final; among revocations,
    /// keyCompromise wins, then the earliest time (the original revocation), then the lower
    /// reason code. A total order, so the join is commutative, associative and idempotent; in
    /// practice a reason can only move to keyCompromise.
    pub fn join(self, other: Revocation) -> Revocation {
        let rank = |r: &Revocation| {
            (
                r.reason == RevocationReason::KeyCompromise,
                std::cmp::Reverse(r.time),
                std::cmp::Reverse(r.reason as u8),
            )
        };
        if rank(&other) > rank(&self) {
            other
        } else {
            self
        }
    }
}

/// Whether a live (not permanently revoked) certificate is on hold: the last of its hold and
/// release events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HoldState {
    /// On hold (true) or released (false).
    pub held: bool,
    /// When the certificate was put on hold, or released, Unix seconds.
    pub time: i64,
}

/// Which of its issuer's CRLs a certificate's cRLDistributionPoints names, read from the
/// certificate when its issuance is recorded ([`EventKind::CrlShard`]) and fixed from then on: a
/// revoked certificate with a recorded scope is listed on exactly that CRL, whatever the shard
/// count is later (see `crate::crl::select`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CrlScope {
    /// Shard `k`: `{base_url}/crl/{issuer}/{k}.crl`, below [`crate::crl::shard::MAX_SHARDS`].
    Shard(u16),
    /// The issuer's one unsharded CRL: `{base_url}/crl/{issuer}.crl`.
    Unsharded,
}

impl CrlScope {
    /// The code for "not recorded".
    pub const UNKNOWN_CODE: u16 = 0;
    const UNSHARDED_CODE: u16 = 0xFFFF;

    /// As records and events carry it: `1 + k` for shard `k`, `0xFFFF` for the unsharded CRL
    /// (0 means not recorded). The join of two records keeps the larger code.
    pub fn code(self) -> u16 {
        match self {
            CrlScope::Shard(k) => k + 1,
            CrlScope::Unsharded => Self::UNSHARDED_CODE,
        }
    }

    /// Reads [`Self::code`]; None for 0 (not recorded) and for a shard index at or above
    /// [`crate::crl::shard::MAX_SHARDS`].
    pub fn from_code(code: u16) -> Option<Self> {
        match code {
            Self::UNSHARDED_CODE => Some(CrlScope::Unsharded),
            c if (1..=crate::crl::shard::MAX_SHARDS).contains(&c) => Some(CrlScope::Shard(c - 1)),
            _ => None,
        }
    }
}

impl fmt::Display for CrlScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrlScope::Shard(k) => write!(f, "shard {k}"),
            CrlScope::Unsharded => f.write_str("the unsharded CRL"),
        }
    }
}

/// A record's encoding ([`CertRecord::to_bytes`]): 9 bytes, or 11 when a CRL scope is recorded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RecordBytes {
    buf: [u8; CertRecord::ENCODED_LEN],
    len: u8,
}

impl std::ops::Deref for RecordBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

impl AsRef<[u8]> for RecordBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for RecordBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordBytes({})", hex(self))
    }
}

/// Something that can be walked record by record: the status view's table of one issuer (see
/// `view::IssuerTable`), or a plain slice. The pure consumers (CRL selection, tallies) take
/// this rather than a table, so they see no lock and can be tested on a vector.
pub trait Records {
    /// Calls `f` once for every certificate's record, in no particular order.
    fn each(&self, f: &mut dyn FnMut(&Serial, &CertRecord));
}

impl Records for [(Serial, CertRecord)] {
    fn each(&self, f: &mut dyn FnMut(&Serial, &CertRecord)) {
        for (s, r) in self {
            f(s, r);
        }
    }
}

/// What the view holds for one certificate: 11 bytes with alignment 1, so a view entry
/// (serial and record) packs into 33 bytes and the map stays near 57 bytes per certificate at
/// ten million certificates.
///
/// A record is either *revoked* (a permanent revocation is known: final) or *live*. A live
/// record keeps its hold register in the revocation fields, which a live record does not
/// otherwise use:
///
/// | `reason`                 | meaning                              | `revoked_at`    |
/// |--------------------------|--------------------------------------|-----------------|
/// | a CRLReason code, not 6  | revoked                              | revocationTime  |
/// | 6 (certificateHold)      | live, on hold                        | hold time       |
/// | `0xFE`                   | live, released from hold             | release time    |
/// | `0xFF`                   | live, never held                     | 0               |
///
/// The hold register is last-writer-wins on (time, held): a release undoes a hold only when it
/// is later, and at equal times the hold wins. That order is total, so the join stays
/// commutative, associative and idempotent although a release undoes a hold; writers make a
/// release later than the hold it undoes (see `vigil release`). A permanent revocation absorbs
/// the register.
///
/// The CRL scope ([`CrlScope`], recorded at issuance) is kept as its code, and the join keeps
/// the larger code: one certificate has one cRLDistributionPoints, so two records of it only
/// differ by one knowing the scope (code above 0) and the other not; max is commutative,
/// associative and idempotent whatever the inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertRecord {
    /// notAfter in Unix seconds, clamped to u32, big-endian; 0 when only a revocation is known.
    not_after: [u8; 4],
    /// revocationTime, or hold/release time, in Unix seconds, clamped to u32, big-endian.
    revoked_at: [u8; 4],
    /// RevocationReason code, [`CertRecord::HELD`], [`CertRecord::RELEASED`] or
    /// [`CertRecord::NOT_REVOKED`].
    reason: u8,
    /// [`CrlScope::code`], big-endian; 0 when not recorded.
    scope: [u8; 2],
}

impl CertRecord {
    const NOT_REVOKED: u8 = 0xFF;
    const RELEASED: u8 = 0xFE;
    const HELD: u8 = RevocationReason::CertificateHold as u8;

    /// Length of [`CertRecord::to_fixed_bytes`], and of [`CertRecord::to_bytes`] when a CRL
    /// scope is recorded.
    pub const ENCODED_LEN: usize = 11;
    /// Length of [`CertRecord::to_bytes`] without a CRL scope: the encoding every record had
    /// before scopes were recorded, still read everywhere.
    pub const LEGACY_LEN: usize = 9;

    /// The record of an event on its own.
    pub fn from_event(kind: &EventKind) -> Self {
        let (not_after, time, reason, scope) = match *kind {
            EventKind::Issued { not_after } => (not_after, 0, Self::NOT_REVOKED, 0),
            EventKind::Revoked { time, reason } => (0, time, reason as u8, 0),
            EventKind::Hold { time } => (0, time, Self::HELD, 0),
            EventKind::Release { time } => (0, time, Self::RELEASED, 0),
            EventKind::CrlShard { scope } => (0, 0, Self::NOT_REVOKED, scope.code()),
        };
        CertRecord {
            not_after: clamp_u32(not_after).to_be_bytes(),
            revoked_at: clamp_u32(time).to_be_bytes(),
            reason,
            scope: scope.to_be_bytes(),
        }
    }

    /// True when the reason octet holds a permanent revocation.
    fn is_revoked(&self) -> bool {
        !matches!(self.reason, Self::NOT_REVOKED | Self::RELEASED | Self::HELD)
    }

    /// The hold register as an ordered key: (time, rank) with never-held < released < held.
    fn hold_rank(&self) -> (u32, u8) {
        match self.reason {
            Self::HELD => (u32::from_be_bytes(self.revoked_at), 2),
            Self::RELEASED => (u32::from_be_bytes(self.revoked_at), 1),
            _ => (0, 0),
        }
    }

    /// The join of two records of one certificate.
    pub fn join(self, other: CertRecord) -> CertRecord {
        let not_after = u32::from_be_bytes(self.not_after).max(u32::from_be_bytes(other.not_after));
        let (revoked_at, reason) = match (self.revocation(), other.revocation()) {
            (Some(a), Some(b)) => {
                let r = a.join(b);
                (clamp_u32(r.time).to_be_bytes(), r.reason as u8)
            }
            (Some(_), None) => (self.revoked_at, self.reason),
            (None, Some(_)) => (other.revoked_at, other.reason),
            (None, None) if other.hold_rank() > self.hold_rank() => {
                (other.revoked_at, other.reason)
            }
            (None, None) => (self.revoked_at, self.reason),
        };
        let scope = u16::from_be_bytes(self.scope).max(u16::from_be_bytes(other.scope));
        CertRecord {
            not_after: not_after.to_be_bytes(),
            revoked_at,
            reason,
            scope: scope.to_be_bytes(),
        }
    }

    /// The CRL the certificate's cRLDistributionPoints names, if recorded at issuance.
    pub fn crl_scope(&self) -> Option<CrlScope> {
        CrlScope::from_code(u16::from_be_bytes(self.scope))
    }

    /// The permanent revocation, if the certificate is revoked.
    pub fn revocation(&self) -> Option<Revocation> {
        if !self.is_revoked() {
            return None;
        }
        Some(Revocation {
            time: i64::from(u32::from_be_bytes(self.revoked_at)),
            reason: RevocationReason::from_code(self.reason)?,
        })
    }

    /// The hold register of a live certificate: None when it was never held (or is revoked).
    pub fn hold(&self) -> Option<HoldState> {
        let time = i64::from(u32::from_be_bytes(self.revoked_at));
        match self.reason {
            Self::HELD => Some(HoldState { held: true, time }),
            Self::RELEASED => Some(HoldState { held: false, time }),
            _ => None,
        }
    }

    /// notAfter in Unix seconds, if an issuance was recorded.
    pub fn not_after(&self) -> Option<i64> {
        let t = u32::from_be_bytes(self.not_after);
        (t != 0).then_some(i64::from(t))
    }

    /// The status this record answers with, holds included.
    pub fn status(&self) -> CertStatus {
        self.status_with(true)
    }

    /// The status this record answers with for an issuer that allows holds (`holds`) or not.
    /// A held certificate answers revoked with reason certificateHold and the hold time; where
    /// holds are not allowed, the hold register is ignored. A record with no issuance and no
    /// revocation (only hold or release events) is unissued unless it is held.
    pub fn status_with(&self, holds: bool) -> CertStatus {
        if let Some(r) = self.revocation() {
            return CertStatus::Revoked(r);
        }
        match self.hold() {
            Some(HoldState { held: true, time }) if holds => {
                return CertStatus::Revoked(Revocation {
                    time,
                    reason: RevocationReason::CertificateHold,
                });
            }
            _ => {}
        }
        if self.not_after().is_some() {
            CertStatus::Good
        } else {
            CertStatus::Unissued
        }
    }

    /// The events that, joined, give this record (an issuance, a revocation, the last hold or
    /// release). Used to re-publish a record to a feed region that lacks it.
    pub fn kinds(&self) -> Vec<EventKind> {
        let mut out = Vec::with_capacity(2);
        if let Some(not_after) = self.not_after() {
            out.push(EventKind::Issued { not_after });
        }
        if let Some(r) = self.revocation() {
            out.push(EventKind::Revoked {
                time: r.time,
                reason: r.reason,
            });
        }
        match self.hold() {
            Some(HoldState { held: true, time }) => out.push(EventKind::Hold { time }),
            Some(HoldState { held: false, time }) => out.push(EventKind::Release { time }),
            None => {}
        }
        if let Some(scope) = self.crl_scope() {
            out.push(EventKind::CrlShard { scope });
        }
        out
    }

    /// The encoding of feed snapshots and of the digests:
    /// `not_after u32 BE | revoked_at u32 BE | reason u8 [| scope u16 BE]` (see the table on
    /// [`CertRecord`]), the scope ([`CrlScope::code`]) only when one is recorded. So a record
    /// without a scope encodes, and digests, exactly as before scopes existed, and every
    /// snapshot, backup and digest made before stays valid.
    pub fn to_bytes(&self) -> RecordBytes {
        let buf = self.to_fixed_bytes();
        let len = if self.scope == [0; 2] {
            Self::LEGACY_LEN
        } else {
            Self::ENCODED_LEN
        };
        RecordBytes {
            buf,
            len: len as u8,
        }
    }

    /// The fixed-length encoding of checkpoints, backups and archive fills: always
    /// [`Self::ENCODED_LEN`] bytes, the scope 0 when not recorded.
    pub fn to_fixed_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        b[..4].copy_from_slice(&self.not_after);
        b[4..8].copy_from_slice(&self.revoked_at);
        b[8] = self.reason;
        b[9..].copy_from_slice(&self.scope);
        b
    }

    /// Reads [`CertRecord::to_bytes`] or [`CertRecord::to_fixed_bytes`] (9 or 11 bytes); None
    /// for another length, a scope code [`CrlScope::from_code`] refuses (0 aside), a reason
    /// octet that is neither a revocation reason nor a hold register (removeFromCRL, an
    /// unassigned code), or a never-held record with a time. A refused reason is counted
    /// ([`telemetry::STATUS_REJECTED`](crate::telemetry::STATUS_REJECTED), `input="record"`):
    /// such a record is not applied at all — reading it as a revocation with another reason
    /// would invent one, and as a live record would answer `good` for a revoked certificate.
    pub fn from_bytes(b: &[u8]) -> Option<CertRecord> {
        let scope = match b.len() {
            Self::LEGACY_LEN => [0; 2],
            Self::ENCODED_LEN => [b[9], b[10]],
            _ => return None,
        };
        let code = u16::from_be_bytes(scope);
        if code != CrlScope::UNKNOWN_CODE && CrlScope::from_code(code).is_none() {
            return None;
        }
        let r = CertRecord {
            not_after: [b[0], b[1], b[2], b[3]],
            revoked_at: [b[4], b[5], b[6], b[7]],
            reason: b[8],
            scope,
        };
        let known = matches!(r.reason, Self::NOT_REVOKED | Self::RELEASED | Self::HELD)
            || RevocationReason::from_code(r.reason).is_some();
        if !known {
            count_rejected(Rejected::Record);
            return None;
        }
        if r.reason == Self::NOT_REVOKED && r.revoked_at != [0; 4] {
            return None;
        }
        Some(r)
    }
}

/// What carried a refused revocation reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// A revoked event (feed entry, journal record, hint, or made in the process).
    Event,
    /// A snapshot or checkpoint record.
    Record,
}

/// Counts one event or record refused for its revocation reason
/// ([`crate::telemetry::STATUS_REJECTED`]). The one place the count is kept, so every way in
/// (feed, bootstrap, journal, checkpoint, repair) counts alike.
pub fn count_rejected(what: Rejected) {
    let input = match what {
        Rejected::Event => "event",
        Rejected::Record => "record",
    };
    metrics::counter!(crate::telemetry::STATUS_REJECTED, "input" => input).increment(1);
}

/// Why a hold or release was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HoldError {
    /// The certificate is permanently revoked: a hold means nothing any more.
    #[error("the certificate is revoked; a revocation is final")]
    Revoked,
    /// A release of a certificate that was never put on hold.
    #[error("the certificate is not on hold")]
    NotHeld,
}

/// The event that puts a certificate on hold (`hold`) or releases it, given the record known
/// now (`current`), the time now and, for a hold, the requested hold time.
///
/// A release is made later than the hold it undoes (the hold register is last-writer-wins on
/// time, a hold winning a tie), and a hold no earlier than the last release. Repeating a hold
/// of a held certificate, or a release of a released one, gives the event already in force, so
/// a retried write is idempotent.
pub fn hold_change(
    current: Option<&CertRecord>,
    hold: bool,
    now: i64,
    requested: Option<i64>,
) -> Result<EventKind, HoldError> {
    if current.and_then(|r| r.revocation()).is_some() {
        return Err(HoldError::Revoked);
    }
    let state = current.and_then(|r| r.hold());
    Ok(match (hold, state) {
        (true, Some(HoldState { held: true, time })) => EventKind::Hold { time },
        (true, Some(HoldState { held: false, time })) => EventKind::Hold {
            time: requested.unwrap_or(now).max(time),
        },
        (true, None) => EventKind::Hold {
            time: requested.unwrap_or(now),
        },
        (false, Some(HoldState { held: true, time })) => EventKind::Release {
            time: now.max(time + 1),
        },
        (false, Some(HoldState { held: false, time })) => EventKind::Release { time },
        (false, None) => return Err(HoldError::NotHeld),
    })
}

fn clamp_u32(t: i64) -> u32 {
    t.clamp(0, i64::from(u32::MAX)) as u32
}

/// The answer for one certificate, before policy for unissued serials is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertStatus {
    /// Issued and not revoked.
    Good,
    /// Revoked.
    Revoked(Revocation),
    /// No issuance or revocation recorded.
    Unissued,
}

/// What to answer for a serial that the view has no record of (per issuer). Never `good`.
/// A plain value of the OCSP core; the config maps `issuer.unissued` to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnissuedPolicy {
    /// `unknown` status (RFC 6960 §2.2).
    #[default]
    Unknown,
    /// The whole response is `unauthorized`.
    Unauthorized,
    /// `revoked` at 1970-01-01 with no reason, plus the Extended Revoked Definition extension
    /// (RFC 6960 §2.2, §4.4.8); never certificateHold.
    Revoked,
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_rules() {
        assert_eq!(Serial::from_der_content(&[]), Err(SerialError::NotPositive));
        assert_eq!(
            Serial::from_der_content(&[0]),
            Err(SerialError::NotPositive)
        );
        assert_eq!(
            Serial::from_der_content(&[0x80]),
            Err(SerialError::NotPositive)
        );
        assert_eq!(
            Serial::from_der_content(&[0, 1]),
            Err(SerialError::NotMinimal)
        );
        assert!(Serial::from_der_content(&[0, 0x80]).is_ok());
        assert_eq!(
            Serial::from_der_content(&[1; 21]),
            Err(SerialError::TooLong)
        );
        let mut twenty_one = [0xAB; 21];
        twenty_one[0] = 0;
        assert!(Serial::from_der_content(&twenty_one).is_ok());
        let s = Serial::from_hex("0x00FF10").expect("hex");
        assert_eq!(s.as_der_content(), &[0, 0xFF, 0x10]);
        assert_eq!(s.to_hex(), "FF10");
        assert_eq!(
            Serial::from_hex("abc").expect("odd").as_der_content(),
            &[0x0A, 0xBC]
        );
        assert!(Serial::from_hex("zz").is_err());
    }

    #[test]
    fn key_compromise_wins_and_first_revocation_stays() {
        let a = Revocation {
            time: 100,
            reason: RevocationReason::Superseded,
        };
        let b = Revocation {
            time: 200,
            reason: RevocationReason::CessationOfOperation,
        };
        let kc = Revocation {
            time: 300,
            reason: RevocationReason::KeyCompromise,
        };
        assert_eq!(a.join(b), a);
        assert_eq!(b.join(a), a);
        assert_eq!(a.join(kc), kc);
        assert_eq!(kc.join(a), kc);
    }

    #[test]
    fn record_bytes_round_trip() {
        let issued = CertRecord::from_event(&EventKind::Issued { not_after: 77 });
        let revoked = issued.join(CertRecord::from_event(&EventKind::Revoked {
            time: 99,
            reason: RevocationReason::Superseded,
        }));
        let held = issued.join(CertRecord::from_event(&EventKind::Hold { time: 42 }));
        let released = held.join(CertRecord::from_event(&EventKind::Release { time: 43 }));
        for r in [issued, revoked, held, released] {
            assert_eq!(CertRecord::from_bytes(&r.to_bytes()), Some(r));
            let rebuilt = r
                .kinds()
                .iter()
                .map(CertRecord::from_event)
                .reduce(CertRecord::join);
            assert_eq!(rebuilt, Some(r));
        }
        assert_eq!(CertRecord::from_bytes(&[0; 8]), None);
        assert_eq!(CertRecord::from_bytes(&[0, 0, 0, 1, 0, 0, 0, 1, 7]), None);
        assert_eq!(
            CertRecord::from_bytes(&[0, 0, 0, 1, 0, 0, 0, 1, 0xFF]),
            None
        );
    }

    fn rec(kinds: &[EventKind]) -> CertRecord {
        kinds
            .iter()
            .map(CertRecord::from_event)
            .reduce(CertRecord::join)
            .expect("kinds")
    }

    #[test]
    fn hold_answers_revoked_until_a_later_release() {
        let issued = EventKind::Issued { not_after: 1_000 };
        let held = rec(&[issued, EventKind::Hold { time: 10 }]);
        let hold_status = CertStatus::Revoked(Revocation {
            time: 10,
            reason: RevocationReason::CertificateHold,
        });
        assert_eq!(held.status(), hold_status);
        assert_eq!(held.status_with(false), CertStatus::Good);
        // a release at the same second loses; a later one wins, in either order
        let tie = held.join(CertRecord::from_event(&EventKind::Release { time: 10 }));
        assert_eq!(tie.status(), hold_status);
        let released = CertRecord::from_event(&EventKind::Release { time: 11 });
        assert_eq!(held.join(released).status(), CertStatus::Good);
        assert_eq!(released.join(held).status(), CertStatus::Good);
        // held again later
        let again = held
            .join(released)
            .join(CertRecord::from_event(&EventKind::Hold { time: 12 }));
        assert!(matches!(again.status(), CertStatus::Revoked(r) if r.time == 12));
        // a permanent revocation absorbs the hold, whenever it arrives
        let revoked = CertRecord::from_event(&EventKind::Revoked {
            time: 5,
            reason: RevocationReason::KeyCompromise,
        });
        for r in [held.join(revoked), revoked.join(held), revoked.join(again)] {
            assert!(
                matches!(r.status(), CertStatus::Revoked(x) if x.reason == RevocationReason::KeyCompromise)
            );
            assert_eq!(r.hold(), None);
        }
        // hold and release alone never make a certificate good
        assert_eq!(released.status(), CertStatus::Unissued);
        assert_eq!(
            CertRecord::from_event(&EventKind::Hold { time: 3 }).status_with(false),
            CertStatus::Unissued
        );
    }

    #[test]
    fn hold_change_orders_writes_and_is_idempotent() {
        let issued = CertRecord::from_event(&EventKind::Issued { not_after: 1_000 });
        assert_eq!(
            hold_change(Some(&issued), false, 50, None),
            Err(HoldError::NotHeld)
        );
        let hold = hold_change(Some(&issued), true, 50, Some(40)).expect("hold");
        assert_eq!(hold, EventKind::Hold { time: 40 });
        let held = issued.join(CertRecord::from_event(&hold));
        // a retry gives the same event; a release in the same second is made later
        assert_eq!(hold_change(Some(&held), true, 60, None), Ok(hold));
        let release = hold_change(Some(&held), false, 40, None).expect("release");
        assert_eq!(release, EventKind::Release { time: 41 });
        let released = held.join(CertRecord::from_event(&release));
        assert_eq!(released.status(), CertStatus::Good);
        assert_eq!(hold_change(Some(&released), false, 90, None), Ok(release));
        // a new hold backdated before the release still takes effect
        let rehold = hold_change(Some(&released), true, 90, Some(1)).expect("hold");
        assert!(matches!(
            released.join(CertRecord::from_event(&rehold)).status(),
            CertStatus::Revoked(_)
        ));
        let revoked = held.join(CertRecord::from_event(&EventKind::Revoked {
            time: 1,
            reason: RevocationReason::Superseded,
        }));
        assert_eq!(
            hold_change(Some(&revoked), true, 1, None),
            Err(HoldError::Revoked)
        );
    }

    #[test]
    fn record_size_stays_small() {
        assert_eq!(std::mem::size_of::<CertRecord>(), 11);
        assert_eq!(std::mem::size_of::<Serial>(), 22);
        assert_eq!(std::mem::size_of::<(Serial, CertRecord)>(), 33);
    }

    #[test]
    fn crl_scope_codes() {
        assert_eq!(CrlScope::from_code(0), None);
        assert_eq!(CrlScope::from_code(1), Some(CrlScope::Shard(0)));
        assert_eq!(CrlScope::from_code(256), Some(CrlScope::Shard(255)));
        assert_eq!(CrlScope::from_code(257), None);
        assert_eq!(CrlScope::from_code(0xFFFF), Some(CrlScope::Unsharded));
        for s in [
            CrlScope::Shard(0),
            CrlScope::Shard(255),
            CrlScope::Unsharded,
        ] {
            assert_eq!(CrlScope::from_code(s.code()), Some(s));
        }
    }

    #[test]
    fn records_without_a_scope_keep_the_9_byte_encoding() {
        let issued = CertRecord::from_event(&EventKind::Issued { not_after: 77 });
        let revoked = issued.join(CertRecord::from_event(&EventKind::Revoked {
            time: 99,
            reason: RevocationReason::Superseded,
        }));
        // what every build before CRL scopes wrote, byte for byte
        assert_eq!(&revoked.to_bytes()[..], &[0, 0, 0, 77, 0, 0, 0, 99, 4]);
        assert_eq!(
            revoked.to_fixed_bytes(),
            [0, 0, 0, 77, 0, 0, 0, 99, 4, 0, 0]
        );
        assert_eq!(
            CertRecord::from_bytes(&revoked.to_fixed_bytes()),
            Some(revoked)
        );
        let sharded = revoked.join(CertRecord::from_event(&EventKind::CrlShard {
            scope: CrlScope::Shard(2),
        }));
        assert_eq!(
            &sharded.to_bytes()[..],
            &[0, 0, 0, 77, 0, 0, 0, 99, 4, 0, 3]
        );
        assert_eq!(CertRecord::from_bytes(&sharded.to_bytes()), Some(sharded));
        assert_eq!(sharded.crl_scope(), Some(CrlScope::Shard(2)));
        assert_eq!(sharded.status(), revoked.status());
        // an out-of-range scope code is a malformed record
        assert_eq!(
            CertRecord::from_bytes(&[0, 0, 0, 77, 0, 0, 0, 99, 4, 1, 2]),
            None
        );
        assert_eq!(CertRecord::from_bytes(&[0; 10]), None);
        // a scope alone is not an issuance
        let alone = CertRecord::from_event(&EventKind::CrlShard {
            scope: CrlScope::Unsharded,
        });
        assert_eq!(alone.status(), CertStatus::Unissued);
        assert_eq!(
            alone.kinds(),
            vec![EventKind::CrlShard {
                scope: CrlScope::Unsharded
            }]
        );
    }

    proptest::proptest! {
        /// The join with the CRL scope is commutative, associative and idempotent, and keeps
        /// the scope through every other change of the record.
        #[test]
        fn join_with_scope_is_a_semilattice(
            kinds in proptest::collection::vec((0u8..6, 0i64..50, 0u16..4), 3)
        ) {
            let rec = |&(k, t, s): &(u8, i64, u16)| CertRecord::from_event(&match k {
                0 => EventKind::Issued { not_after: t },
                1 => EventKind::Revoked { time: t, reason: RevocationReason::Superseded },
                2 => EventKind::Revoked { time: t, reason: RevocationReason::KeyCompromise },
                3 => EventKind::Hold { time: t },
                4 => EventKind::Release { time: t },
                _ => EventKind::CrlShard {
                    scope: if s == 3 { CrlScope::Unsharded } else { CrlScope::Shard(s) },
                },
            });
            let (a, b, c) = (rec(&kinds[0]), rec(&kinds[1]), rec(&kinds[2]));
            proptest::prop_assert_eq!(a.join(b), b.join(a));
            proptest::prop_assert_eq!(a.join(b).join(c), a.join(b.join(c)));
            proptest::prop_assert_eq!(a.join(a), a);
            let j = a.join(b).join(c);
            let max = [a, b, c].iter().map(|r| r.crl_scope().map_or(0, CrlScope::code)).max();
            proptest::prop_assert_eq!(j.crl_scope().map_or(0, CrlScope::code), max.unwrap_or(0));
            proptest::prop_assert_eq!(CertRecord::from_bytes(&j.to_bytes()), Some(j));
            proptest::prop_assert_eq!(CertRecord::from_bytes(&j.to_fixed_bytes()), Some(j));
            let rebuilt = j.kinds().iter().map(CertRecord::from_event).reduce(CertRecord::join);
            if j.not_after().is_some() || j.revocation().is_some() || j.hold().is_some()
                || j.crl_scope().is_some()
            {
                proptest::prop_assert_eq!(rebuilt, Some(j));
            }
        }
    }
}
