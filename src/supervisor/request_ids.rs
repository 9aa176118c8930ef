//! Request ids: `x-request-id`, the client's own when it is one plain token, a new one
//! otherwise, so one request can be followed through the logs. tower-http's layers set and
//! echo it (`listeners.rs` stacks them); what is here decides which ids are kept and makes the
//! others.
//!
//! Invariant: an id that reaches a log line is 1 to 128 of `A-Z a-z 0-9 . _ : -`, so it is
//! short and cannot pass for log syntax.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use tower_http::request_id::{MakeRequestId, RequestId};

/// The header that carries a request's id, echoed in its answer and kept in its log span.
pub(super) static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-chosen request id that is kept.
const REQUEST_ID_MAX: usize = 128;

/// Drops a client's `x-request-id` unless it is one plain token (1 to [`REQUEST_ID_MAX`] of
/// `A-Z a-z 0-9 . _ : -`), so that a new one is made: whatever reaches a log line is short and
/// cannot pass for log syntax.
pub(super) fn drop_unfit_request_ids(mut request: Request) -> Request {
    let fit = |id: &HeaderValue| {
        let id = id.as_bytes();
        (1..=REQUEST_ID_MAX).contains(&id.len())
            && id
                .iter()
                .all(|byte| byte.is_ascii_alphanumeric() || b"._:-".contains(byte))
    };
    let ids = request.headers().get_all(&REQUEST_ID);
    let keep = ids.iter().count() == 1 && ids.iter().all(fit);
    if !keep {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
}

/// Makes the ids of requests that came without a fit one: UUIDs (version 4 in form), one
/// random base per listener and a counter added to it, so that no request waits on the
/// kernel's random source. The counter never reaches the bits the version and variant
/// overwrite, so every id of a listener is distinct, and the random base keeps them apart from
/// every other listener's and run's.
#[derive(Clone, Debug)]
pub(super) struct RequestIds {
    base: u128,
    next: Arc<AtomicU64>,
}

impl RequestIds {
    pub(super) fn new() -> Self {
        Self {
            base: uuid::Uuid::new_v4().as_u128(),
            next: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let bytes = self.base.wrapping_add(u128::from(n)).to_be_bytes();
        let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
        let mut text = uuid::Uuid::encode_buffer();
        HeaderValue::from_str(id.hyphenated().encode_lower(&mut text))
            .ok()
            .map(RequestId::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_request_ids_are_distinct_version_4_uuids() {
        let mut ids = RequestIds::new();
        // The same base near the top of the counter's range too, where carries run far.
        let mut late = RequestIds {
            base: ids.base,
            next: Arc::new(AtomicU64::new(u64::MAX - 500)),
        };
        let request = axum::http::Request::new(());
        let mut seen = std::collections::HashSet::new();
        for made in [&mut ids, &mut late] {
            for _ in 0..500 {
                let id = made.make_request_id(&request).unwrap();
                let text = id.header_value().to_str().unwrap().to_owned();
                let uuid = uuid::Uuid::parse_str(&text).unwrap();
                assert_eq!(uuid.get_version_num(), 4, "{text}");
                assert!(seen.insert(text), "a request id came twice");
            }
        }
    }
}
