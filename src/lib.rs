//! Real-time chat backend: an actix-web HTTP/JSON API over MongoDB (durable data) and Redis
//! (presence, token revocation, rate limits).

pub mod auth;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod error;
pub mod http;
pub mod live;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
