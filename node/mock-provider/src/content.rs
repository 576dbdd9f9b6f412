//! Chat messages as all three wire formats send them: a role plus `content` that is either a
//! string or an array of content parts (`[{"type":"text","text":"..."}]`).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, SeqAccess, Visitor};

/// One chat message; fields the mock does not need (names, tool calls, images) are skipped.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatMessage<'a> {
    #[serde(borrow)]
    pub role: Cow<'a, str>,
    #[serde(default, borrow)]
    pub content: MessageText<'a>,
}

/// The text of a `content` value: the string itself, or the text parts joined by newlines.
/// Non-text parts are ignored; `null` reads as empty text.
#[derive(Debug, Default)]
pub(crate) struct MessageText<'a>(pub Cow<'a, str>);

impl MessageText<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The text of the last message with role `user`, or `""` when there is none.
pub(crate) fn last_user_text<'m>(messages: &'m [ChatMessage<'_>]) -> &'m str {
    messages
        .iter()
        .rev()
        .find(|message| message.role == "user")
        .map_or("", |message| message.content.as_str())
}

/// Prompt token count: the crude word count summed over every message (and a system prompt).
pub(crate) fn prompt_tokens(system: Option<&str>, messages: &[ChatMessage<'_>]) -> u32 {
    let system = system.map_or(0, crate::reply::count_tokens);
    messages.iter().fold(system, |sum, message| {
        sum.saturating_add(crate::reply::count_tokens(message.content.as_str()))
    })
}

// === impl MessageText ===

impl<'de: 'a, 'a> Deserialize<'de> for MessageText<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MessageTextVisitor)
    }
}

struct MessageTextVisitor;

#[derive(Deserialize)]
struct ContentPart<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

impl<'de> Visitor<'de> for MessageTextVisitor {
    type Value = MessageText<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or an array of content parts")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(MessageText(Cow::Borrowed(text)))
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(MessageText(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Self::Value, E> {
        Ok(MessageText(Cow::Owned(text)))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(MessageText::default())
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(MessageText::default())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut parts: A) -> Result<Self::Value, A::Error> {
        let mut joined: Option<Cow<'de, str>> = None;
        while let Some(part) = parts.next_element::<ContentPart<'de>>()? {
            let Some(text) = part.text else { continue };
            if part.kind.as_deref().is_some_and(|kind| kind != "text") {
                continue;
            }
            joined = Some(match joined {
                None => text,
                Some(so_far) => {
                    let mut owned = so_far.into_owned();
                    owned.push('\n');
                    owned.push_str(&text);
                    Cow::Owned(owned)
                }
            });
        }
        Ok(MessageText(joined.unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn text_of(json: &str) -> String {
        let message: ChatMessage<'_> = serde_json::from_str(json).unwrap();
        message.content.as_str().to_owned()
    }

    #[test]
    fn reads_string_and_part_array_content() {
        assert_eq!(text_of(r#"{"role":"user","content":"hi"}"#), "hi");
        assert_eq!(text_of(r#"{"role":"user","content":"a\nb"}"#), "a\nb");
        assert_eq!(
            text_of(
                r#"{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"b"}]}"#
            ),
            "a\nb"
        );
        assert_eq!(text_of(r#"{"role":"assistant","content":null}"#), "");
        assert_eq!(text_of(r#"{"role":"assistant"}"#), "");
        assert!(serde_json::from_str::<ChatMessage<'_>>(r#"{"role":"user","content":5}"#).is_err());
    }
}
