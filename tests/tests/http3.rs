//! HTTP/3 and TLS scenarios against the real binary: the API over QUIC through the same
//! router as TCP (plain and streamed completions, errors, many streams on one connection,
//! 0-RTT replay protection, graceful drain), Alt-Svc and HTTP/2 on the TCP side, and
//! certificate problems refused with the key, the file and the reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use hapax_tests::h3_client::{self, H3Client};
use hapax_tests::raw_http::{RawResponse, read_response};
use hapax_tests::{
    Gateway, MockUpstream, chat_body, client, eventually, hapax_bin, metric, settled_metrics,
    sse_data,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHAT: &str = "/v1/chat/completions";
const KEY: &str = "hk-http3-test";

struct Certs {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

/// A development certificate made by `hapax gen-cert`.
fn dev_certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = h3_client::gen_cert(dir.path());
    Certs { dir, cert, key }
}

/// A gateway with HTTP/3 on a free UDP port, one openai-compatible provider on `mock`,
/// `server_extra` inside `server:` and `extra` at the top level.
fn config(
    certs: &Certs,
    mock: &MockUpstream,
    http3_extra: &str,
    server_extra: &str,
    extra: &str,
) -> String {
    format!(
        r#"
server:
  host: 127.0.0.1
  port: 0
  shutdown_timeout: 10s
  http3: {{enabled: true, port: 0, tls_cert_file: "{cert}", tls_key_file: "{key}"{http3_extra}}}
{server_extra}
logging: {{level: info}}
providers:
  primary: {{type: openai_compatible, base_url: "{base}", model: mock-1, timeout: 5s}}
provider_preference: [primary]
{extra}
"#,
        cert = certs.cert.display(),
        key = certs.key.display(),
        base = mock.openai_base(),
    )
}

const AUTH_OFF: &str = "auth: {enabled: false}";

fn h3_addr(gateway: &Gateway) -> SocketAddr {
    gateway
        .process
        .h3_addr()
        .expect("the ready line names h3=ADDR")
}

async fn connect(certs: &Certs, gateway: &Gateway) -> H3Client {
    H3Client::connect(&certs.cert, h3_addr(gateway)).await
}

#[tokio::test]
async fn chat_completions_plain_and_streamed_flow_over_http3() {
    let certs = dev_certs();
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&config(&certs, &mock, "", "", AUTH_OFF));
    let h3 = connect(&certs, &gateway).await;

    let plain = h3.post_json(CHAT, &[], &chat_body("hello over quic")).await;
    assert_eq!(plain.status, 200, "{}", plain.text());
    let body = plain.json();
    assert_eq!(body["object"], "chat.completion");
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );
    assert_eq!(plain.header("x-hapax-provider"), "primary");
    assert!(!plain.header("x-request-id").is_empty());

    // Chunks 60 ms apart upstream must reach the HTTP/3 client as they come, not at the end.
    mock.set_fault(json!({"route": CHAT, "chunk_delay_ms": 60}))
        .await;
    let mut streamed = chat_body("stream me words:6");
    streamed["stream"] = json!(true);
    let response = h3.post_json(CHAT, &[], &streamed).await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .starts_with("text/event-stream")
    );
    assert!(
        response.frames.len() >= 4,
        "SSE arrives as several DATA frames, got {}",
        response.frames.len()
    );
    let spread = response.frames.last().unwrap().0 - response.frames[0].0;
    assert!(
        spread >= Duration::from_millis(200),
        "frames were flushed together ({spread:?})"
    );
    let events = sse_data(&response.text());
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let words: String = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(words.contains("w6"), "{words}");

    let metrics = gateway.metrics().await;
    let h3_ok = [("endpoint", CHAT), ("status", "200"), ("protocol", "h3")];
    assert_eq!(
        metric(&metrics, "hapax_http_requests_total", &h3_ok),
        Some(2.0),
        "{metrics}"
    );
    assert!(
        gateway.logs().contains(r#""protocol":"h3""#),
        "request log lines carry the protocol"
    );
    h3.close().await;
}

