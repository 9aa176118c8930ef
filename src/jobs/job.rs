//! What a job is to its users: its status, how it ended, and the record the API shows.
//!
//! A status is a [`JobStatus`] everywhere in Rust; it is a string only in SQL (the `jobs`
//! table's `CHECK`) and in JSON, both spelled by the one `lowercase` rule below.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};

use super::sandbox::{DEFAULT_CWD, LimitHits, Limits, MAX_VARIABLES};
use super::store::JobRow;
use crate::error::{Error, Result};

/// Where a job is in its life. `queued` and `running` are the only ones it leaves.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting for a worker.
    Queued,
    /// A worker runs its process.
    Running,
    /// Its process exited with code 0.
    Succeeded,
    /// Its process exited otherwise, was killed by a signal, or could not start.
    Failed,
    /// Someone asked it to stop.
    Stopped,
    /// warden shut down or died while it ran.
    Interrupted,
}

impl JobStatus {
    /// Every status, in the order of a job's life.
    pub const ALL: [Self; 6] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Stopped,
        Self::Interrupted,
    ];

    /// The status as SQL and JSON spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
            Self::Interrupted => "interrupted",
        }
    }

    /// Whether a job in this status has ended, one way or another.
    pub fn is_finished(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobStatus {
    type Err = UnknownStatus;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == name)
            .ok_or(UnknownStatus)
    }
}

/// A name that is not a job status.
#[derive(Debug, thiserror::Error)]
#[error("status must be one of queued, running, succeeded, failed, stopped, interrupted")]
pub struct UnknownStatus;

/// How a running job ended, as its worker records it. One constructor per way to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub status: JobStatus,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub error: Option<String>,
    /// Output was dropped (past the limit, or lost to a failed commit).
    pub truncated: bool,
}

impl Ending {
    /// The process exited by itself with `exit_code`, or was killed by `signal`.
    pub fn exited(exit_code: Option<i64>, signal: Option<i64>, truncated: bool) -> Self {
        let (status, error) = match (exit_code, signal) {
            (Some(0), _) => (JobStatus::Succeeded, None),
            (_, Some(signal)) => (
                JobStatus::Failed,
                Some(format!("killed by signal {signal}")),
            ),
            _ => (JobStatus::Failed, None),
        };
        Self {
            status,
            exit_code,
            signal,
            error,
            truncated,
        }
    }

    /// Someone asked the job to stop; its process ended with `exit_code` or `signal`.
    pub fn stopped(exit_code: Option<i64>, signal: Option<i64>, truncated: bool) -> Self {
        Self {
            status: JobStatus::Stopped,
            exit_code,
            signal,
            error: None,
            truncated,
        }
    }

    /// warden shut down while the job ran; its process ended with `exit_code` or `signal`.
    pub fn interrupted(exit_code: Option<i64>, signal: Option<i64>, truncated: bool) -> Self {
        Self {
            status: JobStatus::Interrupted,
            exit_code,
            signal,
            error: Some("warden shut down while the job was running".to_owned()),
            truncated,
        }
    }

    /// A limit of the job's ended it: `error` names which.
    pub fn limited(
        exit_code: Option<i64>,
        signal: Option<i64>,
        error: String,
        truncated: bool,
    ) -> Self {
        Self {
            status: JobStatus::Failed,
            exit_code,
            signal,
            error: Some(error),
            truncated,
        }
    }

    /// A failure that a limit caused names the limit: the kernel killed a process for memory,
    /// or a fork failed at the pids limit. A job that succeeded anyway stays a success.
    pub fn blamed_on(self, hits: LimitHits, limits: &Limits) -> Self {
        if self.status != JobStatus::Failed {
            return self;
        }
        let blame = match (hits, limits.memory_bytes, limits.pids) {
            (
                LimitHits {
                    out_of_memory: true,
                    ..
                },
                Some(bytes),
                _,
            ) => format!(
                "out of memory: killed by the kernel at the job's memory limit of {bytes} bytes"
            ),
            (LimitHits { pids: true, .. }, _, Some(pids)) => {
                format!("a fork failed at the job's pids limit of {pids} processes and threads")
            }
            _ => return self,
        };
        Self::limited(self.exit_code, self.signal, blame, self.truncated)
    }

    /// The job failed without an exit status of its own: it could not start, could not be
    /// tracked, or could not be waited for; `error` says which.
    pub fn failed(error: String, truncated: bool) -> Self {
        Self {
            status: JobStatus::Failed,
            exit_code: None,
            signal: None,
            error: Some(error),
            truncated,
        }
    }
}

