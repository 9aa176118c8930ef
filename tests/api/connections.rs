//! Connection hygiene on every listener, driven by raw sockets that misbehave on purpose: a
//! head or a body that never ends, an idle kept-alive connection, more clients than the cap,
//! clients that never read what they asked for, junk on the TLS port.
//!
//! The timeouts are real network time (hyper's connections cannot run on an injected
//! clock), so the tests set them to a few hundred milliseconds.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::helpers::{TestApp, WardenProcess, eventually, run_cli};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use warden::security::principal::Role;

/// Longer than any timeout set here takes to fire, even on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(10);

/// One HTTP/1.1 connection, written and read by hand.
struct Raw {
    stream: BufReader<TcpStream>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Self {
        Self {
            stream: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        }
    }

    async fn send(&mut self, bytes: &str) {
        self.stream
            .get_mut()
            .write_all(bytes.as_bytes())
            .await
            .unwrap();
        self.stream.get_mut().flush().await.unwrap();
    }

    /// Sends `GET path` and reads the answer; returns its status.
    async fn get(&mut self, path: &str) -> u16 {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: warden\r\n\r\n"))
            .await;
        self.answer().await.0
    }

    /// Reads one answer's head: its status and headers (names lowercased).
    async fn head(&mut self) -> (u16, Vec<(String, String)>) {
        let mut status = String::new();
        self.stream.read_line(&mut status).await.unwrap();
        let code = status
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {status:?}"));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                return (code, headers);
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
    }

    /// Reads one whole answer (every warden answer but a job's output has a length).
    async fn answer(&mut self) -> (u16, String) {
        let read = async {
            let (status, headers) = self.head().await;
            let length = headers
                .iter()
                .find(|(name, _)| name == "content-length")
                .map_or(0, |(_, value)| value.parse().unwrap());
            let mut body = vec![0; length];
            self.stream.read_exact(&mut body).await.unwrap();
            (status, String::from_utf8(body).unwrap())
        };
        tokio::time::timeout(PATIENCE, read)
            .await
            .expect("an answer within 10 s")
    }

    /// Waits for the server to close the connection (EOF or a reset); fails the test if it
    /// does not within [`PATIENCE`]. Anything sent before the close is skipped.
    async fn closed(&mut self) -> Instant {
        let read = async {
            let mut sink = [0; 4096];
            while let Ok(read) = self.stream.read(&mut sink).await
                && read > 0
            {}
        };
        tokio::time::timeout(PATIENCE, read)
            .await
            .expect("the server closed the connection within 10 s");
        Instant::now()
    }
}

/// The address of a listener from its URL.
fn addr_of(url: &str) -> SocketAddr {
    url.rsplit("://").next().unwrap().parse().unwrap()
}

