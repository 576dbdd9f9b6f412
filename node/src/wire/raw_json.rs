//! Reading and forwarding JSON objects by their bounds, without decoding them.
//!
//! An OpenAI-compatible upstream takes the client's body with a few members set by the
//! gateway (`model`, `stream`, `stream_options`). Encoding the decoded request again costs
//! ~9 instructions per byte (serde_json escapes every string byte by byte); copying the
//! client's members as they were sent costs a scan for their bounds and one copy. The body
//! was already decoded in full, so it is known to be valid JSON when this runs.

use memchr::memchr2;

/// `source` (a JSON object's text) with the members `write_head` writes (without braces)
/// first and then every member of `source` whose key is not in `replaced`, copied byte for
/// byte. The head is written straight into the result: one allocation in all.
///
/// `None` when `source` is not an object, or spells a key with an escape (it could be a
/// replaced key in disguise), or `write_head` fails: the caller then encodes the decoded
/// request instead.
pub fn rewrite_object(
    source: &[u8],
    replaced: &[&str],
    write_head: impl FnOnce(&mut Vec<u8>) -> Option<()>,
) -> Option<Vec<u8>> {
    // Room for a head of a model name and the stream members; a longer one grows it once.
    let mut out = Vec::with_capacity(source.len() + HEAD_ROOM);
    out.push(b'{');
    write_head(&mut out)?;
    visit_members(source, |member| {
        if !replaced.iter().any(|r| r.as_bytes() == member.key) {
            if out.len() > 1 {
                out.push(b',');
            }
            out.extend_from_slice(member.raw);
        }
    })?;
    out.push(b'}');
    Some(out)
}

/// What [`rewrite_object`] reserves beyond the source for the head and the closing brace.
const HEAD_ROOM: usize = 96;

/// One member of a JSON object, as slices of its text.
pub struct Member<'a> {
    /// The key, between its quotes (never containing an escape).
    pub key: &'a [u8],
    /// `"key": value` as written.
    pub raw: &'a [u8],
}

/// Hands each member of the JSON object that is the whole of `json` (whitespace aside) to
/// `visit`, in order, without collecting them.
///
/// `None` when it is not one: not an object, cut short, text after it, a scalar that is not a
/// JSON literal or number, or a key spelled with an escape (members before the fault were
/// visited). Strings, and arrays and objects inside the members, are bounded, not checked
/// inside (that is the decoder's business).
pub fn visit_members<'a>(json: &'a [u8], mut visit: impl FnMut(Member<'a>)) -> Option<()> {
    let mut at = skip_space(json, 0);
    if json.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_space(json, at + 1);
    if json.get(at) == Some(&b'}') {
        return whole(json, at).then_some(());
    }
    loop {
        if json.get(at) != Some(&b'"') {
            return None;
        }
        let member_start = at;
        let key_end = string_end(json, at)?;
        let key = &json[at + 1..key_end - 1];
        if key.contains(&b'\\') {
            return None;
        }
        at = skip_space(json, key_end);
        if json.get(at) != Some(&b':') {
            return None;
        }
        at = value_end(json, skip_space(json, at + 1))?;
        visit(Member {
            key,
            raw: &json[member_start..at],
        });
        at = skip_space(json, at);
        match json.get(at)? {
            b',' => at = skip_space(json, at + 1),
            b'}' => return whole(json, at).then_some(()),
            _ => return None,
        }
    }
}

/// Nothing but whitespace after the closing bracket at `close`.
fn whole(json: &[u8], close: usize) -> bool {
    skip_space(json, close + 1) == json.len()
}

fn skip_space(json: &[u8], mut at: usize) -> usize {
    while json.get(at).is_some_and(u8::is_ascii_whitespace) {
        at += 1;
    }
    at
}

/// Just past the closing quote of the string opening at `at`.
fn string_end(json: &[u8], at: usize) -> Option<usize> {
    let mut from = at + 1;
    loop {
        let found = from + memchr2(b'"', b'\\', json.get(from..)?)?;
        if json[found] == b'"' {
            return Some(found + 1);
        }
        from = found + 2;
    }
}

