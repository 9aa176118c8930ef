//! The hash service's contract over real HTTP: ids, the delay, stats, and every bad input, on
//! both engines (the node's SQLite file and a shared Postgres).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::helpers::{ANGRY_MONKEY, TestApp, call, eventually, run_cli};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header;
use sha2::{Digest as _, Sha512};

use crate::helpers::{Engine, on_both_engines};

// The conformance suite: each of these runs on SQLite and on Postgres, from this one code.
on_both_engines!(
    a_hash_is_hidden_for_five_seconds_then_matches_the_contract_vector,
    ids_count_up_from_one_in_request_order,
    json_and_multipart_bodies_are_read_like_a_form,
    stats_count_accepted_requests_and_their_mean_time,
    three_hundred_concurrent_posts_get_three_hundred_distinct_ids,
    a_missing_or_empty_password_is_400_and_changes_nothing,
    ids_that_are_not_numbers_are_400_and_unknown_ones_404,
    a_wrong_method_is_405_with_allow_and_a_json_error,
    an_oversized_body_is_413_and_an_unknown_type_415,
    hashes_ids_and_stats_survive_a_restart,
    the_delay_is_a_setting,
    a_password_is_hashed_as_the_exact_bytes_the_client_sent,
    a_json_body_that_is_not_utf8_is_400,
    without_a_retention_a_hash_is_kept_for_ever,
    hashes_past_their_retention_are_deleted_and_their_ids_never_come_back,
    a_purge_larger_than_one_step_deletes_every_old_hash,
);

async fn a_hash_is_hidden_for_five_seconds_then_matches_the_contract_vector(engine: Engine) {
    let app = TestApp::on(engine).await;

    let response = app.post_password("angryMonkey").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[header::LOCATION], "/hash/1");
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(response.text().await.unwrap(), "1");

    let pending = app.get_hash("1").await;
    assert_eq!(pending.status(), 404);
    assert_eq!(pending.headers()[header::RETRY_AFTER], "5");

    app.clock.advance(Duration::from_millis(4_001)).await;
    let almost = app.get_hash("1").await;
    assert_eq!(almost.status(), 404);
    assert_eq!(almost.headers()[header::RETRY_AFTER], "1");

    app.clock.advance(Duration::from_millis(998)).await;
    assert_eq!(app.get_hash("1").await.status(), 404, "1 ms early");

    app.clock.advance(Duration::from_millis(1)).await;
    let ready = app.get_hash("1").await;
    assert_eq!(ready.status(), 200);
    assert!(
        ready.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(ready.text().await.unwrap(), ANGRY_MONKEY);
    app.stop().await;
}

async fn ids_count_up_from_one_in_request_order(engine: Engine) {
    let app = TestApp::on(engine).await;
    for expected in 1..=5 {
        assert_eq!(
            app.create_hash(&format!("password {expected}")).await,
            expected
        );
    }
    app.stop().await;
}

async fn json_and_multipart_bodies_are_read_like_a_form(engine: Engine) {
    let app = TestApp::on(engine).await;
    let json = app
        .client
        .post(format!("{}/hash", app.hashes))
        .json(&serde_json::json!({ "password": "angryMonkey" }))
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 200);
    assert_eq!(json.text().await.unwrap(), "1");

    let form = reqwest::multipart::Form::new()
        .text("user", "ignored")
        .text("password", "angryMonkey");
    let multipart = app
        .client
        .post(format!("{}/hash", app.hashes))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(multipart.status(), 200);
    assert_eq!(multipart.text().await.unwrap(), "2");

    app.clock.advance(Duration::from_secs(5)).await;
    for id in ["1", "2"] {
        assert_eq!(app.get_hash(id).await.text().await.unwrap(), ANGRY_MONKEY);
    }
    app.stop().await;
}

async fn stats_count_accepted_requests_and_their_mean_time(engine: Engine) {
    let app = TestApp::on(engine).await;
    assert_eq!(app.stats().await, (0, 0));
    for _ in 0..3 {
        app.create_hash("angryMonkey").await;
    }
    let _rejected = app.post_password("").await;
    let (total, average) = app.stats().await;
    assert_eq!(total, 3, "only accepted requests count");
    // Reading the body, hashing and writing the row take real, measurable time.
    assert!(average > 0, "mean handling time is {average} µs");
    assert!(average < 5_000_000, "mean handling time is {average} µs");
    app.stop().await;
}

