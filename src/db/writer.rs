//! The group-commit writer: a task on a thread of its own that takes every request waiting on
//! its channel, writes them all in one atomic commit, and only then answers each caller.
//!
//! A caller that got an answer has its write on disk, under the `synchronous` setting chosen;
//! a caller that got an error has nothing of its batch written, and the next batch starts on a
//! clean connection (see [`super::WriteSide`]). A writer that stops while it is still needed
//! is reported in the storage health, never hidden. Each batch's size and commit time are
//! recorded under the batch's [`Batch::PATH`]; its queue depth is read at each scrape.

use std::sync::Arc;
use std::time::Instant;

use sqlx::sqlite::SqliteConnection;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::WriteSide;
use super::health::StorageHealth;
use crate::error::StorageFault;
use crate::telemetry::{Telemetry, WriterMetrics};

/// The most requests one group commit takes; more wait for the next.
pub(super) const MAX_BATCH: usize = 1024;

/// How many requests may wait for the writer before callers wait to enqueue.
pub(super) const QUEUE_DEPTH: usize = 8 * MAX_BATCH;

/// One kind of write that a [`Writer`] applies in batches, e.g. "record these hashes".
pub trait Batch: Send + Sync + 'static {
    /// The write path's name, as the storage health and the logs show it.
    const PATH: &'static str;
    /// What a caller asks to write.
    type Request: Send + Sync + 'static;
    /// What a caller learns once its write is committed (e.g. the id it was given).
    type Reply: Send + 'static;

    /// Writes all `requests` atomically and durably on the write connection `conn`, and
    /// returns one reply per request, in order. Atomic means one statement (SQLite commits
    /// each statement whole) or a `BEGIN IMMEDIATE` transaction the batch commits itself; on
    /// an error nothing of the batch may remain. Fewer statements mean fewer round trips to
    /// SQLite's thread on the one serial path, so batches write many rows per statement.
    fn write(
        &self,
        conn: &mut SqliteConnection,
        requests: &[Self::Request],
    ) -> impl Future<Output = Result<Vec<Self::Reply>, sqlx::Error>> + Send;

    /// Whether a batch that answered `replies` wrote anything: one that only refused its
    /// requests tells nothing of whether writes succeed again.
    fn wrote(_replies: &[Self::Reply]) -> bool {
        true
    }
}

/// A handle to a writer task; clone it freely.
#[derive(Debug)]
pub struct Writer<B: Batch> {
    queue: mpsc::Sender<Pending<B>>,
}

impl<B: Batch> Clone for Writer<B> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

struct Pending<B: Batch> {
    request: B::Request,
    reply: oneshot::Sender<Result<B::Reply, StorageFault>>,
}

impl<B: Batch> std::fmt::Debug for Pending<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl<B: Batch> Writer<B> {
    /// Queues `request` and waits until the transaction holding it has committed.
    pub async fn submit(&self, request: B::Request) -> Result<B::Reply, StorageFault> {
        // A writer ends of its own accord only once every handle is gone, so while this one
        // exists a closed queue or an unanswered request means it died.
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { request, reply })
            .await
            .map_err(|_| StorageFault::WriterDied)?;
        answer.await.unwrap_or(Err(StorageFault::WriterDied))
    }
}

/// Starts a writer for `batch` on a thread of its own, on the write side `writes`, with its
/// metrics on `telemetry`.
pub(super) fn start<B: Batch>(
    writes: Arc<Mutex<WriteSide>>,
    health: StorageHealth,
    batch: B,
    tasks: &tokio_util::task::TaskTracker,
    telemetry: &Telemetry,
) -> Writer<B> {
    let (queue, pending) = mpsc::channel(QUEUE_DEPTH);
    let metrics = WriterMetrics::new(telemetry, B::PATH);
    // A weak handle: a scrape must not keep the writer from stopping once its users are gone.
    let waiting = queue.downgrade();
    let queue_depth = metrics.queue_depth.clone();
    telemetry.on_scrape(move || {
        let depth = waiting
            .upgrade()
            .map_or(0, |queue| queue.max_capacity() - queue.capacity());
        queue_depth.set(depth as f64);
        std::future::ready(())
    });
    tasks.spawn_blocking(move || {
        // Reports the writer dead unless it ends because every handle is gone (shutdown),
        // whatever ends it: a runtime that cannot start, or a panic unwinding through here.
        let mut watch = DeathWatch {
            health: health.clone(),
            path: B::PATH,
            ended_normally: false,
        };
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => {
                runtime.block_on(run(&writes, &health, &batch, &metrics, pending));
                watch.ended_normally = true;
            }
            // Dropping `pending` here answers every caller with `StorageFault::Stopped`.
            Err(error) => tracing::error!(%error, path = B::PATH, "cannot start a writer thread"),
        }
    });
    Writer { queue }
}

struct DeathWatch {
    health: StorageHealth,
    path: &'static str,
    ended_normally: bool,
}

impl Drop for DeathWatch {
    fn drop(&mut self) {
        if !self.ended_normally {
            tracing::error!(path = self.path, "a writer stopped; its writes now fail");
            self.health.writer_died(self.path);
        }
    }
}

async fn run<B: Batch>(
    writes: &Mutex<WriteSide>,
    health: &StorageHealth,
    batch: &B,
    metrics: &WriterMetrics,
    mut pending: mpsc::Receiver<Pending<B>>,
) {
    let mut taken = Vec::with_capacity(MAX_BATCH);
    let mut requests = Vec::with_capacity(MAX_BATCH);
    loop {
        let size = pending.recv_many(&mut taken, MAX_BATCH).await;
        if size == 0 {
            break;
        }
        let started = Instant::now();
        let replies: Vec<_> = taken
            .drain(..)
            .map(|Pending { request, reply }| {
                requests.push(request);
                reply
            })
            .collect();
        let committed = commit(writes, batch, &requests).await;
        metrics.commit_duration.record(started.elapsed());
        metrics.batch_size.record(size as f64);
        if committed.as_ref().map_or(true, |replies| B::wrote(replies)) {
            health.record(B::PATH, &committed);
        }
        match committed {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    // A caller that has gone away still had its write committed.
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(fault) => {
                for reply in replies {
                    let _ = reply.send(Err(fault));
                }
            }
        }
        requests.clear();
    }
}

async fn commit<B: Batch>(
    writes: &Mutex<WriteSide>,
    batch: &B,
    requests: &[B::Request],
) -> Result<Vec<B::Reply>, StorageFault> {
    let mut writes = writes.lock().await;
    let conn = writes.clean().await?;
    let answers = batch.write(conn, requests).await.map_err(|error| {
        let fault = StorageFault::of(&error);
        tracing::error!(%error, path = B::PATH, requests = requests.len(), "group commit failed");
        fault
    })?;
    if answers.len() != requests.len() {
        tracing::error!(
            path = B::PATH,
            requests = requests.len(),
            replies = answers.len(),
            "a batch gave the wrong number of replies"
        );
        return Err(StorageFault::Failed);
    }
    Ok(answers)
}
