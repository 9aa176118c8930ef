//! The discovery registry's contract over real HTTP, with a manual clock, on both engines (the
//! node's SQLite file and a shared Postgres).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::helpers::{self, START_MS, TestApp, eventually};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

use crate::helpers::{Engine, on_both_engines};

// The conformance suite: each of these runs on SQLite and on Postgres, from this one code.
on_both_engines!(
    first_heartbeat_creates_and_later_ones_refresh,
    meta_is_the_wrapped_object_or_the_whole_body,
    groups_list_live_instances_with_counts_and_times,
    delete_unregisters_and_an_unknown_instance_is_404,
    expiry_is_exact_at_the_ttl,
    concurrent_heartbeats_on_twenty_ids_leave_twenty_consistent_instances,
    instances_survive_a_restart,
    after_an_outage_live_instances_get_one_ttl_of_grace_and_expired_ones_stay_expired,
    the_purge_deletes_expired_rows_from_the_database,
    bad_input_is_a_4xx_and_stores_nothing,
    a_meta_over_8_kib_is_413_and_changes_nothing,
    a_meta_of_exactly_8_kib_as_stored_is_accepted_whatever_the_body_weighs,
    a_group_of_several_pages_lists_each_live_instance_once_in_id_order,
    more_groups_than_a_page_are_each_listed_once_with_their_live_counts,
);

impl TestApp {
    /// `POST /{group}/{id}` with `body` (None: no body); returns (status, JSON).
    async fn beat(&self, group: &str, id: &str, body: Option<&str>) -> (StatusCode, Value) {
        let mut request = self.client.post(format!("{}/{group}/{id}", self.registry));
        if let Some(body) = body {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.to_owned());
        }
        helpers::call(request).await
    }

    /// `METHOD {registry}{path}`; returns (status, JSON, or Null for a 204).
    async fn call(&self, method: Method, path: &str) -> (StatusCode, Value) {
        helpers::call(
            self.client
                .request(method, format!("{}{path}", self.registry)),
        )
        .await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path).await
    }

    /// Registers each `(group, id)` with an empty body, a few dozen at once so they share
    /// commits, asserting each is a new registration.
    async fn register_all(&self, instances: impl IntoIterator<Item = (String, String)>) {
        let instances: Vec<_> = instances.into_iter().collect();
        for some in instances.chunks(50) {
            let beats: Vec<_> = some
                .iter()
                .map(|(group, id)| {
                    let url = format!("{}/{group}/{id}", self.registry);
                    tokio::spawn(helpers::call(self.client.post(url)))
                })
                .collect();
            for beat in beats {
                let (status, instance) = beat.await.unwrap();
                assert_eq!(status, 201, "{instance}");
            }
        }
    }

    /// `GET path`, asserting a 200 JSON array; its elements.
    async fn list(&self, path: &str) -> Vec<Value> {
        let response = self
            .client
            .get(format!("{}{path}", self.registry))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body: Value = response.json().await.unwrap();
        body.as_array().unwrap().clone()
    }
}

