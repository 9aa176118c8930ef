//! The job runner's SQL: the queue, each job's record, deletion and retention; the output's
//! chunks are in `output.rs`.
//!
//! A deleted job (`deleted_at_ms` set) is gone from every read at once; its output and then
//! its row are deleted afterwards in bounded steps ([`purge_step`]).

mod deletion;
mod output;
mod queue;

pub use deletion::{Purged, delete_finished, expire_finished, purge_step};
pub use output::{AppendOutput, OutputChunk, Stored, read_output};
pub use queue::{NewJobRow, QueueFull, QueueJobs};

use std::collections::BTreeMap;

use futures_util::TryStreamExt as _;

use sqlx::Connection as _;
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnection;

use super::job::{Ending, JobStatus};
use super::sandbox::Limits;

/// A job as stored.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub seq: i64,
    pub id: String,
    pub name: Option<String>,
    pub command: String,
    /// The arguments as a JSON array of strings; see [`JobRow::args`].
    pub args: String,
    pub owner: String,
    pub status: JobStatus,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub output_bytes: i64,
    pub output_truncated: bool,
    /// The environment the request added, as a JSON object of strings; see [`JobRow::env`].
    pub env: String,
    /// The working directory (`None`: the default, `/`).
    pub cwd: Option<String>,
    pub memory_limit_bytes: Option<i64>,
    /// A share of one core.
    pub cpu_limit: Option<f64>,
    pub pids_limit: Option<i64>,
    pub timeout_ms: Option<i64>,
}

impl JobRow {
    /// Whether the job has ended, one way or another.
    pub fn is_finished(&self) -> bool {
        self.status.is_finished()
    }

    /// The job's arguments; an error only for a row edited by hand.
    pub fn args(&self) -> Result<Vec<String>, serde_json::Error> {
        serde_json::from_str(&self.args)
    }

    /// The limits the job runs with.
    pub fn limits(&self) -> Limits {
        let positive = |value: Option<i64>| value.and_then(|value| u64::try_from(value).ok());
        Limits {
            memory_bytes: positive(self.memory_limit_bytes),
            cpu: self.cpu_limit,
            pids: positive(self.pids_limit),
            timeout_ms: positive(self.timeout_ms),
        }
    }

    /// The environment the request added; an error only for a row edited by hand.
    pub fn env(&self) -> Result<BTreeMap<String, String>, serde_json::Error> {
        serde_json::from_str(&self.env)
    }
}

/// How many visible jobs are in each status, for a scrape: one walk of the status index.
pub async fn count_by_status(reads: &SqlitePool) -> Result<Vec<(JobStatus, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT status AS "status: JobStatus", COUNT(*) AS "jobs!: i64"
           FROM jobs WHERE deleted_at_ms IS NULL GROUP BY status"#
    )
    .fetch_all(reads)
    .await?;
    Ok(rows.into_iter().map(|row| (row.status, row.jobs)).collect())
}

/// The job with public id `id`.
pub async fn find(reads: &SqlitePool, id: &str) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as!(
        JobRow,
        r#"SELECT seq AS "seq!", id, name, command, args, owner, status AS "status: JobStatus",
                  exit_code, signal, error, created_at_ms, started_at_ms, finished_at_ms,
                  output_bytes, output_truncated AS "output_truncated: bool", env, cwd,
                      memory_limit_bytes, cpu_limit, pids_limit, timeout_ms
           FROM jobs WHERE id = ?1 AND deleted_at_ms IS NULL"#,
        id
    )
    .fetch_optional(reads)
    .await
}

/// A page of a job list.
#[derive(Debug)]
pub struct Page {
    pub jobs: Vec<JobRow>,
    /// More jobs follow the last one of this page.
    pub more: bool,
}

/// A page of jobs newest first: of `owner` only if given, in `status` only if given, older
/// than job `before_seq` if given; at most `limit` jobs, and fewer once their command and
/// arguments pass `budget` bytes (at least one job either way), so that a page's memory is
/// bounded whatever its jobs hold. A user's list is read through `jobs_by_owner`, so it
/// costs that user's jobs, not everyone's.
pub async fn list(
    reads: &SqlitePool,
    owner: Option<&str>,
    status: Option<JobStatus>,
    before_seq: Option<i64>,
    limit: usize,
    budget: usize,
) -> Result<Page, sqlx::Error> {
    let mut rows = match owner {
        Some(owner) => sqlx::query_as!(
            JobRow,
            r#"SELECT seq AS "seq!", id, name, command, args, owner, status AS "status: JobStatus",
                      exit_code, signal, error, created_at_ms, started_at_ms, finished_at_ms,
                      output_bytes, output_truncated AS "output_truncated: bool", env, cwd,
                      memory_limit_bytes, cpu_limit, pids_limit, timeout_ms
               FROM jobs
               WHERE owner = ?1 AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR seq < ?3)
                 AND deleted_at_ms IS NULL
               ORDER BY seq DESC"#,
            owner,
            status,
            before_seq
        )
        .fetch(reads),
        None => sqlx::query_as!(
            JobRow,
            r#"SELECT seq AS "seq!", id, name, command, args, owner, status AS "status: JobStatus",
                      exit_code, signal, error, created_at_ms, started_at_ms, finished_at_ms,
                      output_bytes, output_truncated AS "output_truncated: bool", env, cwd,
                      memory_limit_bytes, cpu_limit, pids_limit, timeout_ms
               FROM jobs
               WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR seq < ?2)
                 AND deleted_at_ms IS NULL
               ORDER BY seq DESC"#,
            status,
            before_seq
        )
        .fetch(reads),
    };
    let mut page = Page {
        jobs: Vec::new(),
        more: false,
    };
    let mut spent = 0;
    while let Some(row) = rows.try_next().await? {
        if page.jobs.len() == limit || (spent >= budget && !page.jobs.is_empty()) {
            page.more = true;
            break;
        }
        spent += row.command.len() + row.args.len() + row.name.as_ref().map_or(0, String::len);
        page.jobs.push(row);
    }
    Ok(page)
}

