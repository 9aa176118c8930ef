//! The supervisor's lifecycle in-process: health, the data-dir lock, and the graceful drain;
//! and the log files `warden serve` keeps (the real binary: only it installs the logger).

use std::time::Duration;

use crate::helpers::{self, TestApp, WardenProcess, call, run_cli};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden::db::LockError;
use warden::supervisor::{App, StartError};

#[tokio::test]
async fn healthz_reports_version_uptime_and_each_service() {
    let app = TestApp::spawn().await;
    let (status, health) = call(app.client.get(format!("{}/healthz", app.admin))).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(health["uptimeMs"].is_u64());
    assert_eq!(health["services"]["hashes"], "up");
    app.stop().await;
}

#[tokio::test]
async fn a_second_warden_on_the_same_data_dir_refuses_to_start() {
    let app = TestApp::spawn().await;
    let mut flags = helpers::port_zero_flags(app.dir.path());
    flags.push("--no-hashes".into());
    let config = helpers::config(flags);
    let second = App::build(config).await;
    assert!(
        matches!(second, Err(StartError::Lock(LockError::Held(_)))),
        "{second:?}"
    );
    // The first one is unharmed.
    assert_eq!(app.create_hash("still serving").await, 1);
    let (dir, _) = app.stop().await;

    // Once the first has stopped, the lock is free again.
    let config = helpers::config(helpers::port_zero_flags(dir.path()));
    let third = App::build(config).await.expect("the lock was released");
    third.shutdown_token().cancel();
    third.run_until_stopped().await.unwrap();
}

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[tokio::test]
async fn shutdown_finishes_in_flight_work_refuses_new_work_and_ends_cleanly() {
    let app = TestApp::spawn().await;
    app.create_hash("before").await;

    // A request whose body is still arriving when the drain begins. It must be in flight,
    // not merely sent: a request whose handling starts after the drain has begun is refused
    // with 503 instead. So it asks for `100 Continue`, which the HTTP server (hyper) sends only
    // when the handler first reads the body, and the handler runs only for a request that got
    // past the draining check. Reading that answer proves the request is being handled before
    // the drain starts, however slowly the server gets to it; no sleep has to guess how long.
    let mut in_flight = TcpStream::connect(app.hashes_addr).await.unwrap();
    let body = "password=angryMonkey";
    let head = format!(
        "POST /hash HTTP/1.1\r\nHost: warden\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    in_flight.write_all(head.as_bytes()).await.unwrap();
    in_flight.flush().await.unwrap();
    // Until the body is complete, the only answer that can come is this one (or an error).
    let mut interim = [0; CONTINUE.len()];
    tokio::time::timeout(Duration::from_secs(30), in_flight.read_exact(&mut interim))
        .await
        .expect("the handler started reading the body within 30 s")
        .expect("an interim answer, not a closed connection");
    assert_eq!(
        String::from_utf8_lossy(&interim),
        String::from_utf8_lossy(CONTINUE)
    );
    in_flight.write_all(&body.as_bytes()[..4]).await.unwrap();
    in_flight.flush().await.unwrap();

    let (shutdown, _) = call(app.client.post(format!("{}/shutdown", app.admin))).await;
    assert_eq!(shutdown, 200);

    // Health says draining while the in-flight request holds the drain open.
    let (status, health) = call(app.client.get(format!("{}/healthz", app.admin))).await;
    assert_eq!(status, 503);
    assert_eq!(health["status"], "draining");

    // A repeated shutdown request is harmless.
    let (again, _) = call(app.client.get(format!("{}/shutdown", app.admin))).await;
    assert_eq!(again, 200);

    // New work is refused: the listener no longer accepts, or answers 503.
    let fresh = reqwest::Client::new()
        .post(format!("{}/hash", app.hashes))
        .form(&[("password", "too late")])
        .send()
        .await;
    match fresh {
        Err(error) => assert!(error.is_connect() || error.is_request(), "{error}"),
        Ok(response) => assert_eq!(response.status(), 503),
    }

    // The in-flight request completes and gets its id.
    in_flight.write_all(&body.as_bytes()[4..]).await.unwrap();
    let mut answer = String::new();
    in_flight.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n2"), "{answer}");

    let (ended, dir, clock) = app.wait_stopped().await;
    ended.expect("the drain ended cleanly");

    // The in-flight hash was committed before the run ended.
    let app = TestApp::spawn_in(dir, clock, &[]).await;
    assert_eq!(app.stats().await.0, 2);
    app.clock.advance(Duration::from_secs(5)).await;
    assert_eq!(
        app.get_hash("2").await.text().await.unwrap(),
        helpers::ANGRY_MONKEY
    );
    app.stop().await;
}

#[tokio::test]
async fn the_data_directory_is_private_to_warden_s_user() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = TestApp::spawn_in(dir, warden::clock::Clock::manual(helpers::START_MS), &[]).await;
    let mode = std::fs::metadata(app.dir.path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        mode, 0o700,
        "the token key and every job's output live in there"
    );
    app.stop().await;
}

