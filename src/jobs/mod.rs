//! The remote job runner: start, stop, query, and read or follow a job's output.
//!
//! Every route needs an authenticated principal (a bearer token for now). A `user` sees,
//! lists and stops only its own jobs (another's job answers 404, so its existence is not
//! revealed); an `admin` sees all. Everything a job is — its queue position, status and
//! output — lives in SQLite, so a restart keeps every job's history and output and runs the
//! jobs still queued.

pub mod client;
mod runner;
mod store;

use std::collections::VecDeque;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRef, FromRequestParts, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use sqlx::SqlitePool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::db::{Database, Writer};
use crate::error::{Error, PathParams, Result, StorageFault, read_body};
use crate::security::tls::ClientIdentity;
use crate::security::tokens::{Principal, TokenError, TokenKeys};
pub use runner::RunnerSettings;
use runner::{Progress, Runner};
use store::{Job, JobRow, NewJobRow, QueueJobs};

/// The most a `POST /jobs` body may weigh.
const BODY_LIMIT: usize = 64 * 1024;
/// How many output chunks a reader takes at a time (at most 512 KiB).
const READ_CHUNKS: usize = 8;
/// How long `POST /jobs/{id}/stop` waits past the grace for the process to be gone.
const STOP_SLACK: Duration = Duration::from_secs(10);

/// The job runner's state.
#[derive(Clone, Debug)]
pub struct Jobs {
    runner: Runner,
    /// Queues new jobs in group commits.
    queue: Writer<QueueJobs>,
    db: Database,
    keys: TokenKeys,
    clock: Clock,
    /// Cancelled when warden shuts down: followers end then, whatever their job does.
    shutdown: CancellationToken,
}

impl FromRef<Jobs> for TokenKeys {
    fn from_ref(jobs: &Jobs) -> Self {
        jobs.keys.clone()
    }
}

impl Jobs {
    /// Loads (or makes) the token key, recovers from the previous run and starts the workers.
    pub async fn start(
        db: &Database,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
        clock: Clock,
        settings: RunnerSettings,
    ) -> Result<Self, StorageFault> {
        let keys = TokenKeys::load_or_create(db, clock.now_ms()).await?;
        let runner = Runner::start(db, tasks, shutdown, clock.clone(), settings).await?;
        Ok(Self {
            runner,
            queue: db.writer(QueueJobs, tasks),
            db: db.clone(),
            keys,
            clock,
            shutdown: shutdown.clone(),
        })
    }
}

/// The job runner's routes.
pub fn router(jobs: Jobs) -> Router {
    Router::new()
        .route("/jobs", post(create_job).get(list_jobs))
        .route("/jobs/{id}", get(read_job))
        .route("/jobs/{id}/stop", post(stop_job))
        .route("/jobs/{id}/output", get(read_output))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(jobs)
}

/// The authenticated caller, from `Authorization: Bearer <token>`.
impl<S> FromRequestParts<S> for Principal
where
    TokenKeys: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Error;

    /// Over mutual TLS the principal is the verified client certificate's; a bearer token,
    /// if sent as well, must name the same user. Over plain HTTP the token is the credential.
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(header) => {
                let token = header
                    .to_str()
                    .ok()
                    .and_then(|value| value.strip_prefix("Bearer "))
                    .map(str::trim)
                    .ok_or_else(|| {
                        Error::Unauthorized("use `Authorization: Bearer <token>`".into())
                    })?;
                let principal = TokenKeys::from_ref(state)
                    .verify(token)
                    .map_err(|error: TokenError| Error::Unauthorized(error.to_string()))?;
                Some(principal)
            }
        };
        match (parts.extensions.get::<ClientIdentity>(), token) {
            (Some(identity), Some(token)) if token.user != identity.user => {
                Err(Error::Unauthorized(
                    "the bearer token names another user than the client certificate".into(),
                ))
            }
            (Some(identity), _) => Ok(Principal {
                user: identity.user.clone(),
                role: identity.role,
            }),
            (None, Some(token)) => Ok(token),
            (None, None) => Err(Error::Unauthorized("a bearer token is required".into())),
        }
    }
}

/// The body of `POST /jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewJob {
    command: String,
    #[serde(default)]
    args: Vec<String>,
    name: Option<String>,
}

impl NewJob {
    fn check(&self) -> Result<()> {
        let bad = |message: &str| Err(Error::BadRequest(message.to_owned()));
        if self.command.is_empty() {
            return bad("`command` must not be empty");
        }
        if self.command.len() > 4096 || self.args.len() > 4096 {
            return bad("`command` or `args` is too long");
        }
        if self.command.contains('\0') || self.args.iter().any(|arg| arg.contains('\0')) {
            return bad("`command` and `args` must not contain NUL bytes");
        }
        if self.name.as_ref().is_some_and(|name| name.len() > 256) {
            return bad("`name` must be at most 256 bytes");
        }
        Ok(())
    }
}

/// `POST /jobs`: 201 with the queued job and its `Location`.
async fn create_job(
    State(jobs): State<Jobs>,
    principal: Principal,
    request: Request,
) -> Result<Response> {
    let body = read_body(request, BODY_LIMIT).await?;
    let new: NewJob = serde_json::from_slice(&body).map_err(|error| {
        Error::BadRequest(format!(
            "the body must be {{\"command\": string, \"args\": [string], \"name\": string}}: {error}"
        ))
    })?;
    new.check()?;
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
        })
        .await?;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
}

