//! Typing signals: live only. A signal is appended to the log as a `typing` event, at most one
//! a second per user and conversation (the rest are absorbed), and never stored anywhere
//! else; streams resuming from the log skip them, and receivers let an indicator expire.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::Live;
use super::events::{APPEND_LUA, NewEvent};

/// How often a user's typing in one conversation is announced at most.
pub const TYPING_EVERY: Duration = Duration::from_secs(1);

/// KEYS: the throttle, then the log's. ARGV: the throttle's window in ms, kind, audience,
/// data, then the log's. Appends unless a signal of the window was appended already; returns
/// 1 when it appended.
static TYPING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{APPEND_LUA}
        if not redis.call('SET', KEYS[1], '1', 'PX', ARGV[1], 'NX') then return 0 end
        append(KEYS[2], KEYS[3], KEYS[4], ARGV[5], ARGV[6], ARGV[7], ARGV[2], ARGV[3], ARGV[4])
        return 1
        "
    ))
});

impl Live {
    /// Announces `event` (a typing signal of `subject`) unless one was announced within
    /// [`TYPING_EVERY`]; whether it was.
    pub async fn typing(&self, subject: &str, event: &NewEvent) -> redis::RedisResult<bool> {
        let mut invocation = TYPING.prepare_invoke();
        invocation
            .key(self.keys.rate_limit("typing", subject))
            .arg(u64::try_from(TYPING_EVERY.as_millis()).unwrap_or(u64::MAX))
            .arg(event.kind.as_str())
            .arg(event.audience.encode())
            .arg(&event.data);
        self.with_log(&mut invocation);
        let appended: i64 = invocation.invoke_async(&mut self.redis.clone()).await?;
        Ok(appended == 1)
    }
}
