//! Mutual TLS on the jobs listener, over real TLS connections: who gets in, who does not,
//! and what each principal may see.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;

use crate::helpers::{self, TestApp, WardenProcess, run_cli};
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use warden::security::pki::{CertFiles, DevPki};
use warden::security::principal::Role;
use warden::security::tls::client_config;

async fn spawn_tls() -> TestApp {
    TestApp::spawn_with(&["--jobs-tls", "on"]).await
}

fn pki(app: &TestApp) -> DevPki {
    DevPki::of(app.dir.path())
}

/// A client presenting `files`, trusting the CA at `ca`.
pub(crate) fn client(ca: &Path, files: &CertFiles) -> reqwest::Client {
    let tls = client_config(ca, &files.cert, &files.key).unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
}

pub(crate) fn with_tls(tls: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
}

pub(crate) fn roots(ca: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

async fn call(
    client: &reqwest::Client,
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = client.request(method, format!("{}{path}", app.jobs));
    if let Some(body) = body {
        request = request.json(&body);
    }
    helpers::call(request).await
}

async fn start(client: &reqwest::Client, app: &TestApp, word: &str) -> String {
    let (status, job) = call(
        client,
        app,
        reqwest::Method::POST,
        "/jobs",
        Some(json!({"command": "echo", "args": [word]})),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    job["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_client_with_a_certificate_from_the_dev_pki_works_end_to_end() {
    let app = spawn_tls().await;
    let pki = pki(&app);
    assert!(app.jobs.starts_with("https://"));
    let admin = client(&pki.ca(), &pki.client("admin"));
    let id = start(&admin, &app, "hi").await;
    let output =
        helpers::body(admin.get(format!("{}/jobs/{id}/output?follow=true", app.jobs))).await;
    assert_eq!(&output[..], b"hi\n");
    let (_, job) = call(
        &admin,
        &app,
        reqwest::Method::GET,
        &format!("/jobs/{id}"),
        None,
    )
    .await;
    assert_eq!(
        job["owner"], "admin",
        "the principal is the certificate's CN"
    );
    assert_eq!(job["status"], "succeeded");

    // The dev PKI's files and modes.
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&pki.dir), 0o700);
    assert_eq!(mode(&pki.dir.join("clients")), 0o700);
    for key in [
        pki.dir.join("ca.key"),
        pki.server().key,
        pki.client("admin").key,
    ] {
        assert_eq!(mode(&key), 0o600, "{}", key.display());
    }
    app.stop().await;
}

#[tokio::test]
async fn connections_without_a_good_certificate_or_over_old_tls_or_plain_http_are_refused() {
    let app = spawn_tls().await;
    let pki = pki(&app);

    let no_certificate = with_tls(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(&pki.ca()))
            .with_no_client_auth(),
    );

    let elsewhere = tempfile::tempdir().unwrap();
    let other = DevPki::of(elsewhere.path());
    other.ensure().unwrap();
    let other_ca = client(&pki.ca(), &other.client("admin"));

    let expired = {
        let ca_key =
            rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.dir.join("ca.key")).unwrap())
                .unwrap();
        let issuer =
            rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(pki.ca()).unwrap(), ca_key)
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "admin");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, "admin");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
        params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(&pki.ca()))
            .with_client_auth_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        with_tls(tls)
    };

    let tls12_only = {
        let admin = pki.client("admin");
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots(&pki.ca()))
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&admin.cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(&admin.key).unwrap(),
            )
            .unwrap();
        with_tls(tls)
    };

    for (case, refused) in [
        ("no certificate", &no_certificate),
        ("a certificate from another CA", &other_ca),
        ("an expired certificate", &expired),
        ("TLS 1.2 only", &tls12_only),
    ] {
        assert_refused(refused, &app, case).await;
    }
    let plain = reqwest::Client::new()
        .get(format!("{}/jobs", app.jobs.replace("https://", "http://")))
        .send()
        .await;
    assert!(
        plain.is_err() || plain.unwrap().status() != 200,
        "plain HTTP got through"
    );

    let admin = client(&pki.ca(), &pki.client("admin"));
    let (_, jobs) = call(&admin, &app, reqwest::Method::GET, "/jobs", None).await;
    assert_eq!(jobs, json!([]), "nothing was queued by a refused client");
    app.stop().await;
}

