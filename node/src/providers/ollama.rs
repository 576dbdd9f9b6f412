//! Ollama's native `/api/chat` (NDJSON streaming), translated to OpenAI's chat format.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::encoded;
use super::http::{HttpClient, UpstreamResponse, read_json, send};
use super::sse::NdjsonDecoder;
use super::{ChunkStream, Endpoint, Provider, ProviderError, StreamItem, UpstreamCall};
use crate::wire::answer::ChatAnswer;
use crate::wire::openai::{ChatChunk, ChatRequest, ChatResponse, Role, Usage, unix_now};

pub struct OllamaProvider {
    http: HttpClient,
}

#[derive(Serialize)]
struct OllamaRequest<'a> {
    model: &'a str,
    messages: Vec<OllamaMessage>,
    stream: bool,
    #[serde(skip_serializing_if = "Map::is_empty")]
    options: Map<String, Value>,
}

#[derive(Serialize)]
struct OllamaMessage {
    role: &'static str,
    content: String,
}

fn to_ollama_request<'a>(
    req: &ChatRequest,
    model: &'a str,
    stream: bool,
) -> Result<OllamaRequest<'a>, ProviderError> {
    if req.uses_tools() {
        return Err(ProviderError::Unsupported(
            "tool calls are not translated for ollama providers yet".into(),
        ));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        if m.content.has_non_text_parts() {
            return Err(ProviderError::Unsupported(
                "non-text content is not translated for ollama providers yet".into(),
            ));
        }
        let role = match m.role {
            Role::System | Role::Developer => "system",
            Role::User | Role::Function => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        };
        messages.push(OllamaMessage {
            role,
            content: m.content.to_text(),
        });
    }
    let mut options = Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            options.insert(key.to_owned(), v);
        }
    };
    put("temperature", req.temperature.map(Value::from));
    put("top_p", req.top_p.map(Value::from));
    put("num_predict", req.completion_limit().map(Value::from));
    put("seed", req.seed.map(Value::from));
    put("stop", req.stop.as_ref().map(|s| Value::from(s.to_vec())));
    Ok(OllamaRequest {
        model,
        messages,
        stream,
        options,
    })
}

#[derive(Deserialize)]
struct OllamaResponse {
    #[serde(default)]
    model: String,
    #[serde(default)]
    message: Option<OllamaReplyMessage>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: u64,
    #[serde(default)]
    eval_count: u64,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct OllamaReplyMessage {
    #[serde(default)]
    content: String,
}

fn finish_reason(done_reason: Option<&str>) -> &'static str {
    match done_reason {
        Some("length") => "length",
        _ => "stop",
    }
}

impl OllamaProvider {
    pub fn new(http: HttpClient) -> Self {
        Self { http }
    }
}

