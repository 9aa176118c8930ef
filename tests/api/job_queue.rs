//! The job queue across users: owners take turns for the workers, and one owner's jobs start
//! in submission order.
//!
//! The jobs here are held and watched through a directory of their own, open to everyone
//! (0777, its files 0666): jobs may run as an unprivileged account, which cannot reach the
//! private data directory. A held job waits for a file to appear in it; each job that should
//! be watched appends its name to a log there when it runs, so with one worker the log is
//! the order the jobs started in.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;
use warden::security::principal::Role;

use crate::helpers::{TestApp, eventually};
use crate::jobs::User;

/// A directory every account may use, with a log of the jobs that ran and gates that hold
/// jobs until the test opens them.
struct Workspace {
    dir: TempDir,
    log: PathBuf,
}

impl Workspace {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let log = dir.path().join("started");
        std::fs::write(&log, b"").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
        Self { dir, log }
    }

    fn gate(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Opens gate `name`: the jobs waiting on it go on.
    fn open(&self, name: &str) {
        let gate = self.gate(name);
        std::fs::write(&gate, b"").unwrap();
        std::fs::set_permissions(&gate, std::fs::Permissions::from_mode(0o666)).unwrap();
    }

    /// A script that logs `name`, then waits for gate `gate` if given.
    fn script(&self, name: &str, gate: Option<&str>) -> String {
        let mut script = format!("echo {name} >> '{}'", self.log.display());
        if let Some(gate) = gate {
            script.push_str(&format!(
                "; while [ ! -e '{}' ]; do sleep 0.01; done",
                self.gate(gate).display()
            ));
        }
        script
    }

    /// The names the jobs logged, in the order they started.
    fn started(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Queues a job of `user` that logs `name` and then waits for gate `gate`, if given.
async fn queue(user: &User, workspace: &Workspace, name: &str, gate: Option<&str>) -> String {
    user.start("sh", &["-c", &workspace.script(name, gate)])
        .await
}

/// Waits until job `id` is running: the one worker is then busy with it.
async fn wait_running(user: &User, id: &str) {
    eventually("the job is running", Duration::from_secs(30), async || {
        (user.job(id).await["status"] == "running").then_some(())
    })
    .await;
}

#[tokio::test]
async fn one_users_long_queue_does_not_keep_another_users_job_waiting() {
    let app = TestApp::spawn_with(&["--job-workers", "1"]).await;
    let workspace = Workspace::new();
    let alice = User::new(&app, "alice", Role::User).await;
    let bob = User::new(&app, "bob", Role::User).await;
    let held = queue(&bob, &workspace, "held", Some("go")).await;
    wait_running(&bob, &held).await;

    let mut bobs = Vec::new();
    for n in 0..50 {
        bobs.push(queue(&bob, &workspace, &format!("bob-{n}"), None).await);
    }
    let alices = queue(&alice, &workspace, "alice", None).await;
    workspace.open("go");
    alice.wait(&alices).await;
    for id in &bobs {
        bob.wait(id).await;
    }

    let started = workspace.started();
    assert_eq!(started.len(), 52, "{started:?}");
    let after_held = &started[1..];
    let alice_at = after_held.iter().position(|name| name == "alice").unwrap();
    assert!(
        alice_at <= 1,
        "alice's one job waited behind {alice_at} of bob's: {started:?}"
    );
    let bob_order: Vec<&str> = after_held
        .iter()
        .filter(|name| name.starts_with("bob-"))
        .map(String::as_str)
        .collect();
    let submitted: Vec<String> = (0..50).map(|n| format!("bob-{n}")).collect();
    assert_eq!(bob_order, submitted, "bob's jobs ran in submission order");
    app.stop().await;
}

#[tokio::test]
async fn two_users_with_queued_jobs_take_turns_each_in_submission_order() {
    let app = TestApp::spawn_with(&["--job-workers", "1"]).await;
    let workspace = Workspace::new();
    let carol = User::new(&app, "carol", Role::User).await;
    let users = [
        ("zoe", User::new(&app, "zoe", Role::User).await),
        ("adam", User::new(&app, "adam", Role::User).await),
    ];
    let held = queue(&carol, &workspace, "held", Some("go")).await;
    wait_running(&carol, &held).await;

    // All of zoe's first, then all of adam's: strict FIFO would run them in two runs.
    let mut ids = Vec::new();
    for (name, user) in &users {
        for n in 0..4 {
            ids.push((
                user,
                queue(user, &workspace, &format!("{name}-{n}"), None).await,
            ));
        }
    }
    workspace.open("go");
    for (user, id) in &ids {
        user.wait(id).await;
    }

    let started = workspace.started();
    let owners: Vec<&str> = started[1..]
        .iter()
        .map(|name| name.split('-').next().unwrap())
        .collect();
    assert_eq!(owners.len(), 8, "{started:?}");
    assert!(
        owners.windows(2).all(|pair| pair[0] != pair[1]),
        "the users took turns: {started:?}"
    );
    for (name, _) in &users {
        let own: Vec<&str> = started
            .iter()
            .filter(|job| job.starts_with(&format!("{name}-")))
            .map(String::as_str)
            .collect();
        let submitted: Vec<String> = (0..4).map(|n| format!("{name}-{n}")).collect();
        assert_eq!(own, submitted, "{name}'s jobs ran in submission order");
    }
    app.stop().await;
}
