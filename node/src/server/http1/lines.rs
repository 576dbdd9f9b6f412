//! A request head's header fields read where they sit in the head, for the chat endpoint:
//! no map is built, no value is shared out of the head, nothing is hashed.

use bytes::Bytes;
use http::HeaderName;

use super::head::HeaderSpan;
use crate::wire::headers::RequestHeaders;

/// The header fields of one head, in the order sent. A lookup compares names, without case,
/// along the lines: a chat request carries half a dozen fields and reads each once or twice.
#[derive(Debug)]
pub struct HeadLines {
    /// The head, and the request's body after it when the body came whole with the head.
    head: Bytes,
    /// Where the body starts in `head` (its length when it holds no body).
    body_at: usize,
    /// Name start and length, value start and length, in `head`.
    spans: Box<[HeaderSpan]>,
}

impl HeadLines {
    /// The fields at `spans` of `head`, as the head's parse found them; a body from `body_at`.
    pub fn new(head: Bytes, body_at: usize, spans: &[HeaderSpan]) -> Self {
        Self {
            head,
            body_at,
            spans: spans.into(),
        }
    }

    /// Whether the request's body came whole with the head ([`RequestHeaders::whole_body`]).
    pub fn holds_body(&self) -> bool {
        self.head.len() > self.body_at
    }

    /// Every field as sent: its name (in the case sent) and value.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans
            .iter()
            .map(|&(name_at, name_len, value_at, value_len)| {
                (
                    self.slice(name_at, name_len),
                    self.slice(value_at, value_len),
                )
            })
    }

    /// The values of the fields named `wanted` (lowercase). Names are told apart by length
    /// first, from the spans alone: most differ there.
    fn named<'a, 'w>(&'a self, wanted: &'w [u8]) -> impl Iterator<Item = &'a [u8]> + use<'a, 'w> {
        self.spans
            .iter()
            .filter(move |&&(name_at, name_len, _, _)| {
                if name_len != wanted.len() {
                    return false;
                }
                // Many clients send names in lowercase (Python's h11 and Node's undici do):
                // a plain comparison first, the case-blind one only when that fails.
                let sent = self.slice(name_at, name_len);
                sent == wanted || sent.eq_ignore_ascii_case(wanted)
            })
            .map(|&(_, _, value_at, value_len)| self.slice(value_at, value_len))
    }

    fn slice(&self, at: usize, len: usize) -> &[u8] {
        // The spans are the head's own: always in it.
        self.head.get(at..at + len).unwrap_or_default()
    }
}

