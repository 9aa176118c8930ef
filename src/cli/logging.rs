//! Logging for `warden serve`: to stderr (human or JSON) and to a daily file in
//! `data/logs/`, of which at most `--log-retention` are kept, today's included.
//!
//! The appender prunes when it opens a file (at start and at each midnight, UTC), oldest
//! first by the files' creation times. Those say nothing about files that were copied or
//! restored, so at start warden first prunes by the date in each name itself, down to one
//! fewer than the limit: the appender then finds nothing to prune and opens today's file.

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// How the appender names a day's file: `warden.YYYY-MM-DD.log`.
const PREFIX: &str = "warden.";
const SUFFIX: &str = ".log";

/// Logs to stderr and to a daily file in `data_dir/logs/`, keeping at most `retention` (≥ 1)
/// daily files; the guard flushes the file.
pub fn init_logging(
    data_dir: &Path,
    format: LogFormat,
    retention: usize,
) -> Result<WorkerGuard, String> {
    let logs = data_dir.join("logs");
    std::fs::create_dir_all(&logs)
        .map_err(|error| format!("cannot create log directory {}: {error}", logs.display()))?;
    // A file that cannot be deleted is no reason not to serve; it is reported once logging is up.
    let pruned = prune_by_name(&logs, retention.saturating_sub(1));
    let file = RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix(PREFIX.trim_end_matches('.'))
        .filename_suffix(SUFFIX.trim_start_matches('.'))
        .max_log_files(retention)
        .build(&logs)
        .map_err(|error| format!("cannot open a log file in {}: {error}", logs.display()))?;
    let (file, guard) = tracing_appender::non_blocking(file);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Human => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .with(fmt::layer().with_ansi(false).with_writer(file))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .with(fmt::layer().json().flatten_event(true).with_writer(file))
            .try_init(),
    };
    installed.map_err(|error| format!("cannot install the logger: {error}"))?;
    if let Err(error) = pruned {
        tracing::warn!(%error, dir = %logs.display(), "cannot delete old log files");
    }
    Ok(guard)
}

/// Deletes all but the `keep` newest daily log files in `logs`, newest by the date in the
/// name. Anything else in the folder is left alone.
fn prune_by_name(logs: &Path, keep: usize) -> std::io::Result<()> {
    let mut days = Vec::new();
    for entry in std::fs::read_dir(logs)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name();
        if let Some(day) = name.to_str().and_then(day_of) {
            days.push((day.to_owned(), entry.path()));
        }
    }
    // `YYYY-MM-DD` sorts as the dates do.
    days.sort_unstable_by(|newer, older| older.0.cmp(&newer.0));
    for (_, old) in days.iter().skip(keep) {
        std::fs::remove_file(old)?;
    }
    Ok(())
}

/// The `YYYY-MM-DD` of a daily log file's name, or `None` for any other name.
fn day_of(name: &str) -> Option<&str> {
    let day = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let shape = day.len() == 10
        && day.bytes().enumerate().all(|(at, byte)| match at {
            4 | 7 => byte == b'-',
            _ => byte.is_ascii_digit(),
        });
    shape.then_some(day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_appenders_daily_names_are_log_files() {
        assert_eq!(day_of("warden.2026-01-31.log"), Some("2026-01-31"));
        for other in [
            "warden.log",
            "warden.2026-01-31.log.gz",
            "warden.2026-1-31.log",
            "notes.2026-01-31.log",
            "warden.lock",
        ] {
            assert_eq!(day_of(other), None, "{other}");
        }
    }
}
