//! The hash service's SQL: recording accepted hashes in group commits, reading them back, and
//! deleting those past their retention.

use std::time::Instant;

use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnection;

use crate::db::Batch;

/// A hash to record: computed from the password on arrival, so no plaintext reaches the writer.
#[derive(Debug)]
pub struct NewHash {
    /// base64 SHA-512 of the password.
    pub sha512: String,
    pub received_at_ms: i64,
    pub ready_at_ms: i64,
    /// When the `POST /hash` request arrived, for its handling time.
    pub arrived: Instant,
}

/// The batch that records hashes: one statement inserts the whole batch, and the
/// `hashes_count_in_stats` trigger updates the stats inside that same statement, so a
/// committed hash is always counted and an uncommitted one never is.
#[derive(Debug)]
pub struct RecordHashes;

impl Batch for RecordHashes {
    const PATH: &'static str = "hashes";
    type Request = NewHash;
    /// The id given to the hash.
    type Reply = i64;

    async fn write(
        &self,
        conn: &mut SqliteConnection,
        requests: &[NewHash],
    ) -> Result<Vec<i64>, sqlx::Error> {
        // The handling time ends as the row is written: the commit that follows is what
        // makes this very figure durable, so it cannot be part of it.
        let rows: Vec<(&str, i64, i64, i64)> = requests
            .iter()
            .map(|new| {
                let handling_ns = i64::try_from(new.arrived.elapsed().as_nanos());
                let handling_ns = handling_ns.unwrap_or(i64::MAX);
                (
                    new.sha512.as_str(),
                    new.received_at_ms,
                    new.ready_at_ms,
                    handling_ns,
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

/// A recorded hash as `GET /hash/{id}` needs it.
#[derive(Debug)]
pub struct StoredHash {
    pub sha512: String,
    pub received_at_ms: i64,
    pub ready_at_ms: i64,
}

/// The hash with `id`, ready or not.
pub async fn find(reads: &SqlitePool, id: i64) -> Result<Option<StoredHash>, sqlx::Error> {
    sqlx::query_as!(
        StoredHash,
        "SELECT sha512, received_at_ms, ready_at_ms FROM hashes WHERE id = ?1",
        id
    )
    .fetch_optional(reads)
    .await
}

/// Accepted requests since the database was created, and their summed handling time.
#[derive(Debug, PartialEq, Eq)]
pub struct Totals {
    pub total: i64,
    pub handling_ns: i64,
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
