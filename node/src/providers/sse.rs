//! Incremental decoders for upstream streams: server-sent events and NDJSON.

use bytes::{Bytes, BytesMut};

use super::ProviderError;

/// One server-sent event: its `event:` name (if any) and its joined `data:` lines.
#[derive(Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Feeds bytes in, takes complete events out; handles `\n`, `\r\n` and split chunks.
#[derive(Default)]
pub struct SseDecoder {
    buffer: BytesMut,
    /// How much of `buffer` is known to hold no newline (so a long line is scanned once).
    scanned: usize,
    event: Option<String>,
    data: Option<String>,
}

impl SseDecoder {
    /// Buffers more input; fails once an unfinished event (its `data:` lines so far and the
    /// unfinished line) passes [`MAX_LINE_BYTES`].
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), ProviderError> {
        self.buffer.extend_from_slice(chunk);
        let pending = self.data.as_ref().map_or(0, String::len);
        if self.buffer.len().saturating_add(pending) > MAX_LINE_BYTES {
            return Err(too_long());
        }
        Ok(())
    }

    /// The next complete event, if the buffer holds one.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        while let Some(line) = take_line(&mut self.buffer, &mut self.scanned) {
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    return Some(SseEvent {
                        event: self.event.take(),
                        data,
                    });
                }
                self.event = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            match field {
                "event" => self.event = Some(value.to_owned()),
                "data" => match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                },
                _ => {}
            }
        }
        None
    }

    /// At end of input: an event whose blank line never came.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.buffer.is_empty() {
            self.buffer.extend_from_slice(b"\n\n");
            return self.next_event();
        }
        self.data.take().map(|data| SseEvent {
            event: self.event.take(),
            data,
        })
    }
}

/// Splits newline-delimited JSON (Ollama's stream format).
#[derive(Default)]
pub struct NdjsonDecoder {
    buffer: BytesMut,
    scanned: usize,
}

impl NdjsonDecoder {
    /// Buffers more input; fails once an unfinished line passes [`MAX_LINE_BYTES`].
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), ProviderError> {
        self.buffer.extend_from_slice(chunk);
        if self.buffer.len() > MAX_LINE_BYTES {
            return Err(too_long());
        }
        Ok(())
    }

    pub fn next_line(&mut self) -> Option<Bytes> {
        while let Some(line) = take_line(&mut self.buffer, &mut self.scanned) {
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Some(line);
            }
        }
        None
    }

    pub fn finish(&mut self) -> Option<Bytes> {
        let rest = self.buffer.split().freeze();
        (!rest.iter().all(u8::is_ascii_whitespace)).then_some(rest)
    }
}

/// Longest line (SSE field or NDJSON record) accepted from an upstream: a hostile or broken
/// upstream cannot make the gateway buffer without bound.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

fn too_long() -> ProviderError {
    ProviderError::StreamBroken(format!(
        "the provider sent a stream line or event longer than {MAX_LINE_BYTES} bytes"
    ))
}

fn take_line(buffer: &mut BytesMut, scanned: &mut usize) -> Option<Bytes> {
    let Some(offset) = buffer[*scanned..].iter().position(|b| *b == b'\n') else {
        *scanned = buffer.len();
        return None;
    };
    let pos = *scanned + offset;
    *scanned = 0;
    let mut line = buffer.split_to(pos + 1);
    line.truncate(pos);
    if line.last() == Some(&b'\r') {
        line.truncate(pos - 1);
    }
    Some(line.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_chunks_and_crlf() {
        let mut d = SseDecoder::default();
        assert!(d.push(b"event: message_start\r\ndata: {\"a\"").is_ok());
        assert_eq!(d.next_event(), None);
        assert!(
            d.push(b":1}\r\n\r\n: comment\n\ndata: x\ndata: y\n\n")
                .is_ok()
        );
        assert_eq!(
            d.next_event(),
            Some(SseEvent {
                event: Some("message_start".into()),
                data: "{\"a\":1}".into()
            })
        );
        assert_eq!(
            d.next_event(),
            Some(SseEvent {
                event: None,
                data: "x\ny".into()
            })
        );
        assert_eq!(d.next_event(), None);
        assert!(d.push(b"data: [DONE]").is_ok());
        assert_eq!(
            d.finish(),
            Some(SseEvent {
                event: None,
                data: "[DONE]".into()
            })
        );
    }

    #[test]
    fn an_endless_line_is_refused_instead_of_buffered() {
        let mut d = NdjsonDecoder::default();
        let piece = vec![b'x'; 1024 * 1024];
        let mut refused = false;
        for _ in 0..20 {
            if d.push(&piece).is_err() {
                refused = true;
                break;
            }
            assert_eq!(d.next_line(), None);
        }
        assert!(refused, "a line over the cap is an error");
    }

    #[test]
    fn an_endless_event_of_short_data_lines_is_refused_instead_of_buffered() {
        let mut d = SseDecoder::default();
        let mut line = b"data: ".to_vec();
        line.extend(std::iter::repeat_n(b'x', 1024 * 1024));
        line.push(b'\n');
        let mut refused = false;
        for _ in 0..20 {
            if d.push(&line).is_err() {
                refused = true;
                break;
            }
            assert_eq!(d.next_event(), None, "no blank line: the event never ends");
        }
        assert!(
            refused,
            "an event over the cap is an error, whatever its lines"
        );
    }

    #[test]
    fn ndjson_lines_split_across_chunks() {
        let mut d = NdjsonDecoder::default();
        assert!(d.push(b"{\"a\":1}\n{\"b\"").is_ok());
        assert_eq!(d.next_line().as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(d.next_line(), None);
        assert!(d.push(b":2}\n\n{\"c\":3}").is_ok());
        assert_eq!(d.next_line().as_deref(), Some(&b"{\"b\":2}"[..]));
        assert_eq!(d.next_line(), None);
        assert_eq!(d.finish().as_deref(), Some(&b"{\"c\":3}"[..]));
    }
}
