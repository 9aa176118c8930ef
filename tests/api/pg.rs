//! A throwaway PostgreSQL for the tests that need one: [`fresh_database`] hands each test a
//! brand-new, empty database of its own, so no test ever sees another's rows.
//!
//! Every database lives on one server per run of this binary: the one `WARDEN_TEST_POSTGRES`
//! names, or else a cluster of our own, started in a temp dir at the first ask from
//! PostgreSQL's server binaries. That cluster never outlives the test process, however the
//! process ends: a watchdog shell stops it when the process's end of a pipe closes, which the
//! kernel does on any exit, `kill -9` included. With neither a server nor the binaries, every
//! test that asks fails saying how to get one; none is skipped.

use std::env;
use std::fs::{self, File};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use nix::unistd::User;
use reqwest::Url;
use sqlx::{AssertSqlSafe, Connection as _, Executor as _, PgConnection};
use tempfile::TempDir;

/// The variable that names a server to use instead of a cluster of our own.
const SERVER_VARIABLE: &str = "WARDEN_TEST_POSTGRES";

/// What a test is told when there is no server to be had.
const NO_SERVER: &str = "the Postgres half of the suite needs PostgreSQL's server binaries \
    (Debian: apt-get install postgresql) or WARDEN_TEST_POSTGRES=postgres://… of a server it \
    may create databases on";

/// How long our cluster may take to accept connections: a second or two is usual, so this is
/// only reached by one that is stuck.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `"$@"` (postgres) until our process's end of stdin closes, then stops it with a fast
/// shutdown and removes the cluster's dir (`$1`). postgres itself never holds the pipe (fd 3
/// is closed for it; an async list's stdin is `/dev/null`), so only our process's exit ends
/// the `read`. When postgres ends on its own instead, the shell ends with it and leaves the
/// dir, for [`Cluster::wait_until_ready`] to read the log. (The marker is written with `true`,
/// not `:`, whose failed redirection would end the shell before its `kill`.)
const WATCHDOG: &str = r#"dir=$1; shift
exec 3<&0
"$@" 3<&- &
pg=$!
{ read -r _ <&3; true >"$dir/stopping"; kill -INT "$pg"; } &
reader=$!
wait "$pg"
status=$?
kill "$reader" 2>/dev/null
if [ -e "$dir/stopping" ]; then rm -rf "$dir"; fi
exit "$status""#;

/// The one server of this run, or why there is none. It holds a `Result`, not a panic, so
/// that every test that asks fails with the same message, and none starts a second cluster.
static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

/// The test server, started at the first ask.
fn server() -> &'static Server {
    match SERVER.get_or_init(Server::find_or_start) {
        Ok(server) => server,
        Err(why) => panic!("{why}"),
    }
}

/// A URL of the test server on which databases may be created and altered, for tests that
/// act on a database from outside (cut its connections, say).
pub fn admin_url() -> String {
    server().admin.to_string()
}

