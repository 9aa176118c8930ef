//! The remote job runner: start, stop, query, and read or follow a job's output.
//!
//! Every route needs an authenticated [`Principal`] (a client certificate over mutual TLS, a
//! bearer token beside or instead of it). A `user` sees,
//! lists and stops only its own jobs (another's job answers 404, so its existence is not
//! revealed); an `admin` sees all. Everything a job is — its queue position, status and
//! output — lives in SQLite, so a restart keeps every job's history and output and runs the
//! jobs still queued.

pub mod client;
mod gauges;
mod job;
mod listing;
mod live;
mod output;
mod process;
mod retention;
mod runner;
pub mod sandbox;
pub mod spawner;
mod store;

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRef, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::clock::Clock;
use crate::db::{Database, Writer};
use crate::error::{Error, Result, StorageFault};
use crate::http::{PathParams, QueryParams, read_body};
use crate::openapi::{AuthFaults, BodyFaults, ErrorShape, ServerFaults, WriteFaults};
use crate::security::principal::Principal;
use crate::security::tokens::TokenKeys;
use crate::service::{Context, Service};
use job::{Job, JobStatus, NewJob};
use output::OutputReader;
use retention::Retention;
use runner::Runner;
pub use runner::RunnerSettings as JobSettings;
use store::{JobRow, NewJobRow, QueueJobs};

/// The most a `POST /jobs` body may weigh.
const BODY_LIMIT: usize = 64 * 1024;
/// How long `POST /jobs/{id}/stop` waits past the grace for the process to be gone.
const STOP_SLACK: Duration = Duration::from_secs(10);

/// The job runner's state.
#[derive(Clone, Debug)]
pub struct Jobs {
    runner: Runner,
    /// Queues new jobs in group commits.
    queue: Writer<NewJobRow, Result<JobRow, store::QueueFull>>,
    db: Database,
    keys: TokenKeys,
    clock: Clock,
    /// Cancelled when warden shuts down: followers end then, whatever their job does.
    shutdown: CancellationToken,
    retention: Retention,
}

impl FromRef<Jobs> for TokenKeys {
    fn from_ref(jobs: &Jobs) -> Self {
        jobs.keys.clone()
    }
}

impl Service for Jobs {
    const NAME: &'static str = "jobs";
    type Settings = JobSettings;
    type StartError = StorageFault;

    /// Loads (or makes) the token key, recovers from the previous run and starts the workers.
    async fn start(context: Context<'_>, settings: JobSettings) -> Result<Self, StorageFault> {
        // Jobs stay in this node's SQLite file, shared database or not.
        let Context {
            db,
            tasks,
            shutdown,
            clock,
            telemetry,
            shared: _,
        } = context;
        let keys = TokenKeys::load_or_create(db, clock.now_ms()).await?;
        let (retention, purge_every, max_queued_per_user) = (
            settings.retention,
            settings.purge_every,
            settings.max_queued_per_user,
        );
        let runner = Runner::start(db, tasks, shutdown, clock.clone(), settings, telemetry).await?;
        let retention = Retention::start(
            db.clone(),
            clock.clone(),
            retention,
            purge_every,
            tasks,
            shutdown.clone(),
        );
        gauges::report_jobs(telemetry, db);
        Ok(Self {
            retention,
            runner,
            queue: db.writer(
                QueueJobs {
                    max_queued_per_user,
                },
                tasks,
                telemetry,
            ),
            db: db.clone(),
            keys,
            clock: clock.clone(),
            shutdown: shutdown.clone(),
        })
    }

    fn routes() -> OpenApiRouter<Self> {
        OpenApiRouter::new()
            .routes(routes!(create_job, listing::list_jobs))
            .routes(routes!(read_job, delete_job))
            .routes(routes!(stop_job))
            .routes(routes!(read_output))
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
    }
}

