//! A cgroup per job: every process the job starts is in it, however it forks or `setsid`s,
//! so one write to `cgroup.kill` ends them all; its limits and what hit them are read there.
//!
//! Containment needs the cgroup v2 tree (`cgroup.kill`, Linux 5.14); each limit takes its
//! controller from the v2 tree where it is enabled there, else from a cgroup v1 hierarchy
//! (a host in "hybrid" mode, like this project's CI machines, has its controllers there).
//! warden's job cgroups live under a directory of its own, named after its data dir, beside
//! warden in each tree: `warden-<id>/job-<seq>`. Two wardens on two data dirs never touch
//! each other's jobs; a warden restarted on the same data dir finds its predecessor's.

mod hierarchies;

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::limits::{Enforceable, Limits};
use hierarchies::{enable_v2, own_v2_dir, v1_parent};

/// Where a controller is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    /// Enabled in the v2 tree: its files are in each job's v2 cgroup.
    V2,
    /// In a v1 hierarchy: each job gets a cgroup under this directory too.
    V1(PathBuf),
}

/// The limits' controllers, by name in both trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    Memory,
    Cpu,
    Pids,
}

impl Controller {
    const ALL: [Self; 3] = [Self::Memory, Self::Cpu, Self::Pids];

    fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Cpu => "cpu",
            Self::Pids => "pids",
        }
    }
}

/// This warden's job cgroups.
#[derive(Debug)]
pub struct Cgroups {
    /// The v2 directory that holds one cgroup per job.
    parent: PathBuf,
    memory: Option<Place>,
    cpu: Option<Place>,
    pids: Option<Place>,
}

/// What each limit is enforced with, for the start line and `/healthz`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ControllerReport {
    /// `cgroup v2`, `cgroup v1`, or `unavailable`.
    pub memory: &'static str,
    pub cpu: &'static str,
    pub pids: &'static str,
}

/// What hit a job's limits while it ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitHits {
    /// The kernel killed one of its processes for memory.
    pub out_of_memory: bool,
    /// A `fork` failed for the pids limit.
    pub pids: bool,
}

