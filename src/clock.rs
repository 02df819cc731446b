//! The one place vigil reads the wall clock.
//!
//! A [`Clock`] is made once — [`Clock::system`] in the binary, [`Clock::manual`] in tests — and
//! passed to whatever needs the time; the pure modules (`ocsp`, `crl`, `status`) take the time
//! as an argument instead. No other module calls `SystemTime::now`; `tests/layers.rs` fails the
//! build if one does. Elapsed-time measurements for metrics and tokio's timers use the monotonic
//! `Instant`, which is not the wall clock and is not read through here.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// The wall clock, or a manual stand-in. Cheap to clone; clones share one time.
#[derive(Clone, Debug)]
pub struct Clock(Arc<Source>);

#[derive(Debug)]
enum Source {
    System,
    /// Unix milliseconds, moved only by [`Clock::set_ms`] and [`Clock::advance`].
    Manual(AtomicI64),
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock(Arc::new(Source::System))
    }

    /// A clock standing at `unix_ms` until it is moved.
    pub fn manual(unix_ms: i64) -> Clock {
        Clock(Arc::new(Source::Manual(AtomicI64::new(unix_ms))))
    }

    /// Unix time in milliseconds (0 for a system clock set before 1970).
    pub fn now_ms(&self) -> i64 {
        match &*self.0 {
            Source::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Source::Manual(ms) => ms.load(Ordering::Acquire),
        }
    }

    /// Unix time in seconds.
    pub fn now(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Whether this is a manual clock.
    pub fn is_manual(&self) -> bool {
        matches!(&*self.0, Source::Manual(_))
    }

    /// Sets a manual clock to `unix_ms`; false (and nothing changed) for the system clock.
    pub fn set_ms(&self, unix_ms: i64) -> bool {
        match &*self.0 {
            Source::System => false,
            Source::Manual(ms) => {
                ms.store(unix_ms, Ordering::Release);
                true
            }
        }
    }

    /// Moves a manual clock forward by `by`; false (and nothing changed) for the system clock.
    pub fn advance(&self, by: Duration) -> bool {
        match &*self.0 {
            Source::System => false,
            Source::Manual(ms) => {
                let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
                ms.fetch_add(by, Ordering::AcqRel);
                true
            }
        }
    }
}

/// An RFC 3339 time that did not parse or is out of range.
#[derive(Debug, thiserror::Error)]
#[error("{text:?} is not an RFC 3339 time in range: {why}")]
pub struct TimeParseError {
    text: String,
    why: String,
}

/// Unix milliseconds as RFC 3339 (UTC, millisecond precision); the number itself when out of
/// range.
pub fn rfc3339_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Parses an RFC 3339 time into Unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Result<i64, TimeParseError> {
    let fail = |why: String| TimeParseError {
        text: s.to_string(),
        why,
    };
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| fail(e.to_string()))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| fail("out of range".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_clones_share_it() {
        let c = Clock::manual(1_700_000_000_123);
        let d = c.clone();
        assert_eq!(c.now(), 1_700_000_000);
        assert!(d.advance(Duration::from_millis(1_877)));
        assert_eq!(c.now_ms(), 1_700_000_002_000);
        assert!(c.set_ms(-1));
        assert_eq!(d.now(), -1, "seconds round towards minus infinity");
        assert!(!Clock::system().set_ms(5));
        assert!(Clock::system().now() > 1_700_000_000);
    }

    #[test]
    fn rfc3339_round_trips_and_refuses_garbage() {
        let ms = 1_764_806_400_250;
        assert_eq!(parse_rfc3339_ms(&rfc3339_ms(ms)).unwrap(), ms);
        let e = parse_rfc3339_ms("yesterday").unwrap_err().to_string();
        assert!(e.contains("\"yesterday\""), "{e}");
    }
}
