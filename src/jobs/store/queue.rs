//! Queueing jobs: the group-commit batch that inserts them, within `--max-queued-per-user`.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::Connection as _;
use sqlx::sqlite::SqliteConnection;

use super::JobRow;
use crate::db::Batch;
use crate::jobs::job::JobStatus;

/// A job to queue.
#[derive(Debug, Serialize)]
pub struct NewJobRow {
    pub id: String,
    pub name: Option<String>,
    pub command: String,
    /// The arguments as a JSON array of strings.
    pub args: String,
    pub owner: String,
    pub created_at_ms: i64,
    /// The environment the request added, as a JSON object of strings.
    pub env: String,
    pub cwd: Option<String>,
    pub memory_limit_bytes: Option<i64>,
    pub cpu_limit: Option<f64>,
    pub pids_limit: Option<i64>,
    pub timeout_ms: Option<i64>,
}

/// The batch that queues jobs: one insert for the whole batch, so concurrent submissions
/// share one commit instead of each paying for its own.
///
/// It keeps `--max-queued-per-user` exactly: the counts it reads and the jobs it inserts are
/// in one `BEGIN IMMEDIATE` transaction, so no submissions, however concurrent, queue past
/// the cap.
#[derive(Debug)]
pub struct QueueJobs {
    /// The most jobs one owner may have queued at once.
    pub max_queued_per_user: u64,
}

/// A job refused because its owner already has the most queued jobs allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull {
    /// How many jobs the owner has queued.
    pub queued: u64,
    /// `--max-queued-per-user`.
    pub limit: u64,
}

impl Batch for QueueJobs {
    const PATH: &'static str = "job queue";
    type Conn = SqliteConnection;
    type Request = NewJobRow;
    type Reply = Result<JobRow, QueueFull>;

    /// Takes the requests in order, each while its owner is below the cap (counting what
    /// this batch has already taken), and inserts only those.
    async fn write(
        &self,
        conn: &mut SqliteConnection,
        requests: &[NewJobRow],
    ) -> Result<Vec<Self::Reply>, sqlx::Error> {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let mut queued = queued_by_owner(&mut tx, requests).await?;
        let mut refusals = Vec::with_capacity(requests.len());
        let mut taken: Vec<&NewJobRow> = Vec::with_capacity(requests.len());
        for request in requests {
            let count = queued.entry(request.owner.as_str()).or_default();
            if *count < self.max_queued_per_user {
                *count += 1;
                taken.push(request);
                refusals.push(None);
            } else {
                refusals.push(Some(QueueFull {
                    queued: *count,
                    limit: self.max_queued_per_user,
                }));
            }
        }
        let mut by_id = if taken.is_empty() {
            HashMap::new()
        } else {
            insert(&mut tx, &taken).await?
        };
        let replies = requests
            .iter()
            .zip(refusals)
            .map(|(request, refusal)| match refusal {
                Some(full) => Some(Err(full)),
                None => by_id.remove(&request.id).map(Ok),
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| sqlx::Error::Protocol("a queued job got no row back".into()))?;
        // Only now: a batch that cannot answer every caller keeps nothing.
        tx.commit().await?;
        Ok(replies)
    }

    fn wrote(replies: &[Self::Reply]) -> bool {
        replies.iter().any(Result::is_ok)
    }
}

/// How many jobs each owner of `requests` has queued now (`job_turns` keeps the counts).
async fn queued_by_owner<'a>(
    conn: &mut SqliteConnection,
    requests: &'a [NewJobRow],
) -> Result<HashMap<&'a str, u64>, sqlx::Error> {
    let mut owners: Vec<&str> = requests
        .iter()
        .map(|request| request.owner.as_str())
        .collect();
    owners.sort_unstable();
    owners.dedup();
    let json =
        serde_json::to_string(&owners).map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
    let rows = sqlx::query!(
        r#"SELECT owner AS "owner!", queued FROM job_turns
           WHERE owner IN (SELECT value FROM json_each(?1))"#,
        json
    )
    .fetch_all(&mut *conn)
    .await?;
    let counts: HashMap<String, u64> = rows
        .into_iter()
        .map(|row| (row.owner, u64::try_from(row.queued).unwrap_or(0)))
        .collect();
    Ok(owners
        .into_iter()
        .map(|owner| (owner, counts.get(owner).copied().unwrap_or(0)))
        .collect())
}

/// Inserts `jobs` in one statement, in their order, so that `seq` (the queue order) follows
/// submission; returns their rows by id.
async fn insert(
    conn: &mut SqliteConnection,
    jobs: &[&NewJobRow],
) -> Result<HashMap<String, JobRow>, sqlx::Error> {
    let jobs = serde_json::to_string(jobs).map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
    let rows = sqlx::query_as!(
        JobRow,
        r#"INSERT INTO jobs (id, name, command, args, owner, created_at_ms, env, cwd,
                               memory_limit_bytes, cpu_limit, pids_limit, timeout_ms)
           SELECT job.value ->> 'id', job.value ->> 'name', job.value ->> 'command',
                  job.value ->> 'args', job.value ->> 'owner', job.value ->> 'created_at_ms',
                  job.value ->> 'env', job.value ->> 'cwd',
                  job.value ->> 'memory_limit_bytes', job.value ->> 'cpu_limit',
                  job.value ->> 'pids_limit', job.value ->> 'timeout_ms'
           FROM json_each(?1) AS job
           ORDER BY job.key
           RETURNING seq AS "seq!", id, name, command, args, owner, status AS "status: JobStatus",
                     exit_code, signal, error, created_at_ms, started_at_ms, finished_at_ms,
                     output_bytes, output_truncated AS "output_truncated: bool", env, cwd,
                     memory_limit_bytes, cpu_limit, pids_limit, timeout_ms"#,
        jobs
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|row| (row.id.clone(), row)).collect())
}
