//! Several warden nodes on one Postgres: what one node acknowledges every other serves at
//! once, ids and stats stay exact under concurrent nodes, a node killed mid-load loses nothing
//! it acknowledged, nodes with skewed clocks agree on expiry, and purges from every node at
//! once delete each expired row once.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use warden::clock::Clock;

use crate::helpers::{
    Engine, START_MS, TestApp, TestClock, WardenProcess, call, eventually, run_cli,
};

/// `count` wardens in-process on one fresh Postgres, each with its own data dir and every
/// node's clock the one `clock` (see [`TestClock`]).
async fn nodes(count: usize, flags: &[&str]) -> (TestClock, Vec<TestApp>) {
    let clock = TestClock::on(Engine::Postgres).await;
    let mut apps = Vec::new();
    for _ in 0..count {
        let dir = tempfile::tempdir().unwrap();
        apps.push(TestApp::spawn_in(dir, clock.clone(), flags).await);
    }
    (clock, apps)
}

async fn stop_all(apps: Vec<TestApp>) {
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test]
async fn a_heartbeat_to_one_node_is_listed_by_every_other_at_once() {
    let (_, apps) = nodes(3, &[]).await;
    let (status, registered) =
        call(apps[0].client.post(format!("{}/web/a-1", apps[0].registry))).await;
    assert_eq!(status, 201, "{registered}");
    for (n, app) in apps.iter().enumerate() {
        let (status, instance) = call(app.client.get(format!("{}/web/a-1", app.registry))).await;
        assert_eq!(status, 200, "node {n}: {instance}");
        assert_eq!(instance, registered, "node {n}");
        let (status, group) = call(app.client.get(format!("{}/web", app.registry))).await;
        assert_eq!(status, 200, "node {n}: {group}");
        assert_eq!(group, Value::Array(vec![registered.clone()]), "node {n}");
    }
    // A refresh through another node is a refresh, not a new registration.
    let (status, refreshed) =
        call(apps[2].client.post(format!("{}/web/a-1", apps[2].registry))).await;
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(refreshed["createdAt"], registered["createdAt"]);
    assert!(refreshed["updatedAt"].as_i64() > registered["updatedAt"].as_i64());
    stop_all(apps).await;
}

