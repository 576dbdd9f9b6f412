//! OpenAI chat-completions wire types: the gateway's lingua franca. Fields the gateway does
//! not interpret are kept in `extra` and forwarded untouched.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::members::{Members, Name};
use super::raw_json::rewrite_object;

/// The members of a request body that the gateway decides for the upstream itself.
const GATEWAY_SET_MEMBERS: &[&str] = &["model", "stream", "stream_options"];

/// A client's `POST /v1/chat/completions` body.
/// Decoded by hand (`request_de.rs`), without serde's buffering of flattened fields.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ChatRequest {
    #[serde(skip_serializing)]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(skip_serializing)]
    pub stream: Option<bool>,
    #[serde(skip_serializing)]
    pub stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopSequences>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// The client's body this was decoded from, kept while no field above has been changed
    /// (whoever changes one clears it): an OpenAI-compatible upstream then gets the members
    /// as the client sent them instead of an encoding of the decoded request.
    #[serde(skip)]
    pub source: Option<bytes::Bytes>,
}

impl ChatRequest {
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Tool or function calling in any form: `tools`, the older `functions`, or a turn that
    /// carries a call. A translation that does not carry tools must not drop them silently.
    pub fn uses_tools(&self) -> bool {
        self.tools.is_some()
            || self.extra.contains_key("functions")
            || self.messages.iter().any(|m| {
                m.extra.contains_key("tool_calls") || m.extra.contains_key("function_call")
            })
    }

