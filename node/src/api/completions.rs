//! `POST /v1/completions`: Hapax's body (`messages`, or `input` with an optional
//! `function_description`) answered as `{content, model, provider, usage, request_id}`, and
//! OpenAI's legacy body (`prompt`) answered in the `text_completion` format.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::body::{parse_json, read_json_body};
use super::exec::{self, Settlement};
use super::validate::validate_chat;
use crate::app::App;
use crate::auth::Caller;
use crate::cache::{CachePlan, CachedAnswer};
use crate::error::ApiError;
use crate::providers::StreamItem;
use crate::ratelimit::RateLimitHeaders;
use crate::server::scope::current_request_id;
use crate::wire::openai::{
    ChatChunk, ChatMessage, ChatRequest, ChatResponse, Role, StopSequences, Usage, unix_now,
};

pub const ENDPOINT: &str = "/v1/completions";

/// Hapax's own completion body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HapaxCompletionRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    function_description: Option<String>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f64>,
}

/// OpenAI's legacy completion body.
#[derive(Deserialize)]
struct LegacyCompletionRequest {
    #[serde(default)]
    model: Option<String>,
    prompt: Prompt,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    stop: Option<StopSequences>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    n: Option<u32>,
    /// The rest: forwarded as the chat endpoint forwards unknown members, except what a chat
    /// model cannot do ([`UNSERVABLE`]).
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// A legacy member that changes what the answer is and has no chat counterpart.
struct Unservable {
    member: &'static str,
    why: &'static str,
    /// The value that asks for nothing (accepted, and dropped).
    asks_nothing: fn(&Value) -> bool,
}

/// Refused by name rather than answered as if the member had not been sent.
const UNSERVABLE: [Unservable; 4] = [
    Unservable {
        member: "echo",
        why: "the prompt cannot be echoed back",
        asks_nothing: |v| v == &Value::Bool(false),
    },
    Unservable {
        member: "logprobs",
        why: "chat models return no legacy log probabilities",
        asks_nothing: |_| false,
    },
    Unservable {
        member: "suffix",
        why: "chat models do not insert between a prefix and a suffix",
        asks_nothing: |v| v.as_str() == Some(""),
    },
    Unservable {
        member: "best_of",
        why: "candidates are not generated and ranked server-side",
        asks_nothing: |v| v.as_u64() == Some(1),
    },
];

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    One(String),
    Many(Vec<String>),
}

#[derive(Serialize)]
struct HapaxCompletionResponse<'a> {
    content: String,
    model: &'a str,
    provider: &'a str,
    usage: Option<Usage>,
    request_id: &'a str,
}

pub async fn completions(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Arc<Caller>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_json_body(&app, &headers, body).await?;
    match parse_completion_body(&bytes)? {
        CompletionBody::Hapax(request) => hapax_completion(app, caller, request, &headers).await,
        CompletionBody::Legacy(request) => legacy_completion(app, caller, request, &headers).await,
    }
}

/// A `/v1/completions` body, by form, as the chat request it stands for (not yet validated).
pub enum CompletionBody {
    Hapax(ChatRequest),
    Legacy(ChatRequest),
}

/// Parses either body form: a top-level `prompt` means OpenAI's legacy form.
pub fn parse_completion_body(bytes: &[u8]) -> Result<CompletionBody, ApiError> {
    let value: Value = parse_json(bytes)?;
    if value.as_object().is_some_and(|o| o.contains_key("prompt")) {
        let body: LegacyCompletionRequest = parse_json(bytes)?;
        return legacy_chat_request(body).map(CompletionBody::Legacy);
    }
    let body: HapaxCompletionRequest = parse_json(bytes)?;
    hapax_chat_request(body).map(CompletionBody::Hapax)
}

fn hapax_chat_request(body: HapaxCompletionRequest) -> Result<ChatRequest, ApiError> {
    let messages = match (body.messages, body.input) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "send either `messages` or `input`, not both",
            ));
        }
        (Some(messages), None) => messages,
        (None, Some(input)) => {
            let mut messages = Vec::with_capacity(2);
            if let Some(description) = body.function_description {
                messages.push(ChatMessage::new(Role::System, description));
            }
            messages.push(ChatMessage::new(Role::User, input));
            messages
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "the body needs `messages` (chat form), `input` (Hapax form) or `prompt` (OpenAI legacy form)",
            ));
        }
    };
    Ok(ChatRequest {
        model: body.model,
        messages,
        max_tokens: body.max_tokens,
        temperature: body.temperature,
        ..Default::default()
    })
}

