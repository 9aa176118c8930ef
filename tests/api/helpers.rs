//! Test harness: the real supervisor on port 0 with a temp data dir and a manual clock, and a
//! way to run the real `warden` binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warden::clock::Clock;
use warden::config::{Config, SyncMode};
use warden::db::{Database, PgSettings};
use warden::security::{principal::Role, tokens::TokenKeys};
use warden::supervisor::{App, RunError};

/// Where the manual clock starts: an arbitrary fixed instant (2026-01-01T00:00:00Z).
pub const START_MS: i64 = 1_767_225_600_000;

/// The contract's vector: SHA-512 of `angryMonkey`, base64.
pub const ANGRY_MONKEY: &str =
    "ZEHhWB65gUlzdVwtDQArEyx+KVLzp/aTaRaPlBzYRIFj6vjFdqEb0Q5B8zVKCZ0vKbZPZklJz0Fd7su2A+gf7Q==";

/// Flags that put every listener on an ephemeral loopback port.
pub fn port_zero_flags(data_dir: &Path) -> Vec<String> {
    [
        "--data-dir",
        &data_dir.display().to_string(),
        "--hashes-addr",
        "127.0.0.1:0",
        "--registry-addr",
        "127.0.0.1:0",
        "--jobs-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The serve config of `flags`, with the job spawner this test run built: the tests' own
/// binary is the test harness, not warden.
pub fn config(flags: Vec<String>) -> Config {
    let mut config = Config::from_flags(flags).expect("test flags parse");
    config.job_spawner = warden_binary();
    config
}

/// `--jobs-tls off` unless the test chose a TLS mode: most tests drive the jobs API with
/// tokens over plain HTTP; the `tls` tests ask for mutual TLS.
fn plain_jobs_unless_asked(flags: &[&str]) -> Vec<String> {
    if flags.contains(&"--jobs-tls") {
        Vec::new()
    } else {
        vec!["--jobs-tls".to_owned(), "off".to_owned()]
    }
}

/// Where a test's warden keeps the hash service's and the registry's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The node's own SQLite file (the default).
    Sqlite,
    /// A fresh database of its own on the test Postgres (`pg.rs`).
    Postgres,
}

/// The time of a test's warden: the node's manual clock and, on Postgres, the database's
/// clock (`warden_clock.frozen_ms`), which every node sharing it reads. The two move together,
/// so a test reads the same on either engine. It also names the shared database, so a warden
/// restarted on the same data dir and clock finds the same state.
#[derive(Clone, Debug)]
pub struct TestClock {
    pub node: Clock,
    /// The shared database's URL, on Postgres.
    pub shared: Option<String>,
}

impl From<Clock> for TestClock {
    fn from(node: Clock) -> Self {
        Self { node, shared: None }
    }
}

impl TestClock {
    /// A manual clock at [`START_MS`] on `engine`: on Postgres, a fresh database, migrated and
    /// with its clock set there too.
    pub async fn on(engine: Engine) -> Self {
        let clock = Self {
            node: Clock::manual(START_MS),
            shared: match engine {
                Engine::Sqlite => None,
                Engine::Postgres => Some(crate::pg::fresh_database().await),
            },
        };
        if let Some(url) = &clock.shared {
            warden::db::migrate_only(&shared_settings(url))
                .await
                .expect("the shared database migrates");
        }
        clock.sync().await;
        clock
    }

    /// Milliseconds since the Unix epoch, as both clocks read.
    pub fn now_ms(&self) -> i64 {
        self.node.now_ms()
    }

    /// Moves both clocks forward.
    pub async fn advance(&self, by: Duration) {
        self.node.advance(by);
        self.sync().await;
    }

    /// Sets both clocks to `ms`.
    pub async fn set_ms(&self, ms: i64) {
        self.node.set_ms(ms);
        self.sync().await;
    }

    /// Sets the shared database's clock to the node's.
    async fn sync(&self) {
        let Some(url) = &self.shared else {
            return;
        };
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
            .await
            .expect("the test database accepts a connection");
        sqlx::query("UPDATE warden_clock SET frozen_ms = $1")
            .bind(self.node.now_ms())
            .execute(&mut conn)
            .await
            .expect("the database's clock is set");
    }

    /// The serve flags that point a warden at the shared database.
    fn flags(&self) -> Vec<String> {
        self.shared
            .iter()
            .flat_map(|url| ["--database".to_owned(), url.clone()])
            .collect()
    }
}

/// The shared database's settings at `url`, as `serve` would have them by default.
pub fn shared_settings(url: &str) -> PgSettings {
    PgSettings {
        url: url.to_owned(),
        pool_size: 4,
        statement_timeout: Duration::from_secs(5),
        ssl_mode: None,
        ssl_root_cert: None,
    }
}

/// A warden served in-process by the real supervisor.
pub struct TestApp {
    pub dir: TempDir,
    /// A directory outside the data dir that jobs (running as `nobody` when the tests run as
    /// root) can read and write: see [`job_area`].
    pub work: TempDir,
    pub clock: TestClock,
    pub hashes: String,
    pub registry: String,
    pub jobs: String,
    pub admin: String,
    pub hashes_addr: SocketAddr,
    pub client: reqwest::Client,
    /// The running warden's database, to reach under the API (a full disk on demand).
    pub db: Database,
    shutdown: CancellationToken,
    running: JoinHandle<Result<(), RunError>>,
}

/// A new temp dir that every account can read and write (mode 0777), for the files a job
/// reads or writes: jobs never reach into the data dir, and when the tests run as root
/// they run as `nobody`.
pub fn job_area() -> TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod the job area");
    dir
}

