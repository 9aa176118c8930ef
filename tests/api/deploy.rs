//! The deployment files run as written: the `Containerfile`'s `ENTRYPOINT`, `CMD` and `ENV`,
//! and `deploy/warden.service`'s `ExecStart=` and `Environment=`, are parsed from the files
//! themselves and run with the real binary, so the tests cannot drift from the files. Each
//! run must serve (`/healthz` 200 `ok` with every service up, a hash, a job over mutual TLS
//! with the development PKI made in the data dir), pass the container's `HEALTHCHECK`, and
//! drain and exit 0 on SIGTERM.
//!
//! Overridden, because it cannot work in a test, and nothing else:
//! - the binary's path (`/usr/local/bin/warden`) becomes the one this test run built, and the
//!   container's init (`tini --`, which need not be installed here) is left out;
//! - the data directory (`/data`, `/var/lib/warden`) becomes a fresh temp dir;
//! - each listener's port becomes 0, so that runs never collide. The IP is kept: a listener
//!   the file puts on `0.0.0.0` binds every interface here too (on an ephemeral port, for the
//!   test's few seconds), so warden's own checks, such as mutual TLS being required off
//!   loopback, see what they see in production. Clients connect through 127.0.0.1.
//!
//! The environment is the file's alone, plus `PATH`: nothing of the test runner's leaks in.
//! The unit's `LimitNOFILE=` is applied with `prlimit` where this machine allows it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;
use warden::config::{
    DEFAULT_ADMIN_ADDR, DEFAULT_HASHES_ADDR, DEFAULT_JOBS_ADDR, DEFAULT_REGISTRY_ADDR,
};

use crate::helpers::{WardenProcess, call, eventually, run_cli, warden_binary};

/// Where the files install the binary.
const INSTALLED_BINARY: &str = "/usr/local/bin/warden";

/// The listeners' settings, as flags and as variables, with warden's defaults.
const LISTENERS: [(&str, &str, &str); 4] = [
    ("--hashes-addr", "WARDEN_HASHES_ADDR", DEFAULT_HASHES_ADDR),
    (
        "--registry-addr",
        "WARDEN_REGISTRY_ADDR",
        DEFAULT_REGISTRY_ADDR,
    ),
    ("--jobs-addr", "WARDEN_JOBS_ADDR", DEFAULT_JOBS_ADDR),
    ("--admin-addr", "WARDEN_ADMIN_ADDR", DEFAULT_ADMIN_ADDR),
];

fn repo_file(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Splits `text` into words as a shell (and systemd) does: on whitespace, with single and
/// double quotes, and backslash escapes inside double quotes. Expansions (`$`, systemd's `%`
/// specifiers) are refused: the test would run something other than what they expand to.
fn words(text: &str) -> Vec<String> {
    assert!(
        !text.contains('$') && !text.contains('%'),
        "expansions are not supported by this test: {text}"
    );
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(next) = chars.next() {
        match next {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let word = word.get_or_insert_default();
                word.extend(chars.by_ref().take_while(|&c| c != '\''));
            }
            '"' => {
                let word = word.get_or_insert_default();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        c => word.push(c),
                    }
                }
            }
            c => word.get_or_insert_default().push(c),
        }
    }
    words.extend(word);
    words
}

/// `KEY=VALUE` words as (key, value).
fn assignments(text: &str) -> Vec<(String, String)> {
    words(text)
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some((key, value)) => (key.to_owned(), value.to_owned()),
            None => panic!("not KEY=VALUE: {word:?} in {text:?}"),
        })
        .collect()
}

/// Joins lines continued with a trailing backslash and drops comments and blank lines.
fn logical_lines(text: &str, comment: &[char]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with(comment) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(continued) => {
                pending.push_str(continued);
                pending.push(' ');
            }
            None => {
                pending.push_str(trimmed);
                lines.push(std::mem::take(&mut pending));
            }
        }
    }
    assert!(pending.is_empty(), "the last line is continued: {pending}");
    lines
}

