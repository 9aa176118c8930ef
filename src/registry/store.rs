//! The registry's SQL: heartbeats in group commits, reads that apply liveness, the purge.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection as _, SqlitePool};

use super::Liveness;
use crate::clock::Clock;
use crate::db::Batch;

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

/// The batch that records heartbeats: one upsert statement for the whole batch.
#[derive(Debug)]
pub struct RecordHeartbeats {
    pub clock: Clock,
    pub liveness: Liveness,
}

impl Batch for RecordHeartbeats {
    const PATH: &'static str = "heartbeats";
    type Request = Heartbeat;
    type Reply = Registered;

    async fn write(
        &self,
        conn: &mut SqliteConnection,
        requests: &[Heartbeat],
    ) -> Result<Vec<Registered>, sqlx::Error> {
        let now = self.clock.now_ms();
        let live_after = self.liveness.live_after(now);
        let rounds = rounds(requests);
        let mut replies: Vec<Option<Registered>> = requests.iter().map(|_| None).collect();
        if let [round] = rounds.as_slice() {
            upsert(conn, requests, round, now, live_after, &mut replies).await?;
        } else {
            // The same instance twice in one batch: one statement per occurrence, so each
            // sees the one before it, all in one transaction.
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            for round in &rounds {
                upsert(&mut tx, requests, round, now, live_after, &mut replies).await?;
            }
            tx.commit().await?;
        }
        replies
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| sqlx::Error::Protocol("a heartbeat got no row back".into()))
    }
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

/// Upserts the heartbeats at `round` (distinct instances) with one statement.
///
/// Everything is decided in the SELECT, against the instance as it is while still live: a
/// live instance keeps `created_at_ms` (and its meta when none is sent) and its
/// `updated_at_ms` moves to `max(now, previous + 1)`; an unknown or expired one starts over
/// with `created_at_ms = updated_at_ms = now`, which is how the reply tells a new
/// registration (equal) from a refresh (strictly later).
async fn upsert(
    conn: &mut SqliteConnection,
    requests: &[Heartbeat],
    round: &[usize],
    now: i64,
    live_after: i64,
    replies: &mut [Option<Registered>],
) -> Result<(), sqlx::Error> {
    let beats: Vec<(&str, &str, Option<&str>)> = round
        .iter()
        .map(|&index| {
            let beat = &requests[index];
            (beat.group.as_str(), beat.id.as_str(), beat.meta.as_deref())
        })
        .collect();
    let beats =
        serde_json::to_string(&beats).map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
    let rows = sqlx::query_as!(
        InstanceRow,
        r#"INSERT INTO instances (group_name, id, created_at_ms, updated_at_ms, meta)
           SELECT beat.value ->> 0,
                  beat.value ->> 1,
                  coalesce(live.created_at_ms, ?2),
                  max(?2, coalesce(live.updated_at_ms + 1, ?2)),
                  coalesce(beat.value ->> 2, live.meta, '{}')
           FROM json_each(?1) AS beat
           LEFT JOIN instances AS live
             ON live.group_name = beat.value ->> 0
            AND live.id = beat.value ->> 1
            AND live.updated_at_ms > ?3
           WHERE true
           ORDER BY beat.key
           ON CONFLICT (group_name, id) DO UPDATE SET
               created_at_ms = excluded.created_at_ms,
               updated_at_ms = excluded.updated_at_ms,
               meta = excluded.meta
           RETURNING group_name, id, created_at_ms, updated_at_ms, meta"#,
        beats,
        now,
        live_after
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut by_key: HashMap<(String, String), usize> = round
        .iter()
        .map(|&index| {
            (
                (requests[index].group.clone(), requests[index].id.clone()),
                index,
            )
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

/// The live instance `group`/`id`.
pub async fn find(
    reads: &SqlitePool,
    group: &str,
    id: &str,
    live_after: i64,
) -> Result<Option<Instance>, sqlx::Error> {
    sqlx::query_as!(
        InstanceRow,
        "SELECT group_name, id, created_at_ms, updated_at_ms, meta
         FROM instances
         WHERE group_name = ?1 AND id = ?2 AND updated_at_ms > ?3",
        group,
        id,
        live_after
    )
    .fetch_optional(reads)
    .await?
    .map(Instance::try_from)
    .transpose()
}

/// Deletes `group`/`id` whether live or expired; returns its last heartbeat if it existed.
pub async fn delete(
    conn: &mut SqliteConnection,
    group: &str,
    id: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        "DELETE FROM instances WHERE group_name = ?1 AND id = ?2 RETURNING updated_at_ms",
        group,
        id
    )
    .fetch_optional(&mut *conn)
    .await
}

/// Where a purge pass has got to: the last key it examined (exclusive start of the next).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeCursor {
    pub group: String,
    pub id: String,
}

/// One bounded step of a purge pass: examines up to `chunk` instances after `cursor` in key
/// order, deletes those whose last heartbeat is at or before `live_after`, and returns how
/// many it deleted and where the next step starts (`None` when the pass is complete).
pub async fn purge_step(
    conn: &mut SqliteConnection,
    cursor: &PurgeCursor,
    live_after: i64,
    chunk: i64,
) -> Result<(u64, Option<PurgeCursor>), sqlx::Error> {
    let offset = chunk - 1;
    let end = sqlx::query_as!(
        PurgeCursor,
        r#"SELECT group_name AS "group!: String", id AS "id!: String"
           FROM instances
           WHERE (group_name, id) > (?1, ?2)
           ORDER BY group_name, id
           LIMIT 1 OFFSET ?3"#,
        cursor.group,
        cursor.id,
        offset
    )
    .fetch_optional(&mut *conn)
    .await?;
    let deleted = match &end {
        Some(end) => sqlx::query!(
            "DELETE FROM instances
             WHERE (group_name, id) > (?1, ?2) AND (group_name, id) <= (?3, ?4)
               AND updated_at_ms <= ?5",
            cursor.group,
            cursor.id,
            end.group,
            end.id,
            live_after
        )
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        None => sqlx::query!(
            "DELETE FROM instances WHERE (group_name, id) > (?1, ?2) AND updated_at_ms <= ?3",
            cursor.group,
            cursor.id,
            live_after
        )
        .execute(&mut *conn)
        .await?
        .rows_affected(),
    };
    Ok((deleted, end))
}

/// Records that the registry is running at `now_ms`.
pub async fn record_alive(conn: &mut SqliteConnection, now_ms: i64) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO registry_alive (id, alive_at_ms) VALUES (1, ?1)
         ON CONFLICT (id) DO UPDATE SET alive_at_ms = max(alive_at_ms, excluded.alive_at_ms)",
        now_ms
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// How many instances are live: a heartbeat later than `live_after`. A walk of the whole
/// table (there is no index on the heartbeat time, on purpose: see the migration), so for a
/// scrape, not for a request.
pub async fn count_live(reads: &SqlitePool, live_after: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT COUNT(*) AS "live!: i64" FROM instances WHERE updated_at_ms > ?1"#,
        live_after
    )
    .fetch_one(reads)
    .await
}

/// When the registry was last known to be running, if ever.
pub async fn last_alive(reads: &SqlitePool) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar!("SELECT alive_at_ms FROM registry_alive WHERE id = 1")
        .fetch_optional(reads)
        .await
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
