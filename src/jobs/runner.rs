//! The runner: workers claim queued jobs, run each one's process to its end, and record how
//! it ended; recovery after a crash. The live jobs that followers and stops reach are in
//! [`super::live`].
//!
//! Invariants: a job is claimed by one guarded `UPDATE` (no job runs twice); no lock or
//! transaction is held while waiting for a process.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::job::Ending;
use super::live::{Following, LiveJobs};
use super::output;
use super::process::{self, Finished, JobProcess, ProcessMark, Spawned};
use super::sandbox::Sandbox;
use super::store::{self, AppendOutput, JobRow};
use crate::clock::Clock;
use crate::db::{Database, Writer};
use crate::error::StorageFault;
use crate::telemetry::{JOB_OUTPUT, Telemetry};

/// How long output may keep coming after the job's process has ended (a process that left
/// the group can hold a pipe open forever).
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);
/// How long a worker first waits before it tries the database again after a failure; each
/// failure in a row doubles it, up to [`MAX_RETRY_WAIT`].
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(100);
/// The longest a worker waits between tries while the database fails.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);
/// How long a job runs before its pid is recorded, so that recovery after a crash can kill
/// its process group. Containment (its cgroup, or its marker) finds a crashed warden's
/// leftovers without the record, which is one more line of defence: a job that ends sooner,
/// as most short ones do, costs no write for it.
const RECORD_AFTER: Duration = Duration::from_millis(20);
/// The worker's write path, as `/healthz` names it.
const WORKER_PATH: &str = "job status";

/// Why a job's process ended before it exited by itself.
#[derive(Debug)]
enum Cut {
    Stopped,
    ShutDown,
    /// It ran out its timeout.
    TimedOut(Duration),
    /// Its pid could not be recorded, so it was not left to run.
    Unrecorded(StorageFault),
}

/// Runs jobs; clone freely.
#[derive(Clone)]
pub struct Runner {
    db: Database,
    writer: Writer<store::OutputChunk, store::Stored>,
    /// The writer's batch, to forget an ended job's lost output.
    output: AppendOutput,
    clock: Clock,
    queue: Arc<Notify>,
    live: LiveJobs,
    settings: RunnerSettings,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").finish_non_exhaustive()
    }
}

/// The runner's settings.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// How jobs are isolated (set up before the runner starts).
    pub sandbox: Arc<Sandbox>,
    /// How many jobs run at once (at least one).
    pub workers: usize,
    /// How long a stopped job gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// How much output is kept per job.
    pub output_limit: u64,
    /// Past this many bytes in use by the database, job output is refused.
    pub max_db_bytes: u64,
    /// Finished jobs older than this are deleted; `None` keeps them.
    pub retention: Option<Duration>,
    /// How often deleted and expired jobs are removed.
    pub purge_every: Duration,
    /// The most jobs one user may have queued at once; `POST /jobs` refuses more.
    pub max_queued_per_user: u64,
}

impl Runner {
    /// Recovers from a previous run (its `running` jobs become `interrupted`, their leftover
    /// processes are killed), then starts the workers; they stop at `shutdown`, stopping
    /// their jobs with the grace and leaving queued jobs queued.
    pub async fn start(
        db: &Database,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
        clock: Clock,
        settings: RunnerSettings,
        telemetry: &Telemetry,
    ) -> Result<Self, StorageFault> {
        let stored = telemetry.counter(JOB_OUTPUT, Vec::new());
        let output = AppendOutput::new(settings.max_db_bytes, stored);
        let runner = Self {
            db: db.clone(),
            writer: db.writer(output.clone(), tasks, telemetry),
            output,
            clock,
            queue: Arc::new(Notify::new()),
            live: LiveJobs::default(),
            settings,
        };
        runner.recover().await?;
        for _ in 0..runner.settings.workers.max(1) {
            tasks.spawn(runner.clone().work(shutdown.clone()));
        }
        Ok(runner)
    }

    /// Wakes idle workers: a job was queued.
    pub fn wake(&self) {
        self.queue.notify_waiters();
    }

    /// Follows job `seq`. Call before reading the job's state, then read it: an update after
    /// that read always wakes the follower.
    pub fn follow(&self, seq: i64) -> Following {
        self.live.follow(seq)
    }

