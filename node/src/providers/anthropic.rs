//! Anthropic Messages API, translated to and from OpenAI's chat format.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use http::HeaderName;

use super::encoded;
use super::http::{HttpClient, UpstreamRequest, UpstreamResponse, read_json, send};
use super::sse::SseDecoder;
use super::{ChunkStream, Endpoint, Provider, ProviderError, StreamItem, UpstreamCall};
use crate::wire::answer::ChatAnswer;
use crate::wire::openai::{ChatChunk, ChatRequest, ChatResponse, Role, Usage, unix_now};

const API_VERSION: &str = "2023-06-01";
const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

pub struct AnthropicProvider {
    http: HttpClient,
    default_max_tokens: u32,
}

#[derive(Serialize, Debug, PartialEq)]
pub(crate) struct MessagesRequest {
    model: String,
    max_tokens: u64,
    messages: Vec<AnthropicMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Serialize, Debug, PartialEq)]
struct AnthropicMessage {
    role: &'static str,
    content: String,
}

/// OpenAI request -> Anthropic request. System and developer messages become `system`;
/// consecutive same-role turns are merged, as Anthropic requires alternation.
pub(crate) fn to_messages_request(
    req: &ChatRequest,
    model: &str,
    default_max_tokens: u32,
    stream: bool,
) -> Result<MessagesRequest, ProviderError> {
    if req.uses_tools() {
        return Err(ProviderError::Unsupported(
            "tool calls are not translated for anthropic providers yet".into(),
        ));
    }
    if req.n.is_some_and(|n| n > 1) {
        return Err(ProviderError::Unsupported(
            "anthropic does not support n > 1".into(),
        ));
    }
    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<AnthropicMessage> = Vec::new();
    for message in &req.messages {
        if message.content.has_non_text_parts() {
            return Err(ProviderError::Unsupported(
                "non-text content is not translated for anthropic providers yet".into(),
            ));
        }
        let text = message.content.to_text();
        let role = match message.role {
            Role::System | Role::Developer => {
                system.push(text);
                continue;
            }
            Role::Assistant => "assistant",
            Role::User | Role::Tool | Role::Function => "user",
        };
        match messages.last_mut() {
            Some(last) if last.role == role => {
                last.content.push_str("\n\n");
                last.content.push_str(&text);
            }
            _ => messages.push(AnthropicMessage {
                role,
                content: text,
            }),
        }
    }
    Ok(MessagesRequest {
        model: model.to_owned(),
        max_tokens: req
            .completion_limit()
            .unwrap_or(u64::from(default_max_tokens)),
        messages,
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        temperature: req.temperature,
        top_p: req.top_p,
        stop_sequences: req.stop.as_ref().map(|s| s.to_vec()).unwrap_or_default(),
        stream,
    })
}

#[derive(Deserialize)]
struct MessagesResponse {
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<ContentBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: AnthropicUsage,
}

#[derive(Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

pub(crate) fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

impl AnthropicProvider {
    pub fn new(http: HttpClient, default_max_tokens: u32) -> Self {
        Self {
            http,
            default_max_tokens,
        }
    }

    fn authed<'c>(&self, builder: UpstreamRequest<'c>, endpoint: &Endpoint) -> UpstreamRequest<'c> {
        let builder = builder.header(ANTHROPIC_VERSION, API_VERSION);
        match &endpoint.api_key {
            Some(key) => builder.secret_header(X_API_KEY, key),
            None => builder,
        }
    }
}

impl Provider for AnthropicProvider {
    fn chat<'a>(
        &'a self,
        call: UpstreamCall<'a>,
    ) -> BoxFuture<'a, Result<ChatAnswer, ProviderError>> {
        async move {
            let body =
                to_messages_request(call.request, call.model, self.default_max_tokens, false)?;
            let builder = self.authed(
                self.http.post(call.endpoint, "/v1/messages").json(&body),
                call.endpoint,
            );
            let response: MessagesResponse =
                read_json(send(builder, call.endpoint.api_key.as_deref()).await?).await?;
            let text: String = response
                .content
                .iter()
                .filter(|b| b.kind == "text")
                .filter_map(|b| b.text.as_deref())
                .collect();
            let usage = Usage::new(response.usage.input_tokens, response.usage.output_tokens);
            encoded(&ChatResponse::assistant(
                response.id,
                response.model,
                text,
                finish_reason(response.stop_reason.as_deref()),
                usage,
            ))
        }
        .boxed()
    }

    fn chat_stream<'a>(
        &'a self,
        call: UpstreamCall<'a>,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>> {
        async move {
            let body =
                to_messages_request(call.request, call.model, self.default_max_tokens, true)?;
            let builder = self.authed(
                self.http.post(call.endpoint, "/v1/messages").json(&body),
                call.endpoint,
            );
            let response = send(builder, call.endpoint.api_key.as_deref()).await?;
            Ok(translate_stream(
                response,
                call.model.to_owned(),
                call.request.wants_stream_usage(),
            ))
        }
        .boxed()
    }

    fn health_check<'a>(
        &'a self,
        endpoint: &'a Endpoint,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        async move {
            let builder = self.authed(self.http.get(endpoint, "/v1/models"), endpoint);
            send(builder, endpoint.api_key.as_deref()).await.map(drop)
        }
        .boxed()
    }
}

