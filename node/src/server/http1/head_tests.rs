#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

const MAX: usize = 64 * 1024;

fn parse(bytes: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    parse_request_head(&mut BytesMut::from(bytes), MAX)
}

fn complete(bytes: &[u8]) -> RequestHead {
    parse(bytes).unwrap().expect("a complete head")
}

fn refusal(bytes: &[u8]) -> HeadError {
    parse(bytes).expect_err("a refused head")
}

#[test]
fn a_head_is_parsed_and_removed_leaving_the_body_and_what_follows() {
    let mut buf = BytesMut::from(
        &b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: hapax\r\nContent-Type: application/json\r\nX-Twice: a\r\nx-twice: b\r\nContent-Length: 2\r\n\r\n{}GET /health HTTP/1.1\r\n\r\n"[..],
    );
    let head = parse_request_head(&mut buf, MAX).unwrap().unwrap();
    assert_eq!(head.request.method(), Method::POST);
    assert_eq!(head.request.uri().path(), "/v1/chat/completions");
    assert_eq!(head.request.uri().query(), Some("x=1"));
    assert_eq!(head.request.version(), Version::HTTP_11);
    assert_eq!(head.request.headers()["content-type"], "application/json");
    let twice: Vec<_> = head.request.headers().get_all("x-twice").iter().collect();
    assert_eq!(twice, ["a", "b"]);
    assert_eq!(head.framing, Framing::Length(2));
    assert!(head.keep_alive);
    assert!(!head.expect_continue);
    assert_eq!(&buf[..], b"{}GET /health HTTP/1.1\r\n\r\n");
}

#[test]
fn an_incomplete_head_waits_for_more_until_it_is_over_the_limit() {
    assert!(
        parse(b"GET /health HTTP/1.1\r\nHost: ha")
            .unwrap()
            .is_none()
    );
    assert!(parse(b"").unwrap().is_none());
    let long = format!(
        "GET /health HTTP/1.1\r\nHost: h\r\nX-Big: {}",
        "a".repeat(MAX)
    );
    assert_eq!(refusal(long.as_bytes()), HeadError::TooLarge(MAX));
    let complete_but_large = format!(
        "GET /health HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "a".repeat(MAX)
    );
    assert_eq!(
        refusal(complete_but_large.as_bytes()).status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
}

#[test]
fn too_many_fields_a_long_target_and_garbage_are_refused_with_their_status() {
    let fields: String = (0..=MAX_HEADERS)
        .map(|i| format!("X-H{i}: v\r\n"))
        .collect();
    let many = format!("GET / HTTP/1.1\r\nHost: h\r\n{fields}\r\n");
    assert_eq!(refusal(many.as_bytes()), HeadError::TooManyHeaders);
    let target = format!(
        "GET /{} HTTP/1.1\r\nHost: h\r\n\r\n",
        "a".repeat(MAX_URI_BYTES)
    );
    let error = parse_request_head(&mut BytesMut::from(target.as_bytes()), 128 * 1024).unwrap_err();
    assert_eq!(error.status(), StatusCode::URI_TOO_LONG);
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..], // a TLS hello on the plain port
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Space : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Cr: a\rb\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
    ] {
        let error = refusal(garbage);
        assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{error}");
    }
}

