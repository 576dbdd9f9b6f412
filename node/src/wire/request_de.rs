//! Hand-written decoding of the request body's objects, every client request's first cost.
//!
//! serde's `#[serde(flatten)]` (to keep the fields the gateway does not interpret) and
//! `#[serde(untagged)]` (message content: a string, parts or null) first buffer the whole
//! value into serde's private `Content` tree and decode it a second time from there. These
//! visitors read each field once, straight into its place; unknown fields go to `extra`.

use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::openai::{ChatMessage, ChatRequest, ContentPart, MessageContent};

const REQUEST_FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "tools",
];

const MESSAGE_FIELDS: &[&str] = &["role", "content"];

/// A key of an object with known fields: its index among them, or the unknown key itself.
struct FieldKey(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for FieldKey {
    type Value = Result<usize, String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl Visitor<'_> for FieldKey {
    type Value = Result<usize, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self
            .0
            .iter()
            .position(|f| *f == key)
            .ok_or_else(|| key.to_owned()))
    }
}

/// Which known fields were seen, to refuse one given twice (as serde's derive does).
struct SeenFields(u32, &'static [&'static str]);

impl SeenFields {
    fn first<E: Error>(&mut self, index: usize) -> Result<&'static str, E> {
        let bit = 1 << index;
        let name = self.1[index];
        if self.0 & bit != 0 {
            return Err(E::duplicate_field(name));
        }
        self.0 |= bit;
        Ok(name)
    }
}

impl<'de> Deserialize<'de> for ChatRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RequestVisitor)
    }
}

struct RequestVisitor;

impl<'de> Visitor<'de> for RequestVisitor {
    type Value = ChatRequest;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct ChatRequest")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ChatRequest, A::Error> {
        let mut request = ChatRequest::default();
        let mut messages = None;
        let mut seen = SeenFields(0, REQUEST_FIELDS);
        while let Some(key) = map.next_key_seed(FieldKey(REQUEST_FIELDS))? {
            let index = match key {
                Ok(index) => index,
                Err(unknown) => {
                    request.extra.insert(unknown, map.next_value()?);
                    continue;
                }
            };
            match seen.first(index)? {
                "model" => request.model = map.next_value()?,
                "messages" => messages = Some(map.next_value()?),
                "stream" => request.stream = map.next_value()?,
                "stream_options" => request.stream_options = map.next_value()?,
                "max_tokens" => request.max_tokens = map.next_value()?,
                "max_completion_tokens" => request.max_completion_tokens = map.next_value()?,
                "temperature" => request.temperature = map.next_value()?,
                "top_p" => request.top_p = map.next_value()?,
                "n" => request.n = map.next_value()?,
                "stop" => request.stop = map.next_value()?,
                "seed" => request.seed = map.next_value()?,
                "tools" => request.tools = map.next_value()?,
                // Every name in REQUEST_FIELDS has its arm above (a test decodes each).
                other => {
                    request.extra.insert(other.to_owned(), map.next_value()?);
                }
            }
        }
        request.messages = messages.ok_or_else(|| A::Error::missing_field("messages"))?;
        Ok(request)
    }
}

impl<'de> Deserialize<'de> for ChatMessage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MessageVisitor)
    }
}

struct MessageVisitor;

impl<'de> Visitor<'de> for MessageVisitor {
    type Value = ChatMessage;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct ChatMessage")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ChatMessage, A::Error> {
        let mut role = None;
        let mut content = MessageContent::Null;
        let mut extra = Map::new();
        let mut seen = SeenFields(0, MESSAGE_FIELDS);
        while let Some(key) = map.next_key_seed(FieldKey(MESSAGE_FIELDS))? {
            match key {
                Err(unknown) => {
                    extra.insert(unknown, map.next_value::<Value>()?);
                }
                Ok(index) => match seen.first(index)? {
                    "role" => role = Some(map.next_value()?),
                    "content" => content = map.next_value()?,
                    other => {
                        extra.insert(other.to_owned(), map.next_value::<Value>()?);
                    }
                },
            }
        }
        let role = role.ok_or_else(|| A::Error::missing_field("role"))?;
        Ok(ChatMessage {
            role,
            content,
            extra,
        })
    }
}

impl<'de> Deserialize<'de> for MessageContent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ContentVisitor)
    }
}

struct ContentVisitor;

