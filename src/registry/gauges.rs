//! What the registry tells `/metrics`: how many instances are live, counted when scraped by
//! the same liveness rule every read applies.

use metrics::Gauge;

use super::store::RegistryStore;
use crate::telemetry::{REGISTRY_LIVE_INSTANCES, Telemetry};

/// Sets `warden_registry_live_instances` at each scrape of `telemetry`.
pub fn report_live_instances(telemetry: &Telemetry, store: RegistryStore) {
    let live: Gauge = telemetry.gauge(REGISTRY_LIVE_INSTANCES, Vec::new());
    telemetry.on_scrape(move || {
        let (store, live) = (store.clone(), live.clone());
        async move {
            // The admin listener outlives the database by a moment at the end of a drain.
            if store.is_closed() {
                return;
            }
            match store.count_live().await {
                Ok(count) => live.set(count as f64),
                Err(error) => tracing::warn!(%error, "cannot count the live instances"),
            }
        }
    });
}
