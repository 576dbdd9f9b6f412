//! The answer's shape checked by one scan of its bytes, for the answers an upstream sends every
//! time: what [`super::answer::ChatAnswer::passthrough`] tries before serde_json.
//!
//! serde_json's reading of a 350-byte completion cost ~5.5k instructions, most of them in its
//! visitor machinery around values that are only skipped (`IgnoredAny`), not in the bytes. This
//! scan checks the same grammar and the same shape with a cursor over the bytes.
//!
//! It only has to be sound, not complete: [`completion_usage`] answers only when it is sure that
//! serde_json's shape check would accept the answer, and with the same usage. Whatever it is
//! not sure of (an error, a member name spelled with an escape, a duplicate member, a number it
//! would have to convert, deep nesting) it leaves to serde_json, which then gives the verdict
//! and the error's message. `crate::fuzzing::check_answer_shape` compares the two.

use super::openai::Usage;
use super::raw_json::scalar_end;

/// Deeper nesting is left to serde_json, whose limit is 128 levels.
const MAX_DEPTH: usize = 64;

/// The usage of a `chat.completion` (`None` when it has none or `null`), when the scan is sure
/// the answer has the shape serde_json's check accepts; `None` when it is not sure.
///
/// `json` must be UTF-8 (checked before), so a string's bytes need no check beyond JSON's.
pub fn completion_usage(json: &[u8]) -> Option<Option<Usage>> {
    let mut scan = Scan { json, at: 0 };
    let (mut id, mut choices, mut usage) = (false, false, None);
    scan.object_members(|scan, name| match name {
        b"id" if !id => {
            id = true;
            scan.value(1)
        }
        b"choices" if !choices => {
            choices = true;
            scan.choices()
        }
        b"usage" if usage.is_none() => {
            usage = Some(scan.usage()?);
            Some(())
        }
        b"id" | b"choices" | b"usage" => None,
        _ => scan.value(1),
    })?;
    scan.skip_space();
    (id && choices && scan.at == json.len()).then_some(usage.flatten())
}

struct Scan<'a> {
    json: &'a [u8],
    at: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.json.get(self.at).copied()
    }

    /// JSON's whitespace, as serde_json reads it: space, tab, line feed, carriage return.
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.skip_space();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// An object, each member's name (without escapes) handed to `member`, which reads its
    /// value after the colon.
    fn object_members(
        &mut self,
        mut member: impl FnMut(&mut Self, &[u8]) -> Option<()>,
    ) -> Option<()> {
        if self.open(b'{', b'}')? {
            return Some(());
        }
        loop {
            self.eat(b'"')?;
            let start = self.at;
            let name = self.string_rest()?;
            if name {
                return None; // an escape in the name: left to serde_json to resolve
            }
            let name = &self.json[start..self.at - 1];
            self.eat(b':')?;
            member(self, name)?;
            if self.closed(b'}')? {
                return Some(());
            }
        }
    }

    /// An array, each element read by `element`.
    fn array_elements(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        if self.open(b'[', b']')? {
            return Some(());
        }
        loop {
            element(self)?;
            if self.closed(b']')? {
                return Some(());
            }
        }
    }

    /// Past `open`; whether `close` follows at once (an empty object or array), and past it.
    fn open(&mut self, open: u8, close: u8) -> Option<bool> {
        self.eat(open)?;
        self.skip_space();
        let empty = self.peek()? == close;
        if empty {
            self.at += 1;
        }
        Some(empty)
    }

    /// Past the comma or the `close` after a member or an element: whether it was `close`.
    fn closed(&mut self, close: u8) -> Option<bool> {
        self.skip_space();
        let byte = self.peek()?;
        self.at += 1;
        match byte {
            b',' => Some(false),
            _ if byte == close => Some(true),
            _ => None,
        }
    }

    /// `choices`: an array of objects, each with exactly one `message`.
    fn choices(&mut self) -> Option<()> {
        self.array_elements(|scan| {
            let mut message = false;
            scan.object_members(|scan, name| {
                if name == b"message" {
                    if message {
                        return None;
                    }
                    message = true;
                }
                scan.value(3)
            })?;
            message.then_some(())
        })
    }

    /// `usage`: `null`, or an object with each count once, as an integer that fits a `u64`.
    fn usage(&mut self) -> Option<Option<Usage>> {
        self.skip_space();
        if self.json[self.at..].starts_with(b"null") {
            self.at += 4;
            return Some(None);
        }
        let mut counts: [Option<u64>; 3] = [None; 3];
        self.object_members(|scan, name| {
            let slot = match name {
                b"prompt_tokens" => 0,
                b"completion_tokens" => 1,
                b"total_tokens" => 2,
                _ => return scan.value(2),
            };
            if counts[slot].is_some() {
                return None;
            }
            counts[slot] = Some(scan.count()?);
            Some(())
        })?;
        let [prompt_tokens, completion_tokens, total_tokens] = counts;
        Some(Some(Usage {
            prompt_tokens: prompt_tokens?,
            completion_tokens: completion_tokens?,
            total_tokens: total_tokens?,
        }))
    }

    /// A count: digits without a sign, fraction or exponent, no leading zero, within `u64`.
    fn count(&mut self) -> Option<u64> {
        self.skip_space();
        let digits = self.json[self.at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let text = &self.json[self.at..self.at + digits];
        if digits == 0 || (digits > 1 && text[0] == b'0') {
            return None;
        }
        self.at += digits;
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        text.iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
    }

    /// Any JSON value, checked and skipped; `depth` is its nesting level.
    fn value(&mut self, depth: usize) -> Option<()> {
        self.skip_space();
        match self.peek()? {
            b'"' => {
                self.at += 1;
                self.string_rest().map(drop)
            }
            b'{' if depth < MAX_DEPTH => self.object_members(|scan, _| scan.value(depth + 1)),
            b'[' if depth < MAX_DEPTH => self.array_elements(|scan| scan.value(depth + 1)),
            b't' | b'f' | b'n' | b'-' | b'0'..=b'9' => {
                self.at = scalar_end(self.json, self.at)?;
                Some(())
            }
            _ => None,
        }
    }

    /// A string's rest after its opening quote, up to and past its closing one; whether it
    /// had an escape. Control characters are refused, as serde_json refuses them.
    fn string_rest(&mut self) -> Option<bool> {
        let mut escaped = false;
        loop {
            self.at += special_byte(&self.json[self.at..])?;
            match self.json[self.at] {
                b'"' => {
                    self.at += 1;
                    return Some(escaped);
                }
                b'\\' => {
                    escaped = true;
                    self.at += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                        b'u' => {
                            let hex = self.json.get(self.at + 1..self.at + 5)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.at += 5;
                        }
                        _ => return None,
                    }
                }
                _ => return None, // a control character
            }
        }
    }
}

