//! The HTTP edge that every service shares: extractors that turn a malformed path, query or
//! body into our own 400 or 413 (never axum's plain-text rejection), and the middleware that
//! gives axum's own empty error responses our JSON error shape.

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{FromRequest as _, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorBody, Result};

/// Reads a whole request body under the route's `DefaultBodyLimit` of `limit` bytes: 413 past
/// it, 400 if it cannot be read.
pub async fn read_body(request: Request, limit: usize) -> Result<Bytes> {
    Bytes::from_request(request, &())
        .await
        .map_err(|rejection| body_error(rejection.status(), limit))
}

/// The error for a body that could not be read, from the status axum gave it.
pub fn body_error(status: StatusCode, limit: usize) -> Error {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        Error::PayloadTooLarge { limit }
    } else {
        Error::BadRequest("the request body could not be read".into())
    }
}

/// `Path`, but a path that cannot be decoded (bad percent-encoding, wrong arity) is our 400.
#[derive(Debug)]
pub struct PathParams<T>(pub T);

impl<T, S> FromRequestParts<S> for PathParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(params)| Self(params))
            .map_err(|_| Error::BadRequest("the path could not be decoded".into()))
    }
}

/// The query string decoded into `T` (absent reads as empty); anything that does not decode,
/// an unknown key included where `T` denies them, is our 400 saying why.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        serde_urlencoded::from_str(parts.uri.query().unwrap_or(""))
            .map(Self)
            .map_err(|error| Error::BadRequest(format!("bad query string: {error}")))
    }
}

/// Middleware: gives the JSON error shape to error responses that axum itself produced with
/// an empty body (unknown path, 405 with its `Allow` header), keeping their headers.
pub async fn fill_empty_error_bodies(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_empty = response.body().size_hint().exact() == Some(0);
    if !(status.is_client_error() || status.is_server_error()) || !is_empty {
        return response;
    }
    let message = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase();
    let (mut parts, _) = response.into_parts();
    let body = match serde_json::to_vec(&ErrorBody { error: &message }) {
        Ok(body) => body,
        Err(_) => return Response::from_parts(parts, Body::empty()),
    };
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}