async fn three_hundred_concurrent_posts_get_three_hundred_distinct_ids(engine: Engine) {
    let app = TestApp::on(engine).await;
    let posts = (0..300).map(|n| {
        let client = app.client.clone();
        let url = format!("{}/hash", app.hashes);
        tokio::spawn(async move {
            let response = client
                .post(url)
                .form(&[("password", format!("secret {n}"))])
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.text().await.unwrap().parse::<i64>().unwrap()
        })
    });
    let mut ids = BTreeSet::new();
    for post in posts.collect::<Vec<_>>() {
        ids.insert(post.await.unwrap());
    }
    assert_eq!(ids, (1..=300).collect::<BTreeSet<_>>());
    assert_eq!(app.stats().await.0, 300);
    app.stop().await;
}

async fn a_missing_or_empty_password_is_400_and_changes_nothing(engine: Engine) {
    let app = TestApp::on(engine).await;
    let url = format!("{}/hash", app.hashes);
    let bodies: [(&str, &str); 7] = [
        ("application/x-www-form-urlencoded", ""),
        ("application/x-www-form-urlencoded", "password="),
        ("application/x-www-form-urlencoded", "user=bob"),
        ("application/json", "{}"),
        ("application/json", r#"{"password":""}"#),
        ("application/json", r#"{"password":12345}"#),
        ("application/json", "not json"),
    ];
    for (content_type, body) in bodies {
        let (status, error) = call(
            app.client
                .post(&url)
                .header(header::CONTENT_TYPE, content_type)
                .body(body),
        )
        .await;
        assert_eq!(status, 400, "{content_type} {body:?}");
        let message = error["error"].as_str().unwrap();
        assert!(
            !message.contains("12345"),
            "the error echoes the input: {message}"
        );
    }
    assert_eq!(app.stats().await, (0, 0));
    assert_eq!(app.create_hash("angryMonkey").await, 1, "no id was used up");
    app.stop().await;
}

async fn ids_that_are_not_numbers_are_400_and_unknown_ones_404(engine: Engine) {
    let app = TestApp::on(engine).await;
    for bad in ["abc", "-1", "1.5", "0x1"] {
        let (status, error) = call(app.client.get(format!("{}/hash/{bad}", app.hashes))).await;
        assert_eq!(status, 400, "{bad}");
        assert!(error["error"].is_string());
    }
    for unknown in ["1", "0", "99999999999999999999999"] {
        let response = app.get_hash(unknown).await;
        assert_eq!(response.status(), 404, "{unknown}");
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }
    app.stop().await;
}

async fn a_wrong_method_is_405_with_allow_and_a_json_error(engine: Engine) {
    let app = TestApp::on(engine).await;
    let cases = [
        (reqwest::Method::GET, "/hash", "POST"),
        (reqwest::Method::DELETE, "/hash/1", "GET,HEAD"),
        (reqwest::Method::POST, "/stats", "GET,HEAD"),
    ];
    for (method, path, allow) in cases {
        let response = app
            .client
            .request(method.clone(), format!("{}{path}", app.hashes))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(response.headers()[header::ALLOW], allow);
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"], "method not allowed");
    }
    let (status, unknown) = call(app.client.get(format!("{}/nope", app.hashes))).await;
    assert_eq!(status, 404);
    assert_eq!(unknown["error"], "not found");
    app.stop().await;
}

async fn an_oversized_body_is_413_and_an_unknown_type_415(engine: Engine) {
    let app = TestApp::on(engine).await;
    let url = format!("{}/hash", app.hashes);
    let huge = format!("password={}", "x".repeat(64 * 1024));
    let too_large = app
        .client
        .post(&url)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(huge.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(too_large.status(), 413);
    assert!(too_large.json::<serde_json::Value>().await.unwrap()["error"].is_string());

    let form = reqwest::multipart::Form::new().text("password", huge);
    let multipart = app.client.post(&url).multipart(form).send().await.unwrap();
    assert_eq!(multipart.status(), 413);

    let xml = app
        .client
        .post(&url)
        .header(header::CONTENT_TYPE, "text/xml")
        .body("<password>x</password>")
        .send()
        .await
        .unwrap();
    assert_eq!(xml.status(), 415);
    assert_eq!(app.stats().await, (0, 0));
    app.stop().await;
}

async fn hashes_ids_and_stats_survive_a_restart(engine: Engine) {
    let app = TestApp::on(engine).await;
    for n in 1..=3 {
        app.create_hash(&format!("before restart {n}")).await;
    }
    app.create_hash("angryMonkey").await;
    let stats_before = app.stats().await;
    let (dir, clock) = app.stop().await;

    let app = TestApp::spawn_in(dir, clock, &[]).await;
    assert_eq!(app.stats().await, stats_before);
    app.clock.advance(Duration::from_secs(5)).await;
    assert_eq!(app.get_hash("4").await.text().await.unwrap(), ANGRY_MONKEY);
    assert_eq!(app.create_hash("after restart").await, 5);
    assert_eq!(app.stats().await.0, 5);
    app.stop().await;
}

async fn the_delay_is_a_setting(engine: Engine) {
    let app = TestApp::on_with(engine, &["--hash-delay", "250ms"]).await;
    let id = app.create_hash("angryMonkey").await;
    app.clock.advance(Duration::from_millis(249)).await;
    let pending = app.get_hash(&id.to_string()).await;
    assert_eq!(pending.status(), 404);
    assert_eq!(
        pending.headers()[header::RETRY_AFTER],
        "1",
        "rounded up to whole seconds"
    );
    app.clock.advance(Duration::from_millis(1)).await;
    assert_eq!(app.get_hash(&id.to_string()).await.status(), 200);
    app.stop().await;
}

/// base64(SHA-512(`bytes`)), as `GET /hash/{id}` should answer for a password of `bytes`.
fn hash_of(bytes: &[u8]) -> String {
    STANDARD.encode(Sha512::digest(bytes))
}

impl TestApp {
    /// `POST /hash` with `body` as it is, of `content_type`.
    async fn post_raw(&self, content_type: &str, body: &[u8]) -> reqwest::Response {
        self.client
            .post(format!("{}/hash", self.hashes))
            .header(header::CONTENT_TYPE, content_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// The ids of the hashes in the database, in order.
    async fn stored_ids(&self) -> Vec<i64> {
        self.stored("SELECT id FROM hashes ORDER BY id").await
    }
}

async fn a_password_is_hashed_as_the_exact_bytes_the_client_sent(engine: Engine) {
    let app = TestApp::on(engine).await;
    const FORM: &str = "application/x-www-form-urlencoded";
    let cases: [(&str, &[u8], &[u8]); 8] = [
        (FORM, b"password=%FF", b"\xFF"),
        (FORM, b"password=\xFF", b"\xFF"),
        (FORM, b"password=%EF%BF%BD", "\u{FFFD}".as_bytes()),
        (FORM, b"password=a+b", b"a b"),
        (FORM, b"password=a%20b", b"a b"),
        (FORM, b"user=x&password=%2B%26%3D&z=1", b"+&="),
        (
            "application/json",
            br#"{"password":"\u00ff"}"#,
            "\u{FF}".as_bytes(),
        ),
        (
            "application/json",
            "{\"password\":\"\u{FFFD}\"}".as_bytes(),
            "\u{FFFD}".as_bytes(),
        ),
    ];
    let mut ids = Vec::new();
    for (content_type, body, password) in cases {
        let response = app.post_raw(content_type, body).await;
        assert_eq!(response.status(), 200, "{}", String::from_utf8_lossy(body));
        ids.push((response.text().await.unwrap(), password, body));
    }
    let form = reqwest::multipart::Form::new().part(
        "password",
        reqwest::multipart::Part::bytes(vec![0xFF, 0xFE]),
    );
    let multipart = app
        .client
        .post(format!("{}/hash", app.hashes))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(multipart.status(), 200);
    ids.push((multipart.text().await.unwrap(), b"\xFF\xFE", b"multipart"));

    app.clock.advance(Duration::from_secs(5)).await;
    for (id, password, body) in ids {
        let hash = app.get_hash(&id).await.text().await.unwrap();
        assert_eq!(hash, hash_of(password), "{}", String::from_utf8_lossy(body));
    }
    assert_ne!(
        hash_of(b"\xFF"),
        hash_of("\u{FFFD}".as_bytes()),
        "%FF is not the replacement character"
    );
    app.stop().await;
}

async fn a_json_body_that_is_not_utf8_is_400(engine: Engine) {
    let app = TestApp::on(engine).await;
    let (status, error) = call(
        app.client
            .post(format!("{}/hash", app.hashes))
            .header(header::CONTENT_TYPE, "application/json")
            .body(b"{\"password\":\"\xFF\"}".to_vec()),
    )
    .await;
    assert_eq!(status, 400);
    assert!(error["error"].is_string());
    assert_eq!(app.stats().await, (0, 0));
    app.stop().await;
}

async fn without_a_retention_a_hash_is_kept_for_ever(engine: Engine) {
    let app = TestApp::on_with(engine, &["--purge-every", "100ms"]).await;
    let id = app.create_hash("angryMonkey").await;
    app.clock
        .advance(Duration::from_secs(10 * 365 * 86_400))
        .await;
    assert_eq!(
        app.get_hash(&id.to_string()).await.text().await.unwrap(),
        ANGRY_MONKEY
    );
    app.stop().await;
}

async fn hashes_past_their_retention_are_deleted_and_their_ids_never_come_back(engine: Engine) {
    let app = TestApp::on_with(
        engine,
        &["--hash-retention", "1h", "--purge-every", "100ms"],
    )
    .await;
    for n in 1..=3 {
        assert_eq!(app.create_hash(&format!("old {n}")).await, n);
    }
    app.clock.advance(Duration::from_secs(30 * 60)).await;
    assert_eq!(app.create_hash("angryMonkey").await, 4);
    app.clock.advance(Duration::from_secs(30 * 60)).await;
    for id in 1..=4 {
        assert_eq!(
            app.get_hash(&id.to_string()).await.status(),
            200,
            "{id} is an hour old at most"
        );
    }
    let stats = app.stats().await;

    app.clock.advance(Duration::from_millis(1)).await;
    for id in ["1", "2", "3"] {
        let gone = app.get_hash(id).await;
        assert_eq!(gone.status(), 404, "{id} is past its retention");
        assert!(
            gone.headers().get(header::RETRY_AFTER).is_none(),
            "{id} will not come back"
        );
    }
    assert_eq!(app.get_hash("4").await.text().await.unwrap(), ANGRY_MONKEY);
    // The purge runs on real time, every 100 ms here; wait for one.
    eventually(
        "the purge deleted the old rows",
        Duration::from_secs(10),
        async || (app.stored_ids().await == [4]).then_some(()),
    )
    .await;
    assert_eq!(app.stats().await, stats, "deleted hashes still count");

    // Even the newest row deleted, its id is not given again, also across a restart.
    assert_eq!(app.create_hash("new").await, 5);
    app.clock.advance(Duration::from_secs(2 * 3600)).await;
    eventually(
        "the purge deleted every row",
        Duration::from_secs(10),
        async || app.stored_ids().await.is_empty().then_some(()),
    )
    .await;
    assert_eq!(app.create_hash("newer").await, 6);
    let (dir, clock) = app.stop().await;
    let app = TestApp::spawn_in(dir, clock, &["--hash-retention", "1h"]).await;
    assert_eq!(app.create_hash("after restart").await, 7);
    assert_eq!(app.stats().await.0, 7);
    app.stop().await;
}

async fn a_purge_larger_than_one_step_deletes_every_old_hash(engine: Engine) {
    let app = TestApp::on_with(
        engine,
        &["--hash-retention", "1h", "--purge-every", "100ms"],
    )
    .await;
    let url = format!("{}/hash", app.hashes);
    let posts = (0..25).map(|batch| {
        let (client, url) = (app.client.clone(), url.clone());
        tokio::spawn(async move {
            for n in 0..100 {
                let response = client
                    .post(&url)
                    .form(&[("password", format!("{batch} {n}"))])
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        })
    });
    for post in posts.collect::<Vec<_>>() {
        post.await.unwrap();
    }
    app.clock.advance(Duration::from_secs(3600)).await;
    let kept = app.create_hash("kept").await;
    app.clock.advance(Duration::from_millis(1)).await;
    eventually(
        "2 500 old hashes were deleted",
        Duration::from_secs(20),
        async || (app.stored_ids().await == [kept]).then_some(()),
    )
    .await;
    assert_eq!(app.stats().await.0, 2_501);
    app.stop().await;
}

#[tokio::test]
async fn a_retention_no_longer_than_the_delay_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    for (flags, env) in [
        (&["--hash-retention", "5s"][..], &[][..]),
        (&["--hash-delay", "1m"], &[("WARDEN_HASH_RETENTION", "30s")]),
    ] {
        let mut args = vec!["serve", "--data-dir", &data_dir];
        args.extend_from_slice(flags);
        let (code, _, stderr) = run_cli(&args, env).await;
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("--hash-retention"), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
}