/// `GET /jobs[?status=S]`: the jobs the caller may see, newest first.
async fn list_jobs(
    State(jobs): State<Jobs>,
    principal: Principal,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<Job>>> {
    let query: ListQuery = parse_query(query.as_deref())?;
    if let Some(status) = &query.status
        && ![
            "queued",
            "running",
            "succeeded",
            "failed",
            "stopped",
            "interrupted",
        ]
        .contains(&status.as_str())
    {
        return Err(Error::BadRequest(
            "status must be one of queued, running, succeeded, failed, stopped, interrupted".into(),
        ));
    }
    let owner = (!matches!(principal.role, crate::security::tokens::Role::Admin))
        .then_some(principal.user.as_str());
    let rows = store::list(&jobs.db.reads, owner, query.status.as_deref()).await?;
    Ok(Json(rows.into_iter().map(Job::from).collect()))
}

/// `GET /jobs/{id}`.
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
async fn stop_job(
    State(jobs): State<Jobs>,
    principal: Principal,
    PathParams(id): PathParams<String>,
) -> Result<Json<Job>> {
    let job = visible_job(&jobs.db.reads, &principal, &id).await?;
    if job.status == "stopped" {
        return Ok(Json(Job::from(job)));
    }
    if job.is_finished() {
        return Err(Error::Conflict(format!(
            "the job has already ended: {}",
            job.status
        )));
    }
    let mut progress = jobs.runner.watch(job.seq);
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
        drop(progress);
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
            if progress.changed().await.is_err() {
                // The runner is gone (shutting down): report the job as it now stands.
                return Ok(store::find(&jobs.db.reads, &id).await?);
            }
        }
    })
    .await;
    drop(progress);
    jobs.runner.forget_if_idle(job.seq);
    match ended {
        Ok(Ok(Some(job))) => Ok(Json(Job::from(job))),
        Ok(Ok(None)) => Err(Error::not_found("no job with that id")),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(Error::Internal("the job did not stop in time".into())),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputQuery {
    offset: Option<u64>,
    follow: Option<bool>,
}

/// `GET /jobs/{id}/output[?offset=N][&follow=true]`: the output bytes from `offset`; with
/// `follow`, the stream goes on as output is committed and ends when the job does.
async fn read_output(
    State(jobs): State<Jobs>,
    principal: Principal,
    PathParams(id): PathParams<String>,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let query: OutputQuery = parse_query(query.as_deref())?;
    let job = visible_job(&jobs.db.reads, &principal, &id).await?;
    let offset = i64::try_from(query.offset.unwrap_or(0))
        .map_err(|_| Error::BadRequest("offset is too large".into()))?;
    let progress = if query.follow.unwrap_or(false) && !job.is_finished() {
        // Subscribe first, then look again: an end after this look always wakes us.
        let progress = jobs.runner.watch(job.seq);
        match store::find(&jobs.db.reads, &id).await? {
            Some(again) if !again.is_finished() => Some(progress),
            _ => {
                drop(progress);
                jobs.runner.forget_if_idle(job.seq);
                None
            }
        }
    } else {
        None
    };
    let reader = OutputReader {
        reads: jobs.db.reads.clone(),
        seq: job.seq,
        offset,
        progress,
        shutdown: jobs.shutdown.clone(),
        ready: VecDeque::new(),
        done: false,
    };
    let stream = futures_util::stream::unfold(reader, OutputReader::next);
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Reads a job's output from SQLite a few chunks at a time, as the client takes it: memory
/// stays bounded however slow the client; a client that goes away just drops this.
struct OutputReader {
    reads: SqlitePool,
    seq: i64,
    offset: i64,
    /// Present while following a job that has not ended.
    progress: Option<watch::Receiver<Progress>>,
    shutdown: CancellationToken,
    ready: VecDeque<Bytes>,
    done: bool,
}

impl OutputReader {
    async fn next(mut self) -> Option<(std::io::Result<Bytes>, Self)> {
        loop {
            if let Some(bytes) = self.ready.pop_front() {
                return Some((Ok(bytes), self));
            }
            if self.done {
                return None;
            }
            // At the live edge the chunks are still in memory; behind it, in SQLite.
            let recent = self.progress.as_mut().and_then(|progress| {
                progress
                    .borrow_and_update()
                    .recent_from(self.offset, READ_CHUNKS)
            });
            let chunks = match recent {
                Some(chunks) => Ok(chunks),
                None => store::read_output(&self.reads, self.seq, self.offset, READ_CHUNKS)
                    .await
                    .map(|chunks| {
                        chunks
                            .into_iter()
                            .map(|(start, bytes)| (start, Bytes::from(bytes)))
                            .collect()
                    }),
            };
            match chunks {
                Ok(chunks) => {
                    for (start, bytes) in chunks {
                        // A chunk past `offset` means bytes that were never stored (the job
                        // says `outputTruncated`): go on from where stored output resumes.
                        self.offset = self.offset.max(start);
                        let skip = usize::try_from(self.offset - start).unwrap_or(0);
                        if skip < bytes.len() {
                            let bytes = bytes.slice(skip..);
                            self.offset += i64::try_from(bytes.len()).unwrap_or(0);
                            self.ready.push_back(bytes);
                        }
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "reading job output failed; ending the stream");
                    self.done = true;
                    return Some((
                        Err(std::io::Error::other("the output could not be read")),
                        self,
                    ));
                }
            }
            if !self.ready.is_empty() {
                continue;
            }
            let Some(progress) = &mut self.progress else {
                return None;
            };
            if progress.borrow().finished {
                // Everything was committed before `finished`: one more read, then the end.
                self.progress = None;
                continue;
            }
            tokio::select! {
                changed = progress.changed() => {
                    if changed.is_err() {
                        self.progress = None;
                    }
                }
                // Shutting down: what is stored so far, then the end.
                () = self.shutdown.cancelled() => self.progress = None,
            }
        }
    }
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

fn parse_query<T: serde::de::DeserializeOwned>(query: Option<&str>) -> Result<T> {
    serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|error| Error::BadRequest(format!("bad query string: {error}")))
}