async fn hapax_completion(
    app: Arc<App>,
    caller: Arc<Caller>,
    request: ChatRequest,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let plain = run_plain(&app, &caller, request, headers).await?;
    let served = &plain.served;
    let completion = decoded(served)?;
    let request_id = current_request_id();
    let payload = HapaxCompletionResponse {
        content: completion.first_text(),
        model: &completion.model,
        provider: &served.served.provider,
        usage: completion.usage,
        request_id: &request_id,
    };
    let response = Json(payload).into_response();
    plain.record();
    Ok(response)
}

/// A non-streamed completion, before the endpoint reshapes it.
struct PlainServed {
    served: exec::ChatServed,
    /// Another identical request's answer, shared.
    shared: bool,
    cache: CachePlan,
    /// What the admission left, for the answer's `X-RateLimit-*` headers.
    limits: Option<RateLimitHeaders>,
}

impl PlainServed {
    /// Records who served the answer, the rate-limit figures and the cache's verdict, for the
    /// answer's headers and its log line.
    fn record(mut self) {
        exec::record_served(self.served.served, self.limits, self.shared, false);
        self.cache.mark();
    }
}

async fn run_plain(
    app: &Arc<App>,
    caller: &Arc<Caller>,
    mut request: ChatRequest,
    headers: &HeaderMap,
) -> Result<PlainServed, ApiError> {
    validate_chat(&request)?;
    caller.check_model(request.model.as_deref())?;
    app.apply_system_prompt(&mut request);
    let admission = exec::admit(app, caller, ENDPOINT, &request).await?;
    let mut settlement = Settlement::new(app, admission);
    let limits = settlement.headers();
    let mut cache = app.cache.plan(caller, ENDPOINT, &request, headers);
    if let Some(CachedAnswer::Complete(served)) = cache.lookup().await {
        return Ok(PlainServed {
            served,
            shared: false,
            cache,
            limits,
        });
    }
    let (served, shared) = exec::complete(app, caller, request, ENDPOINT, headers).await?;
    settlement.tokens = served.answer.usage.map(|u| u.total_tokens);
    settlement.served = true;
    if !shared {
        cache.store(&served).await;
    }
    Ok(PlainServed {
        served,
        shared,
        cache,
        limits,
    })
}

/// The completion decoded, to be reshaped; an upstream answer that only looked like one is
/// the provider's fault (502).
fn decoded(served: &exec::ChatServed) -> Result<ChatResponse, ApiError> {
    served.answer.decode().map_err(|e| ApiError::Upstream {
        status: StatusCode::BAD_GATEWAY,
        message: format!(
            "provider {} sent a response the gateway could not read: {e}",
            served.served.provider
        ),
        retry_after: None,
    })
}

fn legacy_chat_request(body: LegacyCompletionRequest) -> Result<ChatRequest, ApiError> {
    let prompt = match body.prompt {
        Prompt::One(p) => p,
        Prompt::Many(mut many) if many.len() == 1 => many.remove(0),
        Prompt::Many(_) => {
            return Err(ApiError::bad_request(
                "`prompt` as an array must hold exactly one string",
            ));
        }
    };
    let mut extra = body.extra;
    for Unservable {
        member,
        why,
        asks_nothing,
    } in UNSERVABLE
    {
        match extra.remove(member) {
            None | Some(Value::Null) => {}
            Some(value) if asks_nothing(&value) => {}
            Some(_) => {
                return Err(ApiError::bad_request(format!(
                    "`{member}` is not supported on /v1/completions: the gateway serves it \
                     through chat models, and {why}"
                )));
            }
        }
    }
    // Members the translation sets itself would otherwise go upstream twice.
    if extra.contains_key("messages") {
        return Err(ApiError::bad_request(
            "send either `prompt` (legacy form) or `messages` (chat form), not both",
        ));
    }
    if let Some(member) = ["tools", "tool_choice", "functions", "function_call"]
        .into_iter()
        .find(|member| extra.contains_key(*member))
    {
        return Err(ApiError::bad_request(format!(
            "`{member}` is not supported on /v1/completions: a text completion cannot carry \
             tool calls (use /v1/chat/completions)"
        )));
    }
    let max_completion_tokens = match extra.remove("max_completion_tokens") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_u64().ok_or_else(|| {
            ApiError::bad_request("`max_completion_tokens` must be a non-negative integer")
        })?),
    };
    let stream_options = match extra.remove("stream_options") {
        None | Some(Value::Null) => None,
        Some(value) => Some(serde_json::from_value(value).map_err(|_| {
            ApiError::bad_request(
                "`stream_options` must be an object such as {\"include_usage\": true}",
            )
        })?),
    };
    Ok(ChatRequest {
        model: body.model,
        messages: vec![ChatMessage::new(Role::User, prompt)],
        stream: Some(body.stream.unwrap_or(false)),
        stream_options,
        max_completion_tokens,
        extra,
        max_tokens: body.max_tokens,
        temperature: body.temperature,
        top_p: body.top_p,
        stop: body.stop,
        seed: body.seed,
        n: body.n,
        ..Default::default()
    })
}

