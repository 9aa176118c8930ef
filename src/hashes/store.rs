//! The hash service's SQL: recording accepted hashes in group commits, and reading them back.

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

/// The batch that records hashes: ids are `total + 1 …` of the stats row, so ids and the
/// count of accepted requests are one number and can never disagree.
#[derive(Debug)]
pub struct RecordHashes;

impl Batch for RecordHashes {
    type Request = NewHash;
    /// The id given to the hash.
    type Reply = i64;

    async fn write(
        &self,
        conn: &mut SqliteConnection,
        requests: &[NewHash],
    ) -> Result<Vec<i64>, sqlx::Error> {
        let rows: Vec<(&str, i64, i64)> = requests
            .iter()
            .map(|new| (new.sha512.as_str(), new.received_at_ms, new.ready_at_ms))
            .collect();
        let rows =
            serde_json::to_string(&rows).map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
        // One statement for the whole batch: row `key` of the JSON array gets id total+1+key.
        sqlx::query!(
            r#"INSERT INTO hashes (id, sha512, received_at_ms, ready_at_ms)
               SELECT hash_stats.total + 1 + new.key,
                      new.value ->> 0, new.value ->> 1, new.value ->> 2
               FROM hash_stats, json_each(?1) AS new
               WHERE hash_stats.id = 1"#,
            rows
        )
        .execute(&mut *conn)
        .await?;

        // The handling time ends here, as the rows are written: the commit that follows is
        // the one that makes this very stat durable, so it cannot be part of it.
        let handling_ns: i64 = requests
            .iter()
            .map(|new| i64::try_from(new.arrived.elapsed().as_nanos()).unwrap_or(i64::MAX))
            .fold(0, i64::saturating_add);
        let count = i64::try_from(requests.len()).unwrap_or(i64::MAX);
        let total = sqlx::query_scalar!(
            "UPDATE hash_stats
             SET total = total + ?1, handling_ns = handling_ns + ?2
             WHERE id = 1
             RETURNING total",
            count,
            handling_ns
        )
        .fetch_one(&mut *conn)
        .await?;
        let first = total - count + 1;
        Ok((first..=total).collect())
    }
}

/// A recorded hash as `GET /hash/{id}` needs it.
#[derive(Debug)]
pub struct StoredHash {
    pub sha512: String,
    pub ready_at_ms: i64,
}

/// The hash with `id`, ready or not.
pub async fn find(reads: &SqlitePool, id: i64) -> Result<Option<StoredHash>, sqlx::Error> {
    sqlx::query_as!(
        StoredHash,
        "SELECT sha512, ready_at_ms FROM hashes WHERE id = ?1",
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