#[tokio::test]
async fn health_401_and_413_come_from_the_same_router_over_http3() {
    let certs = dev_certs();
    let mock = MockUpstream::start();
    let auth = format!("auth: {{api_keys: [{{name: tester, key: {KEY}}}]}}");
    let gateway = Gateway::start(&config(&certs, &mock, "", "  max_body_bytes: 1024", &auth));
    let h3 = connect(&certs, &gateway).await;
    let bearer = format!("Bearer {KEY}");

    let health = h3.get("/v1/health", &[]).await;
    assert_eq!(health.status, 200);
    assert!(health.json()["providers"].is_array(), "{}", health.text());

    let unauthorized = h3.post_json(CHAT, &[], &chat_body("no key")).await;
    assert_eq!(unauthorized.status, 401);
    assert_eq!(unauthorized.json()["error"]["type"], "authentication_error");

    let big = chat_body(&"x".repeat(4096));
    let too_large = h3
        .post_json(CHAT, &[("authorization", &bearer)], &big)
        .await;
    assert_eq!(too_large.status, 413, "{}", too_large.text());
    assert_eq!(too_large.json()["error"]["code"], "payload_too_large");

    let ok = h3
        .post_json(CHAT, &[("authorization", &bearer)], &chat_body("with key"))
        .await;
    assert_eq!(ok.status, 200, "the connection survives the refusals");

    let missing = h3.get("/v1/nope", &[]).await;
    assert_eq!(missing.status, 404);
    h3.close().await;
}

#[tokio::test]
async fn thirty_two_concurrent_requests_on_one_connection_beyond_the_stream_limit_are_all_answered()
{
    let certs = dev_certs();
    let mock = MockUpstream::start();
    mock.set_fault(json!({"route": CHAT, "latency_ms": 50}))
        .await;
    let gateway = Gateway::start(&config(
        &certs,
        &mock,
        ", max_bi_streams_concurrent: 4",
        "",
        AUTH_OFF,
    ));
    let h3 = Arc::new(connect(&certs, &gateway).await);

    let requests = (0..32).map(|i| {
        let h3 = Arc::clone(&h3);
        async move {
            let response = h3
                .post_json(
                    CHAT,
                    &[("x-hapax-dedup", "off")],
                    &chat_body(&format!("stream {i}")),
                )
                .await;
            (response.status, response.header("x-request-id").to_owned())
        }
    });
    let answers = tokio::time::timeout(Duration::from_secs(30), join_all(requests))
        .await
        .expect("all answered");
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );
    let mut ids: Vec<_> = answers.into_iter().map(|(_, id)| id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 32, "32 distinct requests, none lost or merged");
    assert_eq!(mock.count(CHAT).await, 32);
}

#[tokio::test]
async fn tcp_responses_announce_http3_with_alt_svc() {
    let certs = dev_certs();
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&config(&certs, &mock, "", "", AUTH_OFF));
    let port = h3_addr(&gateway).port();
    let expected = format!("h3=\":{port}\"; ma=86400");

    for path in ["/v1/health", "/no/such/path"] {
        let response = client().get(gateway.url(path)).send().await.unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_11);
        let alt_svc = response
            .headers()
            .get("alt-svc")
            .and_then(|v| v.to_str().ok());
        assert_eq!(alt_svc, Some(expected.as_str()), "{path}");
    }
    let metrics = gateway.metrics().await;
    let labels = [
        ("endpoint", "/v1/health"),
        ("status", "200"),
        ("protocol", "h1"),
    ];
    assert_eq!(
        metric(&metrics, "hapax_http_requests_total", &labels),
        Some(1.0)
    );
}

/// A reqwest client over TLS that trusts `ca`; it offers HTTP/2 unless `http1_only`.
fn tls_client(ca: &Path, http1_only: bool) -> reqwest::Client {
    let alpn: &[&[u8]] = if http1_only {
        &[b"http/1.1"]
    } else {
        &[b"h2", b"http/1.1"]
    };
    let builder = reqwest::Client::builder()
        .tls_backend_preconfigured(h3_client::tls_client_config(ca, alpn));
    let builder = if http1_only {
        builder.http1_only()
    } else {
        builder
    };
    builder.build().unwrap()
}

