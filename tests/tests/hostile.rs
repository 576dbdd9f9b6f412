//! Hostile input against the real binary: malformed JSON and HTTP, oversized and slow
//! requests, floods of idle connections, and overload. Every case gets a precise 4xx (or the
//! connection is closed where HTTP says so), the gateway never panics, its memory stays
//! bounded, and it goes on serving normal requests. The malformed-HTTP cases are written byte
//! by byte on a raw `TcpStream`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use hapax_tests::raw_http::{connect, raw_exchange, read_response, until_closed};
use hapax_tests::{Gateway, MockUpstream, chat_body, client, eventually, metric};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Upper bound for one exchange: only there so a broken gateway fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(30);
/// How much the gateway's resident memory may grow across the worst cases of a test.
const RSS_BUDGET_KIB: u64 = 100 * 1024;
const CHAT: &str = "/v1/chat/completions";

// === helpers ===

/// One `openai_compatible` provider on the mock, auth off, `server` extended by `server_extra`
/// (flow entries such as `, read_timeout: 1s`).
fn config(mock: &MockUpstream, server_extra: &str) -> String {
    format!(
        "server: {{host: 127.0.0.1, port: 0{server_extra}}}\nauth: {{enabled: false}}\nproviders:\n  primary: {{type: openai_compatible, base_url: \"{}\", model: mock-1, health_check: {{enabled: false}}}}\nprovider_preference: [primary]\n",
        mock.openai_base()
    )
}

fn start(server_extra: &str) -> (MockUpstream, Gateway) {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&config(&mock, server_extra));
    (mock, gateway)
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

fn assert_rss_bounded(gateway: &Gateway, before: u64, what: &str) {
    let after = rss_kib(gateway.process.pid());
    eprintln!(
        "{what}: gateway RSS {before} KiB -> {after} KiB ({:+} KiB)",
        after as i64 - before as i64
    );
    assert!(
        after < before + RSS_BUDGET_KIB,
        "{what}: RSS grew from {before} KiB to {after} KiB"
    );
}

/// The gateway has not panicked and still answers a normal request.
async fn assert_still_serving(gateway: &Gateway) {
    let response = tokio::time::timeout(
        PATIENCE,
        client()
            .post(gateway.url(CHAT))
            .json(&chat_body("still there?"))
            .send(),
    )
    .await
    .expect("a normal request is answered")
    .unwrap();
    assert_eq!(response.status(), 200);
    let logs = gateway.logs();
    assert!(!logs.contains("panicked"), "the gateway panicked:\n{logs}");
}

/// Asserts the status and the one error shape; returns the `error` object.
async fn expect_error(response: reqwest::Response, status: u16) -> Value {
    let actual = response.status().as_u16();
    let text = tokio::time::timeout(PATIENCE, response.text())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(actual, status, "unexpected status; body: {text}");
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    assert!(body["error"]["message"].is_string(), "{text}");
    body["error"].clone()
}

async fn post_bytes(
    gateway: &Gateway,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    tokio::time::timeout(
        PATIENCE,
        client()
            .post(gateway.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send(),
    )
    .await
    .unwrap()
    .unwrap()
}

/// `POST path` with a JSON content type, `Connection: close`, and `body` as is.
fn raw_post(path: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: hapax\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// File descriptors this process may open (the soft `Max open files`).
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|soft| soft.parse().ok())
        })
        .unwrap_or(1024)
}

// === malformed JSON ===

#[tokio::test]
async fn malformed_truncated_and_mistyped_json_is_a_400_naming_the_problem() {
    let (mock, gateway) = start("");
    let cases: &[(&str, &str)] = &[
        ("{", "invalid_json"),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}]"#,
            "invalid_json",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}],}"#,
            "invalid_json",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}]} trailing"#,
            "invalid_json",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}]}{"again": 1}"#,
            "invalid_json",
        ),
        (r#"{'messages': []}"#, "invalid_json"),
        (
            r#"{"messages": [{"role": "user", "content": "unterminated}]}"#,
            "invalid_json",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "bad \q escape"}]}"#,
            "invalid_json",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "\ud800 lone surrogate"}]}"#,
            "invalid_json",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}"#,
            "invalid_json",
        ),
        (
            "\u{feff}{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}",
            "invalid_json",
        ),
        ("null", "invalid_request"),
        ("[]", "invalid_request"),
        (r#""a string""#, "invalid_request"),
        ("{}", "invalid_request"),
        (r#"{"messages": "hi"}"#, "invalid_request"),
        (r#"{"messages": null}"#, "invalid_request"),
        (r#"{"messages": [null]}"#, "invalid_request"),
        (
            r#"{"messages": [{"role": "wizard", "content": "hi"}]}"#,
            "invalid_request",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}"#,
            "invalid_request",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "model": 42}"#,
            "invalid_request",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "messages": []}"#,
            "invalid_request",
        ),
    ];
    for (body, code) in cases {
        let error = expect_error(post_bytes(&gateway, CHAT, body.to_string()).await, 400).await;
        assert_eq!(error["code"], *code, "body {body}: {error}");
        assert_eq!(error["type"], "invalid_request_error");
    }
    for body in [
        r#"{"input": 5}"#,
        r#"{"prompt": {"a": 1}}"#,
        "{\"input\": \"hi\"",
        "7",
    ] {
        let error = expect_error(post_bytes(&gateway, "/v1/completions", body).await, 400).await;
        assert_eq!(
            error["type"], "invalid_request_error",
            "body {body}: {error}"
        );
    }
    assert_eq!(mock.count(CHAT).await, 0);
    assert_still_serving(&gateway).await;
}

