//! The heartbeat discovery registry: `POST`, `GET` and `DELETE /{group}/{id}`, `GET /{group}`
//! and `GET /`.
//!
//! An instance is live while `now - updatedAt < TTL`. Every read applies that rule in its
//! query, so expiry is exact whatever the purge's timing; the purge only reclaims space.
//! Heartbeats go through the group-commit writer as one upsert per batch: a client's heartbeat
//! is acknowledged only once committed.
//!
//! Memory never grows with the size of an answer: a meta is at most [`META_LIMIT`] bytes, and
//! the listings (`GET /{group}`, `GET /`) are read and sent a page at a time, each page its own
//! short read that resumes after the last key sent, so a reader holds one page whatever the
//! size of the registry, and no read stays open while a client takes its time.

mod gauges;
mod input;
mod listing;
mod purge;
mod store;

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::{RefOr, Required};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::clock::millis;
use crate::db::Writer;
use crate::error::{Error, Result};
use crate::http::{PathParams, read_body};
use crate::openapi::{BodyFaults, ErrorShape, ServerFaults, WriteFaults};
use crate::service::{Context, Service};
use crate::telemetry::REGISTRY_PURGED_INSTANCES;
use input::{check_names, meta_of, meta_too_large};
use listing::{GroupSummary, Listed, Listing, json_response};
use store::{Heartbeat, Instance, Registered, RegistryStore};

/// The most a heartbeat body may weigh. More than [`META_LIMIT`]: the body may carry other
/// keys beside `"meta"`, which are ignored, and whitespace and escapes that the stored meta
/// does not keep.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The most an instance's meta may weigh as stored: its JSON object text, compacted. It bounds
/// what every listing of a group holds in memory per instance.
pub const META_LIMIT: usize = 8 * 1024;

/// Why the registry could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read the registry's state: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot start the purge scheduler: {0}")]
    Scheduler(#[from] tokio_cron_scheduler::JobSchedulerError),
}

/// The liveness rule, with the start-up grace.
///
/// Normally an instance is live while its last heartbeat is later than `now - ttl`. For one
/// TTL after warden starts, an instance that was live when warden was last known to be
/// running stays live too: an outage of warden must not evict every client at once, but an
/// instance that had already expired before the outage stays expired.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    ttl_ms: i64,
    started_ms: i64,
    /// When the previous run was last known to be alive, if there was one.
    previous_alive_ms: Option<i64>,
}

impl Liveness {
    /// The cutoff: an instance is live iff its `updated_at_ms` is greater than this.
    pub fn live_after(&self, now_ms: i64) -> i64 {
        let normal = now_ms.saturating_sub(self.ttl_ms);
        match self.previous_alive_ms {
            Some(alive) if now_ms < self.started_ms.saturating_add(self.ttl_ms) => {
                normal.min(alive.saturating_sub(self.ttl_ms))
            }
            _ => normal,
        }
    }
}

/// The registry's state.
#[derive(Clone, Debug)]
pub struct Registry {
    writer: Writer<Heartbeat, Registered>,
    store: RegistryStore,
}

/// The registry's settings.
#[derive(Debug, Clone, Copy)]
pub struct RegistrySettings {
    /// How long an instance lives after its last heartbeat.
    pub ttl: Duration,
    /// How often expired instances are deleted.
    pub purge_every: Duration,
}

impl Service for Registry {
    const NAME: &'static str = "registry";
    type Settings = RegistrySettings;
    type StartError = StartError;

    /// Starts the registry's writer and its purge job (both tracked by `context.tasks`; the
    /// purge stops when `context.shutdown` is cancelled).
    async fn start(context: Context<'_>, settings: RegistrySettings) -> Result<Self, StartError> {
        let Context {
            db,
            shared,
            tasks,
            shutdown,
            clock,
            telemetry,
        } = context;
        let ttl_ms = millis(settings.ttl);
        let store = match shared {
            Some(shared) => RegistryStore::on_postgres(shared, ttl_ms).await?,
            None => RegistryStore::on_sqlite(db, clock, ttl_ms).await?,
        };
        let writer = store.writer(tasks, telemetry);
        purge::start(
            store.clone(),
            settings.ttl,
            settings.purge_every,
            tasks,
            shutdown.clone(),
            telemetry.counter(REGISTRY_PURGED_INSTANCES, Vec::new()),
        )
        .await?;
        gauges::report_live_instances(telemetry, store.clone());
        Ok(Self { writer, store })
    }

