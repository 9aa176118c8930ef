//! Logging for `warden serve`: to stderr (human or JSON) and to a daily file in
//! `data/logs/`.

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Logs to stderr and to a daily file in `data_dir/logs/`; the guard flushes the file.
pub fn init_logging(data_dir: &Path, format: LogFormat) -> Result<WorkerGuard, String> {
    let logs = data_dir.join("logs");
    std::fs::create_dir_all(&logs)
        .map_err(|error| format!("cannot create log directory {}: {error}", logs.display()))?;
    let file = RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix("warden")
        .filename_suffix("log")
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
    Ok(guard)
}
