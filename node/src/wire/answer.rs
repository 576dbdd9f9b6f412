//! A non-streamed chat completion as the client receives it.

use bytes::Bytes;

use super::answer_scan::{ShapeError, completion_usage};
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

/// Why an upstream's answer is not passed on.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("the answer is not UTF-8 ({0})")]
    NotUtf8(std::str::Utf8Error),
    #[error("the answer is not a chat completion: {0}")]
    Shape(#[from] ShapeError),
}

impl ChatAnswer {
    /// An upstream's `chat.completion` as it sent it; an error when it is not one: it must
    /// have an `id`, and `choices` each with a `message`; its `usage`, if any, is read. One
    /// scan of the bytes (`answer_scan`), which takes what serde_json reading it into that
    /// shape took, except answers that are not UTF-8 and structs written as arrays
    /// (`crate::fuzzing::check_answer_shape`).
    pub fn passthrough(json: Vec<u8>) -> Result<Self, AnswerError> {
        // The whole answer is UTF-8, as JSON must be, so the client is never passed bytes it
        // cannot decode (ASCII a word at a time); the scan then looks at bytes only.
        if let Err(error) = std::str::from_utf8(&json) {
            return Err(AnswerError::NotUtf8(error));
        }
        let usage = completion_usage(&json)?;
        Ok(Self {
            json: Bytes::from(json),
            usage,
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
        ];
        for &case in cases {
            let agreed = crate::fuzzing::check_answer_shape(case);
            assert_eq!(agreed, Ok(()), "{}", String::from_utf8_lossy(case));
        }
        // Nesting past the 64 levels a word of the skip's stack holds, of arrays and of
        // objects, closed and not.
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