#[tokio::test]
async fn tls_on_tcp_serves_http2_and_http1_by_alpn_and_http3_reuses_its_certificate() {
    let certs = dev_certs();
    let mock = MockUpstream::start();
    let tls = format!(
        "  tls: {{cert_file: \"{}\", key_file: \"{}\"}}",
        certs.cert.display(),
        certs.key.display()
    );
    let yaml = format!(
        r#"
server:
  host: 127.0.0.1
  port: 0
{tls}
  http3: {{enabled: true, port: 0}}
auth: {{enabled: false}}
providers:
  primary: {{type: openai_compatible, base_url: "{}", model: mock-1}}
"#,
        mock.openai_base()
    );
    let gateway = Gateway::start(&yaml);
    let url = format!(
        "https://localhost:{}/v1/health",
        gateway.process.addr.rsplit(':').next().unwrap()
    );

    let h2 = tls_client(&certs.cert, false)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(h2.status(), 200);
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    assert!(h2.headers().contains_key("alt-svc"));

    let h1 = tls_client(&certs.cert, true)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(h1.status(), 200);
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);

    let h3 = connect(&certs, &gateway).await;
    assert_eq!(h3.get("/health", &[]).await.status, 200);
    h3.close().await;

    let metrics_url = url.replace("/v1/health", "/metrics");
    let metrics = settled_metrics(&tls_client(&certs.cert, false), &metrics_url).await;
    for protocol in ["h1", "h2"] {
        let labels = [
            ("endpoint", "/v1/health"),
            ("status", "200"),
            ("protocol", protocol),
        ];
        assert_eq!(
            metric(&metrics, "hapax_http_requests_total", &labels),
            Some(1.0),
            "{protocol}"
        );
    }
}

type RawTlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Writes `request` on a new TLS connection (HTTP/1.1 by ALPN) and reads the answer.
async fn raw_tls_exchange(certs: &Certs, gateway: &Gateway, request: &[u8]) -> RawResponse {
    raw_tls_exchange_on(certs, gateway, request).await.0
}

/// [`raw_tls_exchange`], and the connection after the answer.
async fn raw_tls_exchange_on(
    certs: &Certs,
    gateway: &Gateway,
    request: &[u8],
) -> (RawResponse, RawTlsStream) {
    let config = h3_client::tls_client_config(&certs.cert, &[b"http/1.1"]);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(&gateway.process.addr)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    // A head over the limit may be answered and closed before the last of it is written.
    if let Err(error) = stream.write_all(request).await {
        eprintln!("writing the request: {error} (reading the answer anyway)");
    }
    let response = read_response(&mut stream).await;
    (
        response.expect("an answer before the connection closed"),
        stream,
    )
}

