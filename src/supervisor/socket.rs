//! A connection's socket (plain or TLS) as its connection sees it: every read and write
//! reported to the connection's [`Activity`], and a close that lingers.
//!
//! Invariant: a connection hyper closes while its client is still sending (a body past the
//! route's limit, answered 413 before it was read) is not closed under unread bytes, which
//! the kernel answers with a reset that fails the client's send and can destroy the answer
//! in flight: what the client still sends is read and dropped for [`LINGER`] at most, in one
//! buffer on the stack.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::connections::Activity;

/// How long a closing connection goes on taking what its client still sends (see
/// [`Watched::poll_shutdown`]).
const LINGER: Duration = Duration::from_secs(2);

/// How many reads one poll of a lingering close makes before it lets other tasks run.
const LINGER_READS_PER_POLL: usize = 16;

/// A connection's socket (plain or TLS), reporting to its [`Activity`].
pub(super) struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    /// A read has found the end of what the client sends.
    read_closed: bool,
    /// Once our side is shut down and the client may still be sending: when we stop taking it.
    lingering: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S: AsyncRead + Unpin> Watched<S> {
    pub(super) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            activity,
            read_closed: false,
            lingering: None,
        }
    }

    /// Reads and drops what the client still sends, until it closes its side, the read
    /// fails, or [`LINGER`] is over.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(over) = self.lingering.as_mut() else {
            return Poll::Ready(());
        };
        for _ in 0..LINGER_READS_PER_POLL {
            if over.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            let mut sink = [0; 8192];
            let mut sink = ReadBuf::new(&mut sink);
            match Pin::new(&mut self.inner).poll_read(cx, &mut sink) {
                Poll::Ready(Ok(())) if !sink.filled().is_empty() => {}
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (before, room) = (buf.filled().len(), buf.remaining());
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) {
            if buf.filled().len() > before {
                this.activity.read_some();
            } else if room > 0 {
                this.read_closed = true;
            }
        }
        polled
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.activity.wrote(polled.is_ready());
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.activity.wrote(polled.is_ready());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.activity.wrote(polled.is_ready());
        polled
    }

    /// Shuts our side down (over TLS, with its close_notify), then lingers: a connection
    /// hyper closes while the client is still sending (a body past the route's limit,
    /// answered 413 before it was read) would otherwise be closed with unread bytes, and the
    /// kernel answers those with a reset that can destroy the answer before the client reads
    /// it. So what the client still sends is read and dropped until it closes its side, for
    /// [`LINGER`] at most; memory stays one buffer on the stack.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.lingering.is_none() {
            std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            this.lingering = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        this.poll_linger(cx).map(Ok)
    }
}
