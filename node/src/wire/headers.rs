//! A request's header fields as the handlers read them, whichever listener read the request.
//!
//! The TLS and HTTP/3 listeners (hyper, h3) hand over a [`HeaderMap`], as the plain HTTP/1.1
//! listener does for every route but one: for exactly `POST /v1/chat/completions` it hands the
//! head's own lines (`crate::server::http1::lines::HeadLines`). Building a map costs a hash,
//! a probe and a shared value for every field, and the chat path reads half a dozen of them
//! once each.

use bytes::Bytes;
use http::{HeaderMap, HeaderName};

/// The header fields of one request.
pub trait RequestHeaders: Sync {
    /// The first field named `name`, as sent.
    fn first(&self, name: &HeaderName) -> Option<&[u8]>;

    /// Every field named `name`, in the order sent.
    fn all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a;

    /// The first field named `name` when it is visible ASCII: what
    /// [`http::HeaderValue::to_str`] accepts.
    fn first_str(&self, name: &HeaderName) -> Option<&str> {
        self.first(name).and_then(visible_ascii)
    }

    /// The request's body when the listener read it whole with the head and kept it beside
    /// the fields (the plain HTTP/1.1 listener's usual case): taken as it is, without a body
    /// to poll, a timer or a box. `None`: the body is to be read.
    fn whole_body(&self) -> Option<Bytes> {
        None
    }
}

impl RequestHeaders for HeaderMap {
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        self.get(name).map(|value| value.as_bytes())
    }

    fn all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name).iter().map(|value| value.as_bytes())
    }
}

/// `value` as text when every byte is visible ASCII or a tab, as [`http::HeaderValue::to_str`]
/// requires; `None` otherwise (obs-text, for one).
pub fn visible_ascii(value: &[u8]) -> Option<&str> {
    if !value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return None;
    }
    std::str::from_utf8(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn visible_ascii_accepts_what_to_str_accepts() {
        for byte in 0..=u8::MAX {
            let value = [b'a', byte, b'b'];
            let Ok(header) = HeaderValue::from_bytes(&value) else {
                continue; // not a value a map can hold
            };
            assert_eq!(
                visible_ascii(&value),
                header.to_str().ok(),
                "byte {byte:#04x}"
            );
        }
    }

    #[test]
    fn a_map_gives_the_first_and_every_value_in_order() {
        let mut map = HeaderMap::new();
        let name = HeaderName::from_static("cache-control");
        map.append(&name, HeaderValue::from_static("no-cache"));
        map.append(&name, HeaderValue::from_static("no-store"));
        assert_eq!(map.first(&name), Some(&b"no-cache"[..]));
        assert_eq!(
            map.all(&name).collect::<Vec<_>>(),
            [&b"no-cache"[..], b"no-store"]
        );
        let absent = HeaderName::from_static("x-absent");
        assert_eq!(map.first(&absent), None);
        assert_eq!(map.all(&absent).count(), 0);
    }
}
