//! The SQL of job output: appending chunks in group commits, within the reserve, and
//! reading them back by offset; deleting a deleted job's chunks in bounded steps.
//!
//! Invariant: what is stored of a job's output is everything from offset 0 up to a point,
//! plus nothing or what followed a drop at the output limit. Once a chunk of a job is lost
//! (a failed commit) or refused (the reserve), no later chunk of that job is stored, so no
//! reader ever meets a hole it cannot explain: the job says `outputTruncated`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use metrics::Counter;
use sqlx::Connection as _;
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnection;

use crate::db::{self, Batch};

/// A piece of a job's output, at its offset in the whole output.
#[derive(Debug)]
pub struct OutputChunk {
    pub job_seq: i64,
    pub start_offset: i64,
    pub bytes: Bytes,
    /// Output was dropped before this chunk (past the limit): the job says so at once.
    pub truncated: bool,
}

/// What became of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// It is committed.
    Kept,
    /// It was refused: the database is past `--max-db-size`, or an earlier chunk of the
    /// same job was lost. Its job is (or will be, at its end) marked truncated.
    Dropped,
}

/// The batch that appends output chunks. The `job_output_moves_output_bytes` trigger moves
/// each job's `output_bytes` on inside the same statement.
#[derive(Debug, Clone)]
pub struct AppendOutput {
    /// Jobs whose output has lost a chunk: the rest of it is dropped. The runner forgets a
    /// job here once it has ended.
    lost: Arc<Mutex<HashSet<i64>>>,
    /// Past this many bytes of pages in use, output is refused: the space left is kept for
    /// status changes, heartbeats and hashes.
    max_db_bytes: u64,
    /// Counts the bytes committed.
    stored: Counter,
}

impl AppendOutput {
    /// Appends output while the database uses at most `max_db_bytes`, counting the bytes
    /// committed in `stored`.
    pub fn new(max_db_bytes: u64, stored: Counter) -> Self {
        Self {
            lost: Arc::default(),
            max_db_bytes,
            stored,
        }
    }

    /// Forgets job `seq`'s lost output (call once the job has ended).
    pub fn forget(&self, seq: i64) {
        self.lost_jobs().remove(&seq);
    }

