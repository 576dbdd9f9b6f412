//! Reading and parsing request bodies with precise errors: content type, size limit,
//! read timeout, and JSON errors that say what is wrong and where.

use axum::body::Body;
use axum::http::header;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use crate::app::App;
use crate::error::ApiError;
use crate::wire::headers::RequestHeaders;
use crate::wire::openai::ChatRequest;
use crate::wire::request_scan;

/// Checks the content type, then reads at most `max_body_bytes` within `read_timeout`. A
/// body the listener read whole with the head is only measured.
pub async fn read_json_body(
    app: &App,
    headers: &impl RequestHeaders,
    body: Body,
) -> Result<Bytes, ApiError> {
    check_content_type(headers)?;
    let limit = app.limits.max_body_bytes;
    if let Some(whole) = headers.whole_body() {
        if whole.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        return Ok(whole);
    }
    let declared = headers
        .first_str(&header::CONTENT_LENGTH)
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    match tokio::time::timeout(app.limits.read_timeout, collect(body, limit)).await {
        Err(_) => Err(ApiError::BodyTimeout(app.limits.read_timeout)),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) if is_length_limit(&*error) => Err(ApiError::PayloadTooLarge { limit }),
        Ok(Err(error)) => Err(ApiError::bad_request(format!(
            "could not read the request body: {error}"
        ))),
    }
}

/// The body's bytes, at most `limit`. A body that arrives in one frame (the usual case) is
/// returned as that frame, without the list of buffers and the copy a general collector makes.
async fn collect(body: Body, limit: usize) -> Result<Bytes, axum::BoxError> {
    let mut body = std::pin::pin!(http_body_util::Limited::new(body, limit));
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers carry nothing we read
        };
        match (&mut joined, first.take()) {
            (Some(joined), _) => joined.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (None, Some(earlier)) => {
                let mut both = BytesMut::with_capacity(earlier.len() + data.len());
                both.extend_from_slice(&earlier);
                both.extend_from_slice(&data);
                joined = Some(both);
            }
        }
    }
    Ok(joined.map(BytesMut::freeze).or(first).unwrap_or_default())
}

fn is_length_limit(error: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// `application/json`, optionally with `charset=utf-8`; anything else is a 415.
fn check_content_type(headers: &impl RequestHeaders) -> Result<(), ApiError> {
    let Some(value) = headers.first(&header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType(
            "missing Content-Type: send `Content-Type: application/json`".into(),
        ));
    };
    // What nearly every client sends, checked before the general parse (~10 instructions a
    // byte for the case-insensitive comparisons).
    if value == b"application/json" {
        return Ok(());
    }
    let value = crate::wire::headers::visible_ascii(value).unwrap_or("");
    let mut parts = value.split(';').map(str::trim);
    let mime = parts.next().unwrap_or("");
    let charset_ok = parts.all(|p| match p.split_once('=') {
        Some((name, cs)) if name.trim().eq_ignore_ascii_case("charset") => {
            let cs = cs.trim().trim_matches('"');
            cs.eq_ignore_ascii_case("utf-8") || cs.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    });
    if mime.eq_ignore_ascii_case("application/json") && charset_ok {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "unsupported Content-Type `{}`: send `Content-Type: application/json`",
            value.to_ascii_lowercase()
        )))
    }
}

/// Parses JSON into `T`, naming the field path and position of the first problem.
///
/// Valid bodies take the plain serde_json path; only a body that fails is parsed a second
/// time with path tracking, which costs an allocation per nested field, to say where. The
/// body's UTF-8 is checked once, whole, rather than string by string as `from_slice` does.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    parse_json_with(bytes, |_| None)
}

/// A chat request's body: the scan for the usual body (`wire::request_scan`), else
/// [`parse_json`]'s serde_json decoding, with its errors.
pub fn parse_chat_request(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
    parse_json_with(bytes, request_scan::chat_request)
}

/// [`parse_json`], with `fast` tried first on the body as text.
fn parse_json_with<T: DeserializeOwned>(
    bytes: &[u8],
    fast: impl FnOnce(&str) -> Option<T>,
) -> Result<T, ApiError> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Some(value) = fast(text) {
            return Ok(value);
        }
        if let Ok(value) = serde_json::from_str(text) {
            return Ok(value);
        }
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest {
            message: "the request body is empty: send a JSON object".into(),
            code: "invalid_json",
        });
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
    let value = parsed.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let code = if inner.is_data() {
            "invalid_request"
        } else {
            "invalid_json"
        };
        let message = if inner.is_data() && path != "." {
            format!("invalid field `{path}`: {inner}")
        } else if inner.is_data() {
            format!("invalid request body: {inner}")
        } else {
            format!("the request body is not valid JSON: {inner}")
        };
        ApiError::BadRequest { message, code }
    })?;
    deserializer.end().map_err(|e| ApiError::BadRequest {
        message: format!("the request body is not valid JSON: {e}"),
        code: "invalid_json",
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chat path's refusal, which must be `parse_json`'s word for word.
    fn refusal(bytes: &[u8]) -> (String, &'static str) {
        let generic = match parse_json::<ChatRequest>(bytes) {
            Err(ApiError::BadRequest { message, .. }) => Some(message),
            _ => None,
        };
        match parse_chat_request(bytes) {
            Err(ApiError::BadRequest { message, code }) if Some(&message) == generic.as_ref() => {
                (message, code)
            }
            other => panic!(
                "{:?}: refused as a bad request, as by parse_json ({generic:?}), got {:?}",
                bytes,
                other.err()
            ),
        }
    }

    #[test]
    fn utf8_is_checked_once_and_a_bad_byte_still_gets_its_position() {
        let good = r#"{"model":"m","messages":[{"role":"user","content":"héllo ✓"}]}"#;
        let parsed = parse_chat_request(good.as_bytes());
        let Ok(parsed) = parsed else {
            panic!("a valid body decodes");
        };
        assert_eq!(parsed.messages[0].content.to_text(), "héllo ✓");
        let bad = b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"h\xffi\"}]}";
        let (message, code) = refusal(bad);
        assert_eq!(code, "invalid_json");
        assert!(
            message.contains("invalid unicode code point at line 1 column"),
            "{message}"
        );
        let (message, code) = refusal(format!("{good} x").as_bytes());
        assert_eq!(code, "invalid_json");
        assert!(message.contains("trailing characters"), "{message}");
        let (message, code) =
            refusal(br#"{"model":"m","messages":[{"role":"user","content":"\ud800"}]}"#);
        assert_eq!(code, "invalid_json");
        assert!(message.contains("escape"), "{message}");
    }
}