#[tokio::test]
async fn heads_refused_on_the_tls_listener_are_counted_and_logged() {
    let certs = dev_certs();
    let mock = MockUpstream::start();
    let yaml = format!(
        r#"
server:
  host: 127.0.0.1
  port: 0
  max_header_bytes: 131072
  tls: {{cert_file: "{}", key_file: "{}"}}
auth: {{enabled: false}}
providers:
  primary: {{type: openai_compatible, base_url: "{}", model: mock-1}}
"#,
        certs.cert.display(),
        certs.key.display(),
        mock.openai_base()
    );
    let gateway = Gateway::start(&yaml);
    // hyper answers these itself over TLS; the gateway sees only the connection's error.
    // Just over the 128 KiB limit, so the rest of the head fits in the socket's buffers.
    let big = format!(
        "GET /health HTTP/1.1\r\nHost: hapax\r\nX-Big: {}\r\n\r\n",
        "a".repeat(132 * 1024)
    );
    let answer = raw_tls_exchange(&certs, &gateway, big.as_bytes()).await;
    assert_eq!(answer.status, 431);
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: hapax\r\n\r\n",
        "a".repeat(70_000)
    );
    let answer = raw_tls_exchange(&certs, &gateway, long.as_bytes()).await;
    assert_eq!(answer.status, 414);
    let malformed = b"GET /health HTTP/1.1\r\nHost: hapax\r\nNo colon here\r\n\r\n";
    let answer = raw_tls_exchange(&certs, &gateway, malformed).await;
    assert_eq!(answer.status, 400);
    // hyper does not check Host (RFC 9112 §3.2); the gateway does, as on the plain listener.
    let hostless = b"GET /health HTTP/1.1\r\n\r\n";
    let (answer, mut after) = raw_tls_exchange_on(&certs, &gateway, hostless).await;
    assert_eq!(answer.status, 400);
    let mut byte = [0u8; 1];
    let next = tokio::time::timeout(Duration::from_secs(5), after.read(&mut byte)).await;
    assert!(
        matches!(next, Ok(Ok(0) | Err(_))),
        "the connection closes after the refusal: {next:?}"
    );
    assert!(
        answer.body.contains("needs a Host header"),
        "{}",
        answer.body
    );
    assert!(answer.body.contains("malformed_request"), "{}", answer.body);
    assert_eq!(
        answer.header("connection"),
        Some("close"),
        "{}",
        answer.head
    );
    let two_hosts = b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
    let answer = raw_tls_exchange(&certs, &gateway, two_hosts).await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.body.contains("more than one Host"),
        "{}",
        answer.body
    );
    assert!(answer.header("x-request-id").is_some(), "{}", answer.head);
    let served = b"GET /health HTTP/1.1\r\nHost: hapax\r\nConnection: close\r\n\r\n";
    let answer = raw_tls_exchange(&certs, &gateway, served).await;
    assert_eq!(answer.status, 200);

    let metrics = raw_tls_exchange(
        &certs,
        &gateway,
        b"GET /metrics HTTP/1.1\r\nHost: hapax\r\nConnection: close\r\n\r\n",
    )
    .await
    .body;
    let refused = |status: &str| {
        let labels = [
            ("endpoint", "other"),
            ("status", status),
            ("protocol", "h1"),
        ];
        metric(&metrics, "hapax_http_requests_total", &labels)
    };
    assert_eq!(refused("431"), Some(1.0), "{metrics}");
    assert_eq!(refused("414"), Some(1.0), "{metrics}");
    assert_eq!(refused("400"), Some(3.0), "{metrics}");
    let errors = |kind: &str| metric(&metrics, "hapax_errors_total", &[("type", kind)]);
    assert_eq!(errors("headers_too_large"), Some(1.0), "{metrics}");
    assert_eq!(errors("uri_too_long"), Some(1.0), "{metrics}");
    assert_eq!(errors("malformed_request"), Some(3.0), "{metrics}");
    // One log line a refusal (the log writer batches: wait for it).
    let refusals = |logs: String| -> Vec<String> {
        let other = "\"endpoint\":\"other\"";
        let lines = logs.lines().filter(|line| line.contains(other));
        lines.map(str::to_owned).collect()
    };
    let lines = eventually(Duration::from_secs(5), "5 refusal lines", || async {
        Some(refusals(gateway.logs())).filter(|lines| lines.len() >= 5)
    })
    .await;
    assert_eq!(lines.len(), 5, "{lines:?}");
    // hyper does not say which method a head it refused had; the Host checks do.
    let methods = |method: &str| {
        let field = format!("\"method\":\"{method}\"");
        lines.iter().filter(|line| line.contains(&field)).count()
    };
    assert_eq!((methods("-"), methods("GET")), (3, 2), "{lines:?}");
    for line in &lines {
        assert!(!line.contains("aaaa"), "a refused head is never logged");
    }
}

/// Runs `hapax ARGS` to completion.
/// A gateway whose provider is another gateway serving TLS (in front of the mock).
fn gateway_behind_tls(upstream: &Gateway, envs: &[(&str, &str)]) -> Gateway {
    let port = upstream.process.addr.rsplit(':').next().unwrap().to_owned();
    let yaml = format!(
        r#"
server: {{host: 127.0.0.1, port: 0}}
auth: {{enabled: false}}
providers:
  secure: {{type: openai_compatible, base_url: "https://localhost:{port}/v1", model: mock-1}}
"#
    );
    Gateway::start_with_env(&yaml, envs)
}

#[tokio::test]
async fn a_tls_upstream_is_verified_against_the_trust_store_and_an_untrusted_one_is_refused() {
    let certs = dev_certs();
    let mock = MockUpstream::start();
    let upstream = Gateway::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: 0
  tls: {{cert_file: "{}", key_file: "{}"}}
auth: {{enabled: false}}
providers:
  primary: {{type: openai_compatible, base_url: "{}", model: mock-1}}
"#,
        certs.cert.display(),
        certs.key.display(),
        mock.openai_base()
    ));

    // Trusted (the dev certificate as the trust store): plain and streamed answers arrive.
    let cert_file = certs.cert.display().to_string();
    let trusting = gateway_behind_tls(&upstream, &[("SSL_CERT_FILE", &cert_file)]);
    let response = client()
        .post(trusting.url("/v1/chat/completions"))
        .json(&chat_body("over tls"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-hapax-provider"], "secure");
    let body: Value = response.json().await.unwrap();
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("over tls"),
        "{body}"
    );
    let mut streamed = chat_body("streamed over tls");
    streamed["stream"] = json!(true);
    let text = client()
        .post(trusting.url("/v1/chat/completions"))
        .json(&streamed)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sse_data(&text).last().map(String::as_str), Some("[DONE]"));

    // Not trusted (a self-signed certificate the system store does not know): a 502 that says
    // why, never an unverified connection.
    let refusing = gateway_behind_tls(&upstream, &[]);
    let response = client()
        .post(refusing.url("/v1/chat/completions"))
        .json(&chat_body("over tls"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("invalid peer certificate"), "{message}");
}