    fn routes() -> OpenApiRouter<Self> {
        let mut routes = OpenApiRouter::new()
            .routes(routes!(list_groups))
            .routes(routes!(list_instances))
            .routes(routes!(heartbeat, read_instance, unregister))
            .layer(DefaultBodyLimit::max(BODY_LIMIT));
        // A heartbeat's body is optional, but when there is one it is an object, never
        // `null`: `#[utoipa::path]` cannot say both, so the requirement is lifted here.
        let heartbeat_body = routes
            .get_openapi_mut()
            .paths
            .paths
            .get_mut("/{group}/{id}")
            .and_then(|item| item.post.as_mut())
            .and_then(|operation| operation.request_body.as_mut());
        if let Some(RefOr::T(body)) = heartbeat_body {
            body.required = Some(Required::False);
        }
        routes
    }
}

/// `POST /{group}/{id}`: 201 with the instance on first registration, 200 on a refresh.
#[utoipa::path(
    post,
    path = "/{group}/{id}",
    tag = "registry",
    summary = "Register or refresh an instance (a heartbeat)",
    description = "The meta is the object under the body's `\"meta\"` key if it has one, else the whole \
        body object; no body keeps the meta a refresh had (`{}` for a new instance). `updatedAt` \
        strictly increases with each heartbeat; `createdAt` stays while the instance lives. An \
        instance lives until `--instance-ttl` (30 s) passes without a heartbeat.",
    params(("group" = String, Path, description = "The group: 1 to 64 of `A-Z a-z 0-9 . _ -`", pattern = "^[A-Za-z0-9._-]{1,64}$"), ("id" = String, Path, description = "The instance's id in its group: 1 to 128 of `A-Z a-z 0-9 . _ : -`", pattern = "^[A-Za-z0-9._:-]{1,128}$")),
    request_body(
        description = "The instance's meta (at most 8 KiB as compact JSON), or nothing",
        content = Object,
        content_type = "application/json",
    ),
    responses(
        (status = 201, description = "A new instance", body = Instance, links(
            ("read" = (operation_id = "read_instance", parameters(("group" = "$request.path.group"), ("id" = "$request.path.id")))),
            ("unregister" = (operation_id = "unregister", parameters(("group" = "$request.path.group"), ("id" = "$request.path.id")))),
            ("group" = (operation_id = "list_instances", parameters(("group" = "$request.path.group")))),
        )),
        (status = 200, description = "A live instance, refreshed", body = Instance),
        (status = 400, description = "The group or the id breaks its rule, or the body is not a JSON object", body = ErrorShape),
        BodyFaults,
        ServerFaults,
        WriteFaults,
    ),
)]
async fn heartbeat(
    State(registry): State<Registry>,
    PathParams((group, id)): PathParams<(String, String)>,
    request: Request,
) -> Result<Response> {
    check_names(&group, Some(&id))?;
    let body = read_body(request, BODY_LIMIT).await?;
    let meta = meta_of(&body)?;
    if meta.as_ref().is_some_and(|meta| meta.len() > META_LIMIT) {
        return Ok(meta_too_large());
    }
    let registered = registry
        .writer
        .submit(Heartbeat { group, id, meta })
        .await?;
    let status = if registered.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(registered.instance)).into_response())
}

/// `GET /{group}/{id}`: the live instance, or 404.
#[utoipa::path(
    get,
    path = "/{group}/{id}",
    tag = "registry",
    summary = "Read a live instance",
    params(("group" = String, Path, description = "The group: 1 to 64 of `A-Z a-z 0-9 . _ -`", pattern = "^[A-Za-z0-9._-]{1,64}$"), ("id" = String, Path, description = "The instance's id in its group: 1 to 128 of `A-Z a-z 0-9 . _ : -`", pattern = "^[A-Za-z0-9._:-]{1,128}$")),
    responses(
        (status = 200, description = "The instance", body = Instance),
        (status = 400, description = "The group or the id breaks its rule", body = ErrorShape),
        (status = 404, description = "No live instance has that group and id", body = ErrorShape),
        ServerFaults,
    ),
)]
async fn read_instance(
    State(registry): State<Registry>,
    PathParams((group, id)): PathParams<(String, String)>,
) -> Result<Json<Instance>> {
    check_names(&group, Some(&id))?;
    registry
        .store
        .find(&group, &id)
        .await?
        .map(Json)
        .ok_or_else(|| Error::not_found("no live instance with that group and id"))
}

