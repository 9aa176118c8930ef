//! Where the registry keeps its instances: the node's SQLite file (`sqlite.rs`), or the
//! Postgres that many nodes share (`postgres.rs`). [`RegistryStore`] is the one interface the
//! handlers, the listings and the purge use; the two answer alike, which the conformance
//! suite checks.
//!
//! One difference is by design: on SQLite liveness is the node's clock and the start-up grace
//! the node's own ([`Liveness`]); on Postgres both are the database's, shared by every node.

mod postgres;
mod sqlite;

use std::collections::HashMap;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio_util::task::TaskTracker;

use super::Liveness;
use crate::clock::Clock;
use crate::db::{Database, SharedDatabase, Writer};
use crate::error::StorageFault;
use crate::telemetry::Telemetry;

/// A heartbeat to record: `meta` is the client's meta as JSON object text, or `None` to keep
/// the meta the instance has (or `{}` for a new one).
#[derive(Debug)]
pub struct Heartbeat {
    pub group: String,
    pub id: String,
    pub meta: Option<String>,
}

/// An instance as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// Its id in its group.
    pub id: String,
    /// Its group.
    pub group: String,
    /// When it registered (ms since the Unix epoch); it stays while the instance lives.
    pub created_at: i64,
    /// Its last heartbeat (ms since the Unix epoch); it strictly increases with each.
    pub updated_at: i64,
    /// What its heartbeats carry.
    #[schema(value_type = Object)]
    pub meta: Box<RawValue>,
}

/// What a heartbeat did: the instance after it, and whether it registered a new instance.
#[derive(Debug)]
pub struct Registered {
    pub instance: Instance,
    pub created: bool,
}

/// An instance as both engines read it.
#[derive(sqlx::FromRow)]
struct InstanceRow {
    group_name: String,
    id: String,
    created_at_ms: i64,
    updated_at_ms: i64,
    meta: String,
}

impl TryFrom<InstanceRow> for Instance {
    type Error = sqlx::Error;

    fn try_from(row: InstanceRow) -> Result<Self, Self::Error> {
        Ok(Self {
            meta: RawValue::from_string(row.meta)
                .map_err(|error| sqlx::Error::Decode(Box::new(error)))?,
            id: row.id,
            group: row.group_name,
            created_at: row.created_at_ms,
            updated_at: row.updated_at_ms,
        })
    }
}

/// Where a purge pass has got to: the last key it examined (exclusive start of the next).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeCursor {
    pub group: String,
    pub id: String,
}

/// One page of a listing, as the database built it: its items as a JSON array (`[]` when
/// there are none); whether anything followed it when it was read; and if so, in `last`, the
/// key of its last item, after which the next page starts.
///
/// The database builds the JSON: one row per page crosses from it instead of one per item.
/// Knowing `more` up front lets a listing of one page go out whole, and the last page carry
/// the array's end.
#[derive(Debug, sqlx::FromRow)]
pub struct Page {
    pub json: String,
    pub last: Option<String>,
    pub more: bool,
}

impl Page {
    /// Whether the page has no item.
    pub fn is_empty(&self) -> bool {
        self.json == "[]"
    }
}

/// The registry's storage.
#[derive(Clone, Debug)]
pub enum RegistryStore {
    /// The node's own SQLite file; liveness by the node's clock and grace.
    Sqlite {
        db: Database,
        clock: Clock,
        liveness: Liveness,
    },
    /// The Postgres many nodes share; liveness by the database's clock and grace.
    Postgres { db: SharedDatabase, ttl_ms: i64 },
}

impl RegistryStore {
    /// The store on SQLite: reads when the registry was last alive, for the grace.
    pub async fn on_sqlite(db: &Database, clock: &Clock, ttl_ms: i64) -> Result<Self, sqlx::Error> {
        let liveness = Liveness {
            ttl_ms,
            started_ms: clock.now_ms(),
            previous_alive_ms: sqlite::last_alive(&db.reads).await?,
        };
        Ok(Self::Sqlite {
            db: db.clone(),
            clock: clock.clone(),
            liveness,
        })
    }

