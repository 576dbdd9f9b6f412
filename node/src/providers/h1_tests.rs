use super::*;
use crate::wire::http1::MAX_LINE_BYTES;
use bytes::Bytes;

fn buf(bytes: &[u8]) -> BytesMut {
    BytesMut::from(bytes)
}

fn head(bytes: &[u8]) -> Result<Option<AnswerHead>, String> {
    parse_head(&mut buf(bytes))
}

/// The whole body of `answer` arriving `step` bytes at a time, as reads would bring it.
fn body_in_steps(answer: &[u8], step: usize) -> Result<Vec<u8>, String> {
    crate::fuzzing::read_upstream_answer(answer.chunks(step)).map(|(_, body)| body)
}

fn encoded(
    method: &Method,
    target: &str,
    json: bool,
    fields: &[(HeaderName, HeaderValue)],
    body: &[u8],
) -> String {
    let request = PlainRequest {
        method,
        target,
        json,
        fields,
        body,
    };
    let mut out = b"left as it was|".to_vec();
    encode_request(&mut out, &request, b"mock:8000");
    let Some(rest) = out.strip_prefix(b"left as it was|") else {
        panic!("the request is appended to what the buffer held");
    };
    String::from_utf8_lossy(rest).into_owned()
}

#[test]
fn a_request_is_one_buffer_with_its_length() {
    let fields = [
        (HOST, HeaderValue::from_static("ignored")),
        (CONTENT_LENGTH, HeaderValue::from_static("999")),
        (TRANSFER_ENCODING, HeaderValue::from_static("chunked")),
        (
            HeaderName::from_static("x-api-key"),
            HeaderValue::from_static("k"),
        ),
    ];
    let agent = concat!("user-agent: hapax/", env!("CARGO_PKG_VERSION"), "\r\n");
    assert_eq!(
        encoded(&Method::POST, "/v1/chat/completions", true, &fields, b"{}"),
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: mock:8000\r\n{agent}\
             content-type: application/json\r\nx-api-key: k\r\ncontent-length: 2\r\n\r\n{{}}"
        )
    );
    assert_eq!(
        encoded(&Method::GET, "/api/tags", false, &[], b""),
        format!("GET /api/tags HTTP/1.1\r\nhost: mock:8000\r\n{agent}\r\n")
    );
    assert_eq!(
        encoded(&Method::POST, "/", false, &[], b""),
        format!("POST / HTTP/1.1\r\nhost: mock:8000\r\n{agent}content-length: 0\r\n\r\n")
    );
}

/// The buffer is sized once, exactly: no growth (a second allocation and a copy) midway, and
/// a kept buffer's capacity says how large a request it held.
#[test]
fn a_request_reserves_exactly_its_length() {
    let auth = [(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer k"),
    )];
    for (method, json, fields, body) in [
        (Method::POST, true, &auth[..], vec![b'x'; 10_000]),
        (Method::POST, true, &[][..], b"{}".to_vec()),
        (Method::POST, false, &auth[..], Vec::new()),
        (Method::GET, false, &[][..], Vec::new()),
    ] {
        let request = PlainRequest {
            method: &method,
            target: "/v1/chat/completions",
            json,
            fields,
            body: &body,
        };
        let mut out = Vec::new();
        encode_request(&mut out, &request, b"127.0.0.1:8000");
        assert_eq!(
            out.capacity(),
            out.len(),
            "{method} with {} bytes",
            body.len()
        );
    }
}

/// Fields the encoder writes from the request's parts are written once, its way.
#[test]
fn fields_the_encoder_writes_are_not_taken_from_the_list() {
    let fields = [
        (CONTENT_TYPE, HeaderValue::from_static("text/plain")),
        (USER_AGENT, HeaderValue::from_static("someone-else")),
    ];
    let text = encoded(&Method::POST, "/", true, &fields, b"{}");
    assert_eq!(text.matches("content-type").count(), 1, "{text}");
    assert!(
        text.contains("content-type: application/json\r\n"),
        "{text}"
    );
    assert_eq!(text.matches("user-agent").count(), 1, "{text}");
    assert!(!text.contains("someone-else"), "{text}");
}

