//! The registry's SQL on Postgres, shared by many nodes: heartbeats in group commits, reads
//! that apply liveness by the database's clock, the listings' pages, the purge and the
//! registry-wide start-up grace.
//!
//! Liveness is `registry_live_after(warden_now_ms(), ttl)` (see the migration), evaluated in
//! the database, so nodes with skewed clocks agree on who is live. Each statement that locks
//! instances locks them in key order, so two nodes' batches never deadlock.

use sqlx::PgPool;
use sqlx::postgres::PgConnection;

use super::{Heartbeat, InstanceRow, Page, PurgeCursor, Registered, answer_round, rounds};
use crate::db::Batch;

/// The batch that records heartbeats: one upsert statement for the whole batch.
#[derive(Debug)]
pub struct RecordHeartbeats {
    pub ttl_ms: i64,
}

impl Batch for RecordHeartbeats {
    const PATH: &'static str = "heartbeats";
    type Conn = PgConnection;
    type Request = Heartbeat;
    type Reply = Registered;

    async fn write(
        &self,
        conn: &mut PgConnection,
        requests: &[Heartbeat],
    ) -> Result<Vec<Registered>, sqlx::Error> {
        let rounds = rounds(requests);
        let mut replies: Vec<Option<Registered>> = requests.iter().map(|_| None).collect();
        if let [round] = rounds.as_slice() {
            upsert(conn, requests, round, self.ttl_ms, &mut replies).await?;
        } else {
            // The same instance twice in one batch: one statement per occurrence, so each
            // sees the one before it, all in one transaction. A later round's instances are
            // all locked by the first, so the rounds add no lock to wait for.
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            for round in &rounds {
                upsert(&mut tx, requests, round, self.ttl_ms, &mut replies).await?;
            }
            tx.commit().await?;
        }
        super::collect_replies(replies)
    }
}

/// Upserts the heartbeats at `round` (distinct instances) with one statement.
///
/// Decided in `DO UPDATE` against the row as it is once locked, so two nodes refreshing one
/// instance at once still move `updated_at_ms` strictly forward: a live instance keeps
/// `created_at_ms` (and its meta when none is sent), and `updated_at_ms` becomes
/// `max(now, previous + 1)`; an unknown or expired one starts over with both at `now`.
async fn upsert(
    conn: &mut PgConnection,
    requests: &[Heartbeat],
    round: &[usize],
    ttl_ms: i64,
    replies: &mut [Option<Registered>],
) -> Result<(), sqlx::Error> {
    let beats = round.iter().map(|&index| &requests[index]);
    let groups: Vec<&str> = beats.clone().map(|beat| beat.group.as_str()).collect();
    let ids: Vec<&str> = beats.clone().map(|beat| beat.id.as_str()).collect();
    let metas: Vec<Option<&str>> = beats.map(|beat| beat.meta.as_deref()).collect();
    let rows: Vec<InstanceRow> = sqlx::query_as(
        r#"WITH clock AS MATERIALIZED (
               SELECT now_ms, registry_live_after(now_ms, $4) AS live_after
               FROM (SELECT warden_now_ms() AS now_ms) AS now
           )
           INSERT INTO instances AS live (group_name, id, created_at_ms, updated_at_ms, meta)
           SELECT beat.group_name, beat.id, clock.now_ms, clock.now_ms, beat.meta
           FROM unnest($1::text[], $2::text[], $3::text[]) AS beat (group_name, id, meta),
                clock
           ORDER BY beat.group_name COLLATE "C", beat.id COLLATE "C"
           ON CONFLICT (group_name, id) DO UPDATE SET
               created_at_ms = CASE WHEN live.updated_at_ms > (SELECT live_after FROM clock)
                                    THEN live.created_at_ms
                                    ELSE excluded.created_at_ms END,
               updated_at_ms = CASE WHEN live.updated_at_ms > (SELECT live_after FROM clock)
                                    THEN greatest(excluded.updated_at_ms, live.updated_at_ms + 1)
                                    ELSE excluded.updated_at_ms END,
               meta = CASE WHEN live.updated_at_ms > (SELECT live_after FROM clock)
                           THEN coalesce(excluded.meta, live.meta)
                           ELSE excluded.meta END
           RETURNING group_name, id, created_at_ms, updated_at_ms,
                     coalesce(meta, '{}') AS meta"#,
    )
    .bind(&groups)
    .bind(&ids)
    .bind(&metas)
    .bind(ttl_ms)
    .fetch_all(&mut *conn)
    .await?;
    answer_round(requests, round, rows, replies)
}