/// Returns the `postgres://` URL of a new, empty database on the test server, for this test
/// alone.
pub async fn fresh_database() -> String {
    let server = server();
    let name = format!("warden_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(server.admin.as_str())
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {}: {error}", shown(&server.admin)));
    // The name is ours, made of [a-z0-9_], so it needs no quoting.
    admin
        .execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap_or_else(|error| {
            panic!(
                "cannot create a database on {}: {error}",
                shown(&server.admin)
            )
        });
    // A failed goodbye leaves nothing behind: the server drops the session either way.
    let _ = admin.close().await;
    let mut url = server.admin.clone();
    url.set_path(&name);
    url.into()
}

/// A server the tests may create databases on.
struct Server {
    /// A URL on which `CREATE DATABASE` is allowed; the databases made take its place in the
    /// path, keeping its account, host and parameters.
    admin: Url,
    /// Our end of our cluster's watchdog's stdin: never written, it is kept only so that it
    /// closes when the process ends, whereupon the cluster stops.
    _watchdog: Option<ChildStdin>,
}

impl Server {
    /// The server `WARDEN_TEST_POSTGRES` names, or else a cluster of our own.
    fn find_or_start() -> Result<Self, String> {
        match env::var(SERVER_VARIABLE) {
            Ok(url) if !url.is_empty() => Self::given(&url),
            _ => {
                let binaries = server_binaries().ok_or_else(|| NO_SERVER.to_owned())?;
                // Waiting for it connects with sqlx, on a runtime of its own, and the test that
                // asked is already inside one: a thread of its own may start another.
                thread::spawn(move || Cluster::start(&binaries))
                    .join()
                    .unwrap_or_else(|_| Err("starting the test PostgreSQL panicked".to_owned()))
                    .map_err(|why| format!("cannot start the test PostgreSQL: {why}"))
            }
        }
    }

    /// The server at `url`, used as is.
    fn given(url: &str) -> Result<Self, String> {
        let admin = Url::parse(url)
            .map_err(|error| format!("{SERVER_VARIABLE} is not a postgres:// URL: {error}"))?;
        Ok(Self {
            admin,
            _watchdog: None,
        })
    }
}

/// Our own cluster, while it starts.
struct Cluster {
    /// Holds the data dir (`data/`), the socket, and postgres's log; removed when starting
    /// fails, by the watchdog once the cluster has run.
    dir: TempDir,
    /// The account initdb and postgres run as, when it is not ours.
    account: Option<User>,
}

impl Cluster {
    /// Makes a cluster with `binaries`' `initdb`, starts its postgres under the watchdog, and
    /// waits until it accepts connections.
    fn start(binaries: &Path) -> Result<Server, String> {
        let dir = tempfile::Builder::new()
            .prefix("warden-pg-")
            .tempdir()
            .map_err(|error| format!("cannot make a temp dir: {error}"))?;
        let cluster = Self {
            account: account()?,
            dir,
        };
        if let Some(account) = &cluster.account {
            std::os::unix::fs::chown(
                cluster.dir.path(),
                Some(account.uid.as_raw()),
                Some(account.gid.as_raw()),
            )
            .map_err(|error| format!("cannot give the temp dir to {}: {error}", account.name))?;
        }
        cluster.initdb(&binaries.join("initdb"))?;
        let port = free_port()?;
        let admin = Url::parse(&format!("postgres://warden@127.0.0.1:{port}/postgres"))
            .map_err(|error| format!("cannot make the admin URL: {error}"))?;
        let mut watchdog = cluster.spawn_postgres(&binaries.join("postgres"), port)?;
        let stdin = watchdog.stdin.take();
        cluster.wait_until_ready(&admin, &mut watchdog)?;
        // From here on the watchdog removes the dir, once postgres has stopped.
        let _ = cluster.dir.keep();
        Ok(Server {
            admin,
            _watchdog: stdin,
        })
    }

    /// `program`, run in the cluster's dir as the cluster's account.
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command.current_dir(self.dir.path());
        if let Some(account) = &self.account {
            command.uid(account.uid.as_raw()).gid(account.gid.as_raw());
        }
        command
    }

    /// Makes the cluster in `data/`: superuser `warden`, trusted, UTF-8, C locale, and no
    /// fsync, since it is thrown away.
    fn initdb(&self, initdb: &Path) -> Result<(), String> {
        let output = self
            .command(initdb)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args([
                "-U",
                "warden",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .output()
            .map_err(|error| format!("cannot run {}: {error}", initdb.display()))?;
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "{} failed ({}):\n{}",
            initdb.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }

    /// Starts postgres on 127.0.0.1:`port` under the watchdog, its output in `postgres.log`.
    fn spawn_postgres(&self, postgres: &Path, port: u16) -> Result<Child, String> {
        let dir = self.dir.path();
        let log = File::create(self.log_path())
            .map_err(|error| format!("cannot make postgres's log: {error}"))?;
        let log_too = log
            .try_clone()
            .map_err(|error| format!("cannot share postgres's log: {error}"))?;
        self.command(Path::new("/bin/sh"))
            .args(["-c", WATCHDOG, "sh"])
            .arg(dir)
            .arg(postgres)
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-p", &port.to_string()])
            .arg("-k")
            .arg(dir)
            // Many tests, each with a pool, share it; durability is of no use here.
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=600",
            ])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .stdin(Stdio::piped())
            .stdout(log_too)
            .stderr(log)
            // A terminal's Ctrl-C ends the tests, whose exit stops postgres the one way.
            .process_group(0)
            .spawn()
            .map_err(|error| format!("cannot run {}: {error}", postgres.display()))
    }

    /// Polls until postgres accepts a connection at `admin`; fails at once if it ends first.
    fn wait_until_ready(&self, admin: &Url, watchdog: &mut Child) -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| format!("cannot make a runtime to connect with: {error}"))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let attempt = runtime.block_on(async {
                let connection = PgConnection::connect(admin.as_str()).await?;
                connection.close().await
            });
            let error = match attempt {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if let Ok(Some(status)) = watchdog.try_wait() {
                return Err(format!(
                    "postgres ended ({status}) before it accepted connections; {}",
                    self.log()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "postgres did not accept connections at {admin} within {READY_TIMEOUT:?} \
                     (last: {error}); {}",
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where postgres's stdout and stderr go.
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// postgres's log, for a message saying why it did not start (the dir, log and all, is
    /// removed when starting fails).
    fn log(&self) -> String {
        match fs::read_to_string(self.log_path()) {
            Ok(log) => format!("its log:\n{log}"),
            Err(error) => format!("its log is unreadable: {error}"),
        }
    }
}

/// The account to run initdb and postgres as: ours, unless we are root, which both refuse.
fn account() -> Result<Option<User>, String> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        let user = User::from_name(name)
            .map_err(|error| format!("cannot look up the {name} account: {error}"))?;
        if user.is_some() {
            return Ok(user);
        }
    }
    Err(
        "running as root, with neither a postgres nor a nobody account to run postgres as"
            .to_owned(),
    )
}

/// The directory with `initdb` and `postgres`: the first on `PATH` that has both, else the
/// newest version's under `/usr/lib/postgresql/` (Debian's layout, where neither is on
/// `PATH`).
fn server_binaries() -> Option<PathBuf> {
    let has_both = |dir: &Path| {
        ["initdb", "postgres"]
            .iter()
            .all(|name| is_executable(&dir.join(name)))
    };
    let path = env::var_os("PATH").unwrap_or_default();
    if let Some(dir) = env::split_paths(&path).find(|dir| has_both(dir)) {
        return Some(dir);
    }
    fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_both(bin))
        .max_by(|(one, _), (other, _)| one.cmp(other))
        .map(|(_, bin)| bin)
}

/// Whether `path` is a file someone may run.
fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

/// A local port nothing listens on now (the kernel's pick for port 0), for postgres to take.
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|error| format!("cannot find a free port: {error}"))
}

/// `url` without its password, for a message.
fn shown(url: &Url) -> Url {
    let mut shown = url.clone();
    let _ = shown.set_password(None);
    shown
}

#[tokio::test]
async fn a_fresh_database_is_empty_and_its_own() {
    let (first, second) = (fresh_database().await, fresh_database().await);
    assert_ne!(first, second);
    let mut first = PgConnection::connect(&first).await.unwrap();
    let mut second = PgConnection::connect(&second).await.unwrap();
    assert!(tables(&mut first).await.is_empty());
    assert!(tables(&mut second).await.is_empty());

    first
        .execute("CREATE TABLE only_here (id integer)")
        .await
        .unwrap();

    assert_eq!(tables(&mut first).await, ["only_here"]);
    assert!(tables(&mut second).await.is_empty());
}

/// The names of the tables in `connection`'s database, in order.
async fn tables(connection: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
    )
    .fetch_all(connection)
    .await
    .unwrap()
}