/// The `seq` and owner of visible job `id`, for a list cursor.
pub async fn cursor_of(reads: &SqlitePool, id: &str) -> Result<Option<(i64, String)>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT seq AS "seq!", owner FROM jobs WHERE id = ?1 AND deleted_at_ms IS NULL"#,
        id
    )
    .fetch_optional(reads)
    .await?;
    Ok(row.map(|row| (row.seq, row.owner)))
}

/// Claims the next job for a worker: the oldest queued job of the owner whose turn it is
/// (the lowest `(turn, owner)` in `job_turns`), so owners take turns and one owner's jobs run
/// in submission order. One guarded statement, so no job runs twice; the
/// `job_turns_count_a_job_leaving_the_queue` trigger moves the owner's turn past everyone's
/// within it.
async fn claim_next(
    conn: &mut SqliteConnection,
    now_ms: i64,
) -> Result<Option<JobRow>, sqlx::Error> {
    // Whatever the queue holds, this reads one entry of each index and one row: the plan's
    // "SCAN job_turns USING COVERING INDEX job_turns_next" stops at the first entry (LIMIT 1
    // in index order), then a SEARCH of `jobs_queued_by_owner` (owner=?) takes that owner's
    // first, then the row by its rowid.
    sqlx::query_as!(
        JobRow,
        r#"UPDATE jobs SET status = 'running', started_at_ms = ?1
           WHERE seq = (SELECT seq FROM jobs
                        WHERE owner = (SELECT owner FROM job_turns ORDER BY turn, owner LIMIT 1)
                          AND status = 'queued'
                        ORDER BY seq LIMIT 1)
             AND status = 'queued'
           RETURNING seq AS "seq!", id, name, command, args, owner, status AS "status: JobStatus",
                     exit_code, signal, error, created_at_ms, started_at_ms, finished_at_ms,
                     output_bytes, output_truncated AS "output_truncated: bool", env, cwd,
                      memory_limit_bytes, cpu_limit, pids_limit, timeout_ms"#,
        now_ms
    )
    .fetch_optional(&mut *conn)
    .await
}

/// Records the process running job `seq`, so a later warden can recognise it.
pub async fn record_process(
    conn: &mut SqliteConnection,
    seq: i64,
    pid: i64,
    boot_id: Option<&str>,
    start_ticks: Option<i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE jobs SET pid = ?2, pid_boot_id = ?3, pid_start_ticks = ?4 WHERE seq = ?1",
        seq,
        pid,
        boot_id,
        start_ticks
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records that running job `seq` has ended.
async fn finish(
    conn: &mut SqliteConnection,
    seq: i64,
    ending: &Ending,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE jobs
         SET status = ?2, exit_code = ?3, signal = ?4, error = ?5, finished_at_ms = ?6,
             output_truncated = max(output_truncated, ?7), pid = NULL
         WHERE seq = ?1 AND status = 'running'",
        seq,
        ending.status,
        ending.exit_code,
        ending.signal,
        ending.error,
        now_ms,
        ending.truncated
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records how a worker's last job ended (if it had one) and, if `claim`, claims the next
/// queued job, in one transaction: one commit where there would be two, per job.
pub async fn settle_and_claim(
    conn: &mut SqliteConnection,
    ended: Option<(i64, &Ending)>,
    claim: bool,
    now_ms: i64,
) -> Result<Option<JobRow>, sqlx::Error> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    if let Some((seq, ending)) = ended {
        finish(&mut tx, seq, ending, now_ms).await?;
    }
    let next = if claim {
        claim_next(&mut tx, now_ms).await?
    } else {
        None
    };
    tx.commit().await?;
    Ok(next)
}

/// Stops job `seq` if it is still queued; returns whether it was.
pub async fn stop_queued(
    conn: &mut SqliteConnection,
    seq: i64,
    now_ms: i64,
) -> Result<bool, sqlx::Error> {
    let stopped = sqlx::query!(
        "UPDATE jobs
         SET status = 'stopped', stop_requested_at_ms = ?2, finished_at_ms = ?2
         WHERE seq = ?1 AND status = 'queued'",
        seq,
        now_ms
    )
    .execute(&mut *conn)
    .await?;
    Ok(stopped.rows_affected() == 1)
}

/// Records a stop request for running job `seq` (the first one counts).
pub async fn request_stop(
    conn: &mut SqliteConnection,
    seq: i64,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE jobs SET stop_requested_at_ms = coalesce(stop_requested_at_ms, ?2)
         WHERE seq = ?1 AND status = 'running'",
        seq,
        now_ms
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A process a previous warden left running.
#[derive(Debug)]
pub struct Leftover {
    pub pid: Option<i64>,
    pub pid_boot_id: Option<String>,
    pub pid_start_ticks: Option<i64>,
}

/// Marks every `running` job (its warden died under it) `interrupted`; returns their
/// processes so the caller can kill what is left of them.
pub async fn interrupt_running(
    conn: &mut SqliteConnection,
    now_ms: i64,
) -> Result<Vec<Leftover>, sqlx::Error> {
    sqlx::query_as!(
        Leftover,
        "UPDATE jobs
         SET status = 'interrupted', finished_at_ms = ?1,
             error = 'warden stopped while the job was running'
         WHERE status = 'running'
         RETURNING pid, pid_boot_id, pid_start_ticks",
        now_ms
    )
    .fetch_all(&mut *conn)
    .await
}
