//! `GET /metrics` on the admin listener, read as Prometheus reads it: the text format, parsed
//! strictly; counters that move with the work they count; and labels that never carry what
//! a client named (a job id, a group, an instance id, a user).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use serde_json::json;
use warden::security::pki::DevPki;
use warden::security::principal::Role;

use crate::helpers::{TestApp, eventually};
use crate::jobs::User;
use crate::tls;

/// Every metric family warden exports, as the README lists them, but
/// `warden_tls_refused_connections_total`: only a TLS listener has it (see the TLS test).
const FAMILIES: [(&str, &str); 13] = [
    ("warden_http_requests_total", "counter"),
    ("warden_http_request_duration_seconds", "histogram"),
    ("warden_writer_batch_size", "histogram"),
    ("warden_writer_commit_duration_seconds", "histogram"),
    ("warden_writer_queue_depth", "gauge"),
    ("warden_registry_live_instances", "gauge"),
    ("warden_registry_purged_instances_total", "counter"),
    ("warden_jobs", "gauge"),
    ("warden_job_output_bytes_total", "counter"),
    ("warden_database_file_bytes", "gauge"),
    ("warden_database_wal_bytes", "gauge"),
    ("warden_database_used_bytes", "gauge"),
    ("warden_build_info", "gauge"),
];

/// One line of a scrape: a series and its value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape, parsed.
#[derive(Debug)]
struct Scrape {
    /// Each family's declared type.
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// Parses the text exposition format strictly: every line is a `# HELP`, a `# TYPE`
    /// before its family's first sample, a sample of a declared family, or blank; names and
    /// label names are well-formed, label values are quoted with only `\\`, `\"` and `\n`
    /// escaped, values are numbers (or `+Inf`, `-Inf`, `NaN`), and no series appears twice.
    fn parse(text: &str) -> Result<Self, String> {
        let mut types = BTreeMap::new();
        let mut samples: Vec<Sample> = Vec::new();
        let mut seen = BTreeSet::new();
        if !text.is_empty() && !text.ends_with('\n') {
            return Err("the text does not end with a newline".into());
        }
        for (number, line) in text.lines().enumerate() {
            let fail = |why: &str| format!("line {}: {why}: {line:?}", number + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.trim_start().splitn(3, ' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        if !is_metric_name(name) {
                            return Err(fail("a bad metric name"));
                        }
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                        {
                            return Err(fail("an unknown type"));
                        }
                        if samples
                            .iter()
                            .any(|sample| family_of(&sample.name, &types) == name)
                        {
                            return Err(fail("a TYPE after its family's samples"));
                        }
                        if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                            return Err(fail("a second TYPE for one family"));
                        }
                    }
                    (Some("HELP"), Some(name), _) if is_metric_name(name) => {}
                    (Some("HELP" | "TYPE"), ..) => return Err(fail("a malformed HELP or TYPE")),
                    // Any other comment is allowed, and means nothing.
                    _ => {}
                }
                continue;
            }
            let sample = parse_sample(line).map_err(|why| fail(&why))?;
            let family = family_of(&sample.name, &types);
            let Some(kind) = types.get(family) else {
                return Err(fail("a sample of a family with no TYPE"));
            };
            if kind == "histogram" && sample.name.ends_with("_bucket") {
                if !sample.labels.contains_key("le") {
                    return Err(fail("a bucket without `le`"));
                }
            } else if sample.labels.contains_key("le") {
                return Err(fail("`le` outside a histogram bucket"));
            }
            if !seen.insert((sample.name.clone(), sample.labels.clone())) {
                return Err(fail("a series twice"));
            }
            samples.push(sample);
        }
        Ok(Self { types, samples })
    }

    /// The value of the one series `name` whose labels include `labels`; `None` if there is
    /// none. Fails the test if `labels` pick out more than one.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|sample| {
                sample.name == name
                    && labels.iter().all(|(key, value)| {
                        sample.labels.get(*key).map(String::as_str) == Some(value)
                    })
            })
            .collect();
        assert!(
            matching.len() <= 1,
            "{labels:?} pick out {} series of {name}",
            matching.len()
        );
        matching.first().map(|sample| sample.value)
    }

    /// [`Scrape::find`], reading a series not yet there as 0 (a counter not yet counted).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).unwrap_or(0.0)
    }
}

