//! The gateway's own HTTP/1.1 listener against the real binary, on raw connections: the
//! connection handling a client library hides (pipelining, HTTP/1.0 keep-alive, HEAD,
//! `Expect: 100-continue`, chunked streams, a client closing mid-request). The refusals of
//! malformed and hostile input are in `hostile.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hapax_tests::raw_http::{PATIENCE, connect, read_response, until_closed};
use hapax_tests::{Gateway, MockUpstream, chat_body, eventually, metric};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHAT: &str = "/v1/chat/completions";
const KEY: &str = "hk-wire-test-key-123";

/// One provider on the mock; client keys required (the key is [`KEY`]).
fn start() -> (MockUpstream, Gateway) {
    let mock = MockUpstream::start();
    let config = format!(
        "server: {{host: 127.0.0.1, port: 0}}\nauth: {{enabled: true, api_keys: [{{name: wire, key: {KEY}}}]}}\nproviders:\n  primary: {{type: openai_compatible, base_url: \"{}\", model: mock-1, health_check: {{enabled: false}}}}\nprovider_preference: [primary]\n",
        mock.openai_base()
    );
    let gateway = Gateway::start(&config);
    (mock, gateway)
}

fn chat_request(body: &str, extra: &str) -> String {
    format!(
        "POST {CHAT} HTTP/1.1\r\nHost: hapax\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (mock, gateway) = start();
    let body = chat_body("first").to_string();
    let mut stream = connect(&gateway).await;
    let pipelined = format!(
        "{}GET /health HTTP/1.1\r\nHost: hapax\r\n\r\nHEAD /health HTTP/1.1\r\nHost: hapax\r\n\r\n{}",
        chat_request(&body, ""),
        chat_request(&body, "Connection: close\r\n"),
    );
    stream.write_all(pipelined.as_bytes()).await.unwrap();

    // The last request asks to close: everything the gateway sends arrives before the end.
    let received = until_closed(&mut stream, PATIENCE).await;
    let answers = split_answers(&received, &[false, false, true, false]);
    let [first, health, head, last] = answers.as_slice() else {
        panic!("4 answers expected: {answers:?}");
    };
    assert!(first.0.starts_with("HTTP/1.1 200"), "{first:?}");
    assert!(first.1.contains("chat.completion"), "{first:?}");
    let lower = first.0.to_ascii_lowercase();
    assert!(
        lower.contains("x-request-id: ") && lower.contains("date: "),
        "{first:?}"
    );
    assert!(
        health.0.starts_with("HTTP/1.1 200") && health.1.contains("ok"),
        "{health:?}"
    );
    // HEAD: the length GET would have, and no body (else the next answer would be garbled).
    assert!(head.0.starts_with("HTTP/1.1 200"), "{head:?}");
    assert!(
        head.0
            .contains(&format!("content-length: {}", health.1.len())),
        "{head:?}"
    );
    assert!(head.1.is_empty());
    assert!(last.0.starts_with("HTTP/1.1 200"), "{last:?}");
    assert!(last.0.contains("connection: close"), "{last:?}");
    assert_eq!(mock.count(CHAT).await, 2);
}

/// Answers one after the other in `bytes`, each as (head, body) by its `content-length`;
/// `bodiless[i]` marks the answer to a HEAD request.
fn split_answers(bytes: &[u8], bodiless: &[bool]) -> Vec<(String, String)> {
    let mut answers = Vec::new();
    let mut rest = bytes;
    for &no_body in bodiless {
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&rest[..end + 4]).into_owned();
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .map_or(0, |n| n.trim().parse().unwrap());
        let length = if no_body { 0 } else { length };
        let body = String::from_utf8_lossy(&rest[end + 4..end + 4 + length]).into_owned();
        rest = &rest[end + 4 + length..];
        answers.push((head, body));
    }
    assert!(
        rest.is_empty(),
        "bytes after the last answer: {:?}",
        String::from_utf8_lossy(rest)
    );
    answers
}

