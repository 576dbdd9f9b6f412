//! A lean JSON line format for tracing. The stock JSON formatter re-parses each span's
//! stored fields on every event; here span fields are stored as ready JSON fragments
//! (`,"key":value`) and copied verbatim, which halves the cost of the per-request log line.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::server::scope::{self, RequestContext};

/// Bytes that need escaping inside a JSON string: quote, backslash, control characters.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Writes `s` as the inside of a JSON string.
pub(super) fn escape(out: &mut impl fmt::Write, s: &str) -> fmt::Result {
    // Almost every field (ids, names, labels) needs no escaping: one write, no byte loop.
    if !s.bytes().any(|b| NEEDS_ESCAPE[b as usize]) {
        return out.write_str(s);
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.write_str(&s[start..i])?;
        if escaped.is_empty() {
            write!(out, "\\u{b:04x}")?;
        } else {
            out.write_str(escaped)?;
        }
        start = i + 1;
    }
    out.write_str(&s[start..])
}

/// Formats fields as `,"name":value` fragments.
struct FieldsVisitor<'a, W: fmt::Write> {
    out: &'a mut W,
    result: fmt::Result,
}

impl<W: fmt::Write> FieldsVisitor<'_, W> {
    fn key(&mut self, field: &Field) -> fmt::Result {
        self.out.write_str(",\"")?;
        escape(self.out, field.name())?;
        self.out.write_str("\":")
    }

    fn string(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = self
                .key(field)
                .and_then(|()| self.out.write_char('"'))
                .and_then(|()| escape(self.out, value))
                .and_then(|()| self.out.write_char('"'));
        }
    }

    fn raw(&mut self, field: &Field, value: impl fmt::Display) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| write!(self.out, "{value}"));
        }
    }
}

impl<W: fmt::Write> Visit for FieldsVisitor<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.string(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.raw(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.raw(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.raw(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.raw(field, value);
        } else {
            self.raw(field, "null");
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        self.string(field, &text);
    }
}

/// Span (and event) fields as JSON fragments.
pub struct JsonFields;

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = FieldsVisitor {
            out: &mut writer,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        self.format_fields(current.as_writer(), fields)
    }
}

/// One JSON object per line: timestamp, level, the event's fields (`message` included), the
/// fields of every enclosing span, then the request's context (so `request_id` is on every
/// line of a request).
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
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
        write!(
            writer,
            "{{\"timestamp\":\"{now}\",\"level\":\"{}\"",
            event.metadata().level()
        )?;
        let mut visitor = FieldsVisitor {
            out: &mut writer,
            result: Ok(()),
        };
        event.record(&mut visitor);
        visitor.result?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>() {
                    writer.write_str(&fields.fields)?;
                }
            }
        }
        scope::with_context(|context| write_context(&mut writer, context)).unwrap_or(Ok(()))?;
        writer.write_str("}\n")
    }
}

/// The request's context as `,"key":value` fragments.
pub(super) fn write_context(out: &mut impl fmt::Write, context: &RequestContext) -> fmt::Result {
    out.write_str(",\"request_id\":\"")?;
    escape(out, &context.id)?;
    out.write_str("\",\"endpoint\":\"")?;
    out.write_str(context.endpoint)?;
    out.write_str("\",\"method\":\"")?;
    escape(out, context.method.as_str())?;
    out.write_str("\",\"protocol\":\"")?;
    out.write_str(context.protocol)?;
    out.write_str("\"")
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_quotes_backslashes_and_control_characters() {
        let mut out = String::new();
        escape(&mut out, "a\"b\\c\nd\u{1}e").ok();
        assert_eq!(out, "a\\\"b\\\\c\\nd\\u0001e");
    }
}
