//! Presence and token revocation.
//!
//! `online` is a sorted set of user ids scored by when each was last seen (milliseconds, from
//! Redis' own clock so instances with skewed clocks agree). `sessions:{user}` scores each of a
//! user's tokens by when it was last used, so logging out one session keeps the user online
//! while another session of theirs is live. Reads filter by age, so a user whose instance
//! crashed goes offline after the TTL without anyone cleaning up; the sweeper turns that
//! expiry into an `offline` event. Every change of presence is appended to the event log in
//! the same script that makes it, so no change is announced twice or lost between the two.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Script;

use super::Live;
use super::events::APPEND_LUA;
use super::rate_limit::HIT_LUA;
use crate::domain::UserId;

const NOW_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// KEYS: revoked, sessions, online, names, events, epoch, event count[, budget counter].
/// ARGV: jti, user, ttl_ms, username, candidate epoch, maxlen, trim mode[, limit, window_ms].
/// Returns {-1, 0} when the token is revoked, {-2, ms left in the window} when the budget is
/// spent (nothing else is done), {0, 0} otherwise.
static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{APPEND_LUA}
        {HIT_LUA}
        if redis.call('EXISTS', KEYS[1]) == 1 then return {{-1, 0}} end
        if KEYS[8] then
            local count, left = hit(KEYS[8], ARGV[9])
            if count > tonumber(ARGV[8]) then return {{-2, left}} end
        end
        {NOW_LUA}
        local ttl = tonumber(ARGV[3])
        local previous = redis.call('ZSCORE', KEYS[3], ARGV[2])
        redis.call('ZADD', KEYS[2], now, ARGV[1])
        redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
        redis.call('PEXPIRE', KEYS[2], ttl)
        redis.call('ZADD', KEYS[3], 'GT', now, ARGV[2])
        if (not previous) or tonumber(previous) <= now - ttl then
            redis.call('HSET', KEYS[4], ARGV[2], ARGV[4])
            append(KEYS[5], KEYS[6], KEYS[7], ARGV[5], ARGV[6], ARGV[7], 'presence', '*',
                cjson.encode({{user_id = ARGV[2], username = ARGV[4], online = true, at = now}}))
        end
        return {{0, 0}}
        "
    ))
});

/// KEYS: revoked, sessions, online, names, events, epoch, event count.
/// ARGV: jti, user, ttl_ms, revoke_for_ms, candidate epoch, maxlen, trim mode.
/// Returns 1 when that was the user's last live session (they are now offline), else 0.
static REVOKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{APPEND_LUA}
        {NOW_LUA}
        redis.call('SET', KEYS[1], '1', 'PX', ARGV[4])
        append(KEYS[5], KEYS[6], KEYS[7], ARGV[5], ARGV[6], ARGV[7], 'session_revoked', 'u:' .. ARGV[2],
            cjson.encode({{jti = ARGV[1]}}))
        redis.call('ZREM', KEYS[2], ARGV[1])
        redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]))
        local rest = redis.call('ZREVRANGE', KEYS[2], 0, 0, 'WITHSCORES')
        if #rest > 0 then
            redis.call('ZADD', KEYS[3], rest[2], ARGV[2])
            return 0
        end
        if redis.call('ZREM', KEYS[3], ARGV[2]) == 1 then
            local name = redis.call('HGET', KEYS[4], ARGV[2]) or ''
            append(KEYS[5], KEYS[6], KEYS[7], ARGV[5], ARGV[6], ARGV[7], 'presence', '*',
                cjson.encode({{user_id = ARGV[2], username = name, online = false, at = now}}))
        end
        return 1
        "
    ))
});

/// KEYS: online, names, events, epoch, event count. ARGV: ttl_ms, candidate epoch, maxlen,
/// trim mode.
/// Takes users silent for the TTL off the online set and announces each one as offline.
/// ZREM decides which instance announces, so each expiry is announced once.
static SWEEP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{APPEND_LUA}
        {NOW_LUA}
        local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0, 500)
        for _, user in ipairs(expired) do
            redis.call('ZREM', KEYS[1], user)
            local name = redis.call('HGET', KEYS[2], user) or ''
            append(KEYS[3], KEYS[4], KEYS[5], ARGV[2], ARGV[3], ARGV[4], 'presence', '*',
                cjson.encode({{user_id = user, username = name, online = false, at = now}}))
        end
        return #expired
        "
    ))
});