/// The head of one answer that has no body (HEAD), read to its blank line only.
async fn read_response_without_body(stream: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "closed mid-head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn http10_closes_unless_asked_to_keep_alive() {
    let (_mock, gateway) = start();
    let mut stream = connect(&gateway).await;
    stream
        .write_all(b"GET /health HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut stream).await.expect("an answer");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(until_closed(&mut stream, PATIENCE).await.is_empty());

    let mut stream = connect(&gateway).await;
    for _ in 0..2 {
        stream
            .write_all(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let answer = read_response(&mut stream).await.expect("an answer");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("connection"), Some("keep-alive"));
    }
}

#[tokio::test]
async fn continue_is_sent_only_when_the_body_is_wanted() {
    let (mock, gateway) = start();
    let body = chat_body("expecting").to_string();

    // A valid key: `100 Continue`, then the body, then the answer.
    let mut stream = connect(&gateway).await;
    let head = chat_request("", "Expect: 100-continue\r\n").replace(
        "Content-Length: 0",
        &format!("Content-Length: {}", body.len()),
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let interim = read_response_without_body(&mut stream).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    stream.write_all(body.as_bytes()).await.unwrap();
    let answer = read_response(&mut stream).await.expect("the answer");
    assert_eq!(answer.status, 200, "{}", answer.body);

    // No key: the 401 comes first, the body is never asked for, and the connection closes
    // (the unread body cannot be told from a next request).
    let mut stream = connect(&gateway).await;
    let head = head.replace(&format!("Authorization: Bearer {KEY}\r\n"), "");
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_response(&mut stream).await.expect("the 401");
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(answer.header("connection"), Some("close"));
    assert_eq!(mock.count(CHAT).await, 1);
}

#[tokio::test]
async fn a_stream_is_chunked_and_the_connection_is_reused_after_it() {
    let (_mock, gateway) = start();
    let mut body = chat_body("stream me");
    body["stream"] = json!(true);
    let mut stream = connect(&gateway).await;
    stream
        .write_all(chat_request(&body.to_string(), "").as_bytes())
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 8192];
    while !received.ends_with(b"\r\n0\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed mid-stream: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8(received).unwrap();
    let (head, chunks) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    assert!(chunks.contains("data: [DONE]"), "{chunks}");
    // Every chunk's size line matches its data.
    let mut rest = chunks;
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            break;
        }
        assert_eq!(&after[size..size + 2], "\r\n", "chunk of {size} bytes");
        rest = &after[size + 2..];
    }

    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: hapax\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.unwrap().status, 200);
}

#[tokio::test]
async fn a_client_that_closes_mid_request_cancels_it_and_is_logged_as_499() {
    let (mock, gateway) = start();
    mock.set_fault(json!({"route": CHAT, "latency_ms": 3000}))
        .await;
    let body = chat_body("never mind").to_string();
    let mut stream = connect(&gateway).await;
    stream
        .write_all(chat_request(&body, "X-Request-Id: wire-gone-1\r\n").as_bytes())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the request reaches the mock",
        || async { (mock.count(CHAT).await == 1).then_some(()) },
    )
    .await;
    drop(stream);

    let line = eventually(
        Duration::from_secs(2),
        "the cancelled request's log line",
        || {
            let logs = gateway.logs();
            async move {
                logs.lines()
                    .find(|line| line.contains("wire-gone-1") && line.contains("request finished"))
                    .map(str::to_owned)
            }
        },
    )
    .await;
    assert!(
        line.contains("499") && line.contains("client_closed"),
        "{line}"
    );
    let metrics = gateway.metrics().await;
    let active = metric(
        &metrics,
        "hapax_http_active_requests",
        &[("endpoint", CHAT)],
    );
    assert_eq!(active, Some(0.0), "the active gauge came back");
    let closed = metric(
        &metrics,
        "hapax_http_requests_total",
        &[("endpoint", CHAT), ("status", "499")],
    );
    assert_eq!(closed, Some(1.0));
}
