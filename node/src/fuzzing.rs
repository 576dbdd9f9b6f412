//! Entry points for the fuzz targets in `fuzz/`: the pure parts of the request path and of
//! the stream translators, reachable without a running gateway. Not an API.

use crate::providers::{ProviderError, StreamItem, anthropic, ollama};
use crate::wire::openai::ChatRequest;

pub use crate::api::body::{parse_chat_request, parse_json};
pub use crate::api::completions::{CompletionBody, parse_completion_body};
pub use crate::api::validate::validate_chat;
pub use crate::providers::sse::{NdjsonDecoder, SseDecoder, SseEvent};

/// OpenAI request -> Anthropic `/v1/messages` body, serialized as it would be sent.
pub fn anthropic_request_body(request: &ChatRequest) -> Result<Vec<u8>, ProviderError> {
    let body = anthropic::to_messages_request(request, "claude-fuzz", 1024, request.is_stream())?;
    serde_json::to_vec(&body).map_err(|e| ProviderError::InvalidResponse(e.to_string()))
}

/// Anthropic's stream events -> OpenAI chunks.
pub struct AnthropicStream(anthropic::StreamTranslator);

impl AnthropicStream {
    pub fn new(include_usage: bool) -> Self {
        Self(anthropic::StreamTranslator::new(
            "claude-fuzz".into(),
            include_usage,
        ))
    }

    /// Items for one event; `Ok(None)` marks the end of the message.
    pub fn translate(
        &mut self,
        event: Option<&str>,
        data: &str,
    ) -> Result<Option<Vec<StreamItem>>, ProviderError> {
        self.0.translate(event, data)
    }
}

/// Ollama's NDJSON lines -> OpenAI chunks.
pub struct OllamaStream(ollama::LineTranslator);

impl OllamaStream {
    pub fn new(include_usage: bool) -> Self {
        Self(ollama::LineTranslator::new(include_usage))
    }

    /// Items for one line, and whether it was the last.
    pub fn translate(&mut self, line: &[u8]) -> Result<(Vec<StreamItem>, bool), ProviderError> {
        self.0.translate(line)
    }
}

/// An upstream's HTTP/1.1 answer read the way a pooled connection reads it, arriving in
/// `pieces`: its status and whole body, or why it cannot be read. The connection's end comes
/// after the last piece.
pub fn read_upstream_answer<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(u16, Vec<u8>), String> {
    use crate::providers::h1::{BodyDecoder, Decoded, parse_head};
    let mut pieces = pieces.into_iter();
    let mut read = bytes::BytesMut::new();
    let head = loop {
        if let Some(head) = parse_head(&mut read)? {
            break head;
        }
        match pieces.next() {
            Some(piece) => read.extend_from_slice(piece),
            None => return Err("the connection ended before the answer's head".into()),
        }
    };
    let mut decoder = BodyDecoder::new(head.framing);
    let mut body = Vec::new();
    loop {
        match decoder.decode(&mut read)? {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::End => return Ok((head.status.as_u16(), body)),
            Decoded::NeedMore => match pieces.next() {
                Some(piece) => read.extend_from_slice(piece),
                None => {
                    decoder.at_eof()?;
                    return Ok((head.status.as_u16(), body));
                }
            },
        }
    }
}

/// What [`read_client_requests`] read of one request: method, target, headers (name and
/// value, in order), body.
pub type ClientRequest = (String, String, Vec<(String, Vec<u8>)>, Vec<u8>);

/// A client's HTTP/1.1 requests arriving in `pieces`, read as the gateway's listener reads
/// them (the head, then the body by its framing, then the next request on the same
/// connection): for each request its method, target, headers and body, or the first
/// refusal. Stops after the first request that does not keep the connection alive.
/// `as_a_connection`: heads are read as the listener reads them, with what the connection
/// keeps between them (the last head's header names) and a chat completion's fields in place;
/// else each from scratch, every head's fields in a map.
pub fn read_client_requests<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
    max_head_bytes: usize,
    as_a_connection: bool,
) -> Result<Vec<ClientRequest>, String> {
    use crate::server::http1::head::{
        HeadScratch, ParsedHead, RequestHead, parse_request_head_with, parse_routed_head,
    };
    use crate::wire::http1::{BodyDecoder, Decoded};
    let mut pieces = pieces.into_iter();
    let mut read = bytes::BytesMut::new();
    let mut requests = Vec::new();
    let mut kept = HeadScratch::default();
    loop {
        let head = loop {
            let mut fresh = HeadScratch::default();
            let scratch = if as_a_connection {
                &mut kept
            } else {
                &mut fresh
            };
            let parsed = if as_a_connection {
                parse_routed_head(&mut read, max_head_bytes, scratch)
            } else {
                parse_request_head_with(&mut read, max_head_bytes, scratch)
                    .map(|head| head.map(ParsedHead::Routed))
            };
            if let Some(head) = parsed.map_err(|e| e.to_string())? {
                break head;
            }
            match pieces.next() {
                Some(piece) => read.extend_from_slice(piece),
                None => return Ok(requests),
            }
        };
        let (framing, keep_alive, came_along) = match &head {
            ParsedHead::Routed(head) => (head.framing, head.keep_alive, None),
            ParsedHead::Chat(head) => (
                head.framing,
                head.keep_alive,
                crate::wire::headers::RequestHeaders::whole_body(&head.request.fields),
            ),
        };
        // A chat body that came whole with its head is not in `read` any more, as on the
        // listener.
        let to_read = came_along.is_none();
        let mut body = came_along.map(|b| b.to_vec()).unwrap_or_default();
        let mut decoder = BodyDecoder::new(framing);
        if to_read {
            loop {
                match decoder.decode(&mut read)? {
                    Decoded::Data(data) => body.extend_from_slice(&data),
                    Decoded::End => break,
                    Decoded::NeedMore => match pieces.next() {
                        Some(piece) => read.extend_from_slice(piece),
                        None => {
                            decoder.at_eof()?;
                            break;
                        }
                    },
                }
            }
        }
        match head {
            ParsedHead::Routed(RequestHead { request, .. }) => {
                let headers = request
                    .headers()
                    .iter()
                    .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
                    .collect();
                requests.push((
                    request.method().to_string(),
                    request.uri().to_string(),
                    headers,
                    body,
                ));
                // As a chat request that came with a map does: the map is kept for reuse.
                crate::server::header_maps::give(request.into_parts().0.headers);
            }
            ParsedHead::Chat(RequestHead { request, .. }) => {
                // Put in a map as the other side's were: a map takes every field read in
                // place, and lists them as the other side's map does (each name's values
                // together).
                let mut map = http::HeaderMap::new();
                for (name, value) in request.fields.iter() {
                    let name = http::HeaderName::from_bytes(name)
                        .map_err(|_| "a field read in place is no header name")?;
                    let value = http::HeaderValue::from_bytes(value)
                        .map_err(|_| "a field read in place is no header value")?;
                    map.append(name, value);
                }
                let headers = map
                    .iter()
                    .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
                    .collect();
                let target = crate::api::chat::ENDPOINT.to_owned();
                requests.push(("POST".to_owned(), target, headers, body));
            }
        }
        if !keep_alive {
            return Ok(requests);
        }
    }
}

