//! The admin listener: `GET /healthz` (services and storage), `GET /metrics` (Prometheus
//! text, see [`crate::telemetry`]), `/shutdown`, and the OpenAPI document of every listener at
//! `GET /openapi/{listener}.json`.
//!
//! `/shutdown` is also mounted on the hashes listener (its contract has it). It only starts
//! the same drain a SIGTERM starts, and only for loopback peers: anyone who can reach the port
//! from elsewhere must not be able to stop the service.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::clock::millis;
use crate::db::{Ailment, SharedDatabase, StorageHealth};
use crate::error::{Error, Result};
use crate::http::PathParams;
use crate::jobs::sandbox::{Sandbox, SandboxReport};
use crate::openapi::{Api, ErrorShape};
use crate::telemetry::Telemetry;

/// Whether a service is serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    Up,
    Down,
}

/// Each enabled service's state, as the supervisor reports it.
#[derive(Clone, Debug, Default)]
pub struct ServiceBoard(Arc<RwLock<BTreeMap<&'static str, ServiceState>>>);

impl ServiceBoard {
    /// Records that `service` is now `state`.
    pub fn set(&self, service: &'static str, state: ServiceState) {
        // A panic elsewhere cannot leave a half-written map: every write is one insert.
        let mut board = self.0.write().unwrap_or_else(PoisonError::into_inner);
        board.insert(service, state);
    }

    fn snapshot(&self) -> BTreeMap<&'static str, ServiceState> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The admin listener's state.
#[derive(Clone, Debug)]
pub struct Admin {
    pub started: Instant,
    pub services: ServiceBoard,
    pub storage: StorageHealth,
    /// The Postgres of the hash service and the registry, when `--database` names one.
    pub shared: Option<SharedDatabase>,
    pub shutdown: CancellationToken,
    /// Every listener's OpenAPI document, as JSON.
    pub documents: Arc<BTreeMap<Api, Bytes>>,
    /// The App's metrics, for `/metrics`.
    pub telemetry: Telemetry,
    /// How jobs are isolated, when the job runner is enabled.
    pub isolation: Option<Arc<Sandbox>>,
}

/// `/healthz`, `/metrics` and `/openapi/{file}`; [`shutdown_routes`] adds `/shutdown`.
pub fn routes() -> OpenApiRouter<Admin> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(read_metrics))
        .routes(routes!(read_document))
}

/// `GET` and `POST /shutdown`, for every listener whose contract has it.
pub fn shutdown_routes() -> OpenApiRouter<CancellationToken> {
    OpenApiRouter::new().routes(routes!(request_shutdown))
}

/// What `/healthz` says of warden as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum Status {
    /// Every enabled service is up and every write path commits.
    Ok,
    /// A service is down, or a write path fails (`storage` says which and why).
    Degraded,
    /// warden is shutting down.
    Draining,
}

/// What `/healthz` says of the database's write paths.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase", tag = "status")]
enum Storage {
    /// Every write path commits.
    Ok,
    /// These write paths fail, or have failed within the last minute.
    Failing { failing: Vec<Ailment> },
}

/// Where the hash service's and the registry's state is, and whether it answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase", tag = "engine")]
enum DatabaseHealth {
    /// This node's SQLite file (its write paths are under `storage`).
    Sqlite,
    /// The Postgres that nodes share.
    Postgres(SharedHealth),
}

/// Whether the shared database answered a round trip just now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct SharedHealth {
    /// Whether it answered within a second.
    reachable: bool,
    /// How long the round trip took, in microseconds (when it answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    round_trip_us: Option<u64>,
    /// Why it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// How long `/healthz` waits for the shared database.
const PING_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

impl DatabaseHealth {
    async fn of(shared: Option<&SharedDatabase>) -> Self {
        let Some(shared) = shared else {
            return Self::Sqlite;
        };
        Self::Postgres(match shared.ping(PING_WITHIN).await {
            Ok(took) => SharedHealth {
                reachable: true,
                round_trip_us: Some(u64::try_from(took.as_micros()).unwrap_or(u64::MAX)),
                reason: None,
            },
            Err(fault) => SharedHealth {
                reachable: false,
                round_trip_us: None,
                reason: Some(fault.to_string()),
            },
        })
    }

    fn is_well(&self) -> bool {
        match self {
            Self::Sqlite => true,
            Self::Postgres(shared) => shared.reachable,
        }
    }
}

/// The body of `GET /healthz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct Health {
    status: Status,
    /// warden's version: the crate version, which is also the API documents' `info.version`.
    version: &'static str,
    /// How long this warden has been running.
    uptime_ms: i64,
    /// Each enabled service's state, by name.
    services: BTreeMap<&'static str, ServiceState>,
    storage: Storage,
    /// Where the hash service's and the registry's state is kept.
    database: DatabaseHealth,
    /// How jobs are isolated on this host (absent when the job runner is not enabled).
    #[serde(skip_serializing_if = "Option::is_none")]
    jobs: Option<SandboxReport>,
}