#[tokio::test]
async fn users_with_their_own_certificates_see_only_their_jobs_and_an_admin_sees_all() {
    let app = spawn_tls().await;
    let pki = pki(&app);
    let alice = client(&pki.ca(), &pki.issue_client("alice", false, 30).unwrap());
    let bob = client(&pki.ca(), &pki.issue_client("bob", false, 30).unwrap());
    let admin = client(&pki.ca(), &pki.client("admin"));
    let alices = start(&alice, &app, "a").await;
    let bobs = start(&bob, &app, "b").await;

    assert_eq!(
        call(
            &bob,
            &app,
            reqwest::Method::GET,
            &format!("/jobs/{alices}"),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        call(
            &alice,
            &app,
            reqwest::Method::POST,
            &format!("/jobs/{bobs}/stop"),
            None
        )
        .await
        .0,
        404
    );
    let (_, mine) = call(&alice, &app, reqwest::Method::GET, "/jobs", None).await;
    assert_eq!(mine.as_array().unwrap().len(), 1);
    assert_eq!(mine[0]["owner"], "alice");
    let (_, all) = call(&admin, &app, reqwest::Method::GET, "/jobs", None).await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_token_sent_over_tls_must_name_the_certificates_user() {
    let app = spawn_tls().await;
    let pki = pki(&app);
    let alice = client(&pki.ca(), &pki.issue_client("alice", false, 30).unwrap());
    let alices_token = app.token("alice", Role::User).await;
    let bobs_token = app.token("bob", Role::Admin).await;
    let jobs = format!("{}/jobs", app.jobs);

    let same = alice
        .get(&jobs)
        .bearer_auth(&alices_token)
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 200);
    let other = alice
        .get(&jobs)
        .bearer_auth(&bobs_token)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 401);
    let bad = alice
        .get(&jobs)
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn a_restart_reuses_the_pki_and_clients_keep_working() {
    let app = spawn_tls().await;
    let pki = pki(&app);
    let ca_before = std::fs::read(pki.ca()).unwrap();
    let carol = pki.issue_client("carol", false, 30).unwrap();
    let (dir, clock) = app.stop().await;

    let app = TestApp::spawn_in(dir, clock, &["--jobs-tls", "on"]).await;
    let pki = DevPki::of(app.dir.path());
    assert_eq!(std::fs::read(pki.ca()).unwrap(), ca_before);
    let carol = client(&pki.ca(), &carol);
    let (status, _) = call(&carol, &app, reqwest::Method::GET, "/jobs", None).await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test]
async fn the_cli_works_over_mutual_tls_with_no_set_up() {
    let dir = tempfile::tempdir().unwrap();
    let warden = WardenProcess::start(dir.path(), &["--jobs-tls", "on"]).await;
    let url = warden.jobs.replace("http://", "https://");
    let data_dir = dir.path().display().to_string();
    // Only the address and the data dir: the CLI finds the dev PKI's admin files itself.
    let env = [
        ("WARDEN_URL", url.as_str()),
        ("WARDEN_DATA_DIR", data_dir.as_str()),
    ];
    let (code, started, stderr) = run_cli(&["jobs", "start", "--", "echo", "hi"], &env).await;
    assert_eq!(code, Some(0), "{stderr}");
    let started: Value = serde_json::from_str(&started).unwrap();
    let id = started["id"].as_str().unwrap();
    let (code, logs, stderr) = run_cli(&["jobs", "logs", "-f", id], &env).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(logs, "hi\n");

    let missing = [env[0], env[1], ("WARDEN_CERT", "/nonexistent/me.pem")];
    let (code, _, stderr) = run_cli(&["jobs", "list"], &missing).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("/nonexistent/me.pem"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");

    let elsewhere = tempfile::tempdir().unwrap();
    DevPki::of(elsewhere.path()).ensure().unwrap();
    let foreign_dir = elsewhere.path().display().to_string();
    let foreign = [env[0], ("WARDEN_DATA_DIR", foreign_dir.as_str())];
    let (code, _, stderr) = run_cli(&["jobs", "list"], &foreign).await;
    assert_eq!(code, Some(1), "a client of another PKI");
    assert!(stderr.contains("cannot reach"), "{stderr}");
}

/// A client whose certificate, signed by `app`'s dev CA, has the subject `attributes` in
/// order: `("CN", …)` or `("OU", …)`, repeats allowed.
fn client_with_subject(app: &TestApp, attributes: &[(&str, &str)]) -> reqwest::Client {
    let pki = pki(app);
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.dir.join("ca.key")).unwrap())
            .unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(pki.ca()).unwrap(), ca_key)
            .unwrap();
    let mut params = rcgen::CertificateParams::default();
    let mut seen = Vec::new();
    for &(kind, value) in attributes {
        let (named, oid) = match kind {
            "CN" => (rcgen::DnType::CommonName, vec![2, 5, 4, 3]),
            "OU" => (rcgen::DnType::OrganizationalUnitName, vec![2, 5, 4, 11]),
            other => panic!("no attribute {other}"),
        };
        // rcgen keeps one value per attribute type; a repeat goes in under its bare OID.
        let dn_type = if seen.contains(&kind) {
            rcgen::DnType::CustomDnType(oid)
        } else {
            named
        };
        seen.push(kind);
        params.distinguished_name.push(dn_type, value);
    }
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(&pki.ca()))
        .with_client_auth_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    with_tls(tls)
}

