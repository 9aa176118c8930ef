//! The live jobs: the running ones and the followed ones, by `seq`, each with the watch its
//! followers are woken through and the token that stops it.
//!
//! Invariant: a job's live entry exists while a worker runs it or while someone follows it,
//! and not after both have ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::output::Progress;

/// A job that is running, or that someone follows.
pub struct LiveJob {
    pub progress: watch::Sender<Progress>,
    pub stop: CancellationToken,
    /// A worker runs it: its entry stays until the worker has recorded its end.
    pub running: bool,
}

impl LiveJob {
    fn new() -> Self {
        Self {
            progress: watch::Sender::new(Progress::default()),
            stop: CancellationToken::new(),
            running: false,
        }
    }
}

/// The live jobs by `seq`.
#[derive(Clone, Default)]
pub struct LiveJobs(Arc<Mutex<HashMap<i64, LiveJob>>>);

impl LiveJobs {
    /// Runs `with` on job `seq`'s entry, making one if there is none.
    pub fn with<T>(&self, seq: i64, with: impl FnOnce(&mut LiveJob) -> T) -> T {
        // Every change to the map is a single insert or remove: a panic elsewhere cannot
        // leave it half-written, so a poisoned lock is still sound to use.
        let mut live = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        with(live.entry(seq).or_insert_with(LiveJob::new))
    }

    /// Follows job `seq`; see [`super::runner::Runner::follow`].
    pub fn follow(&self, seq: i64) -> Following {
        Following {
            progress: self.with(seq, |job| job.progress.subscribe()),
            seq,
            live: self.clone(),
        }
    }

    /// Removes job `seq`'s entry and tells its followers that it has ended.
    pub fn end(&self, seq: i64) {
        let entry = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&seq);
        if let Some(entry) = entry {
            entry
                .progress
                .send_modify(|progress| progress.finished = true);
        }
    }
}

/// A follower of one job: woken as its output is committed and when it ends. Dropping it
/// forgets the job's live entry once nobody follows it and no worker runs it.
pub struct Following {
    progress: watch::Receiver<Progress>,
    seq: i64,
    live: LiveJobs,
}

impl Following {
    /// The job's progress.
    pub fn progress(&mut self) -> &mut watch::Receiver<Progress> {
        &mut self.progress
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        // Followers subscribe and leave only under the map's lock, so a count of one is this
        // follower's own receiver, about to go with it: nobody else follows the job.
        let mut live = self.live.0.lock().unwrap_or_else(PoisonError::into_inner);
        if live
            .get(&self.seq)
            .is_some_and(|job| !job.running && job.progress.receiver_count() <= 1)
        {
            live.remove(&self.seq);
        }
    }
}
