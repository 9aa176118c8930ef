//! How a job is kept apart from warden and from other jobs: the account it runs as (never
//! one that can read the data dir, when warden runs as root), a clean environment, a working
//! directory outside the data dir, and a confinement that ends every process it starts
//! (a cgroup per job where the host lets warden make one, with its limits; else a marker
//! and a subreaper). Set up once at start, where it also kills what a previous warden on
//! the same data dir left running.

pub mod markers;

mod account;
mod cgroups;
mod limits;
mod request;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};

use serde::Serialize;

pub use cgroups::{ControllerReport, JobCgroup, LimitHits};
pub use limits::{Enforceable, Limits};
pub use request::MAX_VARIABLES;

use super::process::{Confinement, Launch};
use super::spawner::Spawner;
use super::store::JobRow;
use crate::error::Result;
use account::Account;
use cgroups::Cgroups;

/// The working directory of a job whose request names none.
pub const DEFAULT_CWD: &str = "/";
/// The `PATH` of a job when warden itself has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// What the operator set for jobs' isolation.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// `--job-user`.
    pub job_user: Option<String>,
    /// Whether to give each job a cgroup where the host allows (`--job-cgroups auto`).
    pub cgroups: bool,
    /// The server's limits: each job's default and the most a request may ask for.
    pub limits: Limits,
    pub data_dir: PathBuf,
    /// The binary to run as `job-spawner`: warden's own, but in tests (whose binary is the
    /// test harness) the `warden` binary built beside them.
    pub spawner: PathBuf,
}

/// Jobs' isolation, as set up at start.
#[derive(Debug)]
pub struct Sandbox {
    account: Account,
    cgroups: Option<Cgroups>,
    /// Why jobs get no cgroup, when they don't.
    no_cgroups: Option<String>,
    /// Names this warden's cgroups and markers: a digest of its data dir.
    instance: String,
    /// The data dir with every symlink resolved, which no job's `cwd` may be inside.
    data_dir: PathBuf,
    limits: Limits,
    /// What forks each job's process.
    spawner: Arc<Spawner>,
    /// warden's `PATH` and `LANG`, which jobs inherit.
    path: OsString,
    lang: Option<OsString>,
}

/// What `/healthz` and the start line say of jobs' isolation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxReport {
    /// The account jobs run as.
    pub user: String,
    pub uid: u32,
    /// Jobs run as an account of their own, which cannot read the data dir; `false` when they
    /// share warden's account (warden is not root) and can read everything warden can.
    pub separate_account: bool,
    /// `cgroup`: every process of a job is in its cgroup and killed with it; `marker`: found
    /// by a marker in its environment (a process that drops it escapes).
    pub containment: &'static str,
    /// Where the jobs' cgroups are (`job-<seq>` each), when they have them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_dir: Option<String>,
    /// Why there is no cgroup per job, when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_cgroups: Option<String>,
    /// What enforces each limit; the timeout is warden's own timer everywhere.
    pub limits: ControllerReport,
    /// The server's limits, each job's default and maximum.
    pub max: Limits,
}

impl Sandbox {
    /// Sets jobs' isolation up; an error (exit 2) names the setting that cannot work here.
    pub async fn set_up(settings: SandboxSettings) -> Result<Self, String> {
        let data_dir = std::fs::canonicalize(&settings.data_dir).map_err(|error| {
            format!(
                "cannot resolve the data dir {}: {error}",
                settings.data_dir.display()
            )
        })?;
        let account = Account::resolve(settings.job_user.as_deref())?;
        account.guard_data_dir(&data_dir)?;
        let instance = digest(data_dir.as_os_str().as_encoded_bytes());
        let (cgroups, no_cgroups) = if settings.cgroups {
            match Cgroups::set_up(&instance) {
                Ok(cgroups) => (Some(cgroups), None),
                Err(why) => (None, Some(why)),
            }
        } else {
            (None, Some("--job-cgroups is off".to_owned()))
        };
        let enforceable = cgroups
            .as_ref()
            .map(Cgroups::enforceable)
            .unwrap_or_default();
        for (asked, enforced, setting) in [
            (
                settings.limits.memory_bytes.is_some(),
                enforceable.memory,
                "--job-memory",
            ),
            (settings.limits.cpu.is_some(), enforceable.cpu, "--job-cpu"),
            (
                settings.limits.pids.is_some(),
                enforceable.pids,
                "--job-pids",
            ),
        ] {
            if asked && !enforced {
                return Err(format!(
                    "{setting} cannot be enforced on this host: warden has no cgroup controller \
                     for it ({})",
                    no_cgroups
                        .as_deref()
                        .unwrap_or("the controller is not available to warden")
                ));
            }
        }
        // After the cgroups: it is in warden's own (leaf) cgroup, which jobs' cgroups are beside.
        let spawner = Spawner::start(
            settings.spawner,
            vec!["--data-dir".to_owned(), data_dir.display().to_string()],
        )
        .await?;
        let sandbox = Self {
            account,
            cgroups,
            no_cgroups,
            instance,
            data_dir,
            limits: settings.limits,
            spawner: Arc::new(spawner),
            path: std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
            lang: std::env::var_os("LANG"),
        };
        sandbox.kill_leftovers().await;
        if sandbox.cgroups.is_none() && ORPHANS_COME_HOME.load(Ordering::Relaxed) {
            adopt_orphans();
        }
        sandbox.announce();
        Ok(sandbox)
    }

