//! The runner: workers claim queued jobs, run each program directly (never through a shell)
//! in a process group of its own, capture its output through the group-commit writer, and
//! stop it on request or at shutdown.
//!
//! Invariants: a job is claimed by one guarded `UPDATE` (no job runs twice); no lock or
//! transaction is held while waiting for a process; a follower is woken by a watch channel
//! when output is committed, never by polling; whatever a job leaves behind in its process
//! group is killed when it ends.

use std::collections::{HashMap, VecDeque};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::store::{self, AppendOutput, Ending, JobRow, OutputChunk};
use crate::clock::Clock;
use crate::db::{Database, Writer};
use crate::error::StorageFault;

/// How much output one chunk holds at most.
const CHUNK: usize = 64 * 1024;
/// How many chunks of one job may wait for their commit at once (bounds memory per job).
const IN_FLIGHT: usize = 16;
/// How long output may keep coming after the job's process has ended (a process that left
/// the group can hold a pipe open forever).
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// How many of a job's latest committed chunks stay in memory for its followers.
const RECENT_CHUNKS: usize = 32;

/// What followers of a job know: whether it has ended, and its latest committed output.
#[derive(Debug, Default)]
pub struct Progress {
    pub finished: bool,
    /// The latest committed chunks (start offset, bytes), in offset order: one copy for all
    /// followers, so that a follower at the live edge reads memory, not SQLite.
    recent: VecDeque<(i64, Bytes)>,
}

impl Progress {
    /// Adds a chunk that is now committed, forgetting the oldest past [`RECENT_CHUNKS`].
    fn committed(&mut self, start_offset: i64, bytes: Bytes) {
        if self.recent.len() == RECENT_CHUNKS {
            self.recent.pop_front();
        }
        self.recent.push_back((start_offset, bytes));
    }

    /// Up to `limit` committed chunks from `offset` on, if memory still holds everything
    /// from `offset`: `None` when the caller must read SQLite (it is behind what memory
    /// holds, or memory holds nothing), an empty list when nothing past `offset` is
    /// committed yet. The first chunk may begin before `offset`.
    pub fn recent_from(&self, offset: i64, limit: usize) -> Option<Vec<(i64, Bytes)>> {
        let &(first, _) = self.recent.front()?;
        if offset < first {
            return None;
        }
        let end = |&(start, ref bytes): &(i64, Bytes)| {
            start + i64::try_from(bytes.len()).unwrap_or(i64::MAX)
        };
        let from = self.recent.partition_point(|chunk| end(chunk) <= offset);
        Some(self.recent.range(from..).take(limit).cloned().collect())
    }
}

/// A job that is running, or that someone waits on.
struct LiveJob {
    progress: watch::Sender<Progress>,
    stop: CancellationToken,
}

/// Runs jobs; clone freely.
#[derive(Clone)]
pub struct Runner {
    db: Database,
    writer: Writer<AppendOutput>,
    clock: Clock,
    queue: Arc<Notify>,
    live: Arc<Mutex<HashMap<i64, LiveJob>>>,
    stop_grace: Duration,
    output_limit: u64,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").finish_non_exhaustive()
    }
}