/// The liveness cutoff now: an instance is live iff its last heartbeat is later.
pub async fn live_after(pool: &PgPool, ttl_ms: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT registry_live_after(warden_now_ms(), $1)")
        .bind(ttl_ms)
        .fetch_one(pool)
        .await
}

/// The live instance `group`/`id`.
pub async fn find(
    pool: &PgPool,
    group: &str,
    id: &str,
    ttl_ms: i64,
) -> Result<Option<InstanceRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT group_name, id, created_at_ms, updated_at_ms, coalesce(meta, '{}') AS meta
         FROM instances
         WHERE group_name = $1 AND id = $2
           AND updated_at_ms > (SELECT registry_live_after(warden_now_ms(), $3))",
    )
    .bind(group)
    .bind(id)
    .bind(ttl_ms)
    .fetch_optional(pool)
    .await
}

/// Deletes `group`/`id` whether live or expired; returns whether it existed, and if so
/// whether it was live.
pub async fn delete(
    pool: &PgPool,
    group: &str,
    id: &str,
    ttl_ms: i64,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar(
        "DELETE FROM instances WHERE group_name = $1 AND id = $2
         RETURNING updated_at_ms > (SELECT registry_live_after(warden_now_ms(), $3))",
    )
    .bind(group)
    .bind(id)
    .bind(ttl_ms)
    .fetch_optional(pool)
    .await
}

/// Up to `limit` live instances of `group` with an id after `after`, by id: one walk of the
/// primary key that reads one instance past the page, to know whether more follow.
pub async fn instances_page(
    pool: &PgPool,
    group: &str,
    after: &str,
    live_after: i64,
    limit: i64,
) -> Result<Page, sqlx::Error> {
    sqlx::query_as(
        r#"WITH page AS (
               SELECT id, group_name, created_at_ms, updated_at_ms, meta,
                      row_number() OVER (ORDER BY id) AS n
               FROM (SELECT * FROM instances
                     WHERE group_name = $1 AND id > $2 AND updated_at_ms > $3
                     ORDER BY id
                     LIMIT $4 + 1) AS next
           )
           SELECT coalesce(json_agg(json_build_object(
                                'id', id, 'group', group_name,
                                'createdAt', created_at_ms, 'updatedAt', updated_at_ms,
                                'meta', coalesce(meta, '{}')::json)
                            ORDER BY id) FILTER (WHERE n <= $4),
                           '[]')::text AS json,
                  max(id) FILTER (WHERE n <= $4) AS last,
                  count(*) > $4 AS more
           FROM page"#,
    )
    .bind(group)
    .bind(after)
    .bind(live_after)
    .bind(limit)
    .fetch_one(pool)
    .await
}

