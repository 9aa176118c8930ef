//! The OpenAPI documents: what the admin listener serves is what `warden openapi` prints, each
//! is an OpenAPI 3.1 document whose references all resolve, and each describes exactly the
//! routes its listener serves.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{TestApp, call, run_cli};

const LISTENERS: [&str; 4] = ["hashes", "registry", "jobs", "admin"];
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every listener's document, as the admin listener serves it.
async fn served_documents(app: &TestApp) -> Vec<(&'static str, Value)> {
    let mut documents = Vec::new();
    for listener in LISTENERS {
        let url = format!("{}/openapi/{listener}.json", app.admin);
        let response = app.client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        assert_eq!(response.headers()["content-type"], "application/json");
        documents.push((listener, response.json().await.unwrap()));
    }
    documents
}

#[tokio::test]
async fn the_served_documents_are_what_warden_openapi_prints() {
    let app = TestApp::spawn().await;
    let served = served_documents(&app).await;
    for (listener, document) in &served {
        let (code, stdout, stderr) = run_cli(&["openapi", listener], &[]).await;
        assert_eq!(code, Some(0), "{stderr}");
        let printed: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(&printed, document, "{listener}");
    }
    let (code, stdout, _) = run_cli(&["openapi"], &[]).await;
    assert_eq!(code, Some(0));
    let all: Value = serde_json::from_str(&stdout).unwrap();
    for (listener, document) in &served {
        assert_eq!(&all[listener], document, "{listener} in `warden openapi`");
    }
    assert_eq!(all.as_object().unwrap().len(), LISTENERS.len());

    let (code, _, stderr) = run_cli(&["openapi", "nonsense"], &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    let (status, body) = call(
        app.client
            .get(format!("{}/openapi/nonsense.json", app.admin)),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("hashes.json"));
}

#[tokio::test]
async fn each_document_is_openapi_3_1_with_every_reference_resolved() {
    let app = TestApp::spawn().await;
    let (_, health) = call(app.client.get(format!("{}/healthz", app.admin))).await;
    for (listener, document) in served_documents(&app).await {
        assert_eq!(document["openapi"], "3.1.0", "{listener}");
        assert_eq!(document["info"]["version"], health["version"], "{listener}");
        // It reads as an OpenAPI document, not just as JSON.
        let parsed: utoipa::openapi::OpenApi = serde_json::from_value(document.clone())
            .unwrap_or_else(|error| panic!("{listener}: not an OpenAPI document: {error}"));
        assert!(!parsed.paths.paths.is_empty(), "{listener} has no paths");
        let mut references = Vec::new();
        collect_references(&document, &mut references);
        assert!(!references.is_empty());
        for reference in references {
            let pointer = reference.strip_prefix('#').unwrap();
            assert!(
                document.pointer(pointer).is_some(),
                "{listener}: {reference} leads nowhere"
            );
        }
        // Every operation says what success is, and every error it lists has the one shape
        // (but `/healthz`, whose 503 is its health report).
        for (path, operation) in operations(&document) {
            let responses = operation["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|status| status.starts_with('2')),
                "{listener} {path}: no success"
            );
            for (status, response) in responses {
                let error = status.starts_with('4') || status.starts_with('5');
                if error && path != "GET /healthz" {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                        "{listener} {path} {status}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn the_jobs_document_names_both_credentials() {
    let app = TestApp::spawn().await;
    let (_, jobs) = call(app.client.get(format!("{}/openapi/jobs.json", app.admin))).await;
    let schemes = &jobs["components"]["securitySchemes"];
    assert_eq!(schemes["clientCertificate"]["type"], "mutualTLS");
    assert_eq!(schemes["bearerToken"]["scheme"], "bearer");
    assert_eq!(jobs["security"].as_array().unwrap().len(), 3);
    for (path, operation) in operations(&jobs) {
        let unauthorized = &operation["responses"]["401"];
        assert!(
            unauthorized["headers"]["WWW-Authenticate"].is_object(),
            "{path}: 401 without WWW-Authenticate"
        );
    }
}

/// Walks each document against its listener: at every documented path, a method the
/// document does not list is refused with 405, and the `Allow` header (which axum makes from
/// the routes it serves) lists exactly the documented methods. So a route that is served but
/// not described, or described but not served, fails here; nothing is sent that would
/// change state (not even `/shutdown`).
#[tokio::test]
async fn each_document_lists_exactly_the_routes_its_listener_serves() {
    let app = TestApp::spawn().await;
    for (listener, document) in served_documents(&app).await {
        let base = match listener {
            "hashes" => &app.hashes,
            "registry" => &app.registry,
            "jobs" => &app.jobs,
            _ => &app.admin,
        };
        let paths = document["paths"].as_object().unwrap();
        let expected_paths: BTreeSet<&str> = match listener {
            "hashes" => ["/hash", "/hash/{id}", "/stats", "/shutdown"].into(),
            "registry" => ["/", "/{group}", "/{group}/{id}"].into(),
            "jobs" => [
                "/jobs",
                "/jobs/{id}",
                "/jobs/{id}/stop",
                "/jobs/{id}/output",
            ]
            .into(),
            _ => ["/healthz", "/metrics", "/openapi/{file}", "/shutdown"].into(),
        };
        let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
        assert_eq!(documented, expected_paths, "{listener}'s paths");
        for (path, item) in paths {
            let mut methods: BTreeSet<String> = METHODS
                .iter()
                .filter(|method| item.get(**method).is_some())
                .map(|method| method.to_ascii_uppercase())
                .collect();
            if methods.contains("GET") {
                // axum answers HEAD wherever it answers GET.
                methods.insert("HEAD".to_owned());
            }
            let url = format!("{base}{}", concrete(path));
            let unlisted = ["PATCH", "PUT", "TRACE"]
                .into_iter()
                .find(|method| !methods.contains(*method))
                .unwrap();
            let response = app
                .client
                .request(Method::from_bytes(unlisted.as_bytes()).unwrap(), &url)
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{listener}: {unlisted} {path}"
            );
            let allowed: BTreeSet<String> = response.headers()["allow"]
                .to_str()
                .unwrap()
                .split(',')
                .map(|method| method.trim().to_owned())
                .collect();
            assert_eq!(allowed, methods, "{listener}: the methods of {path}");
        }
    }
}

/// `path` with each `{parameter}` filled with a value of its shape.
fn concrete(path: &str) -> String {
    path.replace("{id}", "00000000-0000-4000-8000-000000000000")
        .replace("{group}", "group")
        .replace("{file}", "hashes.json")
}

/// Every operation of `document`, with its path.
fn operations(document: &Value) -> Vec<(String, &Value)> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                found.push((format!("{} {path}", method.to_ascii_uppercase()), operation));
            }
        }
    }
    found
}

/// Every `$ref` in `value`.
fn collect_references(value: &Value, references: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            for (key, value) in object {
                match (key.as_str(), value) {
                    ("$ref", Value::String(reference)) => references.push(reference.clone()),
                    _ => collect_references(value, references),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_references(item, references);
            }
        }
        _ => {}
    }
}
