//! What the job runner tells `/metrics`: how many jobs are in each status (`queued` is the
//! queue's length), counted when scraped.

use super::job::JobStatus;
use super::store;
use crate::db::Database;
use crate::telemetry::{JOBS, Telemetry};

/// Sets `warden_jobs{status}` for every status at each scrape of `telemetry`; a status no
/// job has reads 0, not its last value.
pub fn report_jobs(telemetry: &Telemetry, db: &Database) {
    let gauges = JobStatus::ALL.map(|status| {
        (
            status,
            telemetry.gauge(JOBS, &[("status", status.as_str())]),
        )
    });
    let reads = db.reads.clone();
    telemetry.on_scrape(move || {
        let (reads, gauges) = (reads.clone(), gauges.clone());
        async move {
            // The admin listener outlives the database by a moment at the end of a drain.
            if reads.is_closed() {
                return;
            }
            let counts = match store::count_by_status(&reads).await {
                Ok(counts) => counts,
                Err(error) => {
                    tracing::warn!(%error, "cannot count the jobs by status");
                    return;
                }
            };
            for (status, gauge) in &gauges {
                let jobs = counts
                    .iter()
                    .find(|(counted, _)| counted == status)
                    .map_or(0, |(_, jobs)| *jobs);
                gauge.set(jobs as f64);
            }
        }
    });
}
