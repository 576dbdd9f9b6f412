//! The in-process mock provider: deterministic answers with no network, so the embedded
//! default configuration works on a fresh machine without keys.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use hapax_mock_provider::reply;

use super::encoded;
use super::{ChunkStream, Endpoint, Provider, ProviderError, StreamItem, UpstreamCall};
use crate::wire::answer::ChatAnswer;
use crate::wire::openai::{ChatChunk, ChatRequest, ChatResponse, Role, Usage, unix_now};

pub struct MockProvider;

fn answer(request: &ChatRequest) -> (String, Usage) {
    let last_user = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.content.to_text())
        .unwrap_or_default();
    let text = reply::reply_text(&last_user);
    let prompt: u64 = request
        .messages
        .iter()
        .map(|m| u64::from(reply::count_tokens(&m.content.to_text())))
        .sum();
    let usage = Usage::new(prompt, u64::from(reply::count_tokens(&text)));
    (text, usage)
}

fn item(chunk: &ChatChunk, usage: Option<Usage>) -> Result<StreamItem, ProviderError> {
    let data =
        serde_json::to_vec(chunk).map_err(|e| ProviderError::InvalidResponse(e.to_string()))?;
    Ok(StreamItem {
        data: Bytes::from(data),
        usage,
    })
}

impl Provider for MockProvider {
    fn chat<'a>(
        &'a self,
        call: UpstreamCall<'a>,
    ) -> BoxFuture<'a, Result<ChatAnswer, ProviderError>> {
        let (text, usage) = answer(call.request);
        let response = ChatResponse::assistant(
            format!("chatcmpl-mock-{}", unix_now()),
            call.model.to_owned(),
            text,
            "stop",
            usage,
        );
        futures_util::future::ready(encoded(&response)).boxed()
    }

    fn chat_stream<'a>(
        &'a self,
        call: UpstreamCall<'a>,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>> {
        let (text, usage) = answer(call.request);
        let (id, model, created) = (
            format!("chatcmpl-mock-{}", unix_now()),
            call.model.to_owned(),
            unix_now(),
        );
        let mut items = vec![item(
            &ChatChunk::delta(
                &id,
                &model,
                created,
                Some("assistant"),
                Some(String::new()),
                None,
            ),
            None,
        )];
        items.extend(reply::stream_pieces(&text).into_iter().map(|piece| {
            item(
                &ChatChunk::delta(&id, &model, created, None, Some(piece), None),
                None,
            )
        }));
        if call.request.wants_stream_usage() {
            items.push(item(
                &ChatChunk::delta(&id, &model, created, None, None, Some("stop")),
                None,
            ));
            items.push(item(
                &ChatChunk::usage_only(&id, &model, created, usage),
                Some(usage),
            ));
        } else {
            items.push(item(
                &ChatChunk::delta(&id, &model, created, None, None, Some("stop")),
                Some(usage),
            ));
        }
        futures_util::future::ready(Ok(futures_util::stream::iter(items).boxed())).boxed()
    }

    fn health_check<'a>(
        &'a self,
        _endpoint: &'a Endpoint,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        futures_util::future::ready(Ok(())).boxed()
    }
}
