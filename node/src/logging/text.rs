//! The text line format: tracing-subscriber's full format (timestamp, level, spans, fields)
//! with the request's context shown as the `request` span it replaces.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::server::scope;

/// `2026-11-27T10:00:00.000000Z  INFO request{request_id=.. endpoint=..}: message key=value`
pub struct TextLines;

impl<S, N> FormatEvent<S, N> for TextLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
        write!(writer, "{now} {:>5} ", event.metadata().level())?;
        scope::with_context(|c| {
            write!(
                writer,
                "request{{request_id={} endpoint={} method={} protocol={}}}: ",
                c.id, c.endpoint, c.method, c.protocol
            )
        })
        .unwrap_or(Ok(()))?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                writer.write_str(span.name())?;
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(writer, "{{{fields}}}")?;
                }
                writer.write_str(": ")?;
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
