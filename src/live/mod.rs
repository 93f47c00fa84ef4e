//! What is live lives in Redis, shared by every API instance: who is online, which tokens are
//! revoked, and rate-limit counters. Nothing here is kept in process memory.

mod presence;
mod rate_limit;

use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use presence::{OnlineEntry, TouchOutcome};

use crate::config::Settings;

#[derive(Clone)]
pub struct Live {
    redis: ConnectionManager,
    keys: Keys,
    presence_ttl: Duration,
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

    fn rate_limit(&self, scope: &str, subject: &str) -> String {
        format!("{}ratelimit:{scope}:{subject}", self.prefix)
    }
}

impl Live {
    /// Creates the connection manager without connecting: the service starts even when Redis
    /// is down (`/readyz` says so) and reconnects by itself when it comes back.
    pub fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let client = redis::Client::open(settings.redis_url.as_str())
            .context("REDIS_URL is not a valid Redis URL")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let redis = ConnectionManager::new_lazy_with_config(client, config)
            .context("cannot create the Redis connection manager")?;
        Ok(Self {
            redis,
            keys: Keys {
                prefix: settings.redis_key_prefix.clone(),
            },
            presence_ttl: settings.presence_ttl,
        })
    }

    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
    }
}
