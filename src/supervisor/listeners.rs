//! The listeners: binding, the accept loop every listener runs (plain HTTP or mutual TLS),
//! and the layers every listener shares (the request span, the JSON shape of axum's own
//! errors, the 408 for a body that came too late, and the 503 that new requests get once the
//! drain has begun).
//!
//! Invariant: a listener never fails and never spins. It holds at most `--max-connections`
//! open: at the cap it stops accepting, so new clients wait in the kernel's backlog while the
//! open connections go on; an `accept()` that fails (out of file descriptors, say) is retried
//! after a pause that doubles up to a second. Warnings that could come once per connection
//! (a refused TLS handshake, a failed accept) are logged at most once per [`REPORT_EVERY`]
//! per listener, with how many there were and the last reason. What happens on each
//! connection is `connections.rs`'s.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::trace::TraceLayer;
use tracing::Span;

use super::StartError;
use super::connections::{BodyDeadline, Limits, grace_over, serve_connection};
use crate::error::{Error, ErrorBody};
use crate::http::fill_empty_error_bodies;
use crate::security::tls::identity_of;

/// How long a client gets to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one line per this long per listener for each kind of repeated warning.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);
/// How often a listener looks whether a held-back warning is due.
const REPORT_TICK: Duration = Duration::from_secs(1);
/// The first pause after a failed `accept()`; it doubles up to [`ACCEPT_PAUSE_MAX`].
const ACCEPT_PAUSE_FIRST: Duration = Duration::from_millis(10);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// How a listener's connections begin.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Plain HTTP.
    Plain,
    /// Mutual TLS: only a client with a verified certificate naming a valid user gets past
    /// the handshake.
    Tls(Arc<rustls::ServerConfig>),
}

/// Serves `router` on `listener` until `stop` is cancelled, then lets its connections end
/// (see `connections.rs` for how long each may take). Every request carries its peer
/// address (`ConnectInfo<SocketAddr>`) and, over TLS, the verified client identity.
pub async fn serve_listener(
    service: &'static str,
    listener: TcpListener,
    router: Router,
    transport: Transport,
    limits: Limits,
    stop: CancellationToken,
) {
    let acceptor = match transport {
        Transport::Plain => None,
        Transport::Tls(config) => Some(TlsAcceptor::from(config)),
    };
    let reports = Arc::new(Reports::new(service));
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut pause = ACCEPT_PAUSE_FIRST;
    let mut report_tick = tokio::time::interval(REPORT_TICK);
    report_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        // A place for the connection first: at the cap this waits, not accepting.
        let next = async {
            let place = open.clone().acquire_owned().await;
            (place, listener.accept().await)
        };
        let (place, accepted) = tokio::select! {
            () = stop.cancelled() => break,
            _ = report_tick.tick() => {
                reports.log_due();
                continue;
            }
            next = next => next,
        };
        // The semaphore is never closed.
        let Ok(place) = place else { break };
        let (tcp, peer) = match accepted {
            Ok(accepted) => {
                pause = ACCEPT_PAUSE_FIRST;
                accepted
            }
            // A client that gave up while waiting in the backlog: nothing is wrong here.
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                reports.failed_accept(&error);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
                continue;
            }
        };
        let (router, stop) = (router.clone(), stop.clone());
        match &acceptor {
            None => connections.spawn(async move {
                serve_connection(tcp, peer, None, router, limits, stop).await;
                drop(place);
            }),
            Some(acceptor) => {
                let (acceptor, reports) = (acceptor.clone(), reports.clone());
                connections.spawn(async move {
                    serve_tls(tcp, peer, acceptor, router, limits, stop, &reports).await;
                    drop(place);
                })
            }
        };
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    reports.log_rest();
}

/// Errors of one connection that `accept()` can return; the listener is fine.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