impl<'de> Visitor<'de> for ContentVisitor {
    type Value = MessageContent;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, an array of content parts or null")
    }

    fn visit_str<E: Error>(self, text: &str) -> Result<MessageContent, E> {
        Ok(MessageContent::Text(text.to_owned()))
    }

    fn visit_string<E: Error>(self, text: String) -> Result<MessageContent, E> {
        Ok(MessageContent::Text(text))
    }

    fn visit_unit<E: Error>(self) -> Result<MessageContent, E> {
        Ok(MessageContent::Null)
    }

    fn visit_none<E: Error>(self) -> Result<MessageContent, E> {
        Ok(MessageContent::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MessageContent, A::Error> {
        let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(64));
        while let Some(part) = seq.next_element::<ContentPart>()? {
            parts.push(part);
        }
        Ok(MessageContent::Parts(parts))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::wire::openai::Role;

    fn decode(value: &Value) -> Result<ChatRequest, String> {
        let text = value.to_string();
        let mut deserializer = serde_json::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner())
        })
    }

    #[test]
    fn every_field_lands_in_its_place_and_the_rest_is_kept() {
        let body = json!({
            "model": "m", "stream": true, "stream_options": {"include_usage": true},
            "max_tokens": 7, "max_completion_tokens": 8, "temperature": 0.5, "top_p": 0.25,
            "n": 2, "stop": ["a", "b"], "seed": -3, "tools": [{"type": "function"}],
            "user": "u-1", "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"},
                    {"type": "image_url", "image_url": {"url": "data:x"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1"}]},
                {"role": "tool", "tool_call_id": "c1"}
            ]
        });
        assert_eq!(
            REQUEST_FIELDS.len(),
            12,
            "a new field needs its arm in visit_map"
        );
        let request = decode(&body);
        let Ok(request) = request else {
            panic!("decodes: {request:?}");
        };
        assert_eq!(request.model.as_deref(), Some("m"));
        assert!(request.is_stream() && request.wants_stream_usage());
        assert_eq!(
            (request.max_tokens, request.max_completion_tokens),
            (Some(7), Some(8))
        );
        assert_eq!(
            (request.temperature, request.top_p),
            (Some(0.5), Some(0.25))
        );
        assert_eq!((request.n, request.seed), (Some(2), Some(-3)));
        assert_eq!(
            request.stop.as_ref().map(|s| s.to_vec()),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(request.tools, Some(json!([{"type": "function"}])));
        assert_eq!(request.extra.get("user"), Some(&json!("u-1")));
        assert_eq!(request.extra.len(), 2);
        let roles: Vec<Role> = request.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::System, Role::User, Role::Assistant, Role::Tool]
        );
        assert_eq!(request.messages[0].content.to_text(), "be brief");
        assert!(request.messages[1].content.has_non_text_parts());
        assert!(matches!(request.messages[2].content, MessageContent::Null));
        assert!(request.messages[2].extra.contains_key("tool_calls"));
        assert!(matches!(request.messages[3].content, MessageContent::Null));
        assert_eq!(
            request.messages[3].extra.get("tool_call_id"),
            Some(&json!("c1"))
        );
        // What goes upstream: everything but the fields the gateway sets itself.
        let mut expected = body.clone();
        for gateway_set in ["model", "stream", "stream_options"] {
            expected.as_object_mut().map(|o| o.remove(gateway_set));
        }
        // A message without content goes on with `"content": null`.
        expected["messages"][3]["content"] = Value::Null;
        assert_eq!(serde_json::to_value(&request).ok(), Some(expected));
    }

    #[test]
    fn bad_bodies_are_refused_with_the_field_that_is_wrong() {
        let cases = [
            (json!({"model": "m"}), "missing field `messages`"),
            (
                json!({"messages": [{"content": "x"}]}),
                "messages[0]: missing field `role`",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages[0].content: invalid type: integer `5`, expected a string, an array of content parts or null",
            ),
            (
                json!({"messages": [{"role": "robot"}]}),
                "messages[0].role: unknown variant `robot`",
            ),
            (
                json!({"messages": [], "max_tokens": "5"}),
                "max_tokens: invalid type: string",
            ),
            (
                json!([]),
                "invalid type: sequence, expected struct ChatRequest",
            ),
        ];
        for (body, expected) in cases {
            let error = decode(&body).err().unwrap_or_default();
            assert!(
                error.contains(expected) && !error.is_empty(),
                "{body}: {error}"
            );
        }
        let twice = r#"{"messages": [], "model": "a", "model": "b"}"#;
        let error = serde_json::from_str::<ChatRequest>(twice)
            .err()
            .map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.starts_with("duplicate field `model`")));
    }
}
