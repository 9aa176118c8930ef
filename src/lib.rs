//! warden: a delayed password-hash service, a heartbeat discovery registry and a remote job
//! runner in one binary, with all of its state in one SQLite file (or, for many nodes, the
//! hash service's and the registry's in a shared Postgres).
//!
//! # Layout
//!
//! - `main.rs`: the binary; everything lives here in the library.
//! - [`cli`]: the `warden` command line: its commands and exit codes (`cli/mod.rs`), the
//!   client commands `jobs`, `hash` and `stats` (`cli/clients.rs`), and `serve`'s logging
//!   (`cli/logging.rs`).
//! - [`config`]: every setting of `warden serve`, from flags and `WARDEN_*` variables
//!   (`config/mod.rs`), with the shared database's, which `migrate` takes too
//!   (`config/database.rs`).
//! - [`supervisor`]: builds the services, binds one listener each, serves, and drains on
//!   SIGTERM, SIGINT or `/shutdown` (`supervisor/mod.rs`, the signals in
//!   `supervisor/signals.rs`); the accept loop every listener
//!   runs and the layers they share (`supervisor/listeners.rs`), with the request ids they
//!   keep or make (`supervisor/request_ids.rs`); each connection's
//!   timeouts and its share of the drain (`supervisor/connections.rs`, with the body-read
//!   deadline in `supervisor/deadline.rs` and its socket, watched and closed with a linger,
//!   in `supervisor/socket.rs`); warnings held to one line per interval
//!   (`supervisor/reports.rs`); what is taken from the host at start: TLS files or the dev
//!   PKI, the volume's free space, the open-file limit (`supervisor/host.rs`); each
//!   listener's OpenAPI document, from the routes it serves (`supervisor/openapi.rs`).
//! - [`service`]: the one shape of a service (started from a context and its settings, with
//!   routes that carry their own API description).
//! - [`openapi`]: what the API documents share: the error answers every route may give, and
//!   the names of the listeners' documents.
//! - [`db`]: the SQLite file (WAL, `synchronous`, foreign keys, busy timeout), migrations
//!   and the one write connection, kept clean after any failure (`db/mod.rs`); the
//!   group-commit [`db::Writer`] every hot write goes through, on either engine
//!   (`db/writer.rs`); the shared Postgres: its pool, migrations and writers
//!   (`db/postgres.rs`); which write
//!   paths fail, for `/healthz` (`db/health.rs`); the file's and the WAL's sizes, for
//!   `/metrics` (`db/sizes.rs`); the data-directory lock (`db/lock.rs`).
//! - [`error`]: the error type handlers return and its JSON shape.
//! - [`http`]: the HTTP edge every service shares: path, query and body extractors that
//!   answer with our error shape, and the middleware for axum's own error responses.
//! - [`client`]: what the CLI's HTTP clients share: their error and how a refusal reads.
//! - [`clock`]: the injectable time source.
//! - [`hashes`]: `POST /hash`, `GET /hash/{id}`, `GET /stats`: router (`mod.rs`), the store
//!   over either engine (`store/mod.rs`) and its SQL on SQLite (`store/sqlite.rs`) and on
//!   Postgres (`store/postgres.rs`), input parsing (`input.rs`), the purge past `--hash-retention`
//!   (`retention.rs`), and the CLI's client (`client.rs`).
//! - [`registry`]: heartbeat discovery: router (`mod.rs`), the checks of a heartbeat's group,
//!   id and meta (`input.rs`), the store over either engine (`store/mod.rs`) and its SQL on
//!   SQLite (`store/sqlite.rs`) and on Postgres (`store/postgres.rs`), the paged and
//!   streamed listings (`listing.rs`), the purge job (`purge.rs`) and the live-instance
//!   gauge (`gauges.rs`).
//! - [`jobs`]: the job runner: router and the routes of one job (`mod.rs`); `GET /jobs`, a
//!   page at a time (`listing.rs`); a job's request, status, ending and API
//!   record (`job.rs`); SQL of jobs (`store/mod.rs`), of queueing them within
//!   `--max-queued-per-user` (`store/queue.rs`), of their output (`store/output.rs`)
//!   and of deleting them (`store/deletion.rs`); workers, claims and recovery (`runner.rs`);
//!   the running and followed jobs that followers and stops reach (`live.rs`);
//!   spawning a job's process into its confinement, signalling it by pidfd or unreaped
//!   group, and killing all of it (`process.rs`); the job spawner, a small process of its
//!   own that forks each job (`spawner/mod.rs` warden's side, `spawner/serve.rs` the
//!   process, `spawner/wire.rs` their packets); how jobs are kept apart from warden and
//!   each other (`sandbox/`): set up at start (`sandbox/mod.rs`), the job account and the
//!   closed data dir (`sandbox/account.rs`), a cgroup per job with its limits
//!   (`sandbox/cgroups/mod.rs`) and where the cgroup trees are
//!   (`sandbox/cgroups/hierarchies.rs`), containment by marker and subreaper without one
//!   (`sandbox/markers.rs`), the limits and what a request may ask (`sandbox/limits.rs`),
//!   and its `env` and `cwd` (`sandbox/request.rs`); the output pump, the
//!   followers' window and the output reader (`output.rs`); deleting jobs past
//!   `--job-retention` or by `DELETE` (`retention.rs`); the jobs-by-status gauges
//!   (`gauges.rs`); the CLI's client (`client.rs`).
//! - [`security`]: who a caller is (`principal.rs`), bearer tokens (`tokens.rs`), the
//!   development PKI (`pki.rs`), and TLS configuration and identity (`tls.rs`).
//! - [`admin`]: `GET /healthz`, `GET /metrics`, `/shutdown` and
//!   `GET /openapi/{listener}.json`.
//! - [`telemetry`]: the App's own Prometheus recorder, the scrape hooks and `/metrics`
//!   (`telemetry/mod.rs`); every metric's name, help and buckets (`telemetry/catalog.rs`); the
//!   request metrics every listener shares (`telemetry/http.rs`). Each service reports its
//!   scrape-time gauges from its own folder (`registry/gauges.rs`, `jobs/gauges.rs`,
//!   `db/sizes.rs`).
//!
//! Dependencies point one way: `supervisor` (and `admin`, which it builds) → services →
//! `db`/`error`/`http`/`clock`/`security`/`service`/`openapi`/`telemetry`. Services never
//! import each other.

pub mod admin;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod hashes;
pub mod http;
pub mod jobs;
pub mod openapi;
pub mod registry;
pub mod security;
pub mod service;
pub mod supervisor;
pub mod telemetry;