/// A meta object whose compact JSON text is exactly `bytes` long.
fn meta_of_length(bytes: usize) -> String {
    let filler = bytes - r#"{"blob":""}"#.len();
    format!(r#"{{"blob":"{}"}}"#, "x".repeat(filler))
}

async fn first_heartbeat_creates_and_later_ones_refresh(engine: Engine) {
    let app = TestApp::on(engine).await;
    let (status, created) = app
        .beat("particle-detector", "e335", Some(r#"{"foo":1}"#))
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        created,
        json!({
            "id": "e335",
            "group": "particle-detector",
            "createdAt": START_MS,
            "updatedAt": START_MS,
            "meta": {"foo": 1},
        })
    );

    // Same millisecond: updatedAt still moves on, strictly.
    let (status, refreshed) = app.beat("particle-detector", "e335", None).await;
    assert_eq!(status, 200);
    assert_eq!(refreshed["createdAt"], START_MS);
    assert_eq!(refreshed["updatedAt"], START_MS + 1);
    assert_eq!(
        refreshed["meta"],
        json!({"foo": 1}),
        "no body keeps the meta"
    );

    app.clock.advance(Duration::from_secs(10)).await;
    let (status, later) = app.beat("particle-detector", "e335", None).await;
    assert_eq!(status, 200);
    assert_eq!(later["createdAt"], START_MS);
    assert_eq!(later["updatedAt"], START_MS + 10_000);

    let (status, read) = app.get("/particle-detector/e335").await;
    assert_eq!(status, 200);
    assert_eq!(read, later);
    app.stop().await;
}

async fn meta_is_the_wrapped_object_or_the_whole_body(engine: Engine) {
    let app = TestApp::on(engine).await;
    let (_, plain) = app.beat("g", "none", None).await;
    assert_eq!(plain["meta"], json!({}), "no body on create gives {{}}");

    let (_, wrapped) = app
        .beat(
            "g",
            "wrapped",
            Some(r#"{"meta":{"zone":"a"},"ignored":true}"#),
        )
        .await;
    assert_eq!(wrapped["meta"], json!({"zone": "a"}));

    let (_, whole) = app
        .beat("g", "whole", Some(r#"{"zone":"b","n":[1,2]}"#))
        .await;
    assert_eq!(whole["meta"], json!({"zone": "b", "n": [1, 2]}));

    let (_, not_object) = app.beat("g", "scalar", Some(r#"{"meta":"x","y":1}"#)).await;
    assert_eq!(not_object["meta"], json!({"meta": "x", "y": 1}));

    let (status, replaced) = app
        .beat("g", "whole", Some(r#"{"meta":{"zone":"c"}}"#))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        replaced["meta"],
        json!({"zone": "c"}),
        "a new meta replaces the old"
    );

    let (_, kept) = app.beat("g", "whole", Some("  ")).await;
    assert_eq!(kept["meta"], json!({"zone": "c"}), "a blank body keeps it");
    app.stop().await;
}

async fn groups_list_live_instances_with_counts_and_times(engine: Engine) {
    let app = TestApp::on(engine).await;
    app.beat("beta", "b1", None).await;
    app.clock.advance(Duration::from_secs(1)).await;
    app.beat("alpha", "a1", None).await;
    app.clock.advance(Duration::from_secs(1)).await;
    app.beat("alpha", "a2", None).await;
    app.clock.advance(Duration::from_secs(1)).await;
    app.beat("alpha", "a1", None).await;

    let (status, groups) = app.get("/").await;
    assert_eq!(status, 200);
    assert_eq!(
        groups,
        json!([
            {"group": "alpha", "instances": 2, "createdAt": START_MS + 1_000, "lastUpdatedAt": START_MS + 3_000},
            {"group": "beta", "instances": 1, "createdAt": START_MS, "lastUpdatedAt": START_MS},
        ])
    );

    let (status, alpha) = app.get("/alpha").await;
    assert_eq!(status, 200);
    let ids: Vec<_> = alpha
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].clone())
        .collect();
    assert_eq!(ids, [json!("a1"), json!("a2")]);
    assert!(
        alpha
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["group"] == "alpha")
    );

    assert_eq!(app.get("/gamma").await.0, 404, "a group with no instance");
    assert_eq!(app.get("/alpha/a3").await.0, 404, "an unknown instance");
    app.stop().await;
}

async fn delete_unregisters_and_an_unknown_instance_is_404(engine: Engine) {
    let app = TestApp::on(engine).await;
    app.beat("g", "one", None).await;
    app.beat("g", "two", None).await;
    let (status, body) = app.call(Method::DELETE, "/g/one").await;
    assert_eq!(status, 204);
    assert_eq!(body, Value::Null);
    assert_eq!(app.get("/g/one").await.0, 404);
    assert_eq!(app.call(Method::DELETE, "/g/one").await.0, 404);
    assert_eq!(app.call(Method::DELETE, "/nobody/here").await.0, 404);
    let (_, groups) = app.get("/").await;
    assert_eq!(groups[0]["instances"], 1);

    app.call(Method::DELETE, "/g/two").await;
    assert_eq!(
        app.get("/").await.1,
        json!([]),
        "an empty group is not listed"
    );
    assert_eq!(app.get("/g").await.0, 404);
    app.stop().await;
}

async fn expiry_is_exact_at_the_ttl(engine: Engine) {
    let app = TestApp::on(engine).await;
    app.beat("g", "old", Some(r#"{"v":1}"#)).await;
    app.clock.advance(Duration::from_secs(10)).await;
    app.beat("g", "young", None).await;

    // One millisecond before the TTL: still live everywhere.
    app.clock.set_ms(START_MS + 29_999).await;
    assert_eq!(app.get("/g/old").await.0, 200);
    assert_eq!(app.get("/").await.1[0]["instances"], 2);

    // At the TTL: gone from every read.
    app.clock.set_ms(START_MS + 30_000).await;
    assert_eq!(app.get("/g/old").await.0, 404);
    let (_, group) = app.get("/g").await;
    assert_eq!(group.as_array().unwrap().len(), 1);
    assert_eq!(group[0]["id"], "young");
    let (_, groups) = app.get("/").await;
    assert_eq!(groups[0]["instances"], 1);
    assert_eq!(
        groups[0]["createdAt"],
        START_MS + 10_000,
        "only live instances count"
    );
    assert_eq!(app.call(Method::DELETE, "/g/old").await.0, 404);

    // A heartbeat after expiry is a new registration.
    app.beat("g", "young", None).await; // keep it alive while we look at "old"
    let (status, again) = app.beat("g", "old", None).await;
    assert_eq!(status, 201);
    assert_eq!(again["createdAt"], START_MS + 30_000);
    assert_eq!(
        again["meta"],
        json!({}),
        "the expired instance's meta is not revived"
    );

    app.clock.set_ms(START_MS + 10_000 + 30_000 + 1).await;
    assert_eq!(
        app.get("/g/young").await.0,
        200,
        "refreshed at 30 000, live to 60 000"
    );
    app.stop().await;
}

async fn concurrent_heartbeats_on_twenty_ids_leave_twenty_consistent_instances(engine: Engine) {
    let app = TestApp::on(engine).await;
    let beats = (0..200).map(|n| {
        let client = app.client.clone();
        let url = format!("{}/swarm/node-{}", app.registry, n % 20);
        tokio::spawn(helpers::call(
            client
                .post(url)
                .header(header::CONTENT_TYPE, "application/json")
                .body(format!(r#"{{"n":{n}}}"#)),
        ))
    });
    let mut by_id: BTreeMap<String, Vec<(StatusCode, Value)>> = BTreeMap::new();
    for beat in beats.collect::<Vec<_>>() {
        let (status, instance) = beat.await.unwrap();
        by_id
            .entry(instance["id"].as_str().unwrap().to_owned())
            .or_default()
            .push((status, instance));
    }
    assert_eq!(by_id.len(), 20);
    for (id, replies) in &by_id {
        assert_eq!(replies.len(), 10, "{id}");
        let created = replies.iter().filter(|(status, _)| *status == 201).count();
        assert_eq!(created, 1, "{id} was created exactly once");
        let updated: BTreeSet<i64> = replies
            .iter()
            .map(|(_, instance)| instance["updatedAt"].as_i64().unwrap())
            .collect();
        assert_eq!(
            updated.len(),
            10,
            "{id}: every heartbeat got its own updatedAt"
        );
        let created_at: BTreeSet<i64> = replies
            .iter()
            .map(|(_, instance)| instance["createdAt"].as_i64().unwrap())
            .collect();
        assert_eq!(created_at.len(), 1, "{id}: createdAt never changed");
        let stored = app.get(&format!("/swarm/{id}")).await.1;
        assert_eq!(stored["updatedAt"].as_i64(), updated.last().copied());
    }
    let (_, swarm) = app.get("/swarm").await;
    assert_eq!(swarm.as_array().unwrap().len(), 20);
    app.stop().await;
}

async fn instances_survive_a_restart(engine: Engine) {
    let app = TestApp::on(engine).await;
    let (_, before) = app.beat("g", "keeper", Some(r#"{"k":"v"}"#)).await;
    let (dir, clock) = app.stop().await;
    let app = TestApp::spawn_in(dir, clock, &[]).await;
    assert_eq!(app.get("/g/keeper").await.1, before);
    let (status, _) = app.beat("g", "keeper", None).await;
    assert_eq!(status, 200, "still the same registration");
    app.stop().await;
}

async fn after_an_outage_live_instances_get_one_ttl_of_grace_and_expired_ones_stay_expired(
    engine: Engine,
) {
    let app = TestApp::on(engine).await;
    app.beat("g", "lapsed", None).await;
    app.clock.advance(Duration::from_secs(40)).await;
    app.beat("g", "steady", None).await; // "lapsed" expired 10 s ago
    app.beat("g", "sleeper", None).await;
    let (dir, clock) = app.stop().await; // warden was last alive at START + 40 s

    // A 60 s outage: "steady" and "sleeper" would have expired 30 s ago by the plain rule.
    clock.set_ms(START_MS + 100_000).await;
    let app = TestApp::spawn_in(dir, clock, &[]).await;
    assert_eq!(app.get("/g/sleeper").await.0, 200, "grace");
    assert_eq!(
        app.get("/g/lapsed").await.0,
        404,
        "expired before the outage"
    );
    app.clock.advance(Duration::from_secs(1)).await;
    let (status, steady) = app.beat("g", "steady", None).await;
    assert_eq!(
        status, 200,
        "a heartbeat during the grace refreshes, not re-creates"
    );
    assert_eq!(steady["createdAt"], START_MS + 40_000);

    // The grace lasts one TTL from the restart.
    app.clock.set_ms(START_MS + 100_000 + 29_999).await;
    assert_eq!(app.get("/g/sleeper").await.0, 200);
    app.clock.set_ms(START_MS + 100_000 + 30_000).await;
    let (_, group) = app.get("/g").await;
    let ids: Vec<&str> = group
        .as_array()
        .unwrap()
        .iter()
        .map(|instance| instance["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["steady"]);
    app.stop().await;
}

async fn the_purge_deletes_expired_rows_from_the_database(engine: Engine) {
    let app = TestApp::on_with(engine, &["--instance-ttl", "1ms", "--purge-every", "100ms"]).await;
    for id in ["a", "b", "c"] {
        app.beat("g", id, None).await;
    }
    app.clock.advance(Duration::from_millis(1)).await;
    app.beat("g", "fresh", None).await;
    let count = || app.stored::<String>("SELECT id FROM instances ORDER BY id");
    // The scheduler runs on real time, in whole seconds; wait for a purge.
    eventually(
        "the purge deleted the expired rows and kept the live one",
        Duration::from_secs(10),
        async || (count().await == ["fresh"]).then_some(()),
    )
    .await;
    app.stop().await;
}

async fn bad_input_is_a_4xx_and_stores_nothing(engine: Engine) {
    let app = TestApp::on(engine).await;
    let long_group = "g".repeat(65);
    let long_id = "i".repeat(129);
    let bad_names = [
        format!("/{long_group}/id"),
        format!("/g/{long_id}"),
        "/bad%20group/id".to_owned(),
        "/g/bad%2Fid".to_owned(),
        "/a:b/id".to_owned(),
        "/g/caf%C3%A9".to_owned(),
        "/g/%FF".to_owned(),
    ];
    for path in &bad_names {
        let (status, body) = app.call(Method::POST, path).await;
        assert_eq!(status, 400, "{path}");
        assert!(body["error"].is_string(), "{path}: {body}");
        assert_eq!(app.get(path).await.0, 400, "GET {path}");
    }
    for body in [
        "[1,2]",
        "5",
        "\"text\"",
        "null",
        "{\"unclosed\":",
        "not json",
    ] {
        let (status, error) = app.beat("g", "id", Some(body)).await;
        assert_eq!(status, 400, "{body}");
        assert!(error["error"].is_string());
    }
    let huge = format!(r#"{{"blob":"{}"}}"#, "x".repeat(100 * 1024));
    let (status, _) = app.beat("g", "id", Some(&huge)).await;
    assert_eq!(status, 413);

    let (status, _) = app.call(Method::PUT, "/g/id").await;
    assert_eq!(status, 405);
    let response = app
        .client
        .put(format!("{}/g/id", app.registry))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()[header::ALLOW], "POST,GET,HEAD,DELETE");

    assert_eq!(app.get("/").await.1, json!([]), "nothing was stored");
    app.stop().await;
}

async fn a_meta_over_8_kib_is_413_and_changes_nothing(engine: Engine) {
    let app = TestApp::on(engine).await;
    let over = meta_of_length(8 * 1024 + 1);
    let (status, error) = app.beat("g", "new", Some(&over)).await;
    assert_eq!(status, 413);
    assert!(
        error["error"].as_str().unwrap().contains("8192 bytes"),
        "the error says the limit: {error}"
    );
    assert_eq!(app.get("/g/new").await.0, 404, "no instance was created");
    assert_eq!(app.get("/").await.1, json!([]));

    let (_, before) = app.beat("g", "old", Some(r#"{"v":1}"#)).await;
    app.clock.advance(Duration::from_secs(1)).await;
    let wrapped = format!(r#"{{"meta":{over},"other":"ignored"}}"#);
    let (status, error) = app.beat("g", "old", Some(&wrapped)).await;
    assert_eq!(status, 413);
    assert!(error["error"].is_string(), "{error}");
    assert_eq!(
        app.get("/g/old").await.1,
        before,
        "the instance keeps its meta and its updatedAt"
    );
    app.stop().await;
}

async fn a_meta_of_exactly_8_kib_as_stored_is_accepted_whatever_the_body_weighs(engine: Engine) {
    let app = TestApp::on(engine).await;
    let exact = meta_of_length(8 * 1024);
    // Spaces and an ignored key make the body larger than the meta it stores.
    let body = format!(
        r#"{{ "meta" : {exact} , "padding" : "{}" }}"#,
        "p".repeat(4096)
    );
    let (status, created) = app.beat("g", "full", Some(&body)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["meta"].to_string(), exact);
    assert_eq!(app.get("/g/full").await.1, created);
    assert_eq!(app.list("/g").await, [created]);
    app.stop().await;
}

async fn a_group_of_several_pages_lists_each_live_instance_once_in_id_order(engine: Engine) {
    let app = TestApp::on(engine).await;
    let id = |n: &usize| format!("node-{n:04}");
    // Every third instance (by id) registers first, so it expires first: expired rows sit
    // all along the key range, on both sides of every page boundary.
    let (early, late): (Vec<usize>, Vec<usize>) = (0..300_usize).partition(|n| n.is_multiple_of(3));
    // Registered in reverse, so id order is not the order of arrival.
    app.register_all(early.iter().rev().map(|n| ("big".to_owned(), id(n))))
        .await;
    app.clock.advance(Duration::from_secs(20)).await;
    app.register_all(late.iter().rev().map(|n| ("big".to_owned(), id(n))))
        .await;

    let everyone: Vec<String> = (0..300).map(|n| id(&n)).collect();
    let listed = app.list("/big").await;
    let ids = |listed: &[Value]| -> Vec<String> {
        listed
            .iter()
            .map(|instance| instance["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&listed), everyone, "all 300, each once, by id");
    for at in [0, 99, 100, 101, 199, 200, 299] {
        let single = app.get(&format!("/big/{}", id(&at))).await.1;
        assert_eq!(
            listed[at], single,
            "the listing shows the instance as it is"
        );
    }

    // The early hundred expire: 200 left, two full pages of a hundred.
    app.clock.set_ms(START_MS + 30_000).await;
    assert_eq!(
        ids(&app.list("/big").await),
        late.iter().map(id).collect::<Vec<_>>()
    );

    // Half of the expired ones come back, in between the others: 250 live.
    let back: Vec<usize> = early
        .iter()
        .copied()
        .filter(|n| n.is_multiple_of(2))
        .collect();
    app.register_all(back.iter().map(|n| ("big".to_owned(), id(n))))
        .await;
    let mut live: Vec<usize> = late.iter().chain(&back).copied().collect();
    live.sort_unstable();
    let listed = app.list("/big").await;
    assert_eq!(ids(&listed), live.iter().map(id).collect::<Vec<_>>());
    assert_eq!(
        app.list("/").await,
        [
            json!({"group": "big", "instances": 250, "createdAt": START_MS + 20_000,
                "lastUpdatedAt": START_MS + 30_000})
        ]
    );

    // All of them expire: the group is gone again.
    app.clock.set_ms(START_MS + 60_000).await;
    assert_eq!(app.get("/big").await.0, 404);
    assert_eq!(app.get("/").await.1, json!([]));
    app.stop().await;
}

async fn more_groups_than_a_page_are_each_listed_once_with_their_live_counts(engine: Engine) {
    let app = TestApp::on(engine).await;
    let group = |k: &usize| format!("group-{k:04}");
    // 1 500 groups, 1 125 of them live: more than one page of a thousand. Groups that are a
    // multiple of 4 only ever have an instance that will have expired, so they sit between
    // the others; those that are a multiple of 5 have one such instance beside their live ones.
    let groups = 0..1500_usize;
    let stale = groups
        .clone()
        .filter(|k| k.is_multiple_of(4) || k.is_multiple_of(5));
    app.register_all(stale.map(|k| (group(&k), "stale".to_owned())))
        .await;
    app.clock.advance(Duration::from_secs(20)).await;
    let living: Vec<usize> = groups.filter(|k| !k.is_multiple_of(4)).collect();
    app.register_all(living.iter().map(|k| (group(k), "first".to_owned())))
        .await;
    app.clock.advance(Duration::from_secs(1)).await;
    let two = |k: &usize| k.is_multiple_of(3);
    app.register_all(
        living
            .iter()
            .filter(|k| two(k))
            .map(|k| (group(k), "second".to_owned())),
    )
    .await;
    app.clock.set_ms(START_MS + 30_000).await;

    let expected: Vec<Value> = living
        .iter()
        .map(|k| {
            json!({
                "group": group(k),
                "instances": if two(k) { 2 } else { 1 },
                "createdAt": START_MS + 20_000,
                "lastUpdatedAt": START_MS + if two(k) { 21_000 } else { 20_000 },
            })
        })
        .collect();
    assert_eq!(expected.len(), 1125);
    let listed = app.list("/").await;
    assert_eq!(listed.len(), expected.len(), "each live group once");
    if let Some(at) = (0..listed.len()).find(|&at| listed[at] != expected[at]) {
        panic!(
            "group {at} is listed as {}, not {}",
            listed[at], expected[at]
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_sub_second_purge_interval_keeps_purging_after_the_first_second() {
    let app = TestApp::spawn_with(&["--purge-every", "100ms"]).await;
    let alive = async || -> Option<i64> {
        sqlx::query_scalar("SELECT alive_at_ms FROM registry_alive WHERE id = 1")
            .fetch_optional(&app.db.reads)
            .await
            .unwrap()
    };
    // Each purge records the (manual) clock: three purges seen in turn span well over the
    // first second of the scheduler, where a truncated interval used to stop it.
    for round in 1..=3 {
        app.clock.advance(Duration::from_secs(60)).await;
        let now = app.clock.now_ms();
        eventually(
            &format!("purge number {round} records the time"),
            Duration::from_secs(10),
            async || (alive().await == Some(now)).then_some(()),
        )
        .await;
    }
    app.stop().await;
}
