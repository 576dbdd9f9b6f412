//! The shape check of an upstream's `chat.completion`, as one scan of its bytes.
//!
//! It takes what serde_json took reading the answer into the shape (`id`, `choices` each with a
//! `message`, `usage` read), and nothing else: the same JSON grammar (RFC 8259 as serde_json
//! reads it: its whitespace, numbers, escapes and literals), each of those members at most
//! once, member names compared after their escapes are decoded. It cost ~7k instructions an
//! answer through serde's visitors (a call and a `Result` per token); the scan is a loop per
//! byte. `usage`, when present, is still read by serde (`Usage`), from its slice of the answer.
//! `crate::fuzzing::check_answer_shape` holds it to the derived decoder it replaced.

use std::fmt;

use super::openai::Usage;

/// Why an answer is not a completion to pass on; says where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError(String);

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ShapeError {}

/// The answer's `usage` if it is a completion (`text` is the whole answer, already UTF-8).
pub fn completion_usage(text: &[u8]) -> Result<Option<Usage>, ShapeError> {
    let mut scan = Scan { text, at: 0 };
    let usage = scan.completion()?;
    scan.whitespace();
    if scan.at < text.len() {
        return Err(scan.error("trailing characters after the answer"));
    }
    Ok(usage)
}

struct Scan<'a> {
    text: &'a [u8],
    at: usize,
}

/// The members read at the answer's top level and in each choice.
#[derive(PartialEq, Eq)]
enum Member {
    Id,
    Choices,
    Usage,
    Message,
    Other,
}