/// What the runtime stage of the `Containerfile` says.
#[derive(Debug, Default)]
struct Containerfile {
    env: Vec<(String, String)>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    healthcheck: Vec<String>,
    volumes: Vec<String>,
    /// Where `COPY --from=…` puts files.
    copied_to: Vec<String>,
}

/// The JSON array of an exec-form instruction; the shell form would put `sh -c` in front.
fn exec_form(instruction: &str, text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_else(|error| {
        panic!("{instruction} must be exec form, a JSON array ({error}): {text}")
    })
}

impl Containerfile {
    fn read() -> Self {
        let lines = logical_lines(&repo_file("Containerfile"), &['#']);
        let runtime_stage = lines
            .iter()
            .rposition(|line| line.to_ascii_uppercase().starts_with("FROM "))
            .expect("a FROM");
        let mut file = Self::default();
        for line in &lines[runtime_stage + 1..] {
            let (instruction, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match instruction.to_ascii_uppercase().as_str() {
                "ENV" => file.env.extend(assignments(rest)),
                "ENTRYPOINT" => file.entrypoint = exec_form("ENTRYPOINT", rest),
                "CMD" => file.cmd = exec_form("CMD", rest),
                "VOLUME" => file.volumes = exec_form("VOLUME", rest),
                "HEALTHCHECK" => {
                    let (_options, command) =
                        rest.split_once("CMD ").expect("HEALTHCHECK … CMD […]");
                    file.healthcheck = exec_form("HEALTHCHECK CMD", command.trim());
                }
                "COPY" if rest.contains("--from=") => {
                    file.copied_to
                        .push(words(rest).pop().expect("a destination"));
                }
                _ => {}
            }
        }
        file
    }

    /// The command the container runs: ENTRYPOINT then CMD, without the init in front.
    fn command(&self) -> Vec<String> {
        let mut command: Vec<String> = self.entrypoint.iter().chain(&self.cmd).cloned().collect();
        if command
            .first()
            .is_some_and(|program| program.ends_with("/tini"))
        {
            assert_eq!(
                command.get(1).map(String::as_str),
                Some("--"),
                "tini -- COMMAND"
            );
            command.drain(..2);
        }
        command
    }
}

/// What the `[Service]` section of `deploy/warden.service` says.
#[derive(Debug, Default)]
struct Unit {
    settings: BTreeMap<String, Vec<String>>,
}

impl Unit {
    fn read() -> Self {
        let mut unit = Self::default();
        let mut section = String::new();
        for line in logical_lines(&repo_file("deploy/warden.service"), &['#', ';']) {
            if line.starts_with('[') {
                section = line;
                continue;
            }
            if section != "[Service]" {
                continue;
            }
            let (key, value) = line.split_once('=').expect("KEY=VALUE");
            unit.settings
                .entry(key.trim().to_owned())
                .or_default()
                .push(value.trim().to_owned());
        }
        unit
    }

    /// The one value of `key`.
    fn one(&self, key: &str) -> Option<&str> {
        let values = self.settings.get(key)?;
        assert_eq!(values.len(), 1, "{key}= is given once");
        values.first().map(String::as_str)
    }

    fn command(&self) -> Vec<String> {
        let exec_start = self.one("ExecStart").expect("ExecStart=");
        assert!(
            !exec_start.starts_with(['-', '@', ':', '+', '!']),
            "ExecStart= prefixes are not supported by this test: {exec_start}"
        );
        words(exec_start)
    }