/// Starts a job that writes 20 MB and then keeps running; returns its id once the output is
/// stored. 20 MB is far more than the sockets' buffers hold for a client that does not read.
async fn start_big_job(app: &TestApp, token: &str) -> String {
    let (status, job) = crate::helpers::call(
        app.client
            .post(format!("{}/jobs", app.jobs))
            .bearer_auth(token)
            .json(&json!({
                "command": "sh",
                "args": ["-c", "head -c 20000000 /dev/zero; exec sleep 300"],
            })),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    eventually("the job's output is stored", PATIENCE * 6, async || {
        let (_, job) = crate::helpers::call(
            app.client
                .get(format!("{}/jobs/{id}", app.jobs))
                .bearer_auth(token),
        )
        .await;
        (job["outputBytes"] == BIG_OUTPUT).then_some(())
    })
    .await;
    id
}

/// How much [`start_big_job`] writes.
const BIG_OUTPUT: u64 = 20_000_000;

/// A client that sends all of a body far past the route's limit before it reads anything
/// (as most clients do) can send it all and then read the 413: the server takes and drops the
/// rest of the body while it closes, instead of closing under unread bytes, which the kernel
/// answers with a reset that fails the client's send (most clients then never read the
/// answer) and can destroy the answer in flight.
#[tokio::test]
async fn a_body_far_past_the_limit_is_answered_413_to_a_client_that_reads_only_when_it_has_sent_it()
{
    let app = TestApp::spawn().await;
    let body = vec![b'p'; 4 << 20];
    // Without the lingering close, the first send already failed (a broken pipe).
    for attempt in 0..8 {
        let mut stream = TcpStream::connect(app.hashes_addr).await.unwrap();
        let head = format!(
            "POST /hash HTTP/1.1\r\nHost: warden\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let sent = stream.write_all(&body).await;
        let mut answer = Vec::new();
        let read = async {
            let mut part = [0; 1024];
            while !answer.windows(2).any(|pair| pair == b"\r\n") {
                match stream.read(&mut part).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => answer.extend_from_slice(&part[..read]),
                }
            }
        };
        tokio::time::timeout(PATIENCE, read)
            .await
            .expect("an answer or a close within 10 s");
        let status = String::from_utf8_lossy(&answer);
        assert!(
            sent.is_ok() && status.starts_with("HTTP/1.1 413 "),
            "attempt {attempt}: sending the body gave {sent:?}, then the answer was {status:?}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_connection_that_sends_no_whole_request_head_is_closed_at_the_header_timeout() {
    let app = TestApp::spawn_with(&["--header-timeout", "300ms"]).await;
    let timeout = Duration::from_millis(300);

    let started = Instant::now();
    let mut silent = Raw::connect(app.hashes_addr).await;
    let mut half = Raw::connect(app.hashes_addr).await;
    half.send("GET /stats HTTP/1.1\r\nHost: war").await;
    // A head that trickles in a byte at a time is cut at the same deadline: the timeout is
    // for the whole head, not for each read. (The interval paces this client; it waits for
    // nothing.)
    let mut trickle = Raw::connect(app.hashes_addr).await;
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let head = "GET /stats HTTP/1.1\r\nHost: warden\r\nX-Slow: ";
    let trickling = async {
        for byte in head.bytes().chain(std::iter::repeat(b'x')) {
            pace.tick().await;
            if trickle.stream.get_mut().write_all(&[byte]).await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(PATIENCE, trickling)
        .await
        .expect("the trickling head was cut within 10 s");
    for (what, connection) in [("silent", &mut silent), ("half a head", &mut half)] {
        let closed = connection.closed().await;
        assert!(
            closed - started >= timeout,
            "{what}: closed after {:?}, before the header timeout",
            closed - started
        );
    }
    assert!(started.elapsed() < PATIENCE);

    // The listener is unharmed.
    let mut whole = Raw::connect(app.hashes_addr).await;
    assert_eq!(whole.get("/stats").await, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_request_whose_body_stalls_is_answered_408_at_the_body_timeout() {
    let app = TestApp::spawn_with(&["--body-timeout", "300ms"]).await;
    let mut client = Raw::connect(app.hashes_addr).await;
    let started = Instant::now();
    client
        .send(
            "POST /hash HTTP/1.1\r\nHost: warden\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: 30\r\n\r\npassword=ang",
        )
        .await;
    let (status, body) = client.answer().await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(status, 408, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        json!({"error": "the request body did not arrive in time"})
    );
    // The rest of that body may still come: the connection is not reused.
    client.closed().await;
    assert_eq!(app.stats().await.0, 0, "nothing was accepted");

    // A body that arrives in time is read as ever.
    assert_eq!(app.create_hash("angryMonkey").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_at_the_idle_timeout_and_a_busy_one_stays_open() {
    // An idle timeout longer than the header timeout: waiting for the next request is not
    // held to the header timeout.
    let app = TestApp::spawn_with(&["--header-timeout", "200ms", "--idle-timeout", "600ms"]).await;
    let idle_timeout = Duration::from_millis(600);

    let mut idle = Raw::connect(app.hashes_addr).await;
    // Before the request: the server's idle stretch begins after this, whenever this task
    // gets to read the answer.
    let asked = Instant::now();
    assert_eq!(idle.get("/stats").await, 200);
    let idle_closed = tokio::spawn(async move { idle.closed().await });

    // Meanwhile another connection keeps sending requests, one after the other.
    let mut busy = Raw::connect(app.hashes_addr).await;
    let mut requests = 0;
    while !idle_closed.is_finished() {
        assert_eq!(busy.get("/stats").await, 200, "request {requests}");
        requests += 1;
    }
    let closed = idle_closed.await.unwrap();
    assert!(
        closed - asked >= idle_timeout,
        "the idle connection was closed after {:?}",
        closed - asked
    );
    // The busy one has been open longer than the idle timeout and still serves.
    assert_eq!(busy.get("/stats").await, 200);
    assert!(requests > 1);
    app.stop().await;
}

#[tokio::test]
async fn at_the_connection_cap_a_new_client_waits_until_one_closes_while_the_open_ones_work() {
    let app = TestApp::spawn_with(&["--max-connections", "2"]).await;
    let mut first = Raw::connect(app.hashes_addr).await;
    let mut second = Raw::connect(app.hashes_addr).await;
    assert_eq!(first.get("/stats").await, 200);
    assert_eq!(second.get("/stats").await, 200);

    // The kernel completes the third connection, but warden does not take it yet.
    let mut third = Raw::connect(app.hashes_addr).await;
    third
        .send("GET /stats HTTP/1.1\r\nHost: warden\r\n\r\n")
        .await;
    let mut byte = [0; 1];
    let early = tokio::time::timeout(
        Duration::from_millis(500),
        third.stream.get_mut().peek(&mut byte),
    )
    .await;
    assert!(early.is_err(), "the third client was served past the cap");

    // The two open connections keep working, and the cap is per listener.
    assert_eq!(first.get("/stats").await, 200);
    assert_eq!(second.get("/stats").await, 200);
    let (status, _) = crate::helpers::call(app.client.get(format!("{}/healthz", app.admin))).await;
    assert_eq!(status, 200);

    // Once one closes, the waiting client is served.
    drop(first);
    assert_eq!(third.answer().await.0, 200);
    assert_eq!(second.get("/stats").await, 200);
    app.stop().await;
}

#[tokio::test]
async fn clients_that_never_read_their_job_output_do_not_hold_up_a_shutdown() {
    let app = TestApp::spawn_with(&["--drain-timeout", "4s"]).await;
    let token = app.token("alice", Role::User).await;
    let id = start_big_job(&app, &token).await;

    // A follower and a plain reader, both served (the answer has begun) and then never read.
    let mut stalled = Vec::new();
    for query in ["?follow=true", ""] {
        let mut client = Raw::connect(addr_of(&app.jobs)).await;
        client
            .send(&format!(
                "GET /jobs/{id}/output{query} HTTP/1.1\r\nHost: warden\r\n\
                 Authorization: Bearer {token}\r\n\r\n"
            ))
            .await;
        assert_eq!(client.head().await.0, 200, "{query}");
        stalled.push(client);
    }
    let hash = app.create_hash("angryMonkey").await;

    let (status, _) =
        crate::helpers::call(app.client.post(format!("{}/shutdown", app.hashes))).await;
    assert_eq!(status, 200);
    // A drain that timed out would end in an error (exit 1); this one ends within its 4 s.
    let (ended, dir, clock) = app.wait_stopped().await;
    ended.expect("the drain ended cleanly: exit 0");
    for mut client in stalled {
        client.closed().await;
    }

    // What was acknowledged before the drain was committed.
    let app = TestApp::spawn_in(dir, clock, &[]).await;
    app.clock.advance(Duration::from_secs(5)).await;
    assert_eq!(app.get_hash(&hash.to_string()).await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn output_streams_are_cut_short_not_ended_when_the_drain_begins() {
    let app = TestApp::spawn().await;
    let token = app.token("alice", Role::User).await;
    let id = start_big_job(&app, &token).await;
    let mut streams = Vec::new();
    for query in ["?follow=true", ""] {
        let mut response = app
            .client
            .get(format!("{}/jobs/{id}/output{query}", app.jobs))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let first = response.chunk().await.unwrap().expect("some output");
        streams.push((query, response, first.len()));
    }
    let (status, _) =
        crate::helpers::call(app.client.post(format!("{}/shutdown", app.admin))).await;
    assert_eq!(status, 200);

    // Each reads on, and gets what was under way, then an error: never an end that a client
    // would take for the whole output. It can come back for the rest with `?offset=`.
    for (query, mut response, mut received) in streams {
        let cut = tokio::time::timeout(PATIENCE, async {
            loop {
                match response.chunk().await {
                    Ok(Some(bytes)) => received += bytes.len(),
                    Ok(None) => panic!("{query:?}: ended cleanly after {received} bytes"),
                    Err(_) => return,
                }
            }
        })
        .await;
        assert!(cut.is_ok(), "{query:?}: not cut within 10 s");
        assert!((received as u64) < BIG_OUTPUT, "{query:?}");
    }
    let (ended, _, _) = app.wait_stopped().await;
    ended.expect("the drain ended cleanly");
}

#[tokio::test]
async fn refused_tls_connections_are_logged_a_line_per_interval_not_a_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let mut warden = WardenProcess::start(dir.path(), &["--jobs-tls", "on"]).await;
    let jobs = addr_of(&warden.jobs);
    let refused = 300;
    for _ in 0..refused {
        let mut junk = Raw::connect(jobs).await;
        junk.send("GET /jobs HTTP/1.1\r\nHost: warden\r\n\r\n")
            .await;
        junk.closed().await;
    }
    let (status, _) =
        crate::helpers::call(reqwest::Client::new().post(format!("{}/shutdown", warden.admin)))
            .await;
    assert_eq!(status, 200);
    assert_eq!(warden.exit_code().await, Some(0));
    let log = eventually("the log is read to its end", PATIENCE, async || {
        let log = warden.log.lock().unwrap().clone();
        log.iter()
            .any(|line| line.contains("stopped cleanly"))
            .then_some(log)
    })
    .await;

    let reports: Vec<Value> = log
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["message"] == "refused TLS connections")
        .collect();
    let counted: u64 = reports
        .iter()
        .map(|event| event["refused"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, refused, "every refusal is counted: {reports:?}");
    // The first at once, then at most one per 10 s, and the rest at the end.
    assert!(
        (2..=4).contains(&reports.len()),
        "{} lines for {refused} refusals",
        reports.len()
    );
    assert!(
        reports.iter().all(|event| event["last_peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")),
        "{reports:?}"
    );
}

#[tokio::test]
async fn a_timeout_or_connection_cap_of_zero_is_refused_at_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    for setting in [
        "--header-timeout",
        "--body-timeout",
        "--idle-timeout",
        "--max-connections",
    ] {
        let zero = if setting == "--max-connections" {
            "0"
        } else {
            "0s"
        };
        let (code, _, stderr) =
            run_cli(&["serve", "--data-dir", &data_dir, setting, zero], &[]).await;
        assert_eq!(code, Some(2), "{setting}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(setting), "{stderr} should name {setting}");
    }
}
