//! Presence and token revocation.
//!
//! `online` is a sorted set of user ids scored by when each was last seen (milliseconds, from
//! Redis' own clock so instances with skewed clocks agree). `sessions:{user}` scores each of a
//! user's tokens by when it was last used, so logging out one session keeps the user online
//! while another session of theirs is live. Everything is filtered by age on read, so a user
//! whose instance crashed goes offline after the TTL without anyone cleaning up.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Script;

use super::Live;
use crate::domain::UserId;

/// KEYS: revoked:{jti}, sessions:{user}, online. ARGV: jti, user, ttl_ms.
/// Returns -1 when the token is revoked, 1 when the user just came online, 0 otherwise.
static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local ttl = tonumber(ARGV[3])
        local previous = redis.call('ZSCORE', KEYS[3], ARGV[2])
        redis.call('ZADD', KEYS[2], now, ARGV[1])
        redis.call('PEXPIRE', KEYS[2], ttl)
        redis.call('ZADD', KEYS[3], 'GT', now, ARGV[2])
        if (not previous) or tonumber(previous) <= now - ttl then return 1 end
        return 0
        ",
    )
});

/// KEYS: revoked:{jti}, sessions:{user}, online. ARGV: jti, user, ttl_ms, revoke_for_ms.
/// Returns 1 when that was the user's last live session (they are now offline), else 0.
static REVOKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        redis.call('SET', KEYS[1], '1', 'PX', ARGV[4])
        redis.call('ZREM', KEYS[2], ARGV[1])
        redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]))
        local rest = redis.call('ZREVRANGE', KEYS[2], 0, 0, 'WITHSCORES')
        if #rest == 0 then
            redis.call('ZREM', KEYS[3], ARGV[2])
            return 1
        end
        redis.call('ZADD', KEYS[3], rest[2], ARGV[2])
        return 0
        ",
    )
});

/// KEYS: online. ARGV: ttl_ms, limit. Drops expired entries, then returns the live ones,
/// most recently seen first, as [user, score, user, score, ...].
static ONLINE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local oldest = now - tonumber(ARGV[1])
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', oldest)
        return redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', '(' .. oldest, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
        ",
    )
});

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TouchOutcome {
    Revoked,
    Active { came_online: bool },
}

#[derive(Debug, Clone)]
pub struct OnlineEntry {
    pub user_id: UserId,
    pub last_seen: DateTime<Utc>,
}

impl Live {
    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.presence_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// One round trip per authenticated request: refuses a revoked token, otherwise marks the
    /// session and its user as seen now.
    pub async fn touch(&self, jti: &str, user: UserId) -> redis::RedisResult<TouchOutcome> {
        let user = user.to_string();
        let mut conn = self.redis.clone();
        let outcome: i64 = TOUCH
            .key(self.keys.revoked(jti))
            .key(self.keys.sessions(&user))
            .key(self.keys.online())
            .arg(jti)
            .arg(&user)
            .arg(self.ttl_ms())
            .invoke_async(&mut conn)
            .await?;
        Ok(match outcome {
            -1 => TouchOutcome::Revoked,
            n => TouchOutcome::Active {
                came_online: n == 1,
            },
        })
    }

    /// Revokes a token until `valid_for` has passed (after that it is expired anyway) and
    /// returns whether its user went offline because it was their last live session.
    pub async fn revoke(
        &self,
        jti: &str,
        user: UserId,
        valid_for: Duration,
    ) -> redis::RedisResult<bool> {
        let user = user.to_string();
        let revoke_for_ms = u64::try_from(valid_for.as_millis())
            .unwrap_or(u64::MAX)
            .max(1000);
        let mut conn = self.redis.clone();
        let went_offline: i64 = REVOKE
            .key(self.keys.revoked(jti))
            .key(self.keys.sessions(&user))
            .key(self.keys.online())
            .arg(jti)
            .arg(&user)
            .arg(self.ttl_ms())
            .arg(revoke_for_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(went_offline == 1)
    }

    /// The users seen within the presence TTL, most recent first, at most `limit`.
    pub async fn online_users(&self, limit: usize) -> redis::RedisResult<Vec<OnlineEntry>> {
        let mut conn = self.redis.clone();
        let flat: Vec<(String, f64)> = ONLINE
            .key(self.keys.online())
            .arg(self.ttl_ms())
            .arg(limit)
            .invoke_async(&mut conn)
            .await?;
        Ok(flat
            .into_iter()
            .filter_map(|(user, score)| {
                let user_id = UserId::parse(&user).ok()?;
                #[allow(clippy::cast_possible_truncation)]
                let last_seen = DateTime::from_timestamp_millis(score as i64)?;
                Some(OnlineEntry { user_id, last_seen })
            })
            .collect())
    }

    pub fn presence_ttl(&self) -> Duration {
        self.presence_ttl
    }
}