/// The runner's settings.
#[derive(Debug, Clone, Copy)]
pub struct RunnerSettings {
    pub workers: usize,
    pub stop_grace: Duration,
    pub output_limit: u64,
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
    ) -> Result<Self, StorageFault> {
        let runner = Self {
            db: db.clone(),
            writer: db.writer(AppendOutput, tasks),
            clock,
            queue: Arc::new(Notify::new()),
            live: Arc::default(),
            stop_grace: settings.stop_grace,
            output_limit: settings.output_limit,
        };
        runner.recover().await?;
        for _ in 0..settings.workers.max(1) {
            tasks.spawn(runner.clone().work(shutdown.clone()));
        }
        Ok(runner)
    }

    /// Wakes idle workers: a job was queued.
    pub fn wake(&self) {
        self.queue.notify_waiters();
    }

    /// Follows job `seq`'s progress. Call before reading the job's state, then read it: an
    /// update after the read always wakes the receiver.
    pub fn watch(&self, seq: i64) -> watch::Receiver<Progress> {
        self.live_job(seq, |job| job.progress.subscribe())
    }

    /// Drops the entry of a job the database says has ended, if nobody waits on it any more
    /// (call it after dropping your own receiver).
    pub fn forget_if_idle(&self, seq: i64) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if live
            .get(&seq)
            .is_some_and(|job| job.progress.receiver_count() == 0)
        {
            live.remove(&seq);
        }
    }

    /// Tells followers of a job that ended without running (stopped while queued) that it
    /// has ended.
    pub fn ended_unrun(&self, seq: i64) {
        let entry = self
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&seq);
        if let Some(entry) = entry {
            entry
                .progress
                .send_modify(|progress| progress.finished = true);
        }
    }

    /// Asks running job `seq` to stop: SIGTERM to its group, SIGKILL after the grace.
    pub fn stop(&self, seq: i64) {
        self.live_job(seq, |job| job.stop.cancel());
    }

    /// The stop grace.
    pub fn stop_grace(&self) -> Duration {
        self.stop_grace
    }

    fn live_job<T>(&self, seq: i64, with: impl FnOnce(&LiveJob) -> T) -> T {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let job = live.entry(seq).or_insert_with(|| LiveJob {
            progress: watch::Sender::new(Progress::default()),
            stop: CancellationToken::new(),
        });
        with(job)
    }

    async fn recover(&self) -> Result<(), StorageFault> {
        let leftovers = {
            let mut conn = self.db.write_connection().await?;
            store::interrupt_running(&mut conn, self.clock.now_ms())
                .await
                .map_err(|error| StorageFault::of(&error))?
        };
        let boot_id = current_boot_id();
        for leftover in leftovers {
            let Some(pid) = leftover.pid.and_then(|pid| i32::try_from(pid).ok()) else {
                continue;
            };
            if leftover.pid_boot_id.is_none() || leftover.pid_boot_id != boot_id {
                continue; // the machine rebooted since: that process is long gone
            }
            // If the group leader still exists it must be the same process (same start
            // time); if it is gone, its group id cannot have been reused while members of
            // the old group remain, so killing the group can only reach what the job left.
            let started = process_start_ticks(pid);
            if started.is_some() && started != leftover.pid_start_ticks {
                continue;
            }
            if killpg(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
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
            let next = match settled {
                Ok(next) => {
                    if let Some((job, ending)) = ended.take() {
                        self.announce_end(&job, &ending);
                    }
                    next
                }
                Err(fault) => {
                    tracing::error!(%fault, "a job worker could not record or claim a job; retrying");
                    if !claim {
                        // Shutting down: the next start marks the unrecorded job interrupted;
                        // its followers are told it has ended here.
                        if let Some((job, ending)) = ended.take() {
                            self.announce_end(&job, &ending);
                        }
                        return;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
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

    /// Runs a claimed job to its end; its ending is recorded by the worker's next claim.
    async fn run(&self, job: &JobRow, shutdown: &CancellationToken) -> Ending {
        let (progress, stop) =
            self.live_job(job.seq, |live| (live.progress.clone(), live.stop.clone()));
        self.execute(job, &progress, &stop, shutdown).await
    }

    /// Tells followers a job has ended, once its ending is committed.
    fn announce_end(&self, job: &JobRow, ending: &Ending) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = live.remove(&job.seq) {
            entry
                .progress
                .send_modify(|progress| progress.finished = true);
        }
        tracing::info!(job = %job.id, status = ending.status, "job ended");
    }

    /// Runs the job's process to its end and captures its output; returns how it ended.
    async fn execute(
        &self,
        job: &JobRow,
        progress: &watch::Sender<Progress>,
        stop: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Ending {
        let args: Vec<String> = serde_json::from_str(&job.args).unwrap_or_default();
        let mut command = Command::new(&job.command);
        // warden's own settings (WARDEN_TOKEN among them) are not the job's business.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("WARDEN_") {
                command.env_remove(name);
            }
        }
        let spawned = command
            .args(&args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => {
                return Ending {
                    status: "failed",
                    exit_code: None,
                    signal: None,
                    error: Some(format!("cannot start {:?}: {error}", job.command)),
                    truncated: false,
                };
            }
        };
        let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) else {
            return Ending {
                status: "failed",
                exit_code: None,
                signal: None,
                error: Some("the process ended before it could be tracked".into()),
                truncated: false,
            };
        };
        if let Err(fault) = self.record_process(job.seq, pid).await {
            // Unrecorded, the process could not be found again after a crash: do not run it.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = child.wait().await;
            return Ending {
                status: "failed",
                exit_code: None,
                signal: None,
                error: Some(format!("could not record the job's process: {fault}")),
                truncated: false,
            };
        }

        let mut output = tokio::spawn(pump_output(
            child.stdout.take(),
            child.stderr.take(),
            job.seq,
            self.writer.clone(),
            progress.clone(),
            self.output_limit,
        ));
        let (status, cut_short) = tokio::select! {
            status = child.wait() => (status, None),
            () = stop.cancelled() => (self.terminate(pid, &mut child).await, Some("stopped")),
            () = shutdown.cancelled() => (self.terminate(pid, &mut child).await, Some("interrupted")),
        };
        // Whatever the job left running in its group goes with it.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let truncated = match tokio::time::timeout(OUTPUT_DRAIN, &mut output).await {
            Ok(Ok(summary)) => summary.truncated,
            _ => {
                // A process that left the group still holds the pipe: stop reading it, so
                // nothing is appended to a job recorded as ended.
                output.abort();
                tracing::warn!(job = %job.id, "output did not end with the job; it was cut");
                true
            }
        };
        ending(&status, cut_short, truncated)
    }

    /// SIGTERM to the group, SIGKILL after the grace; returns the exit status.
    async fn terminate(&self, pid: i32, child: &mut Child) -> std::io::Result<ExitStatus> {
        let group = Pid::from_raw(pid);
        let _ = killpg(group, Signal::SIGTERM);
        match tokio::time::timeout(self.stop_grace, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                let _ = killpg(group, Signal::SIGKILL);
                child.wait().await
            }
        }
    }

    async fn record_process(&self, seq: i64, pid: i32) -> Result<(), StorageFault> {
        let boot_id = current_boot_id();
        let start_ticks = process_start_ticks(pid);
        match self.db.write_connection().await {
            Ok(mut conn) => store::record_process(
                &mut conn,
                seq,
                i64::from(pid),
                boot_id.as_deref(),
                start_ticks,
            )
            .await
            .map_err(|error| StorageFault::of(&error)),
            Err(fault) => Err(fault),
        }
    }
}