    fn lost_jobs(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        // Every change is one insert or remove: a poisoned set is still a sound set.
        self.lost.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Batch for AppendOutput {
    const PATH: &'static str = "job output";
    type Conn = SqliteConnection;
    type Request = OutputChunk;
    type Reply = Stored;

    /// All the chunks travel as one blob, with a JSON list of where each lies in it, and one
    /// statement stores them: one round trip to SQLite's thread per commit rather than one
    /// per chunk (measured: output throughput up by a quarter). A chunk that follows dropped
    /// output also marks its job truncated, in the same transaction.
    async fn write(
        &self,
        conn: &mut SqliteConnection,
        requests: &[OutputChunk],
    ) -> Result<Vec<Stored>, sqlx::Error> {
        let mut replies = Vec::with_capacity(requests.len());
        let mut kept: Vec<&OutputChunk> = Vec::with_capacity(requests.len());
        {
            let lost = self.lost_jobs();
            for chunk in requests {
                if lost.contains(&chunk.job_seq) {
                    replies.push(Stored::Dropped);
                } else {
                    replies.push(Stored::Kept);
                    kept.push(chunk);
                }
            }
        }
        if kept.is_empty() {
            return Ok(replies);
        }
        let size: u64 = kept.iter().map(|chunk| chunk.bytes.len() as u64).sum();
        if db::used_bytes(&mut *conn).await?.saturating_add(size) > self.max_db_bytes {
            let seqs: Vec<i64> = kept.iter().map(|chunk| chunk.job_seq).collect();
            self.lost_jobs().extend(&seqs);
            mark_truncated(conn, &seqs).await?;
            tracing::warn!(
                jobs = seqs.len(),
                max_db_bytes = self.max_db_bytes,
                "the database is past --max-db-size: job output is dropped"
            );
            return Ok(requests.iter().map(|_| Stored::Dropped).collect());
        }
        match store(conn, &kept).await {
            Ok(()) => {
                self.stored.increment(size);
                Ok(replies)
            }
            Err(error) => {
                self.lost_jobs()
                    .extend(kept.iter().map(|chunk| chunk.job_seq));
                Err(error)
            }
        }
    }

    fn wrote(replies: &[Stored]) -> bool {
        replies.contains(&Stored::Kept)
    }
}

/// Marks jobs `seqs` as having dropped output: an update in place, which needs no new page.
async fn mark_truncated(conn: &mut SqliteConnection, seqs: &[i64]) -> Result<(), sqlx::Error> {
    let seqs = serde_json::to_string(seqs).map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
    sqlx::query!(
        "UPDATE jobs SET output_truncated = 1
         WHERE seq IN (SELECT value FROM json_each(?1)) AND output_truncated = 0",
        seqs
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Stores `chunks` atomically: one statement, or a transaction when some follow output
/// dropped at the limit and their jobs must say so.
async fn store(conn: &mut SqliteConnection, chunks: &[&OutputChunk]) -> Result<(), sqlx::Error> {
    let mut bytes = Vec::with_capacity(chunks.iter().map(|chunk| chunk.bytes.len()).sum());
    let mut pieces = Vec::with_capacity(chunks.len());
    let mut truncated: Vec<i64> = Vec::new();
    for chunk in chunks {
        pieces.push((
            chunk.job_seq,
            chunk.start_offset,
            bytes.len(),
            chunk.bytes.len(),
        ));
        bytes.extend_from_slice(&chunk.bytes);
        if chunk.truncated && !truncated.contains(&chunk.job_seq) {
            truncated.push(chunk.job_seq);
        }
    }
    let pieces =
        serde_json::to_string(&pieces).map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
    let stored = if truncated.is_empty() {
        store_chunks(conn, &bytes, &pieces).await?
    } else {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let stored = store_chunks(&mut tx, &bytes, &pieces).await?;
        mark_truncated(&mut tx, &truncated).await?;
        tx.commit().await?;
        stored
    };
    if stored != chunks.len() as u64 {
        return Err(sqlx::Error::Protocol(format!(
            "stored {stored} output chunks of {}",
            chunks.len()
        )));
    }
    Ok(())
}

/// Stores the chunks that `pieces` (`[[job_seq, start_offset, at, length], …]`) cut out of
/// `bytes`; returns how many.
async fn store_chunks(
    conn: &mut SqliteConnection,
    bytes: &[u8],
    pieces: &str,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "INSERT INTO job_output (job_seq, start_offset, bytes)
         SELECT piece.value ->> 0, piece.value ->> 1,
                substr(?1, (piece.value ->> 2) + 1, piece.value ->> 3)
         FROM json_each(?2) AS piece
         ORDER BY piece.key",
        bytes,
        pieces
    )
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Up to `limit` output chunks of job `seq` from the last one starting at or before `offset`
/// on, in order (that first one may end at or before `offset`: the caller skips what it has
/// already sent). Both steps are index seeks, however long the output.
pub async fn read_output(
    reads: &SqlitePool,
    seq: i64,
    offset: i64,
    limit: usize,
) -> Result<Vec<(i64, Vec<u8>)>, sqlx::Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = sqlx::query!(
        r#"SELECT start_offset AS "start_offset!", bytes FROM job_output
         WHERE job_seq = ?1
           AND start_offset >= (
               SELECT coalesce(max(start_offset), 0) FROM job_output
               WHERE job_seq = ?1 AND start_offset <= ?2
           )
         ORDER BY start_offset
         LIMIT ?3"#,
        seq,
        offset,
        limit
    )
    .fetch_all(reads)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.start_offset, row.bytes))
        .collect())
}

/// Deletes up to `limit` output chunks of deleted job `seq`; returns how many it deleted.
pub async fn delete_chunks(
    conn: &mut SqliteConnection,
    seq: i64,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "DELETE FROM job_output
         WHERE job_seq = ?1 AND start_offset IN (
             SELECT start_offset FROM job_output WHERE job_seq = ?1
             ORDER BY start_offset LIMIT ?2
         )",
        seq,
        limit
    )
    .execute(&mut *conn)
    .await?
    .rows_affected())
}