#[tokio::test]
async fn three_hundred_posts_over_three_nodes_get_distinct_ids_and_every_node_counts_them() {
    let (_, apps) = nodes(3, &[]).await;
    let posts: Vec<_> = (0..300)
        .map(|n| {
            let app = &apps[n % 3];
            let (client, url) = (app.client.clone(), format!("{}/hash", app.hashes));
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .form(&[("password", format!("password {n}"))])
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                response.text().await.unwrap().parse::<i64>().unwrap()
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for post in posts {
        assert!(ids.insert(post.await.unwrap()), "an id was given twice");
    }
    assert_eq!(ids.len(), 300);
    for (n, app) in apps.iter().enumerate() {
        assert_eq!(app.stats().await.0, 300, "node {n}'s /stats");
    }
    let stored: Vec<i64> = apps[0].stored("SELECT id FROM hashes ORDER BY id").await;
    assert_eq!(stored, ids.into_iter().collect::<Vec<_>>());
    stop_all(apps).await;
}

#[tokio::test]
async fn nodes_whose_clocks_are_ten_seconds_apart_agree_on_expiry_at_the_ttl() {
    let clock = TestClock::on(Engine::Postgres).await;
    let ahead = TestClock {
        node: Clock::manual(START_MS + 10_000),
        shared: clock.shared.clone(),
    };
    let flags = ["--instance-ttl", "5s"];
    let a = TestApp::spawn_in(tempfile::tempdir().unwrap(), clock.clone(), &flags).await;
    // B's own clock is 10 s ahead and never moves: past A's TTL already, were it used.
    let b = TestApp::spawn_in(tempfile::tempdir().unwrap(), ahead, &flags).await;
    let (status, _) = call(a.client.post(format!("{}/web/a-1", a.registry))).await;
    assert_eq!(status, 201);
    let status_on = async |app: &TestApp| {
        call(app.client.get(format!("{}/web/a-1", app.registry)))
            .await
            .0
            .as_u16()
    };
    clock.set_ms(START_MS + 4_999).await;
    assert_eq!((status_on(&a).await, status_on(&b).await), (200, 200));
    clock.set_ms(START_MS + 5_000).await;
    assert_eq!((status_on(&a).await, status_on(&b).await), (404, 404));
    // And a hash is ready on both at the same instant.
    clock.set_ms(START_MS + 100_000).await;
    let id = b.create_hash("angryMonkey").await.to_string();
    clock.set_ms(START_MS + 104_999).await;
    let hash_on = async |app: &TestApp| app.get_hash(&id).await.status().as_u16();
    assert_eq!((hash_on(&a).await, hash_on(&b).await), (404, 404));
    clock.set_ms(START_MS + 105_000).await;
    assert_eq!((hash_on(&a).await, hash_on(&b).await), (200, 200));
    a.stop().await;
    b.stop().await;
}

/// `warden_registry_purged_instances_total` on the node whose admin listener is `admin`.
async fn purged_on(client: &reqwest::Client, admin: &str) -> u64 {
    let text = client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("warden_registry_purged_instances_total "))
        .map_or(0, |count| count.trim().parse().unwrap())
}

#[tokio::test]
async fn purges_from_three_nodes_at_once_delete_each_expired_row_once_and_never_a_live_one() {
    let (clock, apps) = nodes(3, &["--instance-ttl", "10s", "--purge-every", "100ms"]).await;
    // 3 000 instances (three purge chunks), then a tenth of them beat again past the TTL.
    let beats = |ids: Vec<usize>| {
        let apps = &apps;
        async move {
            for some in ids.chunks(100) {
                let sent: Vec<_> = some
                    .iter()
                    .map(|&n| {
                        let app = &apps[n % 3];
                        call(app.client.post(format!("{}/g{}/i{n}", app.registry, n % 7)))
                    })
                    .collect();
                for beat in futures_util::future::join_all(sent).await {
                    assert!(beat.0.is_success(), "{beat:?}");
                }
            }
        }
    };
    beats((0..3_000).collect()).await;
    clock.advance(Duration::from_secs(9)).await;
    let live: Vec<usize> = (0..3_000).step_by(10).collect();
    beats(live.clone()).await;
    clock.advance(Duration::from_secs(1)).await;
    // The schedulers run on real time, in whole seconds; wait until the expired rows are gone.
    eventually(
        "the purges deleted every expired row",
        Duration::from_secs(20),
        async || {
            (apps[0]
                .stored::<i64>("SELECT count(*) FROM instances")
                .await
                == [300])
            .then_some(())
        },
    )
    .await;
    let kept: Vec<String> = apps[0]
        .stored("SELECT id FROM instances ORDER BY id COLLATE \"C\"")
        .await;
    let mut expected: Vec<String> = live.iter().map(|n| format!("i{n}")).collect();
    expected.sort();
    assert_eq!(kept, expected, "exactly the live instances are left");
    let mut purged = 0;
    for app in &apps {
        purged += purged_on(&app.client, &app.admin).await;
    }
    assert_eq!(
        purged, 2_700,
        "each expired row was deleted, and counted, once"
    );
    stop_all(apps).await;
}

#[tokio::test]
async fn a_node_killed_mid_load_loses_nothing_it_acknowledged() {
    let clock = TestClock::on(Engine::Postgres).await;
    let url = clock.shared.clone().unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let flags = ["--database", url.as_str(), "--no-jobs"];
    let doomed = WardenProcess::start(dirs[0].path(), &flags).await;
    let survivor = WardenProcess::start(dirs[1].path(), &flags).await;
    let client = reqwest::Client::new();
    // Four clients post as fast as they can to the doomed node, and record each id it gives.
    let load: Vec<_> = (0..4)
        .map(|client_no| {
            let (client, url) = (client.clone(), format!("{}/hash", doomed.hashes));
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for n in 0.. {
                    let sent = client
                        .post(&url)
                        .form(&[("password", format!("{client_no} {n}"))])
                        .send()
                        .await;
                    let Ok(response) = sent else { break };
                    if response.status() != 200 {
                        break;
                    }
                    let Ok(id) = response.text().await else { break };
                    acknowledged.push(id.parse::<i64>().unwrap());
                }
                acknowledged
            })
        })
        .collect();
    // Kill it once it has acknowledged a good many.
    eventually(
        "the doomed node acknowledged 200 hashes",
        Duration::from_secs(30),
        async || {
            let total = survivor_stats(&client, &survivor.hashes).await;
            (total >= 200).then_some(())
        },
    )
    .await;
    doomed.signal("KILL").await;
    let mut acknowledged = BTreeSet::new();
    for clients in load {
        acknowledged.extend(clients.await.unwrap());
    }
    assert!(acknowledged.len() >= 200, "{}", acknowledged.len());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let stored: BTreeSet<i64> = sqlx::query_scalar("SELECT id FROM hashes")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    // The survivor counts every stored hash, and goes on serving.
    assert_eq!(
        survivor_stats(&client, &survivor.hashes).await,
        i64::try_from(stored.len()).unwrap()
    );
    let response = client
        .post(format!("{}/hash", survivor.hashes))
        .form(&[("password", "after")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    pool.close().await;
}

async fn survivor_stats(client: &reqwest::Client, hashes: &str) -> i64 {
    let (_, stats) = call(client.get(format!("{hashes}/stats"))).await;
    stats["total"].as_i64().unwrap()
}

#[tokio::test]
async fn migrate_applies_the_postgres_migrations_and_serve_refuses_a_newer_schema() {
    let url = crate::pg::fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    let (code, _, stderr) = run_cli(&["migrate", "--database", &url], &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("the shared database is up to date"),
        "{stderr}"
    );
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for table in [
        "hash_stats",
        "hashes",
        "instances",
        "registry_grace",
        "warden_clock",
    ] {
        assert!(
            tables.iter().any(|name| name == table),
            "{table}: {tables:?}"
        );
    }
    // Again: nothing left to apply, and no harm.
    let (code, _, stderr) = run_cli(&["migrate", "--database", &url], &[]).await;
    assert_eq!(code, Some(0), "{stderr}");

    // A migration this warden does not know: a newer warden has been here.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (29991231000000, 'from the future', true, '\\x00', 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (code, _, stderr) = run_cli(
        &[
            "serve",
            "--data-dir",
            &data_dir,
            "--database",
            &url,
            "--no-jobs",
        ],
        &[],
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("newer than this warden"), "{stderr}");
    pool.close().await;
}

