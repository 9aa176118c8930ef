//! The admin listener: `GET /healthz` (services and storage), `GET /metrics` (Prometheus
//! text, see [`crate::telemetry`]) and `/shutdown`.
//!
//! `/shutdown` is also mounted on the hashes listener (its contract has it). It only starts
//! the same drain a SIGTERM starts, and only for loopback peers: anyone who can reach the port
//! from elsewhere must not be able to stop the service.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::clock::millis;
use crate::db::StorageHealth;
use crate::error::{Error, Result};
use crate::telemetry::Telemetry;

/// Whether a service is serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    pub shutdown: CancellationToken,
    /// The App's metrics, for `/metrics`.
    pub telemetry: Telemetry,
}

/// `/healthz`, `/metrics` and `/shutdown`.
pub fn router(admin: Admin) -> Router {
    let shutdown = shutdown_router(admin.shutdown.clone());
    let metrics = admin.telemetry.router();
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(admin)
        .merge(shutdown)
        .merge(metrics)
}

/// `GET` and `POST /shutdown`, for every listener whose contract has it.
pub fn shutdown_router(shutdown: CancellationToken) -> Router {
    Router::new()
        .route("/shutdown", get(request_shutdown).post(request_shutdown))
        .with_state(shutdown)
}

/// `GET /healthz`: 200 while every enabled service is up and every write path commits; 503
/// while draining or degraded (a service down, or writes failing: `storage` says which and
/// why).
async fn healthz(State(admin): State<Admin>) -> (StatusCode, Json<Value>) {
    let services = admin.services.snapshot();
    let ailments = admin.storage.ailments();
    let status = if admin.shutdown.is_cancelled() {
        "draining"
    } else if services.values().all(|state| *state == ServiceState::Up) && ailments.is_empty() {
        "ok"
    } else {
        "degraded"
    };
    let storage = if ailments.is_empty() {
        json!({ "status": "ok" })
    } else {
        json!({ "status": "failing", "failing": ailments })
    };
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeMs": millis(admin.started.elapsed()),
        "services": services,
        "storage": storage,
    });
    (code, Json(body))
}

/// `/shutdown`: 200 at once, then the graceful drain; 403 unless the peer is on loopback.
async fn request_shutdown(
    State(shutdown): State<CancellationToken>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<Json<Value>> {
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
    Ok(Json(json!({ "status": "draining" })))
}
