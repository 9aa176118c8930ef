//! The one error type HTTP handlers return, and the JSON shape every error takes.
//!
//! Clients see `{"error": "<message>"}` with the right status. A client error says what was
//! wrong with the request; a server error says only what kind of fault it was: its detail
//! goes to the log, never to the client.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// How long a caller refused for a full queue is asked to wait. A place frees up when one of
/// its jobs starts or is stopped, which no one can foresee (it depends on every job ahead),
/// so this is a short constant: long enough that a client looping on 429 does not hammer the
/// writer, short enough that it does not leave a free worker idle for long.
pub const QUEUE_FULL_RETRY_AFTER: Duration = Duration::from_secs(2);

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a handler can answer with instead of success.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: the request is malformed; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no valid credential; answered with `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404, with `Retry-After` when the thing will exist later.
    #[error("{message}")]
    NotFound {
        message: String,
        retry_after: Option<Duration>,
    },
    /// 409: the request conflicts with the resource's state.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is over the route's limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// 415: the body's content type is not one the route reads.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 429: the caller already has as many jobs queued as one user may; answered with
    /// `Retry-After` ([`QUEUE_FULL_RETRY_AFTER`]).
    #[error(
        "you have {queued} jobs queued and one user may have at most {limit} \
         (--max-queued-per-user); try again once one has started or been stopped"
    )]
    TooManyQueued { queued: u64, limit: u64 },
    /// 503: warden is shutting down and takes no new work.
    #[error("warden is shutting down and accepts no new work")]
    Draining,
    /// The database could not do what was asked.
    #[error(transparent)]
    Storage(#[from] StorageFault),
    /// 500: a bug or an unexpected fault; the detail is logged, not sent.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// 404 for something that does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound {
            message: message.into(),
            retry_after: None,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyQueued { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Draining => StatusCode::SERVICE_UNAVAILABLE,
            Self::Storage(fault) => fault.status(),
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::NotFound { retry_after, .. } => *retry_after,
            Self::Storage(StorageFault::Busy | StorageFault::Unreachable) => {
                Some(Duration::from_secs(1))
            }
            Self::TooManyQueued { .. } => Some(QUEUE_FULL_RETRY_AFTER),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        let fault = StorageFault::of(&error);
        tracing::error!(%error, "database error");
        Self::Storage(fault)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            Self::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                "internal server error".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = (status, Json(ErrorBody { error: &message })).into_response();
        if matches!(self, Self::Unauthorized(_)) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(after) = self.retry_after() {
            // Retry-After is in whole seconds; round up so a client never comes back early.
            let seconds = after.as_millis().div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// A database fault, classified for the client; the writer shares one with a whole batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StorageFault {
    /// Another process held the database lock past the busy timeout (503, retry).
    #[error("the database is busy; try again")]
    Busy,
    /// The disk holding the database is full (507).
    #[error("the disk holding the database is full")]
    Full,
    /// The write path has stopped because warden is shutting down (503).
    #[error("warden is shutting down and accepts no new work")]
    Stopped,
    /// The writer of this write path has died; `/healthz` names it (503 until a restart).
    #[error("this kind of write cannot be stored until warden restarts")]
    WriterDied,
    /// The shared database (Postgres) cannot be reached now (503, retry).
    #[error("the database cannot be reached; try again")]
    Unreachable,
    /// Any other database failure (500).
    #[error("the database failed; nothing was changed")]
    Failed,
}

impl StorageFault {
    /// Classifies an sqlx error by SQLite's primary result code, or Postgres's SQLSTATE.
    pub fn of(error: &sqlx::Error) -> Self {
        const SQLITE_BUSY: i64 = 5;
        const SQLITE_LOCKED: i64 = 6;
        const SQLITE_FULL: i64 = 13;
        match error {
            sqlx::Error::PoolTimedOut => Self::Busy,
            sqlx::Error::PoolClosed => Self::Stopped,
            // Only a network engine fails on the socket: SQLite's I/O errors are result codes.
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) => Self::Unreachable,
            sqlx::Error::Database(db)
                if db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some() =>
            {
                Self::of_sqlstate(db.code().as_deref().unwrap_or(""))
            }
            sqlx::Error::Database(db) => {
                let code = db.code().and_then(|code| code.parse::<i64>().ok());
                // Extended result codes keep the primary code in the low byte.
                match code.map(|code| code & 0xff) {
                    Some(SQLITE_BUSY | SQLITE_LOCKED) => Self::Busy,
                    Some(SQLITE_FULL) => Self::Full,
                    _ => Self::Failed,
                }
            }
            _ => Self::Failed,
        }
    }

    /// Classifies a Postgres error by its SQLSTATE.
    fn of_sqlstate(code: &str) -> Self {
        match code {
            // disk_full
            "53100" => Self::Full,
            // out of memory, too many connections, a statement timeout, a lock timeout, a
            // serialization failure or a deadlock: the database is there but busy.
            "53200" | "53300" | "57014" | "55P03" | "40001" | "40P01" => Self::Busy,
            // the server shutting down, restarting, or not accepting connections yet; the
            // database refusing connections, gone, or refusing warden's account
            "57P01" | "57P02" | "57P03" | "55000" | "3D000" => Self::Unreachable,
            code if code.starts_with("08") || code.starts_with("28") => Self::Unreachable,
            _ => Self::Failed,
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Self::Busy | Self::Stopped | Self::WriterDied | Self::Unreachable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Full => StatusCode::INSUFFICIENT_STORAGE,
            Self::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The JSON shape of every error: `{"error": "<message>"}`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    /// What went wrong, for a person to read.
    pub error: &'a str,
}
