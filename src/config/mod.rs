//! Every setting of `warden serve`: a flag and a `WARDEN_*` environment variable each, with
//! the defaults of DESIGN.md.
//!
//! Values are checked twice: clap rejects what does not parse (a duration like `5s`, a size
//! like `2GiB`, an address), and [`Config::validate`] rejects combinations that parse but make
//! no sense. Either way `warden` exits with code 2 and one line naming the setting.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

mod database;

use crate::clock::Clock;
pub use crate::db::SyncMode;
use crate::db::database_path;
pub use database::{DatabaseArgs, DatabaseUrl, SslMode};

/// Where the hash listener is unless told otherwise (each default is on loopback only).
pub const DEFAULT_HASHES_ADDR: &str = "127.0.0.1:8080";
/// Where the registry listener is unless told otherwise.
pub const DEFAULT_REGISTRY_ADDR: &str = "127.0.0.1:8081";
/// Where the jobs listener is unless told otherwise.
pub const DEFAULT_JOBS_ADDR: &str = "127.0.0.1:8443";
/// Where the admin listener is unless told otherwise.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9090";

/// The settings of one `warden serve`.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address of the hash service (`/hash`, `/stats`, `/shutdown`).
    #[arg(long, env = "WARDEN_HASHES_ADDR", default_value = DEFAULT_HASHES_ADDR)]
    pub hashes_addr: SocketAddr,

    /// Address of the discovery registry.
    #[arg(long, env = "WARDEN_REGISTRY_ADDR", default_value = DEFAULT_REGISTRY_ADDR)]
    pub registry_addr: SocketAddr,

    /// Address of the job runner.
    #[arg(long, env = "WARDEN_JOBS_ADDR", default_value = DEFAULT_JOBS_ADDR)]
    pub jobs_addr: SocketAddr,

    /// Address of the admin listener (`/healthz`, `/metrics`, `/openapi/…`, `/shutdown`).
    #[arg(long, env = "WARDEN_ADMIN_ADDR", default_value = DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,

    /// Directory of the database (`warden.db`), its lock, logs and keys.
    #[arg(long, env = "WARDEN_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// How long after `POST /hash` the hash becomes readable.
    #[arg(long, env = "WARDEN_HASH_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub hash_delay: Duration,

    /// How long a registry instance lives after its last heartbeat.
    #[arg(long, env = "WARDEN_INSTANCE_TTL", default_value = "30s", value_parser = parse_duration)]
    pub instance_ttl: Duration,

    /// How often expired registry instances are deleted.
    #[arg(long, env = "WARDEN_PURGE_EVERY", default_value = "5s", value_parser = parse_duration)]
    pub purge_every: Duration,

    /// How many jobs run at once [default: the number of CPUs].
    #[arg(long, env = "WARDEN_JOB_WORKERS")]
    pub job_workers: Option<NonZeroUsize>,

    /// How long a stopped job gets between SIGTERM and SIGKILL.
    #[arg(long, env = "WARDEN_JOB_STOP_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub job_stop_grace: Duration,

    /// How much output is kept per job (e.g. `64MiB`, `2GiB`).
    #[arg(long, env = "WARDEN_JOB_OUTPUT_LIMIT", default_value = "2GiB", value_parser = parse_size)]
    pub job_output_limit: u64,

    /// Finished jobs and their output are deleted this long after they end (`off` keeps
    /// them).
    #[arg(long, env = "WARDEN_JOB_RETENTION", default_value = "7d", value_parser = parse_keep)]
    pub job_retention: Keep,

    /// Past this much of the database in use, job output is refused (the rest is kept for
    /// status changes, heartbeats and hashes) [default: the database's size at start plus
    /// 80% of the free space on its volume].
    #[arg(long, env = "WARDEN_MAX_DB_SIZE", value_parser = parse_size)]
    pub max_db_size: Option<u64>,

    /// The OS account jobs run as [default: `nobody` when warden runs as root; otherwise
    /// warden's own account, which a job then shares, data dir and all].
    #[arg(long, env = "WARDEN_JOB_USER")]
    pub job_user: Option<String>,

    /// Memory (RAM and swap) a job's processes may hold together, and the most a request may
    /// ask for (e.g. `512MiB`) [default: no limit].
    #[arg(long, env = "WARDEN_JOB_MEMORY", value_parser = parse_positive_size)]
    pub job_memory: Option<u64>,

    /// Share of one CPU core a job may use (e.g. `0.5`), and the most a request may ask for
    /// [default: no limit].
    #[arg(long, env = "WARDEN_JOB_CPU", value_parser = parse_cpu)]
    pub job_cpu: Option<f64>,

    /// Processes and threads a job may have at once, and the most a request may ask for
    /// [default: no limit].
    #[arg(long, env = "WARDEN_JOB_PIDS", value_parser = clap::value_parser!(u64).range(1..=4_194_304))]
    pub job_pids: Option<u64>,

    /// How long a job may run before it is killed, and the longest a request may ask for
    /// (e.g. `10m`) [default: no limit].
    #[arg(long, env = "WARDEN_JOB_TIMEOUT", value_parser = parse_positive_duration)]
    pub job_timeout: Option<Duration>,

    /// A cgroup per job (`auto`: where the host lets warden make one), or `off`: jobs are
    /// contained by process group and marker only, and limits other than the timeout are
    /// unavailable.
    #[arg(long, env = "WARDEN_JOB_CGROUPS", default_value = "auto")]
    pub job_cgroups: JobCgroups,

    /// How many jobs one user may have queued at once; past it `POST /jobs` answers 429.
    #[arg(long, env = "WARDEN_MAX_QUEUED_PER_USER", default_value = "1000",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queued_per_user: u64,

    /// Mutual TLS on the jobs listener; `off` serves plain HTTP and needs a loopback address.
    #[arg(long, env = "WARDEN_JOBS_TLS", default_value = "on")]
    pub jobs_tls: JobsTls,

    /// Server certificate (PEM) of the jobs listener [default: the dev PKI in the data dir].
    #[arg(long, env = "WARDEN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// Server key (PEM) of the jobs listener [default: the dev PKI in the data dir].
    #[arg(long, env = "WARDEN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// CA (PEM) that client certificates must be signed by [default: the dev PKI's CA].
    #[arg(long, env = "WARDEN_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,

    /// SQLite durability: `full` survives power loss, `normal` only a crash of warden.
    #[arg(long, env = "WARDEN_SYNC", default_value = "full", value_parser = parse_sync)]
    pub sync: SyncMode,

    /// The shared database of the hash service and the registry, for many nodes.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// How long a write waits for another process holding the database's lock (e.g. a
    /// `sqlite3` shell) before it answers 503.
    #[arg(long, env = "WARDEN_BUSY_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub busy_timeout: Duration,

    /// How long shutdown waits for in-flight work before giving up on it.
    #[arg(long, env = "WARDEN_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Delete each hash this long after its request (e.g. `30d`); `GET /hash/{id}` answers 404
    /// from then on [default: off: hashes are kept, as the contract says].
    #[arg(long, env = "WARDEN_HASH_RETENTION", value_parser = parse_duration)]
    pub hash_retention: Option<Duration>,

    /// How many daily log files `logs/` in the data dir keeps, today's included (at least 1).
    #[arg(long, env = "WARDEN_LOG_RETENTION", default_value = "14")]
    pub log_retention: usize,
    /// How long a client gets to send a whole request head, from its first byte (or from
    /// the connection's start); then the connection is closed.
    #[arg(long, env = "WARDEN_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// How long a client gets to send a whole request body, from the end of its head; then
    /// the request is answered 408.
    #[arg(long, env = "WARDEN_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// How long a kept-alive connection may wait for its next request, or a client take
    /// none of its response, before it is closed.
    #[arg(long, env = "WARDEN_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// How many connections each listener holds open at once; past it, new clients wait.
    #[arg(long, env = "WARDEN_MAX_CONNECTIONS", default_value = "1024")]
    pub max_connections: usize,

    /// Log line format on stderr and in the log file.
    #[arg(long, env = "WARDEN_LOG_FORMAT", default_value = "human")]
    pub log_format: LogFormat,

    /// Do not serve the hash service.
    #[arg(long, env = "WARDEN_NO_HASHES")]
    pub no_hashes: bool,

    /// Do not serve the discovery registry.
    #[arg(long, env = "WARDEN_NO_REGISTRY")]
    pub no_registry: bool,

    /// Do not serve the job runner.
    #[arg(long, env = "WARDEN_NO_JOBS")]
    pub no_jobs: bool,

    /// Where "now" comes from; tests drive a manual clock.
    #[arg(skip)]
    pub clock: Clock,

    /// The binary that runs as the job spawner (`warden job-spawner`): this very binary,
    /// except in tests, whose binary is the test harness.
    #[arg(skip = PathBuf::from("/proc/self/exe"))]
    pub job_spawner: PathBuf,
}

