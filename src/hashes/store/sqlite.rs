//! The hash service's SQL on SQLite: recording accepted hashes in group commits, reading them
//! back, and deleting those past their retention.

use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnection;

use super::{NewHash, StoredHash, Totals};
use crate::clock::{Clock, millis};
use crate::db::Batch;

/// The batch that records hashes: one statement inserts the whole batch, and the
/// `hashes_count_in_stats` trigger updates the stats inside that same statement, so a
/// committed hash is always counted and an uncommitted one never is. A batch's hashes are
/// received at the node's "now" as it is written, and ready `delay` later.
#[derive(Debug)]
pub struct RecordHashes {
    pub clock: Clock,
    pub delay: Duration,
}

impl Batch for RecordHashes {
    const PATH: &'static str = "hashes";
    type Conn = SqliteConnection;
    type Request = NewHash;
    /// The id given to the hash.
    type Reply = i64;

    async fn write(
        &self,
        conn: &mut SqliteConnection,
        requests: &[NewHash],
    ) -> Result<Vec<i64>, sqlx::Error> {
        let received_at_ms = self.clock.now_ms();
        let ready_at_ms = received_at_ms.saturating_add(millis(self.delay));
        let rows: Vec<(&str, i64, i64, i64)> = requests
            .iter()
            .map(|new| {
                (
                    new.sha512.as_str(),
                    received_at_ms,
                    ready_at_ms,
                    new.handling_ns(),
                )
            })
            .collect();
        let rows =
            serde_json::to_string(&rows).map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
        // One statement, so one round trip to SQLite's thread and one atomic commit. Rows go
        // in in array order and take consecutive ids, the last of which SQLite reports: no
        // RETURNING, whose rows would each cost a wake-up of the writer.
        let inserted = sqlx::query!(
            r#"INSERT INTO hashes (sha512, received_at_ms, ready_at_ms, handling_ns)
               SELECT new.value ->> 0, new.value ->> 1, new.value ->> 2, new.value ->> 3
               FROM json_each(?1) AS new
               ORDER BY new.key"#,
            rows
        )
        .execute(&mut *conn)
        .await?;
        let count = i64::try_from(requests.len()).unwrap_or(i64::MAX);
        if inserted.rows_affected() != requests.len() as u64 {
            return Err(sqlx::Error::Protocol(format!(
                "inserted {} hashes for {count} requests",
                inserted.rows_affected()
            )));
        }
        let last = inserted.last_insert_rowid();
        Ok((last - count + 1..=last).collect())
    }
}

/// The hash with `id`, ready or not, read at `now_ms`.
pub async fn find(
    reads: &SqlitePool,
    id: i64,
    now_ms: i64,
) -> Result<Option<StoredHash>, sqlx::Error> {
    sqlx::query_as!(
        StoredHash,
        r#"SELECT sha512, received_at_ms, ready_at_ms, ?2 AS "read_at_ms!: i64"
           FROM hashes WHERE id = ?1"#,
        id,
        now_ms
    )
    .fetch_optional(reads)
    .await
}

/// The running stats row.
pub async fn totals(reads: &SqlitePool) -> Result<Totals, sqlx::Error> {
    sqlx::query_as!(
        Totals,
        "SELECT total, handling_ns FROM hash_stats WHERE id = 1"
    )
    .fetch_one(reads)
    .await
}

/// One step of the purge: among the `chunk` oldest hashes (lowest ids), deletes those
/// received before `received_before_ms`; returns how many it deleted. Ids follow arrival, so
/// the hashes past their retention are the oldest ones: a step reads only its chunk of the
/// id index, never the whole table, and a step that deletes less than a whole chunk has
/// reached the hashes still kept. (Were the wall clock set back, hashes behind one stamped
/// later wait for it, late by at most the step; `GET` still hides them on time.) Deleting rows
/// leaves `hash_stats` alone (its trigger counts inserts), and `AUTOINCREMENT` keeps every
/// deleted id, the newest too, from being given again.
pub async fn purge_step(
    conn: &mut SqliteConnection,
    received_before_ms: i64,
    chunk: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query!(
        "DELETE FROM hashes
         WHERE id IN (SELECT id FROM hashes ORDER BY id LIMIT ?2)
           AND received_at_ms < ?1",
        received_before_ms,
        chunk
    )
    .execute(&mut *conn)
    .await?;
    Ok(deleted.rows_affected())
}
