//! Every metric warden exports: its name, what it means, and the buckets of its histogram.
//! The README's "Metrics" section lists the same names with their labels.
//!
//! Names follow Prometheus's conventions: the `warden_` prefix, `_total` on counters, the
//! unit (`_seconds`, `_bytes`) last.

use metrics::{Recorder as _, SharedString, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusRecorder};

/// Counter of requests answered, by `listener`, `method`, `route` and `status`.
pub const HTTP_REQUESTS: &str = "warden_http_requests_total";
/// Histogram of the time from a request's arrival to its answer's head, by `listener`,
/// `method`, `route` and `status`.
pub const HTTP_REQUEST_DURATION: &str = "warden_http_request_duration_seconds";
/// Histogram of requests per group commit, by `path`.
pub const WRITER_BATCH_SIZE: &str = "warden_writer_batch_size";
/// Histogram of the time a group commit took, by `path`.
pub const WRITER_COMMIT_DURATION: &str = "warden_writer_commit_duration_seconds";
/// Gauge of requests waiting for a writer, by `path`.
pub const WRITER_QUEUE_DEPTH: &str = "warden_writer_queue_depth";
/// Gauge of live registry instances.
pub const REGISTRY_LIVE_INSTANCES: &str = "warden_registry_live_instances";
/// Counter of expired instances the purge deleted.
pub const REGISTRY_PURGED_INSTANCES: &str = "warden_registry_purged_instances_total";
/// Gauge of jobs, by `status`.
pub const JOBS: &str = "warden_jobs";
/// Counter of job output bytes committed.
pub const JOB_OUTPUT: &str = "warden_job_output_bytes_total";
/// Counter of refused TLS connections, by `listener` and `reason`.
pub const TLS_REFUSED_CONNECTIONS: &str = "warden_tls_refused_connections_total";
/// Gauge of the database file's size.
pub const DATABASE_FILE: &str = "warden_database_file_bytes";
/// Gauge of the write-ahead log's size.
pub const DATABASE_WAL: &str = "warden_database_wal_bytes";
/// Gauge of the bytes of the database's pages in use.
pub const DATABASE_USED: &str = "warden_database_used_bytes";
/// Gauge that is always 1, labelled with warden's `version`.
pub const BUILD_INFO: &str = "warden_build_info";

/// Bucket bounds for latencies: 100 µs to 10 s, about three to a decade.
const SECONDS_BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Bucket bounds for batch sizes: powers of two up to the writer's largest batch (1024).
const BATCH_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Every metric's kind, unit and help text.
const DESCRIPTIONS: [(Kind, &str, Option<Unit>, &str); 14] = [
    (
        Kind::Counter,
        HTTP_REQUESTS,
        None,
        "Requests answered, by listener, method, matched route template and status.",
    ),
    (
        Kind::Histogram,
        HTTP_REQUEST_DURATION,
        Some(Unit::Seconds),
        "Time from a request's arrival to its answer's head (a streamed body may go on).",
    ),
    (
        Kind::Histogram,
        WRITER_BATCH_SIZE,
        Some(Unit::Count),
        "Requests per group commit, by write path.",
    ),
    (
        Kind::Histogram,
        WRITER_COMMIT_DURATION,
        Some(Unit::Seconds),
        "Time from taking a batch to the end of its commit, waiting for the write connection included, by write path.",
    ),
    (
        Kind::Gauge,
        WRITER_QUEUE_DEPTH,
        Some(Unit::Count),
        "Requests waiting for the group-commit writer, by write path, at scrape time.",
    ),
    (
        Kind::Gauge,
        REGISTRY_LIVE_INSTANCES,
        Some(Unit::Count),
        "Live registry instances, at scrape time.",
    ),
    (
        Kind::Counter,
        REGISTRY_PURGED_INSTANCES,
        Some(Unit::Count),
        "Expired registry instances deleted by the purge.",
    ),
    (
        Kind::Gauge,
        JOBS,
        Some(Unit::Count),
        "Jobs by status, at scrape time; status=\"queued\" is the queue's length.",
    ),
    (
        Kind::Counter,
        JOB_OUTPUT,
        Some(Unit::Bytes),
        "Bytes of job output committed.",
    ),
    (
        Kind::Counter,
        TLS_REFUSED_CONNECTIONS,
        Some(Unit::Count),
        "TLS connections refused, by listener and reason.",
    ),
    (
        Kind::Gauge,
        DATABASE_FILE,
        Some(Unit::Bytes),
        "Size of the database file, at scrape time.",
    ),
    (
        Kind::Gauge,
        DATABASE_WAL,
        Some(Unit::Bytes),
        "Size of the database's write-ahead log, at scrape time.",
    ),
    (
        Kind::Gauge,
        DATABASE_USED,
        Some(Unit::Bytes),
        "Bytes of the database's pages in use (what --max-db-size is compared with), at scrape time.",
    ),
    (
        Kind::Gauge,
        BUILD_INFO,
        None,
        "Always 1; the version label is warden's.",
    ),
];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The recorder's settings: real histograms (not summaries) with the buckets above.
pub(super) fn builder() -> PrometheusBuilder {
    // Only empty bucket lists are refused, and these are constant and not empty (a test
    // below says so); summaries would still be valid metrics.
    with_buckets().unwrap_or_else(|error| {
        tracing::error!(%error, "cannot set histogram buckets; histograms are summaries");
        PrometheusBuilder::new()
    })
}

fn with_buckets() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(WRITER_BATCH_SIZE.into()), &BATCH_BUCKETS)
}

/// Gives every metric its help text.
pub(super) fn describe(recorder: &PrometheusRecorder) {
    for (kind, name, unit, help) in DESCRIPTIONS {
        let help = SharedString::const_str(help);
        match kind {
            Kind::Counter => recorder.describe_counter(name.into(), unit, help),
            Kind::Gauge => recorder.describe_gauge(name.into(), unit, help),
            Kind::Histogram => recorder.describe_histogram(name.into(), unit, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buckets_are_accepted() {
        assert!(with_buckets().is_ok());
        assert!(SECONDS_BUCKETS.is_sorted() && BATCH_BUCKETS.is_sorted());
    }

    #[test]
    fn names_follow_the_conventions() {
        for (kind, name, unit, _) in DESCRIPTIONS {
            assert!(name.starts_with("warden_"), "{name}");
            assert_eq!(
                matches!(kind, Kind::Counter),
                name.ends_with("_total"),
                "{name}"
            );
            match unit {
                Some(Unit::Seconds) => assert!(name.ends_with("_seconds"), "{name}"),
                Some(Unit::Bytes) => assert!(name.contains("_bytes"), "{name}"),
                _ => {}
            }
        }
    }
}
