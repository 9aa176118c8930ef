//! Deleting jobs: finished jobs past `--job-retention`, and those deleted with
//! `DELETE /jobs/{id}`, in bounded steps.
//!
//! A deleted job is gone from every read the moment it is marked; this task then removes its
//! output a few chunks per step and last its row, taking the write connection for one short
//! step at a time so that heartbeats, hashes and output interleave with a large deletion.
//! SQLite keeps the freed pages and reuses them for new data, so a steady load of jobs under
//! a retention window keeps the file at a steady size. Marking survives a restart: whatever
//! was left undone is finished by the next pass.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::store::{self, Purged};
use crate::clock::{Clock, millis};
use crate::db::Database;
use crate::error::StorageFault;

/// How many jobs one step marks deleted.
const EXPIRE_STEP: i64 = 256;
/// How many output chunks (of at most 64 KiB) one step deletes.
const CHUNK_STEP: i64 = 16;
/// The retention task's write path, as `/healthz` names it.
const PATH: &str = "job retention";

/// Wakes the retention task: a job was deleted.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    wake: Arc<Notify>,
}

impl Retention {
    /// Starts the task: a pass `every` so often, or at once when woken, until `shutdown`.
    pub fn start(
        db: Database,
        clock: Clock,
        window: Option<Duration>,
        every: Duration,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let retention = Self::default();
        let wake = retention.wake.clone();
        tasks.spawn(async move {
            loop {
                let outcome = pass(&db, &clock, window, &shutdown).await;
                db.health().record(PATH, &outcome);
                match outcome {
                    Ok(purged) if purged != Purged::default() => {
                        tracing::info!(chunks = purged.chunks, jobs = purged.jobs, "deleted jobs");
                    }
                    Ok(_) => {}
                    Err(fault) => tracing::warn!(%fault, "deleting jobs failed; will retry"),
                }
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = wake.notified() => {}
                    () = shutdown.cancelled() => return,
                }
            }
        });
        retention
    }

    /// Asks for a pass now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Marks the jobs past the window deleted, then removes every deleted job step by step.
async fn pass(
    db: &Database,
    clock: &Clock,
    window: Option<Duration>,
    shutdown: &CancellationToken,
) -> Result<Purged, StorageFault> {
    let fault = |error: sqlx::Error| StorageFault::of(&error);
    if let Some(window) = window {
        let now = clock.now_ms();
        let before = now.saturating_sub(millis(window));
        while !shutdown.is_cancelled() {
            let mut conn = db.write_connection().await?;
            let expired = store::expire_finished(&mut conn, before, now, EXPIRE_STEP)
                .await
                .map_err(fault)?;
            if expired == 0 {
                break;
            }
        }
    }
    let mut total = Purged::default();
    while !shutdown.is_cancelled() {
        let step = {
            let mut conn = db.write_connection().await?;
            store::purge_step(&mut conn, CHUNK_STEP)
                .await
                .map_err(fault)?
        };
        if step == Purged::default() {
            break;
        }
        total.chunks += step.chunks;
        total.jobs += step.jobs;
        // Let other writers take the connection between steps.
        tokio::task::yield_now().await;
    }
    Ok(total)
}
