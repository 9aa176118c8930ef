//! Bounded job lists and deleting jobs: pages of `GET /jobs`, `DELETE /jobs/{id}`, and
//! `--job-retention`, with the manual clock.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::{Method, header};
use serde_json::Value;
use warden::security::principal::Role;

use crate::helpers::{TestApp, eventually};
use crate::jobs::User;

/// Walks `GET /jobs{query}` page by page along `Link: rel="next"`; returns each page's ids.
async fn pages(app: &TestApp, user: &User, query: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut next = Some(format!("/jobs{query}"));
    while let Some(path) = next.take() {
        let response = app
            .client
            .get(format!("{}{path}", app.jobs))
            .bearer_auth(&user.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        next = response
            .headers()
            .get(header::LINK)
            .map(|link| link.to_str().unwrap().to_owned())
            .map(|link| {
                let path = link.strip_prefix('<').unwrap().split_once('>').unwrap();
                assert_eq!(path.1, "; rel=\"next\"");
                path.0.to_owned()
            });
        let jobs: Vec<Value> = response.json().await.unwrap();
        pages.push(
            jobs.iter()
                .map(|job| job["id"].as_str().unwrap().to_owned())
                .collect(),
        );
        assert!(pages.len() < 1000, "the pages never end");
    }
    pages
}

/// Rows of `table` in the running warden's database.
async fn count(app: &TestApp, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&app.db.reads)
        .await
        .unwrap()
}

#[tokio::test]
async fn two_hundred_and_fifty_jobs_list_in_full_pages_newest_first_none_twice_none_missing() {
    let app = TestApp::spawn().await;
    let alice = User::new(&app, "alice", Role::User).await;
    let bob = User::new(&app, "bob", Role::User).await;
    let mut started = Vec::new();
    for _ in 0..250 {
        started.push(alice.start("true", &[]).await);
    }
    let bobs = bob.start("true", &[]).await;
    started.reverse();

    let by_default = pages(&app, &alice, "").await;
    let sizes: Vec<usize> = by_default.iter().map(Vec::len).collect();
    assert_eq!(sizes, [100, 100, 50]);
    assert_eq!(by_default.concat(), started);

    let by_thirty = pages(&app, &alice, "?limit=30").await;
    assert_eq!(by_thirty.len(), 9);
    assert!(by_thirty[..8].iter().all(|page| page.len() == 30));
    assert_eq!(by_thirty.concat(), started);

    // A user's pages hold only that user's jobs, and another's id is no cursor for them.
    assert!(!by_default.concat().contains(&bobs));
    let (status, _) = alice
        .call(Method::GET, &format!("/jobs?after={bobs}"), None)
        .await;
    assert_eq!(status, 400);
    app.stop().await;
}

#[tokio::test]
async fn a_page_ends_early_once_its_jobs_weigh_a_mebibyte() {
    let app = TestApp::spawn().await;
    let alice = User::new(&app, "alice", Role::User).await;
    let heavy = "x".repeat(60_000);
    let mut started = HashSet::new();
    for _ in 0..20 {
        started.insert(alice.start("echo", &[heavy.as_str()]).await);
    }
    let pages = pages(&app, &alice, "?limit=100").await;
    assert!(pages.len() >= 2, "one page held 20 × 60 KB");
    assert!(pages[0].len() < 20 && !pages[0].is_empty());
    let listed: Vec<String> = pages.concat();
    assert_eq!(listed.len(), 20);
    assert_eq!(listed.into_iter().collect::<HashSet<_>>(), started);
    app.stop().await;
}

