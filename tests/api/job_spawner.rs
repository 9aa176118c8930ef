//! The job spawner (`warden job-spawner`), the small process that forks every job: one per
//! warden, named after its data dir in `ps`; killed, it is replaced at the next job without
//! a restart, and the jobs it had started still end (their status says what was lost); the
//! programs it starts get the signal dispositions a program expects.

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use warden::security::principal::Role;

use crate::helpers::{TestApp, eventually, process_is_gone};
use crate::job_isolation::{all_gone, output_until, processes_running};
use crate::jobs::User;

/// The pids of the live spawners of the warden on `data_dir`.
fn spawners_of(data_dir: &Path) -> Vec<String> {
    let data_dir = std::fs::canonicalize(data_dir).unwrap();
    processes_running(&[
        "warden",
        "job-spawner",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ])
}

/// Kills the one spawner of `app` with SIGKILL; its pid.
fn kill_the_spawner(app: &TestApp) -> String {
    let spawners = spawners_of(app.dir.path());
    assert_eq!(spawners.len(), 1, "one spawner per warden: {spawners:?}");
    let pid = spawners[0].clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid.parse().unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    pid
}

async fn wait_until_gone(pid: &str) {
    eventually("the spawner dies", Duration::from_secs(10), async || {
        process_is_gone(pid).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_killed_spawner_is_replaced_and_the_next_job_runs() {
    let app = TestApp::spawn().await;
    let alice = User::new(&app, "alice", Role::User).await;
    let first = alice.start("echo", &["first"]).await;
    assert_eq!(alice.wait(&first).await, b"first\n");

    let killed = kill_the_spawner(&app);
    wait_until_gone(&killed).await;
    // The next job finds the spawner gone before it asks anything of it: another one starts
    // it, and no job pays for the loss.
    let next = alice.start("echo", &["next"]).await;
    assert_eq!(alice.wait(&next).await, b"next\n");
    assert_eq!(alice.job(&next).await["status"], "succeeded");
    let now = spawners_of(app.dir.path());
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0], killed);
    // The dead one was reaped, not left a zombie.
    assert!(
        std::fs::metadata(format!("/proc/{killed}")).is_err(),
        "the killed spawner was not reaped"
    );
    let (dir, _) = app.stop().await;
    assert!(
        spawners_of(dir.path()).is_empty(),
        "a stopped warden's spawner ends with it"
    );
}

#[tokio::test]
async fn jobs_whose_spawner_died_still_end_and_their_status_says_what_was_lost() {
    let app = TestApp::spawn_with(&["--job-workers", "2"]).await;
    let alice = User::new(&app, "alice", Role::User).await;
    let gate = app.work.path().join("end-now");
    let script = format!(
        "echo up; while [ ! -e '{}' ]; do sleep 0.01; done; exit 3",
        gate.display()
    );
    let ends = alice.start("sh", &["-c", &script]).await;
    let stopped = alice
        .start("sh", &["-c", "echo up; exec sleep 47301"])
        .await;
    output_until(&app, &alice, &ends, "up").await;
    output_until(&app, &alice, &stopped, "up").await;
    let killed = kill_the_spawner(&app);
    wait_until_gone(&killed).await;

    // One ends by itself: it is waited for all the same, through its pidfd.
    std::fs::write(&gate, b"").unwrap();
    alice.wait(&ends).await;
    let job = alice.job(&ends).await;
    // Its exit status is read from its zombie while that lasts (whoever adopted it may be
    // slow to reap it); once it is gone, the status is said to be lost, never made up.
    assert_eq!(job["status"], "failed", "{job}");
    let lost = job["error"]
        .as_str()
        .is_some_and(|error| error.contains("lost with the job spawner"));
    assert!(lost || job["exitCode"] == 3, "{job}");
    // The other is stopped, whole.
    let (status, _) = alice
        .call(Method::POST, &format!("/jobs/{stopped}/stop"), None)
        .await;
    assert_eq!(status, 200);
    alice.wait(&stopped).await;
    let job = alice.job(&stopped).await;
    assert_eq!(job["status"], "stopped", "{job}");
    all_gone("the stopped job's sleep", &["sleep", "47301"]).await;
    // And the next job runs.
    let next = alice.start("echo", &["next"]).await;
    assert_eq!(alice.wait(&next).await, b"next\n");
    app.stop().await;
}

#[tokio::test]
async fn a_job_gets_the_default_disposition_of_sigpipe() {
    // The Rust runtime ignores SIGPIPE, and an ignored signal stays ignored across exec:
    // the spawner puts it back, so `yes | head` ends `yes` as a shell user expects.
    let app = TestApp::spawn().await;
    let alice = User::new(&app, "alice", Role::User).await;
    let id = alice
        .start("sh", &["-c", "kill -s PIPE $$; echo survived"])
        .await;
    assert_eq!(alice.wait(&id).await, b"");
    let job = alice.job(&id).await;
    assert_eq!(job["signal"], 13, "{job}");
    app.stop().await;
}
