//! The registry's SQL on SQLite: heartbeats in group commits, reads that apply liveness (by
//! the node's clock), the listings' pages, the purge.

use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection as _, SqlitePool};

use super::{
    Heartbeat, InstanceRow, Page, PurgeCursor, Registered, answer_round, collect_replies, rounds,
};
use crate::clock::Clock;
use crate::db::Batch;
use crate::registry::Liveness;

/// The batch that records heartbeats: one upsert statement for the whole batch.
#[derive(Debug)]
pub struct RecordHeartbeats {
    pub clock: Clock,
    pub liveness: Liveness,
}

impl Batch for RecordHeartbeats {
    const PATH: &'static str = "heartbeats";
    type Conn = SqliteConnection;
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
        collect_replies(replies)
    }
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
    answer_round(requests, round, rows, replies)
}

/// The live instance `group`/`id`.
pub async fn find(
    reads: &SqlitePool,
    group: &str,
    id: &str,
    live_after: i64,
) -> Result<Option<InstanceRow>, sqlx::Error> {
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
    .await
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

/// Up to `limit` live instances of `group` with an id after `after`, by id.
///
/// First the page's end: the `limit`-th live id after `after`, from a walk of the primary
/// key that leaves meta unread. Then one walk of the key range up to that end (or to the
/// group's last id, if fewer are left) builds the page, like the whole listing was built
/// before it was paged: a `LIMIT` on a subquery would pass every row through a co-routine
/// and cost a page of a small group a fifth more. Expired instances are filtered before the
/// count, so they never cut a page short.
pub async fn instances_page(
    reads: &SqlitePool,
    group: &str,
    after: &str,
    live_after: i64,
    limit: i64,
) -> Result<Page, sqlx::Error> {
    sqlx::query_as!(
        Page,
        r#"WITH page_end AS MATERIALIZED (
               SELECT (SELECT id FROM instances
                       WHERE group_name = ?1 AND id > ?2 AND updated_at_ms > ?3
                       ORDER BY id
                       LIMIT 1 OFFSET ?4 - 1) AS id
           )
           SELECT (SELECT json_group_array(
                              json_object('id', id, 'group', group_name,
                                          'createdAt', created_at_ms,
                                          'updatedAt', updated_at_ms, 'meta', json(meta))
                              ORDER BY id
                          )
                   FROM instances
                   WHERE group_name = ?1 AND id > ?2 AND updated_at_ms > ?3
                     AND id <= coalesce(page_end.id,
                                        (SELECT max(id) FROM instances WHERE group_name = ?1))
                  ) AS "json!: String",
                  page_end.id AS "last: String",
                  page_end.id IS NOT NULL
                  AND EXISTS (SELECT 1 FROM instances
                              WHERE group_name = ?1 AND id > page_end.id
                                AND updated_at_ms > ?3) AS "more!: bool"
           FROM page_end"#,
        group,
        after,
        live_after,
        limit
    )
    .fetch_one(reads)
    .await
}

/// Up to `limit` groups named after `after` that have a live instance, by name, each with
/// its count of live instances, the earliest `createdAt` and the latest heartbeat among them.
///
/// A walk of the primary key from `after`, already grouped; only live instances are
/// aggregated, so a group with none is neither listed nor counted against the limit.
pub async fn groups_page(
    reads: &SqlitePool,
    after: &str,
    live_after: i64,
    limit: i64,
) -> Result<Page, sqlx::Error> {
    sqlx::query_as!(
        Page,
        r#"SELECT json AS "json!: String",
                  last AS "last: String",
                  EXISTS (SELECT 1 FROM instances WHERE group_name > last AND updated_at_ms > ?2)
                      AS "more!: bool"
           FROM (
               SELECT json_group_array(
                          json_object('group', group_name, 'instances', instances,
                                      'createdAt', created_at_ms,
                                      'lastUpdatedAt', last_updated_at_ms)
                          ORDER BY group_name
                      ) AS json,
                      max(group_name) AS last
               FROM (
                   SELECT group_name,
                          count(*) AS instances,
                          min(created_at_ms) AS created_at_ms,
                          max(updated_at_ms) AS last_updated_at_ms
                   FROM instances
                   WHERE group_name > ?1 AND updated_at_ms > ?2
                   GROUP BY group_name
                   ORDER BY group_name
                   LIMIT ?3
               )
           )"#,
        after,
        live_after,
        limit
    )
    .fetch_one(reads)
    .await
}