/// `GET /healthz`: 200 while every enabled service is up, every write path commits and the
/// shared database (if any) answers; 503 while draining or degraded (a service down, writes
/// failing: `storage` says which and why; or the shared database unreachable: `database`).
/// A load balancer's health check takes a node out on the 503.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "admin",
    summary = "Whether warden is well",
    responses(
        (status = 200, description = "Every enabled service is up, every write path commits and the shared database answers", body = Health),
        (status = 503, description = "warden is draining, or degraded: a service is down, writes fail, or the shared database does not answer", body = Health),
    ),
)]
async fn healthz(State(admin): State<Admin>) -> (StatusCode, Json<Health>) {
    let services = admin.services.snapshot();
    let ailments = admin.storage.ailments();
    let database = DatabaseHealth::of(admin.shared.as_ref()).await;
    let status = if admin.shutdown.is_cancelled() {
        Status::Draining
    } else if services.values().all(|state| *state == ServiceState::Up)
        && ailments.is_empty()
        && database.is_well()
    {
        Status::Ok
    } else {
        Status::Degraded
    };
    let storage = if ailments.is_empty() {
        Storage::Ok
    } else {
        Storage::Failing { failing: ailments }
    };
    let code = if status == Status::Ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let health = Health {
        status,
        version: env!("CARGO_PKG_VERSION"),
        uptime_ms: millis(admin.started.elapsed()),
        services,
        storage,
        database,
        jobs: admin.isolation.as_ref().map(|sandbox| sandbox.report()),
    };
    (code, Json(health))
}

/// `GET /metrics`: every metric in Prometheus's text format, its gauges read just now.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "admin",
    summary = "Metrics, for Prometheus to scrape",
    responses(
        (status = 200, description = "Every metric, in Prometheus's text exposition format 0.0.4", body = String,
            content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 500, description = "The metrics could not be rendered", body = ErrorShape),
    ),
)]
async fn read_metrics(State(admin): State<Admin>) -> Result<Response> {
    let text = admin
        .telemetry
        .render()
        .await
        .map_err(|error| Error::Internal(format!("rendering the metrics failed: {error}")))?;
    Ok(([(header::CONTENT_TYPE, METRICS_FORMAT)], text).into_response())
}

/// The content type of Prometheus's text exposition format.
const METRICS_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /openapi/{file}`: a listener's OpenAPI document, the same `warden openapi` prints.
#[utoipa::path(
    get,
    path = "/openapi/{file}",
    tag = "admin",
    summary = "A listener's OpenAPI document",
    params(("file" = String, Path, description = "The listener's document", example = "hashes.json",
        pattern = "^(hashes|registry|jobs|admin)\\.json$")),
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", body = Object, content_type = "application/json"),
        (status = 404, description = "No listener has that document", body = ErrorShape),
    ),
)]
async fn read_document(
    State(admin): State<Admin>,
    PathParams(file): PathParams<String>,
) -> Result<Response> {
    let document = Api::of_file(&file).and_then(|api| admin.documents.get(&api));
    let Some(document) = document else {
        return Err(Error::not_found(
            "no such document: hashes.json, registry.json, jobs.json and admin.json are",
        ));
    };
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        document.clone(),
    )
        .into_response())
}

/// What `/shutdown` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Draining {
    #[schema(value_type = String, example = "draining")]
    status: &'static str,
}

/// `/shutdown`: 200 at once, then the graceful drain; 403 unless the peer is on loopback.
#[utoipa::path(
    method(get, post),
    path = "/shutdown",
    tag = "shutdown",
    summary = "Shut warden down",
    description = "Answers at once, then drains as SIGTERM does: no new work, in-flight work \
        finishes, then warden exits 0. Accepted from loopback peers only; repeating it is harmless.",
    responses(
        (status = 200, description = "The drain has begun (or had already)", body = Draining),
        (status = 403, description = "The peer is not on loopback", body = ErrorShape),
    ),
)]
async fn request_shutdown(
    State(shutdown): State<CancellationToken>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<Json<Draining>> {
    if !peer.ip().to_canonical().is_loopback() {
        tracing::warn!(%peer, "refused a shutdown request from a non-loopback peer");
        return Err(Error::Forbidden(
            "shutdown is only accepted from loopback".into(),
        ));
    }
    if !shutdown.is_cancelled() {
        tracing::info!(%peer, "shutdown requested over HTTP");
        shutdown.cancel();
    }
    Ok(Json(Draining { status: "draining" }))
}