#[tokio::test]
async fn a_certificate_with_two_common_names_is_refused() {
    let app = spawn_tls().await;
    let alice = client_with_subject(&app, &[("CN", "alice")]);
    let (status, _) = call(&alice, &app, reqwest::Method::GET, "/jobs", None).await;
    assert_eq!(status, 200, "one Common Name is a user");

    for subject in [
        [("CN", "alice"), ("CN", "admin")],
        [("CN", "admin"), ("CN", "alice")],
    ] {
        let twice = client_with_subject(&app, &subject);
        assert_refused(&twice, &app, &format!("{subject:?}")).await;
    }
    let admin = client(&pki(&app).ca(), &pki(&app).client("admin"));
    let (_, jobs) = call(&admin, &app, reqwest::Method::GET, "/jobs", None).await;
    assert_eq!(jobs, json!([]), "nothing was queued by a refused client");
    app.stop().await;
}

#[tokio::test]
async fn only_a_subject_whose_sole_unit_is_admin_sees_every_job() {
    let app = spawn_tls().await;
    let alice = client_with_subject(&app, &[("CN", "alice")]);
    let alices = start(&alice, &app, "a").await;

    // Several units, one of them admin: a plain user.
    let staff = client_with_subject(&app, &[("CN", "mallory"), ("OU", "staff"), ("OU", "admin")]);
    let mallorys = start(&staff, &app, "m").await;
    let (_, seen) = call(&staff, &app, reqwest::Method::GET, "/jobs", None).await;
    let owners: Vec<&Value> = seen
        .as_array()
        .unwrap()
        .iter()
        .map(|job| &job["owner"])
        .collect();
    assert_eq!(owners, [&json!("mallory")], "only its own job: {seen}");
    let path = format!("/jobs/{alices}");
    let (status, _) = call(&staff, &app, reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 404, "another's job is hidden");

    // `admin` as the only unit: an admin, whatever the Common Name.
    let root = client_with_subject(&app, &[("CN", "root"), ("OU", "admin")]);
    let (_, all) = call(&root, &app, reqwest::Method::GET, "/jobs", None).await;
    let mut ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut expected = [alices.as_str(), mallorys.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected, "an admin sees everyone's jobs: {all}");
    let (status, job) = call(&root, &app, reqwest::Method::GET, &path, None).await;
    assert_eq!((status, &job["owner"]), (StatusCode::OK, &json!("alice")));
    app.stop().await;
}

/// Fails the test unless `client`'s attempt to queue a job is refused at the connection.
async fn assert_refused(client: &reqwest::Client, app: &TestApp, what: &str) {
    let response = client
        .post(format!("{}/jobs", app.jobs))
        .json(&json!({"command": "touch", "args": ["/tmp/never"]}))
        .send()
        .await;
    assert!(
        response.is_err(),
        "{what} got through: {:?}",
        response.map(|r| r.status())
    );
}
