//! Containment without a cgroup: each job's processes carry a marker in their environment,
//! `WARDEN_JOB=<instance>:<seq>`, which every process it starts inherits; a job ends by
//! killing every process that carries its marker, found by walking `/proc`. Each is
//! signalled through a pidfd opened before its marker is checked again, so a pid that was
//! reused in between is never signalled. warden is also a subreaper then, so orphans come
//! back to it rather than to init (the reaper below collects them).
//!
//! A process can drop the marker by exec'ing with an environment of its own: without a
//! cgroup containment holds for what jobs do by accident (daemons, `setsid`, double forks),
//! not against a job that sets out to escape. README says so.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::process::{Child, Command};
use std::sync::{Mutex, PoisonError};

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use crate::jobs::process::stat_fields;

/// The environment variable that marks a job's processes.
pub const MARKER: &str = "WARDEN_JOB";

/// The most passes over `/proc` one kill makes: a pass finds the processes forked during
/// the last one.
const PASSES: usize = 16;

/// The marker of job `seq` of warden `instance`.
pub fn marker(instance: &str, seq: i64) -> String {
    format!("{instance}:{seq}")
}

/// Which markers a kill reaches.
#[derive(Debug, Clone, Copy)]
pub enum Reach<'a> {
    /// One job's.
    Job(&'a str),
    /// Every job's of this instance (leftovers of a previous warden).
    Instance(&'a str),
}

impl Reach<'_> {
    fn matches(&self, value: &[u8]) -> bool {
        match *self {
            Self::Job(marker) => value == marker.as_bytes(),
            Self::Instance(instance) => value
                .strip_prefix(instance.as_bytes())
                .is_some_and(|rest| rest.first() == Some(&b':')),
        }
    }
}

/// SIGKILL to every process marked as `reach` says, but `spare` (a job's leader, which its
/// worker reaps); returns how many were signalled.
pub fn kill_marked(reach: Reach<'_>, spare: Option<i32>) -> usize {
    let mut signalled: HashSet<i32> = HashSet::new();
    for _ in 0..PASSES {
        let found: Vec<i32> = processes()
            .filter(|pid| Some(*pid) != spare && !signalled.contains(pid))
            .filter(|pid| is_marked(*pid, reach))
            .collect();
        if found.is_empty() {
            break;
        }
        for pid in found {
            // Open first, check again, then signal the process the pidfd holds: if the pid
            // was reused after the walk, the new process fails the check (or the pidfd is of
            // the dead one and the signal goes nowhere).
            let Some(pidfd) = pidfd_open(pid) else {
                continue;
            };
            if is_marked(pid, reach) && pidfd_kill(&pidfd) {
                signalled.insert(pid);
            }
        }
    }
    signalled.len()
}

/// The pids in `/proc`.
fn processes() -> impl Iterator<Item = i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// Whether process `pid` carries a marker `reach` reaches.
fn is_marked(pid: i32, reach: Reach<'_>) -> bool {
    let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
        return false; // gone, or not ours to read
    };
    let prefix = format!("{MARKER}=");
    environ
        .split(|byte| *byte == 0)
        .filter_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .any(|value| reach.matches(value))
}

/// A pidfd of process `pid`, if it exists.
pub fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// SIGKILL through a pidfd; whether it was delivered.
pub fn pidfd_kill(pidfd: &OwnedFd) -> bool {
    rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL).is_ok()
}

/// The pids of warden's children that it reaps itself (its job spawners, see
/// [`crate::jobs::spawner`]); the reaper of adopted orphans leaves them alone.
static OWN_CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Spawns `command` as one of [`OWN_CHILDREN`], listed before it can exit.
pub fn spawn_own_child(command: &mut Command) -> io::Result<Child> {
    let mut own = OWN_CHILDREN.lock().unwrap_or_else(PoisonError::into_inner);
    let child = command.spawn()?;
    own.push(child.id());
    Ok(child)
}

/// Takes `pid` off [`OWN_CHILDREN`], once it is reaped.
pub fn forget_own_child(pid: u32) {
    OWN_CHILDREN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|own| *own != pid);
}

/// Makes warden a subreaper: orphans of its jobs become its children, not init's.
pub fn become_subreaper() -> bool {
    nix::sys::prctl::set_child_subreaper(true).is_ok()
}

/// Reaps the children warden adopted as a subreaper that have exited (never one of
/// [`OWN_CHILDREN`]); returns how many.
pub fn reap_adopted() -> usize {
    let own = OWN_CHILDREN.lock().unwrap_or_else(PoisonError::into_inner);
    let me = std::process::id();
    let mut reaped = 0;
    for pid in processes().filter(|pid| u32::try_from(*pid).is_ok_and(|pid| !own.contains(&pid))) {
        // The state and the parent's pid.
        let Some(fields) = stat_fields(pid) else {
            continue;
        };
        let (Some("Z"), Some(parent)) = (fields.first().map(String::as_str), fields.get(1)) else {
            continue;
        };
        if parent.parse() != Ok(me) {
            continue;
        }
        // An exited child of ours that nothing else waits for (own children are held above).
        if waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG))
            .is_ok_and(|status| status.pid() == Some(Pid::from_raw(pid)))
        {
            reaped += 1;
        }
    }
    reaped
}
