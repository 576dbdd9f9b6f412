//! OpenAI wire format: `POST /v1/chat/completions` (whole and SSE-streamed) and `GET /v1/models`.

use std::borrow::Cow;

use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::clock::unix_seconds;
use crate::content::{ChatMessage, last_user_text, prompt_tokens};
use crate::reply::{count_tokens, piece_slices, reply_text};
use crate::server::ApiRequest;
use crate::stream::{EVENT_STREAM, Reply, sse_data};

const MODELS: [&str; 2] = ["mock-1", "mock-2"];
const MODELS_CREATED: u64 = 1_700_000_000;

#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    messages: Option<Vec<ChatMessage<'a>>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<()>,
}

#[derive(Serialize, Clone, Copy)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Serialize)]
struct ModelList {
    object: &'static str,
    data: [Model; MODELS.len()],
}

#[derive(Serialize)]
struct Model {
    id: &'static str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

/// `POST /v1/chat/completions`.
pub(crate) fn chat_completions(request: &ApiRequest, id: u64) -> Reply {
    let chat: ChatRequest<'_> = match serde_json::from_slice(&request.body) {
        Ok(chat) => chat,
        Err(error) => {
            let message = format!("We could not parse the JSON body of your request: {error}");
            return invalid_request(&message, None, None);
        }
    };
    let Some(model) = chat.model.as_deref() else {
        return invalid_request("you must provide a model parameter", Some("model"), None);
    };
    let Some(messages) = chat.messages.as_deref() else {
        return invalid_request(
            "Missing required parameter: 'messages'.",
            Some("messages"),
            Some("missing_required_parameter"),
        );
    };
    if messages.is_empty() {
        return invalid_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            Some("messages"),
            Some("empty_array"),
        );
    }

    let text = reply_text(last_user_text(messages));
    let prompt_tokens = prompt_tokens(None, messages);
    let completion_tokens = count_tokens(&text);
    let usage = Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens.saturating_add(completion_tokens),
    };
    let id = format!("chatcmpl-mock-{id}");
    let created = unix_seconds();

    if chat.stream != Some(true) {
        return Reply::ok(&Completion {
            id: &id,
            object: "chat.completion",
            created,
            model,
            choices: [Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content: &text,
                    refusal: None,
                },
                logprobs: None,
                finish_reason: "stop",
            }],
            usage,
        });
    }

    let include_usage = chat
        .stream_options
        .and_then(|options| options.include_usage)
        .unwrap_or(false);
    let chunk = |delta: Delta<'_>, finish_reason: Option<&'static str>| {
        sse_data(&Chunk {
            id: &id,
            object: "chat.completion.chunk",
            created,
            model,
            choices: &[ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            usage: None,
        })
    };
    let mut frames = Vec::with_capacity(text.len() / 4 + 5);
    frames.push(chunk(
        Delta {
            role: Some("assistant"),
            content: Some(""),
        },
        None,
    ));
    frames.extend(piece_slices(&text).map(|piece| {
        chunk(
            Delta {
                role: None,
                content: Some(piece),
            },
            None,
        )
    }));
    frames.push(chunk(Delta::default(), Some("stop")));
    if include_usage {
        frames.push(sse_data(&Chunk {
            id: &id,
            object: "chat.completion.chunk",
            created,
            model,
            choices: &[],
            usage: Some(usage),
        }));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Reply::Frames {
        content_type: EVENT_STREAM,
        frames,
    }
}

/// `GET /v1/models`.
pub(crate) fn models() -> Reply {
    Reply::ok(&ModelList {
        object: "list",
        data: MODELS.map(|id| Model {
            id,
            object: "model",
            created: MODELS_CREATED,
            owned_by: "hapax-mock",
        }),
    })
}

/// An error in OpenAI's shape, typed the way OpenAI types errors of that status.
pub(crate) fn error(status: StatusCode, message: &str) -> Reply {
    let (kind, code) = match status.as_u16() {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        404 => ("invalid_request_error", Some("not_found")),
        429 => ("requests", Some("rate_limit_exceeded")),
        500..=599 => ("server_error", None),
        _ => ("invalid_request_error", None),
    };
    error_reply(status, message, kind, None, code)
}

fn invalid_request(message: &str, param: Option<&str>, code: Option<&str>) -> Reply {
    error_reply(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        param,
        code,
    )
}

fn error_reply(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Reply {
    Reply::json(
        status,
        &ErrorBody {
            error: ErrorDetail {
                message,
                kind,
                param,
                code,
            },
        },
    )
}