/// `POST /jobs`: 201 with the queued job and its `Location`; 429 if the caller already has
/// `--max-queued-per-user` jobs queued.
#[utoipa::path(
    post,
    path = "/jobs",
    tag = "jobs",
    summary = "Queue a job",
    description = "The program is run directly (never through a shell), once, by the next free \
        worker, as the caller's job; `command` is looked up in `PATH` unless it holds a `/`. \
        Users take turns for the workers, and one user's jobs start in the order they were \
        queued. A user may have at most `--max-queued-per-user` jobs queued at once. The job \
        runs as warden's job account, with an environment of `PATH`, `HOME`, `LANG` and \
        `env`, in `cwd` (default `/`), within `limits` (each one the server's unless the \
        request asks for less), and everything it starts ends with it.",
    request_body = NewJob,
    responses(
        (
            status = 201,
            description = "The job is queued",
            body = Job,
            headers(("Location" = String, description = "The job: `/jobs/{id}`")),
            links(
                ("read" = (operation_id = "read_job", parameters(("id" = "$response.body#/id")))),
                ("stop" = (operation_id = "stop_job", parameters(("id" = "$response.body#/id")))),
                ("output" = (operation_id = "read_output", parameters(("id" = "$response.body#/id")))),
                ("delete" = (operation_id = "delete_job", parameters(("id" = "$response.body#/id")))),
            ),
        ),
        (status = 400, description = "The body is not a job request, or breaks one of its limits", body = ErrorShape),
        (
            status = 429,
            description = "The caller already has `--max-queued-per-user` jobs queued; nothing was queued",
            body = ErrorShape,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again")),
        ),
        AuthFaults,
        BodyFaults,
        ServerFaults,
        WriteFaults,
    ),
)]
async fn create_job(
    State(jobs): State<Jobs>,
    principal: Principal,
    request: Request,
) -> Result<Response> {
    let body = read_body(request, BODY_LIMIT).await?;
    let new: NewJob = serde_json::from_slice(&body).map_err(|error| {
        Error::BadRequest(format!(
            "the body must be {{\"command\": string, \"args\": [string], \"name\": string, \
             \"env\": {{string: string}}, \"cwd\": string, \"limits\": {{\"memoryBytes\", \
             \"cpu\", \"pids\", \"timeoutMs\"}}}}: {error}"
        ))
    })?;
    new.check()?;
    let limits = jobs
        .runner
        .sandbox()
        .admit(&new.env, new.cwd.as_deref(), &new.limits)
        .await?;
    let env =
        serde_json::to_string(&new.env).map_err(|error| Error::Internal(error.to_string()))?;
    let id = uuid::Uuid::new_v4().to_string();
    let args =
        serde_json::to_string(&new.args).map_err(|error| Error::Internal(error.to_string()))?;
    let row = jobs
        .queue
        .submit(NewJobRow {
            id: id.clone(),
            name: new.name,
            command: new.command,
            args,
            owner: principal.user.clone(),
            created_at_ms: jobs.clock.now_ms(),
            env,
            cwd: new.cwd,
            memory_limit_bytes: limits.memory_bytes.map(saturating_i64),
            cpu_limit: limits.cpu,
            pids_limit: limits.pids.map(saturating_i64),
            timeout_ms: limits.timeout_ms.map(saturating_i64),
        })
        .await?
        .map_err(|full| {
            tracing::debug!(owner = %principal.user, queued = full.queued, "job refused: queue full");
            Error::TooManyQueued {
                queued: full.queued,
                limit: full.limit,
            }
        })?;
    jobs.runner.wake();
    tracing::info!(job = %id, owner = %principal.user, "job queued");
    let location = HeaderValue::from_str(&format!("/jobs/{id}"))
        .map_err(|error| Error::Internal(error.to_string()))?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(Job::from(row)),
    )
        .into_response())
}