#[test]
fn a_head_is_parsed_once_complete_and_removed() {
    let whole = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 2\r\n\r\nok";
    for cut in 0..whole.len() - 2 {
        assert!(matches!(head(&whole[..cut]), Ok(None)), "cut at {cut}");
    }
    let mut read = buf(whole);
    let parsed = parse_head(&mut read).ok().flatten();
    let Some(parsed) = parsed else {
        panic!("a complete head parses");
    };
    assert_eq!(parsed.status, StatusCode::OK);
    assert_eq!(parsed.framing, Framing::Length(2));
    assert_eq!(parsed.content_length(), Some(2));
    assert!(parsed.reusable);
    assert!(parsed.headers.is_empty(), "a success keeps no headers");
    assert_eq!(&read[..], b"ok");
}

#[test]
fn informational_heads_are_skipped_and_errors_keep_their_headers() {
    let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
        HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 0\r\n\r\n";
    let parsed = head(answer).ok().flatten();
    let Some(parsed) = parsed else {
        panic!("the final head parses");
    };
    assert_eq!(parsed.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        parsed.headers.get("retry-after").map(HeaderValue::as_bytes),
        Some(&b"7"[..])
    );
    assert_eq!(parsed.framing, Framing::Length(0));
    assert!(BodyDecoder::new(parsed.framing).is_done());
}

#[test]
fn framing_and_reuse_follow_rfc_9112() {
    let framing = |bytes: &[u8]| head(bytes).ok().flatten().map(|h| (h.framing, h.reusable));
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
        Some((Framing::Chunked, true))
    );
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n"),
        Some((Framing::Chunked, true))
    );
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n"),
        Some((Framing::UntilClose, false))
    );
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"),
        Some((Framing::Chunked, false)),
        "framed both ways: read by the coding, then closed"
    );
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\n\r\n"),
        Some((Framing::UntilClose, false))
    );
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\ncontent-length: 1\r\n\r\n"),
        Some((Framing::Length(1), false))
    );
    assert_eq!(
        framing(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n"),
        Some((Framing::Length(1), false))
    );
    assert_eq!(
        framing(b"HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n"),
        Some((Framing::Empty, true))
    );
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n"),
        Some((Framing::Length(3), true))
    );
}

#[test]
fn an_upstreams_keep_alive_timeout_is_read() {
    let timeout = |field: &str| {
        let bytes = format!("HTTP/1.1 200 OK\r\n{field}\r\ncontent-length: 0\r\n\r\n");
        head(bytes.as_bytes())
            .ok()
            .flatten()
            .map(|h| h.idle_timeout)
    };
    let seconds = |s| Some(Some(Duration::from_secs(s)));
    assert_eq!(timeout("Keep-Alive: timeout=5, max=100"), seconds(5));
    assert_eq!(timeout("keep-alive: max=5,TIMEOUT=30"), seconds(30));
    assert_eq!(timeout("Keep-Alive: timeout=\"7\""), seconds(7));
    assert_eq!(timeout("Keep-Alive: timeout = 8 ,max=1"), seconds(8));
    assert_eq!(timeout("Keep-Alive: timeout=0"), seconds(0));
    assert_eq!(
        timeout("Keep-Alive: timeout=99999999"),
        seconds(24 * 60 * 60)
    );
    for none in [
        "Keep-Alive: max=5",
        "Keep-Alive: timeout=5s",
        "Keep-Alive: timeout=-1",
        "x: timeout=5",
    ] {
        assert_eq!(timeout(none), Some(None), "{none}");
    }
}

