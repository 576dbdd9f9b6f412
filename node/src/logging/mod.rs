//! Structured logs through tracing: JSON (default) or text, level from config or RUST_LOG.
//! Lines are written in batches by a background thread (a bounded, lossy buffer: `writer.rs`)
//! so a request never waits on a `write(2)` to stderr nor wakes a thread per line.

mod json;
pub mod request_line;
mod text;
pub mod writer;

use hapax_config::{LogFormat, LoggingConfig};
use tracing_subscriber::EnvFilter;

pub use writer::FlushGuard;

/// Installs the global subscriber; logs go to stderr so stdout stays for the ready line.
/// Keep the guard alive until exit: dropping it flushes what is queued.
pub fn init(config: &LoggingConfig) -> FlushGuard {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(&config.level));
    let (writer, guard) = writer::batched(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone())
        .with_target(false);
    let _ = match config.format {
        LogFormat::Json => builder
            .fmt_fields(json::JsonFields)
            .event_format(json::JsonLines)
            .try_init()
            .map(|()| request_line::install(writer)),
        LogFormat::Text => builder
            .with_ansi(false)
            .event_format(text::TextLines)
            .try_init(),
    };
    guard
}
