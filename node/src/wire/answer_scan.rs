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

use super::json_cursor::Scan;
use super::openai::Usage;

/// The usage of a `chat.completion` (`None` when it has none or `null`), when the scan is sure
/// the answer has the shape serde_json's check accepts; `None` when it is not sure.
///
/// `json` must be UTF-8 (checked before), so a string's bytes need no check beyond JSON's.
pub fn completion_usage(json: &[u8]) -> Option<Option<Usage>> {
    let mut scan = Scan::new(json);
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
    (id && choices && scan.at_end()).then_some(usage.flatten())
}

impl Scan<'_> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::json_cursor::MAX_DEPTH;

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