/// `GET /{group}`: the group's live instances by id, a page at a time; 404 when it has none.
#[utoipa::path(
    get,
    path = "/{group}",
    tag = "registry",
    summary = "List a group's live instances",
    params(("group" = String, Path, description = "The group: 1 to 64 of `A-Z a-z 0-9 . _ -`", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    responses(
        (status = 200, description = "The group's live instances, by id", body = Vec<Instance>),
        (status = 400, description = "The group breaks its rule", body = ErrorShape),
        (status = 404, description = "The group has no live instance", body = ErrorShape),
        ServerFaults,
    ),
)]
async fn list_instances(
    State(registry): State<Registry>,
    PathParams(group): PathParams<String>,
) -> Result<Response> {
    check_names(&group, None)?;
    let listing = Listing::new(&registry.store, Listed::Instances { group }).await?;
    listing
        .respond()
        .await?
        .ok_or_else(|| Error::not_found("no live instance in that group"))
}

/// `GET /`: every group with a live instance, by name, a page at a time.
#[utoipa::path(
    get,
    path = "/",
    tag = "registry",
    summary = "List the groups that have a live instance",
    responses(
        (status = 200, description = "Every group with a live instance, by name", body = Vec<GroupSummary>),
        ServerFaults,
    ),
)]
async fn list_groups(State(registry): State<Registry>) -> Result<Response> {
    let listing = Listing::new(&registry.store, Listed::Groups).await?;
    Ok(listing
        .respond()
        .await?
        .unwrap_or_else(|| json_response(Body::from("[]"))))
}

/// `DELETE /{group}/{id}`: 204; 404 if there is no live instance.
#[utoipa::path(
    delete,
    path = "/{group}/{id}",
    tag = "registry",
    summary = "Remove an instance",
    params(("group" = String, Path, description = "The group: 1 to 64 of `A-Z a-z 0-9 . _ -`", pattern = "^[A-Za-z0-9._-]{1,64}$"), ("id" = String, Path, description = "The instance's id in its group: 1 to 128 of `A-Z a-z 0-9 . _ : -`", pattern = "^[A-Za-z0-9._:-]{1,128}$")),
    responses(
        (status = 204, description = "The instance is gone"),
        (status = 400, description = "The group or the id breaks its rule", body = ErrorShape),
        (status = 404, description = "No live instance has that group and id", body = ErrorShape),
        ServerFaults,
        WriteFaults,
    ),
)]
async fn unregister(
    State(registry): State<Registry>,
    PathParams((group, id)): PathParams<(String, String)>,
) -> Result<StatusCode> {
    check_names(&group, Some(&id))?;
    if registry.store.delete(&group, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        // An expired row is gone now too, but to the client it was already unknown.
        Err(Error::not_found("no live instance with that group and id"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_gives_one_ttl_of_grace_to_instances_live_before_an_outage() {
        let ttl_ms = 30_000;
        let fresh = Liveness {
            ttl_ms,
            started_ms: 1_000_000,
            previous_alive_ms: None,
        };
        assert_eq!(fresh.live_after(1_000_000), 970_000);

        // Last alive at 500 000, restarted at 1 000 000.
        let restarted = Liveness {
            ttl_ms,
            started_ms: 1_000_000,
            previous_alive_ms: Some(500_000),
        };
        // During the grace, anything live at 500 000 (heartbeat after 470 000) is live.
        assert_eq!(restarted.live_after(1_000_000), 470_000);
        assert_eq!(restarted.live_after(1_029_999), 470_000);
        // After one TTL, the normal rule.
        assert_eq!(restarted.live_after(1_030_000), 1_000_000);
    }
}
