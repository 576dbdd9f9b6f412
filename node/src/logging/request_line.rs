//! The per-request log line ("request finished") written straight into the log buffer when
//! logs are JSON: the same fields, in the same order, as the tracing event it stands for,
//! without the event's per-field dynamic dispatch and intermediate buffer (about a third of
//! the cost). Level filters still apply: the caller asks tracing whether the line is enabled.

use std::cell::{Cell, RefCell};
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

use super::json::{escape, write_context};
use super::writer::BatchedStderr;
use crate::server::scope::RequestContext;

/// Set when the JSON format is installed; otherwise the line goes through tracing.
static JSON_SINK: OnceLock<BatchedStderr> = OnceLock::new();

pub(super) fn install(sink: BatchedStderr) {
    let _ = JSON_SINK.set(sink);
}

/// What the line says about one request.
pub struct RequestLine<'a> {
    pub level: Level,
    pub status: u16,
    pub latency_ms: f64,
    pub provider: &'a str,
    pub attempts: u32,
    pub client: &'a str,
    pub streamed: bool,
    pub error: &'a str,
    pub context: &'a RequestContext,
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

/// Writes the line; `false` when logs are not JSON (the caller logs it through tracing).
pub fn write(line: &RequestLine<'_>) -> bool {
    let Some(sink) = JSON_SINK.get() else {
        return false;
    };
    LINE.with(|buffer| {
        let Ok(mut text) = buffer.try_borrow_mut() else {
            return false;
        };
        text.clear();
        if format(&mut text, line).is_err() {
            return false;
        }
        let _ = sink.make_writer().write_all(text.as_bytes());
        true
    })
}

fn format(out: &mut String, line: &RequestLine<'_>) -> std::fmt::Result {
    let mut numbers = itoa::Buffer::new();
    out.push_str("{\"timestamp\":\"");
    push_timestamp(out, SystemTime::now());
    out.push_str("\",\"level\":\"");
    out.push_str(line.level.as_str());
    out.push_str("\",\"message\":\"request finished\",\"status\":");
    out.push_str(numbers.format(line.status));
    out.push_str(",\"latency_ms\":");
    push_millis(out, line.latency_ms);
    out.push_str(",\"provider\":\"");
    escape(out, line.provider)?;
    out.push_str("\",\"attempts\":");
    out.push_str(numbers.format(line.attempts));
    out.push_str(",\"client\":\"");
    escape(out, line.client)?;
    out.push_str(if line.streamed {
        "\",\"streamed\":true,\"error\":\""
    } else {
        "\",\"streamed\":false,\"error\":\""
    });
    escape(out, line.error)?;
    out.push('"');
    write_context(out, line.context)?;
    out.push_str("}\n");
    Ok(())
}

thread_local! {
    /// The last second written and its `YYYY-MM-DDTHH:MM:SS`: the calendar arithmetic runs
    /// once a second, not once a line.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [b'0'; 19])) };
}

/// RFC 3339 UTC with microseconds, as tracing-subscriber's JSON timestamps.
fn push_timestamp(out: &mut String, now: SystemTime) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached != seconds {
        let formatted = humantime::format_rfc3339_seconds(now).to_string();
        if let Some(prefix) = formatted.as_bytes().get(..19) {
            text.copy_from_slice(prefix);
            SECOND.set((seconds, text));
        }
    }
    out.push_str(std::str::from_utf8(&text).unwrap_or("1970-01-01T00:00:00"));
    out.push('.');
    push_padded(out, since_epoch.subsec_micros(), 6);
    out.push('Z');
}

/// Milliseconds to the microsecond, trailing zeros dropped (`1.25`, `0.116`, `3`).
fn push_millis(out: &mut String, millis: f64) {
    if !millis.is_finite() || millis < 0.0 {
        out.push('0');
        return;
    }
    // Saturates above u64::MAX µs (585 000 years).
    let micros = (millis * 1000.0).round() as u64;
    out.push_str(itoa::Buffer::new().format(micros / 1000));
    let mut fraction = (micros % 1000) as u32;
    if fraction == 0 {
        return;
    }
    let mut digits = 3;
    while fraction.is_multiple_of(10) {
        fraction /= 10;
        digits -= 1;
    }
    out.push('.');
    push_padded(out, fraction, digits);
}

/// `value` in exactly `width` decimal digits, zero-padded on the left (value < 10^width).
fn push_padded(out: &mut String, value: u32, width: usize) {
    let mut digits = [b'0'; 10];
    let width = width.min(digits.len());
    let mut rest = value;
    for slot in digits[..width].iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.push_str(std::str::from_utf8(&digits[..width]).unwrap_or(""));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::http::Method;

    use super::*;

    #[test]
    fn reads_like_the_tracing_event_it_stands_for() {
        let context = RequestContext {
            id: Arc::from("req-1"),
            endpoint: "/v1/chat/completions",
            method: Method::POST,
            protocol: "h1",
        };
        let mut out = String::new();
        let line = RequestLine {
            level: Level::INFO,
            status: 200,
            latency_ms: 1.25,
            provider: "mock",
            attempts: 1,
            client: "al\"ice",
            streamed: false,
            error: "",
            context: &context,
        };
        format(&mut out, &line).ok();
        let rest = out.split_once("Z\",").map(|(_, rest)| rest).unwrap_or("");
        assert_eq!(
            rest,
            "\"level\":\"INFO\",\"message\":\"request finished\",\"status\":200,\"latency_ms\":1.25,\"provider\":\"mock\",\"attempts\":1,\"client\":\"al\\\"ice\",\"streamed\":false,\"error\":\"\",\"request_id\":\"req-1\",\"endpoint\":\"/v1/chat/completions\",\"method\":\"POST\",\"protocol\":\"h1\"}\n"
        );
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        assert_eq!(parsed["client"], "al\"ice");
    }

    #[test]
    fn milliseconds_keep_the_microsecond_and_drop_trailing_zeros() {
        for (millis, text) in [
            (1.25, "1.25"),
            (0.116_4, "0.116"),
            (0.000_6, "0.001"),
            (3.0, "3"),
            (20.100_2, "20.1"),
            (0.0, "0"),
            (-1.0, "0"),
            (f64::NAN, "0"),
        ] {
            let mut out = String::new();
            push_millis(&mut out, millis);
            assert_eq!(out, text, "{millis}");
        }
    }

    #[test]
    fn timestamps_read_as_rfc3339_with_microseconds() {
        let at = |micros: u64| UNIX_EPOCH + std::time::Duration::from_micros(micros);
        for (instant, text) in [
            (at(1_764_259_512_000_042), "2025-11-27T16:05:12.000042Z"),
            (at(1_764_259_512_999_999), "2025-11-27T16:05:12.999999Z"),
            (at(1_764_259_513_100_000), "2025-11-27T16:05:13.100000Z"),
            (at(951_782_400_000_001), "2000-02-29T00:00:00.000001Z"),
        ] {
            let mut out = String::new();
            push_timestamp(&mut out, instant);
            assert_eq!(out, text);
            assert_eq!(out, humantime::format_rfc3339_micros(instant).to_string());
        }
    }
}
