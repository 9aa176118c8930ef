//! The `warden` command line: `serve`, `migrate`, `token issue`, the clients `jobs …`,
//! `hash` and `stats`; logging; exit codes.
//!
//! Exit codes: 0 for success (including a drained shutdown), 2 for a bad setting or usage
//! (one line naming the setting), 1 for any other failure (data directory locked, database
//! unusable, address in use, drain timed out, server unreachable or saying no).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, fmt};

use serde_json::Value;

use crate::clock::Clock;
use crate::config::{Config, LogFormat, SyncMode};
use crate::db::{Database, lock_data_dir};
use crate::jobs::client::{ClientError, JobsClient};
use crate::security::pki::{DevPki, PkiError};
use crate::security::tls::client_config;
use crate::security::tokens::{Role, TokenKeys, valid_user};
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
    /// Bearer tokens for the job runner.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// The development PKI in the data dir (made by the first `serve`).
    Pki {
        #[command(subcommand)]
        action: PkiAction,
    },
    /// Start, list, inspect, stop and follow jobs on a warden server.
    Jobs(JobsArgs),
    /// Hash a password with the hash service; prints its id (reads stdin without PASSWORD).
    Hash {
        /// The password; omit it to read one line from stdin (keeps it out of `ps`).
        password: Option<String>,
        /// The hash service.
        #[arg(
            long,
            env = "WARDEN_HASHES_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        url: String,
    },
    /// Print the hash service's stats.
    Stats {
        /// The hash service.
        #[arg(
            long,
            env = "WARDEN_HASHES_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        url: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Print a new bearer token on stdout (reads the signing key from the data dir).
    Issue {
        /// Who the token names (1 to 64 of A-Z a-z 0-9 . _ @ -).
        #[arg(long)]
        user: String,
        /// `user` sees and stops only its own jobs; `admin` all.
        #[arg(long, value_enum)]
        role: Role,
        /// How long the token is valid.
        #[arg(long, default_value = "30d", value_parser = crate::config::parse_duration)]
        ttl: Duration,
        /// Directory of the database whose key signs the token.
        #[arg(long, env = "WARDEN_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PkiAction {
    /// Issue a client certificate: writes pki/clients/NAME.pem and NAME.key (0600).
    IssueClient {
        /// The user the certificate names (its Common Name).
        name: String,
        /// Make it an admin (organisational unit `admin`): sees and stops every job.
        #[arg(long)]
        admin: bool,
        /// How many days it is valid.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
        /// Data directory of the PKI.
        #[arg(long, env = "WARDEN_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Args)]
struct JobsArgs {
    /// The jobs listener; `https://` speaks mutual TLS, `http://` plain HTTP.
    #[arg(long, env = "WARDEN_URL", default_value = "https://127.0.0.1:8443")]
    url: String,
    /// Client certificate (PEM) [default: the dev PKI's admin certificate in the data dir].
    #[arg(long, env = "WARDEN_CERT")]
    cert: Option<PathBuf>,
    /// Client key (PEM) [default: the dev PKI's admin key in the data dir].
    #[arg(long, env = "WARDEN_KEY")]
    key: Option<PathBuf>,
    /// CA (PEM) the server's certificate must be signed by [default: the dev PKI's CA].
    #[arg(long, env = "WARDEN_CA")]
    ca: Option<PathBuf>,
    /// Data directory whose dev PKI supplies the defaults above.
    #[arg(long, env = "WARDEN_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// The bearer token (see `warden token issue`).
    #[arg(long, env = "WARDEN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    action: JobsAction,
}

#[derive(Debug, Subcommand)]
enum JobsAction {
    /// Queue a job: `warden jobs start [--name N] -- CMD ARGS…`; prints it.
    Start {
        /// A name to recognise the job by.
        #[arg(long)]
        name: Option<String>,
        /// The program and its arguments, run directly (never through a shell).
        #[arg(last = true, required = true, num_args = 1..)]
        command: Vec<String>,
    },
    /// List the jobs you may see, newest first.
    List {
        /// Only jobs in this status.
        #[arg(long)]
        status: Option<String>,
    },
    /// Print one job.
    Status { id: String },
    /// Stop a job (SIGTERM, then SIGKILL after the grace); prints it once ended.
    Stop { id: String },
    /// Print a job's output; with -f, follow it until the job ends.
    Logs {
        id: String,
        #[arg(short, long)]
        follow: bool,
    },
}

#[derive(Debug, Args)]
struct MigrateArgs {
    /// Directory of the database (`warden.db`).
    #[arg(long, env = "WARDEN_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
}

/// Parses the command line, runs the command, and turns the outcome into an exit code.
pub fn main() -> ExitCode {
    crate::security::tls::install_crypto_provider();
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
        Command::Token {
            action:
                TokenAction::Issue {
                    user,
                    role,
                    ttl,
                    data_dir,
                },
        } => runtime.block_on(issue_token(&user, role, ttl, &data_dir)),
        Command::Pki {
            action:
                PkiAction::IssueClient {
                    name,
                    admin,
                    days,
                    data_dir,
                },
        } => issue_client(&name, admin, days, &data_dir),
        Command::Jobs(args) => finish(runtime.block_on(jobs(args))),
        Command::Hash { password, url } => finish(runtime.block_on(hash(password, &url))),
        Command::Stats { url } => finish(runtime.block_on(stats(&url))),
    }
}

/// Exit code and one line on stderr for a client command's outcome.
fn finish(outcome: Result<(), ClientError>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("warden: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn issue_token(user: &str, role: Role, ttl: Duration, data_dir: &Path) -> ExitCode {
    if !valid_user(user) {
        eprintln!("warden: invalid --user: use 1 to 64 of A-Z a-z 0-9 . _ @ -");
        return ExitCode::from(2);
    }
    let issued = async {
        let db = Database::open(data_dir, SyncMode::Full)
            .await
            .map_err(|error| {
                format!(
                    "cannot open the database in {}: {error}",
                    data_dir.display()
                )
            })?;
        let keys = TokenKeys::load_or_create(&db, Clock::System.now_ms())
            .await
            .map_err(|fault| format!("cannot read the token key: {fault}"))?;
        db.close().await;
        keys.issue(user, role, ttl)
            .map_err(|error| error.to_string())
    };
    match issued.await {
        Ok(token) => match writeln!(std::io::stdout().lock(), "{token}") {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        },
        Err(message) => {
            eprintln!("warden: {message}");
            ExitCode::FAILURE
        }
    }
}

fn issue_client(name: &str, admin: bool, days: u32, data_dir: &Path) -> ExitCode {
    let pki = DevPki::of(data_dir);
    let issued = pki
        .ensure()
        .and_then(|_| pki.issue_client(name, admin, days));
    match issued {
        Ok(files) => {
            let written = writeln!(
                std::io::stdout().lock(),
                "{}\n{}",
                files.cert.display(),
                files.key.display()
            );
            if written.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(PkiError::BadName(message)) => {
            eprintln!("warden: invalid NAME: {message}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("warden: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn jobs(args: JobsArgs) -> Result<(), ClientError> {
    let tls = if args.url.starts_with("https://") {
        let pki = DevPki::of(&args.data_dir);
        let admin = pki.client("admin");
        Some(client_config(
            &args.ca.unwrap_or_else(|| pki.ca()),
            &args.cert.unwrap_or(admin.cert),
            &args.key.unwrap_or(admin.key),
        )?)
    } else {
        None
    };
    let client = JobsClient::new(&args.url, args.token, tls)?;
    let mut stdout = std::io::stdout().lock();
    match args.action {
        JobsAction::Start { name, command } => {
            // clap requires at least one word after `--`.
            let (program, rest) = command
                .split_first()
                .map_or(("", &[][..]), |(program, rest)| (program.as_str(), rest));
            let job = client.start(name.as_deref(), program, rest).await?;
            print_json(&mut stdout, &job)
        }
        JobsAction::List { status } => {
            let jobs = client.list(status.as_deref()).await?;
            for job in jobs.as_array().into_iter().flatten() {
                let args: Vec<&str> = job["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                writeln!(
                    stdout,
                    "{}  {:<11}  {:<12}  {} {}",
                    job["id"].as_str().unwrap_or("?"),
                    job["status"].as_str().unwrap_or("?"),
                    job["owner"].as_str().unwrap_or("?"),
                    job["command"].as_str().unwrap_or("?"),
                    args.join(" ")
                )?;
            }
            Ok(())
        }
        JobsAction::Status { id } => print_json(&mut stdout, &client.status(&id).await?),
        JobsAction::Stop { id } => print_json(&mut stdout, &client.stop(&id).await?),
        JobsAction::Logs { id, follow } => client.logs(&id, follow, &mut stdout).await,
    }
}

async fn hash(password: Option<String>, url: &str) -> Result<(), ClientError> {
    let password = match password {
        Some(password) => password,
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    let response = reqwest::Client::new()
        .post(format!("{}/hash", url.trim_end_matches('/')))
        .form(&[("password", &password)])
        .send()
        .await;
    let id = answer_text(url, response).await?;
    writeln!(std::io::stdout().lock(), "{id}")?;
    Ok(())
}

async fn stats(url: &str) -> Result<(), ClientError> {
    let response = reqwest::get(format!("{}/stats", url.trim_end_matches('/'))).await;
    let stats = answer_text(url, response).await?;
    writeln!(std::io::stdout().lock(), "{stats}")?;
    Ok(())
}

/// The body of a successful answer, or the one-line reason it failed.
async fn answer_text(
    url: &str,
    response: reqwest::Result<reqwest::Response>,
) -> Result<String, ClientError> {
    let response = response.map_err(|error| ClientError::Unreachable {
        url: url.to_owned(),
        reason: crate::jobs::client::root_cause(&error),
    })?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|error| ClientError::BadAnswer(error.to_string()))?;
    if !status.is_success() {
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|body| body["error"].as_str().map(str::to_owned))
            .unwrap_or(text);
        return Err(ClientError::Refused {
            status: status.as_u16(),
            message,
        });
    }
    Ok(text)
}

fn print_json(out: &mut impl Write, value: &Value) -> Result<(), ClientError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|error| ClientError::BadAnswer(error.to_string()))?;
    writeln!(out, "{text}")?;
    Ok(())
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
