//! The database's sizes for `/metrics`: the file, its write-ahead log and the pages in use,
//! read when scraped and never on a write path.

use std::path::{Path, PathBuf};

use super::Database;
use crate::telemetry::{DATABASE_FILE, DATABASE_USED, DATABASE_WAL, Telemetry};

impl Database {
    /// Sets the database's size gauges on `telemetry` at each scrape. A size that cannot be
    /// read keeps its last value, and the failure is logged.
    pub fn report_sizes(&self, telemetry: &Telemetry) {
        let file = self.reads.connect_options().get_filename().to_owned();
        let wal = wal_path(&file);
        let file_bytes = telemetry.gauge(DATABASE_FILE, Vec::new());
        let wal_bytes = telemetry.gauge(DATABASE_WAL, Vec::new());
        let used_bytes = telemetry.gauge(DATABASE_USED, Vec::new());
        let db = self.clone();
        telemetry.on_scrape(move || {
            let (db, file, wal) = (db.clone(), file.clone(), wal.clone());
            let (file_bytes, wal_bytes, used_bytes) =
                (file_bytes.clone(), wal_bytes.clone(), used_bytes.clone());
            async move {
                if let Some(size) = size_of(&file).await {
                    file_bytes.set(size as f64);
                }
                if let Some(size) = size_of(&wal).await {
                    wal_bytes.set(size as f64);
                }
                // The admin listener outlives the database by a moment at the end of a drain.
                if db.reads.is_closed() {
                    return;
                }
                match db.used_bytes().await {
                    Ok(used) => used_bytes.set(used as f64),
                    Err(fault) => tracing::warn!(%fault, "cannot read the database's used bytes"),
                }
            }
        });
    }
}

/// SQLite's name for the write-ahead log of `file`: `warden.db-wal` beside `warden.db`.
fn wal_path(file: &Path) -> PathBuf {
    let mut wal = file.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// The length of the file at `path`: 0 if it does not exist (a WAL after a checkpoint that
/// truncated it away), `None` if it cannot be read.
async fn size_of(path: &Path) -> Option<u64> {
    match tokio::fs::metadata(path).await {
        Ok(metadata) => Some(metadata.len()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Some(0),
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "cannot read a database file's size");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wal_lies_beside_the_database() {
        assert_eq!(
            wal_path(Path::new("/data/warden.db")),
            Path::new("/data/warden.db-wal")
        );
    }
}