    /// The store on Postgres: joins the registry, which starts its grace if no node was alive.
    pub async fn on_postgres(db: &SharedDatabase, ttl_ms: i64) -> Result<Self, sqlx::Error> {
        postgres::join(&db.pool, ttl_ms).await?;
        Ok(Self::Postgres {
            db: db.clone(),
            ttl_ms,
        })
    }

    /// Starts the writer that records heartbeats.
    pub fn writer(
        &self,
        tasks: &TaskTracker,
        telemetry: &Telemetry,
    ) -> Writer<Heartbeat, Registered> {
        match self {
            Self::Sqlite {
                db,
                clock,
                liveness,
            } => db.writer(
                sqlite::RecordHeartbeats {
                    clock: clock.clone(),
                    liveness: *liveness,
                },
                tasks,
                telemetry,
            ),
            Self::Postgres { db, ttl_ms } => db.writer(
                postgres::RecordHeartbeats { ttl_ms: *ttl_ms },
                tasks,
                telemetry,
            ),
        }
    }

    /// The liveness cutoff now: an instance is live iff its last heartbeat is later.
    pub async fn live_after(&self) -> Result<i64, sqlx::Error> {
        match self {
            Self::Sqlite {
                clock, liveness, ..
            } => Ok(liveness.live_after(clock.now_ms())),
            Self::Postgres { db, ttl_ms } => postgres::live_after(&db.pool, *ttl_ms).await,
        }
    }

    /// The live instance `group`/`id`.
    pub async fn find(&self, group: &str, id: &str) -> Result<Option<Instance>, sqlx::Error> {
        let row = match self {
            Self::Sqlite { db, .. } => {
                let live_after = self.live_after().await?;
                sqlite::find(&db.reads, group, id, live_after).await?
            }
            Self::Postgres { db, ttl_ms } => postgres::find(&db.pool, group, id, *ttl_ms).await?,
        };
        row.map(Instance::try_from).transpose()
    }

    /// Deletes `group`/`id` whether live or expired; returns whether it was live.
    pub async fn delete(&self, group: &str, id: &str) -> Result<bool, crate::error::Error> {
        match self {
            Self::Sqlite { db, .. } => {
                let updated_at = {
                    let mut conn = db.write_connection().await?;
                    sqlite::delete(&mut conn, group, id).await?
                };
                let live_after = self.live_after().await?;
                Ok(updated_at.is_some_and(|updated_at| updated_at > live_after))
            }
            Self::Postgres { db, ttl_ms } => {
                let live = postgres::delete(&db.pool, group, id, *ttl_ms).await?;
                Ok(live == Some(true))
            }
        }
    }

    /// Up to `limit` instances of `group` live at `live_after`, with an id after `after`.
    pub async fn instances_page(
        &self,
        group: &str,
        after: &str,
        live_after: i64,
        limit: i64,
    ) -> Result<Page, sqlx::Error> {
        match self {
            Self::Sqlite { db, .. } => {
                sqlite::instances_page(&db.reads, group, after, live_after, limit).await
            }
            Self::Postgres { db, .. } => {
                postgres::instances_page(&db.pool, group, after, live_after, limit).await
            }
        }
    }

    /// Up to `limit` groups named after `after` with an instance live at `live_after`.
    pub async fn groups_page(
        &self,
        after: &str,
        live_after: i64,
        limit: i64,
    ) -> Result<Page, sqlx::Error> {
        match self {
            Self::Sqlite { db, .. } => {
                sqlite::groups_page(&db.reads, after, live_after, limit).await
            }
            Self::Postgres { db, .. } => {
                postgres::groups_page(&db.pool, after, live_after, limit).await
            }
        }
    }

    /// One bounded step of a purge pass; see `sqlite::purge_step` and `postgres::purge_step`.
    pub async fn purge_step(
        &self,
        cursor: &PurgeCursor,
        live_after: i64,
        chunk: i64,
    ) -> Result<(u64, Option<PurgeCursor>), StorageFault> {
        let step = match self {
            Self::Sqlite { db, .. } => {
                let mut conn = db.write_connection().await?;
                sqlite::purge_step(&mut conn, cursor, live_after, chunk).await
            }
            Self::Postgres { db, .. } => {
                postgres::purge_step(&db.pool, cursor, live_after, chunk).await
            }
        };
        step.map_err(|error| logged(&error))
    }

