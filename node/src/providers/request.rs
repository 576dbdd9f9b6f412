//! An upstream request being built by a provider, before [`super::http::send`] puts it on a
//! pooled plain-HTTP connection or hands it to hyper-util's client.
//!
//! Not an `http::Request`: a plain-HTTP upstream gets the request's bytes written straight
//! from these parts (`super::h1::encode_request`), so the request path builds no header map
//! (two allocations, a hash per field) and no shared body for one write.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use http::{Method, Request, Uri};
use http_body_util::Full;
use prometheus::IntCounter;

use super::Endpoint;
use super::h1::WRITTEN_BY_THE_ENCODER;
use super::http::{HttpClient, USER_AGENT as AGENT};
use super::pool::OriginPool;

/// A request being built; a bad URL, header value or body is reported when it is sent.
pub struct UpstreamRequest<'c> {
    pub(super) client: &'c HttpClient,
    pub(super) plain_pool: Option<Arc<OriginPool>>,
    /// For the TLS client, which has no pool of ours to count its resends.
    pub(super) resent: Option<IntCounter>,
    pub(super) method: Method,
    /// The origin-form target for the pool, the absolute URL for the client.
    pub(super) uri: Uri,
    /// The first thing that could not be built, if any.
    pub(super) problem: Option<String>,
    /// The body is JSON (`content-type: application/json`).
    pub(super) json: bool,
    /// Fields beside `host`, `user-agent`, `content-type` and `content-length`: providers
    /// set two at most, so a list (allocated only when there is one) rather than a map.
    pub(super) fields: Vec<(HeaderName, HeaderValue)>,
    pub(super) body: Vec<u8>,
}

impl<'c> UpstreamRequest<'c> {
    pub(super) fn new(
        client: &'c HttpClient,
        method: Method,
        endpoint: &Endpoint,
        path: &str,
    ) -> Self {
        let plain_pool = endpoint.plain_pool.clone();
        let (uri, resent) = match &plain_pool {
            Some(pool) => (pool.target(path), None),
            None => (
                Uri::try_from(join(&endpoint.base_url, path))
                    .map_err(|e| format!("invalid upstream URL: {e}")),
                endpoint.resent.clone(),
            ),
        };
        let (uri, problem) = match uri {
            Ok(uri) => (uri, None),
            Err(problem) => (Uri::default(), Some(problem)),
        };
        Self {
            client,
            plain_pool,
            resent,
            method,
            uri,
            problem,
            json: false,
            fields: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Sets the body to `body` as JSON.
    pub fn json(mut self, body: &impl serde::Serialize) -> Self {
        match serde_json::to_vec(body) {
            Ok(bytes) => return self.json_bytes(bytes),
            Err(error) => self.fail(format!("request body: {error}")),
        }
        self
    }

    /// Sets the body to `json`, already encoded.
    pub fn json_bytes(mut self, json: Vec<u8>) -> Self {
        self.body = json;
        self.json = true;
        self
    }

    /// Sets a field; one the request writes from its own parts (`host`, `user-agent`,
    /// `content-type`, `content-length`, `transfer-encoding`) is not sent, on either path.
    pub fn header(self, name: HeaderName, value: &str) -> Self {
        self.insert_header(name, value, false)
    }

    /// A header carrying a key: marked sensitive, so it never shows in debug output.
    pub fn secret_header(self, name: HeaderName, value: &str) -> Self {
        self.insert_header(name, value, true)
    }

    pub fn bearer_auth(self, token: &str) -> Self {
        self.secret_header(AUTHORIZATION, &format!("Bearer {token}"))
    }

    /// Sets `name` (replacing an earlier value, as a map's `insert` would).
    fn insert_header(mut self, name: HeaderName, value: &str, sensitive: bool) -> Self {
        match HeaderValue::from_str(value) {
            Ok(mut value) => {
                value.set_sensitive(sensitive);
                self.fields.retain(|(set, _)| *set != name);
                self.fields.push((name, value));
            }
            Err(_) => self.fail(format!(
                "the {name} header has a character HTTP does not allow"
            )),
        }
        self
    }

    fn fail(&mut self, problem: String) {
        self.problem.get_or_insert(problem);
    }
}

/// The request for hyper-util's client (TLS upstreams), with the fields the plain path's
/// encoder writes: `user-agent`, and `content-type` for a JSON body (hyper adds `host` and
/// `content-length`).
pub(super) fn client_request(
    method: Method,
    uri: Uri,
    json: bool,
    fields: Vec<(HeaderName, HeaderValue)>,
    body: Vec<u8>,
) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(Bytes::from(body)));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(USER_AGENT, HeaderValue::from_static(AGENT));
    if json {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    for (name, value) in fields {
        if !WRITTEN_BY_THE_ENCODER.contains(&name) {
            headers.insert(name, value);
        }
    }
    request
}

/// Joins a base URL and a path without doubling slashes.
fn join(base: &str, path: &str) -> String {
    let mut url = String::with_capacity(base.len() + path.len());
    url.push_str(base.trim_end_matches('/'));
    url.push_str(path);
    url
}

#[cfg(test)]
mod tests {
    use super::super::pool::tests::IDLE;
    use super::*;

