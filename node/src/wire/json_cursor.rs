//! A cursor over JSON bytes that checks the grammar as serde_json reads it, for the scans
//! that decode the shapes a gateway sees on every request without serde_json's visitor
//! machinery: the upstream answer's shape ([`super::answer_scan`]) and the client's chat
//! request ([`super::request_scan`]).
//!
//! Each scan only has to be sound, not complete: it answers only when it is sure serde_json
//! would read the bytes the same way, and leaves everything else (and every error's message)
//! to serde_json.

use super::raw_json::scalar_end;

/// Deeper nesting is left to serde_json, whose limit is 128 levels.
pub(super) const MAX_DEPTH: usize = 64;

pub(super) struct Scan<'a> {
    pub(super) json: &'a [u8],
    pub(super) at: usize,
}

impl<'a> Scan<'a> {
    pub(super) fn new(json: &'a [u8]) -> Self {
        Self { json, at: 0 }
    }

    /// Whether only whitespace is left.
    pub(super) fn at_end(&mut self) -> bool {
        self.skip_space();
        self.at == self.json.len()
    }
    pub(super) fn peek(&self) -> Option<u8> {
        self.json.get(self.at).copied()
    }

    /// JSON's whitespace, as serde_json reads it: space, tab, line feed, carriage return.
    pub(super) fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    pub(super) fn eat(&mut self, byte: u8) -> Option<()> {
        self.skip_space();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// An object, each member's name (without escapes) handed to `member`, which reads its
    /// value after the colon.
    pub(super) fn object_members(
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
    pub(super) fn array_elements(
        &mut self,
        mut element: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
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
    pub(super) fn open(&mut self, open: u8, close: u8) -> Option<bool> {
        self.eat(open)?;
        self.skip_space();
        let empty = self.peek()? == close;
        if empty {
            self.at += 1;
        }
        Some(empty)
    }

    /// Past the comma or the `close` after a member or an element: whether it was `close`.
    pub(super) fn closed(&mut self, close: u8) -> Option<bool> {
        self.skip_space();
        let byte = self.peek()?;
        self.at += 1;
        match byte {
            b',' => Some(false),
            _ if byte == close => Some(true),
            _ => None,
        }
    }

    /// A count: digits without a sign, fraction or exponent, no leading zero, within `u64`.
    pub(super) fn count(&mut self) -> Option<u64> {
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
    pub(super) fn value(&mut self, depth: usize) -> Option<()> {
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
    pub(super) fn string_rest(&mut self) -> Option<bool> {
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
                    let escape = *self.json.get(self.at + 1)?;
                    self.at += 2;
                    if escape == b'u' {
                        self.hex4()?;
                    } else {
                        short_escape(escape)?;
                    }
                }
                _ => return None, // a control character
            }
        }
    }
}

impl Scan<'_> {
    /// A string's text, escapes resolved, in one pass. `json` is the scan's bytes as text (a
    /// run between escapes starts and ends at ASCII bytes, so slicing it is sound). `None` on
    /// anything serde_json would refuse (a control character, a bad escape, a lone surrogate).
    pub(super) fn text(&mut self, json: &str) -> Option<String> {
        debug_assert!(
            std::ptr::eq(json.as_bytes(), self.json),
            "the scan's own bytes"
        );
        self.eat(b'"')?;
        let mut run = self.at;
        let mut unescaped: Option<String> = None;
        loop {
            self.at += special_byte(&self.json[self.at..])?;
            let last = json.get(run..self.at)?;
            match self.json[self.at] {
                b'"' => {
                    self.at += 1;
                    return Some(match unescaped {
                        Some(mut text) => {
                            text.push_str(last);
                            text
                        }
                        None => last.to_owned(),
                    });
                }
                b'\\' => {
                    let text = unescaped.get_or_insert_with(String::new);
                    text.push_str(last);
                    let escape = *self.json.get(self.at + 1)?;
                    self.at += 2;
                    text.push(match escape {
                        b'u' => self.escaped_char()?,
                        other => short_escape(other)?,
                    });
                    run = self.at;
                }
                _ => return None, // a control character
            }
        }
    }

    /// The character of a `\u` escape, after its `u`: a pair of them for a surrogate pair.
    fn escaped_char(&mut self) -> Option<char> {
        let high = self.hex4()?;
        let code = match high {
            0xD800..=0xDBFF => {
                if self.json.get(self.at..self.at + 2)? != b"\\u" {
                    return None;
                }
                self.at += 2;
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return None;
                }
                0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
            }
            0xDC00..=0xDFFF => return None,
            _ => high,
        };
        char::from_u32(code)
    }

