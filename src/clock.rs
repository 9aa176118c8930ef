//! The time source every service reads instead of the system clock.
//!
//! Times are integer milliseconds since the Unix epoch, the unit of every `*_ms` column. A
//! [`Clock::manual`] clock only moves when told to, so tests of a 5 s delay or a 30 s TTL run
//! in milliseconds and never sleep.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where "now" comes from: the system clock, or a hand-driven one for tests.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// Wall-clock time from the operating system.
    #[default]
    System,
    /// A clock that stands still until [`Clock::advance`] or [`Clock::set_ms`] moves it.
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A manual clock that starts at `start_ms`.
    pub fn manual(start_ms: i64) -> Self {
        Self::Manual(Arc::new(AtomicI64::new(start_ms)))
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match self {
            Self::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                // A clock set before 1970 is treated as the epoch rather than a crash.
                .map_or(0, millis),
            Self::Manual(now) => now.load(Ordering::SeqCst),
        }
    }

    /// Moves a manual clock forward; the system clock ignores it.
    pub fn advance(&self, by: Duration) {
        if let Self::Manual(now) = self {
            now.fetch_add(millis(by), Ordering::SeqCst);
        }
    }

    /// Sets a manual clock to `ms`; the system clock ignores it.
    pub fn set_ms(&self, ms: i64) {
        if let Self::Manual(now) = self {
            now.store(ms, Ordering::SeqCst);
        }
    }
}

/// A duration in whole milliseconds, saturating at `i64::MAX`.
pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = Clock::manual(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance(Duration::from_millis(4_999));
        assert_eq!(clock.now_ms(), 5_999);
        clock.set_ms(42);
        assert_eq!(clock.now_ms(), 42);
    }

    #[test]
    fn the_system_clock_is_after_2020() {
        assert!(Clock::System.now_ms() > 1_577_836_800_000);
    }
}
