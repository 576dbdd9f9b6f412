//! OpenAI and any OpenAI-compatible server (vLLM, llama.cpp, Groq, OpenRouter, ...).

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use serde::Serialize;

use super::http::{HttpClient, UpstreamRequest, UpstreamResponse, read_body, send};
use super::sse::SseDecoder;
use super::{ChunkStream, Endpoint, Provider, ProviderError, StreamItem, UpstreamCall};
use crate::wire::answer::ChatAnswer;
use crate::wire::openai::{ChatRequest, StreamOptions, Usage};

pub struct OpenAiProvider {
    http: HttpClient,
    /// Real OpenAI always supports `stream_options`; unknown compatible servers may not.
    inject_stream_usage: bool,
}

/// The upstream body: the client's request with the resolved model and stream flags.
#[derive(Serialize)]
struct UpstreamBody<'a> {
    model: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<&'a StreamOptions>,
    #[serde(flatten)]
    request: &'a ChatRequest,
}

impl UpstreamBody<'_> {
    /// The client's body as sent, with the gateway's members in front (see `wire::raw_json`).
    fn as_sent(&self) -> Option<Vec<u8>> {
        let mut head = Vec::with_capacity(96);
        head.extend_from_slice(b"\"model\":");
        serde_json::to_writer(&mut head, self.model).ok()?;
        if self.stream {
            head.extend_from_slice(b",\"stream\":true");
        }
        if let Some(options) = self.stream_options {
            head.extend_from_slice(b",\"stream_options\":");
            serde_json::to_writer(&mut head, options).ok()?;
        }
        self.request.source_with(&head)
    }
}

const WITH_USAGE: StreamOptions = StreamOptions {
    include_usage: true,
};

impl OpenAiProvider {
    pub fn new(http: HttpClient, inject_stream_usage: bool) -> Self {
        Self {
            http,
            inject_stream_usage,
        }
    }

    fn post(
        &self,
        call: &UpstreamCall<'_>,
        stream: bool,
        stream_options: Option<&StreamOptions>,
    ) -> UpstreamRequest<'_> {
        let body = UpstreamBody {
            model: call.model,
            stream,
            stream_options,
            request: call.request,
        };
        let builder = self.http.post(call.endpoint, super::pool::CHAT_PATH);
        let mut builder = match body.as_sent() {
            Some(json) => builder.json_bytes(json),
            None => builder.json(&body),
        };
        if let Some(key) = &call.endpoint.api_key {
            builder = builder.bearer_auth(key);
        }
        builder
    }
}

impl Provider for OpenAiProvider {
    fn chat<'a>(
        &'a self,
        call: UpstreamCall<'a>,
    ) -> BoxFuture<'a, Result<ChatAnswer, ProviderError>> {
        async move {
            let response = send(
                self.post(&call, false, None),
                call.endpoint.api_key.as_deref(),
            )
            .await?;
            ChatAnswer::passthrough(read_body(response).await?)
                .map_err(|e| ProviderError::InvalidResponse(e.to_string()))
        }
        .boxed()
    }

    fn chat_stream<'a>(
        &'a self,
        call: UpstreamCall<'a>,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>> {
        async move {
            let client_wants_usage = call.request.wants_stream_usage();
            let inject = self.inject_stream_usage && call.want_stream_usage && !client_wants_usage;
            let options = if inject {
                Some(&WITH_USAGE)
            } else {
                call.request.stream_options.as_ref()
            };
            let response = send(
                self.post(&call, true, options),
                call.endpoint.api_key.as_deref(),
            )
            .await?;
            Ok(passthrough_stream(response, inject))
        }
        .boxed()
    }

    fn health_check<'a>(
        &'a self,
        endpoint: &'a Endpoint,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        async move {
            let mut builder = self.http.get(endpoint, "/models");
            if let Some(key) = &endpoint.api_key {
                builder = builder.bearer_auth(key);
            }
            send(builder, endpoint.api_key.as_deref()).await.map(drop)
        }
        .boxed()
    }
}