impl TestApp {
    /// A fresh warden on a new temp data dir, with a manual clock at [`START_MS`].
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// [`TestApp::spawn`] with extra serve flags.
    pub async fn spawn_with(extra_flags: &[&str]) -> Self {
        Self::on_with(Engine::Sqlite, extra_flags).await
    }

    /// A fresh warden whose hash service and registry keep their state on `engine`.
    pub async fn on(engine: Engine) -> Self {
        Self::on_with(engine, &[]).await
    }

    /// [`TestApp::on`] with extra serve flags.
    pub async fn on_with(engine: Engine, extra_flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::spawn_in(dir, TestClock::on(engine).await, extra_flags).await
    }

    /// A warden on `dir` (e.g. one a stopped app left behind), with extra serve flags.
    pub async fn spawn_in(dir: TempDir, clock: impl Into<TestClock>, extra_flags: &[&str]) -> Self {
        warden::security::tls::install_crypto_provider();
        let clock = clock.into();
        let mut flags = port_zero_flags(dir.path());
        flags.extend(plain_jobs_unless_asked(extra_flags));
        flags.extend(clock.flags());
        flags.extend(extra_flags.iter().map(|flag| (*flag).to_owned()));
        let mut config = config(flags);
        config.validate().expect("test config is valid");
        config.clock = clock.node.clone();
        let app = App::build(config).await.expect("warden builds");
        let hashes_addr = app.hashes_addr().expect("hashes is enabled");
        let registry_addr = app.registry_addr().expect("registry is enabled");
        let jobs_addr = app.jobs_addr().expect("jobs is enabled");
        let jobs_scheme = if extra_flags
            .windows(2)
            .any(|pair| pair == ["--jobs-tls", "on"])
        {
            "https"
        } else {
            "http"
        };
        let admin_addr = app.admin_addr();
        let db = app.database();
        let shutdown = app.shutdown_token();
        let running = tokio::spawn(app.run_until_stopped());
        Self {
            dir,
            work: job_area(),
            clock,
            hashes: format!("http://{hashes_addr}"),
            registry: format!("http://{registry_addr}"),
            jobs: format!("{jobs_scheme}://{jobs_addr}"),
            admin: format!("http://{admin_addr}"),
            hashes_addr,
            client: reqwest::Client::new(),
            db,
            shutdown,
            running,
        }
    }

    /// Starts the drain and waits for the run to end; hands back the data dir for a restart.
    pub async fn stop(self) -> (TempDir, TestClock) {
        self.shutdown.cancel();
        self.running
            .await
            .expect("run task did not panic")
            .expect("drained cleanly");
        (self.dir, self.clock)
    }

