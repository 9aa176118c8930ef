//! `GET /jobs`: the jobs a caller may see, newest first, a page at a time.
//!
//! Invariant: a page's memory is bounded whatever the jobs hold: at most [`MAX_PAGE_SIZE`]
//! jobs, and fewer once their commands and arguments pass [`PAGE_BUDGET`]. A page resumes
//! after the last job of the previous one (`after`), so paging never skips or repeats a job
//! that stays.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::job::{Job, JobStatus};
use super::{Jobs, store};
use crate::error::{Error, Result};
use crate::http::QueryParams;
use crate::openapi::{AuthFaults, ErrorShape, ServerFaults};
use crate::security::principal::Principal;

/// How many jobs a page of `GET /jobs` holds unless `limit` says otherwise.
const PAGE_SIZE: usize = 100;
/// The most jobs a page may hold.
const MAX_PAGE_SIZE: usize = 1000;
/// A page ends early once its jobs' commands and arguments pass this many bytes, so that a
/// page's memory is bounded whatever the jobs hold (a job's request is up to 64 KiB).
const PAGE_BUDGET: usize = 1024 * 1024;

/// The query of `GET /jobs`.
#[derive(Debug, Deserialize, serde::Serialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs in this status.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<JobStatus>)]
    status: Option<String>,
    /// How many jobs the page holds at most (100 unless given); a page may end early once
    /// its jobs' commands and arguments pass 1 MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The id of the last job of the previous page, as the `Link` header gives it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(format = "uuid")]
    after: Option<String>,
}

/// `GET /jobs[?status=S][&limit=N][&after=ID]`: a page of the jobs the caller may see,
/// newest first, and `Link: <…>; rel="next"` while more follow.
#[utoipa::path(
    get,
    path = "/jobs",
    tag = "jobs",
    summary = "List jobs",
    description = "A page of the jobs the caller may see (a user its own, an admin all), newest first.",
    params(ListQuery),
    responses(
        (
            status = 200,
            description = "A page of jobs",
            body = Vec<Job>,
            headers(("Link" = String, description = "`</jobs?…>; rel=\"next\"`: the next page, while more jobs follow")),
        ),
        (status = 400, description = "An unknown status or query key, a limit out of range, or an `after` that is not a job of the previous page", body = ErrorShape),
        AuthFaults,
        ServerFaults,
    ),
)]
pub async fn list_jobs(
    State(jobs): State<Jobs>,
    principal: Principal,
    QueryParams(mut query): QueryParams<ListQuery>,
) -> Result<Response> {
    let status = query
        .status
        .as_deref()
        .map(str::parse::<JobStatus>)
        .transpose()
        .map_err(|unknown| Error::BadRequest(unknown.to_string()))?;
    let limit = query.limit.unwrap_or(PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(Error::BadRequest(format!(
            "limit must be 1 to {MAX_PAGE_SIZE}"
        )));
    }
    let before_seq = match &query.after {
        None => None,
        Some(after) => {
            // A cursor the caller could not see reads as unknown: no job's existence leaks.
            let cursor = store::cursor_of(&jobs.db.reads, after).await?;
            match cursor {
                Some((seq, owner)) if principal.may_access(&owner) => Some(seq),
                _ => {
                    return Err(Error::BadRequest(
                        "after must be the id of a job on the previous page".into(),
                    ));
                }
            }
        }
    };
    let page = store::list(
        &jobs.db.reads,
        principal.only_owner(),
        status,
        before_seq,
        limit,
        PAGE_BUDGET,
    )
    .await?;
    let next = match page.jobs.last() {
        Some(last) if page.more => {
            query.after = Some(last.id.clone());
            query.limit = Some(limit);
            let query = serde_urlencoded::to_string(&query)
                .map_err(|error| Error::Internal(error.to_string()))?;
            Some(
                HeaderValue::from_str(&format!("</jobs?{query}>; rel=\"next\""))
                    .map_err(|error| Error::Internal(error.to_string()))?,
            )
        }
        _ => None,
    };
    let body = Json(page.jobs.into_iter().map(Job::from).collect::<Vec<_>>());
    let mut response = body.into_response();
    if let Some(next) = next {
        response.headers_mut().insert(header::LINK, next);
    }
    Ok(response)
}