/// Turns Anthropic's typed events into OpenAI chunks, one event at a time.
pub(crate) struct StreamTranslator {
    id: String,
    model: String,
    created: u64,
    input_tokens: u64,
    include_usage: bool,
    /// The role chunk of `message_start`, held until the answer's first content (or its
    /// end): until something is said, the stream is not committed, so an `error` event right
    /// after `message_start` (`overloaded_error`) still fails over to another provider.
    held: Option<StreamItem>,
}

impl StreamTranslator {
    pub(crate) fn new(model: String, include_usage: bool) -> Self {
        Self {
            id: String::from("chatcmpl-anthropic"),
            model,
            created: unix_now(),
            input_tokens: 0,
            include_usage,
            held: None,
        }
    }

    /// Items for one event; `Ok(None)` marks the end of the message.
    pub(crate) fn translate(
        &mut self,
        event: Option<&str>,
        data: &str,
    ) -> Result<Option<Vec<StreamItem>>, ProviderError> {
        let value: Value = serde_json::from_str(data)
            .map_err(|e| ProviderError::InvalidResponse(format!("anthropic event: {e}")))?;
        let kind = event
            .or_else(|| value.get("type").and_then(Value::as_str))
            .unwrap_or("");
        let mut items = Vec::new();
        match kind {
            "message_start" => {
                if let Some(id) = value.pointer("/message/id").and_then(Value::as_str) {
                    self.id = id.to_owned();
                }
                if let Some(model) = value.pointer("/message/model").and_then(Value::as_str) {
                    self.model = model.to_owned();
                }
                self.input_tokens = value
                    .pointer("/message/usage/input_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                self.held = Some(self.chunk(
                    ChatChunk::delta(
                        &self.id,
                        &self.model,
                        self.created,
                        Some("assistant"),
                        Some(String::new()),
                        None,
                    ),
                    None,
                )?);
            }
            "content_block_delta" => {
                if let Some(text) = value.pointer("/delta/text").and_then(Value::as_str) {
                    items.push(self.chunk(
                        ChatChunk::delta(
                            &self.id,
                            &self.model,
                            self.created,
                            None,
                            Some(text.to_owned()),
                            None,
                        ),
                        None,
                    )?);
                }
            }
            "message_delta" => {
                let stop = value.pointer("/delta/stop_reason").and_then(Value::as_str);
                let output = value
                    .pointer("/usage/output_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let usage = Usage::new(self.input_tokens, output);
                let finish = ChatChunk::delta(
                    &self.id,
                    &self.model,
                    self.created,
                    None,
                    None,
                    Some(finish_reason(stop)),
                );
                if self.include_usage {
                    items.push(self.chunk(finish, None)?);
                    items.push(self.chunk(
                        ChatChunk::usage_only(&self.id, &self.model, self.created, usage),
                        Some(usage),
                    )?);
                } else {
                    items.push(self.chunk(finish, Some(usage))?);
                }
            }
            "message_stop" => return Ok(None),
            "error" => {
                let message = value
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("anthropic stream error");
                return Err(ProviderError::StreamBroken(super::redact::redact(
                    message,
                    &[],
                )));
            }
            _ => {}
        }
        if !items.is_empty()
            && let Some(role) = self.held.take()
        {
            items.insert(0, role);
        }
        Ok(Some(items))
    }

    fn chunk(&self, chunk: ChatChunk, usage: Option<Usage>) -> Result<StreamItem, ProviderError> {
        let data = serde_json::to_vec(&chunk)
            .map_err(|e| ProviderError::InvalidResponse(e.to_string()))?;
        Ok(StreamItem {
            data: Bytes::from(data),
            usage,
        })
    }
}

