//! What makes two requests the same answer, and which requests may be answered from the
//! cache at all.

use sha2::{Digest, Sha256};

use crate::wire::headers::{RequestHeaders, visible_ascii};
use crate::wire::openai::ChatRequest;

/// The request header that opts a request in (`on`) or out (`off`); responses carry the same
/// name with `hit`, `miss` or `bypass`.
pub const HEADER: axum::http::HeaderName = axum::http::HeaderName::from_static("x-hapax-cache");

/// Bumped when the key recipe or the stored format changes, so old entries are never read.
const KEY_VERSION: &[u8] = b"hapax-cache/1";

/// sha256 of everything that shapes the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Who may share an entry: the caller's key (by name), or everyone.
#[derive(Clone, Copy, Debug)]
pub enum KeyScope<'a> {
    Caller(&'a str),
    Shared,
}

/// The key of `request` on `endpoint`: the whole normalized body (messages, sampling
/// parameters, tools and every forwarded field), plus the fields the body's serialization
/// leaves out (model, streaming and its usage chunk), the providers the caller may use, and
/// the scope.
pub fn cache_key(
    scope: KeyScope<'_>,
    endpoint: &str,
    providers: Option<&[String]>,
    request: &ChatRequest,
) -> Result<CacheKey, serde_json::Error> {
    let body = serde_json::to_vec(request)?;
    let (scope_kind, scope_name) = match scope {
        KeyScope::Caller(name) => (&b"key"[..], name.as_bytes()),
        KeyScope::Shared => (&b"shared"[..], &b""[..]),
    };
    let providers = providers.map(|p| p.join("\n")).unwrap_or_default();
    let flags = [
        u8::from(request.is_stream()),
        u8::from(request.wants_stream_usage()),
    ];
    let mut hasher = Sha256::new();
    for part in [
        KEY_VERSION,
        scope_kind,
        scope_name,
        endpoint.as_bytes(),
        request.model.as_deref().unwrap_or_default().as_bytes(),
        &flags[..],
        providers.as_bytes(),
        &body,
    ] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    Ok(CacheKey(hasher.finalize().into()))
}

/// What the client asked of the cache through its headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// `X-Hapax-Cache: on`: cache this request even though it is not deterministic.
    pub opt_in: bool,
    /// `X-Hapax-Cache: off`: neither read nor write.
    pub opt_out: bool,
    /// `Cache-Control: no-cache`: do not answer from the cache (the answer is still stored).
    pub no_cache: bool,
    /// `Cache-Control: no-store`: do not store the answer.
    pub no_store: bool,
}

impl Directives {
    pub fn from_headers(headers: &impl RequestHeaders) -> Self {
        let mut directives = Self::default();
        for value in headers.all(&HEADER).filter_map(visible_ascii) {
            match value.trim().to_ascii_lowercase().as_str() {
                "on" | "true" | "1" => directives.opt_in = true,
                "off" | "false" | "0" => directives.opt_out = true,
                _ => {}
            }
        }
        let control = headers
            .all(&axum::http::header::CACHE_CONTROL)
            .filter_map(visible_ascii)
            .flat_map(|v| v.split(','));
        for directive in control {
            let name = directive.split('=').next().unwrap_or_default().trim();
            if name.eq_ignore_ascii_case("no-cache") {
                directives.no_cache = true;
            } else if name.eq_ignore_ascii_case("no-store") {
                directives.no_store = true;
            }
        }
        directives
    }
}