/// Today's (UTC) log file name, as the daily appender writes it.
fn todays_log() -> String {
    let today = time::OffsetDateTime::now_utc().date();
    format!(
        "warden.{:04}-{:02}-{:02}.log",
        today.year(),
        u8::from(today.month()),
        today.day()
    )
}

#[tokio::test]
async fn at_start_warden_keeps_only_the_newest_daily_log_files() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // Newest first, so creation times say the opposite of the names: the names rule.
    for day in (1..=20).rev() {
        std::fs::write(logs.join(format!("warden.2025-01-{day:02}.log")), "old\n").unwrap();
    }
    std::fs::write(logs.join("notes.txt"), "not a log\n").unwrap();
    let before = todays_log();

    let mut warden = WardenProcess::start(dir.path(), &["--log-retention", "5"]).await;
    let after = todays_log();
    let mut kept: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    kept.sort();
    let today = if kept.contains(&after) { after } else { before };
    let mut expected = vec![
        "notes.txt".to_owned(),
        "warden.2025-01-17.log".to_owned(),
        "warden.2025-01-18.log".to_owned(),
        "warden.2025-01-19.log".to_owned(),
        "warden.2025-01-20.log".to_owned(),
        today,
    ];
    expected.sort();
    assert_eq!(
        kept, expected,
        "four old days and today's, and nothing that is not a log"
    );
    warden.signal("TERM").await;
    assert_eq!(warden.exit_code().await, Some(0));
}

#[tokio::test]
async fn a_log_retention_of_zero_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    for (flags, env) in [
        (&["--log-retention", "0"][..], &[][..]),
        (&[], &[("WARDEN_LOG_RETENTION", "0")]),
    ] {
        let mut args = vec!["serve", "--data-dir", &data_dir];
        args.extend_from_slice(flags);
        let (code, _, stderr) = run_cli(&args, env).await;
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains("--log-retention"), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
    assert!(
        !dir.path().join("logs").exists(),
        "nothing was pruned or written"
    );
}

#[tokio::test]
async fn every_answer_carries_a_request_id_the_clients_own_when_it_is_a_plain_one() {
    let app = TestApp::spawn().await;
    let id_of = async |sent: Option<&str>| {
        let mut request = app.client.get(format!("{}/stats", app.hashes));
        if let Some(sent) = sent {
            request = request.header("x-request-id", sent);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(id_of(Some("checkout-42:a.b_c")).await, "checkout-42:a.b_c");
    let made = id_of(None).await;
    assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");
    assert_ne!(id_of(None).await, made, "each request gets its own");
    for unfit in ["has space", "<script>", &"x".repeat(129)] {
        let replaced = id_of(Some(unfit)).await;
        assert!(
            uuid::Uuid::parse_str(&replaced).is_ok(),
            "{unfit:?} became {replaced}"
        );
    }
    // Errors, axum's own included, carry one too.
    let response = app
        .client
        .delete(format!("{}/hash", app.hashes))
        .header("x-request-id", "wrong-method")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["x-request-id"], "wrong-method");
    app.stop().await;
}

#[tokio::test]
async fn a_request_id_is_in_the_log_lines_of_its_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut warden = WardenProcess::start(dir.path(), &[]).await;
    let data_dir = dir.path().display().to_string();
    let (code, token, _) = run_cli(
        &[
            "token",
            "issue",
            "--user",
            "ops",
            "--role",
            "admin",
            "--data-dir",
            &data_dir,
        ],
        &[],
    )
    .await;
    assert_eq!(code, Some(0));
    let (status, job) = call(
        reqwest::Client::new()
            .post(format!("{}/jobs", warden.jobs))
            .bearer_auth(token.trim())
            .header("x-request-id", "follow-me-7")
            .json(&serde_json::json!({"command": "true"})),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    let line = helpers::eventually("the job's log line", Duration::from_secs(10), async || {
        let log = warden.log.lock().unwrap();
        log.iter().find(|line| line.contains("job queued")).cloned()
    })
    .await;
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["span"]["request_id"], "follow-me-7", "{line}");
    warden.signal("TERM").await;
    assert_eq!(warden.exit_code().await, Some(0));
}
