//! Jobs are contained: they run as an account that cannot read warden's data dir, with a
//! clean environment, and every process a job starts ends with it (its cgroup, or its marker
//! where it gets none), within the limits the server and the request set.
//!
//! Tests that need root (switching account, making cgroups) print `skipped:` and pass when
//! the tests do not run as root; those that need a cgroup per job print `skipped:` where the
//! host gives warden none. `/proc` is walked to see which processes are left.

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use warden::security::principal::Role;

use crate::helpers::{
    self, TestApp, WardenProcess, call, eventually, issue_token, process_is_gone, run_cli,
};
use crate::jobs::User;

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Whether the test may go on as root; prints why not.
fn root_or_skip(test: &str) -> bool {
    if !is_root() {
        eprintln!("skipped: {test} needs root (to run jobs as another account)");
    }
    is_root()
}

/// The pids of live processes whose command line is exactly `args`.
pub fn processes_running(args: &[&str]) -> Vec<String> {
    let wanted: Vec<u8> = args
        .iter()
        .flat_map(|arg| [arg.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|pid| pid.bytes().all(|byte| byte.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|line| line == wanted)
        })
        .filter(|pid| !process_is_gone(pid))
        .collect()
}

/// Waits until no process runs `args`.
pub async fn all_gone(what: &str, args: &[&str]) {
    eventually(what, Duration::from_secs(10), async || {
        processes_running(args).is_empty().then_some(())
    })
    .await;
}

/// Waits until a process runs `args` (it may still be exec'ing into it).
async fn running(what: &str, args: &[&str]) {
    eventually(what, Duration::from_secs(10), async || {
        (!processes_running(args).is_empty()).then_some(())
    })
    .await;
}

/// What `/healthz` says of jobs' isolation.
async fn isolation(app: &TestApp) -> Value {
    let (_, health) = call(app.client.get(format!("{}/healthz", app.admin))).await;
    health["jobs"].clone()
}

/// A warden with `flags` whose jobs get a cgroup each; `None` (printed) where the host gives
/// warden none.
async fn contained(test: &str, flags: &[&str]) -> Option<TestApp> {
    if !root_or_skip(test) {
        return None;
    }
    let app = TestApp::spawn_with(flags).await;
    let jobs = isolation(&app).await;
    if jobs["containment"] != "cgroup" {
        eprintln!(
            "skipped: {test} needs a cgroup per job: {}",
            jobs["noCgroups"]
        );
        app.stop().await;
        return None;
    }
    Some(app)
}

/// Follows job `id` of `user` until its output holds `wanted`; returns what was read.
pub async fn output_until(app: &TestApp, user: &User, id: &str, wanted: &str) -> String {
    let mut output = app
        .client
        .get(format!("{}/jobs/{id}/output?follow=true", app.jobs))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    helpers::read_until(&mut output, wanted).await
}