/// Only answers that would come out the same again are cached by default: an explicit
/// `temperature: 0`. Anything else needs the client's explicit opt-in.
pub fn is_cacheable(request: &ChatRequest, directives: Directives) -> bool {
    !directives.opt_out && (directives.opt_in || request.temperature == Some(0.0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::*;
    use crate::wire::openai::{ChatMessage, Role, StreamOptions};

    fn request(text: &str) -> ChatRequest {
        ChatRequest {
            model: Some("mock-1".to_owned()),
            messages: vec![ChatMessage::new(Role::User, text)],
            temperature: Some(0.0),
            ..Default::default()
        }
    }

    fn key(request: &ChatRequest) -> CacheKey {
        cache_key(
            KeyScope::Caller("web"),
            "/v1/chat/completions",
            None,
            request,
        )
        .unwrap()
    }

    #[test]
    fn the_same_request_gives_the_same_key() {
        assert_eq!(key(&request("hello")), key(&request("hello")));
        let parsed = |text: &str| serde_json::from_str::<ChatRequest>(text).unwrap();
        let a = parsed(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"response_format":{"type":"json_object"},"user":"u"}"#,
        );
        let b = parsed(
            r#"{"user":"u","temperature":0.0,"response_format":{"type":"json_object"},"messages":[{"content":"hi","role":"user"}],"model":"m"}"#,
        );
        assert_eq!(key(&a), key(&b), "field order and 0 vs 0.0 do not matter");
    }

    #[test]
    fn anything_that_shapes_the_answer_changes_the_key() {
        let base = request("hello");
        let base_key = key(&base);
        let mut other = request("hello");
        other.messages.push(ChatMessage::new(Role::Assistant, "hi"));
        assert_ne!(key(&other), base_key, "messages");
        assert_ne!(key(&request("hello!")), base_key, "message text");
        let mut other = request("hello");
        other.model = Some("mock-2".to_owned());
        assert_ne!(key(&other), base_key, "model");
        let mut other = request("hello");
        other.temperature = Some(0.7);
        assert_ne!(key(&other), base_key, "temperature");
        let mut other = request("hello");
        other.max_tokens = Some(10);
        assert_ne!(key(&other), base_key, "max_tokens");
        let mut other = request("hello");
        other.tools = Some(serde_json::json!([{"type": "function", "function": {"name": "f"}}]));
        assert_ne!(key(&other), base_key, "tools");
        let mut other = request("hello");
        other.stream = Some(true);
        let streamed = key(&other);
        assert_ne!(streamed, base_key, "streamed");
        other.stream_options = Some(StreamOptions {
            include_usage: true,
        });
        assert_ne!(key(&other), streamed, "usage chunk");
        let in_scope =
            |scope, endpoint, providers| cache_key(scope, endpoint, providers, &base).unwrap();
        assert_ne!(
            in_scope(KeyScope::Caller("batch"), "/v1/chat/completions", None),
            base_key,
            "another key's scope"
        );
        assert_ne!(
            in_scope(KeyScope::Shared, "/v1/chat/completions", None),
            base_key,
            "shared scope"
        );
        assert_ne!(
            in_scope(KeyScope::Caller("web"), "/v1/completions", None),
            base_key,
            "endpoint"
        );
        let only = ["openai".to_owned()];
        assert_ne!(
            in_scope(KeyScope::Caller("web"), "/v1/chat/completions", Some(&only)),
            base_key,
            "allowed providers"
        );
    }

    #[test]
    fn only_deterministic_or_opted_in_requests_are_cacheable() {
        let none = Directives::default();
        assert!(is_cacheable(&request("x"), none));
        let mut warm = request("x");
        warm.temperature = Some(0.7);
        assert!(!is_cacheable(&warm, none));
        warm.temperature = None;
        assert!(
            !is_cacheable(&warm, none),
            "the provider's default is not 0"
        );
        let opt_in = Directives {
            opt_in: true,
            ..none
        };
        assert!(is_cacheable(&warm, opt_in));
        let opt_out = Directives {
            opt_out: true,
            ..none
        };
        assert!(!is_cacheable(&request("x"), opt_out));
    }

    #[test]
    fn directives_come_from_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_static("On"));
        headers.insert(
            "cache-control",
            HeaderValue::from_static("max-age=0, No-Store"),
        );
        let directives = Directives::from_headers(&headers);
        assert!(directives.opt_in && directives.no_store);
        assert!(!directives.no_cache && !directives.opt_out);
        headers.insert("cache-control", HeaderValue::from_static("no-cache"));
        headers.insert(HEADER, HeaderValue::from_static("off"));
        let directives = Directives::from_headers(&headers);
        assert!(directives.no_cache && directives.opt_out && !directives.no_store);
    }
}
