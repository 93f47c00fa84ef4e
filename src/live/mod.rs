//! What is live lives in Redis, shared by every API instance: who is online, which tokens are
//! revoked, rate-limit counters, and the event log that feeds every SSE stream. The only
//! in-process state is each instance's fan-out of that log to its own open streams.

mod events;
mod hub;
mod measured;
mod presence;
mod rate_limit;
mod subscription;
mod typing;

use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use events::{
    Audience, EventId, EventKind, FINISHED_MARKER_TTL, LogEvent, MARKER_TTL, MemberChange,
    NewEvent, sse_frame,
};
pub use hub::{Hub, HubItem, HubReceiver, Lagged, ResyncCause};
pub use measured::Measured;
pub use presence::{OnlineEntry, Spend, TouchOutcome};
pub use subscription::{Admission, Subscription};
pub use typing::TYPING_EVERY;

use crate::config::Settings;

#[derive(Clone)]
pub struct Live {
    client: redis::Client,
    redis: Measured,
    keys: Keys,
    presence_ttl: Duration,
    event_log_max_len: usize,
}

/// Builds every Redis key from the configured prefix, so deployments and tests can share a
/// Redis without seeing each other's data.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    fn revoked(&self, jti: &str) -> String {
        format!("{}revoked:{jti}", self.prefix)
    }

    fn sessions(&self, user: &str) -> String {
        format!("{}sessions:{user}", self.prefix)
    }

    fn online(&self) -> String {
        format!("{}online", self.prefix)
    }

    fn names(&self) -> String {
        format!("{}names", self.prefix)
    }

    fn events(&self) -> String {
        format!("{}events", self.prefix)
    }

    fn epoch(&self) -> String {
        format!("{}events:epoch", self.prefix)
    }

    /// The ids of a batch's events, set by the script that appends them (see `events`).
    fn batch_marker(&self, batch: &str) -> String {
        format!("{}events:batch:{batch}", self.prefix)
    }

    /// How many entries were ever appended to the log (numbers each entry).
    pub(crate) fn event_count(&self) -> String {
        format!("{}events:count", self.prefix)
    }

    fn rate_limit(&self, scope: &str, subject: &str) -> String {
        format!("{}ratelimit:{scope}:{subject}", self.prefix)
    }
}

fn connection_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
}

impl Live {
    /// Creates the connection manager without connecting: the service starts even when Redis
    /// is down (`/readyz` says so) and reconnects by itself when it comes back.
    pub fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let client = redis::Client::open(settings.redis_url.as_str())
            .context("REDIS_URL is not a valid Redis URL")?;
        let redis = Measured(
            ConnectionManager::new_lazy_with_config(
                client.clone(),
                connection_config(Duration::from_secs(2)),
            )
            .context("cannot create the Redis connection manager")?,
        );
        Ok(Self {
            client,
            redis,
            keys: Keys {
                prefix: settings.redis_key_prefix.clone(),
            },
            presence_ttl: settings.presence_ttl,
            event_log_max_len: settings.event_log_max_len,
        })
    }

    /// A connection of its own, for blocking reads that must not hold up other commands.
    pub(crate) fn dedicated_connection(
        &self,
        response_timeout: Duration,
    ) -> redis::RedisResult<Measured> {
        ConnectionManager::new_lazy_with_config(
            self.client.clone(),
            connection_config(response_timeout),
        )
        .map(Measured)
    }

    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
    }

    pub fn presence_ttl(&self) -> Duration {
        self.presence_ttl
    }
}
