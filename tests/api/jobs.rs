//! The job runner over real HTTP: routes, statuses, ownership, tokens, stop, output.

use std::time::Duration;

use crate::helpers::{self, START_MS, TestApp, eventually, process_is_gone, read_until};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use warden::security::principal::Role;

/// A client of one user of the jobs listener.
#[derive(Clone)]
pub(crate) struct User {
    client: reqwest::Client,
    base: String,
    pub(crate) token: String,
}

impl User {
    pub(crate) async fn new(app: &TestApp, name: &str, role: Role) -> Self {
        Self {
            client: app.client.clone(),
            base: app.jobs.clone(),
            token: app.token(name, role).await,
        }
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        helpers::call(request).await
    }

    /// Queues `command args…`; returns the job id.
    pub(crate) async fn start(&self, command: &str, args: &[&str]) -> String {
        let (status, job) = self
            .call(
                Method::POST,
                "/jobs",
                Some(json!({"command": command, "args": args})),
            )
            .await;
        assert_eq!(status, 201, "{job}");
        job["id"].as_str().unwrap().to_owned()
    }

    pub(crate) async fn job(&self, id: &str) -> Value {
        let (status, job) = self.call(Method::GET, &format!("/jobs/{id}"), None).await;
        assert_eq!(status, 200, "{job}");
        job
    }

