//! A listener's repeated warnings (a refused TLS handshake, a failed accept), each kind held
//! to one log line per [`REPORT_EVERY`] that counts every event, so a flood of junk
//! connections cannot flood the log.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// At most one line per this long per listener for each kind of repeated warning.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// A listener's repeated warnings, each kind held to one line per [`REPORT_EVERY`].
#[derive(Debug)]
pub struct Reports {
    service: &'static str,
    refused_tls: Mutex<Tally>,
    failed_accepts: Mutex<Tally>,
}

impl Reports {
    pub fn new(service: &'static str) -> Self {
        Self {
            service,
            refused_tls: Mutex::default(),
            failed_accepts: Mutex::default(),
        }
    }

    pub fn refused_tls(&self, peer: SocketAddr, reason: String) {
        let report = lock(&self.refused_tls).record(Instant::now(), Some(peer), reason);
        if let Some(report) = report {
            self.log_refused_tls(&report);
        }
    }

    pub fn failed_accept(&self, error: &std::io::Error) {
        let report = lock(&self.failed_accepts).record(Instant::now(), None, error.to_string());
        if let Some(report) = report {
            self.log_failed_accepts(&report);
        }
    }

    /// Logs what was held back, if its interval is over.
    pub fn log_due(&self) {
        let now = Instant::now();
        if let Some(report) = lock(&self.refused_tls).due(now) {
            self.log_refused_tls(&report);
        }
        if let Some(report) = lock(&self.failed_accepts).due(now) {
            self.log_failed_accepts(&report);
        }
    }

    /// Logs whatever is still held back: the listener has stopped.
    pub fn log_rest(&self) {
        let now = Instant::now();
        if let Some(report) = lock(&self.refused_tls).rest(now) {
            self.log_refused_tls(&report);
        }
        if let Some(report) = lock(&self.failed_accepts).rest(now) {
            self.log_failed_accepts(&report);
        }
    }

    fn log_refused_tls(&self, report: &Report) {
        tracing::warn!(
            service = self.service,
            refused = report.count,
            last_peer = %report.peer.map_or_else(String::new, |peer| peer.to_string()),
            last_reason = %report.reason,
            "refused TLS connections",
        );
    }

    fn log_failed_accepts(&self, report: &Report) {
        tracing::warn!(
            service = self.service,
            failures = report.count,
            last_error = %report.reason,
            "cannot accept connections; retrying",
        );
    }
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    // Every update is a few plain assignments: a panic cannot leave one half done.
    tally.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts one kind of event: the first after a quiet interval is reported at once, later
/// ones are counted and reported together when [`REPORT_EVERY`] has passed since the last
/// report. So reports are at least that far apart, and every event is in one.
#[derive(Debug, Default)]
struct Tally {
    /// Until when no report may be made.
    quiet_until: Option<Instant>,
    count: u64,
    peer: Option<SocketAddr>,
    reason: String,
}

/// How many events since the last report, and the last one's peer and reason.
#[derive(Debug, PartialEq, Eq)]
struct Report {
    count: u64,
    peer: Option<SocketAddr>,
    reason: String,
}

impl Tally {
    /// Counts an event; a report if one may be made now.
    fn record(&mut self, now: Instant, peer: Option<SocketAddr>, reason: String) -> Option<Report> {
        self.count += 1;
        self.peer = peer;
        self.reason = reason;
        if self.quiet_until.is_some_and(|until| now < until) {
            return None;
        }
        Some(self.take(now))
    }

    /// The report held back, once its interval is over.
    fn due(&mut self, now: Instant) -> Option<Report> {
        let until = self.quiet_until?;
        if now < until {
            return None;
        }
        if self.count == 0 {
            // A quiet interval: the next event is reported at once.
            self.quiet_until = None;
            return None;
        }
        Some(self.take(now))
    }

    /// Whatever is held back, now.
    fn rest(&mut self, now: Instant) -> Option<Report> {
        (self.count > 0).then(|| self.take(now))
    }

    fn take(&mut self, now: Instant) -> Report {
        self.quiet_until = Some(now + REPORT_EVERY);
        Report {
            count: std::mem::take(&mut self.count),
            peer: self.peer.take(),
            reason: std::mem::take(&mut self.reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_flood_of_refusals_is_one_report_per_interval_counting_every_one() {
        let start = Instant::now();
        let mut tally = Tally::default();
        let first = tally.record(start, None, "junk".to_owned());
        assert_eq!(
            first.map(|report| report.count),
            Some(1),
            "the first at once"
        );
        for n in 0..500 {
            let at = start + Duration::from_millis(n * 10);
            assert_eq!(tally.record(at, None, format!("junk {n}")), None);
        }
        assert_eq!(
            tally.due(start + seconds(9)),
            None,
            "not before the interval"
        );
        let held = tally.due(start + REPORT_EVERY).unwrap();
        assert_eq!((held.count, held.reason.as_str()), (500, "junk 499"));
        // More within the next interval wait for it; the listener's end reports them.
        assert_eq!(tally.record(start + seconds(11), None, "late".into()), None);
        assert_eq!(tally.rest(start + seconds(12)).unwrap().count, 1);
    }

    #[test]
    fn after_a_quiet_interval_the_next_refusal_is_reported_at_once() {
        let start = Instant::now();
        let mut tally = Tally::default();
        assert!(tally.record(start, None, "one".into()).is_some());
        assert_eq!(tally.due(start + REPORT_EVERY), None, "nothing held back");
        let later = start + REPORT_EVERY + seconds(1);
        assert_eq!(tally.record(later, None, "two".into()).unwrap().count, 1);
    }
}