fn translate_stream(response: UpstreamResponse, model: String, include_usage: bool) -> ChunkStream {
    let state = (
        response.bytes_stream(),
        SseDecoder::default(),
        StreamTranslator::new(model, include_usage),
        std::collections::VecDeque::new(),
        false,
    );
    futures_util::stream::unfold(
        state,
        |(mut body, mut decoder, mut translator, mut pending, mut done)| async move {
            loop {
                if let Some(item) = pending.pop_front() {
                    return Some((Ok(item), (body, decoder, translator, pending, done)));
                }
                if done {
                    return None;
                }
                if let Some(event) = decoder.next_event() {
                    match translator.translate(event.event.as_deref(), &event.data) {
                        Ok(Some(items)) => pending.extend(items),
                        Ok(None) => done = true,
                        Err(e) => {
                            done = true;
                            return Some((Err(e), (body, decoder, translator, pending, done)));
                        }
                    }
                    continue;
                }
                match body.next().await {
                    Some(Ok(chunk)) => {
                        if let Err(e) = decoder.push(&chunk) {
                            done = true;
                            return Some((Err(e), (body, decoder, translator, pending, done)));
                        }
                    }
                    Some(Err(e)) => {
                        done = true;
                        return Some((Err(e), (body, decoder, translator, pending, done)));
                    }
                    None => {
                        done = true;
                        // A last event whose blank line never came: a `message_stop` ends
                        // the stream cleanly, an `error` says why it broke.
                        let last = decoder
                            .finish()
                            .map(|event| translator.translate(event.event.as_deref(), &event.data));
                        let error = match last {
                            Some(Ok(None)) => continue,
                            Some(Err(error)) => error,
                            _ => ProviderError::StreamBroken(
                                "anthropic stream ended before message_stop".into(),
                            ),
                        };
                        return Some((Err(error), (body, decoder, translator, pending, done)));
                    }
                }
            }
        },
    )
    .boxed()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wire::openai::ChatMessage;

    #[test]
    fn tool_calling_in_any_form_is_not_translated_silently() {
        let user = ChatMessage::new(Role::User, "a");
        let mut called = ChatMessage::new(Role::Assistant, "");
        called
            .extra
            .insert("function_call".into(), serde_json::json!({}));
        let mut functions = ChatRequest {
            messages: vec![user.clone()],
            ..Default::default()
        };
        functions
            .extra
            .insert("functions".into(), serde_json::json!([]));
        let tools = ChatRequest {
            messages: vec![user.clone()],
            tools: Some(serde_json::json!([])),
            ..Default::default()
        };
        let turn = ChatRequest {
            messages: vec![user.clone(), called],
            ..Default::default()
        };
        for request in [functions, tools, turn] {
            let refused = to_messages_request(&request, "claude", 16, false);
            assert!(matches!(refused, Err(ProviderError::Unsupported(_))));
        }
        let plain = ChatRequest {
            messages: vec![user],
            ..Default::default()
        };
        assert!(to_messages_request(&plain, "claude", 16, false).is_ok());
    }

    #[test]
    fn system_messages_become_system_and_turns_merge() {
        let req = ChatRequest {
            messages: vec![
                ChatMessage::new(Role::System, "be brief"),
                ChatMessage::new(Role::User, "a"),
                ChatMessage::new(Role::User, "b"),
                ChatMessage::new(Role::Assistant, "c"),
            ],
            max_tokens: Some(7),
            ..Default::default()
        };
        let out = to_messages_request(&req, "claude", 4096, false).unwrap();
        assert_eq!(out.system.as_deref(), Some("be brief"));
        assert_eq!(out.max_tokens, 7);
        assert_eq!(out.messages.len(), 2);
        assert_eq!(out.messages[0].content, "a\n\nb");
        let default = to_messages_request(
            &ChatRequest {
                messages: vec![ChatMessage::new(Role::User, "x")],
                ..Default::default()
            },
            "m",
            99,
            false,
        )
        .unwrap();
        assert_eq!(default.max_tokens, 99);
    }

    #[test]
    fn stream_events_translate_to_openai_chunks() {
        let mut t = StreamTranslator::new("m".into(), true);
        let start = t.translate(Some("message_start"), r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-x","usage":{"input_tokens":5}}}"#).unwrap().unwrap();
        // The role chunk waits for the first content: nothing is committed before it.
        assert!(start.is_empty());
        let ping = t
            .translate(Some("ping"), r#"{"type":"ping"}"#)
            .unwrap()
            .unwrap();
        assert!(ping.is_empty());
        let delta = t.translate(Some("content_block_delta"), r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#).unwrap().unwrap();
        assert_eq!(delta.len(), 2, "the role chunk, then the content");
        assert!(
            std::str::from_utf8(&delta[0].data)
                .unwrap()
                .contains("\"role\":\"assistant\"")
        );
        let chunk: ChatChunk = serde_json::from_slice(&delta[1].data).unwrap();
        assert_eq!(chunk.choices[0].delta.content.as_deref(), Some("Hi"));
        assert_eq!(chunk.id, "msg_1");
        let end = t.translate(Some("message_delta"), r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":3}}"#).unwrap().unwrap();
        assert_eq!(end.len(), 2);
        assert_eq!(end[1].usage, Some(Usage::new(5, 3)));
        assert!(
            t.translate(Some("message_stop"), r#"{"type":"message_stop"}"#)
                .unwrap()
                .is_none()
        );
        assert!(
            t.translate(
                Some("error"),
                r#"{"type":"error","error":{"message":"overloaded"}}"#
            )
            .is_err()
        );
    }
}
