//! The supervisor: builds every enabled service, binds one listener each, serves them, and
//! runs the drain.
//!
//! [`App::build`] takes the data-directory lock, opens and migrates the database and binds
//! every listener (port 0 works; [`App::hashes_addr`] reads the bound address back), so a
//! test starts exactly what `warden serve` starts. [`App::run_until_stopped`] serves until the
//! shutdown token is cancelled (SIGTERM, SIGINT or `/shutdown`), then drains in order:
//! stop accepting, answer 503 to anything new, let in-flight requests and the writer queues
//! finish, checkpoint the WAL, and last close the admin listener, which answers `draining`
//! until then. A connection that waits on its client gets the close grace (a quarter of the
//! drain timeout, at most 5 s) once the drain has begun, so a client that will not take its
//! response cannot make the drain time out; the writers finish after every connection is
//! gone, so every acknowledged write is committed before the run ends.

mod connections;
mod deadline;
mod host;
mod listeners;
pub mod openapi;
mod reports;
mod request_ids;
mod signals;
mod socket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::middleware;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Admin, ServiceBoard, ServiceState};
use crate::config::{Config, JobCgroups, JobsTls};
use crate::db::{DataDirLock, Database, LockError, PgOpenError, SharedDatabase, lock_data_dir};
use crate::error::StorageFault;
use crate::hashes::{HashSettings, Hashes};
use crate::jobs::sandbox::{self, Sandbox, SandboxSettings};
use crate::jobs::{JobSettings, Jobs};
use crate::registry::{self, Registry, RegistrySettings};
use crate::security::pki::PkiError;
use crate::security::tls::TlsError;
use crate::service::{Context, Service};
use crate::telemetry::{Telemetry, TlsRefusals};
use connections::Limits;
use host::{jobs_tls, make_room_for_connections, max_db_size};
use listeners::{Transport, bind, refuse_when_draining, serve_listener, with_common_layers};

/// How long the database gets to close after a drain that timed out.
const CLOSE_AFTER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest close grace: how long, once the drain has begun, a connection may still wait
/// on its client (see `connections.rs`).
const CLOSE_GRACE_MAX: Duration = Duration::from_secs(5);