#[tokio::test]
async fn huge_numbers_and_absurd_max_tokens_are_a_400_naming_the_field() {
    let (mock, gateway) = start("");
    let with = |field: &str, raw: &str| {
        format!(r#"{{"messages": [{{"role": "user", "content": "hi"}}], "{field}": {raw}}}"#)
    };
    let cases = [
        ("max_tokens", "1e400"),
        ("max_tokens", "1180591620717411303424"), // 2^70
        ("max_tokens", "18446744073709551616"),   // 2^64
        ("max_tokens", "-1"),
        ("max_tokens", "0"),
        ("max_tokens", "1000001"),
        ("max_tokens", "1.5"),
        ("max_tokens", "\"100\""),
        ("max_completion_tokens", "1e400"),
        ("max_completion_tokens", "18446744073709551615"),
        ("temperature", "1e400"),
        ("temperature", "-1e400"),
        ("top_p", "2"),
        ("n", "1099511627776"), // 2^40
        ("seed", "1180591620717411303424"),
    ];
    for (field, raw) in cases {
        let body = with(field, raw);
        let response = post_bytes(&gateway, CHAT, body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        let error = expect_error(response, 400).await;
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(field) || error["code"] == "invalid_json",
            "{body}: the message should name `{field}`: {message}"
        );
    }
    // A vanishingly small number is a valid JSON number: it reads as 0.
    let tiny = with("temperature", "1e-400000");
    assert_eq!(post_bytes(&gateway, CHAT, tiny).await.status(), 200);
    // The legacy completions body goes through the same checks.
    let body = r#"{"prompt": "hi", "max_tokens": 1180591620717411303424}"#;
    expect_error(post_bytes(&gateway, "/v1/completions", body).await, 400).await;
    // A number with a million digits is only slow to reject, not fatal.
    let digits = format!(
        r#"{{"messages": [{{"role": "user", "content": "hi"}}], "max_tokens": {}}}"#,
        "9".repeat(900_000)
    );
    expect_error(post_bytes(&gateway, CHAT, digits).await, 400).await;
    assert_eq!(mock.count(CHAT).await, 1);
    assert_still_serving(&gateway).await;
}

#[tokio::test]
async fn deeply_nested_json_is_a_400_not_a_stack_overflow() {
    let (mock, gateway) = start("");
    let before = rss_kib(gateway.process.pid());
    let depth = 100_000;
    let arrays = "[".repeat(depth);
    let objects = r#"{"a":"#.repeat(depth);
    let prefix = r#"{"messages": [{"role": "user", "content": "hi"}], "#;
    let bodies = [
        arrays.clone(),
        objects.clone(),
        format!("{prefix}\"tools\": {arrays}"),
        format!("{prefix}\"metadata\": {objects}"),
        format!(r#"{{"messages": [{{"role": "user", "content": {arrays}"#),
        // Closed, so only the depth is wrong.
        format!("{prefix}\"tools\": {arrays}{}}}", "]".repeat(depth)),
    ];
    for body in &bodies {
        for path in [CHAT, "/v1/completions"] {
            let error = expect_error(post_bytes(&gateway, path, body.clone()).await, 400).await;
            // A top-level array, and an array of arrays as message content, are refused as
            // the wrong type before they are read further; everything else hits
            // serde_json's recursion limit.
            let wrong_type = body.starts_with('[')
                || body.starts_with(r#"{"messages": [{"role": "user", "content": [["#);
            let code = if wrong_type && path == CHAT {
                "invalid_request"
            } else {
                "invalid_json"
            };
            assert_eq!(error["code"], code, "{path} {}: {error}", &body[..40]);
        }
    }
    // Nesting within serde_json's limit of 128 is accepted and forwarded as is.
    let fine = format!(
        "{prefix}\"metadata\": {}1{}}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    let response = post_bytes(&gateway, CHAT, fine).await;
    assert_eq!(response.status(), 200);
    assert_eq!(mock.count(CHAT).await, 1);
    assert_rss_bounded(&gateway, before, "deep nesting");
    assert_still_serving(&gateway).await;
}

#[tokio::test]
async fn invalid_utf8_in_the_body_and_in_header_values_is_handled_precisely() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&config(&mock, "").replace(
        "auth: {enabled: false}",
        "auth: {api_keys: [{name: tester, key: hk-valid-key-0123}]}",
    ));
    let key = "Authorization: Bearer hk-valid-key-0123\r\n";

    // In a JSON string: not UTF-8, so not JSON.
    let mut body = br#"{"messages": [{"role": "user", "content": "caf"#.to_vec();
    body.extend_from_slice(&[0xC3, 0x28, 0xFF, 0xFE]);
    body.extend_from_slice(br#""}]}"#);
    let response = raw_exchange(&gateway, &raw_post(CHAT, key, &body)).await;
    assert_eq!(response.status, 400, "{}", response.body);
    assert!(response.body.contains("invalid_json"), "{}", response.body);

    // Overlong encoding and a UTF-16 body are not UTF-8 either.
    let overlong = [
        br#"{"messages": [{"role": "user", "content": ""#.as_slice(),
        &[0xC0, 0xAF],
        br#""}]}"#,
    ]
    .concat();
    let response = raw_exchange(&gateway, &raw_post(CHAT, key, &overlong)).await;
    assert_eq!(response.status, 400, "{}", response.body);
    let utf16: Vec<u8> = r#"{"messages": []}"#.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let response = raw_exchange(&gateway, &raw_post(CHAT, key, &utf16)).await;
    assert_eq!(response.status, 400, "{}", response.body);

    let good = serde_json::to_vec(&chat_body("hi")).unwrap();
    let with_header = |name: &str, value: &[u8], auth: bool| {
        let mut extra = format!("{name}: ").into_bytes();
        extra.extend_from_slice(value);
        extra.extend_from_slice(b"\r\n");
        if auth {
            extra.extend_from_slice(key.as_bytes());
        }
        let mut request = format!(
            "POST {CHAT} HTTP/1.1\r\nHost: hapax\r\nContent-Length: {}\r\nConnection: close\r\n",
            good.len()
        )
        .into_bytes();
        if name != "Content-Type" {
            request.extend_from_slice(b"Content-Type: application/json\r\n");
        }
        request.extend_from_slice(&extra);
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(&good);
        request
    };
    // A key that is not UTF-8 is no key: 401.
    let response = raw_exchange(
        &gateway,
        &with_header("Authorization", b"Bearer \xff\xfe\xfd", false),
    )
    .await;
    assert_eq!(response.status, 401, "{}", response.body);
    let response = raw_exchange(
        &gateway,
        &with_header("X-API-Key", b"hk-valid-key-0123\xff", false),
    )
    .await;
    assert_eq!(response.status, 401, "{}", response.body);
    // A content type that is not UTF-8 is not JSON's: 415.
    let response = raw_exchange(
        &gateway,
        &with_header("Content-Type", b"application/json\xff", true),
    )
    .await;
    assert_eq!(response.status, 415, "{}", response.body);
    // A request id that is not UTF-8 is replaced by a fresh one; the request is served.
    let response = raw_exchange(&gateway, &with_header("X-Request-ID", b"id-\xff\xfe", true)).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response
            .header("x-request-id")
            .is_some_and(|id| id.starts_with("req-"))
    );
    // Control characters are not allowed in a header value at all: hyper answers 400.
    let response = raw_exchange(&gateway, &with_header("X-Anything", b"a\x00b", true)).await;
    assert_eq!(response.status, 400);
    // Nor bytes beyond ASCII in a header name or the request target.
    let response = raw_exchange(
        &gateway,
        b"GET /health HTTP/1.1\r\nHost: hapax\r\nX-\xff: 1\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 400);
    let response = raw_exchange(
        &gateway,
        b"GET /v1/\xff\xfe HTTP/1.1\r\nHost: hapax\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 400);

    assert_eq!(
        mock.count(CHAT).await,
        1,
        "only the request with a bad request id went upstream"
    );
    let logs = gateway.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}

// === sizes ===

#[tokio::test]
async fn bodies_over_the_limit_are_refused_without_being_buffered() {
    let (mock, gateway) = start(", max_body_bytes: 65536");
    let before = rss_kib(gateway.process.pid());

    // Declared: 10 GB announced, nothing sent. The answer comes before any body byte.
    let mut stream = connect(&gateway).await;
    stream
        .write_all(format!("POST {CHAT} HTTP/1.1\r\nHost: hapax\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let response = read_response(&mut stream).await.expect("a 413");
    assert_eq!(response.status, 413, "{}", response.body);
    assert!(response.body.contains("payload_too_large"));
    eprintln!("declared 10 GB body refused in {:?}", started.elapsed());

    // Chunked, 64 MiB pushed as fast as possible: refused once 64 KiB have arrived.
    let mut stream = connect(&gateway).await;
    stream
        .write_all(format!("POST {CHAT} HTTP/1.1\r\nHost: hapax\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let pusher = tokio::spawn(async move {
        let chunk = format!("10000\r\n{}\r\n", "a".repeat(0x10000));
        let mut sent = 0usize;
        while sent < 64 * 1024 * 1024 {
            if writer.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
            sent += 0x10000;
        }
        sent
    });
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(PATIENCE, reader.read(&mut buffer))
            .await
            .unwrap()
        {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    let sent = tokio::time::timeout(PATIENCE, pusher)
        .await
        .unwrap()
        .unwrap();
    eprintln!(
        "chunked flood: the client got to push {} KiB before the gateway closed",
        sent / 1024
    );
    assert!(
        sent < 64 * 1024 * 1024,
        "the gateway should stop reading, not drain 64 MiB"
    );

    // A chunk size that overflows is a framing error: 400 from hyper... or, mid-body, a
    // closed connection (the handler has already started).
    let mut stream = connect(&gateway).await;
    stream
        .write_all(format!("POST {CHAT} HTTP/1.1\r\nHost: hapax\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\naaaa\r\n").as_bytes())
        .await
        .unwrap();
    let rest = until_closed(&mut stream, PATIENCE).await;
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );

    // Chunk extensions and trailers are bounded (16 KiB each, by hyper): a flood is a 400.
    for (what, chunked) in [
        (
            "extensions",
            format!("1;{}\r\n{{\r\n0\r\n\r\n", "x".repeat(64 * 1024)),
        ),
        (
            "trailers",
            format!("1\r\n{{\r\n0\r\nX-T: {}\r\n\r\n", "t".repeat(64 * 1024)),
        ),
    ] {
        let request = format!(
            "POST {CHAT} HTTP/1.1\r\nHost: hapax\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"
        );
        let response = raw_exchange(&gateway, request.as_bytes()).await;
        assert_eq!(response.status, 400, "{what}: {}", response.body);
        assert!(
            response.body.contains("could not read the request body"),
            "{what}: {}",
            response.body
        );
    }

    // Chunked framing that a peer ending lines at a bare LF would read otherwise: an LF
    // inside a chunk extension, trailers ended by a bare LF or holding a request line. Each
    // is a 400; nothing after it is served as a request of its own.
    for (what, chunked) in [
        ("an LF in an extension", "2;\n{}\r\n{}\r\n0\r\n\r\n"),
        (
            "a bare LF after the last chunk",
            "2\r\n{}\r\n0\r\n\nGET /v1/models HTTP/1.1\r\nHost: hapax\r\n\r\n",
        ),
        (
            "a request line as a trailer",
            "2\r\n{}\r\n0\r\nGET /v1/models HTTP/1.1\r\n\r\n",
        ),
    ] {
        let request = format!(
            "POST {CHAT} HTTP/1.1\r\nHost: hapax\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"
        );
        let mut stream = connect(&gateway).await;
        stream.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut stream).await.expect("an answer");
        assert_eq!(response.status, 400, "{what}: {}", response.body);
        assert!(
            response.body.contains("could not read the request body"),
            "{what}: {}",
            response.body
        );
        assert!(
            read_response(&mut stream).await.is_none(),
            "{what}: the connection closes after the 400, answering nothing else"
        );
    }

    assert_eq!(mock.count(CHAT).await, 0);
    assert_rss_bounded(&gateway, before, "oversized bodies");
    assert_still_serving(&gateway).await;
}

#[tokio::test]
async fn oversized_headers_are_a_431_and_an_oversized_uri_a_414() {
    let (mock, gateway) = start(", max_header_bytes: 131072");
    let before = rss_kib(gateway.process.pid());

    // One header larger than max_header_bytes.
    let big = format!(
        "GET /health HTTP/1.1\r\nHost: hapax\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let response = raw_exchange(&gateway, big.as_bytes()).await;
    assert_eq!(response.status, 431);
    // Refused before routing, yet observed like any answer: an id to quote, a count, a log line.
    let id = response
        .header("x-request-id")
        .expect("a request id")
        .to_owned();

    // Many small headers adding up to more than max_header_bytes.
    let many: String = (0..20_000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!("GET /health HTTP/1.1\r\nHost: hapax\r\n{many}\r\n");
    let response = raw_exchange(&gateway, request.as_bytes()).await;
    assert_eq!(response.status, 431);

    // More header fields than hyper parses (100), though small: 431 too.
    let fields: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!("GET /health HTTP/1.1\r\nHost: hapax\r\n{fields}\r\n");
    let response = raw_exchange(&gateway, request.as_bytes()).await;
    assert_eq!(response.status, 431);

    // A request target beyond 64 KiB (within the header budget): 414 URI Too Long.
    let request = format!(
        "GET /{} HTTP/1.1\r\nHost: hapax\r\n\r\n",
        "a".repeat(70_000)
    );
    let response = raw_exchange(&gateway, request.as_bytes()).await;
    assert_eq!(response.status, 414);

    // Just under the limits is served.
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: hapax\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let response = raw_exchange(&gateway, request.as_bytes()).await;
    assert_eq!(response.status, 200);

    assert_ne!(
        response.header("x-request-id"),
        Some(id.as_str()),
        "every answer, refused or served, has its own id"
    );

    let metrics = gateway.metrics().await;
    let refused = |status: &str| {
        metric(
            &metrics,
            "hapax_http_requests_total",
            &[
                ("endpoint", "other"),
                ("status", status),
                ("protocol", "h1"),
            ],
        )
    };
    assert_eq!(refused("431"), Some(3.0), "{metrics}");
    assert_eq!(refused("414"), Some(1.0), "{metrics}");
    let errors = |kind: &str| metric(&metrics, "hapax_errors_total", &[("type", kind)]);
    assert_eq!(errors("headers_too_large"), Some(3.0), "{metrics}");
    assert_eq!(errors("uri_too_long"), Some(1.0), "{metrics}");
    let line = eventually(Duration::from_secs(5), "the refusal's log line", || async {
        gateway
            .logs()
            .lines()
            .find(|line| line.contains(&id))
            .map(str::to_owned)
    })
    .await;
    assert!(
        line.contains("\"status\":431") && line.contains("\"method\":\"GET\""),
        "{line}"
    );
    assert!(
        !line.contains("aaaa"),
        "the refused head is not logged: {line}"
    );

    assert_eq!(mock.count(CHAT).await, 0);
    assert_rss_bounded(&gateway, before, "oversized headers");
    assert_still_serving(&gateway).await;
}

#[tokio::test]
async fn ten_thousand_and_one_messages_is_a_400_and_ten_thousand_are_served() {
    let (mock, gateway) = start(", max_body_bytes: 4194304");
    let message = json!({"role": "user", "content": "a"});
    let body = |n: usize| json!({"model": "mock-1", "messages": vec![message.clone(); n]});
    let error = expect_error(
        post_bytes(&gateway, CHAT, serde_json::to_vec(&body(10_001)).unwrap()).await,
        400,
    )
    .await;
    let text = error["message"].as_str().unwrap();
    assert!(
        text.contains("messages") && text.contains("10000"),
        "{text}"
    );
    expect_error(
        post_bytes(
            &gateway,
            "/v1/completions",
            serde_json::to_vec(&json!({"messages": vec![message.clone(); 10_001]})).unwrap(),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(mock.count(CHAT).await, 0);
    let response = post_bytes(&gateway, CHAT, serde_json::to_vec(&body(10_000)).unwrap()).await;
    assert_eq!(response.status(), 200);
    // A message without content, or a role only, is named.
    let error = expect_error(
        post_bytes(
            &gateway,
            CHAT,
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "user"}]}"#,
        )
        .await,
        400,
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("messages[1]"),
        "{error}"
    );
    assert_still_serving(&gateway).await;
}

// === slow clients ===

#[tokio::test]
async fn slow_drip_headers_are_cut_off_by_the_read_timeout() {
    let (_mock, gateway) = start(", read_timeout: 1s");
    // Slowloris: a byte every 200 ms, the header block never finished.
    let mut stream = connect(&gateway).await;
    stream
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: hapax\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut closed_after = None;
    let mut buffer = [0u8; 1024];
    while started.elapsed() < Duration::from_secs(10) {
        if stream.write_all(b"a").await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer)).await {
            Err(_) => {}
            Ok(Ok(0) | Err(_)) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(Ok(n)) => {
                let text = String::from_utf8_lossy(&buffer[..n]);
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
            }
        }
    }
    let closed_after = closed_after.expect("the server closed the slow connection");
    eprintln!("slowloris headers: closed after {closed_after:?} (read_timeout 1s)");
    assert!(closed_after < Duration::from_secs(5), "{closed_after:?}");

    // A connection that never sends anything is closed the same way.
    let mut idle = connect(&gateway).await;
    let started = Instant::now();
    until_closed(&mut idle, Duration::from_secs(10)).await;
    eprintln!("silent connection: closed after {:?}", started.elapsed());
    // And so is a kept-alive connection that goes quiet after a request.
    let mut kept = connect(&gateway).await;
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: hapax\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut kept).await.expect("a response").status,
        200
    );
    let started = Instant::now();
    until_closed(&mut kept, Duration::from_secs(10)).await;
    eprintln!(
        "idle keep-alive connection: closed after {:?}",
        started.elapsed()
    );
    assert_still_serving(&gateway).await;
}

#[tokio::test]
async fn slow_drip_body_is_a_408() {
    let (mock, gateway) = start(", read_timeout: 1s");
    for framing in ["Content-Length: 1000", "Transfer-Encoding: chunked"] {
        let mut stream = connect(&gateway).await;
        stream
            .write_all(format!("POST {CHAT} HTTP/1.1\r\nHost: hapax\r\nContent-Type: application/json\r\n{framing}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let started = Instant::now();
        let (mut reader, mut writer) = stream.into_split();
        let chunked = framing.contains("chunked");
        let dripper = tokio::spawn(async move {
            for _ in 0..50 {
                let piece: &[u8] = if chunked { b"1\r\n{\r\n" } else { b"{" };
                if writer.write_all(piece).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        while !received.windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buffer)).await {
                Ok(Ok(0) | Err(_)) | Err(_) => break,
                Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            }
        }
        let elapsed = started.elapsed();
        let text = String::from_utf8_lossy(&received);
        eprintln!("slow body ({framing}): answered after {elapsed:?}");
        assert!(text.starts_with("HTTP/1.1 408"), "{framing}: {text}");
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
        dripper.abort();
    }
    assert_eq!(mock.count(CHAT).await, 0);
    assert_still_serving(&gateway).await;
}

#[tokio::test]
async fn thousands_of_idle_connections_do_not_block_a_normal_request() {
    let (_mock, gateway) = start("");
    // Both ends count against the same limit (the gateway inherits it); leave headroom for
    // the other tests of this binary that run alongside.
    let limit = open_files_limit();
    let count = 2000.min(limit.saturating_sub(1024) / 2).max(500);
    eprintln!("open files limit {limit}: opening {count} idle connections");
    let before = rss_kib(gateway.process.pid());
    let mut idle = Vec::with_capacity(count);
    for _ in 0..count {
        idle.push(connect(&gateway).await);
    }
    // Half of them have started a request and stopped mid-headers.
    for stream in idle.iter_mut().step_by(2) {
        stream
            .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: ha")
            .await
            .unwrap();
    }
    let metrics = gateway.metrics().await;
    let open = metric(&metrics, "hapax_tcp_connections", &[]).unwrap_or(0.0);
    assert!(
        open >= count as f64,
        "{open} connections open, {count} expected"
    );

    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        client()
            .post(gateway.url(CHAT))
            .json(&chat_body("among the idle"))
            .send(),
    )
    .await
    .expect("answered within 5 s")
    .unwrap();
    let latency = started.elapsed();
    eprintln!("a request among {count} idle connections took {latency:?}");
    assert_eq!(response.status(), 200);
    assert_rss_bounded(&gateway, before, &format!("{count} idle connections"));
    drop(idle);
    assert_still_serving(&gateway).await;
}

// === HTTP framing and routing ===

#[tokio::test]
async fn conflicting_content_length_and_transfer_encoding_are_refused_or_closed() {
    let (mock, gateway) = start("");
    let body = serde_json::to_string(&chat_body("hi")).unwrap();
    let head = format!("POST {CHAT} HTTP/1.1\r\nHost: hapax\r\nContent-Type: application/json\r\n");
    // Two different lengths, a malformed length, a length with a sign: 400 from hyper.
    for framing in [
        format!(
            "Content-Length: {}\r\nContent-Length: {}\r\n",
            body.len(),
            body.len() + 1
        ),
        format!("Content-Length: {}, {}\r\n", body.len(), body.len() + 1),
        "Content-Length: 12abc\r\n".to_owned(),
        format!("Content-Length: +{}\r\n", body.len()),
        "Content-Length: -1\r\n".to_owned(),
        "Content-Length: 99999999999999999999999\r\n".to_owned(),
        // A transfer coding that is not chunked last cannot be framed.
        "Transfer-Encoding: gzip\r\n".to_owned(),
        "Transfer-Encoding: chunked, gzip\r\n".to_owned(),
    ] {
        let request = format!("{head}{framing}\r\n{body}");
        let response = raw_exchange(&gateway, request.as_bytes()).await;
        assert_eq!(response.status, 400, "{framing}");
    }
    // Transfer-Encoding does not exist in HTTP/1.0.
    let request = format!(
        "POST {CHAT} HTTP/1.0\r\nHost: hapax\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    assert_eq!(raw_exchange(&gateway, request.as_bytes()).await.status, 400);

    // Both Content-Length and Transfer-Encoding: chunked (a request-smuggling shape). RFC 9112
    // lets the server read it by Transfer-Encoding only if it then closes the connection;
    // hyper does, so a request hidden after the chunked body is never read.
    let smuggled = "GET /v1/models HTTP/1.1\r\nHost: hapax\r\n\r\n";
    let request = format!(
        "{head}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n{smuggled}",
        body.len()
    );
    let mut stream = connect(&gateway).await;
    stream.write_all(request.as_bytes()).await.unwrap();
    let response = read_response(&mut stream).await.expect("one response");
    assert_eq!(
        response.status, 200,
        "read by its chunked framing: {}",
        response.body
    );
    assert_eq!(response.header("connection"), Some("close"));
    let rest = until_closed(&mut stream, PATIENCE).await;
    assert!(
        rest.is_empty(),
        "the smuggled request was answered: {}",
        String::from_utf8_lossy(&rest)
    );
    assert_eq!(mock.count(CHAT).await, 1);
    assert_still_serving(&gateway).await;
}

#[tokio::test]
async fn unknown_methods_and_paths_get_404_405_or_400() {
    let (mock, gateway) = start("");
    let cases: &[(&str, u16)] = &[
        ("FOO /v1/chat/completions HTTP/1.1", 405),
        ("DELETE /v1/chat/completions HTTP/1.1", 405),
        ("TRACE /v1/chat/completions HTTP/1.1", 405),
        ("PUT /metrics HTTP/1.1", 405),
        ("BREW /coffee HTTP/1.1", 404),
        (
            "GET /v1/chat/completions/../../admin/breakers HTTP/1.1",
            404,
        ),
        ("GET /%2e%2e/admin/breakers HTTP/1.1", 404),
        ("GET /v1/nothing?x=%00%ff HTTP/1.1", 404),
        ("OPTIONS * HTTP/1.1", 404),
        ("G@T /health HTTP/1.1", 400),
        ("GET /health HTTP/9.9", 400),
        ("GET /health", 400),
        // hyper takes a target without its leading slash; it names no route.
        ("GET health HTTP/1.1", 404),
    ];
    for (line, status) in cases {
        let request =
            format!("{line}\r\nHost: hapax\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let response = raw_exchange(&gateway, request.as_bytes()).await;
        assert_eq!(response.status, *status, "{line}: {}", response.body);
        if response.status != 400 {
            let body: Value = serde_json::from_str(&response.body)
                .unwrap_or_else(|_| panic!("{line}: {}", response.body));
            assert!(body["error"]["code"].is_string(), "{line}: {body}");
        }
    }
    // Garbage instead of HTTP.
    let mut stream = connect(&gateway).await;
    stream
        .write_all(&[
            0x16, 0x03, 0x01, 0x00, 0xff, 0x01, 0x00, 0x00, 0xfb, 0x03, 0x03,
        ])
        .await
        .unwrap();
    let rest = until_closed(&mut stream, PATIENCE).await;
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
    assert_eq!(mock.count(CHAT).await, 0);
    assert_still_serving(&gateway).await;
}

// === overload ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_the_in_flight_cap_requests_are_shed_at_once_with_retry_after() {
    let (mock, gateway) = start(", max_inflight_requests: 4");
    mock.set_fault(json!({"route": CHAT, "latency_ms": 500}))
        .await;
    let url = gateway.url(CHAT);
    // Distinct prompts, so deduplication does not merge them.
    let burst = (0..20).map(|i| {
        let request = client().post(&url).json(&chat_body(&format!("burst {i}")));
        async move {
            let started = Instant::now();
            let response = request.send().await.unwrap();
            let elapsed = started.elapsed();
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = response.json().await.unwrap();
            (status, elapsed, retry_after, body)
        }
    });
    let results = futures_util::future::join_all(burst).await;
    let shed: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    let served: Vec<_> = results.iter().filter(|r| r.0 == 200).collect();
    assert_eq!(
        shed.len() + served.len(),
        20,
        "only 200 and 503: {results:?}"
    );
    assert!(
        served.len() >= 4,
        "at least the cap is served: {}",
        served.len()
    );
    assert!(!shed.is_empty(), "some requests are shed");
    for (_, _, retry_after, body) in &shed {
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert_eq!(body["error"]["code"], "overloaded", "{body}");
        assert_eq!(body["error"]["type"], "service_unavailable");
    }
    let slowest_shed = shed.iter().map(|r| r.1).max().unwrap();
    let fastest_served = served.iter().map(|r| r.1).min().unwrap();
    eprintln!(
        "cap 4, 20 concurrent, upstream 500 ms: {} served (fastest {fastest_served:?}), {} shed (slowest {slowest_shed:?}, median {:?})",
        served.len(),
        shed.len(),
        {
            let mut times: Vec<_> = shed.iter().map(|r| r.1).collect();
            times.sort();
            times[times.len() / 2]
        }
    );
    assert!(
        slowest_shed < fastest_served,
        "a shed answer does not wait for the upstream"
    );
    let metrics = gateway.metrics().await;
    assert_eq!(
        metric(&metrics, "hapax_load_shed_total", &[("endpoint", CHAT)]),
        Some(shed.len() as f64)
    );

    // After the burst, every request within the cap succeeds again.
    let again = (0..4).map(|i| {
        client()
            .post(&url)
            .json(&chat_body(&format!("after {i}")))
            .send()
    });
    for response in futures_util::future::join_all(again).await {
        assert_eq!(response.unwrap().status(), 200);
    }

    // Streams hold their place until their last chunk.
    mock.set_fault(json!({"route": CHAT, "chunk_delay_ms": 100}))
        .await;
    let mut streams = Vec::new();
    for i in 0..4 {
        let mut body = chat_body(&format!("stream {i} words:15"));
        body["stream"] = json!(true);
        let response = client().post(&url).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
        streams.push(response);
    }
    let response = client()
        .post(&url)
        .json(&chat_body("one more"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503, "4 open streams fill the cap");
    // Health, metrics and admin are not capped.
    assert_eq!(
        client()
            .get(gateway.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(gateway.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(gateway.url("/admin/breakers"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for stream in streams {
        let text = stream.text().await.unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    }
    mock.clear_faults().await;
    eventually(Duration::from_secs(5), "the permits come back", || async {
        let response = client()
            .post(gateway.url(CHAT))
            .json(&chat_body("free"))
            .send()
            .await
            .ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    // A client that hangs up mid-stream gives its place back too.
    mock.set_fault(json!({"route": CHAT, "chunk_delay_ms": 200}))
        .await;
    for i in 0..4 {
        let mut body = chat_body(&format!("abandoned {i} words:50"));
        body["stream"] = json!(true);
        let response = client().post(&url).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
        drop(response);
    }
    mock.clear_faults().await;
    eventually(
        Duration::from_secs(5),
        "abandoned streams release their permits",
        || async {
            let response = client()
                .post(gateway.url(CHAT))
                .json(&chat_body("free again"))
                .send()
                .await
                .ok()?;
            (response.status() == 200).then_some(())
        },
    )
    .await;
    assert_still_serving(&gateway).await;
}

#[tokio::test]
async fn over_the_connection_cap_new_connections_are_closed_at_once() {
    let (_mock, gateway) = start(", max_connections: 20");
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(connect(&gateway).await);
    }
    // The listener accepts in order, so these 20 hold every slot once accepted.
    eventually(
        Duration::from_secs(5),
        "the 21st connection is closed at once",
        || async {
            let mut extra = connect(&gateway).await;
            let started = Instant::now();
            let _ = extra
                .write_all(b"GET /health HTTP/1.1\r\nHost: hapax\r\n\r\n")
                .await;
            let rest = until_closed(&mut extra, Duration::from_secs(10)).await;
            let elapsed = started.elapsed();
            eprintln!("connection over the cap closed after {elapsed:?}");
            (rest.is_empty() && elapsed < Duration::from_secs(2)).then_some(())
        },
    )
    .await;
    // One goes away: a new connection is served again.
    idle.pop();
    eventually(
        Duration::from_secs(5),
        "a freed slot serves a new connection",
        || async {
            let mut stream = connect(&gateway).await;
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: hapax\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let response = read_response(&mut stream).await?;
            (response.status == 200).then_some(response)
        },
    )
    .await;
    drop(idle);
    let metrics = eventually(
        Duration::from_secs(5),
        "the idle connections are gone",
        || async {
            let metrics = client()
                .get(gateway.url("/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (metric(&metrics, "hapax_tcp_connections", &[])? <= 2.0).then_some(metrics)
        },
    )
    .await;
    let refused = metric(&metrics, "hapax_tcp_connections_refused_total", &[]).unwrap();
    assert!(refused >= 1.0, "{refused}");
    assert_still_serving(&gateway).await;
}
