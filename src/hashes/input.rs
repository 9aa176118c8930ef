//! Reading the password of `POST /hash` from a urlencoded form, a multipart form or JSON.
//!
//! The password is the exact bytes the client sent: a urlencoded value is percent-decoded to
//! bytes (`+` is a space) and a multipart field is taken as it is, neither decoded as UTF-8.
//! So `%FF` (or a raw `0xFF` byte) is the byte 0xFF, and hashes unlike `%EF%BF%BD`, the
//! replacement character a lossy decoding would have made of it. A JSON string is UTF-8 by
//! definition, so a JSON body that is not UTF-8 is refused.
//!
//! Error messages describe the shape that was expected and never echo the body: whatever a
//! client sent might be a password.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{StatusCode, header};
use serde::Deserialize;
use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};

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

/// The body `POST /hash` reads, as its API description shows it.
#[derive(utoipa::ToSchema)]
#[expect(
    dead_code,
    reason = "only its API description is used: the body is read by hand"
)]
pub struct PasswordForm {
    /// The password, as bytes: in a form, percent-encoded bytes are taken as they are.
    #[schema(min_length = 1)]
    password: String,
}

/// The multipart form `POST /hash` reads, as its API description shows it: a
/// [`PasswordForm`] whose field names hold no control character but tab, since a multipart
/// part's headers, which carry the names, cannot.
pub struct PasswordMultipart;

impl utoipa::PartialSchema for PasswordMultipart {
    fn schema() -> RefOr<Schema> {
        let password = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .description(Some("The password, as the bytes sent"));
        let name = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[^\\u0000-\\u0008\\u000a-\\u001f\\u007f]*$"));
        RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property("password", password)
                .required("password")
                .property_names(Some(name))
                .build(),
        ))
    }
}

impl utoipa::ToSchema for PasswordMultipart {}

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
            form_password(&body_bytes(request).await?)?
        }
        Some("multipart/form-data") => multipart_password(request).await?,
        Some(json) if json == "application/json" || json.ends_with("+json") => {
            let body = body_bytes(request).await?;
            // serde_json refuses a body that is not UTF-8, as JSON requires.
            serde_json::from_slice::<PasswordField>(&body)
                .map_err(|_| bad("body must be a UTF-8 JSON object with a string `password`"))?
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

/// The `password` of a urlencoded form, as bytes: each `name=value` pair is split on `&` and
/// the first `=`, `+` read as a space, and `%XX` as the byte XX (a `%` not followed by two
/// hex digits stays itself, as browsers send it). Other fields are ignored.
fn form_password(body: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut password = None;
    for pair in body.split(|&byte| byte == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = match pair.iter().position(|&byte| byte == b'=') {
            Some(equals) => (&pair[..equals], &pair[equals + 1..]),
            None => (pair, &[][..]),
        };
        if form_decode(name) != b"password" {
            continue;
        }
        if password.is_some() {
            return Err(bad("more than one `password` field"));
        }
        password = Some(form_decode(value));
    }
    Ok(password)
}

/// One urlencoded name or value, decoded to the bytes it stands for.
fn form_decode(encoded: &[u8]) -> Vec<u8> {
    let spaced: Vec<u8> = encoded
        .iter()
        .map(|&byte| if byte == b'+' { b' ' } else { byte })
        .collect();
    percent_encoding::percent_decode(&spaced).collect()
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
        // The field's bytes as sent, whatever its charset says.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn password(body: &[u8]) -> Option<Vec<u8>> {
        form_password(body).ok().flatten()
    }

    #[test]
    fn a_form_value_decodes_to_the_bytes_it_encodes() {
        assert_eq!(password(b"password=%FF"), Some(vec![0xFF]));
        assert_eq!(password(b"password=\xFF"), Some(vec![0xFF]));
        assert_eq!(
            password(b"password=%EF%BF%BD"),
            Some(vec![0xEF, 0xBF, 0xBD])
        );
        assert_eq!(password(b"password=a+b%20c%2B"), Some(b"a b c+".to_vec()));
        assert_eq!(password(b"password=100%"), Some(b"100%".to_vec()));
        assert_eq!(password(b"password=a=b"), Some(b"a=b".to_vec()));
    }

    #[test]
    fn the_password_field_is_found_among_others_by_its_decoded_name() {
        assert_eq!(password(b"user=bob&&pass%77ord=x&z"), Some(b"x".to_vec()));
        assert_eq!(password(b"user=bob"), None);
        assert_eq!(password(b""), None);
        assert_eq!(password(b"password"), Some(Vec::new()));
        assert!(form_password(b"password=a&password=b").is_err());
    }
}