#[tokio::test]
async fn a_finished_job_is_deleted_with_its_output_by_its_owner_or_an_admin_only() {
    let app = TestApp::spawn().await;
    let alice = User::new(&app, "alice", Role::User).await;
    let bob = User::new(&app, "bob", Role::User).await;
    let admin = User::new(&app, "root", Role::Admin).await;
    let done = alice.start("head", &["-c", "300000", "/dev/zero"]).await;
    assert_eq!(alice.wait(&done).await.len(), 300_000);
    let running = alice.start("sleep", &["300"]).await;
    let other = alice.start("true", &[]).await;
    alice.wait(&other).await;

    let delete = |user: &User, id: &str| {
        let (user, path) = (user.clone(), format!("/jobs/{id}"));
        async move { user.call(Method::DELETE, &path, None).await.0 }
    };
    assert_eq!(delete(&bob, &done).await, 404, "another user's job");
    eventually("the sleep runs", Duration::from_secs(30), async || {
        (alice.job(&running).await["status"] == "running").then_some(())
    })
    .await;
    assert_eq!(delete(&alice, &running).await, 409, "a running job");
    assert_eq!(delete(&alice, &done).await, 204);
    assert_eq!(delete(&alice, &done).await, 404, "already deleted");
    assert_eq!(
        delete(&admin, &other).await,
        204,
        "an admin deletes anyone's"
    );

    let (status, _) = alice
        .call(Method::GET, &format!("/jobs/{done}"), None)
        .await;
    assert_eq!(status, 404);
    let (_, listed) = alice.call(Method::GET, "/jobs", None).await;
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [running.as_str()]);
    // Its output and its record leave the database, in steps.
    eventually(
        "the output is deleted",
        Duration::from_secs(30),
        async || {
            (count(&app, "job_output").await == 0 && count(&app, "jobs").await == 1).then_some(())
        },
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn retention_deletes_jobs_that_ended_before_the_window_and_never_a_running_one() {
    let app = TestApp::spawn_with(&["--job-retention", "1h", "--purge-every", "20ms"]).await;
    let alice = User::new(&app, "alice", Role::User).await;
    let old = alice.start("echo", &["old"]).await;
    alice.wait(&old).await;
    let running = alice.start("sh", &["-c", "echo up; exec sleep 300"]).await;
    eventually("the sleep runs", Duration::from_secs(30), async || {
        (alice.job(&running).await["status"] == "running").then_some(())
    })
    .await;

    // Just inside the window nothing goes.
    app.clock.advance(Duration::from_secs(3599)).await;
    let recent = alice.start("echo", &["recent"]).await;
    alice.wait(&recent).await;
    app.clock.advance(Duration::from_millis(999)).await;
    let (status, _) = alice.call(Method::GET, &format!("/jobs/{old}"), None).await;
    assert_eq!(status, 200, "an hour has not passed yet");

    app.clock.advance(Duration::from_secs(2)).await;
    eventually(
        "the old job is deleted",
        Duration::from_secs(30),
        async || {
            let (status, _) = alice.call(Method::GET, &format!("/jobs/{old}"), None).await;
            (status == 404).then_some(())
        },
    )
    .await;
    assert_eq!(alice.job(&running).await["status"], "running");
    assert_eq!(alice.job(&recent).await["status"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn under_a_steady_load_of_jobs_the_database_file_stops_growing() {
    let app = TestApp::spawn_with(&[
        "--job-retention",
        "1m",
        "--purge-every",
        "20ms",
        "--job-workers",
        "1",
    ])
    .await;
    let alice = User::new(&app, "alice", Role::User).await;
    let page_count = async || -> i64 {
        sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&app.db.reads)
            .await
            .unwrap()
    };
    let mut sizes = Vec::new();
    for round in 0..30 {
        let id = alice.start("head", &["-c", "100000", "/dev/zero"]).await;
        assert_eq!(alice.wait(&id).await.len(), 100_000);
        app.clock.advance(Duration::from_secs(120)).await;
        eventually("the job is purged", Duration::from_secs(30), async || {
            (count(&app, "jobs").await == 0).then_some(())
        })
        .await;
        if round == 9 || round == 29 {
            sizes.push(page_count().await);
        }
    }
    assert!(
        sizes[1] <= sizes[0] + sizes[0] / 10,
        "the file grew from {} to {} pages",
        sizes[0],
        sizes[1]
    );
    app.stop().await;
}
