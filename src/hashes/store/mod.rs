//! Where the hash service keeps its hashes: the node's SQLite file (`sqlite.rs`), or the
//! Postgres that many nodes share (`postgres.rs`). [`HashStore`] is the one interface the
//! handlers and the purge use; the two answer alike, which the conformance suite checks.
//!
//! One difference is by design: on Postgres every time is the database's clock, so nodes
//! whose clocks disagree still agree on when a hash is ready. On SQLite it is the node's.

mod postgres;
mod sqlite;

use std::time::{Duration, Instant};

use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::db::{Database, SharedDatabase, Writer};
use crate::error::StorageFault;
use crate::telemetry::Telemetry;

/// A hash to record: computed from the password on arrival, so no plaintext reaches the writer.
/// Its times are the store's to give, when the hash is written.
#[derive(Debug)]
pub struct NewHash {
    /// base64 SHA-512 of the password.
    pub sha512: String,
    /// When the `POST /hash` request arrived, for its handling time.
    pub arrived: Instant,
}

impl NewHash {
    /// The request's handling time as the row is written: the commit that follows is what
    /// makes this very figure durable, so it cannot be part of it.
    fn handling_ns(&self) -> i64 {
        i64::try_from(self.arrived.elapsed().as_nanos()).unwrap_or(i64::MAX)
    }
}

/// A recorded hash as `GET /hash/{id}` needs it.
#[derive(Debug)]
pub struct StoredHash {
    pub sha512: String,
    pub received_at_ms: i64,
    pub ready_at_ms: i64,
    /// When it was read, by the store's clock: what its other times compare with.
    pub read_at_ms: i64,
}

/// Accepted requests since the database was created, and their summed handling time.
#[derive(Debug, PartialEq, Eq)]
pub struct Totals {
    pub total: i64,
    pub handling_ns: i64,
}

/// The hash service's storage.
#[derive(Clone, Debug)]
pub enum HashStore {
    /// The node's own SQLite file; times by the node's clock.
    Sqlite { db: Database, clock: Clock },
    /// The Postgres many nodes share; times by the database's clock.
    Postgres { db: SharedDatabase },
}

impl HashStore {
    /// Starts the writer that records hashes readable `delay` after they are written.
    pub fn writer(
        &self,
        delay: Duration,
        tasks: &TaskTracker,
        telemetry: &Telemetry,
    ) -> Writer<NewHash, i64> {
        match self {
            Self::Sqlite { db, clock } => db.writer(
                sqlite::RecordHashes {
                    clock: clock.clone(),
                    delay,
                },
                tasks,
                telemetry,
            ),
            Self::Postgres { db } => {
                db.writer(postgres::RecordHashes::new(delay), tasks, telemetry)
            }
        }
    }

    /// The hash with `id`, ready or not.
    pub async fn find(&self, id: i64) -> Result<Option<StoredHash>, sqlx::Error> {
        match self {
            Self::Sqlite { db, clock } => sqlite::find(&db.reads, id, clock.now_ms()).await,
            Self::Postgres { db } => postgres::find(&db.pool, id).await,
        }
    }

    /// Every accepted `POST /hash` and their summed handling time.
    pub async fn totals(&self) -> Result<Totals, sqlx::Error> {
        match self {
            Self::Sqlite { db, .. } => sqlite::totals(&db.reads).await,
            Self::Postgres { db } => postgres::totals(&db.pool).await,
        }
    }

    /// One step of the purge: deletes up to `chunk` of the oldest hashes received more than
    /// `retention` ago; returns how many it deleted. Fewer than `chunk` means none is left.
    pub async fn purge_step(&self, retention: Duration, chunk: i64) -> Result<u64, StorageFault> {
        let deleted = match self {
            Self::Sqlite { db, clock } => {
                let received_before = received_before_ms(retention, clock.now_ms());
                let mut conn = db.write_connection().await?;
                sqlite::purge_step(&mut conn, received_before, chunk).await
            }
            Self::Postgres { db } => postgres::purge_step(&db.pool, retention, chunk).await,
        };
        deleted.map_err(|error| {
            tracing::error!(%error, "hash purge: database error");
            StorageFault::of(&error)
        })
    }
}

/// Hashes received before this instant are past `retention` at `now_ms`.
pub fn received_before_ms(retention: Duration, now_ms: i64) -> i64 {
    now_ms.saturating_sub(crate::clock::millis(retention))
}
