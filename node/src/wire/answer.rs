//! A non-streamed chat completion as the client receives it.

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;

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

/// What an upstream answer must have to be passed on as a completion.
#[derive(Deserialize)]
struct CompletionShape {
    #[serde(rename = "id")]
    _id: IgnoredAny,
    #[serde(rename = "choices")]
    _choices: Vec<ChoiceShape>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct ChoiceShape {
    #[serde(rename = "message")]
    _message: IgnoredAny,
}

impl ChatAnswer {
    /// An upstream's `chat.completion` as it sent it; an error when it is not one.
    pub fn passthrough(json: Vec<u8>) -> Result<Self, serde_json::Error> {
        let shape: CompletionShape = serde_json::from_slice(&json)?;
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
