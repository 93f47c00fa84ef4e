//! Fixed-window rate limits counted in Redis, so the limit holds across instances.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::Live;

/// A Lua function for scripts: counts one hit of `key` in its fixed window of `window_ms` and
/// returns the count and the milliseconds left in the window.
pub(super) const HIT_LUA: &str = r"
local function hit(key, window_ms)
    local count = redis.call('INCR', key)
    if count == 1 then redis.call('PEXPIRE', key, window_ms) end
    local left = redis.call('PTTL', key)
    if left < 0 then
        redis.call('PEXPIRE', key, window_ms)
        left = tonumber(window_ms)
    end
    return count, left
end
";

/// KEYS: counter. ARGV: window_ms. Returns [count, ms until the window resets].
static HIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{HIT_LUA}
        local count, left = hit(KEYS[1], ARGV[1])
        return {{count, left}}
        "
    ))
});

impl Live {
    /// Counts one attempt of `subject` in `scope`. Returns `Some(seconds to wait)` when the
    /// attempt is over `limit` for the current window.
    pub async fn rate_limit(
        &self,
        scope: &str,
        subject: &str,
        limit: u32,
        window: Duration,
    ) -> redis::RedisResult<Option<u64>> {
        let mut conn = self.redis.clone();
        let (count, ttl_ms): (u64, u64) = HIT
            .key(self.keys.rate_limit(scope, subject))
            .arg(u64::try_from(window.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut conn)
            .await?;
        Ok((count > u64::from(limit)).then(|| ttl_ms.div_ceil(1000)))
    }
}