    /// The output stream of job `id` (`follow`: until the job ends).
    async fn output(&self, id: &str, query: &str) -> reqwest::Response {
        self.client
            .get(format!("{}/jobs/{id}/output{query}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }

    /// Follows job `id` to its end; returns all its output.
    pub(crate) async fn wait(&self, id: &str) -> Vec<u8> {
        let response = self.output(id, "?follow=true").await;
        assert_eq!(response.status(), 200);
        let body = tokio::time::timeout(Duration::from_secs(30), response.bytes())
            .await
            .expect("the job ended within 30 s");
        body.unwrap().to_vec()
    }
}

#[tokio::test]
async fn a_job_runs_once_and_keeps_its_status_exit_code_and_output() {
    let app = TestApp::spawn().await;
    let alice = User::new(&app, "alice", Role::User).await;
    let response = alice
        .client
        .post(format!("{}/jobs", app.jobs))
        .bearer_auth(&alice.token)
        .json(&json!({"command": "sh", "args": ["-c", "echo out; echo err >&2; exit 3"], "name": "demo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    let job: Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    assert_eq!(location, format!("/jobs/{id}"));
    assert_eq!(job["name"], "demo");
    assert_eq!(job["owner"], "alice");
    assert_eq!(job["createdAt"], START_MS);
    assert!(uuid::Uuid::parse_str(id).is_ok());

    let output = alice.wait(id).await;
    let text = String::from_utf8(output).unwrap();
    assert!(text.contains("out\n") && text.contains("err\n"), "{text:?}");
    assert_eq!(text.len(), 8);

    let job = alice.job(id).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["exitCode"], 3);
    assert_eq!(job["signal"], Value::Null);
    assert_eq!(job["outputBytes"], 8);
    assert_eq!(job["outputTruncated"], false);
    assert_eq!(job["command"], "sh");
    assert_eq!(job["args"], json!(["-c", "echo out; echo err >&2; exit 3"]));
    assert!(job["startedAt"].is_i64() && job["finishedAt"].is_i64());

    // Without follow, the output so far; with an offset, from there.
    let all = alice.output(id, "").await.bytes().await.unwrap();
    assert_eq!(all.len(), 8);
    let tail = alice.output(id, "?offset=4").await.bytes().await.unwrap();
    assert_eq!(&tail[..], &all[4..]);
    let past = alice.output(id, "?offset=100").await.bytes().await.unwrap();
    assert!(past.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn exit_0_succeeds_a_missing_program_fails_and_a_signal_is_recorded() {
    let app = TestApp::spawn().await;
    let alice = User::new(&app, "alice", Role::User).await;
    let ok = alice.start("true", &[]).await;
    let missing = alice.start("/no/such/program", &[]).await;
    let killed = alice.start("sh", &["-c", "kill -9 $$"]).await;
    for id in [&ok, &missing, &killed] {
        alice.wait(id).await;
    }
    let ok = alice.job(&ok).await;
    assert_eq!(
        (ok["status"].clone(), ok["exitCode"].clone()),
        (json!("succeeded"), json!(0))
    );
    let missing = alice.job(&missing).await;
    assert_eq!(missing["status"], "failed");
    assert!(
        missing["error"].as_str().unwrap().contains("cannot start"),
        "{missing}"
    );
    let killed = alice.job(&killed).await;
    assert_eq!(killed["status"], "failed");
    assert_eq!(killed["signal"], 9);
    assert_eq!(killed["exitCode"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn a_user_sees_only_their_own_jobs_and_an_admin_sees_all() {
    let app = TestApp::spawn().await;
    let alice = User::new(&app, "alice", Role::User).await;
    let bob = User::new(&app, "bob", Role::User).await;
    let root = User::new(&app, "root", Role::Admin).await;
    let alices = alice.start("echo", &["alice"]).await;
    let bobs = bob.start("echo", &["bob"]).await;
    alice.wait(&alices).await;
    bob.wait(&bobs).await;

    for path in [format!("/jobs/{alices}"), format!("/jobs/{alices}/output")] {
        assert_eq!(bob.call(Method::GET, &path, None).await.0, 404, "{path}");
    }
    assert_eq!(
        bob.call(Method::POST, &format!("/jobs/{alices}/stop"), None)
            .await
            .0,
        404
    );
    let (_, listed) = bob.call(Method::GET, "/jobs", None).await;
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [bobs.as_str()]);

    let (_, all) = root.call(Method::GET, "/jobs", None).await;
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [bobs.as_str(), alices.as_str()], "newest first");
    assert_eq!(root.job(&alices).await["owner"], "alice");
    assert_eq!(root.output(&bobs, "").await.bytes().await.unwrap(), "bob\n");

    let (_, succeeded) = root.call(Method::GET, "/jobs?status=succeeded", None).await;
    assert_eq!(succeeded.as_array().unwrap().len(), 2);
    let (_, running) = root.call(Method::GET, "/jobs?status=running", None).await;
    assert_eq!(running, json!([]));
    app.stop().await;
}

#[tokio::test]
async fn without_a_valid_token_nothing_works() {
    let app = TestApp::spawn().await;
    let alice = User::new(&app, "alice", Role::User).await;
    let expired = app.expired_token("alice", Role::Admin).await;
    let forged = {
        // Right claims, signed with another key.
        let other = TestApp::spawn().await;
        let token = other.token("alice", Role::Admin).await;
        other.stop().await;
        token
    };
    let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.\
                    eyJ1c2VyIjoiYWxpY2UiLCJyb2xlIjoiYWRtaW4iLCJleHAiOjk5OTk5OTk5OTk5fQ.";
    let bad_headers = [
        None,
        Some("Bearer".to_owned()),
        Some(format!("Basic {}", alice.token)),
        Some(format!("Bearer {expired}")),
        Some(format!("Bearer {forged}")),
        Some(format!("Bearer {unsigned}")),
        Some("Bearer garbage".to_owned()),
    ];
    for authorization in &bad_headers {
        for (method, path) in [
            (Method::POST, "/jobs".to_owned()),
            (Method::GET, "/jobs".to_owned()),
            (Method::GET, format!("/jobs/{}", uuid::Uuid::new_v4())),
        ] {
            let mut request = app
                .client
                .request(method.clone(), format!("{}{path}", app.jobs))
                .json(&json!({"command": "touch", "args": ["/tmp/should-not-exist"]}));
            if let Some(value) = authorization {
                request = request.header(header::AUTHORIZATION, value);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                401,
                "{method} {path} with {authorization:?}"
            );
            assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
            let error: Value = response.json().await.unwrap();
            assert!(error["error"].is_string());
        }
    }
    let root = User::new(&app, "root", Role::Admin).await;
    assert_eq!(
        root.call(Method::GET, "/jobs", None).await.1,
        json!([]),
        "nothing was queued"
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_requests_are_4xx_and_change_nothing() {
    let app = TestApp::spawn().await;
    let alice = User::new(&app, "alice", Role::User).await;
    let bodies = [
        json!({}),
        json!({"command": ""}),
        json!({"command": 5}),
        json!({"command": "ls", "args": "-la"}),
        json!({"command": "ls", "args": [1]}),
        json!({"command": "ls", "unknown": true}),
        json!({"command": "ls\u{0}x"}),
        json!(["ls"]),
    ];
    for body in bodies {
        let (status, error) = alice.call(Method::POST, "/jobs", Some(body.clone())).await;
        assert_eq!(status, 400, "{body}");
        assert!(error["error"].is_string());
    }
    let response = alice
        .client
        .post(format!("{}/jobs", app.jobs))
        .bearer_auth(&alice.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    for path in [
        "/jobs/not-a-uuid",
        "/jobs/not-a-uuid/output",
        "/jobs?status=done",
        "/jobs?bogus=1",
    ] {
        assert_eq!(alice.call(Method::GET, path, None).await.0, 400, "{path}");
    }
    let unknown = uuid::Uuid::new_v4();
    let id = alice.start("true", &[]).await;
    for (method, path, status) in [
        (Method::POST, "/jobs/not-a-uuid/stop".to_owned(), 400),
        (Method::GET, format!("/jobs/{unknown}"), 404),
        (Method::POST, format!("/jobs/{unknown}/stop"), 404),
        (Method::GET, format!("/jobs/{id}/output?offset=-1"), 400),
        (Method::DELETE, "/jobs/not-a-uuid".to_owned(), 400),
        (Method::DELETE, format!("/jobs/{unknown}"), 404),
        (Method::GET, "/jobs?limit=0".to_owned(), 400),
        (Method::GET, "/jobs?limit=1001".to_owned(), 400),
        (Method::GET, format!("/jobs?after={unknown}"), 400),
    ] {
        let (got, _) = alice.call(method.clone(), &path, None).await;
        assert_eq!(got, status, "{method} {path}");
    }

    let (_, listed) = alice.call(Method::GET, "/jobs", None).await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "only the one good job was queued"
    );
    app.stop().await;
}

#[tokio::test]
async fn stop_ends_a_job_with_its_children_and_is_idempotent() {
    let app = TestApp::spawn().await;
    let alice = User::new(&app, "alice", Role::User).await;
    let id = alice
        .start("sh", &["-c", "sleep 300 & echo child $!; wait"])
        .await;
    let mut output = alice.output(&id, "?follow=true").await;
    let seen = read_until(&mut output, "\n").await;
    let child = seen.trim().strip_prefix("child ").unwrap().to_owned();
    assert!(!process_is_gone(&child));

    let (status, stopped) = alice
        .call(Method::POST, &format!("/jobs/{id}/stop"), None)
        .await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["status"], "stopped");
    assert_eq!(stopped["signal"], 15);
    assert!(
        process_is_gone(&child),
        "the job's child {child} outlived it"
    );
    // The follower's stream ends with the job.
    let rest = tokio::time::timeout(Duration::from_secs(10), output.bytes()).await;
    assert!(rest.is_ok());

    let (status, again) = alice
        .call(Method::POST, &format!("/jobs/{id}/stop"), None)
        .await;
    assert_eq!(status, 200, "stopping a stopped job changes nothing");
    assert_eq!(again, stopped);
    let done = alice.start("true", &[]).await;
    alice.wait(&done).await;
    let (status, _) = alice
        .call(Method::POST, &format!("/jobs/{done}/stop"), None)
        .await;
    assert_eq!(status, 409, "a job that ended by itself cannot be stopped");
    app.stop().await;
}

#[tokio::test]
async fn a_job_that_ignores_sigterm_is_killed_after_the_grace() {
    let app = TestApp::spawn_with(&["--job-stop-grace", "300ms"]).await;
    let alice = User::new(&app, "alice", Role::User).await;
    let id = alice
        .start(
            "sh",
            &[
                "-c",
                "trap '' TERM; echo ready; while true; do sleep 0.05; done",
            ],
        )
        .await;
    let mut output = alice.output(&id, "?follow=true").await;
    read_until(&mut output, "ready").await;
    let (status, stopped) = alice
        .call(Method::POST, &format!("/jobs/{id}/stop"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(stopped["status"], "stopped");
    assert_eq!(stopped["signal"], 9);
    app.stop().await;
}

#[tokio::test]
async fn a_queued_job_stops_without_ever_running() {
    let app = TestApp::spawn_with(&["--job-workers", "1"]).await;
    let alice = User::new(&app, "alice", Role::User).await;
    let busy = alice.start("sh", &["-c", "echo busy; sleep 300"]).await;
    let mut output = alice.output(&busy, "?follow=true").await;
    read_until(&mut output, "busy").await;
    let waiting = alice
        .start(
            "touch",
            &[&app.work.path().join("ran").display().to_string()],
        )
        .await;
    assert_eq!(alice.job(&waiting).await["status"], "queued");
    let follower = alice.output(&waiting, "?follow=true").await;

    let (status, stopped) = alice
        .call(Method::POST, &format!("/jobs/{waiting}/stop"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(stopped["status"], "stopped");
    assert_eq!(stopped["startedAt"], Value::Null);
    let followed = tokio::time::timeout(Duration::from_secs(10), follower.bytes()).await;
    assert!(
        followed.is_ok(),
        "a follower of the queued job ends when it is stopped"
    );
    alice
        .call(Method::POST, &format!("/jobs/{busy}/stop"), None)
        .await;
    let next = alice.start("true", &[]).await;
    alice.wait(&next).await;
    assert!(
        !app.work.path().join("ran").exists(),
        "the stopped job never ran"
    );
    app.stop().await;
}

#[tokio::test]
async fn four_followers_get_the_first_bytes_early_and_the_whole_output() {
    let app = TestApp::spawn().await;
    let alice = User::new(&app, "alice", Role::User).await;
    let go = app.work.path().join("go");
    let script = format!(
        "echo first; while [ ! -e '{}' ]; do sleep 0.01; done; echo last",
        go.display()
    );
    let id = alice.start("sh", &["-c", &script]).await;
    let mut followers = Vec::new();
    for _ in 0..4 {
        followers.push(alice.output(&id, "?follow=true").await);
    }
    for follower in &mut followers {
        assert_eq!(read_until(follower, "first\n").await, "first\n");
    }
    assert_eq!(
        alice.job(&id).await["status"],
        "running",
        "first bytes came before the end"
    );
    std::fs::write(&go, b"").unwrap();
    for follower in followers {
        let rest = tokio::time::timeout(Duration::from_secs(30), follower.bytes())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&rest[..], b"last\n");
    }
    assert_eq!(alice.job(&id).await["status"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn concurrent_submissions_each_get_back_their_own_job() {
    let app = TestApp::spawn().await;
    let alice = User::new(&app, "alice", Role::User).await;
    let bob = User::new(&app, "bob", Role::User).await;
    let submit = |user: &User, n: usize| {
        let name = format!("job-{n}");
        let args = vec![name.clone(), n.to_string()];
        let user = user.clone();
        async move {
            let body = json!({"command": "echo", "args": args, "name": name});
            let (status, job) = user.call(Method::POST, "/jobs", Some(body)).await;
            assert_eq!(status, 201, "{job}");
            (n, job)
        }
    };
    let mut submissions = Vec::new();
    for n in 0..40 {
        let user = if n % 2 == 0 { &alice } else { &bob };
        submissions.push(tokio::spawn(submit(user, n)));
    }
    let mut ids = std::collections::HashSet::new();
    for submission in submissions {
        let (n, job) = submission.await.unwrap();
        // Each caller got back the job it sent, owned by whoever sent it.
        assert_eq!(job["name"], format!("job-{n}"));
        assert_eq!(job["args"], json!([format!("job-{n}"), n.to_string()]));
        assert_eq!(job["owner"], if n % 2 == 0 { "alice" } else { "bob" });
        assert!(ids.insert(job["id"].as_str().unwrap().to_owned()));
        let id = job["id"].as_str().unwrap();
        let owner = if n % 2 == 0 { &alice } else { &bob };
        assert_eq!(owner.wait(id).await, format!("job-{n} {n}\n").into_bytes());
    }
    let (_, listed) = alice.call(Method::GET, "/jobs", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 20, "alice sees her 20");
    app.stop().await;
}

#[tokio::test]
async fn one_worker_runs_queued_jobs_in_submission_order() {
    let app = TestApp::spawn_with(&["--job-workers", "1"]).await;
    let alice = User::new(&app, "alice", Role::User).await;
    let go = app.work.path().join("go");
    let gate = format!("while [ ! -e '{}' ]; do sleep 0.01; done", go.display());
    let gate = alice.start("sh", &["-c", &gate]).await;
    let log = app.work.path().join("log");
    let mut queued = Vec::new();
    for n in 0..5 {
        let script = format!("echo {n} >> '{}'", log.display());
        queued.push(alice.start("sh", &["-c", &script]).await);
    }
    std::fs::write(&go, b"").unwrap();
    alice.wait(&gate).await;
    for id in &queued {
        alice.wait(id).await;
    }
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "0\n1\n2\n3\n4\n");
    app.stop().await;
}

#[tokio::test]
async fn late_followers_join_a_running_job_at_any_offset() {
    let app = TestApp::spawn().await;
    let alice = User::new(&app, "alice", Role::User).await;
    // 3 MB before a pause, more than followers at the live edge read from memory, then more.
    let data: Vec<u8> = (0..3_500_000_u32)
        .map(|n| (n.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let (before, after) = (
        app.work.path().join("before"),
        app.work.path().join("after"),
    );
    std::fs::write(&before, &data[..3_000_000]).unwrap();
    std::fs::write(&after, &data[3_000_000..]).unwrap();
    let go = app.work.path().join("go");
    let script = format!(
        "cat '{}'; while [ ! -e '{}' ]; do sleep 0.01; done; cat '{}'",
        before.display(),
        go.display(),
        after.display()
    );
    let id = alice.start("sh", &["-c", &script]).await;
    eventually(
        "the first part was stored",
        Duration::from_secs(30),
        async || (alice.job(&id).await["outputBytes"] == 3_000_000).then_some(()),
    )
    .await;
    let offsets = [0, 1_234_567, 2_999_999, 3_000_000];
    let mut followers = Vec::new();
    for offset in offsets {
        followers.push(
            alice
                .output(&id, &format!("?follow=true&offset={offset}"))
                .await,
        );
    }
    std::fs::write(&go, b"").unwrap();
    for (offset, follower) in offsets.into_iter().zip(followers) {
        let followed = tokio::time::timeout(Duration::from_secs(30), follower.bytes())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(followed.len(), data.len() - offset, "from {offset}");
        assert!(
            followed[..] == data[offset..],
            "output from {offset} differs"
        );
    }
    assert_eq!(alice.job(&id).await["status"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn binary_output_round_trips_byte_for_byte() {
    let app = TestApp::spawn().await;
    let alice = User::new(&app, "alice", Role::User).await;
    // Every byte value, in an order that is not a repeating pattern, past several chunks.
    let data: Vec<u8> = (0..300_000_u32)
        .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = app.work.path().join("binary");
    std::fs::write(&file, &data).unwrap();
    let id = alice.start("cat", &[&file.display().to_string()]).await;
    let followed = alice.wait(&id).await;
    assert_eq!(followed.len(), data.len());
    assert!(followed == data, "followed output differs");
    let read = alice.output(&id, "").await.bytes().await.unwrap();
    assert!(read[..] == data[..], "read output differs");
    let from = alice
        .output(&id, "?offset=123457")
        .await
        .bytes()
        .await
        .unwrap();
    assert!(from[..] == data[123_457..]);
    // Kept by the trigger on each stored chunk.
    assert_eq!(alice.job(&id).await["outputBytes"], data.len());
    app.stop().await;
}

#[tokio::test]
async fn output_past_the_limit_is_dropped_and_the_job_says_so() {
    let app = TestApp::spawn_with(&["--job-output-limit", "1000"]).await;
    let alice = User::new(&app, "alice", Role::User).await;
    let id = alice.start("head", &["-c", "500000", "/dev/zero"]).await;
    let output = alice.wait(&id).await;
    assert_eq!(output.len(), 1000);
    let job = alice.job(&id).await;
    assert_eq!(job["status"], "succeeded", "the job ran on to its end");
    assert_eq!(job["outputBytes"], 1000);
    assert_eq!(job["outputTruncated"], true);
    app.stop().await;
}

#[tokio::test]
async fn a_running_job_says_at_once_that_output_was_dropped() {
    let app = TestApp::spawn_with(&["--job-output-limit", "1000"]).await;
    let alice = User::new(&app, "alice", Role::User).await;
    let id = alice
        .start("sh", &["-c", "head -c 5000 /dev/zero; sleep 300"])
        .await;
    let job = eventually(
        "the running job said its output was dropped",
        Duration::from_secs(10),
        async || {
            let job = alice.job(&id).await;
            (job["outputTruncated"] == true).then_some(job)
        },
    )
    .await;
    assert_eq!(job["outputTruncated"], true, "{job}");
    assert_eq!(job["status"], "running", "said before the job ended");
    assert_eq!(job["outputBytes"], 1000);
    let (status, _) = alice
        .call(Method::POST, &format!("/jobs/{id}/stop"), None)
        .await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test]
async fn jobs_and_their_output_survive_a_restart() {
    let app = TestApp::spawn().await;
    let alice = User::new(&app, "alice", Role::User).await;
    let id = alice.start("echo", &["kept"]).await;
    alice.wait(&id).await;
    let (dir, clock) = app.stop().await;
    let app = TestApp::spawn_in(dir, clock, &[]).await;
    let alice = User::new(&app, "alice", Role::User).await;
    assert_eq!(alice.job(&id).await["status"], "succeeded");
    assert_eq!(alice.output(&id, "").await.bytes().await.unwrap(), "kept\n");
    app.stop().await;
}

#[tokio::test]
async fn shutdown_interrupts_running_jobs_and_leaves_queued_ones_queued() {
    let app = TestApp::spawn_with(&["--job-workers", "1"]).await;
    let alice = User::new(&app, "alice", Role::User).await;
    let running = alice.start("sh", &["-c", "echo up; exec sleep 300"]).await;
    let mut output = alice.output(&running, "?follow=true").await;
    read_until(&mut output, "up").await;
    let queued = alice.start("true", &[]).await;
    // Followers of both jobs must not hold the drain open (stop() fails on a drain timeout).
    let _following_running = alice.output(&running, "?follow=true").await;
    let _following_queued = alice.output(&queued, "?follow=true").await;
    let (dir, _) = app.stop().await;

    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("warden.db"))
        .read_only(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let status = |id: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM jobs WHERE id = ?1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(status(running).await, "interrupted");
    assert_eq!(status(queued).await, "queued");
    pool.close().await;
}