/// How a job ended, from its exit status and whether it was cut short.
fn ending(
    status: &std::io::Result<ExitStatus>,
    cut_short: Option<&'static str>,
    truncated: bool,
) -> Ending {
    use std::os::unix::process::ExitStatusExt as _;
    let (exit_code, signal, wait_error) = match status {
        Ok(status) => (
            status.code().map(i64::from),
            status.signal().map(i64::from),
            None,
        ),
        Err(error) => (
            None,
            None,
            Some(format!("cannot wait for the process: {error}")),
        ),
    };
    let (status, error) = match cut_short {
        Some("stopped") => ("stopped", None),
        Some(_) => (
            "interrupted",
            Some("warden shut down while the job was running".to_owned()),
        ),
        None if exit_code == Some(0) => ("succeeded", None),
        None => (
            "failed",
            wait_error.or_else(|| signal.map(|signal| format!("killed by signal {signal}"))),
        ),
    };
    Ending {
        status,
        exit_code,
        signal,
        error,
        truncated,
    }
}

/// What the output pump saw.
struct OutputSummary {
    truncated: bool,
}

/// Reads stdout and stderr as they come, in arrival order, coalesces them into chunks and
/// sends them through the writer, several in flight; each commit moves `progress` on. Bytes
/// past `limit` are read (so the job never blocks on a full pipe) and dropped.
async fn pump_output(
    stdout: Option<impl AsyncRead + Unpin + Send + 'static>,
    stderr: Option<impl AsyncRead + Unpin + Send + 'static>,
    job_seq: i64,
    writer: Writer<AppendOutput>,
    progress: watch::Sender<Progress>,
    limit: u64,
) -> OutputSummary {
    let (pieces, mut arriving) = mpsc::channel::<Bytes>(IN_FLIGHT);
    if let Some(stdout) = stdout {
        tokio::spawn(read_pipe(stdout, pieces.clone()));
    }
    if let Some(stderr) = stderr {
        tokio::spawn(read_pipe(stderr, pieces.clone()));
    }
    drop(pieces);

    let mut pending = Vec::with_capacity(CHUNK);
    let mut accepted: u64 = 0;
    let mut truncated = false;
    let mut in_flight = FuturesOrdered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            biased;
            Some(committed) = in_flight.next(), if !in_flight.is_empty() => {
                match committed {
                    Ok((start_offset, bytes)) => progress
                        .send_modify(|progress| progress.committed(start_offset, bytes)),
                    Err(fault) => {
                        // The bytes are gone; say so on the job rather than pretend.
                        truncated = true;
                        tracing::error!(%fault, "a chunk of job output could not be stored");
                    }
                }
            }
            piece = arriving.recv(), if open && in_flight.len() < IN_FLIGHT => {
                let Some(piece) = piece else {
                    open = false;
                    continue;
                };
                let mut accept = |piece: &Bytes, pending: &mut Vec<u8>| {
                    let room = usize::try_from(limit.saturating_sub(accepted)).unwrap_or(usize::MAX);
                    let kept = piece.len().min(room);
                    truncated |= kept < piece.len();
                    accepted += kept as u64;
                    pending.extend_from_slice(&piece[..kept]);
                };
                accept(&piece, &mut pending);
                // Take what else has already arrived, up to a chunk, without waiting.
                while pending.len() < CHUNK {
                    match arriving.try_recv() {
                        Ok(piece) => accept(&piece, &mut pending),
                        Err(_) => break,
                    }
                }
                if pending.is_empty() {
                    continue;
                }
                let bytes = if pending.len() < CHUNK / 2 {
                    // A trickle: copy it out rather than keep a whole chunk's allocation
                    // alive in the queue and in the followers' memory.
                    let bytes = Bytes::copy_from_slice(&pending);
                    pending.clear();
                    bytes
                } else {
                    Bytes::from(std::mem::replace(&mut pending, Vec::with_capacity(CHUNK)))
                };
                let start_offset = i64::try_from(accepted).unwrap_or(i64::MAX)
                    - i64::try_from(bytes.len()).unwrap_or(i64::MAX);
                let writer = writer.clone();
                let chunk = OutputChunk { job_seq, start_offset, bytes: bytes.clone(), truncated };
                in_flight.push_back(async move {
                    writer.submit(chunk).await.map(|()| (start_offset, bytes))
                });
            }
        }
    }
    OutputSummary { truncated }
}

