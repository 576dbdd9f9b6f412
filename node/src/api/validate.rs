//! Semantic checks of a chat request, beyond what its types enforce.

use crate::error::ApiError;
use crate::wire::openai::{ChatRequest, MessageContent, Role};

pub const MAX_MESSAGES: usize = 10_000;
pub const MAX_COMPLETION_TOKENS: u64 = 1_000_000;

pub fn validate_chat(request: &ChatRequest) -> Result<(), ApiError> {
    if request.messages.is_empty() {
        return Err(ApiError::bad_request(
            "`messages` must contain at least one message",
        ));
    }
    if request.messages.len() > MAX_MESSAGES {
        return Err(ApiError::bad_request(format!(
            "`messages` has {} entries; the limit is {MAX_MESSAGES}",
            request.messages.len()
        )));
    }
    for (i, message) in request.messages.iter().enumerate() {
        let missing = match &message.content {
            // An assistant turn that only called tools (or, in the older API, a function).
            MessageContent::Null => {
                !(message.role == Role::Assistant
                    && (message.extra.contains_key("tool_calls")
                        || message.extra.contains_key("function_call")))
            }
            MessageContent::Parts(parts) => parts.is_empty(),
            MessageContent::Text(_) => false,
        };
        if missing {
            return Err(ApiError::bad_request(format!(
                "`messages[{i}].content` is missing or empty"
            )));
        }
    }
    if let Some(model) = &request.model
        && (model.is_empty() || model.len() > 256)
    {
        return Err(ApiError::bad_request(
            "`model` must be a non-empty string of at most 256 characters",
        ));
    }
    if let Some(t) = request.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(ApiError::bad_request(format!(
            "`temperature` must be between 0 and 2, got {t}"
        )));
    }
    if let Some(p) = request.top_p
        && !(0.0..=1.0).contains(&p)
    {
        return Err(ApiError::bad_request(format!(
            "`top_p` must be between 0 and 1, got {p}"
        )));
    }
    for (name, value) in [
        ("max_tokens", request.max_tokens),
        ("max_completion_tokens", request.max_completion_tokens),
    ] {
        if let Some(v) = value
            && !(1..=MAX_COMPLETION_TOKENS).contains(&v)
        {
            return Err(ApiError::bad_request(format!(
                "`{name}` must be between 1 and {MAX_COMPLETION_TOKENS}, got {v}"
            )));
        }
    }
    if let Some(n) = request.n
        && !(1..=16).contains(&n)
    {
        return Err(ApiError::bad_request(format!(
            "`n` must be between 1 and 16, got {n}"
        )));
    }
    if request.stream_options.is_some() && !request.is_stream() {
        return Err(ApiError::bad_request(
            "`stream_options` is only allowed when `stream` is true",
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wire::openai::ChatMessage;

    #[test]
    fn rejects_empty_messages_and_out_of_range_values() {
        let mut r = ChatRequest::default();
        assert!(validate_chat(&r).is_err());
        r.messages.push(ChatMessage::new(Role::User, "hi"));
        assert!(validate_chat(&r).is_ok());
        r.max_tokens = Some(0);
        assert!(
            validate_chat(&r)
                .unwrap_err()
                .to_string()
                .contains("max_tokens")
        );
        // An assistant turn with no content is fine when it called a tool or a function.
        for call in ["tool_calls", "function_call"] {
            let mut turn = ChatMessage::new(Role::Assistant, "");
            turn.content = MessageContent::Null;
            turn.extra.insert(call.into(), serde_json::json!({}));
            let with_call = ChatRequest {
                messages: vec![ChatMessage::new(Role::User, "hi"), turn],
                ..Default::default()
            };
            assert!(validate_chat(&with_call).is_ok(), "{call}");
        }
        let mut silent = ChatMessage::new(Role::Assistant, "");
        silent.content = MessageContent::Null;
        let without = ChatRequest {
            messages: vec![silent],
            ..Default::default()
        };
        assert!(validate_chat(&without).is_err());
        r.max_tokens = Some(10);
        r.temperature = Some(3.0);
        assert!(
            validate_chat(&r)
                .unwrap_err()
                .to_string()
                .contains("temperature")
        );
    }
}
