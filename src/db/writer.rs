//! The group-commit writer: a task that takes every request waiting on its channel, writes
//! them all in one atomic commit, and only then answers each caller.
//!
//! A caller that got an answer has its write durable (on SQLite under the `synchronous`
//! setting chosen; on Postgres once it has committed); a caller that got an error has nothing
//! of its batch written, and the next batch starts on a clean connection (see
//! [`super::WriteSide`]). A writer that stops while it is still needed is reported in the
//! storage health, never hidden. Each batch's size and commit time are recorded under its
//! [`Commit::PATH`]; its queue depth is read at each scrape.
//!
//! What a commit writes on is the [`Commit`]'s business: [`OnSqlite`] takes the one SQLite
//! write connection for a [`Batch`] on SQLite, and `postgres.rs` a pooled connection for one
//! on Postgres. So a service's writer has one type, [`Writer<Request, Reply>`], on
//! either engine.

use std::sync::Arc;
use std::time::Instant;

use sqlx::sqlite::SqliteConnection;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::WriteSide;
use super::health::StorageHealth;
use crate::error::StorageFault;
use crate::telemetry::{Telemetry, WriterMetrics};

/// The most requests one group commit takes; more wait for the next.
pub(super) const MAX_BATCH: usize = 1024;

/// How many requests may wait for the writer before callers wait to enqueue.
pub(super) const QUEUE_DEPTH: usize = 8 * MAX_BATCH;

/// How a writer commits a batch of requests: the one step that differs by engine.
pub trait Commit: Send + Sync + 'static {
    /// The write path's name, as the storage health and the logs show it.
    const PATH: &'static str;
    type Request: Send + Sync + 'static;
    type Reply: Send + 'static;

    /// Writes all `requests` in one atomic, durable commit; one reply per request, in order.
    /// On an error nothing of the batch may remain.
    fn commit(
        &self,
        requests: &[Self::Request],
    ) -> impl Future<Output = Result<Vec<Self::Reply>, StorageFault>> + Send;

    /// Whether a batch that answered `replies` wrote anything: one that only refused its
    /// requests tells nothing of whether writes succeed again.
    fn wrote(_replies: &[Self::Reply]) -> bool {
        true
    }
}

/// One kind of write that a [`Writer`] applies in batches, e.g. "record these hashes", on
/// one engine's connection: SQLite's one write connection, or a pooled Postgres one.
pub trait Batch: Send + Sync + 'static {
    /// The write path's name, as the storage health and the logs show it.
    const PATH: &'static str;
    /// The connection it writes on: `SqliteConnection` or `PgConnection`.
    type Conn: Send;
    /// What a caller asks to write.
    type Request: Send + Sync + 'static;
    /// What a caller learns once its write is committed (e.g. the id it was given).
    type Reply: Send + 'static;

    /// Writes all `requests` atomically and durably on `conn`, and returns one reply per
    /// request, in order. Atomic means one statement (each engine commits a statement whole)
    /// or a transaction the batch commits itself (`BEGIN IMMEDIATE` on SQLite); on an error
    /// nothing of the batch may remain. Fewer statements mean fewer round trips on the one
    /// serial path, so batches write many rows per statement.
    fn write(
        &self,
        conn: &mut Self::Conn,
        requests: &[Self::Request],
    ) -> impl Future<Output = Result<Vec<Self::Reply>, sqlx::Error>> + Send;

    /// Whether a batch that answered `replies` wrote anything: one that only refused its
    /// requests tells nothing of whether writes succeed again.
    fn wrote(_replies: &[Self::Reply]) -> bool {
        true
    }
}

/// A [`Batch`] on the SQLite write connection.
pub(super) struct OnSqlite<B> {
    pub(super) writes: Arc<Mutex<WriteSide>>,
    pub(super) batch: B,
}

impl<B: Batch<Conn = SqliteConnection>> Commit for OnSqlite<B> {
    const PATH: &'static str = B::PATH;
    type Request = B::Request;
    type Reply = B::Reply;