#[test]
fn framing_that_could_smuggle_a_request_is_refused_or_closes_the_connection() {
    for framing in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 5, 6\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 5a\r\n",
        "Content-Length: 99999999999999999999\r\n",
        "Transfer-Encoding: gzip\r\n",
        "Transfer-Encoding: chunked, gzip\r\n",
    ] {
        let request = format!("POST / HTTP/1.1\r\nHost: h\r\n{framing}\r\n");
        assert_eq!(
            refusal(request.as_bytes()).status(),
            StatusCode::BAD_REQUEST,
            "{framing}"
        );
    }
    let old = refusal(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert!(old.to_string().contains("HTTP/1.0"), "{old}");

    // The same length twice is one length.
    let same =
        complete(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(same.framing, Framing::Length(5));
    // Both ways: read as chunked, and the connection closes after the answer.
    let both = complete(
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(both.framing, Framing::Chunked);
    assert!(!both.keep_alive);
    let coded = complete(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n");
    assert_eq!(coded.framing, Framing::Chunked);
    assert!(coded.keep_alive);
    // No framing header: no body.
    assert_eq!(
        complete(b"POST / HTTP/1.1\r\nHost: h\r\n\r\n").framing,
        Framing::Length(0)
    );
}

#[test]
fn keep_alive_and_expect_follow_the_version_and_the_headers() {
    assert!(!complete(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n").keep_alive);
    assert!(
        !complete(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade, close\r\n\r\n").keep_alive
    );
    assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
    // `close` wins over `keep-alive`, in one line or across two.
    assert!(!complete(b"GET / HTTP/1.0\r\nConnection: close, keep-alive\r\n\r\n").keep_alive);
    assert!(
        !complete(b"GET / HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n")
            .keep_alive
    );
    let old = complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert!(old.keep_alive);
    assert_eq!(old.request.version(), Version::HTTP_10);
    assert!(
        complete(
            b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n"
        )
        .expect_continue
    );
    assert!(!complete(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue);
    assert!(!complete(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: something\r\n\r\n").expect_continue);
}

#[test]
fn targets_in_absolute_and_asterisk_form_are_kept() {
    let absolute = complete(b"GET http://hapax:8080/health HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(absolute.request.uri().path(), "/health");
    assert_eq!(absolute.request.uri().host(), Some("hapax"));
    let asterisk = complete(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(asterisk.request.uri(), "*");
    assert_eq!(
        refusal(b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n").status(),
        StatusCode::BAD_REQUEST
    );
}

fn encoded(framing: BodyFraming, keep_alive: bool, http10: bool, headers: &HeaderMap) -> String {
    encoded_with(
        framing,
        keep_alive,
        http10,
        headers,
        &GatewayHeaders::default(),
    )
}

fn encoded_with(
    framing: BodyFraming,
    keep_alive: bool,
    http10: bool,
    headers: &HeaderMap,
    gateway: &GatewayHeaders,
) -> String {
    let mut out = Vec::new();
    encode_response_head(
        &mut out,
        StatusCode::OK,
        headers,
        gateway,
        framing,
        keep_alive,
        http10,
        b"Sun, 06 Nov 1994 08:49:37 GMT",
    );
    String::from_utf8(out).unwrap()
}

#[test]
fn the_gateways_headers_follow_the_maps_and_replace_those_of_the_same_name() {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("x-request-id", HeaderValue::from_static("from-the-map"));
    headers.insert("x-hapax-cache", HeaderValue::from_static("kept"));
    let gateway = GatewayHeaders {
        request_id: Some(std::sync::Arc::from("req-7")),
        ..GatewayHeaders::default()
    };
    assert_eq!(
        encoded_with(BodyFraming::Length(2), true, false, &headers, &gateway),
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-hapax-cache: kept\r\n\
         x-request-id: req-7\r\ncontent-length: 2\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"
    );
}

#[test]
fn a_response_head_carries_the_listeners_framing_only() {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("content-length", HeaderValue::from_static("999"));
    headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    headers.insert("connection", HeaderValue::from_static("keep-alive"));
    assert_eq!(
        encoded(BodyFraming::Length(2), true, false, &headers),
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"
    );
    // A handler's own Date is sent instead of the listener's.
    let mut dated = HeaderMap::new();
    dated.insert(
        "date",
        HeaderValue::from_static("Mon, 07 Nov 1994 08:49:37 GMT"),
    );
    let dated = encoded(BodyFraming::Length(0), true, false, &dated);
    assert_eq!(dated.matches("date: ").count(), 1, "{dated}");
    assert!(dated.contains("date: Mon, 07 Nov"), "{dated}");
    let streamed = encoded(BodyFraming::Chunked, false, false, &HeaderMap::new());
    assert!(
        streamed.contains("transfer-encoding: chunked\r\nconnection: close\r\n"),
        "{streamed}"
    );
    let old = encoded(BodyFraming::UntilClose, false, true, &HeaderMap::new());
    assert!(
        !old.contains("content-length") && !old.contains("transfer-encoding"),
        "{old}"
    );
    assert!(old.contains("connection: close"), "{old}");
    let old_kept = encoded(BodyFraming::Length(0), true, true, &HeaderMap::new());
    assert!(old_kept.contains("connection: keep-alive"), "{old_kept}");
    let head = encoded(BodyFraming::None(Some(7)), true, false, &HeaderMap::new());
    assert!(head.contains("content-length: 7"), "{head}");
    let no_content = encoded(BodyFraming::None(None), true, false, &HeaderMap::new());
    assert!(!no_content.contains("content-length"), "{no_content}");
}

#[test]
fn refusals_are_the_gateways_json_error_shape() {
    let body = error_body(&HeadError::UriTooLong);
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["error"]["code"], "uri_too_long");
    assert_eq!(value["error"]["type"], "invalid_request_error");
    assert!(
        value["error"]["message"]
            .as_str()
            .unwrap()
            .contains("65534")
    );
}

#[test]
fn a_refusal_does_not_depend_on_how_the_head_arrived() {
    // 101 fields whose last starts past the limit: too large, whether the bytes come at once
    // or a few at a time (found by the fuzz target).
    let fields: String = (0..=MAX_HEADERS)
        .map(|i| format!("X-Field-{i:03}: v\r\n"))
        .collect();
    let request = format!("GET / HTTP/1.1\r\nHost: h\r\n{fields}\r\n");
    let max = request.len() - 20;
    let at_once = crate::fuzzing::read_client_requests([request.as_bytes()], max, false);
    let in_pieces = crate::fuzzing::read_client_requests(request.as_bytes().chunks(7), max, true);
    assert_eq!(at_once, in_pieces);
    assert!(at_once.unwrap_err().contains("larger than"));
}

#[test]
fn heads_read_as_a_connection_read_as_each_on_its_own() {
    // Names the connection kept from the last head, in other places, other cases, fewer and
    // more of them, a custom one renamed, duplicates; and more headers than a kept map holds.
    let many: String = (0..20).map(|i| format!("X-Many-{i}: {i}\r\n")).collect();
    let requests = [
        "POST /a HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nX-Hapax-Dedup: off\r\nContent-Length: 2\r\n\r\n{}".to_owned(),
        "POST /a HTTP/1.1\r\nhost: h\r\ncontent-type: text/plain\r\nx-hapax-dedup: on\r\ncontent-length: 3\r\n\r\n[1]".to_owned(),
        // Chat completions: their fields read in place on the connection's side.
        "POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nX-Hapax-Dedup: off\r\nContent-Type: application/json\r\nx-hapax-dedup: on\r\nContent-Length: 2\r\n\r\n{}".to_owned(),
        "POST /v1/chat/completions HTTP/1.0\r\nCONTENT-LENGTH: 0\r\nConnection: keep-alive\r\nX-Tab:\tin caf\u{e9} the middle\r\n\r\n".to_owned(),
        "GET /l HTTP/1.1\r\nhost: h\r\nX-A-Name-Longer-Than-Thirty-Two-Bytes: 1\r\nx-hapax-dedup: on\r\n\r\n".to_owned(),
        "GET /l HTTP/1.1\r\nhost: h\r\nX-A-Name-Longer-Than-Thirty-Two-Bytes: 2\r\nx-hapax-dedup: on\r\n\r\n".to_owned(),
        "GET /b HTTP/1.1\r\nX-Hapax-Dedup: off\r\nHost: h\r\nX-Hapax-Cache: no\r\nAccept: */*\r\nAccept: text/html\r\n\r\n".to_owned(),
        "GET /c HTTP/1.1\r\nHost: h\r\n\r\n".to_owned(),
        format!("GET /d HTTP/1.1\r\nHost: h\r\n{many}\r\n"),
        "GET /e HTTP/1.1\r\nHOST: h\r\nX-Many-0: again\r\nConnection: close\r\n\r\n".to_owned(),
    ];
    let stream = requests.concat();
    let kept = crate::fuzzing::read_client_requests([stream.as_bytes()], MAX, true).unwrap();
    let fresh = crate::fuzzing::read_client_requests([stream.as_bytes()], MAX, false).unwrap();
    assert_eq!(kept.len(), requests.len());
    assert_eq!(kept, fresh);
    let names = |at: usize| -> Vec<&str> { kept[at].2.iter().map(|(n, _)| n.as_str()).collect() };
    assert_eq!(
        names(1),
        ["host", "content-type", "x-hapax-dedup", "content-length"]
    );
    assert_eq!(
        names(2),
        [
            "host",
            "x-hapax-dedup",
            "x-hapax-dedup",
            "content-type",
            "content-length"
        ]
    );
    assert_eq!(
        kept[3].2[2],
        (
            "x-tab".to_owned(),
            "in caf\u{e9} the middle".as_bytes().to_vec()
        )
    );
    assert_eq!(
        names(5),
        [
            "host",
            "x-a-name-longer-than-thirty-two-bytes",
            "x-hapax-dedup"
        ]
    );
    assert_eq!(names(9), ["host", "x-many-0", "connection"]);
}

#[test]
fn a_refused_head_logs_its_method_when_it_has_one() {
    assert_eq!(method_of(b"GET /a HTTP/1.1\r\nHost: h\r\n"), Method::GET);
    assert_eq!(method_of(b"PURGE / HTTP/1.1"), "PURGE");
    for unreadable in [
        &b""[..],
        b"GET",
        b" / HTTP/1.1",
        b"G\x01T / HTTP/1.1",
        &[b'A'; 40],
    ] {
        assert_eq!(method_of(unreadable), "-", "{unreadable:?}");
    }
}

#[test]
fn a_head_refused_after_it_was_parsed_leaves_its_bytes_for_the_refusals_method() {
    // httparse takes `<` in a target and `http::Uri` does not: the refusal comes after the
    // head was split off; the method logged must still be this request's, not the next one's.
    let mut buf = BytesMut::from(
        &b"PUT /a<b HTTP/1.1\r\nHost: x\r\n\r\nDELETE /x HTTP/1.1\r\nHost: x\r\n\r\n"[..],
    );
    let error = parse_request_head(&mut buf, MAX).expect_err("an invalid target");
    assert!(
        error.to_string().contains("invalid request target"),
        "{error}"
    );
    assert_eq!(method_of(&buf), Method::PUT);
    assert!(buf.starts_with(b"PUT /a<b HTTP/1.1\r\n"));
}

#[test]
fn an_http11_request_needs_exactly_one_host() {
    let missing = refusal(b"GET /health HTTP/1.1\r\nAccept: */*\r\n\r\n");
    assert!(missing.to_string().contains("needs a Host"), "{missing}");
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    let twice = refusal(b"GET /health HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n");
    assert!(twice.to_string().contains("more than one Host"), "{twice}");
    let twice_10 = refusal(b"GET /health HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n");
    assert!(
        twice_10.to_string().contains("more than one Host"),
        "{twice_10}"
    );
    // HTTP/1.0 predates Host: it may leave it out.
    assert_eq!(
        complete(b"GET /health HTTP/1.0\r\n\r\n").request.version(),
        Version::HTTP_10
    );
}