    fn env(&self) -> Vec<(String, String)> {
        assert!(
            !self.settings.contains_key("EnvironmentFile"),
            "EnvironmentFile= is not supported by this test"
        );
        self.settings
            .get("Environment")
            .into_iter()
            .flatten()
            .flat_map(|line| assignments(line))
            .collect()
    }
}

/// The value of `flag` in `args` (`--flag value` or `--flag=value`), else of `var` in `env`.
fn setting<'a>(
    args: &'a [String],
    env: &'a [(String, String)],
    flag: &str,
    var: &str,
) -> Option<&'a str> {
    let from_flags = args.iter().enumerate().rev().find_map(|(at, arg)| {
        if arg == flag {
            args.get(at + 1).map(String::as_str)
        } else {
            arg.strip_prefix(flag)?.strip_prefix('=')
        }
    });
    from_flags.or_else(|| {
        env.iter()
            .rev()
            .find(|(key, _)| key == var)
            .map(|(_, value)| value.as_str())
    })
}

/// `addr` on port 0.
fn on_port_zero(addr: &str) -> String {
    let mut addr: SocketAddr = addr
        .parse()
        .unwrap_or_else(|error| panic!("{addr}: {error}"));
    addr.set_port(0);
    addr.to_string()
}

/// A deployment file's command line and environment, and the few overrides of a test.
struct Deployment {
    /// The arguments after the program, overrides applied.
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// `LimitNOFILE=`, applied where this machine allows.
    open_files: Option<u64>,
}

impl Deployment {
    /// `command` (program first) and `env` from a file, with the data dir moved to
    /// `data_dir` and every listener to port 0.
    fn new(command: &[String], env: &[(String, String)], data_dir: &Path) -> Self {
        let (program, args) = command.split_first().expect("a command");
        assert_eq!(
            program, INSTALLED_BINARY,
            "the file runs the installed binary"
        );
        assert_eq!(
            setting(args, env, "--log-format", "WARDEN_LOG_FORMAT"),
            Some("json"),
            "the test learns the listeners' ports from warden's JSON log"
        );
        let mut args = args.to_vec();
        let mut env = env.to_vec();
        let data_dir = data_dir.display().to_string();
        let mut overrides = vec![("--data-dir", "WARDEN_DATA_DIR", data_dir)];
        for (flag, var, default) in LISTENERS {
            let addr = setting(&args, &env, flag, var).unwrap_or(default);
            overrides.push((flag, var, on_port_zero(addr)));
        }
        for (flag, var, value) in overrides {
            let mut given_as_flag = false;
            for at in 0..args.len() {
                if args[at] == flag {
                    args[at + 1].clone_from(&value);
                    given_as_flag = true;
                } else if args[at].starts_with(&format!("{flag}=")) {
                    args[at] = format!("{flag}={value}");
                    given_as_flag = true;
                }
            }
            env.retain(|(key, _)| key != var);
            if !given_as_flag {
                env.push((var.to_owned(), value));
            }
        }
        Self {
            args,
            env,
            open_files: None,
        }
    }

    /// Starts it and waits until every listener is up.
    async fn start(&self) -> Deployed {
        let open_files = self.open_files.filter(|&limit| can_set_open_files(limit));
        let mut command = match open_files {
            Some(limit) => {
                let mut command = Command::new("prlimit");
                command
                    .arg(format!("--nofile={limit}:{limit}"))
                    .arg("--")
                    .arg(warden_binary());
                command
            }
            None => Command::new(warden_binary()),
        };
        command
            .args(&self.args)
            .env_clear()
            .envs(std::env::var_os("PATH").map(|path| ("PATH", path)))
            .envs(self.env.iter().map(|(key, value)| (key, value)));
        let process = WardenProcess::spawn(command).await;
        let loopback = |url: &str| {
            url.replace("://0.0.0.0:", "://127.0.0.1:")
                .replace("://[::]:", "://[::1]:")
        };
        Deployed {
            open_files_applied: open_files.is_some(),
            hashes: loopback(&process.hashes),
            jobs: loopback(&process.jobs).replacen("http://", "https://", 1),
            admin: loopback(&process.admin),
            process,
        }
    }
}

