//! Databases made by earlier releases upgrade cleanly with their data intact.
//!
//! Each release that changes the schema adds a fixture: `sqlite3 data/warden.db .dump` of a
//! database that release made and used, committed under `tests/fixtures/` and never edited,
//! and a test here that loads it, starts today's warden on it and reads the data back.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step is a failed test

mod common;

use std::time::Duration;

use common::{ANGRY_MONKEY, START_MS, TestApp};
use sqlx::Connection as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use warden::clock::Clock;

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
async fn a_v0_1_0_database_upgrades_with_its_hashes_and_stats() {
    let dir = data_dir_from_dump(include_str!("fixtures/v0.1.0.sql")).await;
    // Well after the fixture's hashes became ready.
    let app = TestApp::spawn_in(dir, Clock::manual(START_MS), &[]).await;
    app.clock.advance(Duration::from_secs(365 * 24 * 3600));

    assert_eq!(app.get_hash("1").await.text().await.unwrap(), ANGRY_MONKEY);
    assert_eq!(app.get_hash("3").await.status(), 200);
    assert_eq!(app.stats().await, (3, 41));
    assert_eq!(
        app.create_hash("new").await,
        4,
        "ids continue after the old ones"
    );
    app.stop().await;
}