impl Cgroups {
    /// This warden's job cgroups (made if need be), named after `instance`; why not, when
    /// the host does not let warden make them.
    pub fn set_up(instance: &str) -> Result<Self, String> {
        let mounts = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|error| format!("cannot read /proc/self/mountinfo: {error}"))?;
        let memberships = fs::read_to_string("/proc/self/cgroup")
            .map_err(|error| format!("cannot read /proc/self/cgroup: {error}"))?;
        let own = own_v2_dir(&mounts, &memberships)
            .ok_or("the cgroup v2 tree is not mounted, or warden is not in it")?;
        let parent = own.join(format!("warden-{instance}"));
        make_dir(&parent).map_err(|error| {
            format!(
                "cannot make {} (warden needs a delegated cgroup: run as root, or under systemd \
                 with Delegate=yes): {error}",
                parent.display()
            )
        })?;
        if !parent.join("cgroup.kill").exists() {
            return Err("the kernel has no cgroup.kill (Linux 5.14 or later)".to_owned());
        }
        let place = |controller: Controller| {
            if enable_v2(&own, &parent, controller.name()) {
                Some(Place::V2)
            } else {
                v1_parent(&mounts, &memberships, controller.name(), instance).map(Place::V1)
            }
        };
        Ok(Self {
            memory: place(Controller::Memory),
            cpu: place(Controller::Cpu),
            pids: place(Controller::Pids),
            parent,
        })
    }

    /// Which limits these cgroups can enforce.
    pub fn enforceable(&self) -> Enforceable {
        Enforceable {
            memory: self.memory.is_some(),
            cpu: self.cpu.is_some(),
            pids: self.pids.is_some(),
        }
    }

    /// The v2 directory of this warden's job cgroups.
    pub fn parent(&self) -> &Path {
        &self.parent
    }

    /// What each limit is enforced with.
    pub fn report(&self) -> ControllerReport {
        let name = |place: &Option<Place>| match place {
            Some(Place::V2) => "cgroup v2",
            Some(Place::V1(_)) => "cgroup v1",
            None => "unavailable",
        };
        ControllerReport {
            memory: name(&self.memory),
            cpu: name(&self.cpu),
            pids: name(&self.pids),
        }
    }

    fn place(&self, controller: Controller) -> Option<&Place> {
        match controller {
            Controller::Memory => self.memory.as_ref(),
            Controller::Cpu => self.cpu.as_ref(),
            Controller::Pids => self.pids.as_ref(),
        }
    }

    /// Kills and removes every job cgroup a previous warden on this data dir left (it was
    /// killed, or the machine lost power); returns how many held processes.
    pub async fn kill_leftovers(&self) -> usize {
        let mut killed = 0;
        for dir in job_dirs(&self.parent) {
            let leftover = JobCgroup {
                v2: dir.clone(),
                v1: self.v1_dirs(dir.file_name().unwrap_or_default()),
            };
            if leftover.populated() {
                killed += 1;
            }
            leftover.kill();
            leftover.wait_empty().await;
            leftover.remove().await;
        }
        // A v1 directory that was still busy when its job's cgroup was removed is left
        // without its v2 one.
        for controller in Controller::ALL {
            if let Some(Place::V1(parent)) = self.place(controller) {
                for dir in job_dirs(parent) {
                    let _ = fs::remove_dir(dir);
                }
            }
        }
        killed
    }

    fn v1_dirs(&self, name: &std::ffi::OsStr) -> Vec<(Controller, PathBuf)> {
        Controller::ALL
            .into_iter()
            .filter_map(|controller| match self.place(controller) {
                Some(Place::V1(parent)) => Some((controller, parent.join(name))),
                _ => None,
            })
            .filter(|(_, dir)| dir.exists())
            .collect()
    }

    /// Makes job `seq`'s cgroup with `limits`; the job's process joins it before it execs.
    pub fn create(&self, seq: i64, limits: &Limits) -> io::Result<JobCgroup> {
        let name = format!("job-{seq}");
        let mut cgroup = JobCgroup {
            v2: self.parent.join(&name),
            v1: Vec::new(),
        };
        make_dir(&cgroup.v2)?;
        let made = cgroup.configure(&name, limits, self);
        if made.is_err() {
            cgroup.discard();
        }
        made.map(|()| cgroup)
    }
}

impl Drop for Cgroups {
    /// Removes this warden's (empty) directories of job cgroups, once it is done with them.
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.parent);
        for controller in Controller::ALL {
            if let Some(Place::V1(parent)) = self.place(controller) {
                let _ = fs::remove_dir(parent);
            }
        }
    }
}

/// One job's cgroup: its v2 directory and the v1 ones of its limits.
#[derive(Debug)]
pub struct JobCgroup {
    v2: PathBuf,
    v1: Vec<(Controller, PathBuf)>,
}

impl JobCgroup {
    fn dir_of(&self, controller: Controller) -> &Path {
        self.v1
            .iter()
            .find(|(of, _)| *of == controller)
            .map_or(&self.v2, |(_, dir)| dir)
    }

    fn is_v2(&self, controller: Controller) -> bool {
        self.v1.iter().all(|(of, _)| *of != controller)
    }

