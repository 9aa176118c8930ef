//! A job's process: forked by the job spawner (never through a shell) into its confinement
//! (its cgroup, or its marker) as the leader of a process group of its own, as the job's
//! account, in its working directory; signalled, killed whole, reaped, and recognised
//! again after a crash of warden through `/proc`.
//!
//! Invariants: the leader is reaped only after everything else of the job is killed, and it
//! is only ever signalled through its pidfd or its group while it is unreaped (the spawner
//! reaps it only when [`JobProcess::finish`] asks for its status, or, once finish has read
//! the status from the zombie, leaves it to the spawner's next request), so a recycled pid
//! is never signalled; a job's processes never outlive [`JobProcess::finish`].

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Gid, Pid, Uid};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use super::sandbox::{JobCgroup, LimitHits, markers};
use super::spawner::{Spawn, SpawnFailure, Spawner, watch};

/// What holds all of a job's processes, so that they end together.
#[derive(Debug)]
pub enum Confinement {
    /// A cgroup of its own: `cgroup.kill` ends every process in it.
    Cgroup(JobCgroup),
    /// A marker in its processes' environment (no cgroup on this host), found through
    /// `/proc`; see [`markers`].
    Marked(String),
}

/// How to start a job's process.
#[derive(Debug)]
pub struct Launch<'a> {
    pub command: &'a str,
    pub args: &'a [String],
    /// Its whole environment.
    pub env: Vec<(String, OsString)>,
    pub cwd: &'a str,
    /// The account to switch to after the fork, when it is not warden's own.
    pub switch_to: Option<(Uid, Gid)>,
    pub confinement: Confinement,
}

/// A running job's process, its pidfd, and what holds the rest of the job.
#[derive(Debug)]
pub struct JobProcess {
    pid: i32,
    /// Readable once the leader has exited; it does not reap it.
    pidfd: AsyncFd<OwnedFd>,
    /// The spawner that forked it, and reaps it.
    spawner: Arc<Spawner>,
    confinement: Confinement,
    /// When the leader started, to know its zombie (see [`zombie_status`]).
    start_ticks: Option<i64>,
    finished: bool,
}

/// A started process, with the pipes of its output.
#[derive(Debug)]
pub struct Spawned {
    pub process: JobProcess,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// Why a job's process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start {command:?} in {cwd:?}: {failure}")]
    Start {
        command: String,
        cwd: String,
        failure: SpawnFailure,
    },
    #[error("the process could not be tracked: {0}")]
    Untracked(String),
}

/// How a job's process ended, once all of the job is gone.
#[derive(Debug)]
pub struct Finished {
    pub status: io::Result<ExitStatus>,
    pub hits: LimitHits,
}

impl JobProcess {
    /// Has `spawner` start `launch` with stdin from `/dev/null` and stdout and stderr piped,
    /// leading a process group of its own, settled as [`super::spawner::serve`] says.
    pub async fn spawn(spawner: &Arc<Spawner>, launch: Launch<'_>) -> Result<Spawned, SpawnError> {
        let start_error = |failure: SpawnFailure| SpawnError::Start {
            command: launch.command.to_owned(),
            cwd: launch.cwd.to_owned(),
            failure,
        };
        let (stdout, stdout_end) =
            output_pipe().map_err(|error| start_error(SpawnFailure::Spawner(error)))?;
        let (stderr, stderr_end) =
            output_pipe().map_err(|error| start_error(SpawnFailure::Spawner(error)))?;
        let request = Spawn {
            program: launch.command.as_bytes().to_vec(),
            args: launch
                .args
                .iter()
                .map(|arg| arg.as_bytes().to_vec())
                .collect(),
            env: launch
                .env
                .iter()
                .map(|(name, value)| [name.as_bytes(), b"=", value.as_encoded_bytes()].concat())
                .collect(),
            cwd: launch.cwd.as_bytes().to_vec(),
            account: launch
                .switch_to
                .map(|(uid, gid)| (uid.as_raw(), gid.as_raw())),
            cgroup_procs: match &launch.confinement {
                Confinement::Cgroup(cgroup) => cgroup
                    .procs_paths()
                    .iter()
                    .map(|path| path.as_os_str().as_encoded_bytes().to_vec())
                    .collect(),
                Confinement::Marked(_) => Vec::new(),
            },
        };
        let pid = match spawner.spawn(request, stdout_end, stderr_end).await {
            Ok(pid) => pid,
            Err(failure) => {
                match (&failure, &launch.confinement) {
                    // Nothing of the job runs: it was reaped after its failed step.
                    (SpawnFailure::NotStarted { .. }, Confinement::Cgroup(cgroup)) => {
                        cgroup.discard();
                    }
                    (SpawnFailure::NotStarted { .. }, Confinement::Marked(_)) => {}
                    // It may run: kill whatever did start.
                    (SpawnFailure::Spawner(_), confinement) => kill_confined(confinement, None),
                }
                return Err(start_error(failure));
            }
        };
        // Unreaped (only its spawner reaps it, when asked), the pid is still the child's.
        let pidfd = markers::pidfd_open(pid)
            .ok_or_else(|| format!("pidfd_open: {}", io::Error::last_os_error()))
            .and_then(|fd| watch(fd, Interest::READABLE).map_err(|error| error.to_string()));
        let pidfd = match pidfd {
            Ok(pidfd) => pidfd,
            Err(why) => {
                // Untracked, it must not run; the spawner reaps it once killed.
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                kill_confined(&launch.confinement, None);
                spawner.forget(pid);
                return Err(SpawnError::Untracked(why));
            }
        };
        Ok(Spawned {
            stdout,
            stderr,
            process: Self {
                pid,
                pidfd,
                spawner: spawner.clone(),
                confinement: launch.confinement,
                start_ticks: process_start_ticks(pid),
                finished: false,
            },
        })
    }

