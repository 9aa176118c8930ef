//! The supervisor's lifecycle in-process: health, the data-dir lock, and the graceful drain.

use std::time::Duration;

use crate::helpers::{self, TestApp, call};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden::config::Config;
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
    let config = Config::from_flags(flags).unwrap();
    let second = App::build(config).await;
    assert!(
        matches!(second, Err(StartError::Lock(LockError::Held(_)))),
        "{second:?}"
    );
    // The first one is unharmed.
    assert_eq!(app.create_hash("still serving").await, 1);
    let (dir, _) = app.stop().await;

    // Once the first has stopped, the lock is free again.
    let config = Config::from_flags(helpers::port_zero_flags(dir.path())).unwrap();
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
    app.clock.advance(Duration::from_secs(5));
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
