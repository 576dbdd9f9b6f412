//! Forwarding a client's JSON object without encoding it again.
//!
//! An OpenAI-compatible upstream takes the client's body with a few members set by the
//! gateway (`model`, `stream`, `stream_options`). Encoding the decoded request again costs
//! ~9 instructions per byte (serde_json escapes every string byte by byte); copying the
//! client's members as they were sent costs a scan for their bounds and one copy. The body
//! was already decoded in full, so it is known to be valid JSON when this runs.

use memchr::memchr2;

/// `source` (a JSON object's text) with `head` (members, without braces) first and then every
/// member of `source` whose key is not in `replaced`, copied byte for byte.
///
/// `None` when `source` is not an object, or spells a key with an escape (it could be a
/// replaced key in disguise): the caller then encodes the decoded request instead.
pub fn rewrite_object(source: &[u8], head: &[u8], replaced: &[&str]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(source.len() + head.len() + 2);
    out.push(b'{');
    out.extend_from_slice(head);
    let mut at = skip_space(source, 0);
    if source.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    loop {
        at = skip_space(source, at);
        match source.get(at)? {
            b'}' => break,
            b',' => {
                at += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let member_start = at;
        let key_end = string_end(source, at)?;
        let key = &source[at + 1..key_end - 1];
        if key.contains(&b'\\') {
            return None;
        }
        at = skip_space(source, key_end);
        if source.get(at) != Some(&b':') {
            return None;
        }
        at = value_end(source, skip_space(source, at + 1))?;
        if !replaced.iter().any(|r| r.as_bytes() == key) {
            if out.len() > 1 {
                out.push(b',');
            }
            out.extend_from_slice(&source[member_start..at]);
        }
    }
    if source[at + 1..].iter().any(|b| !b.is_ascii_whitespace()) {
        return None;
    }
    out.push(b'}');
    Some(out)
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
        _ => {
            let mut i = at;
            while json
                .get(i)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace())
            {
                i += 1;
            }
            (i > at).then_some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const REPLACED: &[&str] = &["model", "stream", "stream_options"];

    fn rewrite(source: &str) -> Option<Value> {
        let head = br#""model":"up","stream":true"#;
        let bytes = rewrite_object(source.as_bytes(), head, REPLACED)?;
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
        let raw = rewrite_object(br#"{"model":"c","messages":[]}"#, b"", REPLACED);
        assert_eq!(raw.as_deref(), Some(&br#"{"messages":[]}"#[..]));
        let empty = rewrite_object(b"{}", br#""model":"m""#, REPLACED);
        assert_eq!(empty.as_deref(), Some(&br#"{"model":"m"}"#[..]));
    }

    #[test]
    fn what_it_cannot_copy_safely_is_left_to_the_encoder() {
        for source in [
            r#"{"mod\u0065l":"sneaky","messages":[]}"#,
            "[]",
            r#"{"messages":[]"#,
            r#"{"messages":[] } x"#,
            r#"{"a" 1}"#,
        ] {
            assert_eq!(
                rewrite_object(source.as_bytes(), b"", REPLACED),
                None,
                "{source}"
            );
        }
    }
}
