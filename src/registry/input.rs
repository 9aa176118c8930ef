//! What a heartbeat brings: the group and id of its path and the meta of its body, checked
//! against the contract's rules before anything is stored.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::META_LIMIT;
use crate::error::{Error, ErrorBody, Result};

/// The meta a heartbeat body carries: `None` for an empty body; the object under `"meta"`
/// if there is one; otherwise the whole body object. Anything but a JSON object is a 400.
pub fn meta_of(body: &[u8]) -> Result<Option<String>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let not_an_object = || Error::BadRequest("the body must be a JSON object (or empty)".into());
    let Value::Object(mut body) =
        serde_json::from_slice::<Value>(body).map_err(|_| not_an_object())?
    else {
        return Err(not_an_object());
    };
    let meta = match body.remove("meta") {
        Some(Value::Object(meta)) => meta,
        Some(other) => {
            body.insert("meta".into(), other);
            body
        }
        None => body,
    };
    serde_json::to_string(&meta)
        .map(Some)
        .map_err(|error| Error::Internal(error.to_string()))
}

/// 400 unless `group` is 1–64 of `[A-Za-z0-9._-]` and `id` 1–128 of `[A-Za-z0-9._:-]`.
pub fn check_names(group: &str, id: Option<&str>) -> Result<()> {
    let valid = |name: &str, max: usize, extra: &[u8]| {
        (1..=max).contains(&name.len())
            && name.bytes().all(|byte| {
                byte.is_ascii_alphanumeric() || b"._-".contains(&byte) || extra.contains(&byte)
            })
    };
    if !valid(group, 64, b"") {
        return Err(Error::BadRequest(
            "group must be 1 to 64 characters of A-Z a-z 0-9 . _ -".into(),
        ));
    }
    if let Some(id) = id
        && !valid(id, 128, b":")
    {
        return Err(Error::BadRequest(
            "id must be 1 to 128 characters of A-Z a-z 0-9 . _ : -".into(),
        ));
    }
    Ok(())
}

/// 413 for a meta over [`META_LIMIT`]; its body may well be within [`BODY_LIMIT`].
pub fn meta_too_large() -> Response {
    let error =
        format!("the meta is larger than the limit of {META_LIMIT} bytes (as compact JSON text)");
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        Json(ErrorBody { error: &error }),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        assert!(check_names("particle-detector", Some("e335175a-eace:4a74.b99c_c6")).is_ok());
        assert!(check_names(&"g".repeat(64), Some(&"i".repeat(128))).is_ok());
        assert!(check_names(&"g".repeat(65), None).is_err());
        assert!(check_names("a", Some(&"i".repeat(129))).is_err());
        assert!(check_names("", None).is_err());
        assert!(check_names("a:b", None).is_err(), "no colon in a group");
        assert!(check_names("a", Some("")).is_err());
        assert!(check_names("a b", None).is_err());
        assert!(check_names("grüße", None).is_err());
    }

    #[test]
    fn meta_is_the_wrapped_object_or_the_whole_body() {
        assert_eq!(meta_of(b"").unwrap(), None);
        assert_eq!(meta_of(b" \n").unwrap(), None);
        assert_eq!(
            meta_of(br#"{"meta":{"foo":1},"x":2}"#).unwrap().unwrap(),
            r#"{"foo":1}"#
        );
        assert_eq!(meta_of(br#"{"foo":1}"#).unwrap().unwrap(), r#"{"foo":1}"#);
        assert_eq!(meta_of(br#"{"meta":5}"#).unwrap().unwrap(), r#"{"meta":5}"#);
        for bad in [&b"[1]"[..], b"5", b"\"s\"", b"null", b"{", b"nope"] {
            assert!(meta_of(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