/// Why warden could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot open the database {path}: {source}")]
    Database {
        path: std::path::PathBuf,
        source: sqlx::Error,
    },
    #[error("the shared database: {0}")]
    SharedDatabase(#[from] PgOpenError),
    #[error(transparent)]
    Registry(#[from] registry::StartError),
    #[error("cannot start the job runner: {0}")]
    Jobs(#[from] StorageFault),
    #[error("cannot make the development PKI: {0}")]
    Pki(#[from] PkiError),
    #[error("cannot set up TLS on the jobs listener: {0}")]
    Tls(#[from] TlsError),
    /// A job isolation setting cannot work on this host (exit code 2, as for a bad setting).
    #[error("cannot isolate jobs: {0}")]
    Sandbox(String),
    #[error("cannot write the API documents: {0}")]
    Documents(#[from] serde_json::Error),
    #[error("cannot listen for {service} on {addr}: {source}")]
    Bind {
        service: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl From<std::convert::Infallible> for StartError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// Why a run did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("in-flight work did not finish within the drain timeout of {0:?}; it was cut short")]
    DrainTimedOut(Duration),
}

/// A service's router, bound to its listener but not yet serving.
struct BoundService {
    name: &'static str,
    listener: TcpListener,
    router: Router,
    /// Present when the listener speaks TLS (the jobs listener with `--jobs-tls on`).
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// A warden whose listeners are bound and whose database is open, ready to run.
pub struct App {
    _lock: DataDirLock,
    config: Config,
    db: Database,
    /// The Postgres of the hash service and the registry, when `--database` names one.
    shared: Option<SharedDatabase>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    services: Vec<BoundService>,
    admin: Admin,
    admin_listener: TcpListener,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("data_dir", &self.config.data_dir)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Locks the data directory, opens and migrates the database, starts each enabled
    /// service's state and binds its listener. Nothing is served until
    /// [`App::run_until_stopped`].
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let lock = lock_data_dir(&config.data_dir)?;
        let db = Database::open_with(&config.data_dir, config.sync, config.busy_timeout)
            .await
            .map_err(|source| StartError::Database {
                path: config.database_path(),
                source,
            })?;
        let shutdown = CancellationToken::new();
        // If anything below fails, the tasks already started see the token cancelled and end.
        let stop_on_error = shutdown.clone().drop_guard();
        let tasks = TaskTracker::new();
        // This App's own recorder: Apps in one process (tests) never share a metric.
        let telemetry = Telemetry::new();
        db.report_sizes(&telemetry);
        let shared = match config.database.shared() {
            Some(settings) if !(config.no_hashes && config.no_registry) => {
                Some(SharedDatabase::open(&settings, db.health().clone()).await?)
            }
            _ => None,
        };

        let context = Context {
            db: &db,
            shared: shared.as_ref(),
            tasks: &tasks,
            shutdown: &shutdown,
            clock: &config.clock,
            telemetry: &telemetry,
        };
        let mut services = Vec::new();
        if !config.no_hashes {
            let settings = HashSettings {
                delay: config.hash_delay,
                retention: config.hash_retention,
                purge_every: config.purge_every,
            };
            let mut hashes =
                bind_service::<Hashes>(context, config.hashes_addr, settings, None).await?;
            // The hash contract has its own `/shutdown`, which answers even while draining.
            hashes.router = hashes.router.merge(Router::from(
                admin::shutdown_routes().with_state(shutdown.clone()),
            ));
            services.push(hashes);
        }
        if !config.no_registry {
            let settings = RegistrySettings {
                ttl: config.instance_ttl,
                purge_every: config.purge_every,
            };
            services.push(
                bind_service::<Registry>(context, config.registry_addr, settings, None).await?,
            );
        }
        let mut isolation = None;
        if !config.no_jobs {
            let tls = match config.jobs_tls {
                JobsTls::On => Some(jobs_tls(&config)?),
                JobsTls::Off => None,
            };
            let sandbox = Sandbox::set_up(SandboxSettings {
                job_user: config.job_user.clone(),
                cgroups: config.job_cgroups == JobCgroups::Auto,
                limits: sandbox::Limits::of_settings(
                    config.job_memory,
                    config.job_cpu,
                    config.job_pids,
                    config.job_timeout,
                ),
                data_dir: config.data_dir.clone(),
                spawner: config.job_spawner.clone(),
            })
            .await
            .map_err(StartError::Sandbox)?;
            let sandbox = Arc::new(sandbox);
            isolation = Some(sandbox.clone());
            let settings = JobSettings {
                sandbox,
                workers: config.job_workers(),
                stop_grace: config.job_stop_grace,
                output_limit: config.job_output_limit,
                max_db_bytes: max_db_size(&config, &db).await,
                retention: config.job_retention.window(),
                purge_every: config.purge_every,
                max_queued_per_user: config.max_queued_per_user,
            };
            services.push(bind_service::<Jobs>(context, config.jobs_addr, settings, tls).await?);
        }

        let admin = Admin {
            started: Instant::now(),
            services: ServiceBoard::default(),
            storage: db.health().clone(),
            shared: shared.clone(),
            shutdown: shutdown.clone(),
            documents: Arc::new(openapi::documents()?),
            isolation,
            telemetry,
        };
        let admin_listener = bind("admin", config.admin_addr).await?;
        stop_on_error.disarm();
        Ok(Self {
            _lock: lock,
            config,
            db,
            shared,
            shutdown,
            tasks,
            services,
            admin,
            admin_listener,
        })
    }

    /// The bound address of the hash service, if it is enabled.
    pub fn hashes_addr(&self) -> Option<SocketAddr> {
        self.local_addr("hashes")
    }

    /// The bound address of the registry, if it is enabled.
    pub fn registry_addr(&self) -> Option<SocketAddr> {
        self.local_addr("registry")
    }

    /// The bound address of the job runner, if it is enabled.
    pub fn jobs_addr(&self) -> Option<SocketAddr> {
        self.local_addr("jobs")
    }

    /// The bound address of the admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.config.admin_addr)
    }

    /// The open database, for tests and drills that need to reach under the API (e.g. to cap
    /// its size with [`Database::limit_pages`]).
    pub fn database(&self) -> Database {
        self.db.clone()
    }

    /// The token whose cancellation starts the drain; SIGTERM and `/shutdown` cancel it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.services
            .iter()
            .find(|service| service.name == name)
            .and_then(|service| service.listener.local_addr().ok())
    }

    /// Serves every listener until the shutdown token is cancelled, then drains.
    pub async fn run_until_stopped(self) -> Result<(), RunError> {
        let Self {
            _lock,
            config,
            db,
            shared,
            shutdown,
            tasks,
            services,
            admin,
            admin_listener,
        } = self;

        let limits = Limits {
            header_timeout: config.header_timeout,
            body_timeout: config.body_timeout,
            idle_timeout: config.idle_timeout,
            max_connections: config.max_connections,
            close_grace: close_grace(config.drain_timeout),
        };
        make_room_for_connections((services.len() + 1).saturating_mul(limits.max_connections));
        let telemetry = admin.telemetry.clone();
        telemetry.keep_up(&tasks, shutdown.clone());
        for BoundService {
            name,
            listener,
            router,
            tls,
        } in services
        {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(service = name, %addr, "listening");
            }
            admin.services.set(name, ServiceState::Up);
            let board = admin.services.clone();
            let transport = tls.map_or(Transport::Plain, |config| Transport::Tls {
                config,
                refusals: TlsRefusals::new(&telemetry, name),
            });
            let router = with_common_layers(router, name, &telemetry);
            let served =
                serve_listener(name, listener, router, transport, limits, shutdown.clone());
            tasks.spawn(async move {
                served.await;
                board.set(name, ServiceState::Down);
            });
        }

        if let Ok(addr) = admin_listener.local_addr() {
            tracing::info!(service = "admin", %addr, "listening");
        }
        let admin_stop = CancellationToken::new();
        let shutdown_routes = admin::shutdown_routes().with_state(admin.shutdown.clone());
        let admin_router = admin::routes().with_state(admin).merge(shutdown_routes);
        let admin_router = with_common_layers(admin_router.into(), "admin", &telemetry);
        let admin_server = tokio::spawn(serve_listener(
            "admin",
            admin_listener,
            admin_router,
            Transport::Plain,
            limits,
            admin_stop.clone(),
        ));

        shutdown.cancelled().await;
        tracing::info!("draining: no new work; finishing in-flight requests and writes");
        tasks.close();
        let drained = tokio::time::timeout(config.drain_timeout, tasks.wait())
            .await
            .is_ok();
        let close = async {
            db.close().await;
            if let Some(shared) = &shared {
                shared.close().await;
            }
        };
        if drained {
            close.await;
        } else if tokio::time::timeout(CLOSE_AFTER_TIMEOUT, close)
            .await
            .is_err()
        {
            tracing::error!("the database did not close after the drain timed out");
        }
        admin_stop.cancel();
        if let Err(error) = admin_server.await {
            tracing::error!(%error, "admin listener failed");
        }
        if drained {
            tracing::info!("stopped cleanly");
            Ok(())
        } else {
            Err(RunError::DrainTimedOut(config.drain_timeout))
        }
    }
}

/// Binds service `S`'s listener at `addr`, then starts it: a port in use fails before any
/// of the service's tasks exist. Its router refuses new work once the drain has begun.
async fn bind_service<S: Service>(
    context: Context<'_>,
    addr: SocketAddr,
    settings: S::Settings,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<BoundService, StartError>
where
    StartError: From<S::StartError>,
{
    let listener = bind(S::NAME, addr).await?;
    let service = S::start(context, settings).await?;
    let router = Router::from(S::routes().with_state(service)).layer(
        middleware::from_fn_with_state(context.shutdown.clone(), refuse_when_draining),
    );
    Ok(BoundService {
        name: S::NAME,
        listener,
        router,
        tls,
    })
}

/// How long, once the drain has begun, a connection may still wait on its client: a quarter
/// of the drain timeout, at most [`CLOSE_GRACE_MAX`], so that the writers and the jobs still
/// have most of the drain after the last connection is gone.
fn close_grace(drain_timeout: Duration) -> Duration {
    (drain_timeout / 4).min(CLOSE_GRACE_MAX)
}

/// Builds and runs warden as `warden serve` does: SIGTERM and SIGINT start the drain.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    // Listening for the signals starts here, before any listener is announced: a SIGTERM sent
    // as soon as warden says it listens must drain it, not kill it.
    let signals = signals::listen();
    let app = App::build(config).await?;
    tokio::spawn(signals::drain_on_signal(app.shutdown_token(), signals));
    Ok(app.run_until_stopped().await?)
}

/// Why `warden serve` failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Run(#[from] RunError),
}

impl ServeError {
    /// A setting cannot work here: the operator must change it (exit code 2), not retry.
    pub fn is_setting(&self) -> bool {
        matches!(self, Self::Start(StartError::Sandbox(_)))
    }
}
