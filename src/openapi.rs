//! What the OpenAPI descriptions of every listener share: the error answers any route may
//! give, as response sets for `#[utoipa::path]`, so that each is described once, beside the
//! [`ErrorBody`] they all carry. The documents themselves are put together by the supervisor
//! (`supervisor/openapi.rs`) from the very routers its listeners serve.

use utoipa::IntoResponses;

use crate::error::ErrorBody;

/// [`ErrorBody`] as a `body = …` of `#[utoipa::path]` names it.
pub type ErrorShape = ErrorBody<'static>;

/// 500 and 503: what any route may answer, whatever it was asked.
#[derive(IntoResponses)]
pub enum ServerFaults {
    /// The database failed and nothing was changed, or warden met a fault of its own; the
    /// detail is in warden's log, never in the answer.
    #[response(status = 500)]
    Failed(ErrorShape),
    /// warden is draining and takes no new work (the connection is then closed), the database
    /// stayed locked past `--busy-timeout` (with `Retry-After`), or the writer of this kind of
    /// write has died (`/healthz` names it).
    #[response(
        status = 503,
        headers(("Retry-After" = u64, description = "Seconds to wait before trying again; sent when the database was busy"))
    )]
    Unavailable(ErrorShape),
}

/// 507: what any route that writes may answer.
#[derive(IntoResponses)]
pub enum WriteFaults {
    /// The disk holding the database is full; nothing was stored. Everything works again
    /// once there is room, without a restart.
    #[response(status = 507)]
    DiskFull(ErrorShape),
}

/// 408 and 413: what any route that reads a body may answer.
#[derive(IntoResponses)]
pub enum BodyFaults {
    /// The body did not arrive within `--body-timeout`; the connection is then closed.
    #[response(status = 408)]
    TooLate(ErrorShape),
    /// The body is larger than the route's limit.
    #[response(status = 413)]
    TooLarge(ErrorShape),
}

/// 401: what any route that needs a principal may answer.
#[derive(IntoResponses)]
pub enum AuthFaults {
    /// No credential, or one that fails: no client certificate over `--jobs-tls off` and no
    /// bearer token, a token that is malformed, expired or not signed by this warden, or a
    /// token naming another user than the client certificate.
    #[response(
        status = 401,
        headers(("WWW-Authenticate" = String, description = "Always `Bearer`"))
    )]
    Unauthenticated(ErrorShape),
}

/// A listener's API, as `warden openapi` names it and `/openapi/{name}.json` serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, utoipa::ToSchema)]
pub enum Api {
    /// `POST /hash`, `GET /hash/{id}`, `GET /stats`, `/shutdown`.
    Hashes,
    /// The heartbeat registry.
    Registry,
    /// The job runner (mutual TLS).
    Jobs,
    /// `/healthz`, `/shutdown`, `/metrics` and these documents.
    Admin,
}

impl Api {
    /// Every listener's API, in the order `warden serve` announces them.
    pub const ALL: [Self; 4] = [Self::Hashes, Self::Registry, Self::Jobs, Self::Admin];

    /// The listener's name, as the logs and `/healthz` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hashes => "hashes",
            Self::Registry => "registry",
            Self::Jobs => "jobs",
            Self::Admin => "admin",
        }
    }

    /// The API whose document is served as `file` (`hashes.json`, …).
    pub fn of_file(file: &str) -> Option<Self> {
        let name = file.strip_suffix(".json")?;
        Self::ALL.into_iter().find(|api| api.name() == name)
    }
}