/// Whether this process may give a child `limit` open files, soft and hard, with `prlimit`.
fn can_set_open_files(limit: u64) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    if find_program("prlimit").is_none() {
        eprintln!("skipped: prlimit is not installed here; LimitNOFILE={limit} was not applied");
        return false;
    }
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("the open-file limit");
    let root = std::fs::metadata("/proc/self").is_ok_and(|me| me.uid() == 0);
    let allowed = hard >= limit || root;
    if !allowed {
        eprintln!("skipped: LimitNOFILE={limit} is above this machine's hard limit {hard}");
    }
    allowed
}

/// A running deployment, reached through loopback.
struct Deployed {
    process: WardenProcess,
    /// Whether the file's `LimitNOFILE=` is warden's.
    open_files_applied: bool,
    hashes: String,
    jobs: String,
    admin: String,
}

impl Deployed {
    /// `/healthz` is 200 `ok` with every service up, a hash is accepted, and a job runs over
    /// mutual TLS with the admin certificate of the development PKI made in `data_dir`.
    async fn serves(&self, data_dir: &Path) {
        let client = reqwest::Client::new();
        let (status, health) = call(client.get(format!("{}/healthz", self.admin))).await;
        assert_eq!(status, 200, "{health}");
        assert_eq!(health["status"], "ok", "{health}");
        for service in ["hashes", "registry", "jobs"] {
            assert_eq!(health["services"][service], "up", "{health}");
        }

        let response = client
            .post(format!("{}/hash", self.hashes))
            .form(&[("password", "angryMonkey")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            data_dir.join("warden.db").exists(),
            "the database is in the data dir"
        );

        let data_dir = data_dir.display().to_string();
        let env = [
            ("WARDEN_URL", self.jobs.as_str()),
            ("WARDEN_DATA_DIR", &data_dir),
        ];
        let (code, started, stderr) =
            run_cli(&["jobs", "start", "--", "echo", "deployed"], &env).await;
        assert_eq!(code, Some(0), "a job over mutual TLS: {stderr}");
        let job: serde_json::Value = serde_json::from_str(&started).unwrap();
        let id = job["id"].as_str().unwrap();
        let (code, output, stderr) = run_cli(&["jobs", "logs", "-f", id], &env).await;
        assert_eq!((code, output.as_str()), (Some(0), "deployed\n"), "{stderr}");
    }

    /// SIGTERM drains, and warden exits 0.
    async fn drains_on_sigterm(mut self) {
        self.process.signal("TERM").await;
        let code = self.process.exit_code().await;
        let log = &self.process.log;
        assert_eq!(code, Some(0), "{:#?}", log.lock().unwrap());
        // The log's reader may be a line or two behind the exit.
        let said = eventually(
            "warden logs its clean stop",
            Duration::from_secs(10),
            async || {
                let log = log.lock().unwrap();
                log.iter()
                    .any(|line| line.contains("stopped cleanly"))
                    .then_some(())
            },
        );
        said.await;
    }

    /// Log lines at WARN or above.
    fn warnings(&self) -> Vec<String> {
        let log = self.process.log.lock().unwrap();
        log.iter()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .is_ok_and(|event| event["level"] == "WARN" || event["level"] == "ERROR")
            })
            .cloned()
            .collect()
    }
}