/// The handshake, then the connection with the client's identity. A refused handshake is
/// reported with the peer address and rustls's reason, never with key material.
async fn serve_tls(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
    reports: &Reports,
) {
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
    let stream = tokio::select! {
        handshake = handshake => match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                reports.refused_tls(peer, error.to_string());
                return;
            }
            Err(_) => {
                reports.refused_tls(peer, "the handshake timed out".to_owned());
                return;
            }
        },
        () = grace_over(stop.clone(), limits.close_grace) => return,
    };
    let Some(identity) = stream.get_ref().1.peer_certificates().and_then(identity_of) else {
        reports.refused_tls(peer, "its certificate names no valid user".to_owned());
        return;
    };
    serve_connection(stream, peer, Some(identity), router, limits, stop).await;
}

/// A listener's repeated warnings, each kind held to one line per [`REPORT_EVERY`].
#[derive(Debug)]
struct Reports {
    service: &'static str,
    refused_tls: Mutex<Tally>,
    failed_accepts: Mutex<Tally>,
}

impl Reports {
    fn new(service: &'static str) -> Self {
        Self {
            service,
            refused_tls: Mutex::default(),
            failed_accepts: Mutex::default(),
        }
    }

    fn refused_tls(&self, peer: SocketAddr, reason: String) {
        let report = lock(&self.refused_tls).record(Instant::now(), Some(peer), reason);
        if let Some(report) = report {
            self.log_refused_tls(&report);
        }
    }

    fn failed_accept(&self, error: &std::io::Error) {
        let report = lock(&self.failed_accepts).record(Instant::now(), None, error.to_string());
        if let Some(report) = report {
            self.log_failed_accepts(&report);
        }
    }

    /// Logs what was held back, if its interval is over.
    fn log_due(&self) {
        let now = Instant::now();
        if let Some(report) = lock(&self.refused_tls).due(now) {
            self.log_refused_tls(&report);
        }
        if let Some(report) = lock(&self.failed_accepts).due(now) {
            self.log_failed_accepts(&report);
        }
    }

    /// Logs whatever is still held back: the listener has stopped.
    fn log_rest(&self) {
        let now = Instant::now();
        if let Some(report) = lock(&self.refused_tls).rest(now) {
            self.log_refused_tls(&report);
        }
        if let Some(report) = lock(&self.failed_accepts).rest(now) {
            self.log_failed_accepts(&report);
        }
    }

    fn log_refused_tls(&self, report: &Report) {
        tracing::warn!(
            service = self.service,
            refused = report.count,
            last_peer = %report.peer.map_or_else(String::new, |peer| peer.to_string()),
            last_reason = %report.reason,
            "refused TLS connections",
        );
    }

    fn log_failed_accepts(&self, report: &Report) {
        tracing::warn!(
            service = self.service,
            failures = report.count,
            last_error = %report.reason,
            "cannot accept connections; retrying",
        );
    }
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    // Every update is a few plain assignments: a panic cannot leave one half done.
    tally.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts one kind of event: the first after a quiet interval is reported at once, later
/// ones are counted and reported together when [`REPORT_EVERY`] has passed since the last
/// report. So reports are at least that far apart, and every event is in one.
#[derive(Debug, Default)]
struct Tally {
    /// Until when no report may be made.
    quiet_until: Option<Instant>,
    count: u64,
    peer: Option<SocketAddr>,
    reason: String,
}

/// How many events since the last report, and the last one's peer and reason.
#[derive(Debug, PartialEq, Eq)]
struct Report {
    count: u64,
    peer: Option<SocketAddr>,
    reason: String,
}

impl Tally {
    /// Counts an event; a report if one may be made now.
    fn record(&mut self, now: Instant, peer: Option<SocketAddr>, reason: String) -> Option<Report> {
        self.count += 1;
        self.peer = peer;
        self.reason = reason;
        if self.quiet_until.is_some_and(|until| now < until) {
            return None;
        }
        Some(self.take(now))
    }

    /// The report held back, once its interval is over.
    fn due(&mut self, now: Instant) -> Option<Report> {
        let until = self.quiet_until?;
        if now < until {
            return None;
        }
        if self.count == 0 {
            // A quiet interval: the next event is reported at once.
            self.quiet_until = None;
            return None;
        }
        Some(self.take(now))
    }