/// The family a sample belongs to: a histogram's `_bucket`, `_sum` and `_count` series are
/// its own.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(family) = name.strip_suffix(suffix)
            && types
                .get(family)
                .is_some_and(|kind| kind == "histogram" || kind == "summary")
        {
            return family;
        }
    }
    name
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_' || first == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `name{label="value",…} value [timestamp]`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err("a bad metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let equals = rest.find('=').ok_or("a label without `=`")?;
            let key = &rest[..equals];
            if !is_label_name(key) || key.starts_with("__") {
                return Err(format!("a bad label name {key:?}"));
            }
            let (value, after) = parse_label_value(&rest[equals + 1..])?;
            if labels.insert(key.to_owned(), value).is_some() {
                return Err(format!("label {key:?} twice"));
            }
            rest = after.strip_prefix(',').unwrap_or(after);
            if !rest.starts_with('}') && !after.starts_with(',') {
                return Err("labels not separated by commas".into());
            }
        }
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let mut fields = rest.split(' ');
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number
            .parse::<f64>()
            .map_err(|_| format!("a value that is not a number: {number:?}"))?,
    };
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("a bad timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("more after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A quoted label value and what follows it.
fn parse_label_value(text: &str) -> Result<(String, &str), String> {
    let mut chars = text
        .strip_prefix('"')
        .ok_or("an unquoted label value")?
        .char_indices();
    let mut value = String::new();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[1 + at + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                _ => return Err("a bad escape in a label value".into()),
            },
            '\n' => return Err("a raw newline in a label value".into()),
            c => value.push(c),
        }
    }
    Err("an unterminated label value".into())
}

/// `GET /metrics` on `app`'s admin listener, checked and parsed; also its raw text.
async fn read_metrics(app: &TestApp) -> (Scrape, String) {
    let response = app
        .client
        .get(format!("{}/metrics", app.admin))
        .send()
        .await
        .expect("GET /metrics answered");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let parsed = Scrape::parse(&text).unwrap_or_else(|why| panic!("{why}\n{text}"));
    (parsed, text)
}

async fn heartbeat(app: &TestApp, group: &str, id: &str) -> StatusCode {
    app.client
        .post(format!("{}/{group}/{id}", app.registry))
        .send()
        .await
        .unwrap()
        .status()
}

const HASH_POST: [(&str, &str); 4] = [
    ("listener", "hashes"),
    ("method", "POST"),
    ("route", "/hash"),
    ("status", "200"),
];

