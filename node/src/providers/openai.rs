//! OpenAI and any OpenAI-compatible server (vLLM, llama.cpp, Groq, OpenRouter, ...).

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Stream, StreamExt};
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
        self.request.source_with(|head| {
            head.extend_from_slice(b"\"model\":");
            serde_json::to_writer(&mut *head, self.model).ok()?;
            if self.stream {
                head.extend_from_slice(b",\"stream\":true");
            }
            if let Some(options) = self.stream_options {
                head.extend_from_slice(b",\"stream_options\":");
                serde_json::to_writer(&mut *head, options).ok()?;
            }
            Some(())
        })
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
            let choices = FinishedChoices::new(call.request.n);
            Ok(passthrough_stream(response, inject, choices))
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
/// `finish_reason` for every choice asked for (some compatible servers omit `[DONE]`), and an
/// event cut off at the end is broken too: the client gets an error event, never a truncated
/// answer passed as whole (nor is it cached or counted as the provider's success).
fn passthrough_stream(
    response: UpstreamResponse,
    hide_usage_chunk: bool,
    choices: FinishedChoices,
) -> ChunkStream {
    passthrough_frames(response.bytes_stream(), hide_usage_chunk, choices)
}

fn passthrough_frames(
    body: impl Stream<Item = Result<Bytes, ProviderError>> + Send + Unpin + 'static,
    hide_usage_chunk: bool,
    choices: FinishedChoices,
) -> ChunkStream {
    let state = (body, SseDecoder::default(), false, choices);
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
                    finished.note(&event.data);
                    let item = event_item(event.data, hide_usage_chunk);
                    done = item.is_err();
                    return Some((item, (body, decoder, done, finished)));
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
                        // The body ended without `[DONE]`: whole only if every choice
                        // finished, the last event (cut short of its blank line) included.
                        let ended = match decoder.finish() {
                            Some(event) if event.data == "[DONE]" => return None,
                            Some(event) if !is_json(&event.data) => {
                                Err(broken(ENDED_EARLY_INSIDE_AN_EVENT))
                            }
                            Some(event) => {
                                finished.note(&event.data);
                                match event_item(event.data, hide_usage_chunk) {
                                    Ok(item) if finished.all() => Ok(Some(item)),
                                    Ok(_) => Err(finished.ended_early()),
                                    Err(error) => Err(error),
                                }
                            }
                            None if finished.all() => Ok(None),
                            None => Err(finished.ended_early()),
                        };
                        return match ended {
                            Ok(last) => {
                                last.map(|item| (Ok(item), (body, decoder, done, finished)))
                            }
                            Err(error) => Some((Err(error), (body, decoder, done, finished))),
                        };
                    }
                }
            }
        },
    )
    .boxed()
}

const ENDED_EARLY: &str = "the stream ended before [DONE]";
const ENDED_EARLY_INSIDE_AN_EVENT: &str = "the stream ended inside an event";

fn broken(why: &str) -> ProviderError {
    ProviderError::StreamBroken(why.into())
}

/// One upstream event as the client's chunk: the gateway's own usage-only chunk hidden (its
/// usage kept for accounting), an upstream error event turned into the stream's error.
fn event_item(data: String, hide_usage_chunk: bool) -> Result<StreamItem, ProviderError> {
    let usage = extract_usage(&data);
    if hide_usage_chunk && usage.is_some() && is_usage_only(&data) {
        return Ok(StreamItem {
            data: Bytes::new(),
            usage,
        });
    }
    if let Some(message) = upstream_stream_error(&data) {
        return Err(ProviderError::StreamBroken(message));
    }
    Ok(StreamItem {
        data: Bytes::from(data),
        usage,
    })
}

/// Which of the choices asked for (`n`) have said they finished: a stream that ends without
/// `[DONE]` is whole only once each has, not when the first of several does.
#[derive(Debug)]
struct FinishedChoices {
    expected: u32,
    /// Bit `i`: choice `i` finished (`n` is at most 16, by validation).
    finished: u64,
}

impl FinishedChoices {
    fn new(n: Option<u32>) -> Self {
        Self {
            expected: n.unwrap_or(1).clamp(1, 64),
            finished: 0,
        }
    }