    async fn commit(&self, requests: &[B::Request]) -> Result<Vec<B::Reply>, StorageFault> {
        let mut writes = self.writes.lock().await;
        let conn = writes.clean().await?;
        self.batch
            .write(conn, requests)
            .await
            .map_err(|error| failed::<Self>(&error, requests.len()))
    }

    fn wrote(replies: &[B::Reply]) -> bool {
        B::wrote(replies)
    }
}

/// Logs a failed group commit of `C` and names its fault.
pub(super) fn failed<C: Commit>(error: &sqlx::Error, requests: usize) -> StorageFault {
    let fault = StorageFault::of(error);
    tracing::error!(%error, path = C::PATH, requests, "group commit failed");
    fault
}

/// A handle to a writer task that takes `Request`s and answers each with a `Reply`; clone it
/// freely.
#[derive(Debug)]
pub struct Writer<Request, Reply> {
    queue: mpsc::Sender<Pending<Request, Reply>>,
}

impl<Request, Reply> Clone for Writer<Request, Reply> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

struct Pending<Request, Reply> {
    request: Request,
    reply: oneshot::Sender<Result<Reply, StorageFault>>,
}

impl<Request, Reply> std::fmt::Debug for Pending<Request, Reply> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl<Request, Reply> Writer<Request, Reply> {
    /// Queues `request` and waits until the transaction holding it has committed.
    pub async fn submit(&self, request: Request) -> Result<Reply, StorageFault> {
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

/// Where a writer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placement {
    /// A thread of its own, with a runtime of its own: SQLite's serial step, whose round trips
    /// to SQLite's thread must not wait in line behind request handlers.
    OwnThread,
    /// A task on the App's runtime: Postgres's connections belong to it.
    Task,
}

/// Starts a writer that commits with `commit`, placed as `placement`, with its metrics on
/// `telemetry`.
pub(super) fn start<C: Commit>(
    commit: C,
    placement: Placement,
    health: StorageHealth,
    tasks: &TaskTracker,
    telemetry: &Telemetry,
) -> Writer<C::Request, C::Reply> {
    let (queue, pending) = mpsc::channel(QUEUE_DEPTH);
    let metrics = WriterMetrics::new(telemetry, C::PATH);
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
    // Reports the writer dead unless it ends because every handle is gone (shutdown),
    // whatever ends it: a runtime that cannot start, or a panic unwinding through here.
    let watch = DeathWatch {
        health: health.clone(),
        path: C::PATH,
        ended_normally: false,
    };
    match placement {
        Placement::OwnThread => {
            tasks.spawn_blocking(move || {
                let mut watch = watch;
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => {
                        runtime.block_on(run(&commit, &health, &metrics, pending));
                        watch.ended_normally = true;
                    }
                    // Dropping `pending` here answers every caller with `StorageFault::Stopped`.
                    Err(error) => {
                        tracing::error!(%error, path = C::PATH, "cannot start a writer thread");
                    }
                }
            });
        }
        Placement::Task => {
            tasks.spawn(async move {
                let mut watch = watch;
                run(&commit, &health, &metrics, pending).await;
                watch.ended_normally = true;
            });
        }
    }
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

async fn run<C: Commit>(
    commit: &C,
    health: &StorageHealth,
    metrics: &WriterMetrics,
    mut pending: mpsc::Receiver<Pending<C::Request, C::Reply>>,
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
        let committed = checked(commit, &requests).await;
        metrics.commit_duration.record(started.elapsed());
        metrics.batch_size.record(size as f64);
        if committed.as_ref().map_or(true, |replies| C::wrote(replies)) {
            health.record(C::PATH, &committed);
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

/// Commits `requests`, and fails the batch if it did not answer each one.
async fn checked<C: Commit>(
    commit: &C,
    requests: &[C::Request],
) -> Result<Vec<C::Reply>, StorageFault> {
    let answers = commit.commit(requests).await?;
    if answers.len() != requests.len() {
        tracing::error!(
            path = C::PATH,
            requests = requests.len(),
            replies = answers.len(),
            "a batch gave the wrong number of replies"
        );
        return Err(StorageFault::Failed);
    }
    Ok(answers)
}