    fn client() -> HttpClient {
        let Ok(client) = HttpClient::new() else {
            panic!("the client builds with the platform's trust store");
        };
        client
    }

    #[test]
    fn keys_travel_in_sensitive_headers_and_bad_values_fail_at_send() {
        let client = client();
        let endpoint = Endpoint::new("http://127.0.0.1:9".into(), None, None, IDLE);
        let request = client
            .post(&endpoint, "/v1/messages")
            .bearer_auth("sk-secret")
            .secret_header(HeaderName::from_static("x-api-key"), "sk-other")
            .header(HeaderName::from_static("anthropic-version"), "2023-06-01")
            .header(HeaderName::from_static("anthropic-version"), "2024-01-01");
        assert_eq!(request.problem, None);
        let field = |name: &str| {
            request
                .fields
                .iter()
                .find(|(set, _)| set == name)
                .map(|(_, value)| value)
        };
        let sensitive = |name: &str| field(name).map(HeaderValue::is_sensitive);
        assert_eq!(sensitive("authorization"), Some(true));
        assert_eq!(sensitive("x-api-key"), Some(true));
        assert_eq!(sensitive("anthropic-version"), Some(false));
        assert_eq!(
            field("anthropic-version").map(HeaderValue::as_bytes),
            Some(&b"2024-01-01"[..]),
            "a field set twice keeps its last value, once"
        );
        assert_eq!(request.fields.len(), 3);
        let broken = client
            .get(&endpoint, "/")
            .bearer_auth("line\nbreak")
            .header(HeaderName::from_static("x-other"), "also\rbad")
            .problem;
        assert_eq!(
            broken.as_deref(),
            Some("the authorization header has a character HTTP does not allow"),
            "the first problem is the one reported"
        );
    }

    fn for_the_client(built: UpstreamRequest<'_>) -> Request<Full<Bytes>> {
        client_request(
            built.method,
            built.uri,
            built.json,
            built.fields,
            built.body,
        )
    }

    /// TLS upstreams get the same fields as plain ones, sensitive ones still marked (HTTP/2
    /// never indexes them), and none of the fields the request writes itself.
    #[test]
    fn the_client_request_carries_the_fields_the_encoder_writes() {
        let client = client();
        let tls = Endpoint::new("https://api.example.com/v1".into(), None, None, IDLE);
        let built = client
            .post(&tls, "/messages")
            .json_bytes(b"{}".to_vec())
            .secret_header(HeaderName::from_static("x-api-key"), "sk-other")
            .header(HeaderName::from_static("anthropic-version"), "2023-06-01")
            .header(CONTENT_TYPE, "text/plain")
            .header(USER_AGENT, "someone-else");
        let request = for_the_client(built);
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "https://api.example.com/v1/messages");
        let headers = request.headers();
        let value = |name| headers.get(name).map(HeaderValue::as_bytes);
        assert_eq!(value("user-agent"), Some(AGENT.as_bytes()));
        assert_eq!(value("content-type"), Some(&b"application/json"[..]));
        assert_eq!(value("anthropic-version"), Some(&b"2023-06-01"[..]));
        assert_eq!(
            headers.get("x-api-key").map(HeaderValue::is_sensitive),
            Some(true)
        );
        assert_eq!(headers.len(), 4, "{headers:?}");
        let health = client.get(&tls, "/models");
        let request = for_the_client(health);
        assert_eq!(
            request.headers().len(),
            1,
            "a GET without a body: user-agent only"
        );
    }

    #[test]
    fn targets_are_joined_under_the_base_url() {
        let client = client();
        let plain = Endpoint::new("http://127.0.0.1:9/v1/".into(), None, None, IDLE);
        let request = client.post(&plain, "/chat/completions");
        assert!(request.plain_pool.is_some());
        assert_eq!(request.uri.to_string(), "/v1/chat/completions");
        let tls = Endpoint::new("https://api.example.com/v1/".into(), None, None, IDLE);
        let request = client.get(&tls, "/models");
        assert!(request.plain_pool.is_none());
        assert_eq!(request.uri.to_string(), "https://api.example.com/v1/models");
        let bad = Endpoint::new("https://exa mple.com".into(), None, None, IDLE);
        let problem = client.get(&bad, "/models").problem;
        assert!(
            problem.is_some_and(|p| p.starts_with("invalid upstream URL")),
            "a URL that does not parse fails at send"
        );
    }
}
