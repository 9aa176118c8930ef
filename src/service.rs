//! The one shape every service has: started from a [`Context`] and its own settings, then
//! its routes, which the supervisor both serves on the service's listener and describes in
//! that listener's OpenAPI document.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use utoipa_axum::router::OpenApiRouter;

use crate::clock::Clock;
use crate::db::{Database, SharedDatabase};
use crate::telemetry::Telemetry;

/// What the supervisor hands every service it starts.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The node's own SQLite database.
    pub db: &'a Database,
    /// The Postgres that many nodes share, when `--database` names one: the hash service
    /// and the registry keep their state there instead.
    pub shared: Option<&'a SharedDatabase>,
    /// Tracks every task a service spawns; the supervisor waits on it while draining.
    pub tasks: &'a TaskTracker,
    /// Cancelled when the drain begins; a service's loops end on it.
    pub shutdown: &'a CancellationToken,
    /// Where "now" comes from.
    pub clock: &'a Clock,
    /// The App's metrics: a service registers its handles and scrape hooks here.
    pub telemetry: &'a Telemetry,
}

/// A service of warden: its state, how it starts, and its routes.
pub trait Service: Clone + Send + Sync + 'static {
    /// The service's name, as `/healthz` and the logs show it.
    const NAME: &'static str;
    /// What the operator sets for it.
    type Settings: Send;
    /// Why it could not start.
    type StartError: std::error::Error + Send;

    /// Starts the service's writers and background tasks (tracked by `context.tasks`) and
    /// returns its state.
    fn start(
        context: Context<'_>,
        settings: Self::Settings,
    ) -> impl Future<Output = Result<Self, Self::StartError>> + Send;

    /// The service's routes, each with its API description (`#[utoipa::path]`), so that what
    /// a listener serves and what its OpenAPI document says come from the same list.
    fn routes() -> OpenApiRouter<Self>;
}