/// KEYS: online. ARGV: ttl_ms, limit. The live entries, most recently seen first, as
/// [user, score, user, score, ...].
static ONLINE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW_LUA}
        local oldest = now - tonumber(ARGV[1])
        return redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', '(' .. oldest, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
        "
    ))
});

/// KEYS: online. ARGV: ttl_ms. The number of live entries.
static ONLINE_COUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW_LUA}
        return redis.call('ZCOUNT', KEYS[1], '(' .. (now - tonumber(ARGV[1])), '+inf')
        "
    ))
});

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TouchOutcome {
    Revoked,
    Active,
    /// Over the budget spent with the touch: retry after this many seconds.
    Limited(u64),
}

/// A budget to spend with a touch: its name, how many a user may spend per window, the window.
#[derive(Debug, Clone, Copy)]
pub struct Spend {
    pub scope: &'static str,
    pub limit: u32,
    pub window: Duration,
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
    /// session and its user as seen now (announcing the user when they come online).
    pub async fn touch(
        &self,
        jti: &str,
        user: UserId,
        username: &str,
    ) -> redis::RedisResult<TouchOutcome> {
        self.touch_spending(jti, user, username, None).await
    }

    /// [`Live::touch`], spending one unit of `spend` for `user` in the same round trip (a
    /// fixed window counted in Redis, so the budget holds across instances).
    pub async fn touch_spending(
        &self,
        jti: &str,
        user: UserId,
        username: &str,
        spend: Option<Spend>,
    ) -> redis::RedisResult<TouchOutcome> {
        let user = user.to_string();
        let mut conn = self.redis.clone();
        let mut touch = TOUCH.prepare_invoke();
        touch
            .key(self.keys.revoked(jti))
            .key(self.keys.sessions(&user))
            .key(self.keys.online())
            .key(self.keys.names())
            .arg(jti)
            .arg(&user)
            .arg(self.ttl_ms())
            .arg(username);
        self.with_log(&mut touch);
        if let Some(spend) = spend {
            touch
                .key(self.keys.rate_limit(spend.scope, &user))
                .arg(spend.limit)
                .arg(u64::try_from(spend.window.as_millis()).unwrap_or(u64::MAX));
        }
        let (outcome, retry_ms): (i64, u64) = touch.invoke_async(&mut conn).await?;
        Ok(match outcome {
            -1 => TouchOutcome::Revoked,
            -2 => TouchOutcome::Limited(retry_ms.div_ceil(1000)),
            _ => TouchOutcome::Active,
        })
    }

    /// Revokes a token until `valid_for` has passed (after that it is expired anyway), ends
    /// its event streams on every instance, and returns whether its user went offline
    /// because it was their last live session.
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
        let mut revoke = REVOKE.prepare_invoke();
        revoke
            .key(self.keys.revoked(jti))
            .key(self.keys.sessions(&user))
            .key(self.keys.online())
            .key(self.keys.names())
            .arg(jti)
            .arg(&user)
            .arg(self.ttl_ms())
            .arg(revoke_for_ms);
        let went_offline: i64 = self.with_log(&mut revoke).invoke_async(&mut conn).await?;
        Ok(went_offline == 1)
    }

    /// Announces users silent for the TTL as offline; returns how many.
    pub async fn sweep_presence(&self) -> redis::RedisResult<usize> {
        let mut conn = self.redis.clone();
        let mut sweep = SWEEP.prepare_invoke();
        sweep
            .key(self.keys.online())
            .key(self.keys.names())
            .arg(self.ttl_ms());
        self.with_log(&mut sweep).invoke_async(&mut conn).await
    }

    /// Runs [`Live::sweep_presence`] a few times per TTL until shutdown. Every instance runs
    /// one; the script makes sure each expiry is announced once.
    pub fn spawn_presence_sweeper(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let live = self.clone();
        let every = (self.presence_ttl / 4).max(Duration::from_millis(250));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = shutdown.changed() => return,
                }
                if let Err(err) = live.sweep_presence().await {
                    tracing::debug!(error = %err, "presence sweep failed");
                }
                // A round trip for the gauge only when something reads it.
                if crate::telemetry::metrics::enabled()
                    && let Ok(online) = live.online_count().await
                {
                    crate::telemetry::metrics::users_online(online as u64);
                }
            }
        });
    }

    /// How many users are online now.
    pub async fn online_count(&self) -> redis::RedisResult<usize> {
        let mut conn = self.redis.clone();
        ONLINE_COUNT
            .key(self.keys.online())
            .arg(self.ttl_ms())
            .invoke_async(&mut conn)
            .await
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
}
