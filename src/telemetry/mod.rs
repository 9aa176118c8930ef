//! warden's metrics: one Prometheus recorder per [`crate::supervisor::App`], whose text
//! `GET /metrics` on the admin listener serves.
//!
//! No recorder is installed globally: tests run many Apps in one process, and each must count
//! only its own work. Every handle (a [`Counter`], [`Gauge`] or [`Histogram`]: an atomic
//! behind an `Arc`) is registered on the App's recorder once, when its owner starts or, for
//! HTTP, the first time a route, method and status meet, and is then kept, so a hot path only
//! bumps atomics. What is cheaper to count than to track (live instances, jobs by status,
//! queue depths, file sizes) is read when scraped, by the scrape hooks of [`Telemetry::on_scrape`].
//!
//! Invariant: every label value comes from a small fixed set (listener names, route
//! templates, methods, statuses, write paths, refusal reasons), never from what a client sent
//! or what the data holds: no job id, group, instance id or user is ever a label.

mod catalog;
mod http;

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, IntoLabels, Key, Level, Metadata, Recorder as _};
use metrics_exporter_prometheus::{PrometheusHandle, PrometheusRecorder};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use catalog::*;
pub use http::RecordRequestsLayer;

/// How often recorded histogram samples are folded into their buckets between scrapes, so
/// that they take no more memory however rarely `/metrics` is read.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// What every handle is registered with; the Prometheus recorder ignores it.
const METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

/// Work a scrape does before rendering: reading a count or a size into a gauge.
type ScrapeHook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// One App's metrics: its recorder and the hooks run at each scrape. Clone freely.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    hooks: Mutex<Vec<ScrapeHook>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    /// A recorder of its own, with every metric described and histogram buckets set.
    pub fn new() -> Self {
        let recorder = catalog::builder().build_recorder();
        catalog::describe(&recorder);
        let handle = recorder.handle();
        let telemetry = Self {
            inner: Arc::new(Inner {
                recorder,
                handle,
                hooks: Mutex::default(),
            }),
        };
        telemetry
            .gauge(BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))])
            .set(1.0);
        telemetry
    }

    /// The counter `name` with `labels`, registered once and kept by the caller.
    pub fn counter(&self, name: &'static str, labels: impl IntoLabels) -> Counter {
        let key = Key::from_parts(name, labels);
        self.inner.recorder.register_counter(&key, &METADATA)
    }

    /// The gauge `name` with `labels`, registered once and kept by the caller.
    pub fn gauge(&self, name: &'static str, labels: impl IntoLabels) -> Gauge {
        let key = Key::from_parts(name, labels);
        self.inner.recorder.register_gauge(&key, &METADATA)
    }

    /// The histogram `name` with `labels`, registered once and kept by the caller.
    pub fn histogram(&self, name: &'static str, labels: impl IntoLabels) -> Histogram {
        let key = Key::from_parts(name, labels);
        self.inner.recorder.register_histogram(&key, &METADATA)
    }

    /// Runs `hook` before each scrape is rendered, e.g. to set a gauge from a bounded query.
    /// A hook that fails leaves its gauges as they were and logs why.
    pub fn on_scrape<F, Fut>(&self, hook: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let hook: ScrapeHook = Arc::new(move || Box::pin(hook()));
        lock(&self.inner.hooks).push(hook);
    }

    /// Runs every scrape hook, then renders every metric as Prometheus text.
    pub async fn render(&self) -> Result<String, tokio::task::JoinError> {
        // Cloned out of the lock: the hooks await, and a lock must not be held across that.
        let hooks = lock(&self.inner.hooks).clone();
        futures_util::future::join_all(hooks.iter().map(|hook| hook())).await;
        // Rendering walks every series and formats it: CPU work, off the async threads.
        let handle = self.inner.handle.clone();
        tokio::task::spawn_blocking(move || handle.render()).await
    }

    /// Folds recorded histogram samples into their buckets every 5 s (`UPKEEP_EVERY`) until
    /// `stop`: without an exporter of its own the recorder leaves that to its owner, and
    /// samples would pile up between scrapes (or forever, if nobody scrapes).
    pub fn keep_up(&self, tasks: &TaskTracker, stop: CancellationToken) {
        let handle = self.inner.handle.clone();
        tasks.spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = every.tick() => handle.run_upkeep(),
                }
            }
        });
    }
}

