//! CRL numbers (RFC 5280 §5.2.3).
//!
//! ```text
//! id-ce-cRLNumber OBJECT IDENTIFIER ::= { id-ce 20 }
//! CRLNumber ::= INTEGER (0..MAX)
//! ```
//!
//! "CRL issuers conforming to this profile MUST include this extension in all CRLs and MUST
//! mark this extension as non-critical. [...] a monotonically increasing sequence number for a
//! given CRL scope and CRL issuer." Complete and delta CRLs of one scope share one sequence
//! (§5.2.4).
//!
//! vigil has several publishers (one leader per region, plus one-shot `vigil crl publish`)
//! that never talk to each other while building. A number is therefore the build time in Unix
//! milliseconds, raised to one past the highest number the publisher has seen for the scope.
//! Two publishers may still pick the same or crossing numbers; the store's compare-and-set
//! (a number must exceed the scope's highest stored number) keeps the first and refuses the
//! other, so a stored number never goes backwards, in any region. A u64 of milliseconds stays
//! far inside the 20 octets §5.2.3 allows.

/// The number for a CRL built at `now_ms` when `previous` is the highest number seen for its
/// scope (complete or delta).
pub fn next_number(now_ms: i64, previous: Option<u64>) -> u64 {
    let by_time = u64::try_from(now_ms).unwrap_or(0);
    match previous {
        Some(p) => by_time.max(p.saturating_add(1)),
        None => by_time.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_based_and_never_backwards() {
        assert_eq!(next_number(1_700_000_000_000, None), 1_700_000_000_000);
        assert_eq!(
            next_number(1_700_000_000_000, Some(1_600_000_000_000)),
            1_700_000_000_000
        );
        // a publisher whose clock is behind still moves forward
        assert_eq!(
            next_number(1_700_000_000_000, Some(1_800_000_000_000)),
            1_800_000_000_001
        );
        assert_eq!(next_number(-5, None), 1);
    }
}
