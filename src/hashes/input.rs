//! Reading the password of `POST /hash` from a urlencoded form, a multipart form or JSON.
//!
//! Error messages describe the shape that was expected and never echo the body: whatever a
//! client sent might be a password.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{StatusCode, header};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::http::{body_error, read_body};

/// The most a `POST /hash` body may weigh; a password form needs far less.
pub const BODY_LIMIT: usize = 8 * 1024;

/// A password as the client sent it. Deliberately not `Debug`, so it cannot reach a log.
pub struct Password(Vec<u8>);

impl Password {
    /// The password's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

#[derive(Deserialize)]
struct PasswordField {
    password: Option<String>,
}

/// Reads the `password` field of the request body, whatever its supported content type.
pub async fn read_password(request: Request) -> Result<Password> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            value
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let password = match content_type.as_deref() {
        // curl -d and HTML forms send this; a body without a type is read the same way.
        None | Some("application/x-www-form-urlencoded") => {
            let body = body_bytes(request).await?;
            serde_urlencoded::from_bytes::<PasswordField>(&body)
                .map_err(|_| bad("body must be a form with one `password` field"))?
                .password
                .map(String::into_bytes)
        }
        Some("multipart/form-data") => multipart_password(request).await?,
        Some(json) if json == "application/json" || json.ends_with("+json") => {
            let body = body_bytes(request).await?;
            serde_json::from_slice::<PasswordField>(&body)
                .map_err(|_| bad("body must be a JSON object with a string `password`"))?
                .password
                .map(String::into_bytes)
        }
        Some(_) => {
            return Err(Error::UnsupportedMediaType(
                "send the password as application/x-www-form-urlencoded, \
                 multipart/form-data or application/json"
                    .into(),
            ));
        }
    };
    match password {
        None => Err(bad("missing `password`")),
        Some(password) if password.is_empty() => Err(bad("`password` must not be empty")),
        Some(password) => Ok(Password(password)),
    }
}

async fn body_bytes(request: Request) -> Result<Bytes> {
    read_body(request, BODY_LIMIT).await
}

async fn multipart_password(request: Request) -> Result<Option<Vec<u8>>> {
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|_| bad("multipart body has no valid boundary"))?;
    let mut password = None;
    loop {
        let field = form
            .next_field()
            .await
            .map_err(|error| too_large_or_bad(error.status()))?;
        let Some(field) = field else { break };
        if field.name() != Some("password") {
            continue;
        }
        if password.is_some() {
            return Err(bad("more than one `password` field"));
        }
        let bytes = field
            .bytes()
            .await
            .map_err(|error| too_large_or_bad(error.status()))?;
        password = Some(bytes.to_vec());
    }
    Ok(password)
}

fn too_large_or_bad(status: StatusCode) -> Error {
    body_error(status, BODY_LIMIT)
}

fn bad(message: &str) -> Error {
    Error::BadRequest(message.to_owned())
}
