//! The headers the gateway adds to the answers it serves: who served it (`X-Hapax-Provider`,
//! `X-Hapax-Attempts`, `X-Hapax-Deduplicated`), the rate-limit figures (`X-RateLimit-*`), the
//! cache's verdict (`X-Hapax-Cache`) and the request id (`X-Request-ID`).
//!
//! Handlers record them as figures in the request's outcome, not as header values in the
//! answer's map: the plain HTTP/1.1 listener writes them straight into the answer's head and
//! the HTTP/3 listener into the answer's header section (digits formatted in place, no value
//! allocated, no name hashed); the TLS listener, through hyper, receives them in the header
//! map. Inserting eight headers into a map cost ~3.5k instructions a request over HTTP/1.1
//! (~3.2k over HTTP/3), most of it hashing and probing.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::number_header::number_header;
use super::request_id;
use super::scope::ServedBy;
use crate::ratelimit::RateLimitHeaders;

const X_HAPAX_PROVIDER: HeaderName = HeaderName::from_static("x-hapax-provider");
const X_HAPAX_ATTEMPTS: HeaderName = HeaderName::from_static("x-hapax-attempts");
const X_HAPAX_DEDUPLICATED: HeaderName = HeaderName::from_static("x-hapax-deduplicated");

/// What the gateway says about an answer in its headers, in the order they are written.
#[derive(Debug, Default, Clone)]
pub struct GatewayHeaders {
    pub served: Option<ServedBy>,
    /// The answer was shared with an identical request in flight.
    pub deduplicated: bool,
    pub limits: Option<RateLimitHeaders>,
    /// The cache's verdict (`hit`, `miss`, `bypass`), when the endpoint consults it.
    pub cache: Option<&'static str>,
    pub request_id: Option<Arc<str>>,
}

impl GatewayHeaders {
    /// Appends the headers as HTTP/1.1 lines (`name: value\r\n`) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.for_each_field(|name, value| {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        });
    }

    /// Each header's name and value, in the order they are written, for a listener that
    /// writes them itself (HTTP/1.1 lines, an HTTP/3 header section). A value no header may
    /// carry (a provider's name, a request id) is left out, as the map leaves it out.
    pub fn for_each_field(&self, mut field: impl FnMut(&[u8], &[u8])) {
        let mut digits = itoa::Buffer::new();
        if let Some(served) = &self.served {
            if is_header_value(served.provider.as_bytes()) {
                field(b"x-hapax-provider", served.provider.as_bytes());
            }
            field(
                b"x-hapax-attempts",
                digits.format(served.attempts).as_bytes(),
            );
        }
        if self.deduplicated {
            field(b"x-hapax-deduplicated", b"true");
        }
        if let Some(limits) = &self.limits {
            limits.for_each(|name, figure| {
                field(name.as_str().as_bytes(), digits.format(figure).as_bytes());
            });
        }
        if let Some(cache) = self.cache {
            field(b"x-hapax-cache", cache.as_bytes());
        }
        if let Some(id) = self
            .request_id
            .as_deref()
            .filter(|id| is_header_value(id.as_bytes()))
        {
            field(b"x-request-id", id.as_bytes());
        }
    }

    /// Whether the block writes a header named `name`: the listener that writes the block
    /// leaves a map's header of that name out, so the block's value replaces it, as
    /// [`Self::insert_into`] does.
    pub fn overrides(&self, name: &HeaderName) -> bool {
        let name = name.as_str();
        if !name.starts_with("x-") {
            return false; // the usual case (content type, Alt-Svc): one comparison
        }
        match name {
            "x-hapax-provider" => self
                .served
                .as_ref()
                .is_some_and(|served| is_header_value(served.provider.as_bytes())),
            "x-hapax-attempts" => self.served.is_some(),
            "x-hapax-deduplicated" => self.deduplicated,
            "x-hapax-cache" => self.cache.is_some(),
            "x-request-id" => self
                .request_id
                .as_deref()
                .is_some_and(|id| is_header_value(id.as_bytes())),
            _ => self.limits.as_ref().is_some_and(|limits| {
                let mut written = false;
                limits.for_each(|limit, _| written |= limit.as_str() == name);
                written
            }),
        }
    }

    /// Inserts the headers into `headers` (replacing any of the same names), for the
    /// listeners that hand a header map on.
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        if let Some(served) = &self.served {
            if let Ok(value) = HeaderValue::from_str(&served.provider) {
                headers.insert(X_HAPAX_PROVIDER, value);
            }
            headers.insert(X_HAPAX_ATTEMPTS, number_header(u64::from(served.attempts)));
        }
        if self.deduplicated {
            headers.insert(X_HAPAX_DEDUPLICATED, HeaderValue::from_static("true"));
        }
        if let Some(limits) = &self.limits {
            limits.apply(headers);
        }
        if let Some(cache) = self.cache {
            headers.insert(crate::cache::HEADER, HeaderValue::from_static(cache));
        }
        if let Some(id) = &self.request_id
            && let Ok(value) = HeaderValue::from_str(id)
        {
            headers.insert(request_id::HEADER, value);
        }
    }
}

