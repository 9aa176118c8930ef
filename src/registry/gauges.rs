//! What the registry tells `/metrics`: how many instances are live, counted when scraped by
//! the same liveness rule every read applies.

use metrics::Gauge;

use super::{Liveness, store};
use crate::clock::Clock;
use crate::db::Database;
use crate::telemetry::{REGISTRY_LIVE_INSTANCES, Telemetry};

/// Sets `warden_registry_live_instances` at each scrape of `telemetry`.
pub fn report_live_instances(
    telemetry: &Telemetry,
    db: &Database,
    clock: &Clock,
    liveness: Liveness,
) {
    let live: Gauge = telemetry.gauge(REGISTRY_LIVE_INSTANCES, Vec::new());
    let (reads, clock) = (db.reads.clone(), clock.clone());
    telemetry.on_scrape(move || {
        let (reads, live) = (reads.clone(), live.clone());
        let live_after = liveness.live_after(clock.now_ms());
        async move {
            // The admin listener outlives the database by a moment at the end of a drain.
            if reads.is_closed() {
                return;
            }
            match store::count_live(&reads, live_after).await {
                Ok(count) => live.set(count as f64),
                Err(error) => tracing::warn!(%error, "cannot count the live instances"),
            }
        }
    });
}