    /// Whatever is held back, now.
    fn rest(&mut self, now: Instant) -> Option<Report> {
        (self.count > 0).then(|| self.take(now))
    }

    fn take(&mut self, now: Instant) -> Report {
        self.quiet_until = Some(now + REPORT_EVERY);
        Report {
            count: std::mem::take(&mut self.count),
            peer: self.peer.take(),
            reason: std::mem::take(&mut self.reason),
        }
    }
}

/// Binds `addr` for `service`.
pub async fn bind(service: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            service,
            addr,
            source,
        })
}

/// The layers every listener shares: the JSON error shape for axum's own errors, the 408 for
/// a body that came too late, and a request span with service, method, matched route, status
/// and latency. The span never
/// carries the URI's query or any header or body, so no secret can reach a log through it.
pub fn with_common_layers(router: Router, service: &'static str) -> Router {
    let trace = TraceLayer::new_for_http()
        .make_span_with(move |request: &Request| {
            let route = request
                .extensions()
                .get::<MatchedPath>()
                .map_or("(unmatched)", MatchedPath::as_str);
            tracing::info_span!(
                "request",
                service,
                method = %request.method(),
                route,
                status = tracing::field::Empty,
                latency_us = tracing::field::Empty,
            )
        })
        .on_request(())
        .on_response(|response: &Response, latency: Duration, span: &Span| {
            span.record("status", response.status().as_u16());
            span.record("latency_us", latency.as_micros());
            tracing::debug!("response");
        });
    router
        .layer(middleware::from_fn(fill_empty_error_bodies))
        .layer(middleware::from_fn(answer_late_bodies_408))
        .layer(trace)
}

/// Answers 503 to requests that arrive once the drain has begun, and closes the connection.
pub async fn refuse_when_draining(
    State(shutdown): State<CancellationToken>,
    request: Request,
    next: Next,
) -> Response {
    if shutdown.is_cancelled() {
        let mut response = Error::Draining.into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    next.run(request).await
}

/// Answers 408 to a request whose body did not arrive in time, whatever the handler made of
/// the failed read (a 400 for a form, say), and closes the connection: the rest of the body
/// may still be on its way.
async fn answer_late_bodies_408(request: Request, next: Next) -> Response {
    let deadline = request.extensions().get::<BodyDeadline>().cloned();
    let response = next.run(request).await;
    if !deadline.is_some_and(|deadline| deadline.passed()) {
        return response;
    }
    let body = ErrorBody {
        error: "the request body did not arrive in time",
    };
    let mut response = (StatusCode::REQUEST_TIMEOUT, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_flood_of_refusals_is_one_report_per_interval_counting_every_one() {
        let start = Instant::now();
        let mut tally = Tally::default();
        let first = tally.record(start, None, "junk".to_owned());
        assert_eq!(
            first.map(|report| report.count),
            Some(1),
            "the first at once"
        );
        for n in 0..500 {
            let at = start + Duration::from_millis(n * 10);
            assert_eq!(tally.record(at, None, format!("junk {n}")), None);
        }
        assert_eq!(
            tally.due(start + seconds(9)),
            None,
            "not before the interval"
        );
        let held = tally.due(start + REPORT_EVERY).unwrap();
        assert_eq!((held.count, held.reason.as_str()), (500, "junk 499"));
        // More within the next interval wait for it; the listener's end reports them.
        assert_eq!(tally.record(start + seconds(11), None, "late".into()), None);
        assert_eq!(tally.rest(start + seconds(12)).unwrap().count, 1);
    }

    #[test]
    fn after_a_quiet_interval_the_next_refusal_is_reported_at_once() {
        let start = Instant::now();
        let mut tally = Tally::default();
        assert!(tally.record(start, None, "one".into()).is_some());
        assert_eq!(tally.due(start + REPORT_EVERY), None, "nothing held back");
        let later = start + REPORT_EVERY + seconds(1);
        assert_eq!(tally.record(later, None, "two".into()).unwrap().count, 1);
    }
}