    /// Notes the choices a chunk finishes (decoded only when it names a finish reason). A
    /// choice without an `index` is choice 0, as with one choice; an index outside the
    /// choices asked for counts for none. A chunk that does not decode counts for none
    /// either: at worst a whole stream is called broken, never a broken one whole.
    fn note(&mut self, data: &str) {
        #[derive(serde::Deserialize)]
        struct Chunk {
            #[serde(default)]
            choices: Vec<Choice>,
        }
        #[derive(serde::Deserialize)]
        struct Choice {
            #[serde(default)]
            index: u32,
            finish_reason: Option<serde::de::IgnoredAny>,
        }
        if !has_finish_reason(data) {
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Chunk>(data) else {
            return;
        };
        for choice in chunk.choices {
            if choice.finish_reason.is_some() && choice.index < self.expected {
                self.finished |= 1u64 << choice.index;
            }
        }
    }

    fn all(&self) -> bool {
        self.finished.count_ones() == self.expected
    }

    /// The error of a body that ended without `[DONE]` before every choice finished; with
    /// several choices, how many had.
    fn ended_early(&self) -> ProviderError {
        if self.expected == 1 {
            return broken(ENDED_EARLY);
        }
        let (done, asked) = (self.finished.count_ones(), self.expected);
        broken(&format!(
            "{ENDED_EARLY} ({done} of {asked} choices finished)"
        ))
    }
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

    #[test]
    fn a_stream_of_several_choices_is_whole_once_each_has_finished() {
        let mut one = FinishedChoices::new(None);
        assert!(!one.all());
        one.note(r#"{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#);
        assert!(!one.all());
        one.note(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#);
        assert!(one.all());

        let mut three = FinishedChoices::new(Some(3));
        three.note(r#"{"choices":[{"index":1,"delta":{},"finish_reason":"stop"}]}"#);
        three.note(r#"{"choices":[{"index":1,"delta":{},"finish_reason":"stop"}]}"#);
        assert!(
            !three.all(),
            "one choice finishing twice is still one: {three:?}"
        );
        three.note(r#"{"choices":[{"index":0,"finish_reason":"length"},{"index":2,"finish_reason":null}]}"#);
        assert!(!three.all(), "{three:?}");
        three.note(r#"{"choices":[{"index":2,"delta":{},"finish_reason":"stop"}]}"#);
        assert!(three.all(), "{three:?}");

        let mut two = FinishedChoices::new(Some(2));
        two.note(r#"{"choices":[{"index":0,"finish_reason":"stop"},{"index":5,"finish_reason":"stop"}]}"#);
        assert!(
            !two.all(),
            "an index past the choices asked for counts for none: {two:?}"
        );

        // `n: 0` is refused by validation; here it still asks for one choice.
        let mut zero = FinishedChoices::new(Some(0));
        zero.note(r#"{"choices":[{"finish_reason":"stop"}]}"#);
        assert!(zero.all(), "a choice without an index is choice 0");
    }

    /// What the client gets of an upstream body that ends (closes) without `[DONE]`: the
    /// chunks' data, then the error if the stream was broken.
    async fn ended_without_done(
        n: Option<u32>,
        events: &[&str],
        last_cut_short: bool,
        hide_usage_chunk: bool,
    ) -> (Vec<String>, Option<String>) {
        let frames: Vec<Result<Bytes, ProviderError>> = events
            .iter()
            .enumerate()
            .map(|(i, data)| {
                // Cut short: the body ended right after the last event's data line.
                let cut = last_cut_short && i + 1 == events.len();
                let end = if cut { "\n" } else { "\n\n" };
                Ok(Bytes::from(format!("data: {data}{end}")))
            })
            .collect();
        let mut stream = passthrough_frames(
            futures_util::stream::iter(frames),
            hide_usage_chunk,
            FinishedChoices::new(n),
        );
        let mut chunks = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(item) => chunks.push(String::from_utf8_lossy(&item.data).into_owned()),
                Err(error) => return (chunks, Some(error.to_string())),
            }
        }
        (chunks, None)
    }

    #[tokio::test]
    async fn a_stream_without_done_is_whole_only_when_every_choice_finished() {
        let open = |i: u32| {
            format!(
                r#"{{"choices":[{{"index":{i},"delta":{{"content":"a"}},"finish_reason":null}}]}}"#
            )
        };
        let stop = |i: u32| {
            format!(r#"{{"choices":[{{"index":{i},"delta":{{}},"finish_reason":"stop"}}]}}"#)
        };
        let (o0, o1, s0, s1) = (open(0), open(1), stop(0), stop(1));

        let (chunks, error) = ended_without_done(None, &[&o0, &s0], true, false).await;
        assert_eq!((chunks.len(), error), (2, None), "one choice, finished");

        for cut in [true, false] {
            let (chunks, error) = ended_without_done(Some(2), &[&o0, &o1, &s0], cut, false).await;
            let delivered = if cut { 2 } else { 3 };
            assert_eq!(
                chunks.len(),
                delivered,
                "choice 1 never finished (cut: {cut})"
            );
            let error = error.unwrap_or_default();
            assert!(
                error.contains("ended before [DONE] (1 of 2 choices finished)"),
                "{error}"
            );
        }

        let (chunks, error) = ended_without_done(Some(2), &[&o0, &o1, &s1, &s0], true, false).await;
        assert_eq!(
            (chunks.len(), error),
            (4, None),
            "both finished, choice 0 in the event the body ended on"
        );
    }

    #[tokio::test]
    async fn the_event_a_body_ends_on_is_checked_like_any_other() {
        let s0 = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        let usage =
            r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        let (chunks, error) = ended_without_done(None, &[s0, usage], true, true).await;
        assert_eq!(error, None);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[1], "", "the gateway's own usage chunk stays hidden");

        let failed = r#"{"error":{"message":"overloaded"}}"#;
        let (chunks, error) = ended_without_done(None, &[s0, failed], true, false).await;
        assert_eq!(chunks.len(), 1, "{chunks:?}");
        let error = error.unwrap_or_default();
        assert!(
            error.contains("overloaded"),
            "the upstream's error is the stream's: {error}"
        );
    }
}
