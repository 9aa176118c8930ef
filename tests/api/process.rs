//! The real `warden` binary as an operator runs it: settings, signals, kill -9, the lock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::helpers::{
    self, ANGRY_MONKEY, WardenProcess, eventually, issue_token, process_is_gone, read_until,
    run_cli,
};
use tokio::process::Command;

/// Runs `warden ARGS` with `env` to completion; returns (exit code, stderr).
async fn run_warden(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let (code, _, stderr) = run_cli(args, env).await;
    (code, stderr)
}

/// Flags, environment, and the setting the error must name.
type BadSetting = (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[tokio::test]
async fn bad_settings_exit_2_with_one_line_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    let cases: [BadSetting; 9] = [
        (&["--hash-delay", "soon"], &[], "--hash-delay"),
        (&[], &[("WARDEN_HASH_DELAY", "5 parsecs")], "--hash-delay"),
        (&[], &[("WARDEN_SYNC", "sometimes")], "--sync"),
        (&["--hashes-addr", "localhost"], &[], "--hashes-addr"),
        (&["--job-output-limit", "lots"], &[], "--job-output-limit"),
        (&["--instance-ttl", "0s"], &[], "--instance-ttl"),
        (&["--drain-timeout", "0s"], &[], "--drain-timeout"),
        (&["--max-db-size", "0"], &[], "--max-db-size"),
        (&[], &[("WARDEN_JOB_RETENTION", "0s")], "--job-retention"),
    ];
    for (flags, env, setting) in cases {
        let mut args = vec!["serve", "--data-dir", &data_dir];
        args.extend_from_slice(flags);
        let (code, stderr) = run_warden(&args, env).await;
        assert_eq!(code, Some(2), "{flags:?} {env:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(setting), "{stderr} should name {setting}");
    }
    let (code, stderr) = run_warden(
        &["serve", "--jobs-tls", "off", "--jobs-addr", "0.0.0.0:1"],
        &[],
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--jobs-tls"), "{stderr}");
    assert!(
        !dir.path().join("warden.db").exists(),
        "nothing was created by a refused start"
    );
}

#[tokio::test]
async fn sigterm_drains_and_exits_0_and_a_repeat_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let mut warden = WardenProcess::start(dir.path(), &[]).await;
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/hash", warden.hashes))
        .form(&[("password", "angryMonkey")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "1");
    warden.signal("TERM").await;
    // A second signal during the drain changes nothing; the process may already be gone
    // (then there is nothing to signal, and never process group 0).
    if let Some(pid) = warden.child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    let code = warden.exit_code().await;
    let log = warden.log.lock().unwrap().join("\n");
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("stopped cleanly"), "{log}");
    // The WAL was checkpointed into the database file.
    let wal = dir.path().join("warden.db-wal");
    assert!(
        !wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0,
        "the WAL still holds data after a clean stop"
    );
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_hash_or_stat() {
    let dir = tempfile::tempdir().unwrap();
    let mut warden = WardenProcess::start(dir.path(), &["--hash-delay", "0s"]).await;
    let client = reqwest::Client::new();
    let acknowledged = Arc::new(Mutex::new(Vec::<(i64, String)>::new()));
    // Eight clients post as fast as they can until the server dies under them.
    let clients: Vec<_> = (0..8)
        .map(|worker| {
            let client = client.clone();
            let url = format!("{}/hash", warden.hashes);
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                for n in 0.. {
                    let password = if n % 2 == 0 {
                        "angryMonkey".to_owned()
                    } else {
                        format!("pw {worker} {n}")
                    };
                    let Ok(response) = client
                        .post(&url)
                        .form(&[("password", &password)])
                        .send()
                        .await
                    else {
                        return;
                    };
                    let Ok(id) = response.text().await.map(|body| body.parse::<i64>()) else {
                        return;
                    };
                    acknowledged.lock().unwrap().push((id.unwrap(), password));
                }
            })
        })
        .collect();
    eventually(
        "200 hashes were acknowledged",
        Duration::from_secs(30),
        async || (acknowledged.lock().unwrap().len() >= 200).then_some(()),
    )
    .await;
    warden.signal("KILL").await;
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(warden.exit_code().await, None, "killed by a signal");
    let acknowledged = acknowledged.lock().unwrap().clone();

    let warden = WardenProcess::start(dir.path(), &["--hash-delay", "0s"]).await;
    for (id, password) in &acknowledged {
        let response = client
            .get(format!("{}/hash/{id}", warden.hashes))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "acknowledged id {id} was lost");
        let hash = response.text().await.unwrap();
        assert_eq!(hash == ANGRY_MONKEY, password == "angryMonkey", "id {id}");
    }
    let (_, stats) = helpers::call(client.get(format!("{}/stats", warden.hashes))).await;
    let max_id = acknowledged.iter().map(|(id, _)| *id).max().unwrap();
    assert!(stats["total"].as_i64().unwrap() >= max_id);
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let mut warden = WardenProcess::start(dir.path(), &["--instance-ttl", "1h"]).await;
    let client = reqwest::Client::new();
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, i64)>::new()));
    let clients: Vec<_> = (0..8)
        .map(|worker| {
            let client = client.clone();
            let registry = warden.registry.clone();
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                for n in 0.. {
                    let path = format!("/fleet-{worker}/node-{}", n % 50);
                    let Ok(response) = client
                        .post(format!("{registry}{path}"))
                        .body(format!(r#"{{"n":{n}}}"#))
                        .send()
                        .await
                    else {
                        return;
                    };
                    let Ok(instance) = response.json::<serde_json::Value>().await else {
                        return;
                    };
                    let updated = instance["updatedAt"].as_i64().unwrap();
                    acknowledged.lock().unwrap().push((path, updated));
                }
            })
        })
        .collect();
    eventually(
        "300 heartbeats were acknowledged",
        Duration::from_secs(30),
        async || (acknowledged.lock().unwrap().len() >= 300).then_some(()),
    )
    .await;
    warden.signal("KILL").await;
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(warden.exit_code().await, None, "killed by a signal");

    // Every acknowledged heartbeat is there: each instance's stored updatedAt is at least
    // the latest one acknowledged for it.
    let mut latest = std::collections::HashMap::new();
    for (path, updated) in acknowledged.lock().unwrap().iter() {
        let entry = latest.entry(path.clone()).or_insert(*updated);
        *entry = (*entry).max(*updated);
    }
    let warden = WardenProcess::start(dir.path(), &["--instance-ttl", "1h"]).await;
    for (path, updated) in latest {
        let (_, stored) = helpers::call(client.get(format!("{}{path}", warden.registry))).await;
        assert!(
            stored["updatedAt"].as_i64().unwrap() >= updated,
            "{path}: acknowledged {updated}, stored {stored}"
        );
    }
}

