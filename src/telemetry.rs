use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber: level from `RUST_LOG` (default `info`), text or JSON lines.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // Already installed (a test spawned another app): keep the first one.
    let _ = result;
}

/// The service's metrics, in the Prometheus text format at `GET /metrics` on `METRICS_ADDR`.
/// Every series is named here, once; the code that does the work calls these functions.
/// Without `METRICS_ADDR` no recorder is installed, and the calls that would build labels or
/// read clocks return at once.
pub mod metrics {
    use std::sync::OnceLock;
    use std::time::Duration;

    use ::metrics::{
        Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
    };
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

    const HTTP_REQUESTS: &str = "chat_http_requests_total";
    const HTTP_DURATION: &str = "chat_http_request_duration_seconds";
    const SSE_STREAMS: &str = "chat_sse_streams";
    const SSE_EVENTS: &str = "chat_sse_events_sent_total";
    const DELIVERY_LAG: &str = "chat_delivery_lag_seconds";
    const MESSAGES_POSTED: &str = "chat_messages_posted_total";
    const EVENTS_APPENDED: &str = "chat_log_events_appended_total";
    const WAITING: &str = "chat_delivery_waiting_batches";
    const STORE_COMMANDS: &str = "chat_store_commands_total";
    const STORE_DURATION: &str = "chat_store_command_duration_seconds";
    const REDIS_COMMANDS: &str = "chat_redis_commands_total";
    const REDIS_DURATION: &str = "chat_redis_command_duration_seconds";
    const USERS_ONLINE: &str = "chat_users_online";
    const RATE_LIMITED: &str = "chat_rate_limited_total";

    /// Upper bounds of the latency histograms' buckets, in seconds.
    const BUCKETS: &[f64] = &[
        0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];

    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

    /// Installs the process's recorder (once; later calls return the same handle).
    pub fn install() -> Option<PrometheusHandle> {
        HANDLE
            .get_or_init(|| {
                let installed = PrometheusBuilder::new()
                    .set_buckets(BUCKETS)
                    .and_then(PrometheusBuilder::install_recorder);
                match installed {
                    Ok(handle) => {
                        describe();
                        Some(handle)
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "metrics are off: cannot install the recorder");
                        None
                    }
                }
            })
            .clone()
    }

    fn describe() {
        describe_counter!(
            HTTP_REQUESTS,
            "HTTP requests answered, by method, route template and status."
        );
        describe_histogram!(
            HTTP_DURATION,
            Unit::Seconds,
            "Time to answer an HTTP request (an event stream: to its first byte)."
        );
        describe_gauge!(SSE_STREAMS, "Event streams open on this instance.");
        describe_counter!(SSE_EVENTS, "Events written to event streams, by type.");
        describe_histogram!(
            DELIVERY_LAG,
            Unit::Seconds,
            "From an event's append to the log to its write on a live stream."
        );
        describe_counter!(
            MESSAGES_POSTED,
            "Messages stored by posts through this instance."
        );
        describe_counter!(
            EVENTS_APPENDED,
            "Events of stored batches appended to the Redis event log by this instance (a batch appended again counts again)."
        );
        describe_gauge!(
            WAITING,
            "Batches this instance stored and has not finished: `announce` waiting for (or retrying) their append to the log, `record` appended and waiting to be recorded with their counts."
        );
        describe_counter!(STORE_COMMANDS, "MongoDB commands, by command and outcome.");
        describe_histogram!(
            STORE_DURATION,
            Unit::Seconds,
            "MongoDB command round trips, by command."
        );
        describe_counter!(REDIS_COMMANDS, "Redis commands, by command and outcome.");
        describe_histogram!(
            REDIS_DURATION,
            Unit::Seconds,
            "Redis command round trips, by command (XREAD blocks by design)."
        );
        describe_gauge!(
            USERS_ONLINE,
            "Users online on all instances, as of this instance's last presence sweep."
        );
        describe_counter!(RATE_LIMITED, "Requests refused with 429, by budget.");
    }

    /// Whether a recorder is installed: without one, callers skip what only the metrics need
    /// (labels, clocks).
    pub fn enabled() -> bool {
        HANDLE.get().is_some_and(Option::is_some)
    }

    fn outcome(failed: bool) -> &'static str {
        if failed { "error" } else { "ok" }
    }

    pub fn http_request(method: &str, route: &str, status: u16, elapsed: Duration) {
        if !enabled() {
            return;
        }
        let labels = [
            ("method", method.to_owned()),
            ("route", route.to_owned()),
            ("status", status.to_string()),
        ];
        counter!(HTTP_REQUESTS, &labels).increment(1);
        histogram!(HTTP_DURATION, &labels).record(elapsed);
    }

    /// Counts an open event stream until it is dropped.
    pub struct OpenStream(());

    impl OpenStream {
        pub fn opened() -> Self {
            gauge!(SSE_STREAMS).increment(1.0);
            Self(())
        }
    }

    impl Drop for OpenStream {
        fn drop(&mut self) {
            gauge!(SSE_STREAMS).decrement(1.0);
        }
    }

    /// An event written to a stream; `appended_ms` (when Redis appended it, from its id) for
    /// a live one, not for a replay.
    ///
    /// This runs once per event per stream: the handles are looked up once per worker thread
    /// (a registry lookup by label each time would be one per stream per event).
    pub fn event_sent(kind: &'static str, appended_ms: Option<u64>) {
        thread_local! {
            static SENT: std::cell::RefCell<Vec<(&'static str, ::metrics::Counter)>> =
                const { std::cell::RefCell::new(Vec::new()) };
            static LAG: ::metrics::Histogram = histogram!(DELIVERY_LAG);
        }
        if !enabled() {
            return;
        }
        SENT.with_borrow_mut(|sent| match sent.iter().find(|(k, _)| *k == kind) {
            Some((_, counter)) => counter.increment(1),
            None => {
                let counter = counter!(SSE_EVENTS, "type" => kind);
                counter.increment(1);
                sent.push((kind, counter));
            }
        });
        if let Some(appended_ms) = appended_ms {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let lag = now.saturating_sub(Duration::from_millis(appended_ms));
            LAG.with(|histogram| histogram.record(lag));
        }
    }

    pub fn messages_posted(n: usize) {
        counter!(MESSAGES_POSTED).increment(n as u64);
    }

    pub fn events_appended(n: usize) {
        counter!(EVENTS_APPENDED).increment(n as u64);
    }

    pub fn waiting_batches(stage: &'static str, n: usize) {
        gauge!(WAITING, "stage" => stage).set(n as f64);
    }

    pub fn store_command(command: &str, elapsed: Duration, failed: bool) {
        if !enabled() {
            return;
        }
        let command = command.to_owned();
        counter!(STORE_COMMANDS, "command" => command.clone(), "outcome" => outcome(failed))
            .increment(1);
        histogram!(STORE_DURATION, "command" => command).record(elapsed);
    }

    pub fn redis_command(command: &'static str, elapsed: Duration, failed: bool) {
        counter!(REDIS_COMMANDS, "command" => command, "outcome" => outcome(failed)).increment(1);
        histogram!(REDIS_DURATION, "command" => command).record(elapsed);
    }

    pub fn users_online(n: u64) {
        gauge!(USERS_ONLINE).set(n as f64);
    }

    pub fn rate_limited(budget: &'static str) {
        counter!(RATE_LIMITED, "budget" => budget).increment(1);
    }
}
