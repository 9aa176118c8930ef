//! Faults of storage, for real: a full disk made on demand with SQLite's `max_page_count` on
//! warden's own write connection, and a lock held by another process. Each write path
//! answers clearly, keeps what it acknowledged, and works again with no restart.

use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use sqlx::Connection as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use warden::security::principal::Role;

use crate::helpers::{self, TestApp, call, eventually};

/// Sends `request` until it answers other than 200/201 (at most `tries` times); returns that
/// answer and how many succeeded before it.
async fn until_refused(
    tries: usize,
    mut request: impl FnMut(usize) -> reqwest::RequestBuilder,
) -> ((StatusCode, Value), usize) {
    for attempt in 0..tries {
        let (status, body) = call(request(attempt)).await;
        if !status.is_success() {
            return ((status, body), attempt);
        }
    }
    panic!("still accepted after {tries} requests");
}

async fn health(app: &TestApp) -> (StatusCode, Value) {
    call(app.client.get(format!("{}/healthz", app.admin))).await
}

/// Whether `/healthz` lists write path `path` as failing.
async fn is_failing(app: &TestApp, path: &str) -> bool {
    let (_, body) = health(app).await;
    body["storage"]["failing"]
        .as_array()
        .is_some_and(|failing| failing.iter().any(|ailment| ailment["path"] == path))
}