/// Just past the value starting at `at`.
fn value_end(json: &[u8], at: usize) -> Option<usize> {
    match json.get(at)? {
        b'"' => string_end(json, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                match json.get(i)? {
                    b'"' => {
                        i = string_end(json, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => scalar_end(json, at),
    }
}

/// Just past the JSON literal or number starting at `at`; `None` when none starts there.
/// What follows it is the caller's to check (a comma, a closing bracket, whitespace).
pub(super) fn scalar_end(json: &[u8], at: usize) -> Option<usize> {
    let rest = json.get(at..)?;
    let literal: &[u8] = match rest.first()? {
        b't' => b"true",
        b'f' => b"false",
        b'n' => b"null",
        _ => b"",
    };
    if !literal.is_empty() {
        return rest.starts_with(literal).then_some(at + literal.len());
    }
    let digits = |from: usize| {
        from + json[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let mut end = at + usize::from(rest.first() == Some(&b'-'));
    let integer_end = digits(end);
    if integer_end == end || (integer_end - end > 1 && json[end] == b'0') {
        return None;
    }
    end = integer_end;
    if json.get(end) == Some(&b'.') {
        let fraction_end = digits(end + 1);
        if fraction_end == end + 1 {
            return None;
        }
        end = fraction_end;
    }
    if let Some(b'e' | b'E') = json.get(end) {
        let mut exponent = end + 1;
        if let Some(b'+' | b'-') = json.get(exponent) {
            exponent += 1;
        }
        end = digits(exponent);
        if end == exponent {
            return None;
        }
    }
    Some(end)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const REPLACED: &[&str] = &["model", "stream", "stream_options"];

    /// `rewrite_object` with a head given as text.
    fn rewrite_with(source: &[u8], head: &[u8]) -> Option<Vec<u8>> {
        rewrite_object(source, REPLACED, |out| {
            out.extend_from_slice(head);
            Some(())
        })
    }

    fn rewrite(source: &str) -> Option<Value> {
        let bytes = rewrite_with(source.as_bytes(), br#""model":"up","stream":true"#)?;
        serde_json::from_slice(&bytes).ok()
    }

    #[test]
    fn members_are_copied_as_sent_and_replaced_ones_dropped() {
        let source = r#" { "model" : "client" , "messages":[{"role":"user","content":"a \"quoted\" {[ \\ text"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"x","args":"{\"a\":[1,2]}"}]}],
            "stream":false,"stream_options":{"include_usage":true},"temperature":0.5,
            "stop":["}","]"],"n":1 ,"logit_bias":{"1":-100},"user":"u","e":1e-3,"t":true,"z":null }  "#;
        let mut expected: Value = serde_json::from_str(source).unwrap_or_default();
        expected["model"] = json!("up");
        expected["stream"] = json!(true);
        expected.as_object_mut().map(|o| o.remove("stream_options"));
        assert_eq!(rewrite(source), Some(expected));
        let raw = rewrite_with(br#"{"model":"c","messages":[]}"#, b"");
        assert_eq!(raw.as_deref(), Some(&br#"{"messages":[]}"#[..]));
        let empty = rewrite_with(b"{}", br#""model":"m""#);
        assert_eq!(empty.as_deref(), Some(&br#"{"model":"m"}"#[..]));
    }

    #[test]
    fn a_failed_head_leaves_the_body_to_the_encoder() {
        assert_eq!(rewrite_object(b"{}", &[], |_| None), None);
    }

    #[test]
    fn a_head_longer_than_the_room_kept_for_it_is_written_whole() {
        let head = format!(r#""model":"{}""#, "m".repeat(HEAD_ROOM * 2));
        let out = rewrite_with(br#"{"n":1}"#, head.as_bytes()).unwrap_or_default();
        assert_eq!(out, format!("{{{head},\"n\":1}}").into_bytes());
    }

    #[test]
    fn what_it_cannot_copy_safely_is_left_to_the_encoder() {
        for source in [
            r#"{"mod\u0065l":"sneaky","messages":[]}"#,
            "[]",
            r#"{"messages":[]"#,
            r#"{"messages":[] } x"#,
            r#"{"a" 1}"#,
            r#"{"a":1,}"#,
            r#"{"a":tru}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":"b" "c":1}"#,
        ] {
            assert_eq!(rewrite_with(source.as_bytes(), b""), None, "{source}");
        }
    }
}

#[cfg(test)]
mod scan_tests {
    use super::*;

    #[test]
    fn scalars_are_json_literals_and_numbers() {
        for good in [
            "0", "-1", "12", "1.5", "-0.25e-3", "1E9", "true", "false", "null",
        ] {
            assert_eq!(scalar_end(good.as_bytes(), 0), Some(good.len()), "{good}");
        }
        // Not a scalar, or one followed by what is not (the caller refuses that).
        for bad in [
            "", "-", "01", "1.", ".5", "1e", "+1", "nul", "NaN", "1x", "truex",
        ] {
            let end = scalar_end(bad.as_bytes(), 0);
            assert!(end.is_none_or(|end| end < bad.len()), "{bad}");
        }
    }

    fn object_members(json: &[u8]) -> Option<Vec<Member<'_>>> {
        let mut members = Vec::new();
        visit_members(json, |m| members.push(m))?;
        Some(members)
    }

    #[test]
    fn members_are_split_into_key_value_and_raw_text() {
        let members = object_members(br#"{"k" : {"n":[1,"]"]}, "e":[]}"#);
        let first = members.as_ref().and_then(|m| m.first());
        assert_eq!(first.map(|m| m.key), Some(&b"k"[..]));
        assert_eq!(first.map(|m| m.raw), Some(&br#""k" : {"n":[1,"]"]}"#[..]));
        assert_eq!(members.map(|m| m.len()), Some(2));
        assert_eq!(object_members(b" {} ").map(|m| m.len()), Some(0));
    }

    #[test]
    fn strings_end_at_their_closing_quote_whatever_their_length_and_escapes() {
        let mut texts: Vec<String> = Vec::new();
        for len in [0, 1, 14, 15, 16, 17, 40] {
            for escape_at in [None, Some(0), Some(7), Some(15), Some(16), Some(len)] {
                let mut text: String = "x".repeat(len);
                if let Some(at) = escape_at.filter(|at| *at <= len) {
                    text.insert_str(at, "\\\"\n");
                }
                texts.push(text);
            }
        }
        for text in texts {
            let encoded = serde_json::to_string(&text).unwrap_or_default();
            let json = format!("{encoded},1");
            assert_eq!(
                string_end(json.as_bytes(), 0),
                Some(encoded.len()),
                "{json}"
            );
            let cut = &encoded[..encoded.len() - 1];
            assert_eq!(string_end(cut.as_bytes(), 0), None, "{cut}");
        }
    }
}