    /// Makes the job's v1 directories and writes its limits.
    fn configure(&mut self, name: &str, limits: &Limits, cgroups: &Cgroups) -> io::Result<()> {
        for (controller, wanted) in [
            (Controller::Memory, limits.memory_bytes.is_some()),
            (Controller::Cpu, limits.cpu.is_some()),
            (Controller::Pids, limits.pids.is_some()),
        ] {
            if let (true, Some(Place::V1(parent))) = (wanted, cgroups.place(controller)) {
                let dir = parent.join(name);
                make_dir(&dir)?;
                self.v1.push((controller, dir));
            }
        }
        if let Some(bytes) = limits.memory_bytes {
            let dir = self.dir_of(Controller::Memory);
            if self.is_v2(Controller::Memory) {
                write(&dir.join("memory.max"), &bytes.to_string())?;
                // RAM and swap together, as the setting says; and on OOM the whole job goes.
                let _ = write(&dir.join("memory.swap.max"), "0");
                let _ = write(&dir.join("memory.oom.group"), "1");
            } else {
                write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                let swap = dir.join("memory.memsw.limit_in_bytes");
                if swap.exists() {
                    write(&swap, &bytes.to_string())?;
                }
            }
        }
        if let Some(cpu) = limits.cpu {
            const PERIOD_US: f64 = 100_000.0;
            // At least 1 ms a period: the kernel's floor.
            let quota = (cpu * PERIOD_US).round().max(1000.0);
            let dir = self.dir_of(Controller::Cpu);
            if self.is_v2(Controller::Cpu) {
                write(&dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
            } else {
                write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
        }
        if let Some(pids) = limits.pids {
            write(
                &self.dir_of(Controller::Pids).join("pids.max"),
                &pids.to_string(),
            )?;
        }
        Ok(())
    }

    /// Removes what [`Cgroups::create`] made of a cgroup no process is in.
    pub fn discard(&self) {
        for dir in self
            .v1
            .iter()
            .map(|(_, dir)| dir)
            .chain(std::iter::once(&self.v2))
        {
            let _ = fs::remove_dir(dir);
        }
    }

    /// The `cgroup.procs` files of every directory, for the job's process to write `0` to
    /// (which moves the writer) after its fork.
    pub fn procs_paths(&self) -> Vec<PathBuf> {
        std::iter::once(&self.v2)
            .chain(self.v1.iter().map(|(_, dir)| dir))
            .map(|dir| dir.join("cgroup.procs"))
            .collect()
    }

    /// SIGKILL to every process in the cgroup, at once.
    pub fn kill(&self) {
        if let Err(error) = write(&self.v2.join("cgroup.kill"), "1") {
            tracing::warn!(cgroup = %self.v2.display(), %error, "cannot kill a job's cgroup");
        }
    }

    /// Whether a process is still in it.
    fn populated(&self) -> bool {
        fs::read_to_string(self.v2.join("cgroup.events"))
            .map(|events| events.lines().any(|line| line == "populated 1"))
            .unwrap_or(false)
    }

    /// Waits (up to a few seconds) until the killed processes have left it.
    pub async fn wait_empty(&self) {
        let mut wait = Duration::from_micros(200);
        for _ in 0..40 {
            if !self.populated() {
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(100));
        }
        tracing::warn!(cgroup = %self.v2.display(), "a job's processes outlived its kill");
    }

    /// What hit the job's limits.
    pub fn hits(&self) -> LimitHits {
        let count = |file: PathBuf, key: &str| -> u64 {
            fs::read_to_string(file)
                .ok()
                .and_then(|text| {
                    text.lines()
                        .find_map(|line| line.strip_prefix(key)?.trim().parse().ok())
                })
                .unwrap_or(0)
        };
        let memory = self.dir_of(Controller::Memory);
        let out_of_memory = if self.is_v2(Controller::Memory) {
            count(memory.join("memory.events"), "oom_kill ")
        } else {
            count(memory.join("memory.oom_control"), "oom_kill ")
        };
        let pids = count(self.dir_of(Controller::Pids).join("pids.events"), "max ");
        LimitHits {
            out_of_memory: out_of_memory > 0,
            pids: pids > 0,
        }
    }

    /// Removes its directories (once it is empty; a few tries while the kernel lets go).
    pub async fn remove(&self) {
        for dir in self
            .v1
            .iter()
            .map(|(_, dir)| dir)
            .chain(std::iter::once(&self.v2))
        {
            for attempt in 0..20 {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => break,
                    Err(error) if attempt == 19 => {
                        tracing::warn!(cgroup = %dir.display(), %error, "cannot remove a job's cgroup");
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }
    }
}

/// Writes `value` to a cgroup file in one `write`, as cgroup files want.
fn write(file: &Path, value: &str) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(file)?
        .write_all(value.as_bytes())
}

/// Makes a cgroup directory; one that exists already is fine.
fn make_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Err(error) if error.kind() != io::ErrorKind::AlreadyExists => Err(error),
        _ => Ok(()),
    }
}

/// The `job-*` directories under `parent`.
fn job_dirs(parent: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("job-"))
        .map(|entry| entry.path())
        .collect()
}
