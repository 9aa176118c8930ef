//! The SQL of deleting jobs: marking them deleted (by hand or past the retention window), and
//! removing a deleted job's output and then its row in bounded steps.

use sqlx::sqlite::SqliteConnection;

use super::output;

/// Deletes finished job `seq` from every read at once (its output and row go later, in
/// steps); returns whether it was a visible finished job.
pub async fn delete_finished(
    conn: &mut SqliteConnection,
    seq: i64,
    now_ms: i64,
) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query!(
        "UPDATE jobs SET deleted_at_ms = ?2
         WHERE seq = ?1 AND status NOT IN ('queued', 'running') AND deleted_at_ms IS NULL",
        seq,
        now_ms
    )
    .execute(&mut *conn)
    .await?;
    Ok(deleted.rows_affected() == 1)
}

/// Deletes up to `limit` jobs that finished before `before_ms` (never a queued or running
/// one); returns how many.
pub async fn expire_finished(
    conn: &mut SqliteConnection,
    before_ms: i64,
    now_ms: i64,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let expired = sqlx::query!(
        "UPDATE jobs SET deleted_at_ms = ?2
         WHERE seq IN (
             SELECT seq FROM jobs
             WHERE finished_at_ms < ?1 AND status NOT IN ('queued', 'running')
               AND deleted_at_ms IS NULL
             LIMIT ?3
         )",
        before_ms,
        now_ms,
        limit
    )
    .execute(&mut *conn)
    .await?;
    Ok(expired.rows_affected())
}

/// What one purge step removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub chunks: u64,
    pub jobs: u64,
}

/// One bounded step of removing deleted jobs: up to `chunk_limit` output chunks of one
/// deleted job, or, once it has none left, its row. Nothing to do gives `Purged::default()`.
pub async fn purge_step(
    conn: &mut SqliteConnection,
    chunk_limit: i64,
) -> Result<Purged, sqlx::Error> {
    let Some(seq) = sqlx::query_scalar!(
        r#"SELECT seq AS "seq!" FROM jobs WHERE deleted_at_ms IS NOT NULL LIMIT 1"#
    )
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(Purged::default());
    };
    let chunks = output::delete_chunks(conn, seq, chunk_limit).await?;
    if chunks > 0 {
        return Ok(Purged { chunks, jobs: 0 });
    }
    let jobs = sqlx::query!(
        "DELETE FROM jobs WHERE seq = ?1 AND deleted_at_ms IS NOT NULL",
        seq
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(Purged { chunks: 0, jobs })
}