/// Queues `body` as `user`; returns the job id.
async fn queue(user: &User, body: Value) -> String {
    let (status, job) = user.call(Method::POST, "/jobs", Some(body)).await;
    assert_eq!(status, 201, "{job}");
    job["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_job_cannot_read_the_database_the_keys_or_the_logs() {
    if !root_or_skip("a_job_cannot_read_the_database_the_keys_or_the_logs") {
        return;
    }
    // The real binary: it writes logs, as an operator's warden does.
    let dir = tempfile::tempdir().unwrap();
    let warden = WardenProcess::start(dir.path(), &[]).await;
    let data = dir.path().display().to_string();
    let token = issue_token(dir.path(), "alice", "user").await;
    // The dev PKI, with a user's key beside the CA's.
    let (code, _, stderr) =
        run_cli(&["pki", "issue-client", "bob", "--data-dir", &data], &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let secrets = [
        dir.path().join("warden.db"),
        dir.path().join("warden.db-wal"),
        dir.path().join("pki/clients/bob.key"),
        dir.path().join("pki/ca.key"),
        dir.path().join("logs"),
    ];
    for secret in &secrets {
        assert!(
            secret.exists(),
            "{} should exist for the test to mean anything",
            secret.display()
        );
    }
    // One pipe for both, so that the uid comes first whatever the order the pipes are read in.
    let script = r#"exec 2>&1; id -u; for f in "$@"; do cat "$f" || failed=1; done; ls "$(dirname "$1")" || failed=1; exit ${failed:-0}"#;
    let mut args = vec!["-c".to_owned(), script.to_owned(), "sh".to_owned()];
    args.extend(secrets.iter().map(|secret| secret.display().to_string()));
    let client = reqwest::Client::new();
    let (status, job) = call(
        client
            .post(format!("{}/jobs", warden.jobs))
            .bearer_auth(&token)
            .json(&json!({"command": "sh", "args": args})),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap();
    let output = client
        .get(format!("{}/jobs/{id}/output?follow=true", warden.jobs))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap().uid;
    assert_eq!(
        output.lines().next(),
        Some(nobody.to_string().as_str()),
        "{output}"
    );
    assert_eq!(
        output.matches("Permission denied").count(),
        secrets.len() + 1,
        "every read is refused: {output}"
    );
    let (_, job) = call(
        client
            .get(format!("{}/jobs/{id}", warden.jobs))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["exitCode"], 1);
    drop(warden);
}

#[tokio::test]
async fn a_job_has_a_clean_environment_plus_its_env_in_its_cwd() {
    let app = TestApp::spawn().await;
    let alice = User::new(&app, "alice", Role::User).await;
    let cwd = app.work.path().display().to_string();
    let id = queue(
        &alice,
        json!({
            "command": "sh",
            "args": ["-c", "pwd; env"],
            "env": {"GREETING": "hello world", "EMPTY": ""},
            "cwd": cwd,
        }),
    )
    .await;
    let output = String::from_utf8(alice.wait(&id).await).unwrap();
    let mut lines = output.lines();
    assert_eq!(lines.next(), Some(cwd.as_str()));
    let env: Vec<&str> = lines.collect();
    assert!(env.contains(&"GREETING=hello world"), "{output}");
    assert!(env.contains(&"EMPTY="), "{output}");
    assert!(env.iter().any(|line| line.starts_with("PATH=")), "{output}");
    assert!(env.iter().any(|line| line.starts_with("HOME=")), "{output}");
    // Nothing of warden's own environment but what the allow-list names (the shell adds
    // PWD itself).
    let names: Vec<&str> = env
        .iter()
        .filter_map(|line| line.split_once('='))
        .map(|(name, _)| name)
        .collect();
    for name in &names {
        assert!(
            [
                "PATH", "HOME", "LANG", "GREETING", "EMPTY", "PWD", "OLDPWD", "SHLVL", "_"
            ]
            .contains(name)
                || (!is_root() && name.starts_with("WARDEN_JOB")),
            "{name} leaked into the job's environment: {output}"
        );
    }
    let job = alice.job(&id).await;
    assert_eq!(job["env"], json!({"GREETING": "hello world", "EMPTY": ""}));
    assert_eq!(job["cwd"], cwd);
    assert_eq!(
        job["limits"],
        json!({"memoryBytes": null, "cpu": null, "pids": null, "timeoutMs": null})
    );
    // With neither, the job runs in `/`.
    let id = alice.start("pwd", &[]).await;
    assert_eq!(alice.wait(&id).await, b"/\n");
    assert_eq!(alice.job(&id).await["cwd"], "/");
    app.stop().await;
}

#[tokio::test]
async fn a_refused_env_cwd_or_limit_is_a_400_and_queues_nothing() {
    let app = TestApp::spawn_with(&["--job-timeout", "10s"]).await;
    let alice = User::new(&app, "alice", Role::User).await;
    let data = app.dir.path().display().to_string();
    let file = app.work.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let into_data = app.work.path().join("into-data");
    std::os::unix::fs::symlink(app.dir.path().join("pki"), &into_data).unwrap();
    let refused = [
        json!({"env": {"LD_PRELOAD": "/tmp/evil.so"}}),
        json!({"env": {"LD_LIBRARY_PATH": "/tmp"}}),
        json!({"env": {"WARDEN_TOKEN": "x"}}),
        json!({"env": {"WARDEN_JOB": "x"}}),
        json!({"env": {"GCONV_PATH": "/tmp"}}),
        json!({"env": {"1ABC": "x"}}),
        json!({"env": {"A=B": "x"}}),
        json!({"env": {"": "x"}}),
        json!({"env": {"A": "nul\u{0}byte"}}),
        json!({"env": {"A": 1}}),
        json!({"env": "A=1"}),
        json!({"cwd": "relative/dir"}),
        json!({"cwd": "/no/such/dir"}),
        json!({"cwd": file.display().to_string()}),
        json!({"cwd": data}),
        json!({"cwd": format!("{data}/pki")}),
        json!({"cwd": into_data.display().to_string()}),
        json!({"cwd": 7}),
        json!({"limits": {"timeoutMs": 10_001}}),
        json!({"limits": {"timeoutMs": 0}}),
        json!({"limits": {"timeoutMs": -5}}),
        json!({"limits": {"pids": 0}}),
        json!({"limits": {"pids": 4_194_305}}),
        json!({"limits": {"memoryBytes": u64::MAX}}),
        json!({"limits": {"cpu": 0}}),
        json!({"limits": {"cpu": 2000}}),
        json!({"limits": {"memory": 1000}}),
        json!({"limits": 5}),
    ];
    for extra in refused {
        let mut body = json!({"command": "true"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, error) = alice.call(Method::POST, "/jobs", Some(body.clone())).await;
        assert_eq!(status, 400, "{body} → {error}");
        assert!(
            error["error"].as_str().is_some_and(|text| !text.is_empty()),
            "{error}"
        );
    }
    // A limit this host cannot enforce is refused, not ignored.
    let (_, listed) = alice.call(Method::GET, "/jobs", None).await;
    assert_eq!(listed, json!([]), "nothing was queued");
    app.stop().await;

    let app = TestApp::spawn_with(&["--job-cgroups", "off"]).await;
    let alice = User::new(&app, "alice", Role::User).await;
    for limits in [
        json!({"memoryBytes": 1 << 20}),
        json!({"cpu": 0.5}),
        json!({"pids": 8}),
    ] {
        let body = json!({"command": "true", "limits": limits});
        let (status, error) = alice.call(Method::POST, "/jobs", Some(body)).await;
        assert_eq!(status, 400, "{error}");
        assert!(
            error["error"]
                .as_str()
                .unwrap()
                .contains("cannot be enforced"),
            "{error}"
        );
    }
    // The timeout is warden's own: it is there without a cgroup.
    let body = json!({"command": "true", "limits": {"timeoutMs": 60_000}});
    let (status, job) = alice.call(Method::POST, "/jobs", Some(body)).await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["limits"]["timeoutMs"], 60_000);
    app.stop().await;
}

/// Starts, as `alice`, a job that leaves a `setsid` child and a double-forked grandchild
/// (`sleep` for `base` and `base + 1` s), then runs `last` (a command line for `exec`, or
/// nothing); returns its id once it has started them.
async fn job_with_escapees(app: &TestApp, alice: &User, base: u32, last: &str) -> String {
    let script = format!(
        "setsid sleep {base} & (sleep {} &); sleep 0.05; echo started; {last}",
        base + 1
    );
    let id = alice.start("sh", &["-c", &script]).await;
    output_until(app, alice, &id, "started").await;
    running("the setsid child runs", &["sleep", &base.to_string()]).await;
    running("the grandchild runs", &["sleep", &(base + 1).to_string()]).await;
    id
}

#[tokio::test]
async fn setsid_and_double_forked_processes_end_with_their_job_in_a_cgroup_or_by_marker() {
    // Without cgroups (`off`) the marker finds them; with (`auto`) the cgroup holds them.
    for (cgroups, base) in [("auto", 41_000), ("off", 42_000)] {
        if cgroups == "auto" && !is_root() {
            eprintln!("skipped: cgroup containment needs root");
            continue;
        }
        let app = TestApp::spawn_with(&["--job-cgroups", cgroups, "--job-stop-grace", "1s"]).await;
        let alice = User::new(&app, "alice", Role::User).await;

        // A job that ends by itself (once the test has seen them run) takes them with it.
        let gate = app.work.path().join("end-now");
        let wait_for_gate = format!("while [ ! -e '{}' ]; do sleep 0.01; done", gate.display());
        let id = job_with_escapees(&app, &alice, base, &wait_for_gate).await;
        std::fs::write(&gate, b"").unwrap();
        alice.wait(&id).await;
        let job = alice.job(&id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        for sleep in [base, base + 1] {
            assert!(
                processes_running(&["sleep", &sleep.to_string()]).is_empty(),
                "{cgroups}: sleep {sleep} outlived its job"
            );
        }

        // A stopped job too, without waiting out the output's drain.
        let id =
            job_with_escapees(&app, &alice, base + 2, &format!("exec sleep {}", base + 4)).await;
        let (status, stopped) = alice
            .call(Method::POST, &format!("/jobs/{id}/stop"), None)
            .await;
        assert_eq!(status, 200, "{stopped}");
        let job = alice.job(&id).await;
        assert_eq!(job["status"], "stopped", "{job}");
        assert_eq!(
            job["outputTruncated"], false,
            "every pipe closed with the job: {job}"
        );
        for sleep in [base + 2, base + 3, base + 4] {
            assert!(
                processes_running(&["sleep", &sleep.to_string()]).is_empty(),
                "{cgroups}: sleep {sleep} outlived its stop"
            );
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn what_a_job_left_running_is_killed_when_warden_restarts_after_kill_9() {
    for (cgroups, base) in [("auto", 43_000), ("off", 43_100)] {
        if cgroups == "auto" && !is_root() {
            eprintln!("skipped: cgroup containment needs root");
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let flags = ["--job-cgroups", cgroups];
        let mut warden = WardenProcess::start(dir.path(), &flags).await;
        let token = issue_token(dir.path(), "alice", "user").await;
        let client = reqwest::Client::new();
        let script = format!(
            "setsid sleep {base} & (sleep {} &); echo started; exec sleep {}",
            base + 1,
            base + 2
        );
        let (status, job) = call(
            client
                .post(format!("{}/jobs", warden.jobs))
                .bearer_auth(&token)
                .json(&json!({"command": "sh", "args": ["-c", script]})),
        )
        .await;
        assert_eq!(status, 201, "{job}");
        let id = job["id"].as_str().unwrap().to_owned();
        let mut output = client
            .get(format!("{}/jobs/{id}/output?follow=true", warden.jobs))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        helpers::read_until(&mut output, "started").await;
        let sleeps: Vec<String> = (base..base + 3).map(|sleep| sleep.to_string()).collect();
        for sleep in &sleeps {
            running(&format!("{cgroups}: sleep {sleep} runs"), &["sleep", sleep]).await;
        }

        warden.signal("KILL").await;
        assert_eq!(warden.exit_code().await, None);
        for sleep in &sleeps {
            assert!(
                !processes_running(&["sleep", sleep]).is_empty(),
                "{cgroups}: sleep {sleep} outlived warden, as it must for this test"
            );
        }
        let warden = WardenProcess::start(dir.path(), &flags).await;
        for sleep in &sleeps {
            all_gone(
                &format!("{cgroups}: sleep {sleep} killed at the restart"),
                &["sleep", sleep],
            )
            .await;
        }
        let (_, job) = call(
            client
                .get(format!("{}/jobs/{id}", warden.jobs))
                .bearer_auth(&token),
        )
        .await;
        assert_eq!(job["status"], "interrupted");
        // Drained, not killed: warden removes its (empty) cgroup directories as it exits.
        let mut warden = warden;
        warden.signal("TERM").await;
        assert_eq!(warden.exit_code().await, Some(0));
    }
}

#[tokio::test]
async fn a_job_past_its_memory_limit_fails_out_of_memory() {
    let Some(app) = contained(
        "a_job_past_its_memory_limit_fails_out_of_memory",
        &["--job-memory", "32MiB"],
    )
    .await
    else {
        return;
    };
    let alice = User::new(&app, "alice", Role::User).await;
    // 256 MiB written, not just reserved.
    let id = alice
        .start("python3", &["-c", "b = b'x' * (256 << 20)"])
        .await;
    alice.wait(&id).await;
    let job = alice.job(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["signal"], 9, "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("out of memory"),
        "{job}"
    );
    assert_eq!(job["limits"]["memoryBytes"], 32 << 20);
    // Within the limit, the same program succeeds.
    let id = alice
        .start("python3", &["-c", "b = b'x' * (4 << 20)"])
        .await;
    alice.wait(&id).await;
    assert_eq!(alice.job(&id).await["status"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn a_fork_loop_stops_at_the_pids_limit() {
    let Some(app) = contained("a_fork_loop_stops_at_the_pids_limit", &["--job-pids", "8"]).await
    else {
        return;
    };
    let alice = User::new(&app, "alice", Role::User).await;
    let id = alice
        .start(
            "sh",
            &[
                "-c",
                "i=0; while [ $i -lt 100 ]; do sleep 44001 & i=$((i+1)); done; wait",
            ],
        )
        .await;
    alice.wait(&id).await;
    let job = alice.job(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("pids limit of 8"),
        "{job}"
    );
    assert!(processes_running(&["sleep", "44001"]).is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_job_is_killed_at_its_timeout_from_the_server_or_its_request() {
    let app = TestApp::spawn_with(&["--job-timeout", "300ms"]).await;
    let alice = User::new(&app, "alice", Role::User).await;
    let id = alice.start("sleep", &["45001"]).await;
    alice.wait(&id).await;
    let job = alice.job(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("timeout of 300ms"),
        "{job}"
    );
    assert!(processes_running(&["sleep", "45001"]).is_empty());
    let (status, _) = alice
        .call(
            Method::POST,
            "/jobs",
            Some(json!({"command": "true", "limits": {"timeoutMs": 301}})),
        )
        .await;
    assert_eq!(status, 400, "past the server's timeout");
    app.stop().await;

    let app = TestApp::spawn().await;
    let alice = User::new(&app, "alice", Role::User).await;
    let id = queue(
        &alice,
        json!({"command": "sleep", "args": ["45002"], "limits": {"timeoutMs": 200}}),
    )
    .await;
    alice.wait(&id).await;
    let job = alice.job(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("timeout of 200ms"),
        "{job}"
    );
    app.stop().await;
}

/// The CPU quota of process `pid`'s cgroup, as `quota period` in µs.
fn cpu_quota_of(pid: &str) -> String {
    let memberships = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in memberships.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (
            fields.next(),
            fields.next().unwrap(),
            fields.next().unwrap(),
        );
        let v1 = controllers.split(',').any(|name| name == "cpu");
        let v2 = controllers.is_empty();
        let mount = mounts.lines().find(|mount| {
            let (_, after) = mount.split_once(" - ").unwrap();
            if v1 {
                after.starts_with("cgroup ")
                    && after
                        .rsplit(' ')
                        .next()
                        .unwrap()
                        .split(',')
                        .any(|option| option == "cpu")
            } else {
                v2 && after.starts_with("cgroup2 ")
            }
        });
        let Some(mount) = mount else { continue };
        let point = mount.split(' ').nth(4).unwrap();
        let dir = Path::new(point).join(path.trim_start_matches('/'));
        if v1 {
            let read = |file: &str| {
                std::fs::read_to_string(dir.join(file))
                    .unwrap()
                    .trim()
                    .to_owned()
            };
            return format!("{} {}", read("cpu.cfs_quota_us"), read("cpu.cfs_period_us"));
        }
        if let Ok(max) = std::fs::read_to_string(dir.join("cpu.max")) {
            return max.trim().to_owned();
        }
    }
    panic!("no cpu controller holds process {pid}: {memberships}");
}

#[tokio::test]
async fn a_job_gets_the_cpu_share_of_the_server_or_its_request() {
    let Some(app) = contained(
        "a_job_gets_the_cpu_share_of_the_server_or_its_request",
        &["--job-cpu", "0.25"],
    )
    .await
    else {
        return;
    };
    let alice = User::new(&app, "alice", Role::User).await;
    for (limits, quota) in [
        (json!({}), "25000 100000"),
        (json!({"cpu": 0.1}), "10000 100000"),
    ] {
        let id = queue(
            &alice,
            json!({"command": "sh", "args": ["-c", "echo $$; exec sleep 46001"], "limits": limits}),
        )
        .await;
        let pid = output_until(&app, &alice, &id, "\n")
            .await
            .trim()
            .to_owned();
        assert_eq!(cpu_quota_of(&pid), quota);
        let (status, _) = alice
            .call(Method::POST, &format!("/jobs/{id}/stop"), None)
            .await;
        assert_eq!(status, 200);
    }
    let (status, _) = alice
        .call(
            Method::POST,
            "/jobs",
            Some(json!({"command": "true", "limits": {"cpu": 0.5}})),
        )
        .await;
    assert_eq!(status, 400, "past the server's share");
    app.stop().await;
}

#[tokio::test]
async fn healthz_says_who_jobs_run_as_and_what_contains_them() {
    let app = TestApp::spawn_with(&["--job-cgroups", "off", "--job-timeout", "1m"]).await;
    let jobs = isolation(&app).await;
    assert_eq!(jobs["containment"], "marker");
    assert_eq!(jobs["noCgroups"], "--job-cgroups is off");
    assert_eq!(
        jobs["limits"],
        json!({"memory": "unavailable", "cpu": "unavailable", "pids": "unavailable"})
    );
    assert_eq!(jobs["max"]["timeoutMs"], 60_000);
    assert_eq!(jobs["separateAccount"], is_root());
    if is_root() {
        assert_eq!(jobs["user"], "nobody");
    }
    app.stop().await;

    if let Some(app) = contained("healthz_says_who_jobs_run_as_and_what_contains_them", &[]).await {
        let jobs = isolation(&app).await;
        assert_eq!(jobs["user"], "nobody");
        assert_eq!(jobs["separateAccount"], true);
        for limit in ["memory", "cpu", "pids"] {
            assert_ne!(jobs["limits"][limit], "unavailable", "{jobs}");
        }
        // A job's cgroup is there while it runs and gone once it ends, however it ended.
        let dir = std::path::PathBuf::from(jobs["cgroupDir"].as_str().unwrap());
        let job_cgroups = || {
            std::fs::read_dir(&dir)
                .unwrap()
                .filter_map(Result::ok)
                .filter(|entry| entry.file_name().to_string_lossy().starts_with("job-"))
                .count()
        };
        let alice = User::new(&app, "alice", Role::User).await;
        let id = alice
            .start("sh", &["-c", "echo up; exec sleep 47001"])
            .await;
        output_until(&app, &alice, &id, "up").await;
        assert_eq!(job_cgroups(), 1);
        let (status, _) = alice
            .call(Method::POST, &format!("/jobs/{id}/stop"), None)
            .await;
        assert_eq!(status, 200);
        let missing = alice.start("no-such-program-anywhere", &[]).await;
        alice.wait(&missing).await;
        assert_eq!(alice.job(&missing).await["status"], "failed");
        assert_eq!(
            job_cgroups(),
            0,
            "a job that could not start left its cgroup"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn settings_that_cannot_isolate_jobs_refuse_to_start_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    // Each refused setting, and what the one line on stderr must name.
    let mut refused = vec![
        (
            vec!["--job-user", "no-such-account-here"],
            "no account named",
        ),
        (
            vec!["--job-cgroups", "off", "--job-memory", "64MiB"],
            "--job-memory cannot be enforced",
        ),
        (
            vec!["--job-cgroups", "off", "--job-pids", "10"],
            "--job-pids cannot be enforced",
        ),
        (vec!["--job-memory", "0"], "--job-memory"),
        (vec!["--job-cpu=-1"], "--job-cpu"),
        (vec!["--job-timeout", "0s"], "--job-timeout"),
    ];
    if is_root() {
        refused.push((vec!["--job-user", "root"], "is root"));
    } else {
        refused.push((vec!["--job-user", "nobody"], "only root"));
    }
    for (flags, named) in refused {
        let mut args = vec!["serve".to_owned()];
        args.extend(helpers::port_zero_flags(dir.path()));
        args.extend(flags.iter().map(|flag| (*flag).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, stderr) = run_cli(&args, &[]).await;
        assert_eq!(code, Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(named), "{flags:?}: {stderr}");
    }
    // A data dir the job account owns: a job could open it again.
    if is_root() {
        let owned = tempfile::tempdir().unwrap();
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        std::os::unix::fs::chown(owned.path(), Some(nobody.uid.as_raw()), None).unwrap();
        let mut args = vec!["serve".to_owned()];
        args.extend(helpers::port_zero_flags(owned.path()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, stderr) = run_cli(&args, &[]).await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("belongs to the job account"), "{stderr}");
    }
}

#[tokio::test]
async fn the_cli_queues_a_job_with_env_cwd_and_limits() {
    let app = TestApp::spawn().await;
    let token = app.token("alice", Role::User).await;
    let cwd = app.work.path().display().to_string();
    let env = [
        ("WARDEN_URL", app.jobs.as_str()),
        ("WARDEN_TOKEN", token.as_str()),
    ];
    let (code, printed, stderr) = run_cli(
        &[
            "jobs",
            "start",
            "--env",
            "GREETING=hi there",
            "--cwd",
            &cwd,
            "--timeout",
            "5s",
            "--",
            "sh",
            "-c",
            "echo \"$GREETING\"; pwd",
        ],
        &env,
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let job: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(job["env"], json!({"GREETING": "hi there"}));
    assert_eq!(job["cwd"], cwd);
    assert_eq!(job["limits"]["timeoutMs"], 5000);
    let alice = User::new(&app, "alice", Role::User).await;
    let output = alice.wait(job["id"].as_str().unwrap()).await;
    assert_eq!(
        String::from_utf8(output).unwrap(),
        format!("hi there\n{cwd}\n")
    );
    // A refused variable is the server's 400, one line and exit code 1.
    let (code, _, stderr) = run_cli(
        &["jobs", "start", "--env", "LD_PRELOAD=x.so", "--", "true"],
        &env,
    )
    .await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("400") && stderr.contains("LD_PRELOAD"),
        "{stderr}"
    );
    app.stop().await;
}