#[tokio::test]
async fn a_second_serve_on_the_same_data_dir_exits_at_once_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = WardenProcess::start(dir.path(), &[]).await;
    let mut args = vec!["serve".to_owned()];
    args.extend(helpers::port_zero_flags(dir.path()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stderr) = run_warden(&args, &[]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("another warden process is already using data directory"),
        "{stderr}"
    );
    // The first is still serving.
    let health = reqwest::get(format!("{}/healthz", first.admin))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    first.signal("TERM").await;
    assert_eq!(first.exit_code().await, Some(0));
}

#[tokio::test]
async fn shutdown_over_http_stops_the_process_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut warden = WardenProcess::start(dir.path(), &[]).await;
    let response = reqwest::Client::new()
        .post(format!("{}/shutdown", warden.hashes))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(warden.exit_code().await, Some(0));
}

#[tokio::test]
async fn migrate_creates_the_database_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("fresh");
    let data_dir = data_dir.display().to_string();
    let (code, stderr) = run_warden(&["migrate", "--data-dir", &data_dir], &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(dir.path().join("fresh/warden.db").exists());
    // Running it again is a no-op.
    let (code, stderr) = run_warden(&["migrate", "--data-dir", &data_dir], &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn the_cli_starts_follows_inspects_and_stops_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let mut warden = WardenProcess::start(dir.path(), &[]).await;
    let token = issue_token(dir.path(), "carol", "user").await;
    let jobs_url = warden.jobs.clone();
    let env = [
        ("WARDEN_URL", jobs_url.as_str()),
        ("WARDEN_TOKEN", token.as_str()),
    ];

    let (code, started, stderr) = run_cli(
        &[
            "jobs", "start", "--name", "greeting", "--", "echo", "hi", "there",
        ],
        &env,
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let job: serde_json::Value = serde_json::from_str(&started).unwrap();
    let id = job["id"].as_str().unwrap();
    assert_eq!(job["name"], "greeting");

    let (code, logs, _) = run_cli(&["jobs", "logs", "-f", id], &env).await;
    assert_eq!(code, Some(0));
    assert_eq!(logs, "hi there\n");

    let (code, status, _) = run_cli(&["jobs", "status", id], &env).await;
    assert_eq!(code, Some(0));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["status"], "succeeded");

    let (code, list, _) = run_cli(&["jobs", "list"], &env).await;
    assert_eq!(code, Some(0));
    assert!(
        list.starts_with(id) && list.contains("succeeded") && list.contains("echo hi there"),
        "{list}"
    );

    let (code, _, stderr) = run_cli(&["jobs", "stop", id], &env).await;
    assert_eq!(code, Some(1), "a succeeded job cannot be stopped");
    assert!(
        stderr.contains("409") && stderr.contains("already ended"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1);

    let (code, _, stderr) = run_cli(
        &["jobs", "list"],
        &[("WARDEN_URL", &jobs_url), ("WARDEN_TOKEN", "nope")],
    )
    .await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("401"), "{stderr}");

    let (code, id, _) = run_cli(&["hash", "angryMonkey", "--url", &warden.hashes], &[]).await;
    assert_eq!((code, id.trim()), (Some(0), "1"));
    let (code, stats, _) = run_cli(&["stats", "--url", &warden.hashes], &[]).await;
    assert_eq!(code, Some(0));
    assert!(stats.contains("\"total\":1"), "{stats}");

    warden.signal("TERM").await;
    assert_eq!(warden.exit_code().await, Some(0));
    let (code, _, stderr) = run_cli(&["jobs", "list"], &env).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot reach"), "{stderr}");
}

#[tokio::test]
async fn after_kill_9_queued_jobs_run_and_running_ones_are_interrupted_and_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut warden = WardenProcess::start(dir.path(), &["--job-workers", "1"]).await;
    let token = issue_token(dir.path(), "dave", "user").await;
    let client = reqwest::Client::new();
    let start = |command: &'static str, args: Vec<String>| {
        let client = client.clone();
        let url = format!("{}/jobs", warden.jobs);
        let token = token.clone();
        async move {
            let (_, job) = helpers::call(
                client
                    .post(url)
                    .bearer_auth(token)
                    .json(&serde_json::json!({"command": command, "args": args})),
            )
            .await;
            job["id"].as_str().unwrap().to_owned()
        }
    };
    let running = start("sh", vec!["-c".into(), "echo $$; exec sleep 300".into()]).await;
    // Wait until it runs and has said its pid.
    let mut output = client
        .get(format!("{}/jobs/{running}/output?follow=true", warden.jobs))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let pid = read_until(&mut output, "\n").await.trim().to_owned();
    let area = helpers::job_area();
    let marker = area.path().join("queued-ran");
    let queued = start("touch", vec![marker.display().to_string()]).await;

    warden.signal("KILL").await;
    assert_eq!(warden.exit_code().await, None);
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the job outlived warden"
    );

    let warden = WardenProcess::start(dir.path(), &["--job-workers", "1"]).await;
    let job = |id: String| {
        let client = client.clone();
        let url = format!("{}/jobs/{id}", warden.jobs);
        let token = token.clone();
        async move { helpers::call(client.get(url).bearer_auth(token)).await.1 }
    };
    let interrupted = job(running.clone()).await;
    assert_eq!(interrupted["status"], "interrupted");
    assert!(
        process_is_gone(&pid),
        "the interrupted job's process {pid} is still running"
    );
    // The queued job runs after the restart.
    let done = client
        .get(format!("{}/jobs/{queued}/output?follow=true", warden.jobs))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), done.bytes())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job(queued).await["status"], "succeeded");
    assert!(marker.exists());
}