/// Whether the jobs listener speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JobsTls {
    On,
    Off,
}

/// Whether each job gets a cgroup of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JobCgroups {
    /// Where the host lets warden make one.
    Auto,
    /// Never: process groups and markers only.
    Off,
}

/// How long something is kept: for a while, or until deleted by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Kept until deleted by hand (`off`).
    Forever,
    /// Deleted this long after it ended.
    For(Duration),
}

impl Keep {
    /// The window, if there is one.
    pub fn window(self) -> Option<Duration> {
        match self {
            Self::Forever => None,
            Self::For(window) => Some(window),
        }
    }
}

/// `off`, or a duration of more than zero.
fn parse_keep(value: &str) -> Result<Keep, String> {
    if value == "off" {
        return Ok(Keep::Forever);
    }
    match parse_duration(value)? {
        window if window.is_zero() => Err("must be more than 0, or off".to_owned()),
        window => Ok(Keep::For(window)),
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Parses only the serve settings, for tests and tools that build a [`Config`] by hand.
#[derive(Parser)]
#[command(no_binary_name = true)]
struct ConfigOnly {
    #[command(flatten)]
    config: Config,
}

impl Config {
    /// Builds a config from serve flags (and `WARDEN_*` variables), defaults for the rest.
    pub fn from_flags<I, S>(flags: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        ConfigOnly::try_parse_from(flags).map(|parsed| parsed.config)
    }

    /// Rejects settings that parse but cannot work; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        self.database.check()?;
        if self.instance_ttl.is_zero() {
            return Err("invalid --instance-ttl (WARDEN_INSTANCE_TTL): must be more than 0".into());
        }
        if self.purge_every.is_zero() {
            return Err("invalid --purge-every (WARDEN_PURGE_EVERY): must be more than 0".into());
        }
        if self.drain_timeout.is_zero() {
            // Nothing in flight could finish: every shutdown would be a failed drain.
            return Err(
                "invalid --drain-timeout (WARDEN_DRAIN_TIMEOUT): must be more than 0".into(),
            );
        }
        if self.max_db_size == Some(0) {
            return Err("invalid --max-db-size (WARDEN_MAX_DB_SIZE): must be more than 0".into());
        }
        if self.job_output_limit == 0 {
            return Err(
                "invalid --job-output-limit (WARDEN_JOB_OUTPUT_LIMIT): must be more than 0".into(),
            );
        }
        for (zero, setting) in [
            (
                self.header_timeout.is_zero(),
                "--header-timeout (WARDEN_HEADER_TIMEOUT)",
            ),
            (
                self.body_timeout.is_zero(),
                "--body-timeout (WARDEN_BODY_TIMEOUT)",
            ),
            (
                self.idle_timeout.is_zero(),
                "--idle-timeout (WARDEN_IDLE_TIMEOUT)",
            ),
            (
                self.max_connections == 0,
                "--max-connections (WARDEN_MAX_CONNECTIONS)",
            ),
        ] {
            if zero {
                return Err(format!("invalid {setting}: must be more than 0"));
            }
        }
        if self.jobs_tls == JobsTls::Off && !self.no_jobs && !self.jobs_addr.ip().is_loopback() {
            return Err(format!(
                "invalid --jobs-tls (WARDEN_JOBS_TLS): 'off' serves plain HTTP and is only \
                 allowed on a loopback --jobs-addr, not {}",
                self.jobs_addr
            ));
        }
        if self
            .hash_retention
            .is_some_and(|retention| retention <= self.hash_delay)
        {
            return Err(
                "invalid --hash-retention (WARDEN_HASH_RETENTION): must be longer than \
                 --hash-delay, or a hash would be deleted before it could be read"
                    .into(),
            );
        }
        if self.log_retention == 0 {
            return Err(
                "invalid --log-retention (WARDEN_LOG_RETENTION): must be at least 1, \
                 the day's own log file"
                    .into(),
            );
        }
        let tls_files = [&self.tls_cert, &self.tls_key].map(Option::is_some);
        if tls_files[0] != tls_files[1] {
            return Err("invalid --tls-cert/--tls-key: give both or neither".into());
        }
        Ok(())
    }

    /// The database file inside the data directory.
    pub fn database_path(&self) -> PathBuf {
        database_path(&self.data_dir)
    }

    /// How many jobs run at once.
    pub fn job_workers(&self) -> usize {
        self.job_workers.map_or_else(
            || std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            NonZeroUsize::get,
        )
    }
}

/// A byte size of more than zero.
fn parse_positive_size(value: &str) -> Result<u64, String> {
    match parse_size(value)? {
        0 => Err("must be more than 0".to_owned()),
        size => Ok(size),
    }
}

/// A duration of more than zero.
pub(crate) fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    match parse_duration(value)? {
        duration if duration.is_zero() => Err("must be more than 0".to_owned()),
        duration => Ok(duration),
    }
}

