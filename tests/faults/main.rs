//! Fault tests: two instances of the service on a SecantusDB of the test's own (a single-node
//! replica set with failpoints and data on disk) and a Redis of its own, under steady traffic,
//! while the store steps down, fails commands, is killed and restarted, or Redis loses its
//! data. Each test checks what a person using the chat is promised; see `harness` for the
//! checks and `docs/fault-tolerance.md` for the results.
//!
//! `scripts/failover.sh` runs the same tests with release builds and longer traffic, and prints
//! one table row per fault (written to `FAULT_REPORT`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The API suite's helpers: the same clients, servers and SSE parser.
#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "../api/sse.rs"]
mod sse;

mod harness;
mod redis;
mod store;
