//! The `warden` command line: `serve`, `migrate`, `token issue`, the clients `jobs …`,
//! `hash` and `stats`; logging; exit codes.
//!
//! Exit codes: 0 for success (including a drained shutdown), 2 for a bad setting or usage
//! (one line naming the setting), 1 for any other failure (data directory locked, database
//! unusable, address in use, drain timed out, server unreachable or saying no).

mod clients;
mod logging;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};

use crate::clock::Clock;
use crate::config::{Config, DatabaseArgs};
use crate::db::{Database, SyncMode, database_path, lock_data_dir};
use crate::openapi::Api;
use crate::security::pki::{DevPki, PkiError};
use crate::security::principal::{Role, valid_user};
use crate::security::tokens::TokenKeys;
use crate::supervisor;
use clients::{JobsArgs, finish};
use logging::init_logging;

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
    Jobs(Box<JobsArgs>),
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
    /// Print a listener's OpenAPI 3.1 document, as the admin listener serves it at
    /// /openapi/LISTENER.json; without LISTENER, every listener's, as one JSON object by name.
    Openapi {
        /// The listener whose API to describe.
        #[arg(value_enum)]
        listener: Option<Api>,
    },
    /// The job spawner `serve` runs for itself (see `jobs::spawner`); not for people.
    #[command(hide = true)]
    JobSpawner {
        /// The data dir of the warden it serves, which `ps` then shows.
        #[arg(long)]
        data_dir: Option<PathBuf>,
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
struct MigrateArgs {
    /// Directory of the database (`warden.db`).
    #[arg(long, env = "WARDEN_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// With `--database`, the shared Postgres is migrated instead (and only it).
    #[command(flatten)]
    database: DatabaseArgs,
}

/// Parses the command line, runs the command, and turns the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    if let Command::JobSpawner { .. } = cli.command {
        // Before any runtime: the spawner forks, so it must stay single-threaded.
        return crate::jobs::spawner::serve::run();
    }
    crate::security::tls::install_crypto_provider();
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
        Command::Migrate(args) => runtime.block_on(migrate(&args)),
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
        Command::Jobs(args) => finish(runtime.block_on(clients::jobs(*args))),
        Command::Hash { password, url } => finish(runtime.block_on(clients::hash(password, &url))),
        Command::Stats { url } => finish(runtime.block_on(clients::stats(&url))),
        Command::JobSpawner { .. } => crate::jobs::spawner::serve::run(),
        Command::Openapi { listener } => print_openapi(listener),
    }
}

/// `warden openapi [LISTENER]`.
fn print_openapi(listener: Option<Api>) -> ExitCode {
    let text = match listener {
        Some(api) => supervisor::openapi::document(api).to_pretty_json(),
        None => Api::ALL
            .into_iter()
            .map(|api| {
                let document = supervisor::openapi::document(api);
                serde_json::to_value(document).map(|value| (api.name().to_owned(), value))
            })
            .collect::<Result<serde_json::Map<_, _>, _>>()
            .and_then(|documents| serde_json::to_string_pretty(&documents)),
    };
    let written = text.map_err(|error| error.to_string()).and_then(|text| {
        writeln!(std::io::stdout().lock(), "{text}").map_err(|error| error.to_string())
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("warden: cannot write the OpenAPI document: {error}");
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

async fn serve(config: Config) -> ExitCode {
    if let Err(message) = config.validate() {
        eprintln!("warden: {message}");
        return ExitCode::from(2);
    }
    let _log_writer = match init_logging(&config.data_dir, config.log_format, config.log_retention)
    {
        Ok(guard) => guard,
        Err(message) => {
            eprintln!("warden: {message}");
            return ExitCode::FAILURE;
        }
    };
    // This process runs nothing but warden: it may adopt its jobs' orphans.
    crate::jobs::sandbox::let_orphans_come_home();
    match supervisor::serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is_setting() => {
            eprintln!("warden: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("warden: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(args: &MigrateArgs) -> ExitCode {
    if let Err(message) = args.database.check() {
        eprintln!("warden: {message}");
        return ExitCode::from(2);
    }
    if let Some(shared) = args.database.shared() {
        return match crate::db::migrate_only(&shared).await {
            Ok(()) => {
                eprintln!("warden: the shared database is up to date");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("warden: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let data_dir = &args.data_dir;
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
                database_path(data_dir).display()
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