    /// Tells followers of a job that ended without running (stopped while queued) that it
    /// has ended.
    pub fn ended_unrun(&self, seq: i64) {
        self.live.end(seq);
    }

    /// Asks running job `seq` to stop: SIGTERM to its group, SIGKILL after the grace.
    pub fn stop(&self, seq: i64) {
        self.live.with(seq, |job| job.stop.cancel());
    }

    /// How jobs are isolated.
    pub fn sandbox(&self) -> &Sandbox {
        &self.settings.sandbox
    }

    /// The stop grace.
    pub fn stop_grace(&self) -> Duration {
        self.settings.stop_grace
    }

    async fn recover(&self) -> Result<(), StorageFault> {
        let leftovers = {
            let mut conn = self.db.write_connection().await?;
            store::interrupt_running(&mut conn, self.clock.now_ms())
                .await
                .map_err(|error| StorageFault::of(&error))?
        };
        for leftover in leftovers {
            // A pid that does not fit a pid_t was never one of ours.
            let Some(pid) = leftover.pid.and_then(|pid| i32::try_from(pid).ok()) else {
                continue;
            };
            let mark = ProcessMark {
                boot_id: leftover.pid_boot_id,
                start_ticks: leftover.pid_start_ticks,
            };
            if process::kill_leftover_group(pid, &mark) {
                tracing::warn!(
                    pid,
                    "killed the process group of a job interrupted by a crash"
                );
            }
        }
        Ok(())
    }

