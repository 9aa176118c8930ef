//! A job's process: spawned directly (never through a shell) as the leader of a process
//! group of its own, signalled as a group, reaped, and recognised again after a crash of
//! warden through `/proc`.
//!
//! Invariant: a group is signalled only while its leader is known to be ours (a child we
//! have not yet reaped, or a recorded leader whose boot and start time still match).

use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// A running job's process and its process group (whose id is the leader's pid).
#[derive(Debug)]
pub struct JobProcess {
    child: Child,
    pid: i32,
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
    #[error("cannot start {command:?}: {source}")]
    Start { command: String, source: io::Error },
    #[error("the process ended before it could be tracked")]
    Untracked,
}

impl JobProcess {
    /// Starts `command` with `args` in a new process group, stdin from `/dev/null`, stdout and
    /// stderr piped, and none of warden's own `WARDEN_*` settings in its environment.
    pub fn spawn(command: &str, args: &[String]) -> Result<Spawned, SpawnError> {
        let mut builder = Command::new(command);
        // warden's own settings (WARDEN_TOKEN among them) are not the job's business.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("WARDEN_") {
                builder.env_remove(name);
            }
        }
        let mut child = builder
            .args(args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SpawnError::Start {
                command: command.to_owned(),
                source,
            })?;
        // A pid beyond i32 cannot be signalled: treat it like one we lost track of.
        let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) else {
            return Err(SpawnError::Untracked);
        };
        Ok(Spawned {
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            process: Self { child, pid },
        })
    }

    /// The leader's pid, which is also the group's id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the leader to exit.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// SIGTERM to the group, SIGKILL after `grace`; returns the leader's exit status.
    pub async fn terminate(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        let group = Pid::from_raw(self.pid);
        let _ = killpg(group, Signal::SIGTERM);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                let _ = killpg(group, Signal::SIGKILL);
                self.child.wait().await
            }
        }
    }

    /// SIGKILL to whatever is left in the group.
    pub fn kill_group(&self) {
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
    }

    /// Kills the group and reaps the leader: for a process that must not run after all.
    pub async fn abandon(mut self) {
        self.kill_group();
        let _ = self.child.wait().await;
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
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; count after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
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