    /// Four hex digits, as serde_json reads them (either case).
    fn hex4(&mut self) -> Option<u32> {
        let digits = self.json.get(self.at..self.at + 4)?;
        let mut value = 0;
        for &digit in digits {
            value = value * 16 + char::from(digit).to_digit(16)?;
        }
        self.at += 4;
        Some(value)
    }
}

/// The character a one-letter escape (`\\n`, `\\"`, ...) stands for; `None` for a letter
/// JSON has no escape for.
fn short_escape(letter: u8) -> Option<char> {
    Some(match letter {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        _ => return None,
    })
}

/// The offset of the first `"`, `\` or control character in `bytes`: sixteen bytes at a time
/// where the build enables SSE2 (x86-64's baseline), then eight, then one.
fn special_byte(bytes: &[u8]) -> Option<usize> {
    let mut offset = 0;
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    while let Some(chunk) = bytes.get(offset..offset + 16) {
        if let Some(at) = sse2_special_in_16(chunk) {
            return Some(offset + at);
        }
        offset += 16;
    }
    while let Some(chunk) = bytes.get(offset..offset + 8) {
        if let Some(at) = special_in_8(chunk) {
            return Some(offset + at);
        }
        offset += 8;
    }
    let rest = bytes.get(offset..)?;
    let at = rest
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    Some(offset + at)
}

/// [`special_in_16`], where the whole program is built for SSE2.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[allow(unsafe_code)]
fn sse2_special_in_16(chunk: &[u8]) -> Option<usize> {
    // SAFETY: compiled only where the build enables SSE2 for the whole program (x86-64's
    // baseline), so any CPU that runs this binary has it; the function reads only `chunk`,
    // bounds-checked.
    unsafe { special_in_16(chunk) }
}

/// [`special_byte`] within sixteen bytes, by SSE2's byte compares.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "sse2")]
fn special_in_16(chunk: &[u8]) -> Option<usize> {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set_epi64x,
        _mm_set1_epi8,
    };
    let word = |at: usize| {
        let mut word = [0; 8];
        word.copy_from_slice(&chunk[at..at + 8]);
        i64::from_le_bytes(word)
    };
    let bytes = _mm_set_epi64x(word(8), word(0));
    let quote = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'"' as i8));
    let backslash = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\\' as i8));
    // `max(b, 0x1f) == 0x1f` exactly where `b <= 0x1f`, unsigned: a control character.
    let limit = _mm_set1_epi8(0x1f);
    let control = _mm_cmpeq_epi8(_mm_max_epu8(bytes, limit), limit);
    let found = _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control));
    (found != 0).then(|| found.trailing_zeros() as usize)
}

/// [`special_byte`] within eight bytes, by SWAR.
fn special_in_8(chunk: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut word = [0; 8];
    word.copy_from_slice(chunk);
    let word = u64::from_le_bytes(word);
    // A byte of `x` is zero (or, above the lowest such byte, may look so) where the mask
    // has its high bit: the classic "has a zero byte" test, for each kind of byte at once.
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let found = zero_in(word ^ (ONES * u64::from(b'"')))
        | zero_in(word ^ (ONES * u64::from(b'\\')))
        | (word.wrapping_sub(ONES * 0x20) & !word & HIGHS);
    (found != 0).then(|| found.trailing_zeros() as usize / 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_bytes_are_found_at_their_offset_in_any_position() {
        for len in 0..72 {
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
}
