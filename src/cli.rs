//! The `warden` command line: `serve` and `migrate`, logging, and exit codes.
//!
//! Exit codes: 0 for a clean run (including a drained shutdown), 2 for a bad setting or
//! usage (one line naming the setting), 1 for any other failure (data directory locked,
//! database unusable, address in use, drain timed out).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{Config, LogFormat, SyncMode};
use crate::db::{Database, lock_data_dir};
use crate::supervisor;

/// warden: delayed password hashes, heartbeat discovery and remote jobs, in one SQLite file.
#[derive(Debug, Parser)]
#[command(name = "warden", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve every enabled service until SIGTERM, SIGINT or a request to /shutdown.
    Serve(Box<Config>),
    /// Create the database if needed, apply pending migrations, and exit.
    Migrate(MigrateArgs),
}

#[derive(Debug, Args)]
struct MigrateArgs {
    /// Directory of the database (`warden.db`).
    #[arg(long, env = "WARDEN_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
}

/// Parses the command line, runs the command, and turns the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("warden: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(config) => runtime.block_on(serve(*config)),
        Command::Migrate(args) => runtime.block_on(migrate(&args.data_dir)),
    }
}

async fn serve(config: Config) -> ExitCode {
    if let Err(message) = config.validate() {
        eprintln!("warden: {message}");
        return ExitCode::from(2);
    }
    let _log_writer = match init_logging(&config.data_dir, config.log_format) {
        Ok(guard) => guard,
        Err(message) => {
            eprintln!("warden: {message}");
            return ExitCode::FAILURE;
        }
    };
    match supervisor::serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("warden: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(data_dir: &Path) -> ExitCode {
    let migrated = async {
        let _lock = lock_data_dir(data_dir).map_err(|error| error.to_string())?;
        // Opening applies every pending migration; the sync mode does not matter here.
        let db = Database::open(data_dir, SyncMode::Full)
            .await
            .map_err(|error| format!("cannot migrate {}: {error}", data_dir.display()))?;
        db.close().await;
        Ok::<_, String>(())
    };
    match migrated.await {
        Ok(()) => {
            eprintln!(
                "warden: {} is up to date",
                crate::config::database_path(data_dir).display()
            );
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("warden: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Prints help and version as clap does; any other parse error as one line, exit code 2.
fn usage_error(error: &clap::Error) -> ExitCode {
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // Nothing useful can be done if stdout is gone.
            let _ = error.print();
            ExitCode::from(if error.use_stderr() { 2 } else { 0 })
        }
        _ => {
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("warden: {}", first.trim_start_matches("error: "));
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr and to a daily file in `data_dir/logs/`; the guard flushes the file.
fn init_logging(data_dir: &Path, format: LogFormat) -> Result<WorkerGuard, String> {
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