/// The offset of the first `"`, `\` or control character in `bytes`, eight bytes at a time.
fn special_byte(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut offset = 0;
    while let Some(chunk) = bytes.get(offset..offset + 8) {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        // A byte of `x` is zero (or, above the lowest such byte, may look so) where the mask
        // has its high bit: the classic "has a zero byte" test, for each kind of byte at once.
        let zero_in = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
        let found = zero_in(word ^ (ONES * u64::from(b'"')))
            | zero_in(word ^ (ONES * u64::from(b'\\')))
            | (word.wrapping_sub(ONES * 0x20) & !word & HIGHS);
        if found != 0 {
            return Some(offset + found.trailing_zeros() as usize / 8);
        }
        offset += 8;
    }
    let rest = bytes.get(offset..)?;
    let at = rest
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    Some(offset + at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_bytes_are_found_at_their_offset_in_any_position() {
        for len in 0..40 {
            for at in 0..len {
                for special in [b'"', b'\\', 0x00, 0x1f] {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = special;
                    // Bytes that are no special kind but sit around the borrow edges.
                    if at + 1 < len {
                        bytes[at + 1] = 0x20;
                    }
                    assert_eq!(special_byte(&bytes), Some(at), "{len} {at} {special}");
                }
            }
            let plain: Vec<u8> = (0..len).map(|i| 0x20 + (i as u8 % 0x5f)).collect();
            let plain: Vec<u8> = plain
                .into_iter()
                .map(|b| if b == b'"' || b == b'\\' { b'x' } else { b })
                .collect();
            assert_eq!(special_byte(&plain), None, "{len}");
        }
        let utf8 = "é€😀\"".as_bytes();
        assert_eq!(special_byte(utf8), Some(utf8.len() - 1));
    }

    #[test]
    fn a_typical_answer_is_read_without_serde_json() {
        let raw = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello \"there\"\n\u00e9","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":13,"total_tokens":18,"prompt_tokens_details":{"cached_tokens":0,"audio":[1.5e3,-0,true,false]}}}"#;
        assert_eq!(
            completion_usage(raw),
            Some(Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 13,
                total_tokens: 18
            }))
        );
        assert_eq!(
            completion_usage(br#" {"choices" : [ ] , "id" : 7 , "usage" : null } "#),
            Some(None)
        );
    }

    #[test]
    fn what_it_is_not_sure_of_is_left_to_serde_json() {
        let unsure: &[&[u8]] = &[
            br#"{"\u0069d":"x","choices":[]}"#,
            br#"{"id":"x","id":"y","choices":[]}"#,
            br#"{"id":"x","choices":[{"message":1,"message":2}]}"#,
            br#"{"id":"x","choices":[{"index":0}]}"#,
            br#"{"id":"x","choices":[],"usage":{"prompt_tokens":1}}"#,
            br#"{"id":"x","choices":[],"usage":{"prompt_tokens":1.0,"completion_tokens":2,"total_tokens":3}}"#,
            br#"{"id":"x","choices":[],"usage":{"prompt_tokens":01,"completion_tokens":2,"total_tokens":3}}"#,
            br#"{"id":"x","choices":[],"usage":{"prompt_tokens":99999999999999999999,"completion_tokens":2,"total_tokens":3}}"#,
            br#"{"id":"x","choices":{}}"#,
            br#"{"id":"x","choices":[[]]}"#,
            br#"{"id":"x","choices":[],"x":"a\u12g4"}"#,
            b"{\"id\":\"x\",\"choices\":[],\"x\":\"tab\tin\"}",
            br#"{"id":"x","choices":[],"x":01}"#,
            br#"{"id":"x","choices":[],"x":1.}"#,
            br#"{"id":"x","choices":[],"x":-}"#,
            br#"{"id":"x","choices":[],"x":[1,]}"#,
            br#"{"id":"x","choices":[],}"#,
            br#"{"id":"x","choices":[]} x"#,
            b"{\"id\":\"x\",\"choices\":[]}\x0c",
            br#"{"id":"x","choices":[],"x":tru}"#,
            br#"{"id":"x"}"#,
            b"[]",
            b"",
        ];
        for answer in unsure {
            assert_eq!(
                completion_usage(answer),
                None,
                "{}",
                String::from_utf8_lossy(answer)
            );
        }
        let deep = format!(
            r#"{{"id":"x","choices":[],"x":{}{}}}"#,
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert_eq!(completion_usage(deep.as_bytes()), None);
    }
}
