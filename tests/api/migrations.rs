//! Databases made by earlier releases upgrade cleanly with their data intact.
//!
//! Each release adds a fixture: `sqlite3 data/warden.db .dump` of a database that release made
//! and used (with its `token_signing_key` row deleted: no key is committed), kept under
//! `tests/fixtures/` and never edited, and a test here that loads it, starts today's warden
//! on it and reads the data back.

use crate::helpers::{self, ANGRY_MONKEY, START_MS, TestApp, call};
use sqlx::Connection as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use warden::clock::Clock;
use warden::security::principal::Role;

/// Writes a fixture dump into `warden.db` of a new data dir, as that release left it.
async fn data_dir_from_dump(dump: &'static str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("warden.db"))
        .create_if_missing(true);
    let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::raw_sql(dump).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    dir
}

#[tokio::test]
async fn a_v0_1_0_database_upgrades_with_its_hashes_instances_jobs_and_output() {
    let dir = data_dir_from_dump(include_str!("../fixtures/v0.1.0.sql")).await;
    let app = TestApp::spawn_in(dir, Clock::manual(START_MS), &[]).await;
    app.clock.set_ms(1_795_489_260_000).await; // a few seconds after the fixture was made

    assert_eq!(app.get_hash("1").await.text().await.unwrap(), ANGRY_MONKEY);
    assert_eq!(app.get_hash("3").await.status(), 200);
    assert_eq!(app.stats().await, (3, 66));
    assert_eq!(
        app.create_hash("new").await,
        4,
        "ids continue after the old ones"
    );

    let (_, instance) = call(
        app.client
            .get(format!("{}/particle-detector/e335", app.registry)),
    )
    .await;
    assert_eq!(instance["meta"], serde_json::json!({"zone": "eu-1"}));

    // The fixture has no signing key (none is committed): the upgraded warden makes one.
    let token = app.token("root", Role::Admin).await;
    let job = "b4ab31d7-e449-4abf-ad16-e65f975d25cb";
    let read = |path: String| {
        app.client
            .get(format!("{}{path}", app.jobs))
            .bearer_auth(&token)
    };
    let (_, status) = call(read(format!("/jobs/{job}"))).await;
    assert_eq!(status["status"], "succeeded");
    assert_eq!(status["owner"], "alice");
    let output = helpers::body(read(format!("/jobs/{job}/output"))).await;
    assert_eq!(&output[..], b"kept\n");
    app.stop().await;
}