#[tokio::test]
async fn a_database_url_that_is_not_postgres_is_refused_without_repeating_it() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    let url = "mysql://warden:hunter2@db.example/warden";
    for args in [
        vec!["serve", "--data-dir", &data_dir, "--database", url],
        vec!["migrate", "--database", url],
    ] {
        let (code, _, stderr) = run_cli(&args, &[]).await;
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("--database"), "{stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "the password was repeated: {stderr}"
        );
    }
    // Nor does --help show the variable's value.
    let (code, stdout, _) = run_cli(&["serve", "--help"], &[("WARDEN_DATABASE_URL", url)]).await;
    assert_eq!(code, Some(0));
    assert!(stdout.contains("--database"), "{stdout}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
}

#[tokio::test]
async fn healthz_reports_the_shared_database_and_writes_recover_once_it_is_back() {
    let app = TestApp::on(Engine::Postgres).await;
    let url = app.clock.shared.clone().unwrap();
    let healthz = async || call(app.client.get(format!("{}/healthz", app.admin))).await;
    let (status, health) = healthz().await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["database"]["engine"], "postgres", "{health}");
    assert_eq!(health["database"]["reachable"], true, "{health}");
    assert!(
        health["database"]["roundTripUs"].as_u64().is_some(),
        "{health}"
    );

    // The database refuses this node: connections cut, and no new ones.
    let name = url.rsplit('/').next().unwrap().to_owned();
    let admin = crate::pg::admin_url();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    let cut = |allow: bool| {
        let name = name.clone();
        async move {
            vec![
                format!("ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS {allow}"),
                format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                ),
            ]
        }
    };
    for sql in cut(false).await {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let (status, health) = healthz().await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["database"]["reachable"], false, "{health}");
    let beat = app
        .client
        .post(format!("{}/web/a-1", app.registry))
        .send()
        .await
        .unwrap();
    assert_eq!(beat.status(), 503);
    assert!(beat.headers().contains_key("retry-after"));
    let hash = app.post_password("angryMonkey").await;
    assert_eq!(hash.status(), 503);

    // Back: the same node serves again, without a restart.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS true"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    eventually(
        "heartbeats commit again",
        Duration::from_secs(10),
        async || {
            let (status, _) = call(app.client.post(format!("{}/web/a-1", app.registry))).await;
            (status == 201).then_some(())
        },
    )
    .await;
    assert_eq!(app.create_hash("angryMonkey").await, 1);
    eventually(
        "healthz is well again",
        Duration::from_secs(10),
        async || (healthz().await.0 == 200).then_some(()),
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_statement_held_past_the_timeout_is_a_503_and_the_next_one_commits() {
    let app = TestApp::on_with(Engine::Postgres, &["--database-statement-timeout", "300ms"]).await;
    let beat = async || {
        app.client
            .post(format!("{}/web/a-1", app.registry))
            .send()
            .await
            .unwrap()
    };
    assert_eq!(beat().await.status(), 201);
    // Another session holds the instance's row: the upsert waits for its lock.
    let url = app.clock.shared.clone().unwrap();
    let mut holder = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let mut held = sqlx::Connection::begin(&mut holder).await.unwrap();
    sqlx::query("SELECT 1 FROM instances WHERE id = 'a-1' FOR UPDATE")
        .execute(&mut *held)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let refused = beat().await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    held.rollback().await.unwrap();
    assert_eq!(beat().await.status(), 200, "the row is free again");
    app.stop().await;
}

#[tokio::test]
async fn the_sslmode_setting_reaches_the_connection() {
    // The test cluster speaks no TLS: `require` must then refuse to start, and `disable` work.
    let url = crate::pg::fresh_database().await;
    let (code, _, stderr) = run_cli(
        &[
            "migrate",
            "--database",
            &url,
            "--database-sslmode",
            "require",
        ],
        &[],
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot connect to the database"),
        "{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("tls") || stderr.contains("SSL"),
        "{stderr}"
    );
    let (code, _, stderr) = run_cli(
        &["migrate", "--database", &url],
        &[("WARDEN_DATABASE_SSLMODE", "disable")],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
}
