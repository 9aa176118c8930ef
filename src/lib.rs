//! warden: a delayed password-hash service, a heartbeat discovery registry and a remote job
//! runner in one binary, with all of its state in one SQLite file.
//!
//! # Layout
//!
//! - [`cli`]: the `warden` command line (`serve`, `migrate`, `token`, `pki`, `jobs`, `hash`,
//!   `stats`), logging set-up, exit codes.
//! - [`config`]: every setting of `warden serve`, from flags and `WARDEN_*` variables.
//! - [`supervisor`]: builds the services, binds one listener each, serves, and drains on
//!   SIGTERM, SIGINT or `/shutdown`.
//! - [`db`]: the SQLite file (WAL, `synchronous`, foreign keys, busy timeout), migrations,
//!   the data-directory lock, and the group-commit [`db::Writer`] every hot write goes through.
//! - [`error`]: the error type handlers return and its JSON shape.
//! - [`clock`]: the injectable time source.
//! - [`hashes`]: `POST /hash`, `GET /hash/{id}`, `GET /stats`: router, SQL and input parsing.
//! - [`registry`]: heartbeat discovery: `/{group}/{id}`, `/{group}`, `/`, and the purge job.
//! - [`jobs`]: the job runner: router, SQL, the runner (workers, process groups, output)
//!   and the CLI's HTTP client.
//! - [`security`]: bearer tokens, the development PKI, and TLS configuration and identity.
//! - [`admin`]: `GET /healthz` and `/shutdown`.
//!
//! Dependencies point one way: `supervisor` → services → `db`/`error`/`clock`/`security`.
//! Services never import each other.

pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod hashes;
pub mod jobs;
pub mod registry;
pub mod security;
pub mod supervisor;