impl RequestHeaders for HeadLines {
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        self.named(name.as_str().as_bytes()).next()
    }

    fn all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.named(name.as_str().as_bytes())
    }

    fn whole_body(&self) -> Option<Bytes> {
        self.holds_body().then(|| self.head.slice(self.body_at..))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use bytes::BytesMut;
    use http::header::{CONTENT_TYPE, HOST};

    use super::*;
    use crate::server::http1::head::{
        HeadScratch, ParsedHead, parse_request_head, parse_routed_head,
    };

    const MAX: usize = 128 * 1024;

    fn routed(head: &[u8]) -> Result<Option<ParsedHead>, String> {
        let mut buf = BytesMut::from(head);
        parse_routed_head(&mut buf, MAX, &mut HeadScratch::default()).map_err(|e| e.to_string())
    }

    fn mapped(head: &[u8]) -> Result<Option<http::HeaderMap>, String> {
        let parsed = parse_request_head(&mut BytesMut::from(head), MAX);
        let parsed = parsed.map_err(|e| e.to_string())?;
        Ok(parsed.map(|head| head.request.into_parts().0.headers))
    }

    #[test]
    fn a_chat_heads_fields_read_in_place_as_from_its_map() {
        let head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nCONTENT-type:  application/json \r\nx-custom: a\r\nCache-Control: no-cache\r\nX-Custom: b\r\nX-Bin: caf\xc3\xa9\r\nX-Empty:\r\nContent-Length: 2\r\n\r\n{}";
        let Some(ParsedHead::Chat(chat)) = routed(head).unwrap() else {
            panic!("a chat completion's head is read in place");
        };
        let map = mapped(head).unwrap().unwrap();
        let fields = &chat.request.fields;
        assert_eq!(fields.iter().count(), map.len());
        let names = [
            "host",
            "content-type",
            "cache-control",
            "x-custom",
            "x-bin",
            "x-empty",
            "content-length",
            "x-absent",
            "authorization",
        ];
        for name in names.map(HeaderName::from_static) {
            assert_eq!(fields.first(&name), map.first(&name), "{name}");
            assert_eq!(fields.first_str(&name), map.first_str(&name), "{name}");
            let in_place: Vec<_> = fields.all(&name).collect();
            let from_map: Vec<_> = map.all(&name).collect();
            assert_eq!(in_place, from_map, "{name}");
        }
        assert_eq!(fields.first(&CONTENT_TYPE), Some(&b"application/json"[..]));
        assert_eq!(fields.first(&HOST), Some(&b"h"[..]));
        assert_eq!(fields.first_str(&HeaderName::from_static("x-bin")), None);
        assert_eq!(chat.framing, crate::wire::http1::Framing::Length(2));
        assert!(chat.keep_alive);
    }

    #[test]
    fn a_chat_body_all_there_comes_with_its_head_and_a_partial_one_stays_behind() {
        let head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nContent-Length: 7\r\n\r\n";
        let mut scratch = HeadScratch::default();
        let parse = |buf: &mut BytesMut, scratch: &mut HeadScratch| match parse_routed_head(
            buf, MAX, scratch,
        ) {
            Ok(Some(ParsedHead::Chat(chat))) => chat.request.fields,
            other => panic!("a chat head: {other:?}"),
        };
        // Whole, with the next request's first bytes behind it.
        let mut buf = BytesMut::from(&[&head[..], b"{\"a\":1}POST /"].concat()[..]);
        let fields = parse(&mut buf, &mut scratch);
        assert!(fields.holds_body());
        assert_eq!(fields.whole_body().as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(fields.first(&HOST), Some(&b"h"[..]));
        assert_eq!(&buf[..], b"POST /");
        // Cut short: the body is read from the buffer and the socket later.
        let mut buf = BytesMut::from(&[&head[..], b"{\"a\""].concat()[..]);
        let fields = parse(&mut buf, &mut scratch);
        assert!(!fields.holds_body());
        assert_eq!(fields.whole_body(), None);
        assert_eq!(&buf[..], b"{\"a\"");
        // Routed heads leave their body in the buffer whole or not.
        let mut buf = BytesMut::from(
            &b"POST /v1/completions HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}"[..],
        );
        let routed = parse_routed_head(&mut buf, MAX, &mut scratch);
        assert!(matches!(routed, Ok(Some(ParsedHead::Routed(_)))));
        assert_eq!(&buf[..], b"{}");
    }

    #[test]
    fn only_a_post_to_exactly_the_chat_target_is_read_in_place() {
        for head in [
            &b"GET /v1/chat/completions HTTP/1.1\r\nHost: h\r\n\r\n"[..],
            b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: h\r\n\r\n",
            b"POST /v1/chat/completions/ HTTP/1.1\r\nHost: h\r\n\r\n",
            b"POST /v1/completions HTTP/1.1\r\nHost: h\r\n\r\n",
            b"POST http://h/v1/chat/completions HTTP/1.1\r\nHost: h\r\n\r\n",
            b"post /v1/chat/completions HTTP/1.1\r\nHost: h\r\n\r\n",
        ] {
            let parsed = routed(head).unwrap().unwrap();
            assert!(
                matches!(parsed, ParsedHead::Routed(_)),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    /// Read in place, a field is never checked as a map's name or value: httparse must refuse
    /// every byte that `HeaderName` or `HeaderValue` would.
    #[test]
    fn httparse_takes_only_the_names_and_values_a_map_takes() {
        for byte in 0..=u8::MAX {
            let value = [
                &b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nX-V: a"[..],
                &[byte],
                b"b\r\n\r\n",
            ]
            .concat();
            let name = [
                &b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nX-"[..],
                &[byte],
                b"N: v\r\n\r\n",
            ]
            .concat();
            for head in [value, name] {
                let in_place = routed(&head);
                let in_a_map = mapped(&head);
                assert_eq!(
                    in_place.is_ok(),
                    in_a_map.is_ok(),
                    "byte {byte:#04x}: {in_a_map:?}"
                );
                if let Ok(parsed) = in_place {
                    assert!(
                        matches!(parsed, Some(ParsedHead::Chat(_))),
                        "byte {byte:#04x}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_name_longer_than_a_map_takes_is_refused_read_in_place_or_not() {
        for (len, taken) in [(65_535, true), (65_536, false)] {
            let head = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\n{}: v\r\n\r\n",
                "n".repeat(len)
            );
            let in_place = routed(head.as_bytes());
            let in_a_map = mapped(head.as_bytes());
            assert_eq!(in_place.is_ok(), taken, "{len}");
            assert_eq!(in_a_map.is_ok(), taken, "{len}");
            if !taken {
                assert_eq!(in_place.err().as_deref(), Some("invalid header name"));
            }
        }
    }
}