/// `program` as found on `PATH`, or the built binary for the installed one.
fn find_program(program: &str) -> Option<PathBuf> {
    if program == INSTALLED_BINARY {
        return Some(warden_binary());
    }
    if program.contains('/') {
        return Some(PathBuf::from(program)).filter(|path| path.exists());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

#[tokio::test]
async fn the_containerfiles_command_and_environment_serve_pass_the_healthcheck_and_drain() {
    let file = Containerfile::read();
    let command = file.command();
    assert!(
        file.copied_to.iter().any(|to| to == &command[0]),
        "the command runs the binary the build copies in: {command:?}, {:?}",
        file.copied_to
    );
    let data_dir = file.env.iter().find(|(key, _)| key == "WARDEN_DATA_DIR");
    assert_eq!(
        data_dir.map(|(_, dir)| vec![dir.clone()]),
        Some(file.volumes.clone()),
        "the data dir is the VOLUME"
    );

    let dir = tempfile::tempdir().unwrap();
    let deployment = Deployment::new(&command, &file.env, dir.path());
    let deployed = deployment.start().await;
    deployed.serves(dir.path()).await;

    // The HEALTHCHECK asks the admin listener on its port in the container, through
    // loopback; here that port is the one the test's admin listener got.
    let admin =
        setting(&command, &file.env, "--admin-addr", "WARDEN_ADMIN_ADDR").unwrap_or(LISTENERS[3].2);
    let admin: SocketAddr = admin.parse().unwrap();
    assert!(
        admin.ip().is_unspecified() || admin.ip().is_loopback(),
        "loopback reaches {admin}"
    );
    let in_container = format!("127.0.0.1:{}", admin.port());
    let here = deployed.admin.trim_start_matches("http://");
    let mut healthcheck = file.healthcheck.clone();
    assert_eq!(
        healthcheck
            .iter()
            .filter(|arg| arg.contains(&format!("{in_container}/healthz")))
            .count(),
        1,
        "the HEALTHCHECK asks {in_container}/healthz: {healthcheck:?}"
    );
    for arg in &mut healthcheck {
        *arg = arg.replace(&in_container, here);
    }
    match find_program(&healthcheck[0]) {
        Some(program) => {
            let checked = tokio::time::timeout(
                Duration::from_secs(10),
                Command::new(program).args(&healthcheck[1..]).output(),
            )
            .await
            .expect("the HEALTHCHECK answered within 10 s")
            .unwrap();
            assert!(
                checked.status.success(),
                "the HEALTHCHECK {healthcheck:?} failed: {}",
                String::from_utf8_lossy(&checked.stderr)
            );
        }
        None => eprintln!(
            "skipped: {} is not installed here; the HEALTHCHECK was not run",
            healthcheck[0]
        ),
    }
    deployed.drains_on_sigterm().await;
}

#[tokio::test]
async fn the_units_command_and_environment_serve_and_drain_within_its_stop_timeout() {
    let unit = Unit::read();
    let command = unit.command();
    let env = unit.env();
    let state_dir = unit.one("StateDirectory").expect("StateDirectory=");
    assert_eq!(
        setting(&command, &env, "--data-dir", "WARDEN_DATA_DIR"),
        Some(format!("/var/lib/{state_dir}").as_str()),
        "the data dir is the StateDirectory="
    );

    // The drain (in which jobs get their stop grace) ends before systemd's SIGKILL.
    let duration = |flag, var, default| {
        warden::config::parse_duration(setting(&command, &env, flag, var).unwrap_or(default))
            .unwrap()
    };
    let drain = duration("--drain-timeout", "WARDEN_DRAIN_TIMEOUT", "30s");
    let grace = duration("--job-stop-grace", "WARDEN_JOB_STOP_GRACE", "10s");
    let stop_timeout =
        warden::config::parse_duration(unit.one("TimeoutStopSec").expect("TimeoutStopSec="))
            .unwrap();
    assert!(
        stop_timeout > drain + grace,
        "TimeoutStopSec= {stop_timeout:?} > {drain:?} + {grace:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut deployment = Deployment::new(&command, &env, dir.path());
    deployment.open_files = unit
        .one("LimitNOFILE")
        .map(|limit| limit.parse().expect("LimitNOFILE= a number"));
    let deployed = deployment.start().await;
    deployed.serves(dir.path()).await;
    if deployed.open_files_applied {
        let warnings = deployed.warnings();
        assert!(
            !warnings.iter().any(|line| line.contains("open-file limit")),
            "LimitNOFILE= leaves room for every listener's connections: {warnings:#?}"
        );
    }
    deployed.drains_on_sigterm().await;
}
