//! The SQLite database: opening it, the data-directory lock, migrations, and the writer.
//!
//! Reads go through a pool of `query_only` connections. Every write goes through the single
//! write connection, and hot writes through a [`Writer`]: a task that takes every request
//! waiting on its channel, writes them all in one atomic commit (group commit), and only then
//! answers each caller. A caller that got an answer has its write on disk, under the
//! `synchronous` setting chosen; a caller that got an error has nothing written.
//!
//! Each writer runs on a thread of its own. It is the one serial step of every hot write, and
//! on a busy runtime each of its round trips to SQLite would otherwise wait in line behind
//! request handlers for a worker: that wait, not the disk, was what bounded throughput.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection as _, SqlitePool};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard, mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::error::StorageFault;

/// How long a connection waits for another process's lock before answering "busy".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The most requests one group commit takes; more wait for the next.
const MAX_BATCH: usize = 1024;

/// How many requests may wait for the writer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 8 * MAX_BATCH;

/// SQLite's `synchronous` setting (`--sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// fsync on every commit: nothing acknowledged is lost even on power loss.
    Full,
    /// fsync at checkpoints: a crash of warden loses nothing, a power loss may.
    Normal,
}

/// `warden.db` inside `data_dir`.
pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("warden.db")
}

/// The open database: a read pool and the one write connection.
#[derive(Clone, Debug)]
pub struct Database {
    /// Read-only connections; no long transactions.
    pub reads: SqlitePool,
    /// The single connection that writes, taken in turn (the mutex is fair). A plain
    /// connection rather than a pool of one: a pool pings a connection on every return,
    /// one more round trip per commit on the serial path. `None` once closed.
    writes: Arc<Mutex<Option<SqliteConnection>>>,
}

impl Database {
    /// Opens (creating if missing) `warden.db` in `data_dir` and brings its schema up to date.
    pub async fn open(data_dir: &Path, sync: SyncMode) -> Result<Self, sqlx::Error> {
        let options = SqliteConnectOptions::new()
            .filename(database_path(data_dir))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match sync {
                SyncMode::Full => SqliteSynchronous::Full,
                SyncMode::Normal => SqliteSynchronous::Normal,
            })
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let mut writes = SqliteConnection::connect_with(&options).await?;
        sqlx::migrate!().run(&mut writes).await?;
        let read_connections = std::thread::available_parallelism()
            .map_or(4, |cpus| cpus.get() * 2)
            .clamp(4, 16);
        let reads = SqlitePoolOptions::new()
            // Clamped to 4..=16 above, so the conversion cannot fail.
            .max_connections(u32::try_from(read_connections).unwrap_or(4))
            .test_before_acquire(false)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options.pragma("query_only", "ON"))
            .await?;
        Ok(Self {
            reads,
            writes: Arc::new(Mutex::new(Some(writes))),
        })
    }

    /// Starts a writer for one kind of batch on a thread of its own; it stops once every
    /// handle is dropped and its queue is empty, and `tasks` tracks it so shutdown waits.
    pub fn writer<B: Batch>(&self, batch: B, tasks: &TaskTracker) -> Writer<B> {
        let (queue, pending) = mpsc::channel(QUEUE_DEPTH);
        let writes = self.writes.clone();
        tasks.spawn_blocking(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(run_writer(writes, batch, pending)),
                // Dropping `pending` here answers every caller with `StorageFault::Stopped`.
                Err(error) => tracing::error!(%error, "cannot start a writer thread"),
            }
        });
        Writer { queue }
    }

    /// Takes the write connection for a write that is not worth batching (a delete, a purge
    /// step). Keep the guard briefly: every writer waits for it, so never hold it across a
    /// wait for anything but SQLite.
    pub async fn write_connection(&self) -> Result<WriteConnection<'_>, StorageFault> {
        let writes = self.writes.lock().await;
        MutexGuard::try_map(writes, Option::as_mut).map_err(|_| StorageFault::Stopped)
    }

    /// Folds the WAL back into the database file and closes every connection; writes after
    /// this fail with [`StorageFault::Stopped`].
    pub async fn close(&self) {
        self.reads.close().await;
        let Some(mut writes) = self.writes.lock().await.take() else {
            return;
        };
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut writes)
            .await
        {
            tracing::warn!(%error, "could not checkpoint the WAL at shutdown");
        }
        if let Err(error) = writes.close().await {
            tracing::warn!(%error, "could not close the write connection cleanly");
        }
    }
}

