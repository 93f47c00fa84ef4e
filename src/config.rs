//! Settings come from environment variables only, are validated once at start-up and are then
//! passed around explicitly (no global), so tests can build as many variants as they like.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, bail};
use rand::RngCore;

/// Shortest JWT secret accepted outside of development mode (HS256 wants at least 256 bits).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

#[derive(Clone, Debug)]
pub struct Settings {
    /// `LISTEN_ADDR`: address the HTTP server binds (port 0 picks a free port).
    pub listen_addr: String,
    /// `METRICS_ADDR`: where `GET /metrics` (Prometheus text format) is served, apart from the
    /// API so that it need not be public; unset or empty: no metrics.
    pub metrics_addr: Option<String>,
    /// `MONGODB_URI`: connection string of the MongoDB deployment.
    pub mongodb_uri: String,
    /// `MONGODB_DATABASE`: database that holds the collections of this service.
    pub mongodb_database: String,
    /// `MONGODB_TIMEOUT_MS`: how long an operation waits for a usable server before failing.
    pub mongodb_timeout: Duration,
    /// `REDIS_URL`: connection URL of Redis.
    pub redis_url: String,
    /// `REDIS_KEY_PREFIX`: prepended to every Redis key, so several deployments (or tests) can
    /// share one Redis.
    pub redis_key_prefix: String,
    /// `JWT_SECRET`: HMAC secret of the access tokens.
    pub jwt_secret: Secret,
    /// `JWT_TTL_SECS`: lifetime of an access token.
    pub jwt_ttl: Duration,
    /// `PRESENCE_TTL_SECS`: a user with no request or open stream for this long is offline.
    pub presence_ttl: Duration,
    /// `EVENT_LOG_MAX_LEN`: events kept in the Redis log for replay; a client that was away
    /// for longer gets a `resync` event.
    pub event_log_max_len: usize,
    /// `SSE_HEARTBEAT_SECS`: interval of the comment lines that keep idle streams open.
    pub sse_heartbeat: Duration,
    /// `SSE_RETRY_MS`: reconnection delay suggested to clients (`retry:`).
    pub sse_retry_ms: u64,
    /// `SSE_BUFFER_EVENTS`: how far a slow stream may fall behind before it is closed (the
    /// client then resumes from the log).
    pub sse_buffer_events: usize,
    /// `AUTH_RATE_LIMIT_PER_MINUTE`: login attempts allowed per minute per client address and
    /// username, and per address for all usernames; registrations per address.
    pub auth_rate_limit_per_minute: u32,
    /// `WRITE_RATE_LIMIT_PER_MINUTE`: posts, edits, deletions, reactions and room changes
    /// allowed per user per minute, on all instances together.
    pub write_rate_limit_per_minute: u32,
    /// `SIGNAL_RATE_LIMIT_PER_MINUTE`: read markers and typing signals allowed per user per
    /// minute, on all instances together.
    pub signal_rate_limit_per_minute: u32,
    /// `TRUST_FORWARDED_FOR`: take the client address from `X-Forwarded-For` (only behind a
    /// proxy that sets it).
    pub trust_forwarded_for: bool,
    /// `MAX_BODY_BYTES`: largest accepted JSON request body.
    pub max_body_bytes: usize,
    /// `HTTP_WORKERS`: worker threads of the HTTP server (0 = one per CPU core).
    pub http_workers: usize,
    /// `SHUTDOWN_TIMEOUT_SECS`: how long each step of a shutdown may take: in-flight requests
    /// finishing, the last look for posts of unknown outcome, writing the statistics counters,
    /// and appending the events still waiting for Redis.
    pub shutdown_timeout: Duration,
    /// `COOKIE_SECURE`: mark the session cookie `Secure` (only sent over HTTPS).
    pub cookie_secure: bool,
    /// `APP_ENV=development`: allows a missing or short `JWT_SECRET` for local runs.
    pub dev_mode: bool,
    /// `LOG_FORMAT`: `text` (default) or `json`.
    pub log_format: LogFormat,
    /// Things worth telling the operator, logged once logging is set up.
    pub warnings: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A secret string that never shows up in `Debug` output or logs.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, applying defaults and validating every value.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let string = |name: &str, default: &str| get(name).unwrap_or_else(|| default.to_owned());

        let dev_mode = match get("APP_ENV").as_deref() {
            None | Some("production") => false,
            Some("development") => true,
            Some(other) => bail!("APP_ENV must be `production` or `development`, not `{other}`"),
        };

        let mut warnings = Vec::new();
        let jwt_secret = match get("JWT_SECRET") {
            Some(secret) if secret.len() >= MIN_JWT_SECRET_BYTES => Secret::new(secret),
            Some(secret) if dev_mode => {
                warnings.push(format!("JWT_SECRET is shorter than {MIN_JWT_SECRET_BYTES} bytes; accepted only because APP_ENV=development"));
                Secret::new(secret)
            }
            Some(_) => bail!(
                "JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes long (for example `openssl rand -hex 32`)"
            ),
            None if dev_mode => {
                warnings.push("JWT_SECRET is not set; using a random secret (APP_ENV=development): tokens will not survive a restart nor work on other instances".to_owned());
                Secret::new(random_hex(32))
            }
            None => bail!(
                "JWT_SECRET is not set: set it to a random string of at least {MIN_JWT_SECRET_BYTES} bytes, or set APP_ENV=development for a local run"
            ),
        };

        let log_format = match get("LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("LOG_FORMAT must be `text` or `json`, not `{other}`"),
        };

