//! Ollama wire format: `POST /api/chat` (whole or NDJSON-streamed; streams by default) and
//! `GET /api/tags`.

use std::borrow::Cow;

use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::clock::rfc3339_now;
use crate::content::{ChatMessage, last_user_text, prompt_tokens};
use crate::reply::{count_tokens, piece_slices, reply_text};
use crate::server::ApiRequest;
use crate::stream::{NDJSON, Reply, ndjson_line};

const MODELS: [&str; 2] = ["mock-1", "mock-2"];
/// Pretend model load time, in nanoseconds.
const LOAD_NANOS: u64 = 1_000_000;
/// Pretend prompt evaluation time per token, in nanoseconds.
const PROMPT_TOKEN_NANOS: u64 = 100_000;
/// Pretend generation time per token, in nanoseconds.
const EVAL_TOKEN_NANOS: u64 = 1_000_000;

#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    messages: Option<Vec<ChatMessage<'a>>>,
    #[serde(default)]
    stream: Option<bool>,
}

#[derive(Serialize)]
struct Chunk<'a> {
    model: &'a str,
    created_at: &'a str,
    message: AssistantMessage<'a>,
    done: bool,
}

#[derive(Serialize)]
struct Final<'a> {
    model: &'a str,
    created_at: &'a str,
    message: AssistantMessage<'a>,
    done_reason: &'static str,
    done: bool,
    total_duration: u64,
    load_duration: u64,
    prompt_eval_count: u32,
    prompt_eval_duration: u64,
    eval_count: u32,
    eval_duration: u64,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct Tags {
    models: [Tag; MODELS.len()],
}

#[derive(Serialize)]
struct Tag {
    name: &'static str,
    model: &'static str,
    modified_at: &'static str,
    size: u64,
    digest: &'static str,
    details: TagDetails,
}

#[derive(Serialize)]
struct TagDetails {
    parent_model: &'static str,
    format: &'static str,
    family: &'static str,
    families: [&'static str; 1],
    parameter_size: &'static str,
    quantization_level: &'static str,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

/// `POST /api/chat`.
pub(crate) fn chat(request: &ApiRequest) -> Reply {
    let chat: ChatRequest<'_> = match serde_json::from_slice(&request.body) {
        Ok(chat) => chat,
        Err(err) => return error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {err}")),
    };
    let Some(model) = chat.model.as_deref() else {
        return error(StatusCode::BAD_REQUEST, "model is required");
    };
    let messages = chat.messages.as_deref().unwrap_or_default();

    let text = reply_text(last_user_text(messages));
    let prompt_eval_count = prompt_tokens(None, messages);
    let eval_count = count_tokens(&text);
    let created_at = rfc3339_now();
    let prompt_eval_duration = u64::from(prompt_eval_count) * PROMPT_TOKEN_NANOS;
    let eval_duration = u64::from(eval_count) * EVAL_TOKEN_NANOS;
    let mut done = Final {
        model,
        created_at: &created_at,
        message: AssistantMessage {
            role: "assistant",
            content: &text,
        },
        done_reason: "stop",
        done: true,
        total_duration: LOAD_NANOS + prompt_eval_duration + eval_duration,
        load_duration: LOAD_NANOS,
        prompt_eval_count,
        prompt_eval_duration,
        eval_count,
        eval_duration,
    };

    // Ollama streams unless told not to.
    if chat.stream == Some(false) {
        return Reply::ok(&done);
    }
    let mut frames = Vec::with_capacity(text.len() / 4 + 2);
    frames.extend(piece_slices(&text).map(|piece| {
        ndjson_line(&Chunk {
            model,
            created_at: &created_at,
            message: AssistantMessage {
                role: "assistant",
                content: piece,
            },
            done: false,
        })
    }));
    done.message.content = "";
    frames.push(ndjson_line(&done));
    Reply::Frames {
        content_type: NDJSON,
        frames,
    }
}

/// `GET /api/tags`.
pub(crate) fn tags() -> Reply {
    Reply::ok(&Tags {
        models: MODELS.map(|name| Tag {
            name,
            model: name,
            modified_at: "2024-01-01T00:00:00Z",
            size: 1_000_000,
            digest: "0000000000000000000000000000000000000000000000000000000000000000",
            details: TagDetails {
                parent_model: "",
                format: "gguf",
                family: "mock",
                families: ["mock"],
                parameter_size: "1B",
                quantization_level: "Q4_0",
            },
        }),
    })
}

/// An error in Ollama's shape: `{"error": "..."}`.
pub(crate) fn error(status: StatusCode, message: &str) -> Reply {
    Reply::json(status, &ErrorBody { error: message })
}