    /// Waits for a run that something else (e.g. `/shutdown`) stopped; hands back how it
    /// ended and the data dir.
    pub async fn wait_stopped(self) -> (Result<(), RunError>, TempDir, TestClock) {
        let ended = tokio::time::timeout(Duration::from_secs(30), self.running)
            .await
            .expect("warden stopped within 30 s")
            .expect("run task did not panic");
        (ended, self.dir, self.clock)
    }

    /// A bearer token for `user` with `role`, signed with this warden's key.
    pub async fn token(&self, user: &str, role: Role) -> String {
        self.token_keys()
            .await
            .issue(user, role, Duration::from_secs(3600))
            .unwrap()
    }

    /// A token signed with this warden's key that expired a minute ago.
    pub async fn expired_token(&self, user: &str, role: Role) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        self.token_keys()
            .await
            .issue_expiring_at(user, role, now - 60)
            .unwrap()
    }

    async fn token_keys(&self) -> TokenKeys {
        let db = Database::open(self.dir.path(), SyncMode::Full)
            .await
            .unwrap();
        let keys = TokenKeys::load_or_create(&db, 0).await.unwrap();
        db.close().await;
        keys
    }

    /// The first column of the rows of `sql`, read where this warden keeps the hash service's
    /// and the registry's state: its SQLite file, or the shared database.
    pub async fn stored<T>(&self, sql: &str) -> Vec<T>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
        T: Send + Unpin,
    {
        let query = sqlx::AssertSqlSafe(sql.to_owned());
        if let Some(url) = &self.clock.shared {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let rows = sqlx::query_scalar(query).fetch_all(&pool).await.unwrap();
            pool.close().await;
            return rows;
        }
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(self.dir.path().join("warden.db"))
            .read_only(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        let rows = sqlx::query_scalar(query).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    }

    /// `POST /hash` with a urlencoded `password`.
    pub async fn post_password(&self, password: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/hash", self.hashes))
            .form(&[("password", password)])
            .send()
            .await
            .expect("POST /hash answered")
    }

    /// `POST /hash` expecting success; returns the id.
    pub async fn create_hash(&self, password: &str) -> i64 {
        let response = self.post_password(password).await;
        assert_eq!(response.status(), 200);
        response
            .text()
            .await
            .unwrap()
            .parse()
            .expect("a decimal id")
    }

    /// `GET /hash/{id}`.
    pub async fn get_hash(&self, id: &str) -> reqwest::Response {
        self.client
            .get(format!("{}/hash/{id}", self.hashes))
            .send()
            .await
            .expect("GET /hash answered")
    }

    /// `GET /stats` as (total, average).
    pub async fn stats(&self) -> (i64, i64) {
        let (_, stats) = call(self.client.get(format!("{}/stats", self.hashes))).await;
        (
            stats["total"].as_i64().unwrap(),
            stats["average"].as_i64().unwrap(),
        )
    }
}

/// Runs each named test, an `async fn(Engine)`, once on each engine: as `sqlite::NAME` and
/// `postgres::NAME`. One test code, both backends: the conformance suite.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::helpers::Engine::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::helpers::Engine::Postgres).await;
                }
            )*
        }
    };
}
pub(crate) use on_both_engines;

/// Sends `request` and reads the answer: its status and its JSON body. A 204 has no body and
/// reads as `Null`; any other answer whose body is not JSON fails the test, since every warden
/// route answers JSON (errors included) except `/hash`'s plain-text ids and hashes and a job's
/// output, which the tests read as text or bytes.
pub async fn call(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("the request was answered");
    let status = response.status();
    let body = response.bytes().await.expect("the body arrived");
    if status == StatusCode::NO_CONTENT && body.is_empty() {
        return (status, Value::Null);
    }
    let json = serde_json::from_slice(&body).unwrap_or_else(|error| {
        let body = String::from_utf8_lossy(&body);
        panic!("{status} with a body that is not JSON ({error}): {body:?}")
    });
    (status, json)
}

/// Sends `request` and reads its whole body as bytes (a job's output, say), whatever its
/// status.
pub async fn body(request: reqwest::RequestBuilder) -> Vec<u8> {
    let response = request.send().await.expect("the request was answered");
    response.bytes().await.expect("the body arrived").to_vec()
}