#[test]
fn malformed_heads_are_errors_that_say_why() {
    let error = |bytes: &[u8]| head(bytes).err().unwrap_or_default();
    assert!(
        error(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n")
            .contains("two different content-lengths")
    );
    assert!(
        error(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n").contains("invalid content-length")
    );
    assert!(
        error(b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n")
            .contains("invalid content-length")
    );
    assert!(error(b"SMTP ready\r\n\r\n").contains("malformed"));
    assert!(error(b"HTTP/1.1 101 Switching Protocols\r\n\r\n").contains("switched protocols"));
    assert!(error(b"HTTP/1.1 099 Odd\r\n\r\n").contains("status 99"));
    let mut huge = b"HTTP/1.1 200 OK\r\nx-filler: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
    assert!(error(&huge).contains("larger than"));
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    many.extend(b"x: 1\r\n".repeat(MAX_HEADERS + 1));
    many.extend_from_slice(b"\r\n");
    assert!(error(&many).contains("too many headers"));
}

#[test]
fn bodies_decode_alike_however_the_bytes_arrive() {
    let cases: &[(&[u8], &[u8])] = &[
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello world",
            b"hello world",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5\r\nhello\r\n1;ext=\"x\"\r\n \r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n",
            b"hello 0123456789",
        ),
        (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", b"until the end"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
    ];
    for (answer, body) in cases {
        for step in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(
                body_in_steps(answer, step).as_deref(),
                Ok(*body),
                "{} in steps of {step}",
                String::from_utf8_lossy(answer)
            );
        }
    }
}

#[test]
fn a_body_decoder_stops_at_its_end_and_leaves_the_rest() {
    let mut read = buf(b"5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK");
    let mut decoder = BodyDecoder::new(Framing::Chunked);
    assert_eq!(
        decoder.decode(&mut read),
        Ok(Decoded::Data(Bytes::from_static(b"hello")))
    );
    assert_eq!(decoder.decode(&mut read), Ok(Decoded::End));
    assert!(decoder.is_done());
    assert_eq!(&read[..], b"HTTP/1.1 200 OK");
    let mut read = buf(b"abcdef");
    let mut decoder = BodyDecoder::new(Framing::Length(4));
    assert_eq!(
        decoder.decode(&mut read),
        Ok(Decoded::Data(Bytes::from_static(b"abcd")))
    );
    assert_eq!(decoder.decode(&mut read), Ok(Decoded::End));
    assert_eq!(&read[..], b"ef");
}

#[test]
fn cut_or_broken_bodies_are_errors() {
    let cut = body_in_steps(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", 4);
    assert!(cut.is_err_and(|e| e.contains("before the body's end")));
    let cut_chunk = body_in_steps(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
        4,
    );
    assert!(cut_chunk.is_err_and(|e| e.contains("before the body's end")));
    let no_crlf = body_in_steps(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhiX\r\n0\r\n\r\n",
        64,
    );
    assert!(no_crlf.is_err_and(|e| e.contains("no CRLF")));
    // A size line without digits is not the last chunk (RFC 9112 §7.1: 1*HEXDIG).
    for size_line in [&b"zz\r\n"[..], b"\r\n\r\n", b";ext\r\n\r\n"] {
        let mut answer =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec();
        answer.extend_from_slice(size_line);
        for step in [1, 64] {
            let bad_size = body_in_steps(&answer, step);
            assert!(
                bad_size.is_err_and(|e| e.contains("invalid chunk size")),
                "{size_line:?} in steps of {step}"
            );
        }
    }
    // Line ends other than CRLF, and trailers that are not fields: a peer that ends lines at a
    // bare LF (RFC 9112 §2.2 lets it) would frame these bodies differently (smuggling).
    for (body, fault) in [
        (&b"2;\nXX\r\nYY\r\n0\r\n\r\n"[..], "bare CR or LF"),
        (b"2;a\rb\r\nhi\r\n0\r\n\r\n", "invalid chunk size"), // httparse's own refusal
        (
            b"2\r\nhi\r\n0\r\n\nGET /s HTTP/1.1\r\n\r\n",
            "does not end in CRLF",
        ),
        (b"2\r\nhi\r\n0\r\nx-t: 1\n\r\n", "does not end in CRLF"),
        (
            b"2\r\nhi\r\n0\r\nGET /s HTTP/1.1\r\n\r\n",
            "not a header field",
        ),
        (b"2\r\nhi\r\n0\r\n: no name\r\n\r\n", "not a header field"),
    ] {
        let mut answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        answer.extend_from_slice(body);
        for step in [1, 3, 64] {
            let read = body_in_steps(&answer, step);
            assert!(
                read.as_ref().is_err_and(|e| e.contains(fault)),
                "{} in steps of {step}: {read:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
    let mut long_line = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1;".to_vec();
    long_line.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 10));
    let long = body_in_steps(&long_line, 1024);
    assert!(long.is_err_and(|e| e.contains("too long")));
}