/// `DELETE /jobs/{id}`: 204 for a finished job, whose output and record are then deleted;
/// 409 while it is queued or running.
#[utoipa::path(
    delete,
    path = "/jobs/{id}",
    tag = "jobs",
    summary = "Delete a finished job and its output",
    params(("id" = String, Path, description = "The job's id", format = "uuid")),
    responses(
        (status = 204, description = "The job is deleted; its output is removed in the background"),
        LookupFaults,
        (status = 409, description = "The job is queued or running: stop it first", body = ErrorShape),
        AuthFaults,
        ServerFaults,
        WriteFaults,
    ),
)]
async fn delete_job(
    State(jobs): State<Jobs>,
    principal: Principal,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode> {
    let job = visible_job(&jobs.db.reads, &principal, &id).await?;
    if !job.is_finished() {
        return Err(Error::Conflict(format!(
            "the job is {}; stop it before deleting it",
            job.status
        )));
    }
    let deleted = {
        let mut conn = jobs.db.write_connection().await?;
        store::delete_finished(&mut conn, job.seq, jobs.clock.now_ms()).await?
    };
    if !deleted {
        // Deleted by someone else in the meantime.
        return Err(Error::not_found("no job with that id"));
    }
    jobs.retention.wake();
    tracing::info!(job = %id, by = %principal.user, "job deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /jobs/{id}`.
#[utoipa::path(
    get,
    path = "/jobs/{id}",
    tag = "jobs",
    summary = "Read a job",
    params(("id" = String, Path, description = "The job's id", format = "uuid")),
    responses(
        (status = 200, description = "The job", body = Job),
        LookupFaults,
        AuthFaults,
        ServerFaults,
    ),
)]
async fn read_job(
    State(jobs): State<Jobs>,
    principal: Principal,
    PathParams(id): PathParams<String>,
) -> Result<Json<Job>> {
    Ok(Json(Job::from(
        visible_job(&jobs.db.reads, &principal, &id).await?,
    )))
}

/// `POST /jobs/{id}/stop`: stops a queued job at once, a running one with SIGTERM (SIGKILL
/// after the grace), and answers with the job once it has ended. Idempotent: a stopped job
/// answers 200 again; a job that ended any other way answers 409.
#[utoipa::path(
    post,
    path = "/jobs/{id}/stop",
    tag = "jobs",
    summary = "Stop a job",
    description = "A queued job stops at once; a running one gets SIGTERM, and SIGKILL after \
        `--job-stop-grace`. Answers once the job has ended. Stopping a stopped job answers 200 again.",
    params(("id" = String, Path, description = "The job's id", format = "uuid")),
    responses(
        (status = 200, description = "The job, stopped", body = Job),
        LookupFaults,
        (status = 409, description = "The job had already ended some other way", body = ErrorShape),
        AuthFaults,
        ServerFaults,
        WriteFaults,
    ),
)]
async fn stop_job(
    State(jobs): State<Jobs>,
    principal: Principal,
    PathParams(id): PathParams<String>,
) -> Result<Json<Job>> {
    let job = visible_job(&jobs.db.reads, &principal, &id).await?;
    if job.status == JobStatus::Stopped {
        return Ok(Json(Job::from(job)));
    }
    if job.is_finished() {
        return Err(Error::Conflict(format!(
            "the job has already ended: {}",
            job.status
        )));
    }
    let mut following = jobs.runner.follow(job.seq);
    let stopped_while_queued = {
        let mut conn = jobs.db.write_connection().await?;
        let now = jobs.clock.now_ms();
        let queued = store::stop_queued(&mut conn, job.seq, now).await?;
        if !queued {
            store::request_stop(&mut conn, job.seq, now).await?;
        }
        queued
    };
    if stopped_while_queued {
        drop(following);
        jobs.runner.ended_unrun(job.seq);
        let job = store::find(&jobs.db.reads, &id).await?;
        return job
            .map(|job| Json(Job::from(job)))
            .ok_or_else(|| Error::not_found("no job with that id"));
    }
    jobs.runner.stop(job.seq);
    let wait = jobs.runner.stop_grace() + STOP_SLACK;
    let ended = tokio::time::timeout(wait, async {
        loop {
            let job = store::find(&jobs.db.reads, &id).await?;
            match job {
                Some(job) if !job.is_finished() => {}
                _ => return Ok::<_, Error>(job),
            }
            if following.progress().changed().await.is_err() {
                // The runner is gone (shutting down): report the job as it now stands.
                return Ok(store::find(&jobs.db.reads, &id).await?);
            }
        }
    })
    .await;
    drop(following);
    match ended {
        Ok(Ok(Some(job))) => Ok(Json(Job::from(job))),
        Ok(Ok(None)) => Err(Error::not_found("no job with that id")),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(Error::Internal("the job did not stop in time".into())),
    }
}

