//! The client's chat request decoded by one scan of its bytes: what
//! [`crate::api::body::parse_chat_request`] tries before serde_json.
//!
//! serde_json's reading of an 85-byte request cost ~2.9k instructions, most of them in its
//! visitor machinery (each value's `Deserialize` dispatch, `Option` and `Map` wrappers), not in
//! the bytes. The scan reads what every request carries (`model`, `messages` with `role` and
//! text `content`, `stream`, `stream_options`, the token limits, `temperature`, `top_p`, `n`,
//! `seed`) straight into its place. Any other value (`tools`, `stop`, content parts,
//! `tool_calls` and other members, a role spelled with an escape, a number in exponent form or
//! of more than 15 digits, a negative seed, `stream_options` with other members) it checks and
//! skips, then hands its own bytes to serde_json, which decodes it as the whole body's
//! decoding would (an unknown member given twice: the last value, as serde_json keeps it).
//!
//! Sound, not complete, like the answer's scan: [`chat_request`] answers only when it is sure
//! serde_json would decode the body to the same request. What it is not sure of (a member name
//! spelled with an escape, a known field given twice, nesting past 64 levels, any error) it
//! leaves to serde_json, which then decodes the whole body or gives the error with its path.
//! `crate::fuzzing::check_request_scan` compares the two.

use serde::de::DeserializeOwned;

use super::json_cursor::Scan;
use super::openai::{ChatMessage, ChatRequest, MessageContent, Role, StreamOptions};
use super::raw_json::scalar_end;

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
            b"stop" => 10,
            b"tools" => 11,
            _ => {
                // Kept as serde_json keeps it (a name given twice: the last value).
                let value = scan.decoded(json, 1)?;
                request.extra.insert(member_name(name)?, value);
                return Some(());
            }
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
            5 => request.temperature = scan.either(json, 1, |scan| scan.nullable(Scan::decimal))?,
            6 => request.top_p = scan.either(json, 1, |scan| scan.nullable(Scan::decimal))?,
            7 => request.n = scan.nullable(|scan| u32::try_from(scan.count()?).ok())?,
            8 => {
                let seed = |scan: &mut Scan| i64::try_from(scan.count()?).ok();
                request.seed = scan.either(json, 1, |scan| scan.nullable(seed))?;
            }
            9 => {
                request.stream_options =
                    scan.either(json, 1, |scan| scan.nullable(Scan::options))?
            }
            10 => request.stop = scan.decoded(json, 1)?,
            _ => request.tools = scan.decoded(json, 1)?,
        }
        Some(())
    })?;
    request.messages = messages?;
    scan.at_end().then_some(request)
}

/// A member's name as text (the body is UTF-8, and the scan hands over only names without
/// escapes).
fn member_name(name: &[u8]) -> Option<String> {
    std::str::from_utf8(name).ok().map(str::to_owned)
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
    /// [`MAX_DECIMAL_DIGITS`] digits, its grammar read by [`scalar_end`] (serde_json's).
    fn decimal(&mut self) -> Option<f64> {
        self.skip_space();
        let number = &self.json[self.at..scalar_end(self.json, self.at)?];
        let digits = number.iter().filter(|b| b.is_ascii_digit()).count();
        if digits > MAX_DECIMAL_DIGITS || number.iter().any(|&b| b == b'e' || b == b'E') {
            return None;
        }
        // A literal (`true`) is no number: the parse refuses it.
        let value = std::str::from_utf8(number).ok()?.parse().ok()?;
        self.at += number.len();
        Some(value)
    }

    /// `stream_options`: an object with at most `include_usage`, a boolean (serde's derive
    /// skips other members: [`Scan::either`] leaves those to it).
    fn options(&mut self) -> Option<StreamOptions> {
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

    /// `messages`: objects with a `role` and text or `null` `content` read by the scan, and
    /// content parts, an escaped role and any other member (`tool_calls`, `name`, ...) decoded
    /// by serde_json from their own bytes.
    fn messages(&mut self, json: &str) -> Option<Vec<ChatMessage>> {
        let mut messages = Vec::new();
        self.array_elements(|scan| {
            let (mut role, mut content) = (None, None);
            let mut extra = serde_json::Map::new();
            scan.object_members(|scan, name| match name {
                b"role" if role.is_none() => {
                    role = Some(scan.either(json, 3, Scan::role)?);
                    Some(())
                }
                b"content" if content.is_none() => {
                    let text = |scan: &mut Scan| {
                        let text = scan.nullable(|scan| scan.text(json))?;
                        Some(text.map_or(MessageContent::Null, MessageContent::Text))
                    };
                    content = Some(scan.either(json, 3, text)?);
                    Some(())
                }
                b"role" | b"content" => None, // serde_json refuses a field given twice
                _ => {
                    let value = scan.decoded(json, 3)?;
                    extra.insert(member_name(name)?, value);
                    Some(())
                }
            })?;
            messages.push(ChatMessage {
                role: role?,
                content: content.unwrap_or(MessageContent::Null),
                extra,
            });
            Some(())
        })?;
        Some(messages)
    }

    /// A role spelled without escapes.
    fn role(&mut self) -> Option<Role> {
        self.eat(b'"')?;
        let start = self.at;
        if self.string_rest()? {
            return None;
        }
        role_named(&self.json[start..self.at - 1])
    }

    /// What `fast` reads, or when it cannot, serde_json's decoding of the value (at nesting
    /// level `depth`) from its own bytes.
    fn either<T: DeserializeOwned>(
        &mut self,
        json: &str,
        depth: usize,
        fast: impl FnOnce(&mut Self) -> Option<T>,
    ) -> Option<T> {
        let at = self.at;
        if let Some(value) = fast(self) {
            return Some(value);
        }
        self.at = at;
        self.decoded(json, depth)
    }

    /// A value decoded by serde_json from its own bytes, as the whole body's decoding would
    /// decode it: the scan checks its grammar and finds its end first, and bounds its nesting
    /// (at `depth`) well inside serde_json's limit.
    fn decoded<T: DeserializeOwned>(&mut self, json: &str, depth: usize) -> Option<T> {
        self.skip_space();
        let start = self.at;
        self.value(depth)?;
        serde_json::from_str(json.get(start..self.at)?).ok()
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