    /// Kills whatever jobs of a previous warden on this data dir left running.
    async fn kill_leftovers(&self) {
        let cgroups = match &self.cgroups {
            Some(cgroups) => cgroups.kill_leftovers().await,
            None => 0,
        };
        let marked = markers::kill_marked(markers::Reach::Instance(&self.instance), None);
        if cgroups + marked > 0 {
            tracing::warn!(
                cgroups,
                processes = marked,
                "killed what jobs of a previous warden left running"
            );
        }
    }

    fn announce(&self) {
        let report = self.report();
        tracing::info!(
            user = %report.user,
            containment = report.containment,
            memory = report.limits.memory,
            cpu = report.limits.cpu,
            pids = report.limits.pids,
            "jobs are isolated"
        );
        if let Some(why) = &self.no_cgroups {
            tracing::warn!(%why, "jobs get no cgroup: a job's processes are found by a marker they can drop, and only the timeout limit is available");
        }
        if !self.account.separate {
            tracing::warn!(
                user = %self.account.name,
                "jobs run as warden's own account: a job can read everything warden can, its database, keys and logs among them; run warden as root (jobs then run as --job-user, `nobody` by default)"
            );
        }
    }

    /// What `/healthz` says of jobs' isolation.
    pub fn report(&self) -> SandboxReport {
        SandboxReport {
            user: self.account.name.clone(),
            uid: self.account.uid.as_raw(),
            separate_account: self.account.separate,
            containment: if self.cgroups.is_some() {
                "cgroup"
            } else {
                "marker"
            },
            no_cgroups: self.no_cgroups.clone(),
            cgroup_dir: self
                .cgroups
                .as_ref()
                .map(|cgroups| cgroups.parent().display().to_string()),
            limits: self.cgroups.as_ref().map_or(
                ControllerReport {
                    memory: "unavailable",
                    cpu: "unavailable",
                    pids: "unavailable",
                },
                Cgroups::report,
            ),
            max: self.limits,
        }
    }

    /// 400 unless a job may run with `env`, in `cwd`, asking for `limits`; otherwise the
    /// limits it runs with.
    pub async fn admit(
        &self,
        env: &BTreeMap<String, String>,
        cwd: Option<&str>,
        limits: &Limits,
    ) -> Result<Limits> {
        request::check_env(env)?;
        if let Some(cwd) = cwd {
            request::check_cwd(cwd, &self.data_dir).await?;
        }
        let enforceable = self
            .cgroups
            .as_ref()
            .map(Cgroups::enforceable)
            .unwrap_or_default();
        self.limits.for_request(limits, enforceable)
    }

    /// What forks each job's process.
    pub fn spawner(&self) -> &Arc<Spawner> {
        &self.spawner
    }

    /// How to start `job`'s process (its cgroup made, with the job's limits); why not, when
    /// its stored row cannot be run.
    pub fn launch<'a>(&self, job: &'a JobRow, args: &'a [String]) -> Result<Launch<'a>, String> {
        let asked = job
            .env()
            .map_err(|_| "the job's stored env is not a JSON object of strings".to_owned())?;
        let mut env: BTreeMap<String, OsString> = BTreeMap::new();
        env.insert("PATH".to_owned(), self.path.clone());
        env.insert(
            "HOME".to_owned(),
            self.account.home.clone().into_os_string(),
        );
        if let Some(lang) = &self.lang {
            env.insert("LANG".to_owned(), lang.clone());
        }
        env.extend(asked.into_iter().map(|(name, value)| (name, value.into())));
        let limits = job.limits();
        let confinement = match &self.cgroups {
            Some(cgroups) => Confinement::Cgroup(
                cgroups
                    .create(job.seq, &limits)
                    .map_err(|error| format!("cannot make the job's cgroup: {error}"))?,
            ),
            None => {
                let marker = markers::marker(&self.instance, job.seq);
                env.insert(markers::MARKER.to_owned(), marker.clone().into());
                Confinement::Marked(marker)
            }
        };
        Ok(Launch {
            command: &job.command,
            args,
            env: env.into_iter().collect(),
            cwd: job.cwd.as_deref().unwrap_or(DEFAULT_CWD),
            switch_to: self
                .account
                .separate
                .then_some((self.account.uid, self.account.gid)),
            confinement,
        })
    }
}

/// Set by `warden serve` (never by the tests' in-process wardens, whose process other
/// children share): without cgroups, warden becomes a subreaper, so that a job's orphans
/// come back to it, and reaps the ones that exit.
static ORPHANS_COME_HOME: AtomicBool = AtomicBool::new(false);

/// Lets this process adopt its jobs' orphans when jobs get no cgroup (see
/// [`ORPHANS_COME_HOME`]); for `warden serve`, before it starts.
pub fn let_orphans_come_home() {
    ORPHANS_COME_HOME.store(true, Ordering::Relaxed);
}

/// Becomes a subreaper and reaps adopted orphans on every SIGCHLD, once per process.
fn adopt_orphans() {
    static ADOPTING: Once = Once::new();
    ADOPTING.call_once(|| {
        if !markers::become_subreaper() {
            tracing::warn!("cannot become a subreaper: orphans of jobs go to init");
            return;
        }
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
            Ok(mut children) => {
                tokio::spawn(async move {
                    while children.recv().await.is_some() {
                        markers::reap_adopted();
                    }
                });
            }
            Err(error) => tracing::warn!(%error, "cannot watch for exited orphans"),
        }
    });
}

/// A short, stable digest of `bytes` (FNV-1a, 64 bits), in hex: names that stay the same
/// from one start to the next.
fn digest(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_of_a_data_dir_is_stable() {
        assert_eq!(digest(b""), "cbf29ce484222325");
        assert_eq!(digest(b"/var/lib/warden"), digest(b"/var/lib/warden"));
        assert_ne!(digest(b"/var/lib/warden"), digest(b"/var/lib/warden2"));
    }
}