    /// The leader's pid, which is also its group's id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Where to find the leader again after a crash of warden.
    pub fn mark(&self) -> ProcessMark {
        ProcessMark {
            boot_id: current_boot_id(),
            start_ticks: self.start_ticks,
        }
    }

    /// Waits for the leader to exit, without reaping it.
    pub async fn exited(&self) {
        // An error here would be the runtime's; the reap in `finish` then waits instead.
        let _ = self.pidfd.readable().await;
    }

    /// SIGTERM to the leader's group, then everything after `grace` if the leader is still
    /// there.
    pub async fn terminate(&self, grace: Duration) {
        // Unreaped, the leader keeps its group's id from being reused.
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGTERM);
        if tokio::time::timeout(grace, self.exited()).await.is_err() {
            self.kill_all();
        }
    }

    /// SIGKILL to every process of the job, the leader among them.
    pub fn kill_all(&self) {
        if let Confinement::Marked(_) = &self.confinement {
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = markers::pidfd_kill(self.pidfd.get_ref());
        }
        kill_confined(&self.confinement, Some(self.pid));
    }

    /// Kills whatever is left of the job, reaps the leader, and tells how it ended and what
    /// hit the job's limits; its cgroup is removed.
    pub async fn finish(mut self) -> Finished {
        self.kill_all();
        self.exited().await;
        let status = match zombie_status(self.pid, self.start_ticks) {
            Some(status) => {
                self.spawner.forget(self.pid);
                Ok(status)
            }
            None => self.spawner.reap(self.pid).await,
        };
        self.finished = true;
        let hits = match &self.confinement {
            Confinement::Cgroup(cgroup) => {
                cgroup.wait_empty().await;
                let hits = cgroup.hits();
                cgroup.remove().await;
                hits
            }
            Confinement::Marked(marker) => {
                // Whatever forked while the leader was reaped.
                markers::kill_marked(markers::Reach::Job(marker), None);
                LimitHits::default()
            }
        };
        Finished { status, hits }
    }
}

/// The exit status of the zombie of process `pid`, started at `start_ticks`, as
/// `/proc/PID/stat` shows it (field 52), when that can be trusted; this saves a job a round
/// trip to its spawner. It can be when the process there is a zombie; warden may read its
/// exit code (the kernel shows the wait channel, field 35, as 0 to a reader it hides the exit
/// code from, and for a process not yet wholly dead); and it started when the leader did
/// (field 22), so it is the leader itself, which nothing but its spawner reaps, and only when
/// told to. (The pid of a reaped leader reused by a process started in the same clock tick
/// would take tens of thousands of forks within those 10 ms.) Otherwise `None`: ask the
/// spawner.
fn zombie_status(pid: i32, start_ticks: Option<i64>) -> Option<ExitStatus> {
    let fields = stat_fields(pid)?;
    let zombie = fields.first()? == "Z";
    let readable = fields.get(32)? != "0";
    let leader = start_ticks.is_some() && fields.get(19)?.parse().ok() == start_ticks;
    let status = fields.get(49)?.parse().ok()?;
    (zombie && readable && leader).then(|| ExitStatus::from_raw(status))
}

