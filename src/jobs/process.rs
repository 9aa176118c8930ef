//! A job's process: spawned directly (never through a shell) into its confinement (its
//! cgroup, or its marker) as the leader of a process group of its own, as the job's
//! account, in its working directory; signalled, killed whole, reaped, and recognised
//! again after a crash of warden through `/proc`.
//!
//! Invariants: the leader is reaped only after everything else of the job is killed, and it
//! is only ever signalled through its pidfd or its group while it is unreaped, so a
//! recycled pid is never signalled; a job's processes never outlive [`JobProcess::finish`].

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::process::{ExitStatus, Stdio};
use std::sync::PoisonError;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Gid, Pid, Uid};
use tokio::io::unix::AsyncFd;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

use super::sandbox::{JobCgroup, LimitHits, markers};

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
    child: Child,
    pid: i32,
    /// Readable once the leader has exited; it does not reap it.
    pidfd: AsyncFd<OwnedFd>,
    confinement: Confinement,
    finished: bool,
}

/// A started process, with the pipes of its output.
#[derive(Debug)]
pub struct Spawned {
    pub process: JobProcess,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
}

/// Why a job's process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start {command:?} in {cwd:?}: {source}")]
    Start {
        command: String,
        cwd: String,
        source: io::Error,
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
    /// Starts `launch` with stdin from `/dev/null` and stdout and stderr piped, leading a
    /// process group of its own, settled by [`settle_before_exec`].
    pub fn spawn(launch: Launch<'_>) -> Result<Spawned, SpawnError> {
        let start_error = |source: io::Error| SpawnError::Start {
            command: launch.command.to_owned(),
            cwd: launch.cwd.to_owned(),
            source,
        };
        let mut builder = Command::new(launch.command);
        builder
            .env_clear()
            .envs(launch.env.iter().map(|(name, value)| (name, value)))
            .args(launch.args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let cgroup_procs = match &launch.confinement {
            Confinement::Cgroup(cgroup) => cgroup.procs_files().map_err(start_error)?,
            Confinement::Marked(_) => Vec::new(),
        };
        let cwd = CString::new(launch.cwd)
            .map_err(|_| start_error(io::Error::from(io::ErrorKind::InvalidInput)))?;
        settle_before_exec(&mut builder, cgroup_procs, launch.switch_to, cwd);
        let mut child = {
            // Listed before it can exit, so that the subreaper's reaper never takes it.
            let mut leaders = markers::LEADERS
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let child = match builder.spawn() {
                Ok(child) => child,
                Err(error) => {
                    // Nothing of the job runs (a child whose exec failed is reaped already).
                    if let Confinement::Cgroup(cgroup) = &launch.confinement {
                        cgroup.discard();
                    }
                    return Err(start_error(error));
                }
            };
            if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
                leaders.push(pid);
            }
            child
        };
        // The cgroup files the closure holds are closed with it (the child's copies by exec).
        drop(builder);
        let untracked = |why: String| SpawnError::Untracked(why);
        // Unreaped (only its worker reaps it), the pid is still the child's.
        let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) else {
            return Err(untracked("its pid does not fit a pid_t".to_owned()));
        };
        let pidfd = markers::pidfd_open(pid)
            .ok_or_else(|| untracked(format!("pidfd_open: {}", io::Error::last_os_error())))
            .and_then(|fd| watch(fd).map_err(|error| untracked(error.to_string())));
        let pidfd = match pidfd {
            Ok(pidfd) => pidfd,
            Err(error) => {
                // Untracked, it must not run: the runtime reaps it once killed.
                let _ = child.start_kill();
                forget_leader(pid);
                if let Confinement::Cgroup(cgroup) = &launch.confinement {
                    cgroup.kill();
                }
                return Err(error);
            }
        };
        Ok(Spawned {
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            process: Self {
                child,
                pid,
                pidfd,
                confinement: launch.confinement,
                finished: false,
            },
        })
    }

    /// The leader's pid, which is also its group's id.
    pub fn pid(&self) -> i32 {
        self.pid
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
        match &self.confinement {
            Confinement::Cgroup(cgroup) => cgroup.kill(),
            Confinement::Marked(marker) => {
                let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
                let _ = markers::pidfd_kill(self.pidfd.get_ref());
                markers::kill_marked(markers::Reach::Job(marker), Some(self.pid));
            }
        }
    }

    /// Kills whatever is left of the job, reaps the leader, and tells how it ended and what
    /// hit the job's limits; its cgroup is removed.
    pub async fn finish(mut self) -> Finished {
        self.kill_all();
        let status = self.child.wait().await;
        self.finished = true;
        forget_leader(self.pid);
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

/// Takes `pid` off the leaders the subreaper's reaper leaves alone, once it is reaped.
fn forget_leader(pid: i32) {
    markers::LEADERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|leader| *leader != pid);
}

/// Settles the child after the fork, before the exec, in this order: it moves itself into
/// each cgroup whose `cgroup.procs` is in `procs` (writing `0` moves the writer), while it
/// is still as privileged as warden; drops every supplementary group and switches to the
/// job's account (`switch_to`); and enters `cwd` as that account. So the job's program,
/// and all it ever starts, run in its cgroup and as its account from their first
/// instruction, and a `cwd` the account cannot enter fails the start.
#[expect(
    unsafe_code,
    reason = "settling a child between fork and exec needs pre_exec"
)]
fn settle_before_exec(
    builder: &mut Command,
    procs: Vec<File>,
    switch_to: Option<(Uid, Gid)>,
    cwd: CString,
) {
    // SAFETY: the closure runs in the forked child, where only async-signal-safe calls are
    // sound: it makes write, setgroups, setgid, setuid and chdir system calls on values
    // made before the fork, allocating nothing and taking no lock.
    unsafe {
        builder.pre_exec(move || {
            for file in &procs {
                nix::unistd::write(file, b"0")?;
            }
            if let Some((uid, gid)) = switch_to {
                nix::unistd::setgroups(&[])?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
            }
            nix::unistd::chdir(cwd.as_c_str())?;
            Ok(())
        });
    }
}

/// Registers a pidfd with the runtime, which wakes its reader once the process has exited.
#[expect(
    unsafe_code,
    reason = "tokio registers a raw fd only through an unsafe call"
)]
fn watch(pidfd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the fd, so it stays open (and is not replaced) for as long as
    // it is registered, and is closed only when the AsyncFd drops.
    unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(|error| error.into_parts().1)
}

impl Drop for JobProcess {
    /// A job dropped unfinished (its worker was cancelled) takes its processes with it; the
    /// next start removes its cgroup.
    fn drop(&mut self) {
        if !self.finished {
            self.kill_all();
        }
    }
}

/// The exit code and signal of an exit status (either may be absent).
pub fn code_and_signal(status: &ExitStatus) -> (Option<i64>, Option<i64>) {
    use std::os::unix::process::ExitStatusExt as _;
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

impl ProcessMark {
    /// The mark of live process `pid`.
    pub fn of(pid: i32) -> Self {
        Self {
            boot_id: current_boot_id(),
            start_ticks: process_start_ticks(pid),
        }
    }
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

fn current_boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_owned())
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

    #[test]
    fn our_own_start_time_is_readable() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(process_start_ticks(me).is_some());
        assert_eq!(ProcessMark::of(me), ProcessMark::of(me));
        assert!(ProcessMark::of(me).boot_id.is_some());
    }
}