fn lock(hooks: &Mutex<Vec<ScrapeHook>>) -> std::sync::MutexGuard<'_, Vec<ScrapeHook>> {
    // Every change is one push: a panic elsewhere cannot leave the list half-written.
    hooks.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a TLS connection was refused, as the `reason` label of
/// [`TLS_REFUSED_CONNECTIONS`] says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRefusal {
    /// The client sent no certificate.
    NoCertificate,
    /// The client's certificate did not verify (unknown issuer, expired, …).
    BadCertificate,
    /// Any other failed handshake: a protocol version or suite we refuse, junk, a reset.
    Handshake,
    /// The handshake did not finish in time.
    Timeout,
    /// The certificate verified but names no valid user.
    NoValidUser,
}

impl TlsRefusal {
    /// Every reason, in label order.
    pub const ALL: [Self; 5] = [
        Self::NoCertificate,
        Self::BadCertificate,
        Self::Handshake,
        Self::Timeout,
        Self::NoValidUser,
    ];

    /// The reason as its label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::BadCertificate => "bad_certificate",
            Self::Handshake => "handshake",
            Self::Timeout => "timeout",
            Self::NoValidUser => "no_valid_user",
        }
    }
}

/// A TLS listener's refusal counters, one per [`TlsRefusal`]. Clone freely.
#[derive(Clone, Debug)]
pub struct TlsRefusals([Counter; TlsRefusal::ALL.len()]);

impl TlsRefusals {
    /// The counters of `listener`'s refusals, registered on `telemetry`.
    pub fn new(telemetry: &Telemetry, listener: &'static str) -> Self {
        Self(TlsRefusal::ALL.map(|reason| {
            telemetry.counter(
                TLS_REFUSED_CONNECTIONS,
                &[("listener", listener), ("reason", reason.label())],
            )
        }))
    }

    /// Counts one refusal for `reason`.
    pub fn count(&self, reason: TlsRefusal) {
        // `ALL` lists the variants in declaration order.
        self.0[reason as usize].increment(1);
    }
}

/// A group-commit writer's metrics, labelled with its write path. Clone freely.
#[derive(Clone, Debug)]
pub struct WriterMetrics {
    /// Requests per group commit.
    pub batch_size: Histogram,
    /// From taking a batch until its commit ended, whatever the outcome.
    pub commit_duration: Histogram,
    /// Requests waiting for the writer, set at each scrape.
    pub queue_depth: Gauge,
}

impl WriterMetrics {
    /// The metrics of the writer for write path `path` (a [`crate::db::Batch::PATH`]).
    pub fn new(telemetry: &Telemetry, path: &'static str) -> Self {
        let labels = [("path", path)];
        Self {
            batch_size: telemetry.histogram(WRITER_BATCH_SIZE, &labels),
            commit_duration: telemetry.histogram(WRITER_COMMIT_DURATION, &labels),
            queue_depth: telemetry.gauge(WRITER_QUEUE_DEPTH, &labels),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_counters_follow_the_declaration_order() {
        for (index, reason) in TlsRefusal::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, index, "{}", reason.label());
        }
    }

    #[tokio::test]
    async fn two_telemetries_count_apart() {
        let (one, two) = (Telemetry::new(), Telemetry::new());
        one.counter(REGISTRY_PURGED_INSTANCES, Vec::new())
            .increment(3);
        let two_text = two.render().await.unwrap();
        assert!(!two_text.contains(REGISTRY_PURGED_INSTANCES), "{two_text}");
        let one_text = one.render().await.unwrap();
        assert!(
            one_text.contains(&format!("{REGISTRY_PURGED_INSTANCES} 3")),
            "{one_text}"
        );
    }
}
