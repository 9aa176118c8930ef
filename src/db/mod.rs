//! The SQLite database: opening it, migrations, the one write connection, and the writers.
//!
//! Reads go through a pool of `query_only` connections. Every write goes through the single
//! write connection, and hot writes through a [`Writer`] (`writer.rs`): group commits that
//! answer each caller only once its write is on disk. `lock.rs` keeps one warden per data
//! directory; `health.rs` tells `/healthz` which write paths fail; `sizes.rs` tells `/metrics`
//! how large the file and its WAL are.
//!
//! Invariant: whoever takes the write connection gets it clean, outside any transaction.
//! After a failed statement or commit SQLite may have rolled a transaction back by itself
//! (a full disk does that), leaving sqlx believing one is still open; such a connection is
//! replaced before anyone writes on it again, so one fault never wedges the write path.
//!
//! Each writer runs on a thread of its own. It is the one serial step of every hot write, and
//! on a busy runtime each of its round trips to SQLite would otherwise wait in line behind
//! request handlers for a worker: that wait, not the disk, was what bounded throughput.

mod health;
mod lock;
mod postgres;
mod sizes;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection as _, SqlitePool};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_util::task::TaskTracker;

use crate::error::StorageFault;
use crate::telemetry::Telemetry;
pub use health::{Ailment, StorageHealth};
pub use lock::{DataDirLock, LockError, lock_data_dir};
pub use postgres::{PgOpenError, PgSettings, SharedDatabase, migrate_only};
pub use writer::{Batch, Writer};

/// How long a connection waits for another process's lock before answering "busy", unless
/// `--busy-timeout` says otherwise.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite's `synchronous` setting (`--sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// fsync on every commit: nothing acknowledged is lost even on power loss.
    Full,
    /// fsync at checkpoints: a crash of warden loses nothing, a power loss may.
    Normal,
}

/// Bytes an unprivileged process may still write on the volume holding `dir`.
pub fn free_space(dir: &Path) -> std::io::Result<u64> {
    let stats = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(stats
        .blocks_available()
        .saturating_mul(stats.fragment_size()))
}

/// Bytes of the database's pages in use, through `executor` (the read pool, or the write
/// connection inside a batch): free pages, which SQLite reuses, do not count.
pub async fn used_bytes<'c>(executor: impl sqlx::SqliteExecutor<'c>) -> Result<u64, sqlx::Error> {
    let used: i64 = sqlx::query_scalar!(
        r#"SELECT (page_count - freelist_count) * page_size AS "used!: i64"
           FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()"#
    )
    .fetch_one(executor)
    .await?;
    Ok(used.max(0).cast_unsigned())
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
    /// The single connection that writes, taken in turn (the mutex is fair).
    writes: Arc<Mutex<WriteSide>>,
    health: StorageHealth,
}

/// The write connection and what it takes to replace it.
///
/// A plain connection rather than a pool of one: a pool pings a connection on every return,
/// one more round trip per commit on the serial path.
#[derive(Debug)]
pub(crate) struct WriteSide {
    /// `None` once closed.
    conn: Option<SqliteConnection>,
    options: SqliteConnectOptions,
    /// `PRAGMA max_page_count` for the write connection, if one was set.
    page_limit: Option<u64>,
}

impl WriteSide {
    /// The connection, outside any transaction: if a failure left sqlx believing a
    /// transaction is open, it is replaced by a new connection first.
    async fn clean(&mut self) -> Result<&mut SqliteConnection, StorageFault> {
        let conn = self.conn.as_mut().ok_or(StorageFault::Stopped)?;
        if conn.is_in_transaction() {
            // A dropped transaction's rollback may still be queued on the connection's
            // thread: one round trip lets it run before the connection is judged.
            let _ = conn.ping().await;
        }
        if conn.is_in_transaction() {
            tracing::warn!(
                "the write connection was left inside a failed transaction; replacing it"
            );
            let fresh = self.connect().await?;
            if let Some(stale) = self.conn.replace(fresh) {
                // Closing rolls back whatever SQLite still holds open on it.
                drop(stale);
            }
        }
        self.conn.as_mut().ok_or(StorageFault::Stopped)
    }

    async fn connect(&self) -> Result<SqliteConnection, StorageFault> {
        let mut conn = SqliteConnection::connect_with(&self.options)
            .await
            .map_err(|error| {
                tracing::error!(%error, "cannot open a new write connection");
                StorageFault::of(&error)
            })?;
        if let Some(pages) = self.page_limit {
            apply_page_limit(&mut conn, pages).await?;
        }
        Ok(conn)
    }
}

async fn apply_page_limit(conn: &mut SqliteConnection, pages: u64) -> Result<(), StorageFault> {
    // A PRAGMA takes no bound parameters; `pages` is a number we format ourselves.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "PRAGMA max_page_count = {pages}"
    )))
    .execute(&mut *conn)
    .await
    .map(|_| ())
    .map_err(|error| StorageFault::of(&error))
}

