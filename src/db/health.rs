//! What `/healthz` tells about storage: which write paths are failing now and why, and
//! whether a writer has died.
//!
//! Every write path reports each outcome; a failure stays reported until the same path
//! commits again, or until [`FADE`] has passed with no new failure (a path that has gone
//! idle, such as the output of a job that has ended, is not failing now).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::clock::millis;
use crate::error::StorageFault;

/// How long a failure stays reported when its path has no new outcome.
pub const FADE: Duration = Duration::from_secs(60);

/// The storage health every write path reports to; clone freely.
#[derive(Debug, Clone, Default)]
pub struct StorageHealth(Arc<Mutex<BTreeMap<&'static str, PathState>>>);

#[derive(Debug, Clone, Copy)]
enum PathState {
    /// Failing since `since` (its first failure in a row), last at `last`.
    Failing {
        fault: StorageFault,
        since: Instant,
        last: Instant,
    },
    Dead,
}

/// One write path that is not well, as `/healthz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ailment {
    /// The write path: `hashes`, `heartbeats`, `job output`, …
    pub path: &'static str,
    /// What goes wrong, in words a client also sees.
    pub reason: String,
    /// How long it has been failing (absent for a dead writer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_for_ms: Option<i64>,
}

impl StorageHealth {
    /// Records how a write on `path` went.
    pub fn record<T>(&self, path: &'static str, outcome: &Result<T, StorageFault>) {
        let mut paths = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(_) => {
                if matches!(paths.get(path), Some(PathState::Failing { .. })) {
                    paths.remove(path);
                    tracing::info!(path, "writes succeed again");
                }
            }
            // Shutting down is not a fault of storage.
            Err(StorageFault::Stopped) => {}
            Err(fault) => {
                let now = Instant::now();
                match paths.get_mut(path) {
                    Some(PathState::Dead) => {}
                    Some(PathState::Failing { last, .. }) => *last = now,
                    None => {
                        paths.insert(
                            path,
                            PathState::Failing {
                                fault: *fault,
                                since: now,
                                last: now,
                            },
                        );
                    }
                }
            }
        }
    }

    /// Records that the writer of `path` has stopped for good while it was still needed.
    pub fn writer_died(&self, path: &'static str) {
        let mut paths = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        paths.insert(path, PathState::Dead);
    }

    /// Every write path that is failing or dead, by name; empty when storage is well.
    pub fn ailments(&self) -> Vec<Ailment> {
        let mut paths = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        paths.retain(|_, state| match state {
            PathState::Failing { last, .. } => last.elapsed() < FADE,
            PathState::Dead => true,
        });
        paths
            .iter()
            .map(|(&path, state)| match *state {
                PathState::Failing { fault, since, .. } => Ailment {
                    path,
                    reason: fault.to_string(),
                    failing_for_ms: Some(millis(since.elapsed())),
                },
                PathState::Dead => Ailment {
                    path,
                    reason: "its writer has stopped; restart warden".to_owned(),
                    failing_for_ms: None,
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_failing_from_its_first_failure_until_its_next_success() {
        let health = StorageHealth::default();
        health.record::<()>("hashes", &Err(StorageFault::Full));
        health.record::<()>("hashes", &Err(StorageFault::Busy));
        health.record("heartbeats", &Ok(()));
        let ailments = health.ailments();
        assert_eq!(ailments.len(), 1);
        assert_eq!(ailments[0].path, "hashes");
        assert_eq!(ailments[0].reason, StorageFault::Full.to_string());
        health.record("hashes", &Ok(1));
        assert!(health.ailments().is_empty());
    }

    #[test]
    fn a_dead_writer_stays_reported_and_shutting_down_is_no_fault() {
        let health = StorageHealth::default();
        health.record::<()>("hashes", &Err(StorageFault::Stopped));
        assert!(health.ailments().is_empty());
        health.writer_died("job output");
        health.record("job output", &Ok(()));
        health.record::<()>("job output", &Err(StorageFault::Full));
        assert_eq!(health.ailments().len(), 1);
        assert!(health.ailments()[0].failing_for_ms.is_none());
    }
}
