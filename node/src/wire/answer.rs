//! A non-streamed chat completion as the client receives it.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::members::{Members, Name, first};

use super::openai::{ChatResponse, Usage};

/// The JSON of a `chat.completion` and the usage the gateway accounts for.
///
/// An OpenAI-compatible upstream's answer is passed through as the bytes it sent: checked for
/// the shape of a completion and read for `usage`, but never decoded into a tree and encoded
/// again. Translating providers (Anthropic, Ollama, the mock) build a [`ChatResponse`] and
/// encode it once.
#[derive(Debug, Clone)]
pub struct ChatAnswer {
    pub json: Bytes,
    pub usage: Option<Usage>,
}

/// What an upstream answer must have to be passed on as a completion: an `id`, and `choices`
/// each with a `message`; its `usage`, if any, is read. Decoded by hand rather than derived,
/// so that `choices` are counted, not collected. What cost most was serde_json checking each
/// key's UTF-8: [`ChatAnswer::passthrough`] checks the whole answer's once instead. It accepts
/// and refuses what the derived decoder did, but for answers that are not UTF-8 and structs
/// written as arrays, which it refuses (`crate::fuzzing::check_answer_shape`).
struct CompletionShape {
    usage: Option<Usage>,
}

enum CompletionMember {
    Id,
    Choices,
    Usage,
    Other,
}

impl Members for CompletionMember {
    fn from_name(name: &[u8]) -> Self {
        match name {
            b"id" => Self::Id,
            b"choices" => Self::Choices,
            b"usage" => Self::Usage,
            _ => Self::Other,
        }
    }
}

impl<'de> Deserialize<'de> for CompletionShape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ShapeVisitor;
        impl<'de> Visitor<'de> for ShapeVisitor {
            type Value = CompletionShape;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("struct CompletionShape")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut id, mut choices, mut usage_seen) = (false, false, false);
                let mut usage = None;
                while let Some(Name(member)) = map.next_key::<Name<CompletionMember>>()? {
                    match member {
                        CompletionMember::Id => {
                            first(&mut id, "id")?;
                            map.next_value::<IgnoredAny>()?;
                        }
                        CompletionMember::Choices => {
                            first(&mut choices, "choices")?;
                            map.next_value::<Choices>()?;
                        }
                        CompletionMember::Usage => {
                            first(&mut usage_seen, "usage")?;
                            usage = map.next_value::<Option<Usage>>()?;
                        }
                        CompletionMember::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                if !id {
                    return Err(de::Error::missing_field("id"));
                }
                if !choices {
                    return Err(de::Error::missing_field("choices"));
                }
                Ok(CompletionShape { usage })
            }
        }
        deserializer.deserialize_struct(
            "CompletionShape",
            &["id", "choices", "usage"],
            ShapeVisitor,
        )
    }
}

/// `choices`: an array of choices, each checked and none kept.
struct Choices;

impl<'de> Deserialize<'de> for Choices {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ChoicesVisitor;
        impl<'de> Visitor<'de> for ChoicesVisitor {
            type Value = Choices;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<ChoiceShape>()?.is_some() {}
                Ok(Choices)
            }
        }
        deserializer.deserialize_seq(ChoicesVisitor)
    }
}

/// A choice: it must carry a `message`.
struct ChoiceShape;

enum ChoiceMember {
    Message,
    Other,
}

impl Members for ChoiceMember {
    fn from_name(name: &[u8]) -> Self {
        match name {
            b"message" => Self::Message,
            _ => Self::Other,
        }
    }
}

impl<'de> Deserialize<'de> for ChoiceShape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ChoiceVisitor;
        impl<'de> Visitor<'de> for ChoiceVisitor {
            type Value = ChoiceShape;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("struct ChoiceShape")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut message = false;
                while let Some(Name(member)) = map.next_key::<Name<ChoiceMember>>()? {
                    if let ChoiceMember::Message = member {
                        first(&mut message, "message")?;
                    }
                    map.next_value::<IgnoredAny>()?;
                }
                if !message {
                    return Err(de::Error::missing_field("message"));
                }
                Ok(ChoiceShape)
            }
        }
        deserializer.deserialize_struct("ChoiceShape", &["message"], ChoiceVisitor)
    }
}