/// The write connection, held exclusively; see [`Database::write_connection`].
pub type WriteConnection<'a> = MappedMutexGuard<'a, SqliteConnection>;

/// One kind of write that a [`Writer`] applies in batches, e.g. "record these hashes".
pub trait Batch: Send + Sync + 'static {
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
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { request, reply })
            .await
            .map_err(|_| StorageFault::Stopped)?;
        // The writer answers every request it takes; a dropped sender means it died.
        answer.await.unwrap_or(Err(StorageFault::Stopped))
    }
}

async fn run_writer<B: Batch>(
    writes: Arc<Mutex<Option<SqliteConnection>>>,
    batch: B,
    mut pending: mpsc::Receiver<Pending<B>>,
) {
    let mut taken = Vec::with_capacity(MAX_BATCH);
    let mut requests = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut taken, MAX_BATCH).await > 0 {
        let replies: Vec<_> = taken
            .drain(..)
            .map(|Pending { request, reply }| {
                requests.push(request);
                reply
            })
            .collect();
        match commit(&writes, &batch, &requests).await {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    // A caller that has gone away still had its write committed.
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(error) => {
                let fault = StorageFault::of(&error);
                tracing::error!(%error, requests = requests.len(), "group commit failed");
                for reply in replies {
                    let _ = reply.send(Err(fault));
                }
            }
        }
        requests.clear();
    }
}

async fn commit<B: Batch>(
    writes: &Mutex<Option<SqliteConnection>>,
    batch: &B,
    requests: &[B::Request],
) -> Result<Vec<B::Reply>, sqlx::Error> {
    let mut writes = writes.lock().await;
    let conn = writes.as_mut().ok_or(sqlx::Error::PoolClosed)?;
    let answers = batch.write(conn, requests).await?;
    if answers.len() != requests.len() {
        return Err(sqlx::Error::Protocol(format!(
            "a batch of {} requests gave {} replies",
            requests.len(),
            answers.len()
        )));
    }
    Ok(answers)
}

/// Creates `data_dir` (mode 0700) or takes group and other access away from it: it holds the
/// token signing key, every job's output and the dev PKI, so no other OS user may enter it.
fn restrict_to_owner(data_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)?;
    let mode = std::fs::metadata(data_dir)?.permissions().mode();
    if mode & 0o077 != 0
        && let Err(error) =
            std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(mode & 0o700))
    {
        tracing::warn!(%error, dir = %data_dir.display(),
            "cannot make the data directory private; other users may read it");
    }
    Ok(())
}

/// Holds the exclusive lock on a data directory for as long as it lives.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Why a data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another warden process is already using data directory {0} (it holds {0}/warden.lock)"
    )]
    Held(PathBuf),
    #[error("cannot use data directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Creates `data_dir` if needed and takes its exclusive lock, failing at once if another
/// process holds it. The lock is released when the process exits, however it exits.
pub fn lock_data_dir(data_dir: &Path) -> Result<DataDirLock, LockError> {
    let io = |source| LockError::Io {
        path: data_dir.to_path_buf(),
        source,
    };
    restrict_to_owner(data_dir).map_err(io)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(data_dir.join("warden.lock"))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Err(LockError::Held(data_dir.to_path_buf())),
        Err(TryLockError::Error(error)) => return Err(io(error)),
    }
    // The pid is for an operator wondering who holds the lock; the lock itself is the flock.
    file.set_len(0).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(DataDirLock { _file: file })
}