/// SIGKILL to every process in `confinement` (but `spare`, a leader killed by its pidfd).
fn kill_confined(confinement: &Confinement, spare: Option<i32>) {
    match confinement {
        Confinement::Cgroup(cgroup) => cgroup.kill(),
        Confinement::Marked(marker) => {
            markers::kill_marked(markers::Reach::Job(marker), spare);
        }
    }
}

/// A pipe for a job's output: the end warden reads, and the (blocking) end the job writes.
fn output_pipe() -> io::Result<(pipe::Receiver, OwnedFd)> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((pipe::Receiver::from_owned_fd(read_end)?, write_end))
}

impl Drop for JobProcess {
    /// A job dropped unfinished (its worker was cancelled) takes its processes with it; the
    /// spawner reaps its leader, and the next start removes its cgroup.
    fn drop(&mut self) {
        if !self.finished {
            self.kill_all();
            self.spawner.forget(self.pid);
        }
    }
}

/// The exit code and signal of an exit status (either may be absent).
pub fn code_and_signal(status: &ExitStatus) -> (Option<i64>, Option<i64>) {
    (status.code().map(i64::from), status.signal().map(i64::from))
}

/// Where to find a process again after a crash of warden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessMark {
    /// This boot of the kernel, to tell a recorded pid from one reused after a reboot.
    pub boot_id: Option<String>,
    /// When the process started, in clock ticks since boot.
    pub start_ticks: Option<i64>,
}

/// Kills what is left of the process group of a job a previous warden ran, if it can only be
/// that job's: same boot, and a leader that is either gone or the very same process (its start
/// time matches). Returns whether a group was signalled.
pub fn kill_leftover_group(pid: i32, recorded: &ProcessMark) -> bool {
    if recorded.boot_id.is_none() || recorded.boot_id != current_boot_id() {
        return false; // the machine rebooted since: that process is long gone
    }
    // If the group leader still exists it must be the same process (same start time); if it
    // is gone, its group id cannot have been reused while members of the old group remain,
    // so killing the group can only reach what the job left.
    let started = process_start_ticks(pid);
    if started.is_some() && started != recorded.start_ticks {
        return false;
    }
    killpg(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
}

/// This boot's id, read once: it changes only with a reboot.
fn current_boot_id() -> Option<String> {
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|id| id.trim().to_owned())
        })
        .clone()
}

/// When process `pid` started, in clock ticks since boot (field 22 of `/proc/PID/stat`).
fn process_start_ticks(pid: i32) -> Option<i64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// The fields of `/proc/PID/stat` after the command name, from field 3 (the state) on: the
/// name is in parentheses and may hold anything, spaces and parentheses among it.
pub fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    Some(after_name.split_whitespace().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `sh -c script` and waits until its zombie's status can be read: the child, its
    /// pid and start time, and that status.
    fn zombie_of(script: &str) -> (std::process::Child, i32, Option<i64>, ExitStatus) {
        let child = std::process::Command::new("sh")
            .args(["-c", script])
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let started = process_start_ticks(pid);
        // It stays a zombie until it is waited for.
        let status = (0..1000)
            .find_map(|_| {
                std::thread::sleep(Duration::from_millis(2));
                zombie_status(pid, started)
            })
            .expect("the zombie's status within 2 s");
        (child, pid, started, status)
    }

    #[test]
    fn a_zombies_exit_status_is_read_only_from_the_very_process() {
        let (mut child, pid, started, status) = zombie_of("exit 7");
        assert_eq!(status.code(), Some(7));
        // Not when it started at another time (another process on a reused pid), nor
        // without a start time.
        assert!(zombie_status(pid, started.map(|ticks| ticks + 1)).is_none());
        assert!(zombie_status(pid, None).is_none());
        // Nor once it is reaped.
        assert_eq!(child.wait().unwrap().code(), Some(7));
        assert!(zombie_status(pid, started).is_none());

        let (mut child, _, _, status) = zombie_of("kill -9 $$");
        assert_eq!(status.signal(), Some(9));
        child.wait().unwrap();
    }

    #[test]
    fn our_own_start_time_is_readable() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(process_start_ticks(me).is_some());
        assert_eq!(process_start_ticks(me), process_start_ticks(me));
        assert!(current_boot_id().is_some());
        assert_eq!(current_boot_id(), current_boot_id());
    }
}