#[tokio::test]
async fn a_full_disk_answers_507_keeps_what_it_acknowledged_and_recovers_without_a_restart() {
    let app = TestApp::spawn().await;
    let token = app.token("alice", Role::User).await;
    let jobs = |method: Method, path: &str| {
        app.client
            .request(method, format!("{}{path}", app.jobs))
            .bearer_auth(&token)
    };
    let first_hash = app.create_hash("before").await;
    // A job, queued now, that writes its output once the disk is full.
    let gate = app.work.path().join("disk-is-full");
    let (status, job) = call(jobs(Method::POST, "/jobs").json(&json!({
        "command": "sh",
        "args": ["-c", format!(
            "while [ ! -e '{}' ]; do sleep 0.01; done; head -c 1000000 /dev/zero; exit 7",
            gate.display()
        )]
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();

    // The database may not grow by a single page from here on.
    app.db.limit_pages(Some(0)).await.unwrap();

    let ((status, error), accepted) = until_refused(5000, |n| {
        app.client
            .post(format!("{}/hash", app.hashes))
            .form(&[("password", format!("p{n}"))])
    })
    .await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{error}");
    assert_eq!(error["error"], "the disk holding the database is full");
    let ((status, _), _) = until_refused(5000, |n| {
        app.client
            .post(format!("{}/g/instance-{n}", app.registry))
            .json(&json!({"n": n}))
    })
    .await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);

    let (status, body) = health(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["storage"]["status"], "failing");
    let failing: Vec<&str> = body["storage"]["failing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ailment| ailment["path"].as_str().unwrap())
        .collect();
    assert!(failing.contains(&"hashes"), "{body}");

    // Its output meets the full disk: the job runs on, its output is dropped.
    std::fs::write(&gate, b"").unwrap();
    let dropped = eventually(
        "the job's output is refused",
        Duration::from_secs(30),
        async || {
            let (_, job) = call(jobs(Method::GET, &format!("/jobs/{id}"))).await;
            (job["outputTruncated"] == true || job["status"] != "running").then_some(job)
        },
    );
    let failing = eventually(
        "job output is reported failing",
        Duration::from_secs(30),
        async || is_failing(&app, "job output").await.then_some(()),
    );
    let (_, ()) = tokio::join!(dropped, failing);

    // Space returns: everything works again, with no restart.
    app.db.limit_pages(None).await.unwrap();
    let next_hash = app.create_hash("after").await;
    assert!(
        next_hash > first_hash + i64::try_from(accepted).unwrap(),
        "ids are never reused"
    );
    let (status, _) = call(app.client.post(format!("{}/g/after", app.registry))).await;
    assert_eq!(status, StatusCode::CREATED);
    // Every hash acknowledged before the disk filled is still there.
    app.clock.advance(Duration::from_secs(5)).await;
    assert_eq!(app.get_hash(&first_hash.to_string()).await.status(), 200);

    let ended = eventually("the job ends", Duration::from_secs(30), async || {
        let (_, job) = call(jobs(Method::GET, &format!("/jobs/{id}"))).await;
        (job["status"] != "queued" && job["status"] != "running").then_some(job)
    })
    .await;
    assert_eq!(ended["status"], "failed", "{ended}");
    assert_eq!(ended["exitCode"], 7);
    assert_eq!(ended["outputTruncated"], true);
    // A job queued now runs, and all of its output is kept.
    let (status, job) = call(
        jobs(Method::POST, "/jobs").json(&json!({"command": "sh", "args": ["-c", "echo fine"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let output = helpers::body(jobs(Method::GET, &format!("/jobs/{id}/output?follow=true"))).await;
    assert_eq!(output, b"fine\n");
    let (_, job) = call(jobs(Method::GET, &format!("/jobs/{id}"))).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["outputTruncated"], false);

    let healthy = eventually("healthz is ok again", Duration::from_secs(30), async || {
        let (status, body) = health(&app).await;
        (status == StatusCode::OK).then_some(body)
    })
    .await;
    assert_eq!(healthy["storage"]["status"], "ok");
    app.stop().await;
}

#[tokio::test]
async fn a_job_refused_by_a_full_disk_takes_no_place_in_its_owners_queue() {
    // One worker held by carol's job, so bob's jobs stay queued.
    let app = TestApp::spawn_with(&["--job-workers", "1"]).await;
    let carol = app.token("carol", Role::User).await;
    let bob = app.token("bob", Role::User).await;
    let gate = app.work.path().join("go");
    let script = format!("while [ ! -e '{}' ]; do sleep 0.01; done", gate.display());
    let (status, _) = call(
        app.client
            .post(format!("{}/jobs", app.jobs))
            .bearer_auth(&carol)
            .json(&json!({"command": "sh", "args": ["-c", script]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    app.db.limit_pages(Some(0)).await.unwrap();
    let submit = |_| {
        app.client
            .post(format!("{}/jobs", app.jobs))
            .bearer_auth(&bob)
            .json(&json!({"command": "true"}))
    };
    let ((status, error), accepted) = until_refused(5000, submit).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{error}");
    app.db.limit_pages(None).await.unwrap();

    // The refused job left nothing: neither a row nor a count in bob's place in the queue.
    let (status, _) = call(submit(0)).await;
    assert_eq!(status, StatusCode::CREATED, "space is back");
    let options = SqliteConnectOptions::new().filename(app.dir.path().join("warden.db"));
    let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
    let (rows, counted): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM jobs WHERE owner = 'bob' AND status = 'queued'),
                (SELECT queued FROM job_turns WHERE owner = 'bob')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    assert_eq!(rows, i64::try_from(accepted).unwrap() + 1);
    assert_eq!(counted, rows, "job_turns counts what is queued");
    std::fs::write(&gate, b"").unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_database_locked_by_another_process_answers_503_and_the_next_batch_commits() {
    let app = TestApp::spawn_with(&["--busy-timeout", "100ms", "--job-workers", "1"]).await;
    let token = app.token("alice", Role::User).await;
    let jobs = |method: Method, path: &str| {
        app.client
            .request(method, format!("{}{path}", app.jobs))
            .bearer_auth(&token)
    };
    let status_of = async |id: &str| {
        let (_, job) = call(jobs(Method::GET, &format!("/jobs/{id}"))).await;
        job["status"].as_str().unwrap().to_owned()
    };
    assert_eq!(app.create_hash("first").await, 1);
    // One worker: a job that ends when told to, and one queued behind it.
    let gate = app.work.path().join("end-now");
    let (_, blocker) = call(jobs(Method::POST, "/jobs").json(&json!({
        "command": "sh",
        "args": ["-c", format!("echo up; while [ ! -e '{}' ]; do sleep 0.01; done", gate.display())]
    })))
    .await;
    let blocker = blocker["id"].as_str().unwrap().to_owned();
    let (_, next) = call(jobs(Method::POST, "/jobs").json(&json!({"command": "true"}))).await;
    let next = next["id"].as_str().unwrap().to_owned();
    // It runs, and has run long enough for its process to be recorded (the lock below would
    // fail that).
    let mut output = jobs(Method::GET, &format!("/jobs/{blocker}/output?follow=true"))
        .send()
        .await
        .unwrap();
    helpers::read_until(&mut output, "up").await;
    let options = SqliteConnectOptions::new().filename(app.dir.path().join("warden.db"));
    let mut other = SqliteConnection::connect_with(&options).await.unwrap();
    eventually(
        "the blocker's process is recorded",
        Duration::from_secs(30),
        async || {
            let recorded: Option<i64> = sqlx::query_scalar("SELECT pid FROM jobs WHERE id = ?")
                .bind(&blocker)
                .fetch_one(&mut other)
                .await
                .unwrap();
            recorded.map(|_| ())
        },
    )
    .await;

    // Another process (a sqlite3 shell, a backup) takes the write lock and keeps it.
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();

    let response = app.post_password("while locked").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key(header::RETRY_AFTER));
    // The blocker ends: its worker's BEGIN IMMEDIATE (record the end, claim the next) fails
    // and is retried; /healthz says so.
    std::fs::write(&gate, b"").unwrap();
    eventually(
        "the worker's commit is reported failing",
        Duration::from_secs(30),
        async || is_failing(&app, "job status").await.then_some(()),
    )
    .await;
    assert_eq!(
        status_of(&blocker).await,
        "running",
        "its end is not recorded yet"
    );

    sqlx::raw_sql("ROLLBACK").execute(&mut other).await.unwrap();
    other.close().await.unwrap();

    // Nothing of the failed batches remains, and the next ones commit: the next hash takes
    // the next id, the blocker's end is recorded and the queued job runs.
    assert_eq!(app.create_hash("after").await, 2);
    eventually("the queued job runs", Duration::from_secs(30), async || {
        (status_of(&next).await == "succeeded").then_some(())
    })
    .await;
    assert_eq!(status_of(&blocker).await, "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn past_max_db_size_job_output_is_refused_while_hashes_and_heartbeats_commit() {
    let app = TestApp::spawn_with(&["--max-db-size", "1MiB"]).await;
    let token = app.token("alice", Role::User).await;
    let (status, job) = call(
        app.client
            .post(format!("{}/jobs", app.jobs))
            .bearer_auth(&token)
            .json(&json!({"command": "head", "args": ["-c", "4000000", "/dev/zero"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let job = eventually("the job ends", Duration::from_secs(30), async || {
        let (_, job) = call(
            app.client
                .get(format!("{}/jobs/{id}", app.jobs))
                .bearer_auth(&token),
        )
        .await;
        (job["status"] == "succeeded").then_some(job)
    })
    .await;
    assert_eq!(job["outputTruncated"], true);
    let stored = job["outputBytes"].as_i64().unwrap();
    assert!(stored < 1 << 20, "{stored} bytes stored past the cap");
    // What was stored is a prefix: every byte of it is there, in order.
    let output = helpers::body(
        app.client
            .get(format!("{}/jobs/{id}/output", app.jobs))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(i64::try_from(output.len()).unwrap(), stored);

    // The reserve is kept for everything else.
    assert_eq!(app.create_hash("still").await, 1);
    let (status, _) = call(app.client.post(format!("{}/g/i", app.registry))).await;
    assert_eq!(status, StatusCode::CREATED);
    app.stop().await;
}

/// A small tmpfs mounted for one test, unmounted however the test ends.
struct SmallVolume {
    dir: Option<tempfile::TempDir>,
}

impl SmallVolume {
    /// A tmpfs of `size` (e.g. `8m`), or why there can be none here.
    fn mount(size: &str) -> Result<Self, String> {
        use std::os::unix::fs::MetadataExt as _;
        // /proc/self belongs to the effective user.
        let uid = std::fs::metadata("/proc/self")
            .map_err(|error| error.to_string())?
            .uid();
        if uid != 0 {
            return Err("mounting a tmpfs needs root".to_owned());
        }
        let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .map_err(|error| error.to_string())?;
        if !mounted.success() {
            return Err(format!("mount -t tmpfs failed: {mounted}"));
        }
        Ok(Self { dir: Some(dir) })
    }

    fn resize(&self, size: &str) {
        let resized = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir().path())
            .status()
            .unwrap();
        assert!(resized.success());
    }

    fn dir(&self) -> &tempfile::TempDir {
        self.dir.as_ref().unwrap()
    }

    /// A data directory on the volume.
    fn data_dir(&self) -> tempfile::TempDir {
        tempfile::tempdir_in(self.dir().path()).unwrap()
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(dir.path())
                .status();
        }
    }
}

#[tokio::test]
async fn a_volume_that_fills_up_wedges_nothing_and_warden_comes_back_when_it_grows() {
    let volume = match SmallVolume::mount("6m") {
        Ok(volume) => volume,
        Err(reason) => {
            eprintln!("skipped: {reason}");
            return;
        }
    };
    let app = TestApp::spawn_in(
        volume.data_dir(),
        warden::clock::Clock::manual(crate::helpers::START_MS),
        &["--job-workers", "1", "--max-db-size", "1TiB"],
    )
    .await;
    let token = app.token("alice", Role::User).await;
    let submit = |command: &str| {
        app.client
            .post(format!("{}/jobs", app.jobs))
            .bearer_auth(&token)
            .json(&json!({"command": "sh", "args": ["-c", command]}))
    };
    let read = |id: &str| {
        app.client
            .get(format!("{}/jobs/{id}", app.jobs))
            .bearer_auth(&token)
    };
    let before = app.create_hash("before the disk filled").await;

    // 20 MB of output into 6 MB of disk.
    let (status, job) = call(submit("head -c 20000000 /dev/urandom; exit 3")).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let filler = job["id"].as_str().unwrap().to_owned();
    // The job's output, and then the record of its end, hit the full disk: the worker's
    // transaction is rolled back by SQLite itself, the case that used to wedge the one write
    // connection until a restart.
    eventually("job output fails", Duration::from_secs(60), async || {
        is_failing(&app, "job output").await.then_some(())
    })
    .await;
    eventually(
        "the job's end fails to commit",
        Duration::from_secs(60),
        async || is_failing(&app, "job status").await.then_some(()),
    )
    .await;
    let response = app.post_password("while full").await;
    assert_eq!(response.status(), StatusCode::INSUFFICIENT_STORAGE);

    // The volume grows: no restart, and everything works again.
    volume.resize("64m");
    let job = eventually("the filler job ends", Duration::from_secs(60), async || {
        let (_, job) = call(read(&filler)).await;
        (job["status"] != "running" && job["status"] != "queued").then_some(job)
    })
    .await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["exitCode"], 3);
    assert_eq!(job["outputTruncated"], true);

    let after = eventually("hashes commit again", Duration::from_secs(30), async || {
        let response = app.post_password("after").await;
        (response.status() == StatusCode::OK).then_some(())
    })
    .await;
    let () = after;
    let (status, job) = call(submit("echo queued after")).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let job = eventually("a new job runs", Duration::from_secs(30), async || {
        let (_, job) = call(read(&id)).await;
        (job["status"] == "succeeded").then_some(job)
    })
    .await;
    assert_eq!(job["outputBytes"], 13);
    app.clock.advance(Duration::from_secs(5)).await;
    assert_eq!(app.get_hash(&before.to_string()).await.status(), 200);
    app.stop().await;
}