    /// Records that the registry is running now, for the start-up grace after an outage.
    pub async fn record_alive(&self) -> Result<(), StorageFault> {
        let recorded = match self {
            Self::Sqlite { db, clock, .. } => {
                let mut conn = db.write_connection().await?;
                sqlite::record_alive(&mut conn, clock.now_ms()).await
            }
            Self::Postgres { db, .. } => postgres::record_alive(&db.pool).await,
        };
        recorded.map_err(|error| logged(&error))
    }

    /// How many instances are live now; a walk of the whole table, for a scrape.
    pub async fn count_live(&self) -> Result<i64, sqlx::Error> {
        match self {
            Self::Sqlite { db, .. } => {
                sqlite::count_live(&db.reads, self.live_after().await?).await
            }
            Self::Postgres { db, ttl_ms } => postgres::count_live(&db.pool, *ttl_ms).await,
        }
    }

    /// Whether the store's connections are closed (the end of a drain).
    pub fn is_closed(&self) -> bool {
        match self {
            Self::Sqlite { db, .. } => db.reads.is_closed(),
            Self::Postgres { db, .. } => db.pool.is_closed(),
        }
    }
}

fn logged(error: &sqlx::Error) -> StorageFault {
    tracing::error!(%error, "registry purge: database error");
    StorageFault::of(error)
}

/// Splits a batch into rounds in which each instance appears at most once, keeping order.
fn rounds(requests: &[Heartbeat]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<(&str, &str), usize> = HashMap::with_capacity(requests.len());
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (index, beat) in requests.iter().enumerate() {
        let occurrence = seen.entry((&beat.group, &beat.id)).or_insert(0);
        if *occurrence == rounds.len() {
            rounds.push(Vec::new());
        }
        rounds[*occurrence].push(index);
        *occurrence += 1;
    }
    rounds
}

/// Gives each heartbeat of `round` the row its upsert returned for its instance.
fn answer_round(
    requests: &[Heartbeat],
    round: &[usize],
    rows: Vec<InstanceRow>,
    replies: &mut [Option<Registered>],
) -> Result<(), sqlx::Error> {
    let mut by_key: HashMap<(String, String), usize> = round
        .iter()
        .map(|&index| {
            let beat = &requests[index];
            ((beat.group.clone(), beat.id.clone()), index)
        })
        .collect();
    for mut row in rows {
        let key = (
            std::mem::take(&mut row.group_name),
            std::mem::take(&mut row.id),
        );
        let Some(index) = by_key.remove(&key) else {
            return Err(sqlx::Error::Protocol(
                "the upsert returned an instance nobody sent".into(),
            ));
        };
        (row.group_name, row.id) = key;
        let created = row.created_at_ms == row.updated_at_ms;
        replies[index] = Some(Registered {
            instance: row.try_into()?,
            created,
        });
    }
    Ok(())
}

/// Every heartbeat's reply, or an error if one got none.
fn collect_replies(replies: Vec<Option<Registered>>) -> Result<Vec<Registered>, sqlx::Error> {
    replies
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| sqlx::Error::Protocol("a heartbeat got no row back".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(group: &str, id: &str) -> Heartbeat {
        Heartbeat {
            group: group.into(),
            id: id.into(),
            meta: None,
        }
    }

    #[test]
    fn a_batch_splits_into_rounds_of_distinct_instances_in_order() {
        let batch = [
            beat("g", "a"),
            beat("g", "b"),
            beat("g", "a"),
            beat("h", "a"),
            beat("g", "a"),
        ];
        assert_eq!(rounds(&batch), vec![vec![0, 1, 3], vec![2], vec![4]]);
        assert_eq!(rounds(&batch[..2]), vec![vec![0, 1]]);
    }
}
