//! One connection, from its first byte to its close: the timeouts every listener holds its
//! clients to, and the bound the drain puts on them.
//!
//! Invariant: no connection stays open on its client's account alone. A client gets
//! `--header-timeout` to send a request head (counted from the head's first byte, or from the
//! connection's start), `--body-timeout` to send the body (the request is answered 408 past
//! it), and `--idle-timeout` both to start its next request on a kept-alive connection and to
//! take any part of a response it has stopped reading. Once the drain has begun, whatever
//! still waits on a client — a head, a body, the rest of a response — gets the close grace and
//! no more; only a handler's own work can hold a connection longer, and the drain timeout
//! bounds that. A connection closed while its client is still sending (a body answered 413
//! before it was read) lingers up to 2 s, taking and dropping what the client sends, so that
//! the client reads its answer instead of a reset (`socket.rs`).
//!
//! hyper 1.x has a header-read timeout, but its timer also runs while a kept-alive connection
//! waits for its next request (it restarts each time the connection goes idle), so it cannot
//! give an idle timeout longer than the header timeout, and it knows nothing of a response the
//! client stopped taking. So each connection is watched here instead: its socket reports
//! bytes moving and writes the client is not taking, its service reports requests starting
//! and responses ending, and the connection's task closes it at the earliest deadline that
//! applies.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::Request;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::deadline::{BodyDeadline, DeadlineBody};
use super::socket::Watched;
use crate::security::tls::ClientIdentity;

/// What a listener holds its connections to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For a whole request head.
    pub header_timeout: Duration,
    /// For a whole request body, from the end of its head.
    pub body_timeout: Duration,
    /// Between requests, and for a client to take any part of a response.
    pub idle_timeout: Duration,
    /// How many connections the listener holds open at once.
    pub max_connections: usize,
    /// Once the drain has begun, how long a connection may still wait on its client.
    pub close_grace: Duration,
}