impl Database {
    /// Opens (creating if missing) `warden.db` in `data_dir` and brings its schema up to date.
    pub async fn open(data_dir: &Path, sync: SyncMode) -> Result<Self, sqlx::Error> {
        Self::open_with(data_dir, sync, BUSY_TIMEOUT).await
    }

    /// [`Database::open`], waiting at most `busy_timeout` for another process's lock.
    pub async fn open_with(
        data_dir: &Path,
        sync: SyncMode,
        busy_timeout: Duration,
    ) -> Result<Self, sqlx::Error> {
        let options = SqliteConnectOptions::new()
            .filename(database_path(data_dir))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match sync {
                SyncMode::Full => SqliteSynchronous::Full,
                SyncMode::Normal => SqliteSynchronous::Normal,
            })
            .foreign_keys(true)
            .busy_timeout(busy_timeout);
        let mut writes = SqliteConnection::connect_with(&options).await?;
        sqlx::migrate!().run(&mut writes).await?;
        let read_connections = std::thread::available_parallelism()
            .map_or(4, |cpus| cpus.get() * 2)
            .clamp(4, 16);
        let reads = SqlitePoolOptions::new()
            // Clamped to 4..=16 above, so the conversion cannot fail.
            .max_connections(u32::try_from(read_connections).unwrap_or(4))
            .test_before_acquire(false)
            .acquire_timeout(busy_timeout.max(BUSY_TIMEOUT))
            .connect_with(options.clone().pragma("query_only", "ON"))
            .await?;
        Ok(Self {
            reads,
            writes: Arc::new(Mutex::new(WriteSide {
                conn: Some(writes),
                options,
                page_limit: None,
            })),
            health: StorageHealth::default(),
        })
    }

    /// Starts a writer for one kind of batch on a thread of its own; it stops once every
    /// handle is dropped and its queue is empty, and `tasks` tracks it so shutdown waits.
    /// Its batch sizes, commit times and queue depth go to `telemetry`.
    pub fn writer<B: Batch<Conn = SqliteConnection>>(
        &self,
        batch: B,
        tasks: &TaskTracker,
        telemetry: &Telemetry,
    ) -> Writer<B::Request, B::Reply> {
        let commit = writer::OnSqlite {
            writes: self.writes.clone(),
            batch,
        };
        writer::start(
            commit,
            writer::Placement::OwnThread,
            self.health.clone(),
            tasks,
            telemetry,
        )
    }

    /// Takes the write connection for a write that is not worth batching (a delete, a purge
    /// step), clean (outside any transaction). Keep the guard briefly: every writer waits for
    /// it, so never hold it across a wait for anything but SQLite.
    pub async fn write_connection(&self) -> Result<WriteConnection<'_>, StorageFault> {
        let mut writes = self.writes.lock().await;
        writes.clean().await?;
        MutexGuard::try_map(writes, |writes| writes.conn.as_mut())
            .map_err(|_| StorageFault::Stopped)
    }

    /// Bytes of the database's pages in use now; see [`used_bytes`].
    pub async fn used_bytes(&self) -> Result<u64, StorageFault> {
        used_bytes(&self.reads)
            .await
            .map_err(|error| StorageFault::of(&error))
    }

    /// Which write paths fail now, for `/healthz`; every write path reports here.
    pub fn health(&self) -> &StorageHealth {
        &self.health
    }

    /// Caps the database at `pages` pages (`PRAGMA max_page_count` on the write connection,
    /// kept across a replacement of the connection): past it a write that needs a new page
    /// fails as a full disk does. SQLite never sets it below the pages in use. For tests
    /// and drills of a full disk; `None` lifts the cap. Returns the cap now in force.
    pub async fn limit_pages(&self, pages: Option<u64>) -> Result<u64, StorageFault> {
        /// SQLite's own default and maximum.
        const NO_LIMIT: u64 = 0xFFFF_FFFE;
        // SQLite reads 0 as "tell me the cap" rather than "the pages in use".
        let pages = pages.map(|pages| pages.max(1));
        let mut writes = self.writes.lock().await;
        writes.page_limit = pages;
        let conn = writes.clean().await?;
        apply_page_limit(conn, pages.unwrap_or(NO_LIMIT)).await?;
        sqlx::query_scalar::<_, i64>("PRAGMA max_page_count")
            .fetch_one(&mut *conn)
            .await
            .map(i64::cast_unsigned)
            .map_err(|error| StorageFault::of(&error))
    }

    /// Folds the WAL back into the database file and closes every connection; writes after
    /// this fail with [`StorageFault::Stopped`].
    pub async fn close(&self) {
        self.reads.close().await;
        let Some(mut writes) = self.writes.lock().await.conn.take() else {
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