/// The query of `GET /jobs/{id}/output`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct OutputQuery {
    /// Where to start, in bytes from the start of the output (0 unless given).
    #[param(maximum = 9_223_372_036_854_775_807_u64)]
    offset: Option<u64>,
    /// Go on sending output as the job makes it, until the job ends.
    follow: Option<bool>,
}

/// `GET /jobs/{id}/output[?offset=N][&follow=true]`: the output bytes from `offset`; with
/// `follow`, the stream goes on as output is committed and ends when the job does.
#[utoipa::path(
    get,
    path = "/jobs/{id}/output",
    tag = "jobs",
    summary = "Read or follow a job's output",
    params(("id" = String, Path, description = "The job's id", format = "uuid"), OutputQuery),
    responses(
        (
            status = 200,
            description = "stdout and stderr as captured, in order, from `offset`; with `follow`, the \
                stream ends when the job does (or is cut when warden shuts down)",
            body = [u8],
            content_type = "application/octet-stream",
        ),
        LookupFaults,
        AuthFaults,
        ServerFaults,
    ),
)]
async fn read_output(
    State(jobs): State<Jobs>,
    principal: Principal,
    PathParams(id): PathParams<String>,
    QueryParams(query): QueryParams<OutputQuery>,
) -> Result<Response> {
    let job = visible_job(&jobs.db.reads, &principal, &id).await?;
    let offset = i64::try_from(query.offset.unwrap_or(0))
        .map_err(|_| Error::BadRequest("offset is too large".into()))?;
    let following = if query.follow.unwrap_or(false) && !job.is_finished() {
        // Follow first, then look again: an end after this look always wakes the follower.
        let following = jobs.runner.follow(job.seq);
        match store::find(&jobs.db.reads, &id).await? {
            Some(again) if !again.is_finished() => Some(following),
            _ => None,
        }
    } else {
        None
    };
    let reader = OutputReader::new(
        jobs.db.reads.clone(),
        job.seq,
        offset,
        following,
        jobs.shutdown.clone(),
    );
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(reader.into_stream()),
    )
        .into_response())
}

/// 400 and 404: what every route of one job may answer, from [`visible_job`] (or from the
/// query string's extractor).
#[derive(utoipa::IntoResponses)]
#[expect(
    dead_code,
    reason = "only its API description is used: the errors come from `Error`"
)]
enum LookupFaults {
    /// The id is not a UUID, or the query string has a key or a value the route does not take.
    #[response(status = 400)]
    Malformed(ErrorShape),
    /// No job with that id that the caller may see: another user's job is not revealed.
    #[response(status = 404)]
    NotFound(ErrorShape),
}

/// The job `id` if the principal may see it; 400 for a malformed id, 404 otherwise.
async fn visible_job(reads: &SqlitePool, principal: &Principal, id: &str) -> Result<JobRow> {
    if uuid::Uuid::try_parse(id).is_err() {
        return Err(Error::BadRequest("a job id is a UUID".into()));
    }
    match store::find(reads, id).await? {
        Some(job) if principal.may_access(&job.owner) => Ok(job),
        _ => Err(Error::not_found("no job with that id")),
    }
}

/// A count or size as SQLite stores it (past `i64::MAX` is no limit anyone can reach).
fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
