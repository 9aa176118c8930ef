//! The listeners: binding, serving a router over plain HTTP or mutual TLS, and the layers
//! every listener shares (the request span, the JSON shape of axum's own errors, and the 503
//! that new requests get once the drain has begun).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tower_http::trace::TraceLayer;
use tracing::Span;

use super::StartError;
use crate::error::Error;
use crate::http::fill_empty_error_bodies;
use crate::security::tls::identity_of;

/// How long a client gets to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` over TLS: each connection's verified client identity (and peer address)
/// goes into every request's extensions. A refused handshake is logged with the peer
/// address, never with key material.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    tls: Arc<rustls::ServerConfig>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let (acceptor, router, stop) = (acceptor.clone(), router.clone(), stop.clone());
        connections.spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::warn!(%peer, %error, "refused a TLS connection");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, "refused a TLS connection: the handshake timed out");
                    return;
                }
            };
            let Some(identity) = stream.get_ref().1.peer_certificates().and_then(identity_of)
            else {
                tracing::warn!(%peer, "refused a TLS connection: its certificate names no valid user");
                return;
            };
            let service = router.map_request(move |mut request: axum::http::Request<Incoming>| {
                request.extensions_mut().insert(identity.clone());
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
            let builder = ConnectionBuilder::new(TokioExecutor::new());
            let connection =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
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

/// Serves `router` over plain HTTP until `stop` resolves, then lets open requests finish.
pub async fn serve_listener(
    listener: TcpListener,
    router: Router,
    stop: tokio_util::sync::WaitForCancellationFutureOwned,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    // No Nagle: a body streamed in parts (a listing read in pages) would otherwise wait for
    // the client's delayed ACK, up to 40 ms, before each part after the first.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
        }
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop)
    .await
}

/// The layers every listener shares: the JSON error shape for axum's own errors, and a
/// request span with service, method, matched route, status and latency. The span never
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
