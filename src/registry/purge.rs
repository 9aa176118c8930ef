//! The purge: a tokio-cron-scheduler job that deletes expired instances in bounded steps.
//!
//! A pass walks the instances in key order, a chunk at a time; each step examines one chunk
//! and deletes its expired rows, holding the write connection for a millisecond or so and
//! releasing it between steps, so heartbeats interleave with a large purge instead of
//! waiting for all of it. (Walking the key range needs no index on the heartbeat time, which
//! would slow every heartbeat down.)
//! Each run also records that the registry is alive, for the start-up grace after an outage;
//! on Postgres a node also records it every third of a TTL, so that the nodes that share the
//! database can tell a registry still running from one starting again (see
//! `store/postgres.rs`). Every node purges; each expired row is deleted once, by one of them.
//! Every deleted row is counted in `warden_registry_purged_instances_total`.

use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::store::{PurgeCursor, RegistryStore};
use crate::error::StorageFault;

/// How many instances one purge step examines: about a millisecond of write lock.
const PURGE_CHUNK: i64 = 1_000;

/// Schedules the purge every `every` until `shutdown`; then records the last alive time.
/// `purged` counts the rows it deletes. On Postgres, records the alive time every third of
/// `ttl` too.
pub async fn start(
    store: RegistryStore,
    ttl: Duration,
    every: Duration,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
    purged: Counter,
) -> Result<(), JobSchedulerError> {
    // The scheduler counts a repeat in whole seconds and drops the rest: a sub-second
    // interval would purge for the first second only. Round up, to one second at least.
    let every = Duration::from_secs(
        every
            .as_secs()
            .saturating_add(u64::from(every.subsec_nanos() > 0))
            .max(1),
    );
    let mut scheduler = JobScheduler::new().await?;
    // One purge at a time, even if one runs longer than the interval.
    let running = Arc::new(tokio::sync::Mutex::new(()));
    let purge = {
        let (store, running, shutdown) = (store.clone(), running.clone(), shutdown.clone());
        Job::new_repeated_async(every, move |_, _| {
            let (store, running, shutdown, purged) = (
                store.clone(),
                running.clone(),
                shutdown.clone(),
                purged.clone(),
            );
            Box::pin(async move {
                let Ok(_only_one) = running.try_lock() else {
                    return;
                };
                if let Err(fault) = purge_expired(&store, &shutdown, &purged).await {
                    tracing::warn!(%fault, "purge of expired instances failed; will retry");
                }
            })
        })?
    };
    scheduler.add(purge).await?;
    scheduler.start().await?;
    if let RegistryStore::Postgres { .. } = store {
        keep_alive(store.clone(), ttl / 3, tasks, shutdown.clone());
    }
    tasks.spawn(async move {
        shutdown.cancelled().await;
        if let Err(error) = scheduler.shutdown().await {
            tracing::warn!(%error, "the purge scheduler did not stop cleanly");
        }
        let _finished = running.lock().await;
        if let Err(fault) = store.record_alive().await {
            tracing::warn!(%fault, "could not record the registry's last alive time");
        }
    });
    Ok(())
}

/// Records that the registry is alive every `every` until `shutdown`.
fn keep_alive(
    store: RegistryStore,
    every: Duration,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) {
    tasks.spawn(async move {
        let mut ticks = tokio::time::interval(every.max(Duration::from_millis(100)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            if let Err(fault) = store.record_alive().await {
                tracing::warn!(%fault, "could not record that the registry is alive; will retry");
            }
        }
    });
}

/// Deletes every expired instance, a batch at a time, stopping early on shutdown; returns how
/// many it deleted. Each step's deletions are counted in `purged` as soon as they commit, so
/// a pass that fails half-way still counts what it did.
pub async fn purge_expired(
    store: &RegistryStore,
    shutdown: &CancellationToken,
    purged_counter: &Counter,
) -> Result<u64, StorageFault> {
    let live_after = store.live_after().await.map_err(|error| {
        tracing::error!(%error, "registry purge: database error");
        StorageFault::of(&error)
    })?;
    let mut purged = 0;
    let mut cursor = Some(PurgeCursor::default());
    while let Some(from) = cursor.take() {
        if shutdown.is_cancelled() {
            break;
        }
        let (deleted, next) = store.purge_step(&from, live_after, PURGE_CHUNK).await?;
        purged += deleted;
        purged_counter.increment(deleted);
        cursor = next;
        // Let a waiting heartbeat batch take the write connection before the next step.
        tokio::task::yield_now().await;
    }
    store.record_alive().await?;
    if purged > 0 {
        tracing::info!(purged, "purged expired instances");
    }
    Ok(purged)
}