/// A share of one core: a number of more than zero, at most 1024 cores.
fn parse_cpu(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(cpu) if cpu.is_finite() && cpu > 0.0 && cpu <= 1024.0 => Ok(cpu),
        _ => Err("expected a share of one core of more than 0, like 0.5 or 2".to_owned()),
    }
}

/// `full` or `normal`.
fn parse_sync(value: &str) -> Result<SyncMode, String> {
    match value {
        "full" => Ok(SyncMode::Full),
        "normal" => Ok(SyncMode::Normal),
        _ => Err("expected full or normal".to_owned()),
    }
}

/// A human duration: `5s`, `250ms`, `1m 30s`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value)
        .map_err(|error| format!("{error} (expected a duration like 5s or 250ms)"))
}

/// A byte size: `1024`, `64MiB`, `2GiB`, `1.5 GB`.
pub fn parse_size(value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|_| "expected a size like 64MiB or 2GiB".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let config = Config::from_flags(Vec::<String>::new()).unwrap();
        assert_eq!(config.hashes_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.admin_addr.to_string(), "127.0.0.1:9090");
        assert_eq!(config.hash_delay, Duration::from_secs(5));
        assert_eq!(config.instance_ttl, Duration::from_secs(30));
        assert_eq!(config.job_output_limit, 2 << 30);
        assert_eq!(config.sync, SyncMode::Full);
        assert_eq!(
            config.job_retention,
            Keep::For(Duration::from_secs(7 * 24 * 3600))
        );
        assert_eq!(config.max_db_size, None);
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        config.validate().unwrap();
    }

    #[test]
    fn durations_and_sizes_read_like_a_person_writes_them() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_keep("off"), Ok(Keep::Forever));
        assert_eq!(parse_keep("1h"), Ok(Keep::For(Duration::from_secs(3600))));
        assert!(parse_keep("0s").is_err());
    }

    #[test]
    fn plain_jobs_listener_is_refused_off_loopback() {
        let config =
            Config::from_flags(["--jobs-tls", "off", "--jobs-addr", "0.0.0.0:8443"]).unwrap();
        assert!(config.validate().unwrap_err().contains("--jobs-tls"));
        let config = Config::from_flags(["--jobs-tls", "off"]).unwrap();
        assert!(config.validate().is_ok());
        let config =
            Config::from_flags(["--jobs-tls", "on", "--jobs-addr", "0.0.0.0:8443"]).unwrap();
        assert!(config.validate().is_ok());
    }

    #[test]
    fn retention_of_hashes_is_off_by_default_and_must_outlast_the_delay() {
        let config = Config::from_flags(Vec::<String>::new()).unwrap();
        assert_eq!(config.hash_retention, None);
        let config = Config::from_flags(["--hash-retention", "30d"]).unwrap();
        assert_eq!(
            config.hash_retention,
            Some(Duration::from_secs(30 * 86_400))
        );
        config.validate().unwrap();
        for short in ["5s", "1s", "0s"] {
            let config = Config::from_flags(["--hash-retention", short]).unwrap();
            let refused = config.validate().unwrap_err();
            assert!(refused.contains("--hash-retention"), "{short}: {refused}");
        }
    }

    #[test]
    fn log_files_are_kept_for_two_weeks_by_default_and_never_zero() {
        let config = Config::from_flags(Vec::<String>::new()).unwrap();
        assert_eq!(config.log_retention, 14);
        let config = Config::from_flags(["--log-retention", "0"]).unwrap();
        assert!(config.validate().unwrap_err().contains("--log-retention"));
    }
}
