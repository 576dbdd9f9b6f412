//! Structured logs through tracing: JSON (default) or text, level from config or RUST_LOG.
//! Lines are written by a background thread (a bounded, lossy queue) so a request never waits
//! on a `write(2)` to stderr.

mod json;

use hapax_config::{LogFormat, LoggingConfig};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines buffered before new ones are dropped (and counted by tracing-appender) rather than
/// slowing requests down.
const QUEUE_LINES: usize = 64 * 1024;

/// Installs the global subscriber; logs go to stderr so stdout stays for the ready line.
/// Keep the guard alive until exit: dropping it flushes what is queued.
pub fn init(config: &LoggingConfig) -> WorkerGuard {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(&config.level));
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUE_LINES)
        .lossy(true)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    let _ = match config.format {
        LogFormat::Json => builder
            .fmt_fields(json::JsonFields)
            .event_format(json::JsonLines)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    guard
}
