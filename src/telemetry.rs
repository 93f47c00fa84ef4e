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
