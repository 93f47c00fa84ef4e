//! The state every handler shares, below the HTTP layer so that handlers, extractors and the
//! wiring in `startup` all depend on it and not on each other.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::auth::{JwtKeys, PasswordHasher};
use crate::delivery::Delivery;
use crate::live::{Hub, Live};
use crate::store::{RoomRecord, Store};

/// SSE settings handed to every stream.
#[derive(Clone, Debug)]
pub struct SseSettings {
    pub heartbeat: Duration,
    pub retry_ms: u64,
}

/// Everything a handler may need, shared by all workers of one instance. Besides handles to
/// MongoDB and Redis it holds only the fan-out of the event log to this instance's streams:
/// no state another instance would need.
pub struct AppState {
    pub store: Store,
    pub live: Live,
    pub hub: Arc<Hub>,
    pub delivery: Delivery,
    pub jwt: JwtKeys,
    pub hasher: PasswordHasher,
    pub default_room: RoomRecord,
    pub sse: SseSettings,
    pub shutdown: watch::Receiver<bool>,
    pub cookie_secure: bool,
    pub trust_forwarded_for: bool,
    pub auth_rate_limit_per_minute: u32,
    pub write_rate_limit_per_minute: u32,
    pub signal_rate_limit_per_minute: u32,
}