async fn run(args: &[&str]) -> std::process::Output {
    let mut command = tokio::process::Command::new(hapax_bin());
    command
        .args(args)
        .env_remove("CONFIG_PATH")
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("exits")
        .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn bad_certificates_are_refused_at_validate_and_at_start_naming_the_file_and_the_problem() {
    let certs = dev_certs();
    let other = dev_certs();
    let dir = certs.dir.path();
    let not_pem = write(dir, "notes.txt", "this is not a certificate\n");
    let missing = dir.join("missing.pem");
    let cases: [(&str, &Path, &Path, &str, &str); 5] = [
        (
            "missing cert",
            &missing,
            &certs.key,
            "server.http3.tls_cert_file",
            "file not found",
        ),
        (
            "unreadable cert",
            dir,
            &certs.key,
            "server.http3.tls_cert_file",
            "cannot read",
        ),
        (
            "not a PEM cert",
            &not_pem,
            &certs.key,
            "server.http3.tls_cert_file",
            "not a PEM certificate",
        ),
        (
            "not a PEM key",
            &certs.cert,
            &not_pem,
            "server.http3.tls_key_file",
            "not a PEM private key",
        ),
        (
            "key of another cert",
            &certs.cert,
            &other.key,
            "server.http3.tls_key_file",
            "does not match the certificate",
        ),
    ];
    for (case, cert, key, config_key, problem) in cases {
        let yaml = format!(
            "server: {{host: 127.0.0.1, port: 0, http3: {{enabled: true, port: 0, tls_cert_file: \"{}\", tls_key_file: \"{}\"}}}}\nauth: {{enabled: false}}\nproviders: {{mock: {{type: mock}}}}\n",
            cert.display(),
            key.display()
        );
        let file = write(dir, "config.yaml", &yaml);
        let path = file.to_str().unwrap();
        let named = if config_key.ends_with("key_file") {
            key
        } else {
            cert
        };

        let validate = run(&["validate", "--config", path]).await;
        let stderr = String::from_utf8_lossy(&validate.stderr);
        assert_eq!(validate.status.code(), Some(2), "{case}: {stderr}");
        assert!(
            stderr.contains(config_key) && stderr.contains(problem),
            "{case}: {stderr}"
        );
        assert!(
            stderr.contains(&named.display().to_string()),
            "{case} names the file: {stderr}"
        );
        assert!(
            stderr.contains("(line 1:"),
            "{case} points at the key: {stderr}"
        );

        let serve = run(&["serve", "--config", path]).await;
        let stderr = String::from_utf8_lossy(&serve.stderr);
        assert!(
            !serve.status.success(),
            "{case}: serve must refuse to start"
        );
        assert!(
            stderr.contains(config_key) && stderr.contains(problem),
            "{case}: {stderr}"
        );
        assert!(
            !String::from_utf8_lossy(&serve.stdout).contains("listening"),
            "{case}: nothing was bound"
        );
    }
}

#[tokio::test]
async fn http3_on_the_gossip_udp_port_is_refused() {
    let certs = dev_certs();
    let yaml = format!(
        "server: {{host: 127.0.0.1, port: 0, http3: {{enabled: true, port: 7946, tls_cert_file: \"{}\", tls_key_file: \"{}\"}}}}\nauth: {{enabled: false}}\ncluster: {{gossip_listen: \"127.0.0.1:7946\"}}\n",
        certs.cert.display(),
        certs.key.display()
    );
    let file = write(certs.dir.path(), "clash.yaml", &yaml);
    let output = run(&["validate", "--config", file.to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("server.http3.port") && stderr.contains("cluster.gossip_listen"),
        "{stderr}"
    );
}

/// A UDP relay that holds every server-to-client datagram back by `delay`: the client's
/// handshake cannot finish before then, so what it sends first is surely 0-RTT data.
async fn slow_return_relay(server: SocketAddr, delay: Duration) -> SocketAddr {
    let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(server).await.unwrap();
    let address = front.local_addr().unwrap();
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let (f, b, c) = (Arc::clone(&front), Arc::clone(&back), Arc::clone(&client));
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *c.lock().unwrap() = Some(from);
            let _ = b.send(&buf[..n]).await;
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = back.recv(&mut buf).await {
            let (front, datagram, to) = (
                Arc::clone(&front),
                buf[..n].to_vec(),
                *client.lock().unwrap(),
            );
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Some(to) = to {
                    let _ = front.send_to(&datagram, to).await;
                }
            });
        }
    });
    address
}

