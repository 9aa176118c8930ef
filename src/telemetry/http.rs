//! Request counts and latencies of one listener, by method, matched route and status.
//!
//! The route is axum's [`MatchedPath`] template (`/hash/{id}`), or `(unmatched)`: never the
//! path a client sent. A method outside the standard ones is `other`. So the label sets are
//! bounded by the routes, methods and statuses warden has, and each one's handles are
//! registered once and then found with one map lookup that allocates nothing.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::MatchedPath;
use axum::http::{Method, Request};
use axum::response::Response;
use metrics::{Counter, Histogram, Label};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{HTTP_REQUEST_DURATION, HTTP_REQUESTS, Telemetry};

/// The route label of a request that matched no route.
const UNMATCHED: &str = "(unmatched)";

/// One listener's request metrics, which [`RecordRequestsLayer`] records. Clone freely.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    inner: Arc<Listener>,
}

#[derive(Debug)]
struct Listener {
    telemetry: Telemetry,
    name: &'static str,
    /// By route, then by method and status. Two levels so that a lookup borrows the route
    /// (`&str`) instead of allocating a key.
    handles: RwLock<HashMap<Box<str>, ByAnswer>>,
}

/// One route's handles by method and status.
type ByAnswer = HashMap<(&'static str, u16), Handles>;

#[derive(Debug)]
struct Handles {
    requests: Counter,
    duration: Histogram,
}

impl HttpMetrics {
    /// The request metrics of listener `name`, registered on `telemetry` as they occur.
    fn new(telemetry: &Telemetry, name: &'static str) -> Self {
        Self {
            inner: Arc::new(Listener {
                telemetry: telemetry.clone(),
                name,
                handles: RwLock::default(),
            }),
        }
    }

    /// Counts one answered request and its latency.
    fn record(&self, route: &str, method: &'static str, status: u16, started: Instant) {
        let elapsed = started.elapsed();
        let listener = &*self.inner;
        {
            // Every write is one insert: a panic elsewhere cannot leave the map half-written.
            let handles = listener
                .handles
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(handles) = handles
                .get(route)
                .and_then(|by_answer| by_answer.get(&(method, status)))
            {
                handles.requests.increment(1);
                handles.duration.record(elapsed);
                return;
            }
        }
        // The first request of its kind: register its handles (another request may have
        // just done so; the recorder hands back the same ones).
        let labels = vec![
            Label::from_static_parts("listener", listener.name),
            Label::from_static_parts("method", method),
            Label::new("route", route.to_owned()),
            Label::new("status", status.to_string()),
        ];
        let handles = Handles {
            requests: listener.telemetry.counter(HTTP_REQUESTS, labels.clone()),
            duration: listener.telemetry.histogram(HTTP_REQUEST_DURATION, labels),
        };
        handles.requests.increment(1);
        handles.duration.record(elapsed);
        listener
            .handles
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(route.into())
            .or_default()
            .insert((method, status), handles);
    }
}

/// The layer that counts each request of a listener once its answer's head is ready, with
/// the time it took. A layer of its own rather than `middleware::from_fn`: it sits on every
/// request of every listener, so it boxes nothing and allocates nothing.
#[derive(Clone, Debug)]
pub struct RecordRequestsLayer {
    metrics: HttpMetrics,
}

impl RecordRequestsLayer {
    /// Counts the requests of listener `name` on `telemetry`.
    pub fn new(telemetry: &Telemetry, name: &'static str) -> Self {
        Self {
            metrics: HttpMetrics::new(telemetry, name),
        }
    }
}

impl<S> Layer<S> for RecordRequestsLayer {
    type Service = RecordRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RecordRequests {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`RecordRequestsLayer`] makes.
#[derive(Clone, Debug)]
pub struct RecordRequests<S> {
    inner: S,
    metrics: HttpMetrics,
}

impl<S, B> Service<Request<B>> for RecordRequests<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Recorded<S::Future>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let started = Instant::now();
        // A clone of the router's own `Arc<str>`: no allocation.
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = method_label(request.method());
        Recorded {
            answer: self.inner.call(request),
            pending: Some(Pending {
                metrics: self.metrics.clone(),
                route,
                method,
                started,
            }),
        }
    }
}

/// What is recorded once the answer is ready.
#[derive(Debug)]
struct Pending {
    metrics: HttpMetrics,
    route: Option<MatchedPath>,
    method: &'static str,
    started: Instant,
}

pin_project! {
    /// The answer of a [`RecordRequests`], recorded when it is ready.
    pub struct Recorded<F> {
        #[pin]
        answer: F,
        pending: Option<Pending>,
    }
}

impl<F, E> Future for Recorded<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = std::task::ready!(this.answer.poll(context));
        if let (Ok(response), Some(pending)) = (&answer, this.pending.take()) {
            let route = pending
                .route
                .as_ref()
                .map_or(UNMATCHED, MatchedPath::as_str);
            let status = response.status().as_u16();
            pending
                .metrics
                .record(route, pending.method, status, pending.started);
        }
        Poll::Ready(answer)
    }
}

/// The method as its label: a standard method's name, or `other` for any a client made up.
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_made_up_method_is_other() {
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        let made_up = Method::from_bytes(b"JOB-1234").unwrap();
        assert_eq!(method_label(&made_up), "other");
    }
}
