-- Deleting jobs: a deleted job disappears from the API at once and its output is deleted
-- afterwards in bounded steps (a job may hold gigabytes), then its row.

-- When the job was deleted (by DELETE /jobs/{id} or by --job-retention); NULL while it is
-- visible.
ALTER TABLE jobs ADD COLUMN deleted_at_ms INTEGER;

-- Finding finished jobs older than the retention window without reading every job.
CREATE INDEX jobs_by_finish ON jobs (finished_at_ms) WHERE finished_at_ms IS NOT NULL;

-- Finding deleted jobs whose output and rows are still to be removed.
CREATE INDEX jobs_deleted ON jobs (seq) WHERE deleted_at_ms IS NOT NULL;
