//! The body-read deadline: a request body that has not arrived `--body-timeout` after its
//! head (or by the close grace once the drain has begun) fails, and the request is marked so
//! that its client is answered 408 whatever the handler made of the failed read.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

/// In a request's extensions: whether its body ran out of time, so that whatever the handler
/// made of the failed read, the client is answered 408.
#[derive(Debug, Clone, Default)]
pub struct BodyDeadline(Arc<AtomicBool>);

impl BodyDeadline {
    /// Whether the body did not arrive in time.
    pub fn passed(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The request body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTooSlow;

/// A request body that fails once it is due: `--body-timeout` after its head, or the close
/// grace after the drain began, whichever is first. A whole deadline, not one per read, so
/// a body that trickles in a byte at a time is cut too.
pub struct DeadlineBody {
    pub inner: Incoming,
    pub due: Pin<Box<dyn Future<Output = ()> + Send>>,
    pub deadline: BodyDeadline,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        // What has arrived is taken first: a body that is complete is never cut. One that
        // keeps arriving faster than it is read is bounded by the route's size limit.
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(axum::BoxError::from)));
        }
        // Once due, always due (and a finished future must not be polled again).
        if this.deadline.passed() || this.due.as_mut().poll(cx).is_ready() {
            this.deadline.0.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BodyTooSlow.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
