//! The signals that start the drain of `warden serve`: SIGTERM and SIGINT, listened for from
//! before the App is built, so that one sent as soon as warden says it listens drains it
//! rather than killing it.

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Starts listening for SIGTERM and SIGINT, in that order; `None` for one that cannot be.
pub fn listen() -> [Option<Signal>; 2] {
    [SignalKind::terminate(), SignalKind::interrupt()].map(|kind| {
        signal(kind)
            .inspect_err(|error| tracing::warn!(%error, ?kind, "cannot listen for this signal"))
            .ok()
    })
}

/// Cancels `shutdown` on every SIGTERM or SIGINT (`signals`, in that order); repeats are
/// logged and otherwise harmless.
pub async fn drain_on_signal(shutdown: CancellationToken, signals: [Option<Signal>; 2]) {
    let [mut terminate, mut interrupt] = signals;
    loop {
        let name = tokio::select! {
            Some(()) = async { terminate.as_mut()?.recv().await } => "SIGTERM",
            Some(()) = async { interrupt.as_mut()?.recv().await } => "SIGINT",
            // Neither can be listened for: `/shutdown` still drains.
            else => break,
        };
        if shutdown.is_cancelled() {
            tracing::info!(
                signal = name,
                "already draining; the drain timeout still applies"
            );
        } else {
            tracing::info!(signal = name, "signal received");
            shutdown.cancel();
        }
    }
}