/// Reads the streamed body of `response` until `wanted` has arrived (at most 30 s); returns
/// what was read.
pub async fn read_until(response: &mut reqwest::Response, wanted: &str) -> String {
    let mut seen = Vec::new();
    let read = async {
        while !String::from_utf8_lossy(&seen).contains(wanted) {
            let chunk = response.chunk().await.unwrap().expect("stream ended early");
            seen.extend_from_slice(&chunk);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("output arrived");
    String::from_utf8_lossy(&seen).into_owned()
}

/// Whether process `pid` has ended.
pub fn process_is_gone(pid: &str) -> bool {
    // Gone, or a zombie waiting for a parent that is not ours to reap.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .unwrap()
            .trim_start()
            .starts_with('Z'),
    }
}

/// How long [`eventually`] pauses between two looks.
const POLL_PAUSE: Duration = Duration::from_millis(10);

/// Asks `probe` again and again until it answers `Some`, and returns that answer; fails the
/// test, naming `what`, if none came within `timeout` (a probe that hangs counts against the
/// timeout too). For what a test cannot await directly, such as a purge on the scheduler's
/// real-time tick or the runner's progress on a job. The pause between two looks is the only
/// sleep the tests have.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let poll = async {
        loop {
            if let Some(answer) = probe().await {
                return answer;
            }
            tokio::time::sleep(POLL_PAUSE).await;
        }
    };
    tokio::time::timeout(timeout, poll)
        .await
        .unwrap_or_else(|_| panic!("not within {timeout:?}: {what}"))
}

/// Runs `warden ARGS` with `env` added to completion; returns (exit code, stdout, stderr).
pub async fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(warden_binary())
            .args(args)
            .envs(env.iter().copied())
            .output(),
    )
    .await
    .expect("warden exited within 60 s")
    .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The `warden` binary this test run built.
pub fn warden_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_warden"))
}

/// A `warden serve` child process on port 0, its addresses read from its JSON log.
pub struct WardenProcess {
    pub child: Child,
    pub hashes: String,
    pub registry: String,
    pub jobs: String,
    pub admin: String,
    /// Every stderr line so far, kept by a background reader so the pipe never fills.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl WardenProcess {
    /// Starts `warden serve` on `data_dir` with `extra` flags and waits until it listens.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let mut command = Command::new(warden_binary());
        command
            .arg("serve")
            .args(port_zero_flags(data_dir))
            .args(["--log-format", "json"])
            .args(plain_jobs_unless_asked(extra))
            .args(extra)
            .env_remove("RUST_LOG");
        Self::spawn(command).await
    }

    /// Runs `command`, a `warden serve` set up by the caller to log JSON to stderr, and waits
    /// until it listens.
    pub async fn spawn(mut command: Command) -> Self {
        warden::security::tls::install_crypto_provider();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("warden starts");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
        let mut urls = std::collections::HashMap::new();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        // The admin listener is announced last, after every service.
        let read = async {
            while !urls.contains_key("admin") {
                let Some(line) = lines.next_line().await.unwrap() else {
                    panic!("warden exited early: {:#?}", log.lock().unwrap());
                };
                log.lock().unwrap().push(line.clone());
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if event["message"] == "listening" {
                    let url = format!("http://{}", event["addr"].as_str().unwrap());
                    urls.insert(event["service"].as_str().unwrap().to_owned(), url);
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("warden listened within 30 s");
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().unwrap().push(line);
            }
        });
        let url = |service: &str| urls.get(service).cloned().unwrap_or_default();
        Self {
            child,
            hashes: url("hashes"),
            registry: url("registry"),
            jobs: url("jobs"),
            admin: url("admin"),
            log,
        }
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the process.
    pub async fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn exit_code(&mut self) -> Option<i32> {
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("warden exited within 30 s")
            .unwrap()
            .code()
    }
}

/// `warden token issue` for `user` with `role` on `data_dir`.
pub async fn issue_token(data_dir: &std::path::Path, user: &str, role: &str) -> String {
    let dir = data_dir.display().to_string();
    let (code, token, stderr) = run_cli(
        &[
            "token",
            "issue",
            "--user",
            user,
            "--role",
            role,
            "--data-dir",
            &dir,
        ],
        &[],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    token.trim().to_owned()
}