        const DAY: u64 = 24 * 3600;
        let presence_ttl = Duration::from_secs(bounded(&get, "PRESENCE_TTL_SECS", 60, 1, DAY)?);
        let jwt_ttl = Duration::from_secs(bounded(&get, "JWT_TTL_SECS", 3600, 1, 365 * DAY)?);
        let max_body_bytes = bounded(&get, "MAX_BODY_BYTES", 64 * 1024, 1024, 64 * 1024 * 1024)?;

        Ok(Self {
            listen_addr: string("LISTEN_ADDR", "127.0.0.1:8080"),
            metrics_addr: get("METRICS_ADDR").filter(|addr| !addr.trim().is_empty()),
            mongodb_uri: string(
                "MONGODB_URI",
                "mongodb://127.0.0.1:27017/?directConnection=true",
            ),
            mongodb_database: string("MONGODB_DATABASE", "chat"),
            mongodb_timeout: Duration::from_millis(bounded(
                &get,
                "MONGODB_TIMEOUT_MS",
                5000,
                100,
                600_000,
            )?),
            redis_url: string("REDIS_URL", "redis://127.0.0.1:6379"),
            redis_key_prefix: string("REDIS_KEY_PREFIX", "chat:"),
            jwt_secret,
            jwt_ttl,
            presence_ttl,
            event_log_max_len: bounded(&get, "EVENT_LOG_MAX_LEN", 100_000, 10, 100_000_000)?,
            sse_heartbeat: Duration::from_secs(bounded(&get, "SSE_HEARTBEAT_SECS", 15, 1, 3600)?),
            sse_retry_ms: bounded(&get, "SSE_RETRY_MS", 2000, 0, 600_000)?,
            sse_buffer_events: bounded(&get, "SSE_BUFFER_EVENTS", 4096, 16, 1_000_000)?,
            auth_rate_limit_per_minute: number(&get, "AUTH_RATE_LIMIT_PER_MINUTE", 20)?,
            write_rate_limit_per_minute: bounded(
                &get,
                "WRITE_RATE_LIMIT_PER_MINUTE",
                120,
                1,
                1_000_000_000,
            )?,
            signal_rate_limit_per_minute: bounded(
                &get,
                "SIGNAL_RATE_LIMIT_PER_MINUTE",
                600,
                1,
                1_000_000_000,
            )?,
            trust_forwarded_for: boolean(&get, "TRUST_FORWARDED_FOR", false)?,
            max_body_bytes,
            http_workers: number(&get, "HTTP_WORKERS", 0)?,
            shutdown_timeout: Duration::from_secs(bounded(
                &get,
                "SHUTDOWN_TIMEOUT_SECS",
                10,
                0,
                3600,
            )?),
            cookie_secure: boolean(&get, "COOKIE_SECURE", !dev_mode)?,
            dev_mode,
            log_format,
            warnings,
        })
    }
}

fn number<T>(get: &impl Fn(&str) -> Option<String>, name: &str, default: T) -> anyhow::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match get(name) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .with_context(|| format!("{name} must be a non-negative whole number, not `{raw}`")),
    }
}

/// A whole number within `min..=max`, so that no setting can overflow later arithmetic.
fn bounded<T>(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: T,
    min: T,
    max: T,
) -> anyhow::Result<T>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let value = number(get, name, default)?;
    if value < min || value > max {
        bail!("{name} must be between {min} and {max}, not {value}");
    }
    Ok(value)
}

fn boolean(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: bool,
) -> anyhow::Result<bool> {
    match get(name).as_deref().map(str::trim) {
        None => Ok(default),
        Some("1" | "true" | "yes") => Ok(true),
        Some("0" | "false" | "no") => Ok(false),
        Some(other) => bail!("{name} must be `true` or `false`, not `{other}`"),
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn a_missing_jwt_secret_is_refused_outside_development() {
        let err = settings(&[]).unwrap_err().to_string();
        assert!(err.contains("JWT_SECRET is not set"), "{err}");
    }

    #[test]
    fn a_short_jwt_secret_is_refused_outside_development() {
        let err = settings(&[("JWT_SECRET", "short")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 32 bytes"), "{err}");
    }

    #[test]
    fn development_mode_accepts_a_missing_secret() {
        let s = settings(&[("APP_ENV", "development")]).unwrap();
        assert_eq!(s.jwt_secret.expose().len(), 64);
        assert!(!s.cookie_secure);
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let s = settings(&[("JWT_SECRET", &"x".repeat(40))]).unwrap();
        assert!(!format!("{s:?}").contains("xxxx"));
    }

    #[test]
    fn malformed_numbers_are_reported_by_name() {
        let err = settings(&[("APP_ENV", "development"), ("PRESENCE_TTL_SECS", "soon")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("PRESENCE_TTL_SECS"), "{err}");
    }
}

#[cfg(test)]
mod documentation {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    /// `.env.example` must document exactly the variables the code reads.
    #[test]
    fn env_example_lists_every_variable_read() {
        let asked = RefCell::new(BTreeSet::new());
        Settings::from_lookup(|name| {
            asked.borrow_mut().insert(name.to_owned());
            (name == "APP_ENV").then(|| "development".to_owned())
        })
        .unwrap();
        let mut asked = asked.into_inner();
        asked.insert("RUST_LOG".to_owned()); // read by the log filter
        let documented: BTreeSet<String> = include_str!("../.env.example")
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split_once('=').map(|(name, _)| name.trim().to_owned()))
            .collect();
        assert_eq!(asked, documented);
    }
}
