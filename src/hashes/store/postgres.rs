//! The hash service's SQL on Postgres, shared by many nodes: hashes in group commits with ids
//! from one sequence, the stats in per-node slots summed on read, and the purge.
//!
//! Every time is the database's clock (`warden_now_ms()`), so `GET /hash/{id}` on any node
//! reveals a hash at the same instant, whatever the nodes' clocks say.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgConnection;

use super::{NewHash, StoredHash, Totals};
use crate::clock::millis;
use crate::db::Batch;

/// How many stats slots there are: enough that nodes seldom share one, so no row is a point
/// every node's commits queue on; `hash_stats` checks the same bound.
const STATS_SLOTS: u16 = 64;

/// The batch that records hashes: one statement inserts the whole batch, draws its ids from
/// the sequence, and adds it to this node's stats slot, so a committed hash is always counted
/// and an uncommitted one never is.
#[derive(Debug)]
pub struct RecordHashes {
    delay_ms: i64,
    /// This node's row of `hash_stats`, drawn at start.
    slot: i16,
}

impl RecordHashes {
    /// Records hashes readable `delay` after they are written, counted in a slot drawn now.
    pub fn new(delay: Duration) -> Self {
        let mut byte = [0_u8; 2];
        // Any slot is correct; a failed draw only makes a shared slot likelier.
        let _ = getrandom::fill(&mut byte);
        let slot = u16::from_le_bytes(byte) % STATS_SLOTS;
        Self {
            delay_ms: millis(delay),
            slot: i16::try_from(slot).unwrap_or(0),
        }
    }
}

impl Batch for RecordHashes {
    const PATH: &'static str = "hashes";
    type Conn = PgConnection;
    type Request = NewHash;
    type Reply = i64;

    async fn write(
        &self,
        conn: &mut PgConnection,
        requests: &[NewHash],
    ) -> Result<Vec<i64>, sqlx::Error> {
        let digests: Vec<&str> = requests.iter().map(|new| new.sha512.as_str()).collect();
        let handling: Vec<i64> = requests.iter().map(NewHash::handling_ns).collect();
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "WITH clock AS MATERIALIZED (SELECT warden_now_ms() AS now_ms),
             inserted AS (
                 INSERT INTO hashes (id, sha512, received_at_ms, ready_at_ms, handling_ns)
                 SELECT nextval('hash_ids'), new.sha512, clock.now_ms, clock.now_ms + $3,
                        new.handling_ns
                 FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY
                          AS new (sha512, handling_ns, n),
                      clock
                 ORDER BY new.n
                 RETURNING id, sha512, handling_ns
             ),
             counted AS (
                 INSERT INTO hash_stats (slot, total, handling_ns)
                 SELECT $4, count(*), coalesce(sum(handling_ns), 0)::bigint FROM inserted
                 ON CONFLICT (slot) DO UPDATE SET
                     total = hash_stats.total + excluded.total,
                     handling_ns = hash_stats.handling_ns + excluded.handling_ns
             )
             SELECT id, sha512 FROM inserted ORDER BY id",
        )
        .bind(&digests)
        .bind(&handling)
        .bind(self.delay_ms)
        .bind(self.slot)
        .fetch_all(&mut *conn)
        .await?;
        ids_in_request_order(requests, rows)
    }
}

/// Gives each request the id of the row holding its hash. Rows are told apart by their hash:
/// two requests with the same password have rows alike but for the id, and take their ids in
/// request order.
fn ids_in_request_order(
    requests: &[NewHash],
    rows: Vec<(i64, String)>,
) -> Result<Vec<i64>, sqlx::Error> {
    let mut waiting: HashMap<&str, std::collections::VecDeque<usize>> = HashMap::new();
    for (index, new) in requests.iter().enumerate() {
        waiting.entry(&new.sha512).or_default().push_back(index);
    }
    let mut ids = vec![None; requests.len()];
    for (id, sha512) in rows {
        let index = waiting
            .get_mut(sha512.as_str())
            .and_then(std::collections::VecDeque::pop_front)
            .ok_or_else(|| {
                sqlx::Error::Protocol("the insert returned a hash nobody sent".into())
            })?;
        ids[index] = Some(id);
    }
    ids.into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| sqlx::Error::Protocol("a hash got no id back".into()))
}

/// The hash with `id`, ready or not, with the database's "now".
pub async fn find(pool: &PgPool, id: i64) -> Result<Option<StoredHash>, sqlx::Error> {
    let row: Option<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT sha512, received_at_ms, ready_at_ms, warden_now_ms() FROM hashes WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(
        |(sha512, received_at_ms, ready_at_ms, read_at_ms)| StoredHash {
            sha512,
            received_at_ms,
            ready_at_ms,
            read_at_ms,
        },
    ))
}

/// Every node's stats, summed.
pub async fn totals(pool: &PgPool) -> Result<Totals, sqlx::Error> {
    let (total, handling_ns): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(total), 0)::bigint, coalesce(sum(handling_ns), 0)::bigint
         FROM hash_stats",
    )
    .fetch_one(pool)
    .await?;
    Ok(Totals { total, handling_ns })
}

/// One step of the purge: among the `chunk` oldest hashes that no other node's purge holds,
/// deletes those received more than `retention` ago by the database's clock. Nodes purging at
/// once skip each other's rows rather than wait, so each row is deleted once; deleting leaves
/// the stats and the sequence alone.
pub async fn purge_step(
    pool: &PgPool,
    retention: Duration,
    chunk: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(
        "DELETE FROM hashes
         WHERE id IN (
             SELECT id FROM (
                 SELECT id, received_at_ms FROM hashes ORDER BY id LIMIT $2
                 FOR UPDATE SKIP LOCKED
             ) AS oldest
             WHERE received_at_ms < warden_now_ms() - $1
         )",
    )
    .bind(millis(retention))
    .bind(chunk)
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}
