//! The delayed password-hash service: `POST /hash`, `GET /hash/{id}`, `GET /stats`.
//!
//! The SHA-512 is computed when the request arrives and recorded with
//! `ready_at_ms = now + delay`; `GET /hash/{id}` reveals it only from then on. So the delay is
//! exact under any load and across restarts, and the password itself is never stored.
//! A client gets its id only once the hash and the updated stats are committed together.
//! With `--hash-retention` a hash is deleted once it is that old (`retention.rs`).

pub mod client;
mod input;
mod retention;
mod store;

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use sha2::{Digest, Sha512};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::db::Writer;
use crate::error::{Error, Result};
use crate::http::PathParams;
use crate::openapi::{BodyFaults, ErrorShape, ServerFaults, WriteFaults};
use crate::service::{Context, Service};
use store::{HashStore, NewHash, received_before_ms};

/// The hash service's state: its writer, its store and the retention.
#[derive(Clone, Debug)]
pub struct Hashes {
    writer: Writer<NewHash, i64>,
    store: HashStore,
    retention: Option<Duration>,
}

/// The hash service's settings.
#[derive(Debug, Clone, Copy)]
pub struct HashSettings {
    /// How long after `POST /hash` the hash becomes readable.
    pub delay: Duration,
    /// How long after `POST /hash` the hash is deleted; `None` keeps it.
    pub retention: Option<Duration>,
    /// How often hashes past their retention are deleted.
    pub purge_every: Duration,
}

impl Service for Hashes {
    const NAME: &'static str = "hashes";
    type Settings = HashSettings;
    type StartError = std::convert::Infallible;

    /// Starts the service's writer and, with a retention, its purge job (both tracked by
    /// `context.tasks`; the purge stops when `context.shutdown` is cancelled).
    async fn start(context: Context<'_>, settings: HashSettings) -> Result<Self, Self::StartError> {
        let store = match context.shared {
            Some(shared) => HashStore::Postgres { db: shared.clone() },
            None => HashStore::Sqlite {
                db: context.db.clone(),
                clock: context.clock.clone(),
            },
        };
        if let Some(retention) = settings.retention {
            retention::start(
                store.clone(),
                retention,
                settings.purge_every,
                context.tasks,
                context.shutdown.clone(),
            );
        }
        Ok(Self {
            writer: store.writer(settings.delay, context.tasks, context.telemetry),
            store,
            retention: settings.retention,
        })
    }

    fn routes() -> OpenApiRouter<Self> {
        OpenApiRouter::new()
            .routes(routes!(create_hash))
            .routes(routes!(read_hash))
            .routes(routes!(read_stats))
            .layer(DefaultBodyLimit::max(input::BODY_LIMIT))
    }
}

/// `POST /hash`: 200 with the new id as plain text, once the hash is committed.
#[utoipa::path(
    post,
    path = "/hash",
    tag = "hashes",
    summary = "Hash a password",
    description = "Answers with the new hash's id at once; the hash is readable at `GET /hash/{id}` \
        from `--hash-delay` (5 s) later. Ids are 1, 2, 3 … in commit order and never reused (on a \
        shared Postgres: unique and increasing across nodes, in commit order per node, with a \
        gap after a failed commit). The \
        password is hashed as the exact bytes sent and is never stored. A body with no content \
        type is read as a urlencoded form.",
    request_body(
        description = "The `password` field, in any of these forms",
        content(
            (input::PasswordForm = "application/x-www-form-urlencoded"),
            (input::PasswordMultipart = "multipart/form-data"),
            (input::PasswordForm = "application/json"),
        ),
    ),
    responses(
        (
            status = 200,
            description = "The hash is committed; the body is its id",
            body = String,
            content_type = "text/plain; charset=utf-8",
            headers(("Location" = String, description = "Where the hash will be: `/hash/{id}`")),
            example = json!("1"),
        ),
        (status = 400, description = "No `password`, an empty one, or a body that is not the form its content type says", body = ErrorShape),
        (status = 415, description = "A content type other than a urlencoded form, a multipart form or JSON", body = ErrorShape),
        BodyFaults,
        ServerFaults,
        WriteFaults,
    ),
)]
async fn create_hash(State(hashes): State<Hashes>, request: Request) -> Result<Response> {
    // The handling time starts before the body is read: reading it is part of the work.
    let arrived = Instant::now();
    let password = input::read_password(request).await?;
    let sha512 = STANDARD.encode(Sha512::digest(password.as_bytes()));
    drop(password);
    let id = hashes.writer.submit(NewHash { sha512, arrived }).await?;
    let location = HeaderValue::from_str(&format!("/hash/{id}"))
        .map_err(|error| Error::Internal(error.to_string()))?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN)),
            (header::LOCATION, location),
        ],
        id.to_string(),
    )
        .into_response())
}

