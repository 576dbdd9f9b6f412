//! Anthropic wire format: `POST /v1/messages`, whole and as named SSE events.

use std::borrow::Cow;

use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::content::{ChatMessage, MessageText, last_user_text, prompt_tokens};
use crate::reply::{count_tokens, piece_slices, reply_text};
use crate::server::ApiRequest;
use crate::stream::{EVENT_STREAM, Reply, sse_event};

#[derive(Deserialize)]
struct MessagesRequest<'a> {
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default, borrow)]
    messages: Option<Vec<ChatMessage<'a>>>,
    #[serde(default, borrow)]
    system: Option<MessageText<'a>>,
    #[serde(default)]
    stream: Option<bool>,
}

#[derive(Serialize)]
struct Message<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: &'a [TextBlock<'a>],
    stop_reason: Option<&'static str>,
    stop_sequence: Option<()>,
    usage: Usage,
}

#[derive(Serialize)]
struct TextBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct Usage {
    input_tokens: u32,
    output_tokens: u32,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event<'a> {
    MessageStart {
        message: Message<'a>,
    },
    ContentBlockStart {
        index: u32,
        content_block: TextBlock<'a>,
    },
    Ping,
    ContentBlockDelta {
        index: u32,
        delta: TextBlock<'a>,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: StopDelta,
        usage: OutputUsage,
    },
    MessageStop,
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
}

#[derive(Serialize)]
struct OutputUsage {
    output_tokens: u32,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

/// `POST /v1/messages`.
pub(crate) fn messages(request: &ApiRequest, id: u64) -> Reply {
    if !request.headers.contains_key("x-api-key") {
        return error(StatusCode::UNAUTHORIZED, "x-api-key header is required");
    }
    if !request.headers.contains_key("anthropic-version") {
        return invalid_request("anthropic-version: header is required");
    }
    let body: MessagesRequest<'_> = match serde_json::from_slice(&request.body) {
        Ok(body) => body,
        Err(error) => return invalid_request(&format!("invalid request body: {error}")),
    };
    let Some(model) = body.model.as_deref() else {
        return invalid_request("model: Field required");
    };
    if body.max_tokens.is_none() {
        return invalid_request("max_tokens: Field required");
    }
    let Some(messages) = body.messages.as_deref() else {
        return invalid_request("messages: Field required");
    };
    if messages.is_empty() {
        return invalid_request("messages: at least one message is required");
    }
    if let Some(index) = messages
        .iter()
        .position(|message| message.role != "user" && message.role != "assistant")
    {
        return invalid_request(&format!(
            "messages.{index}.role: Input should be 'user' or 'assistant'"
        ));
    }

    let text = reply_text(last_user_text(messages));
    let input_tokens = prompt_tokens(body.system.as_ref().map(MessageText::as_str), messages);
    let output_tokens = count_tokens(&text);
    let id = format!("msg_mock_{id}");

    if body.stream != Some(true) {
        return Reply::ok(&Message {
            id: &id,
            kind: "message",
            role: "assistant",
            model,
            content: &[TextBlock {
                kind: "text",
                text: &text,
            }],
            stop_reason: Some("end_turn"),
            stop_sequence: None,
            usage: Usage {
                input_tokens,
                output_tokens,
            },
        });
    }

    let mut frames = Vec::with_capacity(text.len() / 4 + 7);
    let message = Message {
        id: &id,
        kind: "message",
        role: "assistant",
        model,
        content: &[],
        stop_reason: None,
        stop_sequence: None,
        usage: Usage {
            input_tokens,
            output_tokens: 1,
        },
    };
    frames.push(sse_event("message_start", &Event::MessageStart { message }));
    let content_block = TextBlock {
        kind: "text",
        text: "",
    };
    frames.push(sse_event(
        "content_block_start",
        &Event::ContentBlockStart {
            index: 0,
            content_block,
        },
    ));
    frames.push(sse_event("ping", &Event::Ping));
    frames.extend(piece_slices(&text).map(|piece| {
        let delta = TextBlock {
            kind: "text_delta",
            text: piece,
        };
        sse_event(
            "content_block_delta",
            &Event::ContentBlockDelta { index: 0, delta },
        )
    }));
    frames.push(sse_event(
        "content_block_stop",
        &Event::ContentBlockStop { index: 0 },
    ));
    frames.push(sse_event(
        "message_delta",
        &Event::MessageDelta {
            delta: StopDelta {
                stop_reason: "end_turn",
                stop_sequence: None,
            },
            usage: OutputUsage { output_tokens },
        },
    ));
    frames.push(sse_event("message_stop", &Event::MessageStop));
    Reply::Frames {
        content_type: EVENT_STREAM,
        frames,
    }
}

/// An error in Anthropic's shape, typed the way Anthropic types errors of that status.
pub(crate) fn error(status: StatusCode, message: &str) -> Reply {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    };
    Reply::json(
        status,
        &ErrorBody {
            kind: "error",
            error: ErrorDetail { kind, message },
        },
    )
}

fn invalid_request(message: &str) -> Reply {
    error(StatusCode::BAD_REQUEST, message)
}
