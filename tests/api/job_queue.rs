//! The job queue across users: owners take turns for the workers, one owner's jobs start in
//! submission order, and `--max-queued-per-user` caps what one user may have waiting (429
//! with `Retry-After`), exactly under concurrent submissions and across a restart.
//!
//! The jobs here are held and watched through a directory of their own, open to everyone
//! (0777, its files 0666): jobs may run as an unprivileged account, which cannot reach the
//! private data directory. A held job waits for a file to appear in it; each job that should
//! be watched appends its name to a log there when it runs, so with one worker the log is
//! the order the jobs started in.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use tempfile::TempDir;
use warden::security::principal::Role;

use crate::helpers::{self, TestApp, eventually};
use crate::jobs::User;

/// A directory every account may use, with a log of the jobs that ran and gates that hold
/// jobs until the test opens them.
struct Workspace {
    dir: TempDir,
    log: PathBuf,
}

impl Workspace {
    fn new() -> Self {
        let dir = helpers::job_area();
        let log = dir.path().join("started");
        std::fs::write(&log, b"").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
        Self { dir, log }
    }

    fn gate(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Opens gate `name`: the jobs waiting on it go on.
    fn open(&self, name: &str) {
        let gate = self.gate(name);
        std::fs::write(&gate, b"").unwrap();
        std::fs::set_permissions(&gate, std::fs::Permissions::from_mode(0o666)).unwrap();
    }

    /// A script that logs `name`, then waits for gate `gate` if given.
    fn script(&self, name: &str, gate: Option<&str>) -> String {
        let mut script = format!("echo {name} >> '{}'", self.log.display());
        if let Some(gate) = gate {
            script.push_str(&format!(
                "; while [ ! -e '{}' ]; do sleep 0.01; done",
                self.gate(gate).display()
            ));
        }
        script
    }

    /// The names the jobs logged, in the order they started.
    fn started(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Queues a job of `user` that logs `name` and then waits for gate `gate`, if given.
async fn queue(user: &User, workspace: &Workspace, name: &str, gate: Option<&str>) -> String {
    user.start("sh", &["-c", &workspace.script(name, gate)])
        .await
}

/// Waits until job `id` is running: the one worker is then busy with it.
async fn wait_running(user: &User, id: &str) {
    eventually("the job is running", Duration::from_secs(30), async || {
        (user.job(id).await["status"] == "running").then_some(())
    })
    .await;
}

/// `POST /jobs` as `token`, for a job that does nothing: status, headers and body.
async fn submit(app: &TestApp, token: &str) -> (StatusCode, header::HeaderMap, Value) {
    let response = app
        .client
        .post(format!("{}/jobs", app.jobs))
        .bearer_auth(token)
        .json(&json!({"command": "true"}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap();
    (status, headers, body)
}

/// The user's jobs that are queued.
async fn queued(user: &User) -> usize {
    let (status, jobs) = user.call(Method::GET, "/jobs?status=queued", None).await;
    assert_eq!(status, 200, "{jobs}");
    jobs.as_array().unwrap().len()
}

/// Asserts a refusal for a full queue: 429, `Retry-After`, and a message with the count and
/// the limit.
fn assert_queue_full(answer: &(StatusCode, header::HeaderMap, Value), limit: u64) {
    let (status, headers, body) = answer;
    assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let retry_after: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry_after), "Retry-After: {retry_after}");
    assert_eq!(
        body.as_object().unwrap().len(),
        1,
        "the error shape: {body}"
    );
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains(&format!("{limit} jobs queued"))
            && message.contains(&format!("at most {limit}")),
        "{message}"
    );
}

#[tokio::test]
async fn one_users_long_queue_does_not_keep_another_users_job_waiting() {
    let app = TestApp::spawn_with(&["--job-workers", "1"]).await;
    let workspace = Workspace::new();
    let alice = User::new(&app, "alice", Role::User).await;
    let bob = User::new(&app, "bob", Role::User).await;
    let held = queue(&bob, &workspace, "held", Some("go")).await;
    wait_running(&bob, &held).await;

    let mut bobs = Vec::new();
    for n in 0..50 {
        bobs.push(queue(&bob, &workspace, &format!("bob-{n}"), None).await);
    }
    let alices = queue(&alice, &workspace, "alice", None).await;
    workspace.open("go");
    alice.wait(&alices).await;
    for id in &bobs {
        bob.wait(id).await;
    }

    let started = workspace.started();
    assert_eq!(started.len(), 52, "{started:?}");
    let after_held = &started[1..];
    let alice_at = after_held.iter().position(|name| name == "alice").unwrap();
    assert!(
        alice_at <= 1,
        "alice's one job waited behind {alice_at} of bob's: {started:?}"
    );
    let bob_order: Vec<&str> = after_held
        .iter()
        .filter(|name| name.starts_with("bob-"))
        .map(String::as_str)
        .collect();
    let submitted: Vec<String> = (0..50).map(|n| format!("bob-{n}")).collect();
    assert_eq!(bob_order, submitted, "bob's jobs ran in submission order");
    app.stop().await;
}

#[tokio::test]
async fn a_user_back_with_one_job_at_a_time_waits_for_its_turn() {
    let app = TestApp::spawn_with(&["--job-workers", "1"]).await;
    let workspace = Workspace::new();
    let alice = User::new(&app, "alice", Role::User).await;
    let bob = User::new(&app, "bob", Role::User).await;
    let carol = User::new(&app, "carol", Role::User).await;
    let held = queue(&carol, &workspace, "held", Some("go")).await;
    wait_running(&carol, &held).await;
    let mut bobs = Vec::new();
    for name in ["b1", "b2", "b3"] {
        bobs.push(queue(&bob, &workspace, name, None).await);
    }
    let first = queue(&alice, &workspace, "a1", Some("a1-done")).await;
    workspace.open("go");
    wait_running(&alice, &first).await;
    // alice has nothing queued now; her next job joins the queue behind bob's turn.
    let second = queue(&alice, &workspace, "a2", None).await;
    workspace.open("a1-done");
    alice.wait(&second).await;
    for id in &bobs {
        bob.wait(id).await;
    }
    assert_eq!(workspace.started(), ["held", "b1", "a1", "b2", "a2", "b3"]);
    app.stop().await;
}

#[tokio::test]
async fn two_users_with_queued_jobs_take_turns_each_in_submission_order() {
    let app = TestApp::spawn_with(&["--job-workers", "1"]).await;
    let workspace = Workspace::new();
    let carol = User::new(&app, "carol", Role::User).await;
    let users = [
        ("zoe", User::new(&app, "zoe", Role::User).await),
        ("adam", User::new(&app, "adam", Role::User).await),
    ];
    let held = queue(&carol, &workspace, "held", Some("go")).await;
    wait_running(&carol, &held).await;

    // All of zoe's first, then all of adam's: strict FIFO would run them in two runs.
    let mut ids = Vec::new();
    for (name, user) in &users {
        for n in 0..4 {
            ids.push((
                user,
                queue(user, &workspace, &format!("{name}-{n}"), None).await,
            ));
        }
    }
    workspace.open("go");
    for (user, id) in &ids {
        user.wait(id).await;
    }

    let started = workspace.started();
    let owners: Vec<&str> = started[1..]
        .iter()
        .map(|name| name.split('-').next().unwrap())
        .collect();
    assert_eq!(owners.len(), 8, "{started:?}");
    assert!(
        owners.windows(2).all(|pair| pair[0] != pair[1]),
        "the users took turns: {started:?}"
    );
    for (name, _) in &users {
        let own: Vec<&str> = started
            .iter()
            .filter(|job| job.starts_with(&format!("{name}-")))
            .map(String::as_str)
            .collect();
        let submitted: Vec<String> = (0..4).map(|n| format!("{name}-{n}")).collect();
        assert_eq!(own, submitted, "{name}'s jobs ran in submission order");
    }
    app.stop().await;
}

#[tokio::test]
async fn past_max_queued_per_user_a_job_is_refused_with_429_until_one_leaves_the_queue() {
    let app = TestApp::spawn_with(&["--job-workers", "1", "--max-queued-per-user", "3"]).await;
    let workspace = Workspace::new();
    let alice = User::new(&app, "alice", Role::User).await;
    let bob = User::new(&app, "bob", Role::User).await;
    let held = queue(&bob, &workspace, "held", Some("first")).await;
    wait_running(&bob, &held).await;

    // A running job takes no place in the queue.
    let mut waiting = Vec::new();
    for n in 0..3 {
        waiting.push(queue(&bob, &workspace, &format!("bob-{n}"), Some("second")).await);
    }
    let refused = submit(&app, &bob.token).await;
    assert_queue_full(&refused, 3);
    assert_eq!(queued(&bob).await, 3, "the refused job was not queued");
    let (_, all) = bob.call(Method::GET, "/jobs", None).await;
    assert_eq!(all.as_array().unwrap().len(), 4, "{all}");

    // The cap is per user.
    let (status, _, body) = submit(&app, &alice.token).await;
    assert_eq!(status, 201, "{body}");

    // A queued job that is stopped frees its place.
    let (status, stopped) = bob
        .call(Method::POST, &format!("/jobs/{}/stop", waiting[2]), None)
        .await;
    assert_eq!(status, 200, "{stopped}");
    let (status, _, body) = submit(&app, &bob.token).await;
    assert_eq!(status, 201, "{body}");
    assert_queue_full(&submit(&app, &bob.token).await, 3);

    // So does one that starts.
    workspace.open("first");
    wait_running(&bob, &waiting[0]).await;
    assert_eq!(queued(&bob).await, 2);
    let (status, _, body) = submit(&app, &bob.token).await;
    assert_eq!(status, 201, "{body}");
    assert_queue_full(&submit(&app, &bob.token).await, 3);
    assert_eq!(queued(&bob).await, 3);
    workspace.open("second");
    app.stop().await;
}

#[tokio::test]
async fn concurrent_submissions_queue_exactly_the_cap_for_each_user() {
    let app = TestApp::spawn_with(&["--job-workers", "1", "--max-queued-per-user", "5"]).await;
    let workspace = Workspace::new();
    let alice = User::new(&app, "alice", Role::User).await;
    let bob = User::new(&app, "bob", Role::User).await;
    let held = queue(&bob, &workspace, "held", Some("go")).await;
    wait_running(&bob, &held).await;

    let app = std::sync::Arc::new(app);
    let mut submissions = Vec::new();
    for n in 0..40 {
        let token = if n % 2 == 0 { &alice.token } else { &bob.token }.clone();
        let app = app.clone();
        submissions.push(tokio::spawn(async move {
            let (status, headers, body) = submit(&app, &token).await;
            (n % 2 == 0, (status, headers, body))
        }));
    }
    let (mut alices, mut bobs) = (0, 0);
    for submission in submissions {
        let (is_alice, answer) = submission.await.unwrap();
        if answer.0 != StatusCode::CREATED {
            assert_queue_full(&answer, 5);
        } else if is_alice {
            alices += 1;
        } else {
            bobs += 1;
        }
    }
    assert_eq!(
        (alices, bobs),
        (5, 5),
        "each user got exactly 5 of 20 queued"
    );
    assert_eq!(queued(&alice).await, 5);
    assert_eq!(queued(&bob).await, 5);
    workspace.open("go");
    let app = std::sync::Arc::into_inner(app).unwrap();
    app.stop().await;
}

#[tokio::test]
async fn the_queued_counts_survive_a_restart() {
    let flags = ["--job-workers", "1", "--max-queued-per-user", "3"];
    let app = TestApp::spawn_with(&flags).await;
    let workspace = Workspace::new();
    let bob = User::new(&app, "bob", Role::User).await;
    let held = queue(&bob, &workspace, "held", Some("never")).await;
    wait_running(&bob, &held).await;
    // Its process has begun too (the stop below would otherwise cut it before its first
    // line).
    eventually(
        "the held job logs its start",
        Duration::from_secs(30),
        async || (workspace.started() == ["held"]).then_some(()),
    )
    .await;
    let mut waiting = Vec::new();
    for n in 0..3 {
        waiting.push(queue(&bob, &workspace, &format!("bob-{n}"), Some("go")).await);
    }
    assert_queue_full(&submit(&app, &bob.token).await, 3);

    let (dir, clock) = app.stop().await;
    let app = TestApp::spawn_in(dir, clock, &flags).await;
    let bob = User::new(&app, "bob", Role::User).await;
    assert_eq!(bob.job(&held).await["status"], "interrupted");
    // The free worker takes bob's first queued job, which then waits at the gate.
    wait_running(&bob, &waiting[0]).await;
    assert_eq!(queued(&bob).await, 2);
    let (status, _, body) = submit(&app, &bob.token).await;
    assert_eq!(status, 201, "{body}");
    assert_queue_full(&submit(&app, &bob.token).await, 3);
    let alice = User::new(&app, "alice", Role::User).await;
    let (status, _, body) = submit(&app, &alice.token).await;
    assert_eq!(status, 201, "{body}");

    workspace.open("go");
    for id in &waiting {
        bob.wait(id).await;
    }
    assert_eq!(workspace.started(), ["held", "bob-0", "bob-1", "bob-2"]);
    app.stop().await;
}
