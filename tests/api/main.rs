//! warden's integration tests: the real server driven over HTTP, as a client or an operator
//! would drive it.
//!
//! One test binary, one module per topic (zero-to-production's `tests/api/` layout):
//! - `helpers`: the harness every topic shares: `TestApp` (the real supervisor in-process on
//!   port 0, with a fresh temp data dir and a manual clock), `WardenProcess` (the real `warden`
//!   binary as a child process), and the small typed helpers the tests are written in:
//!   `call` (send, then status and JSON body), `eventually` (poll a probe; the only sleep)
//!   and `read_until` (a streamed body up to some text);
//! - `pg`: `fresh_database`, a new empty PostgreSQL database per test on one throwaway cluster;
//! - `hashes`, `registry`, `jobs`: each service's HTTP contract (the first two on both
//!   engines, SQLite and Postgres, from one code: `helpers::on_both_engines!`);
//! - `job_isolation`: what a job can reach (its account, environment and working
//!   directory), that every process it starts ends with it, and its limits;
//! - `job_queue`: the job queue across users: their turns and `--max-queued-per-user`;
//! - `tls`: mutual TLS on the jobs listener;
//! - `connections`: every listener's header, body and idle timeouts, its connection cap, the
//!   drain's bound on clients that do not read, and how refused TLS connections are logged;
//! - `lifecycle`: health, the data-dir lock and the graceful drain, in-process;
//! - `metrics`: `GET /metrics`, parsed as Prometheus text: what moves its counters, and
//!   that no label names what a client named;
//! - `process`: the binary as an operator runs it: settings, signals, kill -9, the CLI;
//! - `openapi`: the API documents, against the routes each listener serves;
//! - `nodes`: several wardens on one Postgres: what one acknowledges the others serve, exact
//!   ids and stats, `kill -9` mid-load, skewed clocks, purges from every node at once;
//! - `migrations`: databases from earlier releases (dumps in `tests/fixtures/`) upgrade
//!   with their data intact;
//! - `deploy`: the `Containerfile` and `deploy/warden.service` run as written: their command
//!   lines and environments, parsed from the files, serve and drain.
//!
//! No test changes process-global state, so they all share this one binary.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step is a failed test

mod connections;
mod deploy;
mod faults;
mod hashes;
mod helpers;
mod job_isolation;
mod job_queue;
mod job_retention;
mod job_spawner;
mod jobs;
mod lifecycle;
mod metrics;
mod migrations;
mod nodes;
mod openapi;
mod pg;
mod process;
mod registry;
mod tls;