/// Forwards each upstream `data:` payload as is (no re-serialisation), noting usage, and
/// dropping the usage-only chunk when the gateway asked for it on its own behalf.
///
/// A stream ends cleanly at `data: [DONE]`. A body that ends without it (a close-delimited
/// upstream that died, a proxy that cut it) is broken unless a chunk already carried a
/// `finish_reason` (some compatible servers omit `[DONE]`), and an event cut off at the end
/// is broken too: the client gets an error event, never a truncated answer passed as whole
/// (nor is it cached or counted as the provider's success).
fn passthrough_stream(response: UpstreamResponse, hide_usage_chunk: bool) -> ChunkStream {
    let state = (response.bytes_stream(), SseDecoder::default(), false, false);
    futures_util::stream::unfold(
        state,
        move |(mut body, mut decoder, mut done, mut finished)| async move {
            loop {
                if done {
                    return None;
                }
                if let Some(event) = decoder.next_event() {
                    if event.data == "[DONE]" {
                        return None;
                    }
                    finished |= has_finish_reason(&event.data);
                    let usage = extract_usage(&event.data);
                    if hide_usage_chunk && usage.is_some() && is_usage_only(&event.data) {
                        // Keep the usage for accounting, without showing the chunk to the client.
                        let item = StreamItem {
                            data: Bytes::new(),
                            usage,
                        };
                        return Some((Ok(item), (body, decoder, done, finished)));
                    }
                    if let Some(message) = upstream_stream_error(&event.data) {
                        done = true;
                        return Some((
                            Err(ProviderError::StreamBroken(message)),
                            (body, decoder, done, finished),
                        ));
                    }
                    let item = StreamItem {
                        data: Bytes::from(event.data),
                        usage,
                    };
                    return Some((Ok(item), (body, decoder, done, finished)));
                }
                match body.next().await {
                    Some(Ok(chunk)) => {
                        if let Err(e) = decoder.push(&chunk) {
                            done = true;
                            return Some((Err(e), (body, decoder, done, finished)));
                        }
                    }
                    Some(Err(e)) => {
                        done = true;
                        return Some((Err(e), (body, decoder, done, finished)));
                    }
                    None => {
                        done = true;
                        let ended = match decoder.finish() {
                            Some(event) if event.data == "[DONE]" => return None,
                            Some(event) if !is_json(&event.data) => {
                                Err("the stream ended inside an event")
                            }
                            Some(event) if finished || has_finish_reason(&event.data) => {
                                let usage = extract_usage(&event.data);
                                let data = Bytes::from(event.data);
                                Ok(Some(StreamItem { data, usage }))
                            }
                            Some(_) => Err("the stream ended before [DONE]"),
                            None if finished => Ok(None),
                            None => Err("the stream ended before [DONE]"),
                        };
                        return match ended {
                            Ok(last) => {
                                last.map(|item| (Ok(item), (body, decoder, done, finished)))
                            }
                            Err(why) => Some((
                                Err(ProviderError::StreamBroken(why.into())),
                                (body, decoder, done, finished),
                            )),
                        };
                    }
                }
            }
        },
    )
    .boxed()
}

/// Whether a chunk says a choice finished (`"finish_reason": "…"`, not `null`).
fn has_finish_reason(data: &str) -> bool {
    const KEY: &str = "\"finish_reason\"";
    data.match_indices(KEY).any(|(at, _)| {
        let rest = data[at + KEY.len()..].trim_start();
        rest.strip_prefix(':')
            .is_some_and(|value| value.trim_start().starts_with('"'))
    })
}

fn is_json(data: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(data).is_ok()
}

fn extract_usage(data: &str) -> Option<Usage> {
    if !data.contains("\"usage\"") {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct WithUsage {
        usage: Option<Usage>,
    }
    serde_json::from_str::<WithUsage>(data)
        .ok()
        .and_then(|w| w.usage)
}

fn is_usage_only(data: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Choices {
        #[serde(default)]
        choices: Vec<serde_json::Value>,
    }
    serde_json::from_str::<Choices>(data)
        .map(|c| c.choices.is_empty())
        .unwrap_or(false)
}

/// OpenAI-compatible servers report mid-stream failures as `data: {"error": ...}`.
fn upstream_stream_error(data: &str) -> Option<String> {
    if !data.starts_with("{\"error\"") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(data).ok()?;
    let message = value
        .pointer("/error/message")
        .and_then(|m| m.as_str())
        .unwrap_or("upstream stream error");
    Some(super::redact::redact(message, &[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finish_reason_is_seen_in_any_spacing_and_null_is_not_one() {
        for finished in [
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices": [{"delta": {}, "finish_reason": "length"}]}"#,
            r#"{"choices":[{"finish_reason":null},{"finish_reason" : "stop"}]}"#,
        ] {
            assert!(has_finish_reason(finished), "{finished}");
        }
        for open in [
            r#"{"choices":[{"delta":{"content":"hi"},"finish_reason":null}]}"#,
            r#"{"choices":[{"delta":{"content":"\"finish_reason\""}}]}"#,
            r#"{"choices":[{"delta":{"content":"hi"}}]}"#,
        ] {
            assert!(!has_finish_reason(open), "{open}");
        }
    }
}