/// `GET /hash/{id}`: the base64 SHA-512 once ready; 404 with `Retry-After` until then, and a
/// plain 404 for an id never given or a hash past its retention (deleted or about to be).
#[utoipa::path(
    get,
    path = "/hash/{id}",
    tag = "hashes",
    summary = "Read a hash",
    params(("id" = String, Path, description = "The id `POST /hash` answered with", pattern = "^[0-9]+$")),
    responses(
        (
            status = 200,
            description = "base64 (standard, padded) of the password's SHA-512",
            body = String,
            content_type = "text/plain; charset=utf-8",
            example = json!("ZEHhWB65gUlzdVwtDQArEyx+KVLzp/aTaRaPlBzYRIFj6vjFdqEb0Q5B8zVKCZ0vKbZPZklJz0Fd7su2A+gf7Q=="),
        ),
        (status = 400, description = "The id is not a decimal number", body = ErrorShape),
        (
            status = 404,
            description = "No hash has that id (never given, or past `--hash-retention`), or it is not ready yet: then `Retry-After` says when it will be",
            body = ErrorShape,
            headers(("Retry-After" = u64, description = "Seconds until the hash is ready; only while it is not")),
        ),
        ServerFaults,
    ),
)]
async fn read_hash(
    State(hashes): State<Hashes>,
    PathParams(id): PathParams<String>,
) -> Result<Response> {
    let id = parse_id(&id)?;
    let hash = match id {
        Some(id) => hashes.store.find(id).await?,
        None => None,
    };
    let Some(hash) = hash.filter(|hash| {
        hashes.retention.is_none_or(|retention| {
            hash.received_at_ms >= received_before_ms(retention, hash.read_at_ms)
        })
    }) else {
        return Err(Error::not_found("no hash has that id"));
    };
    let wait_ms = hash.ready_at_ms.saturating_sub(hash.read_at_ms);
    if wait_ms > 0 {
        return Err(Error::NotFound {
            message: "that hash is not ready yet".into(),
            retry_after: Some(Duration::from_millis(wait_ms.unsigned_abs())),
        });
    }
    Ok(([(header::CONTENT_TYPE, TEXT_PLAIN)], hash.sha512).into_response())
}

/// Parses a path id: 400 unless it is decimal digits; `None` for a number too large to exist.
fn parse_id(id: &str) -> Result<Option<i64>> {
    if id.is_empty() || !id.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(Error::BadRequest(
            "hash id must be a positive decimal number".into(),
        ));
    }
    Ok(id.parse::<i64>().ok())
}

/// The body of `GET /stats`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Stats {
    /// Accepted `POST /hash` requests since the database was created.
    total: i64,
    /// Their mean handling time in whole microseconds (0 when there were none).
    average: i64,
}

/// `GET /stats`.
#[utoipa::path(
    get,
    path = "/stats",
    tag = "hashes",
    summary = "Count the hash requests",
    responses(
        (status = 200, description = "Every accepted `POST /hash` since the database was created", body = Stats),
        ServerFaults,
    ),
)]
async fn read_stats(State(hashes): State<Hashes>) -> Result<Json<Stats>> {
    let totals = hashes.store.totals().await?;
    let average = match totals.total {
        0 => 0,
        total => totals.handling_ns / total / 1_000,
    };
    Ok(Json(Stats {
        total: totals.total,
        average,
    }))
}

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_decimal_digits_only() {
        assert_eq!(parse_id("42").unwrap(), Some(42));
        assert_eq!(parse_id("99999999999999999999").unwrap(), None);
        for bad in ["", "-1", "+1", "1.5", "abc", " 1", "0x10"] {
            assert!(parse_id(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn the_contract_vector_hashes_as_documented() {
        let hash = STANDARD.encode(Sha512::digest(b"angryMonkey"));
        assert_eq!(
            hash,
            "ZEHhWB65gUlzdVwtDQArEyx+KVLzp/aTaRaPlBzYRIFj6vjFdqEb0Q5B8zVKCZ0vKbZPZklJz0Fd7su2A+gf7Q=="
        );
    }
}