/// The derived decoder that the upstream answer's shape check replaced (`wire::answer`).
#[derive(serde::Deserialize)]
struct DerivedShape {
    #[serde(rename = "id")]
    _id: serde::de::IgnoredAny,
    #[serde(rename = "choices")]
    _choices: Vec<DerivedChoice>,
    #[serde(default)]
    usage: Option<DerivedUsage>,
}

#[derive(serde::Deserialize)]
struct DerivedChoice {
    #[serde(rename = "message")]
    _message: serde::de::IgnoredAny,
}

#[derive(serde::Deserialize)]
struct DerivedUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

/// The upstream answer's shape check against the derived decoder it replaced: both take an
/// answer or both refuse it, and read the same usage. Where they part on purpose: the check
/// refuses any answer that is not UTF-8 (the derived decoder looked at member names only), and
/// the derived decoder also took a struct written as a JSON array (the answer itself, a
/// choice, `usage`), which is no completion to pass on.
pub fn check_answer_shape(answer: &[u8]) -> Result<(), String> {
    use crate::wire::answer::ChatAnswer;
    use crate::wire::openai::Usage;
    let ours = ChatAnswer::passthrough(answer.to_vec());
    let derived = serde_json::from_slice::<DerivedShape>(answer);
    let utf8 = std::str::from_utf8(answer).is_ok();
    let stricter = !utf8 || has_struct_as_array(answer);
    if ours.is_ok() && !utf8 {
        return Err("taken, but the answer is not UTF-8".into());
    }
    match (ours, derived) {
        (Ok(ours), Ok(derived)) => {
            let derived = derived.usage.map(|u| Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                total_tokens: u.total_tokens,
            });
            if ours.usage != derived {
                return Err(format!("usage {:?}, derived {derived:?}", ours.usage));
            }
            Ok(())
        }
        (Err(_), Err(_)) => Ok(()),
        (Err(_), Ok(_)) if stricter => Ok(()),
        (Ok(_), Err(error)) => Err(format!("taken, but the derived decoder refused: {error}")),
        (Err(error), Ok(_)) => Err(format!(
            "refused ({error}), but the derived decoder took it"
        )),
    }
}

/// Whether the answer, a choice or `usage` is a JSON array where an object belongs.
fn has_struct_as_array(answer: &[u8]) -> bool {
    use serde_json::Value;
    let Ok(value) = serde_json::from_slice::<Value>(answer) else {
        return false;
    };
    let Value::Object(members) = value else {
        return value.is_array();
    };
    let choice_as_array = match members.get("choices") {
        Some(Value::Array(choices)) => choices.iter().any(Value::is_array),
        _ => false,
    };
    choice_as_array || members.get("usage").is_some_and(Value::is_array)
}

/// The chat request's scan (`wire::request_scan`) against serde_json's decoding: whatever the
/// scan decodes, serde_json decodes too, to the same request (compared by their `Debug` text,
/// which writes every field, doubles to the bit).
pub fn check_request_scan(body: &[u8]) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(body) else {
        return Ok(());
    };
    let Some(scanned) = crate::wire::request_scan::chat_request(text) else {
        return Ok(());
    };
    match serde_json::from_str::<ChatRequest>(text) {
        Ok(derived) => {
            let (scanned, derived) = (format!("{scanned:?}"), format!("{derived:?}"));
            if scanned == derived {
                Ok(())
            } else {
                Err(format!("scanned {scanned}, serde_json {derived}"))
            }
        }
        Err(error) => Err(format!("scanned, but serde_json refused: {error}")),
    }
}
