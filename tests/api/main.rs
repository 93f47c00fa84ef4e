//! API tests: each one drives real instances of the service (bound to port 0) against the
//! real Redis and MongoDB-protocol servers that `scripts/test.sh` starts, with a database name
//! and Redis key prefix of its own so that tests run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod delivery;
mod edits;
mod errors;
mod events;
mod health;
mod limits;
// Shared with the fault tests (tests/faults), which use parts this suite does not.
#[allow(dead_code)]
mod helpers;
mod messages;
mod openapi;
mod reading;
mod rooms;
mod search;
#[allow(dead_code)]
mod sse;
mod stats;
mod users;
