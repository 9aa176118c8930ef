//! The listeners: binding, the accept loop every listener runs (plain HTTP or mutual TLS),
//! and the layers every listener shares (a request id, `x-request-id`, made unless the client
//! sent a plain one, echoed in the answer and kept in the request span; the request span; the
//! request metrics; the JSON shape of axum's own errors; the 408 for a body that came too
//! late; and the 503 that new requests get once the drain has begun).
//!
//! Invariant: a listener never fails and never spins. It holds at most `--max-connections`
//! open: at the cap it stops accepting, so new clients wait in the kernel's backlog while the
//! open connections go on; an `accept()` that fails (out of file descriptors, say) is retried
//! after a pause that doubles up to a second. Warnings that could come once per connection
//! (a refused TLS handshake, a failed accept) are logged at most once per `REPORT_EVERY` (`reports.rs`)
//! per listener, with how many there were and the last reason; every refused TLS connection
//! is also counted, by a fixed reason. What happens on each connection is `connections.rs`'s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::MissedTickBehavior;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;
use tower::util::MapRequestLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

use super::StartError;
use super::connections::{Limits, grace_over, serve_connection};
use super::deadline::BodyDeadline;
use super::reports::Reports;
use super::request_ids::{REQUEST_ID, RequestIds, drop_unfit_request_ids};
use crate::error::{Error, ErrorBody};
use crate::http::fill_empty_error_bodies;
use crate::security::tls::identity_of;
use crate::telemetry::{RecordRequestsLayer, Telemetry, TlsRefusal, TlsRefusals};

/// How long a client gets to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// the handshake; the others are counted in `refusals`.
    Tls {
        config: Arc<rustls::ServerConfig>,
        refusals: TlsRefusals,
    },
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
    let reports = Arc::new(Reports::new(service));
    let acceptor = match transport {
        Transport::Plain => None,
        Transport::Tls { config, refusals } => {
            let refused = Refused {
                reports: reports.clone(),
                counts: refusals,
            };
            Some((TlsAcceptor::from(config), Arc::new(refused)))
        }
    };
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
        // No Nagle: a body streamed in parts (a listing read in pages, a job's output) would
        // otherwise wait for the client's delayed ACK, up to 40 ms, before each part after
        // the first.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
        }
        let (router, stop) = (router.clone(), stop.clone());
        match &acceptor {
            None => connections.spawn(async move {
                serve_connection(tcp, peer, None, router, limits, stop).await;
                drop(place);
            }),
            Some((acceptor, refused)) => {
                let (acceptor, refused) = (acceptor.clone(), refused.clone());
                connections.spawn(async move {
                    serve_tls(tcp, peer, acceptor, router, limits, stop, &refused).await;
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

/// Where a TLS listener's refused connections go: its held-back log line, with the peer and
/// rustls's reason, and its count by fixed reason.
struct Refused {
    reports: Arc<Reports>,
    counts: TlsRefusals,
}

impl Refused {
    fn refuse(&self, peer: SocketAddr, reason: TlsRefusal, detail: String) {
        self.counts.count(reason);
        self.reports.refused_tls(peer, detail);
    }
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
    refused: &Refused,
) {
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
    let stream = tokio::select! {
        handshake = handshake => match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                refused.refuse(peer, refusal_of(&error), error.to_string());
                return;
            }
            Err(_) => {
                let detail = "the handshake timed out".to_owned();
                refused.refuse(peer, TlsRefusal::Timeout, detail);
                return;
            }
        },
        () = grace_over(stop.clone(), limits.close_grace) => return,
    };
    let Some(identity) = stream.get_ref().1.peer_certificates().and_then(identity_of) else {
        let detail = "its certificate names no valid user".to_owned();
        refused.refuse(peer, TlsRefusal::NoValidUser, detail);
        return;
    };
    serve_connection(stream, peer, Some(identity), router, limits, stop).await;
}

/// The fixed reason of a failed handshake: tokio-rustls wraps rustls's own error, which says
/// whether the client's certificate was missing or did not verify.
fn refusal_of(error: &std::io::Error) -> TlsRefusal {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::NoCertificatesPresented) => TlsRefusal::NoCertificate,
        Some(rustls::Error::InvalidCertificate(_)) => TlsRefusal::BadCertificate,
        _ => TlsRefusal::Handshake,
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

/// The layers every listener shares: the request id (made unless the client sent a fit one,
/// and echoed), a request span with service, method, matched route, request id, status and
/// latency, the request metrics (of the answer as sent, so outside the next two), the 408 for
/// a body that came too late, and the JSON error shape for axum's own errors. The span never
/// carries the URI's query or any header or body but the id, so no secret can reach a log
/// through it; the metrics carry only the route's template.
pub fn with_common_layers(router: Router, service: &'static str, telemetry: &Telemetry) -> Router {
    let trace = TraceLayer::new_for_http()
        .make_span_with(move |request: &Request| {
            let route = request
                .extensions()
                .get::<MatchedPath>()
                .map_or("(unmatched)", MatchedPath::as_str);
            // Set by the layer outside this one: the client's own id if it sent a plain one.
            let request_id = request
                .headers()
                .get(&REQUEST_ID)
                .and_then(|id| id.to_str().ok())
                .unwrap_or("-");
            // Display (`%`), not Debug: Debug would escape each character of these strings
            // on every request, and they hold none that need it (route templates, and ids
            // of plain characters only).
            tracing::info_span!(
                "request",
                service,
                method = %request.method(),
                route = %route,
                request_id = %request_id,
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
    // One stack, outermost first, given to the router once: each `Router::layer` call wraps
    // every route in a boxed service of its own, which costs each request a cloned box and a
    // boxed future per call.
    let layers = ServiceBuilder::new()
        .layer(MapRequestLayer::new(drop_unfit_request_ids))
        .layer(SetRequestIdLayer::new(
            REQUEST_ID.clone(),
            RequestIds::new(),
        ))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(trace)
        .layer(RecordRequestsLayer::new(telemetry, service))
        .layer(middleware::from_fn(answer_late_bodies_408))
        .layer(middleware::from_fn(fill_empty_error_bodies));
    router.layer(layers)
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
