//! `--hash-retention`: a task that deletes hashes older than the retention every
//! `--purge-every`, oldest first, in bounded steps. Off by default, since the contract keeps
//! every hash.
//!
//! A hash is past its retention once `now - received_at_ms` exceeds it. `GET /hash/{id}`
//! applies that rule itself and answers 404, as for an id never given, so a hash disappears at
//! exactly its time whenever the purge runs; the purge reclaims the space. Each step deletes
//! at most a thousand rows and releases the write connection before the next, so `POST /hash`
//! commits interleave with a large purge instead of waiting for all of it. Neither the ids
//! (`AUTOINCREMENT`: a deleted id, even the newest, is never given again) nor `GET /stats`
//! (its row counts inserts, and nothing counts deletes) change when hashes are deleted.
//!
//! The schedule is a tokio interval in a task the supervisor tracks (the drain waits for a
//! step in flight), not a tokio-cron-scheduler job: that scheduler keeps a repeat interval in
//! whole seconds, so a sub-second `--purge-every` would purge within the first second after
//! start and never again.

use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::store::HashStore;
use crate::error::StorageFault;

/// How many hashes one purge step examines: about a millisecond of write lock.
const PURGE_CHUNK: i64 = 1_000;

/// Purges at once and then every `every` until `shutdown`, in a task `tasks` tracks.
pub fn start(
    store: HashStore,
    retention: Duration,
    every: Duration,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) {
    tasks.spawn(async move {
        // `Config::validate` refuses a zero interval; an interval of zero would panic.
        let mut ticks = tokio::time::interval(every.max(Duration::from_millis(1)));
        // A purge that outlasts the interval is followed by one interval of rest, not a burst.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            if let Err(fault) = purge_old_hashes(&store, retention, &shutdown).await {
                tracing::warn!(%fault, "purge of old hashes failed; will retry");
            }
        }
    });
}

/// Deletes every hash past `retention`, a step at a time, stopping early on shutdown; returns
/// how many it deleted.
pub async fn purge_old_hashes(
    store: &HashStore,
    retention: Duration,
    shutdown: &CancellationToken,
) -> Result<u64, StorageFault> {
    let mut purged = 0;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let deleted = store.purge_step(retention, PURGE_CHUNK).await?;
        purged += deleted;
        // Less than a whole chunk: the oldest hash left is one still kept.
        if deleted < PURGE_CHUNK.unsigned_abs() {
            break;
        }
        // Let a waiting group commit take the write connection before the next step.
        tokio::task::yield_now().await;
    }
    if purged > 0 {
        tracing::info!(purged, "purged hashes past their retention");
    }
    Ok(purged)
}
