//! The OS account jobs run as, and the data dir kept out of its reach.
//!
//! Invariant: when jobs run as an account other than warden's, the data dir (database, WAL,
//! keys, logs) belongs to warden's account and is closed to everyone else (mode 0700, as
//! the data-dir lock makes it), or warden does not start.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User};

/// The account a job's processes run as.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    /// Its home directory, the job's `HOME`.
    pub home: PathBuf,
    /// The account is not warden's own: warden switches to it for each job (it must then be
    /// root).
    pub separate: bool,
}

/// The account nobody owns files as: jobs run as it when warden runs as root and the
/// operator names none.
const UNPRIVILEGED: &str = "nobody";

impl Account {
    /// The account `--job-user` names, or the default: [`UNPRIVILEGED`] under root, else
    /// warden's own.
    pub fn resolve(job_user: Option<&str>) -> Result<Self, String> {
        let me = Uid::effective();
        let name = match job_user {
            Some(name) => name.to_owned(),
            None if me.is_root() => UNPRIVILEGED.to_owned(),
            None => return Ok(Self::own(me)),
        };
        let user = User::from_name(&name)
            .map_err(|error| format!("cannot look up --job-user {name:?}: {error}"))?
            .ok_or_else(|| {
                format!(
                    "no account named {name:?} for jobs to run as: create it, or name another \
                     with --job-user (WARDEN_JOB_USER)"
                )
            })?;
        if user.uid.is_root() {
            return Err(format!(
                "--job-user {name:?} is root: a job would reach every file warden has; name an \
                 unprivileged account"
            ));
        }
        // Only root: a switch from root to another account clears every capability, the
        // ambient ones too, where one made with CAP_SETUID by another account would hand the
        // job warden's ambient capabilities.
        if user.uid != me && !me.is_root() {
            return Err(format!(
                "--job-user {name:?} is not warden's own account (uid {me}), and only root can \
                 run a job as another account: run warden as root, or leave --job-user unset"
            ));
        }
        Ok(Self {
            separate: user.uid != me,
            name: user.name,
            uid: user.uid,
            gid: user.gid,
            home: user.dir,
        })
    }

    /// warden's own account.
    fn own(me: Uid) -> Self {
        let user = User::from_uid(me).ok().flatten();
        Self {
            name: user
                .as_ref()
                .map_or_else(|| format!("uid {me}"), |user| user.name.clone()),
            uid: me,
            gid: user.as_ref().map_or_else(Gid::effective, |user| user.gid),
            home: user.map_or_else(|| PathBuf::from("/"), |user| user.dir),
            separate: false,
        }
    }

    /// Refuses a data dir the job account could open when jobs run as another account: one
    /// it owns (it could open it again), or one still open to group or others (the data-dir
    /// lock makes it 0700 at start, and only warns when it cannot).
    pub fn guard_data_dir(&self, data_dir: &Path) -> Result<(), String> {
        if !self.separate {
            return Ok(());
        }
        let metadata = std::fs::metadata(data_dir)
            .map_err(|error| format!("cannot read the data dir {}: {error}", data_dir.display()))?;
        if metadata.uid() == self.uid.as_raw() {
            return Err(format!(
                "the data dir {} belongs to the job account {:?}, so a job could read warden's \
                 database and keys: give it to warden's account (chown), or name another \
                 --job-user",
                data_dir.display(),
                self.name
            ));
        }
        if metadata.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "the data dir {} is open to other accounts, the job account among them: make it \
                 mode 0700",
                data_dir.display()
            ));
        }
        Ok(())
    }
}
