//! The data-directory lock: one warden process per data directory, and a directory no other
//! OS user may enter.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Creates `data_dir` (mode 0700) or takes group and other access away from it: it holds the
/// token signing key, every job's output and the dev PKI, so no other OS user may enter it.
fn restrict_to_owner(data_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)?;
    let mode = std::fs::metadata(data_dir)?.permissions().mode();
    if mode & 0o077 != 0
        && let Err(error) =
            std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(mode & 0o700))
    {
        tracing::warn!(%error, dir = %data_dir.display(),
            "cannot make the data directory private; other users may read it");
    }
    Ok(())
}

/// Holds the exclusive lock on a data directory for as long as it lives.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Why a data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another warden process is already using data directory {0} (it holds {0}/warden.lock)"
    )]
    Held(PathBuf),
    #[error("cannot use data directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Creates `data_dir` if needed and takes its exclusive lock, failing at once if another
/// process holds it. The lock is released when the process exits, however it exits.
pub fn lock_data_dir(data_dir: &Path) -> Result<DataDirLock, LockError> {
    let io = |source| LockError::Io {
        path: data_dir.to_path_buf(),
        source,
    };
    restrict_to_owner(data_dir).map_err(io)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(data_dir.join("warden.lock"))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Err(LockError::Held(data_dir.to_path_buf())),
        Err(TryLockError::Error(error)) => return Err(io(error)),
    }
    // The pid is for an operator wondering who holds the lock; the lock itself is the flock.
    file.set_len(0).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(DataDirLock { _file: file })
}