    pub fn wants_stream_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }

    /// The completion budget the client asked for, under either of OpenAI's names.
    pub fn completion_limit(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// The client's body with the members `write_head` writes (without braces) in place of
    /// the members the gateway sets itself, when the body is still what the client sent.
    pub fn source_with(
        &self,
        write_head: impl FnOnce(&mut Vec<u8>) -> Option<()>,
    ) -> Option<Vec<u8>> {
        rewrite_object(self.source.as_ref()?, GATEWAY_SET_MEMBERS, write_head)
    }

    /// Characters of text in all messages; a cheap stand-in for prompt size.
    pub fn prompt_chars(&self) -> usize {
        self.messages.iter().map(|m| m.content.text_len()).sum()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum StopSequences {
    One(String),
    Many(Vec<String>),
}

impl StopSequences {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

/// Decoded by hand (`request_de.rs`).
#[derive(Debug, Clone, Serialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: MessageContent,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatMessage {
    pub fn new(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            content: MessageContent::Text(text.into()),
            extra: Map::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

/// Message content: a string, an array of typed parts, or null (assistant tool calls).
/// Decoded by hand (`request_de.rs`).
#[derive(Debug, Clone, Serialize, Default)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
    #[default]
    Null,
}

impl MessageContent {
    /// The text of the message, parts joined; non-text parts are skipped.
    pub fn to_text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Parts(parts) => {
                let texts: Vec<&str> = parts.iter().filter_map(|p| p.text.as_deref()).collect();
                texts.join("\n")
            }
            Self::Null => String::new(),
        }
    }

    pub fn text_len(&self) -> usize {
        match self {
            Self::Text(s) => s.len(),
            Self::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.text.as_ref())
                .map(String::len)
                .sum(),
            Self::Null => 0,
        }
    }

    /// True when some part is not plain text (images, audio, ...).
    pub fn has_non_text_parts(&self) -> bool {
        matches!(self, Self::Parts(parts) if parts.iter().any(|p| p.kind != "text"))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Decoded by hand (`wire::members`), as the answer's shape is: read with every answer. Other
/// members (`prompt_tokens_details`, ...) are skipped.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

enum UsageMember {
    Prompt,
    Completion,
    Total,
    Other,
}

impl Members for UsageMember {
    fn from_name(name: &[u8]) -> Self {
        match name {
            b"prompt_tokens" => Self::Prompt,
            b"completion_tokens" => Self::Completion,
            b"total_tokens" => Self::Total,
            _ => Self::Other,
        }
    }
}

impl<'de> Deserialize<'de> for Usage {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UsageVisitor;
        impl<'de> serde::de::Visitor<'de> for UsageVisitor {
            type Value = Usage;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("struct Usage")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Usage, A::Error> {
                let mut counts: [Option<u64>; 3] = [None; 3];
                const NAMES: [&str; 3] = ["prompt_tokens", "completion_tokens", "total_tokens"];
                while let Some(Name(member)) = map.next_key::<Name<UsageMember>>()? {
                    let slot = match member {
                        UsageMember::Prompt => 0,
                        UsageMember::Completion => 1,
                        UsageMember::Total => 2,
                        UsageMember::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    if counts[slot].is_some() {
                        return Err(serde::de::Error::duplicate_field(NAMES[slot]));
                    }
                    counts[slot] = Some(map.next_value()?);
                }
                let [prompt_tokens, completion_tokens, total_tokens] = counts;
                let missing = serde::de::Error::missing_field;
                Ok(Usage {
                    prompt_tokens: prompt_tokens.ok_or_else(|| missing(NAMES[0]))?,
                    completion_tokens: completion_tokens.ok_or_else(|| missing(NAMES[1]))?,
                    total_tokens: total_tokens.ok_or_else(|| missing(NAMES[2]))?,
                })
            }
        }
        deserializer.deserialize_struct(
            "Usage",
            &["prompt_tokens", "completion_tokens", "total_tokens"],
            UsageVisitor,
        )
    }
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// A non-streamed `chat.completion` object.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatResponse {
    pub id: String,
    #[serde(default = "chat_completion_object")]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn chat_completion_object() -> String {
    "chat.completion".to_owned()
}

impl ChatResponse {
    /// The first choice's text, the answer most callers want.
    pub fn first_text(&self) -> String {
        self.choices
            .first()
            .and_then(|c| c.message.content.clone())
            .unwrap_or_default()
    }

    pub fn first_finish_reason(&self) -> Option<String> {
        self.choices.first().and_then(|c| c.finish_reason.clone())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Choice {
    #[serde(default)]
    pub index: u32,
    pub message: ResponseMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ResponseMessage {
    #[serde(default = "assistant_role")]
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn assistant_role() -> String {
    "assistant".to_owned()
}

impl ChatResponse {
    /// A single-choice assistant answer, as the translating providers build it.
    pub fn assistant(
        id: String,
        model: String,
        text: String,
        finish_reason: &str,
        usage: Usage,
    ) -> Self {
        Self {
            id,
            object: chat_completion_object(),
            created: unix_now(),
            model,
            choices: vec![Choice {
                index: 0,
                message: ResponseMessage {
                    role: assistant_role(),
                    content: Some(text),
                    extra: Map::new(),
                },
                finish_reason: Some(finish_reason.to_owned()),
                extra: Map::new(),
            }],
            usage: Some(usage),
            extra: Map::new(),
        }
    }
}

/// One `chat.completion.chunk` of a stream.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatChunk {
    pub id: String,
    #[serde(default = "chunk_object")]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

fn chunk_object() -> String {
    "chat.completion.chunk".to_owned()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChunkChoice {
    #[serde(default)]
    pub index: u32,
    pub delta: Delta,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatChunk {
    /// A chunk carrying a role, a piece of text and/or a finish reason.
    pub fn delta(
        id: &str,
        model: &str,
        created: u64,
        role: Option<&str>,
        text: Option<String>,
        finish: Option<&str>,
    ) -> Self {
        Self {
            id: id.to_owned(),
            object: chunk_object(),
            created,
            model: model.to_owned(),
            choices: vec![ChunkChoice {
                index: 0,
                delta: Delta {
                    role: role.map(str::to_owned),
                    content: text,
                    extra: Map::new(),
                },
                finish_reason: finish.map(str::to_owned),
            }],
            usage: None,
        }
    }

    /// The trailing usage-only chunk that `stream_options.include_usage` asks for.
    pub fn usage_only(id: &str, model: &str, created: u64, usage: Usage) -> Self {
        Self {
            id: id.to_owned(),
            object: chunk_object(),
            created,
            model: model.to_owned(),
            choices: Vec::new(),
            usage: Some(usage),
        }
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