    async fn work(self, shutdown: CancellationToken) {
        // The job this worker last ran, until its ending is recorded with the next claim.
        let mut ended: Option<(JobRow, Ending)> = None;
        let mut retry_wait = FIRST_RETRY_WAIT;
        loop {
            let woken = self.queue.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let claim = !shutdown.is_cancelled();
            let settled = match self.db.write_connection().await {
                Ok(mut conn) => store::settle_and_claim(
                    &mut conn,
                    ended.as_ref().map(|(job, ending)| (job.seq, ending)),
                    claim,
                    self.clock.now_ms(),
                )
                .await
                .map_err(|error| StorageFault::of(&error)),
                Err(fault) => Err(fault),
            };
            self.db.health().record(WORKER_PATH, &settled);
            let next = match settled {
                Ok(next) => {
                    retry_wait = FIRST_RETRY_WAIT;
                    if let Some((job, ending)) = ended.take() {
                        self.announce_end(&job, &ending);
                    }
                    next
                }
                Err(fault) => {
                    tracing::error!(%fault, ?retry_wait, "a job worker could not record or claim a job; retrying");
                    if !claim {
                        // Shutting down: the next start marks the unrecorded job interrupted;
                        // its followers are told it has ended here.
                        if let Some((job, ending)) = ended.take() {
                            self.announce_end(&job, &ending);
                        }
                        return;
                    }
                    let wait = retry_wait;
                    retry_wait = (retry_wait * 2).min(MAX_RETRY_WAIT);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => continue,
                        () = shutdown.cancelled() => continue,
                    }
                }
            };
            match next {
                Some(job) => {
                    let ending = self.run(&job, &shutdown).await;
                    ended = Some((job, ending));
                }
                None if !claim => return,
                None => tokio::select! {
                    () = &mut woken => {}
                    () = shutdown.cancelled() => {}
                },
            }
        }
    }

    /// Tells followers a job has ended, once its ending is committed.
    fn announce_end(&self, job: &JobRow, ending: &Ending) {
        self.live.end(job.seq);
        tracing::info!(job = %job.id, status = %ending.status, "job ended");
    }

    /// Runs a claimed job's process to its end and captures its output; returns how it
    /// ended, which the worker's next claim records.
    async fn run(&self, job: &JobRow, shutdown: &CancellationToken) -> Ending {
        let (progress, stop) = self.live.with(job.seq, |live| {
            live.running = true;
            (live.progress.clone(), live.stop.clone())
        });
        let Ok(args) = job.args() else {
            return Ending::failed(
                "the job's stored arguments are not a JSON array of strings".to_owned(),
                false,
            );
        };
        let launch = match self.settings.sandbox.launch(job, &args) {
            Ok(launch) => launch,
            Err(why) => return Ending::failed(why, false),
        };
        let Spawned {
            process,
            stdout,
            stderr,
        } = match JobProcess::spawn(self.settings.sandbox.spawner(), launch).await {
            Ok(spawned) => spawned,
            Err(error) => return Ending::failed(error.to_string(), false),
        };
        let mut output = tokio::spawn(output::pump(
            Some(stdout),
            Some(stderr),
            job.seq,
            self.writer.clone(),
            progress,
            self.settings.output_limit,
        ));
        let grace = self.settings.stop_grace;
        let limits = job.limits();
        // The timeout counts from the start, whatever happens before the wait below.
        let deadline = limits
            .timeout()
            .map(|timeout| (tokio::time::Instant::now() + timeout, timeout));
        let timed_out = async {
            match deadline {
                Some((at, timeout)) => {
                    tokio::time::sleep_until(at).await;
                    timeout
                }
                None => std::future::pending().await,
            }
        };
        // Its pid is recorded once it has run a little (see `RECORD_AFTER`), unless its
        // timeout comes first.
        let record_at = tokio::time::Instant::now() + RECORD_AFTER;
        let (wake_at, then_record) = match deadline {
            Some((at, _)) if at <= record_at => (at, false),
            _ => (record_at, true),
        };
        let record = tokio::select! {
            () = process.exited() => false,
            () = stop.cancelled() => false,
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep_until(wake_at) => then_record,
        };
        let unrecorded = if record {
            self.record_process(job.seq, &process).await.err()
        } else {
            None
        };
        let cut = match unrecorded {
            Some(fault) => {
                process.kill_all();
                Some(Cut::Unrecorded(fault))
            }
            None => tokio::select! {
                () = process.exited() => None,
                () = stop.cancelled() => {
                    process.terminate(grace).await;
                    Some(Cut::Stopped)
                }
                () = shutdown.cancelled() => {
                    process.terminate(grace).await;
                    Some(Cut::ShutDown)
                }
                timeout = timed_out => {
                    process.kill_all();
                    Some(Cut::TimedOut(timeout))
                }
            },
        };
        // Whatever the job left running goes with it, before the leader is reaped.
        let Finished { status, hits } = process.finish().await;
        let truncated = match tokio::time::timeout(OUTPUT_DRAIN, &mut output).await {
            Ok(Ok(summary)) => summary.truncated,
            _ => {
                // A process that escaped the job still holds the pipe: stop reading it, so
                // nothing is appended to a job recorded as ended.
                output.abort();
                tracing::warn!(job = %job.id, "output did not end with the job; it was cut");
                true
            }
        };
        self.output.forget(job.seq);
        let (exit_code, signal) = match &status {
            Ok(status) => process::code_and_signal(status),
            Err(_) => (None, None),
        };
        match (cut, status) {
            (Some(Cut::Stopped), _) => Ending::stopped(exit_code, signal, truncated),
            (Some(Cut::ShutDown), _) => Ending::interrupted(exit_code, signal, truncated),
            (Some(Cut::Unrecorded(fault)), _) => Ending::failed(
                format!("could not record the job's process: {fault}"),
                truncated,
            ),
            (Some(Cut::TimedOut(timeout)), _) => Ending::limited(
                exit_code,
                signal,
                format!(
                    "killed at its timeout of {}",
                    humantime::format_duration(timeout)
                ),
                truncated,
            ),
            (None, Ok(_)) => Ending::exited(exit_code, signal, truncated).blamed_on(hits, &limits),
            (None, Err(error)) => {
                Ending::failed(format!("cannot wait for the process: {error}"), truncated)
            }
        }
    }

    async fn record_process(&self, seq: i64, process: &JobProcess) -> Result<(), StorageFault> {
        let (pid, mark) = (process.pid(), process.mark());
        let mut conn = self.db.write_connection().await?;
        store::record_process(
            &mut conn,
            seq,
            i64::from(pid),
            mark.boot_id.as_deref(),
            mark.start_ticks,
        )
        .await
        .map_err(|error| StorageFault::of(&error))
    }
}
