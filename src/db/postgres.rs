//! The shared database: Postgres, for the hash service and the registry when many warden
//! nodes serve one registry and one hash sequence (`--database postgres://…`).
//!
//! A pool of connections, each with the statement timeout set; the migrations of
//! `migrations/postgres/`, applied under sqlx's advisory lock so nodes starting together take
//! turns; group-commit writers that commit each [`Batch`] on a pooled connection.
//! Its write paths report to the same storage health as SQLite's, so `/healthz` shows them.
//!
//! The queries on Postgres are checked at run time, not at build time: the build has one
//! `DATABASE_URL`, SQLite's, and the shared conformance suite runs every one of them against a
//! real Postgres (see README, "Running more than one node").
//!
//! The URL may carry a password: it is never logged, nor put in an error.

use std::path::PathBuf;
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgSslMode};

use super::health::StorageHealth;
use super::writer::{self, Batch, Commit, Placement, Writer, failed};
use crate::error::StorageFault;
use crate::telemetry::Telemetry;

/// The Postgres migrations, built into the binary.
static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// How the shared database is reached.
#[derive(Clone)]
pub struct PgSettings {
    /// `postgres://user:password@host:port/database?…`; a secret, never shown.
    pub url: String,
    /// The most connections this node opens.
    pub pool_size: u32,
    /// The longest a statement may run before Postgres cancels it (and the request fails with
    /// 503).
    pub statement_timeout: Duration,
    /// TLS to Postgres; `None` keeps the URL's `sslmode` (sqlx's default: `prefer`).
    pub ssl_mode: Option<PgSslMode>,
    /// The CA that signs the server's certificate, for `verify-ca` and `verify-full`.
    pub ssl_root_cert: Option<PathBuf>,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &"<secret>")
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .finish()
    }
}

/// Why the shared database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PgOpenError {
    /// The URL does not parse; the URL itself is not repeated, since it may hold a password.
    #[error("--database is not a valid postgres:// URL")]
    Url,
    #[error("cannot connect to the database: {0}")]
    Connect(sqlx::Error),
    #[error(
        "the database's schema is newer than this warden (it has migration {0}, which this \
         warden does not know): upgrade warden, or point it at another database"
    )]
    Newer(i64),
    #[error("cannot migrate the database: {0}")]
    Migrate(MigrateError),
}

/// The open shared database; clone freely.
#[derive(Clone, Debug)]
pub struct SharedDatabase {
    pub pool: PgPool,
    health: StorageHealth,
}

impl SharedDatabase {
    /// Connects, and brings the schema up to date: every node applies pending migrations, one
    /// at a time, and none starts on a schema newer than it knows. Write paths report to
    /// `health`.
    pub async fn open(settings: &PgSettings, health: StorageHealth) -> Result<Self, PgOpenError> {
        let pool = connect(settings).await?;
        migrate(&pool).await?;
        Ok(Self { pool, health })
    }

    /// Starts a writer for one kind of batch, as a task `tasks` tracks; see
    /// [`super::Database::writer`].
    pub fn writer<B: Batch<Conn = PgConnection>>(
        &self,
        batch: B,
        tasks: &tokio_util::task::TaskTracker,
        telemetry: &Telemetry,
    ) -> Writer<B::Request, B::Reply> {
        let commit = OnPostgres {
            pool: self.pool.clone(),
            batch,
        };
        writer::start(
            commit,
            Placement::Task,
            self.health.clone(),
            tasks,
            telemetry,
        )
    }

    /// How long one round trip to the database takes now, or why it failed; at most `within`.
    pub async fn ping(&self, within: Duration) -> Result<Duration, StorageFault> {
        let started = Instant::now();
        let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.pool);
        match tokio::time::timeout(within, ping).await {
            Ok(Ok(_)) => Ok(started.elapsed()),
            Ok(Err(error)) => Err(StorageFault::of(&error)),
            Err(_) => Err(StorageFault::Unreachable),
        }
    }

    /// Closes every connection; writes after this fail with [`StorageFault::Stopped`].
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// `warden migrate --database …`: applies the pending Postgres migrations and closes.
pub async fn migrate_only(settings: &PgSettings) -> Result<(), PgOpenError> {
    let pool = connect(settings).await?;
    let migrated = migrate(&pool).await;
    pool.close().await;
    migrated
}

async fn connect(settings: &PgSettings) -> Result<PgPool, PgOpenError> {
    let mut options = PgConnectOptions::from_str(&settings.url).map_err(|_| PgOpenError::Url)?;
    if let Some(mode) = settings.ssl_mode {
        options = options.ssl_mode(mode);
    }
    if let Some(ca) = &settings.ssl_root_cert {
        options = options.ssl_root_cert(ca);
    }
    let timeout_ms = settings.statement_timeout.as_millis().max(1).to_string();
    let options = options
        .application_name("warden")
        .options([("statement_timeout", timeout_ms.as_str())]);
    PgPoolOptions::new()
        .max_connections(settings.pool_size.max(1))
        // A connection is checked by use: a ping on every acquire is one more round trip on
        // every commit, and a dead one fails its statement, which the caller sees as a 503.
        .test_before_acquire(false)
        .acquire_timeout(settings.statement_timeout.max(Duration::from_secs(1)))
        .connect_with(options)
        .await
        .map_err(PgOpenError::Connect)
}

async fn migrate(pool: &PgPool) -> Result<(), PgOpenError> {
    MIGRATOR.run(pool).await.map_err(|error| match error {
        MigrateError::VersionMissing(version) => PgOpenError::Newer(version),
        other => PgOpenError::Migrate(other),
    })
}

/// A [`Batch`] on a pooled Postgres connection.
struct OnPostgres<B> {
    pool: PgPool,
    batch: B,
}

impl<B: Batch<Conn = PgConnection>> Commit for OnPostgres<B> {
    const PATH: &'static str = B::PATH;
    type Request = B::Request;
    type Reply = B::Reply;

    async fn commit(&self, requests: &[B::Request]) -> Result<Vec<B::Reply>, StorageFault> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|error| failed::<Self>(&error, requests.len()))?;
        match self.batch.write(&mut conn, requests).await {
            Ok(replies) => Ok(replies),
            Err(error) => {
                // Whatever state a failure left it in, the connection is not used again.
                conn.close_on_drop();
                Err(failed::<Self>(&error, requests.len()))
            }
        }
    }

    fn wrote(replies: &[B::Reply]) -> bool {
        B::wrote(replies)
    }
}