#[tokio::test]
async fn zero_rtt_requests_get_425_for_unsafe_methods_until_the_handshake_completes() {
    let certs = dev_certs();
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&config(&certs, &mock, ", enable_0rtt: true", "", AUTH_OFF));
    let endpoint = h3_client::endpoint(&certs.cert);

    // A first, full handshake leaves a session ticket with the client.
    let first = H3Client::connect_with(&endpoint, h3_addr(&gateway), false).await;
    assert_eq!(first.get("/health", &[]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.close().await;

    let relay = slow_return_relay(h3_addr(&gateway), Duration::from_millis(300)).await;
    let resumed = H3Client::connect_with(&endpoint, relay, true).await;
    assert!(resumed.zero_rtt, "the client resumed with 0-RTT");
    let early_body = chat_body("replayable?");
    let (post, get) = tokio::join!(
        resumed.post_json(CHAT, &[], &early_body),
        resumed.get("/v1/health", &[]),
    );
    assert_eq!(post.status, 425, "{}", post.text());
    assert_eq!(post.json()["error"]["code"], "too_early");
    assert_eq!(get.status, 200, "safe methods are served from early data");

    let retried = resumed
        .post_json(CHAT, &[], &chat_body("after the handshake"))
        .await;
    assert_eq!(
        retried.status, 200,
        "the same request succeeds once the handshake is done"
    );
    assert_eq!(
        mock.count(CHAT).await,
        1,
        "the early POST never reached the provider"
    );
    resumed.close().await;

    let metrics = gateway.metrics().await;
    let labels = [("endpoint", CHAT), ("status", "425"), ("protocol", "h3")];
    assert_eq!(
        metric(&metrics, "hapax_http_requests_total", &labels),
        Some(1.0)
    );
}

#[tokio::test]
async fn without_0rtt_enabled_a_resumed_client_cannot_send_early_data() {
    let certs = dev_certs();
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&config(&certs, &mock, "", "", AUTH_OFF));
    let endpoint = h3_client::endpoint(&certs.cert);
    let first = H3Client::connect_with(&endpoint, h3_addr(&gateway), false).await;
    assert_eq!(first.get("/health", &[]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.close().await;

    let resumed = H3Client::connect_with(&endpoint, h3_addr(&gateway), true).await;
    assert!(
        !resumed.zero_rtt,
        "the server's tickets do not allow early data"
    );
    let post = resumed.post_json(CHAT, &[], &chat_body("fine")).await;
    assert_eq!(post.status, 200);
    resumed.close().await;
}

#[tokio::test]
async fn sigterm_lets_an_http3_stream_in_flight_finish() {
    let certs = dev_certs();
    let mock = MockUpstream::start();
    mock.set_fault(json!({"route": CHAT, "chunk_delay_ms": 100}))
        .await;
    let mut gateway = Gateway::start(&config(&certs, &mock, "", "", AUTH_OFF));
    let h3 = connect(&certs, &gateway).await;
    let mut body = chat_body("slow words:8");
    body["stream"] = json!(true);
    let stream = h3.post_json(CHAT, &[], &body);
    let terminate = async {
        tokio::time::sleep(Duration::from_millis(250)).await;
        tokio::task::spawn_blocking(move || {
            let status = gateway.process.terminate(Duration::from_secs(15));
            (status, gateway)
        })
        .await
        .unwrap()
    };
    let (response, (status, gateway)) = tokio::join!(stream, terminate);
    assert_eq!(response.status, 200);
    let events = sse_data(&response.text());
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "the stream finished: {events:?}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}\n{}",
        gateway.logs()
    );
    assert!(
        gateway.logs().contains("HTTP/3: all connections drained"),
        "{}",
        gateway.logs()
    );
}