impl ChatAnswer {
    /// An upstream's `chat.completion` as it sent it; an error when it is not one.
    pub fn passthrough(json: Vec<u8>) -> Result<Self, serde_json::Error> {
        // The whole answer is UTF-8, as JSON must be, so the client is never passed bytes it
        // cannot decode: one pass (ASCII a word at a time), after which serde_json reads it as
        // a `str` and checks no key's UTF-8 again; the strings the shape check skips are
        // covered too.
        let text = match std::str::from_utf8(&json) {
            Ok(text) => text,
            Err(error) => {
                return Err(de::Error::custom(format_args!(
                    "the answer is not UTF-8 ({error})"
                )));
            }
        };
        // The usual answer is read by one scan; one it is not sure of, by serde_json.
        if let Some(usage) = super::answer_scan::completion_usage(text.as_bytes()) {
            return Ok(Self {
                json: Bytes::from(json),
                usage,
            });
        }
        let shape: CompletionShape = serde_json::from_str(text)?;
        Ok(Self {
            json: Bytes::from(json),
            usage: shape.usage,
        })
    }

    pub fn encode(response: &ChatResponse) -> Result<Self, serde_json::Error> {
        Ok(Self {
            json: Bytes::from(serde_json::to_vec(response)?),
            usage: response.usage,
        })
    }