#[tokio::test]
async fn metrics_are_prometheus_text_with_every_family_typed() {
    let app = TestApp::spawn().await;
    // The first scrape is a request of the admin listener: the second counts it, so it has
    // every family.
    let (first, _) = read_metrics(&app).await;
    assert_eq!(first.find("warden_http_requests_total", &[]), None);
    let (scrape, _) = read_metrics(&app).await;
    for (family, kind) in FAMILIES {
        assert_eq!(
            scrape.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    assert_eq!(
        scrape.value(
            "warden_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(scrape.value("warden_database_file_bytes", &[]) > 0.0);
    assert!(scrape.value("warden_database_used_bytes", &[]) > 0.0);
    let metrics_get = [
        ("listener", "admin"),
        ("method", "GET"),
        ("route", "/metrics"),
        ("status", "200"),
    ];
    assert_eq!(
        scrape.value("warden_http_requests_total", &metrics_get),
        1.0
    );
    app.stop().await;
}

#[test]
fn the_parser_refuses_what_prometheus_would() {
    let good = "# HELP a_total A help.\n# TYPE a_total counter\na_total{x=\"1\",y=\"a\\\"b\"} 3\n";
    let parsed = Scrape::parse(good).unwrap();
    assert_eq!(parsed.value("a_total", &[("y", "a\"b")]), 3.0);
    for bad in [
        "a_total 1\n",                                          // no TYPE
        "# TYPE a_total counter\na_total{x=1} 1\n",             // unquoted
        "# TYPE a_total counter\na_total{x=\"1\"} one\n",       // not a number
        "# TYPE a_total counter\na_total{x=\"1\",x=\"2\"} 1\n", // a label twice
        "# TYPE a_total counter\na_total 1\na_total 2\n",       // a series twice
        "# TYPE a_total counter\na_total{x=\"\\t\"} 1\n",       // a bad escape
        "# TYPE 1a counter\n",                                  // a bad name
        "# TYPE h histogram\nh_bucket 1\n",                     // a bucket without le
        "# TYPE a_total counter\na_total 1",                    // no final newline
    ] {
        assert!(Scrape::parse(bad).is_err(), "{bad:?} parsed");
    }
}

#[tokio::test]
async fn a_hash_moves_its_request_counter_latency_and_writer_batch() {
    let app = TestApp::spawn().await;
    let (before, _) = read_metrics(&app).await;
    app.create_hash("angryMonkey").await;
    app.create_hash("angryMonkey").await;
    let (after, _) = read_metrics(&app).await;

    let requests = "warden_http_requests_total";
    assert_eq!(
        after.value(requests, &HASH_POST) - before.value(requests, &HASH_POST),
        2.0
    );
    let latencies = "warden_http_request_duration_seconds_count";
    assert_eq!(
        after.value(latencies, &HASH_POST) - before.value(latencies, &HASH_POST),
        2.0
    );
    // Every latency is within the buckets' range, 100 µs to 10 s.
    let mut within = HASH_POST.to_vec();
    within.push(("le", "10"));
    assert_eq!(
        after.value("warden_http_request_duration_seconds_bucket", &within),
        2.0
    );
    let path = [("path", "hashes")];
    let batches = "warden_writer_batch_size_count";
    let batched = "warden_writer_batch_size_sum";
    let commits = "warden_writer_commit_duration_seconds_count";
    assert!(after.value(batches, &path) > before.value(batches, &path));
    // Two hashes, in one batch or two.
    assert_eq!(
        after.value(batched, &path) - before.value(batched, &path),
        2.0
    );
    assert_eq!(
        after.value(commits, &path) - before.value(commits, &path),
        after.value(batches, &path) - before.value(batches, &path)
    );
    assert_eq!(after.value("warden_writer_queue_depth", &path), 0.0);
    app.stop().await;
}

#[tokio::test]
async fn a_heartbeat_moves_its_counter_and_the_live_instances() {
    let app = TestApp::spawn().await;
    let (before, _) = read_metrics(&app).await;
    assert_eq!(before.value("warden_registry_live_instances", &[]), 0.0);
    assert_eq!(heartbeat(&app, "g", "one").await, StatusCode::CREATED);
    assert_eq!(heartbeat(&app, "g", "one").await, StatusCode::OK);
    let (after, _) = read_metrics(&app).await;

    let beat = |status| {
        [
            ("listener", "registry"),
            ("method", "POST"),
            ("route", "/{group}/{id}"),
            ("status", status),
        ]
    };
    let requests = "warden_http_requests_total";
    for status in ["201", "200"] {
        assert_eq!(
            after.value(requests, &beat(status)) - before.value(requests, &beat(status)),
            1.0,
            "{status}"
        );
    }
    assert_eq!(after.value("warden_registry_live_instances", &[]), 1.0);
    let path = [("path", "heartbeats")];
    assert_eq!(
        after.value("warden_writer_batch_size_sum", &path)
            - before.value("warden_writer_batch_size_sum", &path),
        2.0
    );
    // Past the TTL the instance is no longer live, whether or not the purge has run.
    app.clock.advance(Duration::from_secs(31)).await;
    let (expired, _) = read_metrics(&app).await;
    assert_eq!(expired.value("warden_registry_live_instances", &[]), 0.0);
    app.stop().await;
}

#[tokio::test]
async fn the_purge_counts_the_instances_it_deletes() {
    let app = TestApp::spawn_with(&["--instance-ttl", "1ms", "--purge-every", "100ms"]).await;
    for id in ["a", "b", "c"] {
        assert_eq!(heartbeat(&app, "g", id).await, StatusCode::CREATED);
    }
    app.clock.advance(Duration::from_millis(1)).await;
    // The scheduler runs on real time, in whole seconds; wait for a purge.
    eventually(
        "the purge counted three deleted instances",
        Duration::from_secs(10),
        async || {
            let (scrape, _) = read_metrics(&app).await;
            (scrape.value("warden_registry_purged_instances_total", &[]) == 3.0).then_some(())
        },
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_job_moves_its_request_counter_status_gauges_and_output_bytes() {
    let app = TestApp::spawn().await;
    let user = User::new(&app, "alice", Role::User).await;
    let (before, _) = read_metrics(&app).await;
    let id = user.start("echo", &["hello"]).await;
    assert_eq!(user.wait(&id).await, b"hello\n");

    let created = [
        ("listener", "jobs"),
        ("method", "POST"),
        ("route", "/jobs"),
        ("status", "201"),
    ];
    let (after, _) = eventually(
        "the job is counted as succeeded",
        Duration::from_secs(10),
        async || {
            let (after, text) = read_metrics(&app).await;
            (after.value("warden_jobs", &[("status", "succeeded")]) == 1.0).then_some((after, text))
        },
    )
    .await;
    assert_eq!(
        after.value("warden_http_requests_total", &created)
            - before.value("warden_http_requests_total", &created),
        1.0
    );
    for status in ["queued", "running", "failed", "stopped", "interrupted"] {
        assert_eq!(
            after.value("warden_jobs", &[("status", status)]),
            0.0,
            "{status}"
        );
    }
    assert_eq!(
        after.value("warden_job_output_bytes_total", &[])
            - before.value("warden_job_output_bytes_total", &[]),
        6.0,
        "hello and its newline"
    );
    let queue = [("path", "job queue")];
    assert_eq!(
        after.value("warden_writer_batch_size_sum", &queue)
            - before.value("warden_writer_batch_size_sum", &queue),
        1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn no_label_holds_a_job_id_a_group_an_instance_id_a_user_or_a_raw_path() {
    let app = TestApp::spawn().await;
    let user = User::new(&app, "user-zqxj7", Role::User).await;
    let job = user.start("echo", &["arg-zqxj7"]).await;
    user.wait(&job).await;
    let (status, named) = user
        .call(
            Method::POST,
            "/jobs",
            Some(json!({"command": "echo", "name": "name-zqxj7"})),
        )
        .await;
    assert_eq!(status, 201, "{named}");
    let named = named["id"].as_str().unwrap().to_owned();
    user.call(Method::GET, &format!("/jobs/{job}"), None).await;
    // (`wait` above read `/jobs/{id}/output`.)
    assert_eq!(heartbeat(&app, "group-zqxj7", "instance-zqxj7").await, 201);
    app.client
        .get(format!("{}/group-zqxj7/instance-zqxj7", app.registry))
        .send()
        .await
        .unwrap();
    // A path no route matches, and a method nobody defined.
    app.client
        .get(format!("{}/path-zqxj7", app.hashes))
        .send()
        .await
        .unwrap();
    app.client
        .request(
            Method::from_bytes(b"ZQXJ").unwrap(),
            format!("{}/hash", app.hashes),
        )
        .send()
        .await
        .unwrap();
    app.create_hash("password-zqxj7").await;

    let (scrape, text) = read_metrics(&app).await;
    for secret in [job.as_str(), named.as_str(), "zqxj", "ZQXJ"] {
        assert!(
            !text.contains(secret),
            "{secret:?} is in the scrape:\n{text}"
        );
    }
    // What stands in their place: route templates, and fixed words.
    let routes: BTreeSet<&str> = scrape
        .samples
        .iter()
        .filter_map(|sample| sample.labels.get("route").map(String::as_str))
        .collect();
    for route in [
        "/jobs",
        "/jobs/{id}",
        "/jobs/{id}/output",
        "/{group}/{id}",
        "(unmatched)",
    ] {
        assert!(routes.contains(route), "{route} in {routes:?}");
    }
    assert!(
        scrape
            .find(
                "warden_http_requests_total",
                &[
                    ("listener", "hashes"),
                    ("method", "other"),
                    ("status", "405")
                ]
            )
            .is_some(),
        "a made-up method is `other`:\n{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn refused_tls_connections_are_counted_by_reason() {
    let app = TestApp::spawn_with(&["--jobs-tls", "on"]).await;
    let pki = DevPki::of(app.dir.path());
    let no_certificate = tls::with_tls(
        rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(tls::roots(&pki.ca()))
            .with_no_client_auth(),
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let other = DevPki::of(elsewhere.path());
    other.ensure().unwrap();
    let other_ca = tls::client(&pki.ca(), &other.client("admin"));
    let (before, _) = read_metrics(&app).await;
    assert_eq!(
        before
            .types
            .get("warden_tls_refused_connections_total")
            .map(String::as_str),
        Some("counter")
    );
    let refused = |reason| {
        before.value(
            "warden_tls_refused_connections_total",
            &[("listener", "jobs"), ("reason", reason)],
        )
    };
    assert_eq!(refused("no_certificate") + refused("bad_certificate"), 0.0);

    for client in [&no_certificate, &other_ca] {
        let attempt = client.get(format!("{}/jobs", app.jobs)).send().await;
        assert!(attempt.is_err(), "{attempt:?}");
    }
    // The listener counts a refusal once the handshake has failed on its side, which the
    // client may learn of first.
    eventually(
        "both refusals are counted, each by its reason",
        Duration::from_secs(10),
        async || {
            let (after, _) = read_metrics(&app).await;
            let refused = |reason| {
                after.value(
                    "warden_tls_refused_connections_total",
                    &[("listener", "jobs"), ("reason", reason)],
                )
            };
            (refused("no_certificate") == 1.0 && refused("bad_certificate") == 1.0).then_some(())
        },
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn two_apps_in_one_process_count_apart() {
    let (one, two) = tokio::join!(TestApp::spawn(), TestApp::spawn());
    one.create_hash("angryMonkey").await;
    let (of_one, _) = read_metrics(&one).await;
    let (of_two, _) = read_metrics(&two).await;
    assert_eq!(of_one.value("warden_http_requests_total", &HASH_POST), 1.0);
    assert_eq!(of_two.value("warden_http_requests_total", &HASH_POST), 0.0);
    one.stop().await;
    two.stop().await;
}