/// Serves `router` on one accepted connection until it ends, its client runs out of time, or
/// the drain's close grace is over. Each request carries the peer address and, over TLS, the
/// verified client identity.
pub async fn serve_connection<S>(
    io: S,
    peer: SocketAddr,
    identity: Option<ClientIdentity>,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new(Instant::now()));
    let service = {
        let activity = activity.clone();
        let stop = stop.clone();
        service_fn(move |mut request: Request<Incoming>| {
            let mut in_flight = InFlight::start(activity.clone());
            request.extensions_mut().insert(ConnectInfo(peer));
            if let Some(identity) = &identity {
                request.extensions_mut().insert(identity.clone());
            }
            let deadline = BodyDeadline::default();
            request.extensions_mut().insert(deadline.clone());
            let body_due = Instant::now() + limits.body_timeout;
            let request = request.map(|body| {
                Body::new(DeadlineBody {
                    inner: body,
                    due: Box::pin(body_due_or_grace_over(
                        body_due,
                        stop.clone(),
                        limits.close_grace,
                    )),
                    deadline,
                })
            });
            let router = router.clone();
            async move {
                let Ok(response) = router.oneshot(request).await;
                in_flight.responded();
                Ok::<_, Infallible>(response.map(|body| WatchedBody {
                    inner: body,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    // hyper's own header timeout is off: it would also cut idle kept-alive connections at the
    // header timeout (see the module docs); `Activity` keeps both deadlines instead.
    let mut builder = http1::Builder::new();
    builder.header_read_timeout(None);
    let watched = Watched::new(io, activity.clone());
    let connection = builder.serve_connection(TokioIo::new(watched), service);
    tokio::pin!(connection);

    let mut grace_over = None;
    loop {
        let deadline = activity.deadline(&limits, grace_over);
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                return;
            }
            () = stop.cancelled(), if grace_over.is_none() => {
                // Idle connections close now; busy ones after their response.
                connection.as_mut().graceful_shutdown();
                grace_over = Some(Instant::now() + limits.close_grace);
            }
            () = sleep_until(deadline.map(|(at, _)| at)) => {
                // Look again: the client may have moved since the deadline was computed.
                if let Some((at, why)) = activity.deadline(&limits, grace_over)
                    && at <= Instant::now()
                {
                    tracing::debug!(%peer, reason = why.as_str(), "closed a connection");
                    return;
                }
            }
            () = activity.changed.notified() => {}
        }
    }
}

/// Resolves at `at`, or never.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves `grace` after the drain has begun.
pub async fn grace_over(stop: CancellationToken, grace: Duration) {
    stop.cancelled().await;
    tokio::time::sleep(grace).await;
}

async fn body_due_or_grace_over(due: Instant, stop: CancellationToken, grace: Duration) {
    tokio::select! {
        () = tokio::time::sleep_until(due) => {}
        () = grace_over(stop, grace) => {}
    }
}

/// Why a connection was closed for its client.
#[derive(Debug, Clone, Copy)]
enum Closed {
    HeadTooSlow,
    Idle,
    NotReading,
    DrainGrace,
}

impl Closed {
    fn as_str(self) -> &'static str {
        match self {
            Self::HeadTooSlow => "the request head did not arrive within the header timeout",
            Self::Idle => "idle for the idle timeout",
            Self::NotReading => "the client took none of its response for the idle timeout",
            Self::DrainGrace => "the drain's close grace is over",
        }
    }
}

/// What one connection has been doing, as its socket and its requests report it.
#[derive(Debug)]
pub(super) struct Activity {
    state: Mutex<ActivityState>,
    /// Wakes the connection's task when a deadline may have come closer.
    changed: Notify,
}

#[derive(Debug)]
struct ActivityState {
    /// Requests handed to the router whose handler has not returned.
    handling: usize,
    /// Responses whose body hyper has not finished with.
    responding: usize,
    /// When the request head now arriving began: the connection's start, or its first byte.
    head_since: Option<Instant>,
    /// When the connection last did something: a response ended, bytes were written.
    quiet_since: Instant,
    /// Since when a write has waited for the client to take bytes.
    stalled_since: Option<Instant>,
}

impl Activity {
    fn new(now: Instant) -> Self {
        Self {
            state: Mutex::new(ActivityState {
                handling: 0,
                responding: 0,
                head_since: Some(now),
                quiet_since: now,
                stalled_since: None,
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, ActivityState> {
        // Every update is a few plain assignments: a panic cannot leave one half done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The earliest moment the connection must close, and why; `grace_over` is when the
    /// drain's close grace ends, once the drain has begun.
    fn deadline(&self, limits: &Limits, grace_over: Option<Instant>) -> Option<(Instant, Closed)> {
        let state = self.state();
        let mut earliest: Option<(Instant, Closed)> = None;
        let mut consider = |at: Instant, why: Closed| {
            if earliest.is_none_or(|(earliest, _)| at < earliest) {
                earliest = Some((at, why));
            }
        };
        if state.handling == 0 && state.responding == 0 {
            match state.head_since {
                Some(since) => consider(since + limits.header_timeout, Closed::HeadTooSlow),
                None => consider(state.quiet_since + limits.idle_timeout, Closed::Idle),
            }
        }
        if let Some(since) = state.stalled_since {
            consider(since + limits.idle_timeout, Closed::NotReading);
        }
        // A running handler is the server's own work: the drain timeout bounds it. Anything
        // else (a head, a body through `DeadlineBody`, the rest of a response) waits on the
        // client.
        if let Some(grace_over) = grace_over
            && state.handling == 0
        {
            consider(grace_over, Closed::DrainGrace);
        }
        earliest
    }

    /// Bytes arrived: between requests, they begin the next head.
    pub(super) fn read_some(&self) {
        let mut state = self.state();
        if state.handling == 0 && state.responding == 0 && state.head_since.is_none() {
            state.head_since = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    /// A write went through (`true`) or waits for the client to take bytes (`false`).
    pub(super) fn wrote(&self, went_through: bool) {
        let mut state = self.state();
        if went_through {
            state.stalled_since = None;
            state.quiet_since = Instant::now();
        } else if state.stalled_since.is_none() {
            state.stalled_since = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }
}

/// One request, from its head to the end of its response; updates [`Activity`] on the way.
#[derive(Debug)]
struct InFlight {
    activity: Arc<Activity>,
    responding: bool,
}

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        {
            let mut state = activity.state();
            state.handling += 1;
            state.head_since = None;
        }
        Self {
            activity,
            responding: false,
        }
    }

    /// The handler returned: what is left is writing its response.
    fn responded(&mut self) {
        if !self.responding {
            self.responding = true;
            let mut state = self.activity.state();
            state.handling -= 1;
            state.responding += 1;
            drop(state);
            // With no handler running, the drain's close grace applies.
            self.activity.changed.notify_one();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.activity.state();
        if self.responding {
            state.responding -= 1;
        } else {
            state.handling -= 1;
        }
        state.quiet_since = Instant::now();
        drop(state);
        self.activity.changed.notify_one();
    }
}

/// A response body that tells the connection's [`Activity`] when hyper is done with it.
struct WatchedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for WatchedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