    /// The completion decoded, for endpoints that reshape it (the legacy completions).
    pub fn decode(&self) -> Result<ChatResponse, serde_json::Error> {
        serde_json::from_slice(&self.json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_answer_is_passed_through_byte_for_byte_with_its_usage() {
        let raw = br#"{"id":"x","object":"chat.completion","created":1,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"message":{"role":"assistant","content":"hi","annotations":[]},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4,"prompt_tokens_details":{"cached_tokens":0}}}"#;
        let answer = ChatAnswer::passthrough(raw.to_vec()).ok();
        let answer = answer.as_ref();
        assert_eq!(answer.map(|a| &a.json[..]), Some(&raw[..]));
        assert_eq!(answer.and_then(|a| a.usage), Some(Usage::new(3, 1)));
        let decoded = answer.and_then(|a| a.decode().ok());
        assert_eq!(decoded.map(|r| r.first_text()), Some("hi".to_owned()));
    }

    #[test]
    fn reads_like_the_derived_shape() {
        let cases: &[&[u8]] = &[
            br#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
            br#"{"choices":[],"id":7}"#,
            br#"{"id":"x","choices":[],"usage":null}"#,
            br#"{"id":"x","choices":[],"usage":{"prompt_tokens":1}}"#,
            br#"{"id":"x","choices":[],"usage":"none"}"#,
            br#"{"id":"x","choices":[],"usage":{"total_tokens":3,"prompt_tokens":1,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":0}}}"#,
            br#"{"id":"x","choices":[],"usage":{"prompt_tokens":1,"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
            br#"{"id":"x","choices":[],"usage":{"prompt_tokens":-1,"completion_tokens":2,"total_tokens":3}}"#,
            br#"{"id":"x","choices":[],"usage":{"prompt_tokens":1.5,"completion_tokens":2,"total_tokens":3}}"#,
            br#"{"id":"x","choices":[],"usage":{"pr\u006fmpt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
            br#"{"id":"x","id":"y","choices":[]}"#,
            br#"{"id":"x","choices":[],"choices":[]}"#,
            br#"{"id":"x","choices":[],"usage":null,"usage":null}"#,
            br#"{"id":"x","choices":[{"message":1,"message":2}]}"#,
            br#"{"id":"x","choices":[{"index":0}]}"#,
            br#"{"id":"x","choices":[{"message":null,"extra":{"a":[1,{"b":"\u00e9"}]}}]}"#,
            br#"{"\u0069d":"x","ch\u006fices":[{"m\u0065ssage":{}}]}"#,
            br#"{"id":"x","choices":{}}"#,
            br#"{"id":"x","choices":[[]]}"#,
            br#"{"id":"x","choices":[[0]]}"#,
            br#"{"id":"x","choices":[],"usage":[1,2,3]}"#,
            br#"{"id":"x","choices":[{"message":{}}],"object":"chat.completion","created":1}"#,
            br#"{"id":"x","choices":[{"message":{}}]"#,
            br#"{"id":"x","choices":[{"message":{}}]} trailing"#,
            br#"{"id":"x",}"#,
            br#"{"choices":[]}"#,
            b"{}",
            b"null",
            b"",
            // The grammar as serde_json reads it: whitespace, numbers, literals, escapes,
            // commas, names, nesting.
            b" \n{ \"id\" : \"x\" ,\t\"choices\" : [ { \"message\" : { } } ] } \r\n",
            b"{\"id\":\"x\",\"choices\":[] }\x0c",
            br#"{"id":-0.5e+10,"choices":[]}"#,
            br#"{"id":1E-2,"choices":[]}"#,
            br#"{"id":0,"choices":[]}"#,
            br#"{"id":01,"choices":[]}"#,
            br#"{"id":1.,"choices":[]}"#,
            br#"{"id":-,"choices":[]}"#,
            br#"{"id":1e,"choices":[]}"#,
            br#"{"id":1e+,"choices":[]}"#,
            br#"{"id":+1,"choices":[]}"#,
            br#"{"id":.5,"choices":[]}"#,
            br#"{"id":1x,"choices":[]}"#,
            br#"{"id":[true,false,null],"choices":[]}"#,
            br#"{"id":tru,"choices":[]}"#,
            br#"{"id":nulll,"choices":[]}"#,
            br#"{"id":"\u00zz","choices":[]}"#,
            br#"{"id":"\ud800","choices":[]}"#,
            br#"{"\ud800":1,"id":"x","choices":[]}"#,
            br#"{"id":{"\ud800":1},"choices":[]}"#,
            b"{\"id\":\"a\x01b\",\"choices\":[]}",
            br#"{"id":"\q","choices":[]}"#,
            br#"{"id":"\/\b\f\n\r\t\"\\","choices":[]}"#,
            br#"{"id":"x","choices":[],}"#,
            br#"{"id":[1,],"choices":[]}"#,
            br#"{"id":{"a":1,},"choices":[]}"#,
            br#"{"id":"x","choices":[{"message":1},]}"#,
            br#"{"id":"x","choices":[{"message":1,}]}"#,
            br#"{"id":"x","choices":[,]}"#,
            br#"{,"id":"x","choices":[]}"#,
            br#"{"id":{},"choices":[{"message":[]},{"message":{"a":[{}]}}]}"#,
            br#"{"id" "x","choices":[]}"#,
            br#"{1:2}"#,
            br#"{"id":{1:2},"choices":[]}"#,
            br#"{"id":{"a" 1},"choices":[]}"#,
            br#"{"id":[1 2],"choices":[]}"#,
            br#"{"id":"x","choices":[{"message":1} {"message":2}]}"#,
            br#"{"id":"x" "choices":[]}"#,
            br#"{"\u0075sage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3},"id":"x","choices":[]}"#,
            br#"{"id":"x","choices":[],"usage" :  {"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}  }"#,
            br#"{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"x":[{"y":null}]}}"#,
            br#"{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}"#,
            br#"{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,}}"#,
            br#"{"id":"x"#,
            br#"{"id":"x","choices":[]}}"#,
            br#"{"id":"x","choices":[{}]}"#,
            br#"{"id":"x","choices":[{"message":1}],"choices":[]}"#,
            br#"{"id":"x","choices":null}"#,
            br#"{"id":"x","choices":[null]}"#,
            br#"{"id":"x","choices":["message"]}"#,
            br#"{"id":"x","choices":[{"\u006dessage":1}]}"#,
            br#"{"id":"x","choices":[{"message":1,"m\u0065ssage":2}]}"#,
            br#"{"id":"x","choices":[{"message":1}],"message":1}"#,
            br#"{"id":"x","choices":[{"id":1,"choices":2,"usage":3,"message":4}]}"#,
            br#"{"id":"\u00E9","choices":[]}"#,
            br#"{"\ud83d\ude00":1,"id":"x","choices":[]}"#,
            br#"{"id":"x","choices":[{"\ud800":1,"message":1}]}"#,
            br#"{"\udc00":1,"id":"x","choices":[]}"#,
            br#"{"\ud800\n":1,"id":"x","choices":[]}"#,
            br#"{"id":"x","choices":[{"message":{"\ud800":1}}]}"#,
            br#"{"id":[1},"choices":[]}"#,
            br#"{"id":{"a":1],"choices":[]}"#,
            br#"{"id":-0,"choices":[],"usage":{"prompt_tokens":-0,"completion_tokens":0,"total_tokens":0}}"#,
            br#"{"id":1e5,"choices":[],"usage":{"prompt_tokens":1e5,"completion_tokens":0,"total_tokens":0}}"#,
            br#"{"id":-01,"choices":[]}"#,
            br#"{"id":1.5e,"choices":[]}"#,
            b"{\"id\":\"a\x1fb\",\"choices\":[]}",
            b"{\"id\":\"a\x7fb\",\"choices\":[]}",
            b"{\"i\td\":\"x\",\"choices\":[]}",
            br#"{"id":"}],\"{[","choices":[]}"#,
            br#"{"id\\":1,"id":"x","choices":[]}"#,
            br#"{"id":"\u12"#,
            br#"{"ids":1,"i":2,"id":"x","choices":[]}"#,
        ];
        for &case in cases {
            let agreed = crate::fuzzing::check_answer_shape(case);
            assert_eq!(agreed, Ok(()), "{}", String::from_utf8_lossy(case));
        }
        // A full answer cut short anywhere, and with any one byte replaced by one that
        // matters to the grammar.
        let full = br#"{"id":"chatcmpl-1","object":"chat.completion","created":17,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"h\u00e9 \"x\"","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4,"details":{"cached":[0,1.5e-3,true]}}}"#;
        assert_eq!(
            ChatAnswer::passthrough(full.to_vec())
                .ok()
                .and_then(|a| a.usage),
            Some(Usage::new(3, 1))
        );
        for end in 0..full.len() {
            let agreed = crate::fuzzing::check_answer_shape(&full[..end]);
            assert_eq!(agreed, Ok(()), "cut at {end}");
        }
        for at in 0..full.len() {
            for &byte in b"\"\\{}[],:0-eu\x1f t\x80\xc3\xff" {
                let mut changed = full.to_vec();
                changed[at] = byte;
                let agreed = crate::fuzzing::check_answer_shape(&changed);
                assert_eq!(agreed, Ok(()), "{}", String::from_utf8_lossy(&changed));
            }
        }
        // Deep nesting, of arrays and of objects, closed and not.
        for depth in [63, 64, 65, 130] {
            let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
            let mixed = format!("{}0{}", r#"[{"a":"#.repeat(depth), "}]".repeat(depth));
            for nested in [arrays, objects, mixed] {
                let unclosed = &nested[..nested.len() - 1];
                for value in [&nested[..], unclosed] {
                    let case = format!(r#"{{"id":{value},"choices":[{{"message":{value}}}]}}"#);
                    let agreed = crate::fuzzing::check_answer_shape(case.as_bytes());
                    assert_eq!(agreed, Ok(()), "{case}");
                }
            }
        }
        // Where they part: an answer that is not UTF-8 is refused, wherever the bytes are (the
        // derived decoder, reading bytes, refused them in member names only) ...
        for not_utf8 in [
            &b"{\"id\":\"x\",\"choices\":[{\"message\":\"\xff\"}]}"[..],
            b"{\"id\":\"x\",\"choices\":[],\"\xc3\":1}",
        ] {
            assert!(ChatAnswer::passthrough(not_utf8.to_vec()).is_err());
            assert_eq!(crate::fuzzing::check_answer_shape(not_utf8), Ok(()));
        }
        // ... and the derived decoder also took a struct written as an array, which
        // is not a completion to pass on.
        let array = br#"["x",[{"message":{}}]]"#;
        assert!(ChatAnswer::passthrough(array.to_vec()).is_err());
        assert_eq!(crate::fuzzing::check_answer_shape(array), Ok(()));
    }

    #[test]
    fn what_is_not_a_completion_is_refused() {
        for body in [
            &br#"{"choices":[]}"#[..],
            br#"{"id":"x"}"#,
            br#"{"id":"x","choices":[{"index":0}]}"#,
            br#"{"id":"x","choices":[]"#,
            b"<html>",
        ] {
            assert!(ChatAnswer::passthrough(body.to_vec()).is_err(), "{body:?}");
        }
        let no_usage = ChatAnswer::passthrough(br#"{"id":"x","choices":[]}"#.to_vec()).ok();
        assert!(no_usage.is_some_and(|a| a.usage.is_none()));
    }
}