/// What `HeaderValue::from_str` accepts: no control byte but tab. A value from elsewhere (a
/// provider's name, a request id) that fails it is left out, as the map leaves it out.
fn is_header_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn every_header() -> GatewayHeaders {
        GatewayHeaders {
            served: Some(ServedBy {
                provider: Arc::from("primary"),
                attempts: 2,
            }),
            deduplicated: true,
            limits: Some(RateLimitHeaders {
                limit: 100_000_000,
                remaining: 99_999_998,
                reset_secs: 0,
                token_limit: Some(5000),
                token_remaining: Some(12),
            }),
            cache: Some("miss"),
            request_id: Some(Arc::from("req-1")),
        }
    }

    /// The lines written into an HTTP/1.1 head, as `name: value` pairs.
    fn encoded(headers: &GatewayHeaders) -> Vec<(String, String)> {
        let mut out = Vec::new();
        headers.encode(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(text.is_empty() || text.ends_with("\r\n"));
        text.split_terminator("\r\n")
            .map(|line| {
                let (name, value) = line.split_once(": ").unwrap();
                (name.to_owned(), value.to_owned())
            })
            .collect()
    }

    /// The same headers through the header map.
    fn mapped(headers: &GatewayHeaders) -> Vec<(String, String)> {
        let mut map = HeaderMap::new();
        headers.insert_into(&mut map);
        map.iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.to_string(), value)
            })
            .collect()
    }

    /// The same headers as the HTTP/3 listener writes them.
    fn fields(headers: &GatewayHeaders) -> Vec<(String, String)> {
        let mut out = Vec::new();
        headers.for_each_field(|name, value| {
            let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
            out.push((text(name), text(value)));
        });
        out
    }

    #[test]
    fn the_head_and_the_map_carry_the_same_headers_in_the_same_order() {
        let every = every_header();
        assert_eq!(encoded(&every), mapped(&every));
        assert_eq!(fields(&every), mapped(&every));
        assert_eq!(
            encoded(&every)
                .iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>(),
            [
                "x-hapax-provider",
                "x-hapax-attempts",
                "x-hapax-deduplicated",
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-hapax-cache",
                "x-request-id",
            ]
        );
        assert_eq!(encoded(&every)[3].1, "100000000");
        let plain = GatewayHeaders {
            limits: None,
            deduplicated: false,
            ..every_header()
        };
        assert_eq!(encoded(&plain), mapped(&plain));
        assert!(encoded(&GatewayHeaders::default()).is_empty());
    }

    #[test]
    fn a_value_no_header_may_carry_is_left_out_of_both() {
        let bad = GatewayHeaders {
            served: Some(ServedBy {
                provider: Arc::from("bad\nname"),
                attempts: 1,
            }),
            ..GatewayHeaders::default()
        };
        assert_eq!(encoded(&bad), mapped(&bad));
        assert_eq!(fields(&bad), mapped(&bad));
        assert_eq!(encoded(&bad), [("x-hapax-attempts".into(), "1".into())]);
    }

    #[test]
    fn request_ids_pass_as_the_map_lets_them_and_overrides_say_what_is_written() {
        for (id, kept) in [
            ("req-1", true),
            ("tab\there", true),
            ("caf\u{e9}", true),
            ("del\u{7f}", false),
            ("nul\u{0}", false),
            ("cr\rlf", false),
        ] {
            let headers = GatewayHeaders {
                request_id: Some(Arc::from(id)),
                ..GatewayHeaders::default()
            };
            assert_eq!(encoded(&headers), mapped(&headers), "{id:?}");
            assert_eq!(fields(&headers), mapped(&headers), "{id:?}");
            assert_eq!(encoded(&headers).len(), usize::from(kept), "{id:?}");
            assert_eq!(headers.overrides(&request_id::HEADER), kept, "{id:?}");
        }
        let every = every_header();
        let written: Vec<String> = encoded(&every).into_iter().map(|(name, _)| name).collect();
        for name in written {
            assert!(
                every.overrides(&HeaderName::from_bytes(name.as_bytes()).unwrap()),
                "{name}"
            );
        }
        let none = GatewayHeaders::default();
        for name in [
            "x-hapax-provider",
            "x-ratelimit-limit",
            "x-request-id",
            "content-type",
        ] {
            assert!(!none.overrides(&HeaderName::from_static(name)), "{name}");
        }
        let no_tokens = GatewayHeaders {
            limits: Some(RateLimitHeaders {
                token_limit: None,
                token_remaining: None,
                ..every.limits.unwrap()
            }),
            ..GatewayHeaders::default()
        };
        assert!(no_tokens.overrides(&HeaderName::from_static("x-ratelimit-reset")));
        assert!(!no_tokens.overrides(&HeaderName::from_static("x-ratelimit-limit-tokens")));
        assert!(!every.overrides(&HeaderName::from_static("x-other")));
    }
}