impl<'a> Scan<'a> {
    fn error(&self, what: &str) -> ShapeError {
        ShapeError(format!("{what} at byte {}", self.at))
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// Takes `byte` after any whitespace.
    fn take(&mut self, byte: u8, what: &str) -> Result<(), ShapeError> {
        self.whitespace();
        if self.peek() != Some(byte) {
            return Err(self.error(what));
        }
        self.at += 1;
        Ok(())
    }

    /// The top-level object: `id` and `choices` once each, `usage` at most once.
    fn completion(&mut self) -> Result<Option<Usage>, ShapeError> {
        self.take(b'{', "the answer is not a JSON object")?;
        let (mut id, mut choices, mut usage) = (false, false, None);
        let (mut usage_seen, mut started) = (false, false);
        let wanted = [Member::Id, Member::Choices, Member::Usage];
        while let Some(member) = self.next_member(&mut started, &wanted)? {
            match member {
                Member::Id => self.first(&mut id, "id")?,
                Member::Choices => self.first(&mut choices, "choices")?,
                Member::Usage => self.first(&mut usage_seen, "usage")?,
                _ => {}
            }
            match member {
                Member::Choices => self.choices()?,
                Member::Usage => usage = self.usage()?,
                _ => self.value()?,
            }
        }
        if !id {
            return Err(self.error("missing field `id`"));
        }
        if !choices {
            return Err(self.error("missing field `choices`"));
        }
        Ok(usage)
    }

    fn first(&self, seen: &mut bool, name: &str) -> Result<(), ShapeError> {
        if std::mem::replace(seen, true) {
            return Err(self.error(&format!("duplicate field `{name}`")));
        }
        Ok(())
    }

    /// `choices`: an array of objects, each with one `message`.
    fn choices(&mut self) -> Result<(), ShapeError> {
        self.take(b'[', "`choices` is not an array")?;
        self.whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(());
        }
        loop {
            self.take(b'{', "a choice is not a JSON object")?;
            let (mut message, mut started) = (false, false);
            while let Some(member) = self.next_member(&mut started, &[Member::Message])? {
                if member == Member::Message {
                    self.first(&mut message, "message")?;
                }
                self.value()?;
            }
            if !message {
                return Err(self.error("missing field `message`"));
            }
            self.whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected `,` or `]` in `choices`")),
            }
        }
    }

    /// `usage`: `null`, or read by serde from its slice.
    fn usage(&mut self) -> Result<Option<Usage>, ShapeError> {
        self.whitespace();
        let start = self.at;
        self.value()?;
        let raw = self.text.get(start..self.at).unwrap_or_default();
        serde_json::from_slice::<Option<Usage>>(raw)
            .map_err(|error| ShapeError(format!("invalid `usage` at byte {start}: {error}")))
    }

    /// The next member's name in an object whose `{` is taken, its `:` taken too; `None` at
    /// the object's end. `started`: a member came before (a `,` must come first). A name among
    /// `wanted` is told apart, any other is `Other`.
    fn next_member(
        &mut self,
        started: &mut bool,
        wanted: &[Member],
    ) -> Result<Option<Member>, ShapeError> {
        self.whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(None);
        }
        if std::mem::replace(started, true) {
            if self.peek() != Some(b',') {
                return Err(self.error("expected `,` or `}`"));
            }
            self.at += 1;
            self.whitespace();
        }
        if self.peek() != Some(b'"') {
            return Err(self.error("a member name is not a string"));
        }
        self.at += 1;
        let name_at = self.at;
        let escaped = self.string()?;
        let raw = self.text.get(name_at..self.at - 1).unwrap_or_default();
        let member = if escaped {
            let quoted = self.text.get(name_at - 1..self.at).unwrap_or_default();
            let name: String = serde_json::from_slice(quoted)
                .map_err(|error| ShapeError(format!("invalid member name: {error}")))?;
            member_named(name.as_bytes(), wanted)
        } else {
            member_named(raw, wanted)
        };
        self.take(b':', "expected `:`")?;
        Ok(Some(member))
    }

    /// A string whose opening quote is taken, up to and past its closing one; whether it
    /// holds an escape.
    fn string(&mut self) -> Result<bool, ShapeError> {
        let mut escaped = false;
        loop {
            let rest = self.text.get(self.at..).unwrap_or_default();
            let Some(stop) = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            else {
                self.at = self.text.len();
                return Err(self.error("EOF while parsing a string"));
            };
            self.at += stop;
            match rest.get(stop) {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    self.at += 1;
                    self.escape()?;
                    escaped = true;
                }
                _ => return Err(self.error("control character while parsing a string")),
            }
        }
    }

    fn escape(&mut self) -> Result<(), ShapeError> {
        match self.peek() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.at += 1,
            Some(b'u') => {
                let digits = self.text.get(self.at + 1..self.at + 5);
                if !digits.is_some_and(|d| d.iter().all(u8::is_ascii_hexdigit)) {
                    return Err(self.error("invalid \\u escape"));
                }
                self.at += 5;
            }
            _ => return Err(self.error("invalid escape")),
        }
        Ok(())
    }

    /// Any JSON value, skipped; nesting is followed on a stack, not by recursion.
    fn value(&mut self) -> Result<(), ShapeError> {
        let mut open = Nesting::default();
        loop {
            self.whitespace();
            match self.peek() {
                Some(b'{') => {
                    self.at += 1;
                    self.whitespace();
                    if self.peek() == Some(b'}') {
                        self.at += 1;
                    } else {
                        open.push(true);
                        self.member_name()?;
                        continue;
                    }
                }
                Some(b'[') => {
                    self.at += 1;
                    self.whitespace();
                    if self.peek() == Some(b']') {
                        self.at += 1;
                    } else {
                        open.push(false);
                        continue;
                    }
                }
                Some(b'"') => {
                    self.at += 1;
                    self.string()?;
                }
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(b'n') => self.literal(b"null")?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                _ => return Err(self.error("expected a value")),
            }
            // A value is complete: close what it completes, or go on to the next in its
            // container.
            loop {
                let Some(close) = open.close() else {
                    return Ok(());
                };
                self.whitespace();
                match self.peek() {
                    Some(b',') => {
                        self.at += 1;
                        if close == b'}' {
                            self.whitespace();
                            self.member_name()?;
                        }
                        break;
                    }
                    Some(byte) if byte == close => {
                        self.at += 1;
                        open.pop();
                    }
                    _ => return Err(self.error("expected `,` or the container's end")),
                }
            }
        }
    }

    /// A skipped object's member name and its `:`.
    fn member_name(&mut self) -> Result<(), ShapeError> {
        if self.peek() != Some(b'"') {
            return Err(self.error("a member name is not a string"));
        }
        self.at += 1;
        self.string()?;
        self.take(b':', "expected `:`")
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), ShapeError> {
        if self.text.get(self.at..self.at + word.len()) != Some(word) {
            return Err(self.error("expected a value"));
        }
        self.at += word.len();
        Ok(())
    }

    /// A number as serde_json reads one: no leading zeros, digits after `.` and after the
    /// exponent's sign.
    fn number(&mut self) -> Result<(), ShapeError> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.at += 1;
                if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    return Err(self.error("invalid number"));
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err(self.error("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("invalid number"));
            }
        }
        Ok(())
    }

    /// Digits taken.
    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        self.at - start
    }
}

/// The containers a skipped value is in, innermost last: a bit each (set: an object), 64 in a
/// word, so that nesting allocates only past 64 levels.
#[derive(Default)]
struct Nesting {
    bits: u64,
    depth: usize,
    outer: Vec<u64>,
}

impl Nesting {
    fn push(&mut self, object: bool) {
        if self.depth > 0 && self.depth.is_multiple_of(64) {
            self.outer.push(std::mem::take(&mut self.bits));
        }
        self.bits = self.bits << 1 | u64::from(object);
        self.depth += 1;
    }

    /// The innermost container's closing byte, if any.
    fn close(&self) -> Option<u8> {
        (self.depth > 0).then_some(if self.bits & 1 == 1 { b'}' } else { b']' })
    }

    fn pop(&mut self) {
        self.bits >>= 1;
        self.depth = self.depth.saturating_sub(1);
        if self.depth > 0 && self.depth.is_multiple_of(64) {
            self.bits = self.outer.pop().unwrap_or_default();
        }
    }
}

fn member_named(name: &[u8], wanted: &[Member]) -> Member {
    let member = match name {
        b"id" => Member::Id,
        b"choices" => Member::Choices,
        b"usage" => Member::Usage,
        b"message" => Member::Message,
        _ => return Member::Other,
    };
    if wanted.contains(&member) {
        member
    } else {
        Member::Other
    }
}