async fn read_pipe(mut pipe: impl AsyncRead + Unpin, pieces: mpsc::Sender<Bytes>) {
    let mut buffer = bytes_buffer();
    loop {
        match pipe.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if pieces.send(buffer.split().freeze()).await.is_err() {
                    return;
                }
                if buffer.capacity() < CHUNK / 4 {
                    buffer = bytes_buffer();
                }
            }
        }
    }
}

fn bytes_buffer() -> bytes::BytesMut {
    bytes::BytesMut::with_capacity(CHUNK)
}

/// This boot of the kernel, to tell a recorded pid from one reused after a reboot.
fn current_boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_owned())
}

/// When process `pid` started, in clock ticks since boot (field 22 of `/proc/PID/stat`).
fn process_start_ticks(pid: i32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; count after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(chunks: &[(i64, Bytes)]) -> Vec<i64> {
        chunks.iter().map(|&(start, _)| start).collect()
    }

    #[test]
    fn followers_read_memory_only_while_it_holds_everything_from_their_offset() {
        let mut progress = Progress::default();
        assert_eq!(
            progress.recent_from(0, 8),
            None,
            "nothing held: read SQLite"
        );
        for start in (0..40).map(|n| n * 10) {
            progress.committed(start, Bytes::from(vec![b'x'; 10]));
        }
        // The oldest eight of forty chunks are forgotten: 80..400 is held.
        assert_eq!(
            progress.recent_from(79, 8),
            None,
            "behind memory: read SQLite"
        );
        assert_eq!(starts(&progress.recent_from(80, 3).unwrap()), [80, 90, 100]);
        // An offset inside a chunk gets that chunk (the caller skips what it has).
        assert_eq!(starts(&progress.recent_from(395, 8).unwrap()), [390]);
        assert_eq!(
            progress.recent_from(400, 8),
            Some(Vec::new()),
            "at the edge"
        );
    }

    #[test]
    fn a_chunk_lost_to_a_failed_commit_leaves_a_gap_followers_skip() {
        let mut progress = Progress::default();
        progress.committed(0, Bytes::from_static(b"abc"));
        progress.committed(10, Bytes::from_static(b"def"));
        assert_eq!(starts(&progress.recent_from(3, 8).unwrap()), [10]);
    }

    #[test]
    fn our_own_start_time_is_readable() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(process_start_ticks(me).is_some());
        assert_eq!(process_start_ticks(me), process_start_ticks(me));
    }
}