/// Up to `limit` groups named after `after` that have a live instance, by name, each with its
/// count of live instances, the earliest `createdAt` and the latest heartbeat among them.
pub async fn groups_page(
    pool: &PgPool,
    after: &str,
    live_after: i64,
    limit: i64,
) -> Result<Page, sqlx::Error> {
    sqlx::query_as(
        r#"WITH page AS (
               SELECT *, row_number() OVER (ORDER BY group_name) AS n
               FROM (SELECT group_name,
                            count(*) AS instances,
                            min(created_at_ms) AS created_at_ms,
                            max(updated_at_ms) AS last_updated_at_ms
                     FROM instances
                     WHERE group_name > $1 AND updated_at_ms > $2
                     GROUP BY group_name
                     ORDER BY group_name
                     LIMIT $3 + 1) AS next
           )
           SELECT coalesce(json_agg(json_build_object(
                                'group', group_name, 'instances', instances,
                                'createdAt', created_at_ms,
                                'lastUpdatedAt', last_updated_at_ms)
                            ORDER BY group_name) FILTER (WHERE n <= $3),
                           '[]')::text AS json,
                  max(group_name) FILTER (WHERE n <= $3) AS last,
                  count(*) > $3 AS more
           FROM page"#,
    )
    .bind(after)
    .bind(live_after)
    .bind(limit)
    .fetch_one(pool)
    .await
}

/// One bounded step of a purge pass: examines up to `chunk` instances after `cursor` in key
/// order and deletes those whose last heartbeat is at or before `live_after`; returns how many
/// it deleted and where the next step starts (`None` when the pass is complete).
///
/// Nodes may purge at once: a row another node deletes first is skipped, and one a heartbeat
/// refreshes meanwhile is checked again once it is committed, so each expired row is deleted
/// once and a live one never.
pub async fn purge_step(
    pool: &PgPool,
    cursor: &PurgeCursor,
    live_after: i64,
    chunk: i64,
) -> Result<(u64, Option<PurgeCursor>), sqlx::Error> {
    let (deleted, examined, last_group, last_id): (i64, i64, Option<String>, Option<String>) =
        sqlx::query_as(
            "WITH chunk AS MATERIALIZED (
                 SELECT group_name, id FROM instances
                 WHERE (group_name, id) > ($1, $2)
                 ORDER BY group_name, id
                 LIMIT $3
             ),
             deleted AS (
                 DELETE FROM instances AS expired
                 USING chunk
                 WHERE expired.group_name = chunk.group_name AND expired.id = chunk.id
                   AND expired.updated_at_ms <= $4
                 RETURNING 1
             ),
             last AS (
                 SELECT group_name, id FROM chunk ORDER BY group_name DESC, id DESC LIMIT 1
             )
             SELECT (SELECT count(*) FROM deleted), (SELECT count(*) FROM chunk),
                    (SELECT group_name FROM last), (SELECT id FROM last)",
        )
        .bind(&cursor.group)
        .bind(&cursor.id)
        .bind(chunk)
        .bind(live_after)
        .fetch_one(pool)
        .await?;
    let next = match (last_group, last_id) {
        (Some(group), Some(id)) if examined >= chunk => Some(PurgeCursor { group, id }),
        _ => None,
    };
    Ok((deleted.max(0).cast_unsigned(), next))
}

/// Joins the registry as a node starts: if no node has been alive for a TTL, this start is the
/// registry's, and its grace begins now for every node; otherwise it changes nothing.
pub async fn join(pool: &PgPool, ttl_ms: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE registry_grace
         SET started_at_ms = now.ms,
             previous_alive_ms = CASE WHEN alive_at_ms > 0 THEN alive_at_ms END,
             alive_at_ms = now.ms
         FROM (SELECT warden_now_ms() AS ms) AS now
         WHERE id = 1 AND alive_at_ms <= now.ms - $1",
    )
    .bind(ttl_ms)
    .execute(pool)
    .await?;
    record_alive(pool).await
}

/// Records that the registry is running now.
pub async fn record_alive(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE registry_grace SET alive_at_ms = greatest(alive_at_ms, warden_now_ms())
         WHERE id = 1",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// How many instances are live now: a walk of the whole table, for a scrape.
pub async fn count_live(pool: &PgPool, ttl_ms: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM instances
         WHERE updated_at_ms > (SELECT registry_live_after(warden_now_ms(), $1))",
    )
    .bind(ttl_ms)
    .fetch_one(pool)
    .await
}