/// The body of `POST /jobs`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    /// The program: a path, or a name looked up in `PATH`.
    #[schema(min_length = 1, max_length = 4096, pattern = "^[^\\u0000]*$")]
    pub command: String,
    /// Its arguments (none unless given).
    #[serde(default)]
    #[schema(max_items = 4096, value_type = Vec<Argument>)]
    pub args: Vec<String>,
    /// A name for people to tell jobs apart by.
    #[schema(max_length = 256)]
    pub name: Option<String>,
    /// Variables added to the job's environment, which otherwise holds only `PATH`, `HOME`
    /// and `LANG`. warden's own (`WARDEN_*`) and the loader's (`LD_*` and the like) are
    /// refused. Stored and shown with the job: not a place for secrets.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, Argument>)]
    pub env: BTreeMap<String, String>,
    /// The job's working directory: an absolute path to an existing directory outside
    /// warden's data dir [default: `/`].
    #[schema(max_length = 4096, pattern = "^/[^\\u0000]*$")]
    pub cwd: Option<String>,
    /// Lower limits than the server's for this job; each one left out is the server's.
    #[serde(default)]
    pub limits: Limits,
}

/// One argument of a job, as its API description shows it: any text without a NUL, which no
/// argument of a program can hold.
pub struct Argument;

impl utoipa::PartialSchema for Argument {
    fn schema() -> RefOr<Schema> {
        RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[^\\u0000]*$"))
                .build(),
        ))
    }
}

impl utoipa::ToSchema for Argument {}

impl NewJob {
    /// 400 unless the request can be queued as it is.
    pub fn check(&self) -> Result<()> {
        let bad = |message: &str| Err(Error::BadRequest(message.to_owned()));
        if self.command.is_empty() {
            return bad("`command` must not be empty");
        }
        // Lengths in characters, as the API document's `maxLength` counts them.
        if self.command.chars().count() > 4096 || self.args.len() > 4096 {
            return bad("`command` or `args` is too long");
        }
        if self.command.contains('\0') || self.args.iter().any(|arg| arg.contains('\0')) {
            return bad("`command` and `args` must not contain NUL bytes");
        }
        if self
            .name
            .as_ref()
            .is_some_and(|name| name.chars().count() > 256)
        {
            return bad("`name` must be at most 256 characters");
        }
        if self.env.len() > MAX_VARIABLES {
            return bad("`env` may set at most 256 variables");
        }
        Ok(())
    }
}

/// A job as the API shows it. Times are ms since the Unix epoch.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    #[schema(format = "uuid")]
    pub id: String,
    pub name: Option<String>,
    pub command: String,
    pub args: Vec<String>,
    /// The user who queued it.
    pub owner: String,
    pub status: JobStatus,
    /// The process's exit code, once it has exited.
    pub exit_code: Option<i64>,
    /// The signal that killed the process, if one did.
    pub signal: Option<i64>,
    /// Why the job failed or was interrupted, when its exit status does not say.
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// How many bytes of output are stored.
    pub output_bytes: i64,
    /// Output was dropped: past `--job-output-limit`, or past `--max-db-size`.
    pub output_truncated: bool,
    /// The variables the request added to its environment.
    pub env: BTreeMap<String, String>,
    /// Its working directory.
    pub cwd: String,
    /// The limits it runs with (`null`: none).
    pub limits: Limits,
}

impl From<JobRow> for Job {
    fn from(row: JobRow) -> Self {
        Self {
            // warden writes `args` from a `Vec<String>`; only a hand-edited row fails to
            // parse, and it shows no arguments here (the runner refuses to run it).
            args: row.args().unwrap_or_default(),
            env: row.env().unwrap_or_default(),
            limits: row.limits(),
            cwd: row.cwd.clone().unwrap_or_else(|| DEFAULT_CWD.to_owned()),
            id: row.id,
            name: row.name,
            command: row.command,
            owner: row.owner,
            status: row.status,
            exit_code: row.exit_code,
            signal: row.signal,
            error: row.error,
            created_at: row.created_at_ms,
            started_at: row.started_at_ms,
            finished_at: row.finished_at_ms,
            output_bytes: row.output_bytes,
            output_truncated: row.output_truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_spelled_alike_in_json_and_by_name() {
        for status in JobStatus::ALL {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{status}\""));
            assert_eq!(status.as_str().parse::<JobStatus>().unwrap(), status);
        }
        assert!("done".parse::<JobStatus>().is_err());
        assert!("Queued".parse::<JobStatus>().is_err());
    }

    #[test]
    fn an_exit_code_of_zero_is_success_and_anything_else_a_failure() {
        assert_eq!(
            Ending::exited(Some(0), None, false).status,
            JobStatus::Succeeded
        );
        let failed = Ending::exited(Some(3), None, false);
        assert_eq!((failed.status, failed.error), (JobStatus::Failed, None));
        let killed = Ending::exited(None, Some(9), true);
        assert_eq!(killed.status, JobStatus::Failed);
        assert_eq!(killed.error.as_deref(), Some("killed by signal 9"));
        assert!(killed.truncated);
    }
}
