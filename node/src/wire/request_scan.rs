//! The client's chat request decoded by one scan of its bytes, for the bodies SDKs send on
//! every request: what [`crate::api::body::parse_chat_request`] tries before serde_json.
//!
//! serde_json's reading of an 85-byte request cost ~3.8k instructions, most of them in its
//! visitor machinery (the field names matched twice, each value's `Deserialize` dispatch,
//! `Option` and `Map` wrappers), not in the bytes. This scan reads the fields SDKs send
//! (`model`, `messages` with `role` and text `content`, `stream`, `stream_options`,
//! `max_tokens`, `max_completion_tokens`, `temperature`, `top_p`, `n`, `seed`) straight into
//! their places.
//!
//! Sound, not complete, like the answer's scan: [`chat_request`] answers only when it is sure
//! serde_json would decode the body to the same request. Anything else (another member, one
//! given twice, content parts, a number it would have to convert, a member name with an
//! escape, any error) it leaves to serde_json, which then decodes it or gives the error with
//! its field path. `crate::fuzzing::check_request_scan` compares the two.

use super::json_cursor::Scan;
use super::openai::{ChatMessage, ChatRequest, MessageContent, Role, StreamOptions};

/// The longest decimal the scan converts itself, in digits (leading zeros too): with at most
/// 15 and no exponent, the digits fit a double exactly and one division by an exact power of ten
/// rounds correctly, so Rust's parse and serde_json's agree to the bit.
const MAX_DECIMAL_DIGITS: usize = 15;

/// The request, when the scan is sure serde_json would decode `json` to the same one; `None`
/// when it is not sure.
pub fn chat_request(json: &str) -> Option<ChatRequest> {
    let mut scan = Scan::new(json.as_bytes());
    let mut request = ChatRequest::default();
    let mut messages = None;
    let mut seen = 0u16;
    scan.object_members(|scan, name| {
        let field = match name {
            b"model" => 0,
            b"messages" => 1,
            b"stream" => 2,
            b"max_tokens" => 3,
            b"max_completion_tokens" => 4,
            b"temperature" => 5,
            b"top_p" => 6,
            b"n" => 7,
            b"seed" => 8,
            b"stream_options" => 9,
            _ => return None,
        };
        if seen & (1 << field) != 0 {
            return None; // serde_json refuses a field given twice
        }
        seen |= 1 << field;
        match field {
            0 => request.model = scan.nullable(|scan| scan.text(json))?,
            1 => messages = Some(scan.messages(json)?),
            2 => request.stream = scan.nullable(Scan::boolean)?,
            3 => request.max_tokens = scan.nullable(Scan::count)?,
            4 => request.max_completion_tokens = scan.nullable(Scan::count)?,
            5 => request.temperature = scan.nullable(Scan::decimal)?,
            6 => request.top_p = scan.nullable(Scan::decimal)?,
            7 => request.n = scan.nullable(|scan| u32::try_from(scan.count()?).ok())?,
            9 => request.stream_options = scan.nullable(Scan::stream_options)?,
            _ => {
                request.seed = scan.nullable(|scan| i64::try_from(scan.count()?).ok())?;
            }
        }
        Some(())
    })?;
    request.messages = messages?;
    scan.at_end().then_some(request)
}

impl Scan<'_> {
    /// `null` as `None`, else the value `read` reads.
    fn nullable<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        self.skip_space();
        if self.json[self.at..].starts_with(b"null") {
            self.at += 4;
            return Some(None);
        }
        read(self).map(Some)
    }

    fn boolean(&mut self) -> Option<bool> {
        self.skip_space();
        let rest = &self.json[self.at..];
        let (value, len) = if rest.starts_with(b"true") {
            (true, 4)
        } else if rest.starts_with(b"false") {
            (false, 5)
        } else {
            return None;
        };
        self.at += len;
        Some(value)
    }

    /// A number as a double: an integer or a decimal fraction (no exponent) of at most
    /// [`MAX_DECIMAL_DIGITS`] digits.
    fn decimal(&mut self) -> Option<f64> {
        self.skip_space();
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let digits = |scan: &mut Self| {
            let count = scan.json[scan.at..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            scan.at += count;
            count
        };
        let whole_start = self.at;
        let whole = digits(self);
        if whole == 0 || (whole > 1 && self.json[whole_start] == b'0') {
            return None;
        }
        let mut fraction = 0;
        if self.peek() == Some(b'.') {
            self.at += 1;
            fraction = digits(self);
            if fraction == 0 {
                return None;
            }
        }
        if whole + fraction > MAX_DECIMAL_DIGITS || matches!(self.peek(), Some(b'e' | b'E')) {
            return None;
        }
        std::str::from_utf8(&self.json[start..self.at])
            .ok()?
            .parse()
            .ok()
    }

    /// `stream_options`: an object with at most `include_usage`, a boolean (serde's derive
    /// would skip other members; the scan leaves those to it).
    fn stream_options(&mut self) -> Option<StreamOptions> {
        let mut include_usage = None;
        self.object_members(|scan, name| match name {
            b"include_usage" if include_usage.is_none() => {
                include_usage = Some(scan.boolean()?);
                Some(())
            }
            _ => None,
        })?;
        Some(StreamOptions {
            include_usage: include_usage.unwrap_or(false),
        })
    }

    /// `messages`: objects with a `role` and a text or `null` `content`, nothing else.
    fn messages(&mut self, json: &str) -> Option<Vec<ChatMessage>> {
        let mut messages = Vec::new();
        self.array_elements(|scan| {
            let (mut role, mut content) = (None, None);
            scan.object_members(|scan, name| match name {
                b"role" if role.is_none() => {
                    scan.eat(b'"')?;
                    let start = scan.at;
                    if scan.string_rest()? {
                        return None;
                    }
                    role = Some(role_named(&scan.json[start..scan.at - 1])?);
                    Some(())
                }
                b"content" if content.is_none() => {
                    let text = scan.nullable(|scan| scan.text(json))?;
                    content = Some(text.map_or(MessageContent::Null, MessageContent::Text));
                    Some(())
                }
                _ => None,
            })?;
            messages.push(ChatMessage {
                role: role?,
                content: content.unwrap_or(MessageContent::Null),
                extra: serde_json::Map::new(),
            });
            Some(())
        })?;
        Some(messages)
    }
}

/// [`Role`]'s variants as serde reads them (`rename_all = "lowercase"`).
fn role_named(name: &[u8]) -> Option<Role> {
    Some(match name {
        b"system" => Role::System,
        b"developer" => Role::Developer,
        b"user" => Role::User,
        b"assistant" => Role::Assistant,
        b"tool" => Role::Tool,
        b"function" => Role::Function,
        _ => return None,
    })
}

#[cfg(test)]
#[path = "request_scan_tests.rs"]
mod tests;