impl Provider for OllamaProvider {
    fn chat<'a>(
        &'a self,
        call: UpstreamCall<'a>,
    ) -> BoxFuture<'a, Result<ChatAnswer, ProviderError>> {
        async move {
            let body = to_ollama_request(call.request, call.model, false)?;
            let response: OllamaResponse = read_json(
                send(self.http.post(call.endpoint, "/api/chat").json(&body), None).await?,
            )
            .await?;
            if let Some(error) = response.error {
                return Err(ProviderError::InvalidResponse(error));
            }
            let text = response.message.map(|m| m.content).unwrap_or_default();
            let usage = Usage::new(response.prompt_eval_count, response.eval_count);
            let id = format!("chatcmpl-ollama-{}", unix_now());
            encoded(&ChatResponse::assistant(
                id,
                response.model,
                text,
                finish_reason(response.done_reason.as_deref()),
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
            let body = to_ollama_request(call.request, call.model, true)?;
            let response =
                send(self.http.post(call.endpoint, "/api/chat").json(&body), None).await?;
            Ok(translate_stream(
                response,
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
            send(self.http.get(endpoint, "/api/tags"), None)
                .await
                .map(drop)
        }
        .boxed()
    }
}

/// Translates one NDJSON line into OpenAI chunks; `Ok(None)` after the `done` line.
pub(crate) struct LineTranslator {
    id: String,
    created: u64,
    started: bool,
    include_usage: bool,
}

impl LineTranslator {
    pub(crate) fn new(include_usage: bool) -> Self {
        let created = unix_now();
        Self {
            id: format!("chatcmpl-ollama-{created}"),
            created,
            started: false,
            include_usage,
        }
    }

    pub(crate) fn translate(
        &mut self,
        line: &[u8],
    ) -> Result<(Vec<StreamItem>, bool), ProviderError> {
        let parsed: OllamaResponse = serde_json::from_slice(line)
            .map_err(|e| ProviderError::InvalidResponse(format!("ollama line: {e}")))?;
        if let Some(error) = parsed.error {
            return Err(ProviderError::StreamBroken(super::redact::redact(
                &error,
                &[],
            )));
        }
        let mut items = Vec::new();
        let text = parsed.message.map(|m| m.content).unwrap_or_default();
        let role = (!self.started).then_some("assistant");
        self.started = true;
        if !parsed.done {
            items.push(chunk(
                ChatChunk::delta(
                    &self.id,
                    &parsed.model,
                    self.created,
                    role,
                    Some(text),
                    None,
                ),
                None,
            )?);
            return Ok((items, false));
        }
        let usage = Usage::new(parsed.prompt_eval_count, parsed.eval_count);
        let content = (!text.is_empty() || role.is_some()).then_some(text);
        let finish = ChatChunk::delta(
            &self.id,
            &parsed.model,
            self.created,
            role,
            content,
            Some(finish_reason(parsed.done_reason.as_deref())),
        );
        if self.include_usage {
            items.push(chunk(finish, None)?);
            items.push(chunk(
                ChatChunk::usage_only(&self.id, &parsed.model, self.created, usage),
                Some(usage),
            )?);
        } else {
            items.push(chunk(finish, Some(usage))?);
        }
        Ok((items, true))
    }
}

fn chunk(chunk: ChatChunk, usage: Option<Usage>) -> Result<StreamItem, ProviderError> {
    let data =
        serde_json::to_vec(&chunk).map_err(|e| ProviderError::InvalidResponse(e.to_string()))?;
    Ok(StreamItem {
        data: Bytes::from(data),
        usage,
    })
}

fn translate_stream(response: UpstreamResponse, include_usage: bool) -> ChunkStream {
    let state = (
        response.bytes_stream(),
        NdjsonDecoder::default(),
        LineTranslator::new(include_usage),
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
                let line = match decoder.next_line() {
                    Some(line) => Some(line),
                    None => match body.next().await {
                        Some(Ok(bytes)) => {
                            if let Err(e) = decoder.push(&bytes) {
                                done = true;
                                return Some((Err(e), (body, decoder, translator, pending, done)));
                            }
                            continue;
                        }
                        Some(Err(e)) => {
                            done = true;
                            return Some((Err(e), (body, decoder, translator, pending, done)));
                        }
                        None => decoder.finish(),
                    },
                };
                let Some(line) = line else {
                    done = true;
                    let error =
                        ProviderError::StreamBroken("ollama stream ended before done".into());
                    return Some((Err(error), (body, decoder, translator, pending, done)));
                };
                match translator.translate(&line) {
                    Ok((items, finished)) => {
                        pending.extend(items);
                        done = finished;
                    }
                    Err(e) => {
                        done = true;
                        return Some((Err(e), (body, decoder, translator, pending, done)));
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

    #[test]
    fn ndjson_lines_translate_to_chunks_with_usage() {
        let mut t = LineTranslator::new(false);
        let (items, done) = t.translate(br#"{"model":"llama3","message":{"role":"assistant","content":"Hel"},"done":false}"#).unwrap();
        assert!(!done);
        let first: ChatChunk = serde_json::from_slice(&items[0].data).unwrap();
        assert_eq!(first.choices[0].delta.role.as_deref(), Some("assistant"));
        assert_eq!(first.choices[0].delta.content.as_deref(), Some("Hel"));
        let (items, done) = t.translate(br#"{"model":"llama3","message":{"role":"assistant","content":""},"done":true,"done_reason":"length","prompt_eval_count":4,"eval_count":2}"#).unwrap();
        assert!(done);
        let last: ChatChunk = serde_json::from_slice(&items[0].data).unwrap();
        assert_eq!(last.choices[0].finish_reason.as_deref(), Some("length"));
        assert_eq!(items[0].usage, Some(Usage::new(4, 2)));
        assert!(t.translate(br#"{"error":"model not found"}"#).is_err());
    }
}
