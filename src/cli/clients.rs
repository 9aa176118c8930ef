//! The client commands: `warden jobs …` against the jobs listener, `warden hash` and
//! `warden stats` against the hash listener. Each prints what the server answered, or one
//! line saying why it could not.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::client::ClientError;
use crate::hashes::client::HashesClient;
use crate::jobs::client::JobsClient;
use crate::jobs::sandbox::Limits;
use crate::security::pki::DevPki;
use crate::security::tls::client_config;

#[derive(Debug, Args)]
pub struct JobsArgs {
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
    /// Queue a job: `warden jobs start [--name N] [--env K=V]… [--cwd DIR] [limits] -- CMD
    /// ARGS…`; prints it.
    Start {
        /// A name to recognise the job by.
        #[arg(long)]
        name: Option<String>,
        /// A variable for the job's environment, `NAME=VALUE` (repeat for more).
        #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_variable)]
        env: Vec<(String, String)>,
        /// The job's working directory on the server [default: `/`].
        #[arg(long)]
        cwd: Option<String>,
        /// Lower limits than the server's for this job.
        #[command(flatten)]
        limits: LimitArgs,
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

/// `--memory`, `--cpu`, `--pids`, `--timeout` of `jobs start`.
#[derive(Debug, Args)]
struct LimitArgs {
    /// The job's memory limit (e.g. `256MiB`).
    #[arg(long, value_parser = crate::config::parse_size)]
    memory: Option<u64>,
    /// The share of one core the job may use (e.g. `0.5`).
    #[arg(long)]
    cpu: Option<f64>,
    /// How many processes and threads the job may have at once.
    #[arg(long)]
    pids: Option<u64>,
    /// How long the job may run (e.g. `10m`).
    #[arg(long, value_parser = crate::config::parse_duration)]
    timeout: Option<std::time::Duration>,
}

/// `NAME=VALUE`.
fn parse_variable(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .ok_or_else(|| "expected NAME=VALUE".to_owned())
}

/// Exit code and one line on stderr for a client command's outcome.
pub fn finish(outcome: Result<(), ClientError>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("warden: {error}");
            ExitCode::FAILURE
        }
    }
}

pub async fn jobs(args: JobsArgs) -> Result<(), ClientError> {
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
        JobsAction::Start {
            name,
            env,
            cwd,
            limits,
            command,
        } => {
            // clap requires at least one word after `--`.
            let (program, rest) = command
                .split_first()
                .map_or(("", &[][..]), |(program, rest)| (program.as_str(), rest));
            let mut body = serde_json::json!({ "command": program, "args": rest });
            if let Some(name) = name {
                body["name"] = name.into();
            }
            if !env.is_empty() {
                body["env"] = env
                    .into_iter()
                    .map(|(name, value)| (name, Value::from(value)))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
            }
            if let Some(cwd) = cwd {
                body["cwd"] = cwd.into();
            }
            let limits =
                Limits::of_settings(limits.memory, limits.cpu, limits.pids, limits.timeout);
            if limits != Limits::default() {
                body["limits"] = serde_json::to_value(limits)
                    .map_err(|error| ClientError::Io(std::io::Error::other(error)))?;
            }
            let job = client.start(&body).await?;
            print_json(&mut stdout, &job)
        }
        JobsAction::List { status } => {
            // A page at a time, so a long list never sits in memory whole.
            let mut next = None;
            loop {
                let (jobs, following) =
                    client.list_page(status.as_deref(), next.as_deref()).await?;
                print_jobs(&mut stdout, &jobs)?;
                match following {
                    Some(page) => next = Some(page),
                    None => return Ok(()),
                }
            }
        }
        JobsAction::Status { id } => print_json(&mut stdout, &client.status(&id).await?),
        JobsAction::Stop { id } => print_json(&mut stdout, &client.stop(&id).await?),
        JobsAction::Logs { id, follow } => client.logs(&id, follow, &mut stdout).await,
    }
}

pub async fn hash(password: Option<String>, url: &str) -> Result<(), ClientError> {
    let password = match password {
        Some(password) => password,
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    let id = HashesClient::new(url).hash(&password).await?;
    writeln!(std::io::stdout().lock(), "{id}")?;
    Ok(())
}

pub async fn stats(url: &str) -> Result<(), ClientError> {
    let stats = HashesClient::new(url).stats().await?;
    writeln!(std::io::stdout().lock(), "{stats}")?;
    Ok(())
}

/// One line per job: id, status, owner, command and arguments.
fn print_jobs(out: &mut impl Write, jobs: &[Value]) -> Result<(), ClientError> {
    for job in jobs {
        let args: Vec<&str> = job["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        writeln!(
            out,
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

fn print_json(out: &mut impl Write, value: &Value) -> Result<(), ClientError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|error| ClientError::BadAnswer(error.to_string()))?;
    writeln!(out, "{text}")?;
    Ok(())
}