async fn legacy_completion(
    app: Arc<App>,
    caller: Arc<Caller>,
    request: ChatRequest,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if !request.is_stream() {
        let plain = run_plain(&app, &caller, request, headers).await?;
        let r = &decoded(&plain.served)?;
        let choices: Vec<Value> = r
            .choices
            .iter()
            .map(|c| serde_json::json!({"text": c.message.content.clone().unwrap_or_default(), "index": c.index, "logprobs": null, "finish_reason": c.finish_reason}))
            .collect();
        let payload = serde_json::json!({"id": r.id.replace("chatcmpl", "cmpl"), "object": "text_completion", "created": r.created, "model": r.model, "choices": choices, "usage": r.usage});
        plain.record();
        return Ok(Json(payload).into_response());
    }
    let mut request = request;
    validate_chat(&request)?;
    caller.check_model(request.model.as_deref())?;
    app.apply_system_prompt(&mut request);
    let admission = exec::admit(&app, &caller, ENDPOINT, &request).await?;
    let settlement = Settlement::new(&app, admission);
    let mut cache = app.cache.plan(&caller, ENDPOINT, &request, headers);
    let hit = cache.lookup().await;
    exec::stream_response(
        &app,
        &caller,
        &request,
        settlement,
        &mut cache,
        hit,
        to_text_completion_chunk,
    )
    .await
}

/// A chat chunk as a legacy `text_completion` chunk; role-only chunks vanish, and the usage
/// chunk (`stream_options.include_usage`) keeps its shape: no choices, the usage.
fn to_text_completion_chunk(item: &StreamItem) -> Option<Bytes> {
    let chunk: ChatChunk = serde_json::from_slice(&item.data).ok()?;
    let (choices, usage) = match chunk.choices.first() {
        None => (Value::Array(Vec::new()), Some(chunk.usage?)),
        Some(choice) => {
            let text = choice.delta.content.clone().unwrap_or_default();
            if text.is_empty() && choice.finish_reason.is_none() {
                return None;
            }
            let choice = serde_json::json!({"text": text, "index": choice.index, "logprobs": null, "finish_reason": choice.finish_reason});
            (Value::Array(vec![choice]), None)
        }
    };
    let created = if chunk.created == 0 {
        unix_now()
    } else {
        chunk.created
    };
    let mut out = serde_json::json!({
        "id": chunk.id.replace("chatcmpl", "cmpl"),
        "object": "text_completion",
        "created": created,
        "model": chunk.model,
        "choices": choices,
    });
    if let Some(usage) = usage {
        out["usage"] = serde_json::json!(usage);
    }
    serde_json::to_vec(&out).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy(body: &str) -> Result<ChatRequest, ApiError> {
        match parse_completion_body(body.as_bytes())? {
            CompletionBody::Legacy(request) => Ok(request),
            CompletionBody::Hapax(_) => panic!("not read as the legacy form: {body}"),
        }
    }

    #[test]
    fn a_legacy_body_goes_upstream_with_each_member_once() {
        // Found by the completion_request fuzz target: `messages` beside `prompt` was
        // forwarded and went upstream twice.
        let refused = legacy(r#"{"prompt":"p","messages":1}"#).err();
        assert!(refused.is_some_and(|e| e.to_string().contains("not both")));
        for member in ["tools", "tool_choice", "functions", "function_call"] {
            let body = format!(r#"{{"prompt":"p","{member}":[]}}"#);
            let refused = legacy(&body).err();
            assert!(
                refused.is_some_and(|e| e.to_string().contains(member)),
                "{member}"
            );
        }
        let request = legacy(
            r#"{"prompt":"p","max_completion_tokens":7,"user":"u","stream_options":null,"n":1}"#,
        )
        .ok();
        let body = request.as_ref().and_then(|r| serde_json::to_vec(r).ok());
        let sent: Option<Value> = body.as_deref().and_then(|b| serde_json::from_slice(b).ok());
        let sent = sent.unwrap_or_default();
        assert_eq!(sent["max_completion_tokens"], 7, "{sent}");
        assert_eq!(sent["user"], "u", "{sent}");
        let reread = body
            .as_deref()
            .map(crate::api::body::parse_json::<ChatRequest>);
        assert!(reread.is_some_and(|r| r.is_ok()), "{sent}");
    }
}
