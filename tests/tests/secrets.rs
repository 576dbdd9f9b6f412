//! Secrets stay secret: a two-node cluster with known provider keys, client and admin keys
//! and a cluster secret, logging at debug, is driven through upstream 401s and 500s (from an
//! upstream that echoes the key it was sent, as real providers half do), streams, admin
//! calls and wrong keys. Then every output is searched: both nodes' logs, `/metrics`,
//! `/v1/health`, `/admin/breakers`, every response seen (headers and body) and the output of
//! `hapax validate`. None may contain any secret, whole or in part.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use hapax_tests::{Gateway, MockUpstream, chat_body, client, eventually, hapax_bin};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const OPENAI_KEY: &str = "sk-test-PROVIDERSECRET-A1b2C3d4E5f6";
const ANTHROPIC_KEY: &str = "sk-ant-PROVIDERSECRET-G7h8I9j0";
/// Not shaped like `sk-…`: only its configured value can redact it.
const BACKUP_KEY: &str = "gsk_PROVIDERSECRET_K1l2M3n4";
const CLIENT_KEY: &str = "hk-CLIENTSECRET-7f3a9c0d";
const ADMIN_KEY: &str = "hk-ADMINSECRET-51bd2e77";
const CLUSTER_SECRET: &str = "CLUSTERSECRET-d41d8cd98f00";
/// A key a client sends by mistake is a secret too (often a near miss of a real one).
const WRONG_KEY: &str = "hk-WRONGSECRET-0000";
/// Distinctive parts: finding any of them anywhere means a (partial) leak.
const MARKERS: &[&str] = &[
    "PROVIDERSECRET",
    "CLIENTSECRET",
    "ADMINSECRET",
    "CLUSTERSECRET",
    "WRONGSECRET",
    "A1b2C3d4E5f6",
    "G7h8I9j0",
    "K1l2M3n4",
    "7f3a9c0d",
    "51bd2e77",
    "d41d8cd98f00",
];
const CHAT: &str = "/v1/chat/completions";

/// An upstream that refuses every request with 401 and quotes the key it got, from
/// `Authorization` or `x-api-key` (as OpenAI's "Incorrect API key provided: …" does).
async fn start_echoing_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
                let header = |name: &str| {
                    head.lines().find_map(|line| {
                        let (key, value) = line.split_once(':')?;
                        key.eq_ignore_ascii_case(name)
                            .then(|| value.trim().to_owned())
                    })
                };
                let length: usize = header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while request.len() < head_end + length {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                let key = header("authorization")
                    .or_else(|| header("x-api-key"))
                    .unwrap_or_default();
                let body = json!({"error": {
                    "message": format!("Incorrect API key provided: {key}. You can find your API key at https://example.invalid/keys."),
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }})
                .to_string();
                let response = format!(
                    "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nX-Echoed-Key: {key}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

fn node_config(
    name: &str,
    echo: &str,
    mock: &MockUpstream,
    data_dir: &std::path::Path,
    seeds: &str,
) -> String {
    format!(
        r#"
server: {{host: 127.0.0.1, port: 0, shutdown_timeout: 2s}}
logging: {{level: debug}}
auth:
  api_keys:
    - {{name: app, key: "{CLIENT_KEY}"}}
  admin_keys:
    - {{name: ops, key: "{ADMIN_KEY}"}}
providers:
  echo:
    type: openai_compatible
    base_url: "{echo}/v1"
    api_key: "{OPENAI_KEY}"
    model: mock-1
    health_check: {{interval: 200ms, timeout: 1s, failure_threshold: 1000000}}
  claude:
    type: anthropic
    base_url: "{echo}"
    api_key: "{ANTHROPIC_KEY}"
    model: claude-mock
    health_check: {{interval: 200ms, timeout: 1s, failure_threshold: 1000000}}
  backup:
    type: openai_compatible
    base_url: "{backup}"
    api_key: "{BACKUP_KEY}"
    model: mock-1
    health_check: {{interval: 200ms, timeout: 1s}}
provider_preference: [echo, claude, backup]
routing: {{max_attempts: 3, backoff_initial: 1ms, backoff_max: 5ms}}
circuit_breaker: {{failure_threshold: 1000}}
cluster: {{node_id: {name}, cluster_id: secrets-test, gossip_listen: "127.0.0.1:0", grpc_listen: "127.0.0.1:0", data_dir: "{data}", gossip_interval: 100ms, seeds: [{seeds}], secret: "{CLUSTER_SECRET}"}}
"#,
        backup = mock.openai_base(),
        data = data_dir.display(),
    )
}

/// Everything a client could see of a response: status line, headers and body.
async fn seen(response: reqwest::Response) -> String {
    let mut text = format!("{}\n", response.status());
    for (name, value) in response.headers() {
        text.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    text.push_str(&response.text().await.unwrap());
    text
}

fn assert_no_secret(what: &str, text: &str) {
    for marker in MARKERS {
        if let Some(at) = text.find(marker) {
            let start = text[..at]
                .char_indices()
                .rev()
                .nth(120)
                .map_or(0, |(i, _)| i);
            let end = (at + 120).min(text.len());
            let end = (end..=text.len())
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(text.len());
            panic!("{what} leaks `{marker}`: …{}…", &text[start..end]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_metrics_health_admin_errors_or_validate() {
    let echo = start_echoing_upstream().await;
    let mock = MockUpstream::start();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let config0 = node_config("node0", &echo, &mock, dirs[0].path(), "");
    let node0 = Gateway::start(&config0);
    let gossip0 = node0
        .process
        .ready
        .get("gossip")
        .cloned()
        .expect("gossip address");
    let node1 = Gateway::start(&node_config(
        "node1",
        &echo,
        &mock,
        dirs[1].path(),
        &format!("\"{gossip0}\""),
    ));
    // Raft between the two: gRPC calls that carry the cluster secret.
    eventually(
        Duration::from_secs(30),
        "both nodes are Raft voters",
        || async {
            let health: Value = client()
                .get(node1.url("/v1/health"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let voters = health["cluster"]["raft"]["status"]["voters"]
                .as_array()?
                .len();
            (voters == 2).then_some(())
        },
    )
    .await;

    let mut outputs: Vec<(String, String)> = Vec::new();
    let as_client = |request: reqwest::RequestBuilder| request.bearer_auth(CLIENT_KEY);
    let as_admin = |request: reqwest::RequestBuilder| request.bearer_auth(ADMIN_KEY);

    // Upstream 401 (echoing the key) on echo and claude, then 500 on backup: a 502.
    mock.set_fault(json!({"route": CHAT, "status": 500})).await;
    let response = as_client(client().post(node0.url(CHAT)))
        .json(&chat_body("a"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    outputs.push(("502 after 401s and a 500".into(), seen(response).await));
    // Every provider answering 401.
    mock.set_fault(json!({"route": CHAT, "status": 401})).await;
    let response = as_client(client().post(node0.url(CHAT)))
        .json(&chat_body("b"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    outputs.push(("502 after 401s only".into(), seen(response).await));
    // No model: the Anthropic provider (its key in `x-api-key`) is tried too.
    let any_model = json!({"messages": [{"role": "user", "content": "b2"}]});
    let response = as_client(client().post(node0.url(CHAT)))
        .json(&any_model)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    outputs.push(("502 from all three".into(), seen(response).await));
    let mut streamed = chat_body("c");
    streamed["stream"] = json!(true);
    let response = as_client(client().post(node1.url(CHAT)))
        .json(&streamed)
        .send()
        .await
        .unwrap();
    outputs.push(("streamed, every provider 401".into(), seen(response).await));
    // Upstream 400: the request's own fault, passed through.
    mock.set_fault(json!({"route": CHAT, "status": 400})).await;
    let response = as_client(client().post(node0.url(CHAT)))
        .json(&json!({"model": "mock-1", "messages": [{"role": "user", "content": "d"}]}))
        .send()
        .await
        .unwrap();
    outputs.push(("upstream 400".into(), seen(response).await));
    mock.clear_faults().await;

    // Served by backup after two 401s, plain, streamed and as Hapax's completion body.
    let response = as_client(client().post(node0.url(CHAT)))
        .json(&chat_body("e"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    outputs.push(("200 after failover".into(), seen(response).await));
    let response = as_client(client().post(node1.url(CHAT)))
        .json(&streamed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    outputs.push(("streamed 200".into(), seen(response).await));
    let response = as_client(client().post(node0.url("/v1/completions")))
        .json(&json!({"input": "f"}))
        .send()
        .await
        .unwrap();
    outputs.push(("completion".into(), seen(response).await));

    // Wrong and misplaced keys.
    for (what, request) in [
        (
            "wrong bearer",
            client().post(node0.url(CHAT)).bearer_auth(WRONG_KEY),
        ),
        (
            "wrong x-api-key",
            client()
                .post(node0.url(CHAT))
                .header("x-api-key", WRONG_KEY),
        ),
        (
            "raw authorization",
            client()
                .post(node0.url(CHAT))
                .header("authorization", WRONG_KEY),
        ),
        (
            "admin key on the client API",
            client().post(node0.url(CHAT)).bearer_auth(ADMIN_KEY),
        ),
    ] {
        let response = request.json(&chat_body("g")).send().await.unwrap();
        outputs.push((what.into(), seen(response).await));
    }
    for (what, request) in [
        (
            "client key on admin",
            client()
                .get(node0.url("/admin/breakers"))
                .bearer_auth(CLIENT_KEY),
        ),
        (
            "wrong admin key",
            client()
                .get(node0.url("/admin/breakers"))
                .bearer_auth(WRONG_KEY),
        ),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        outputs.push((what.into(), seen(response).await));
    }

    // Admin calls.
    for (what, request) in [
        (
            "force open",
            as_admin(client().post(node0.url("/admin/breakers/echo/open"))),
        ),
        (
            "force close",
            as_admin(client().post(node0.url("/admin/breakers/echo/close"))),
        ),
        (
            "unknown provider",
            as_admin(client().post(node0.url("/admin/breakers/nope/open"))),
        ),
        (
            "unknown action",
            as_admin(client().post(node0.url("/admin/breakers/echo/explode"))),
        ),
    ] {
        let response = request.send().await.unwrap();
        outputs.push((what.into(), seen(response).await));
    }
    // A few health-check rounds against the echoing upstream.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for node in [&node0, &node1] {
        let response = as_admin(client().get(node.url("/admin/breakers")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        outputs.push(("/admin/breakers".into(), seen(response).await));
        for path in ["/v1/health", "/health", "/metrics", "/v1/models"] {
            let response = as_client(client().get(node.url(path)))
                .send()
                .await
                .unwrap();
            outputs.push((path.into(), seen(response).await));
        }
    }

    // `hapax validate`: the summary of this config, and the problems of a broken variant.
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::io::Write::write_all(&mut file, config0.as_bytes()).unwrap();
    let broken = config0
        .replace("type: anthropic", "type: anthropik")
        .replace(
            &format!("key: \"{CLIENT_KEY}\""),
            &format!("key_sha256: \"{CLIENT_KEY}\""),
        )
        .replace(
            &format!("key: \"{ADMIN_KEY}\""),
            &format!("key: \"{ADMIN_KEY}\", key_sha256: \"{ADMIN_KEY}\""),
        )
        .replace(
            "gossip_interval: 100ms",
            "gossip_interval: 100ms, secret_typo: 1",
        );
    let mut broken_file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::io::Write::write_all(&mut broken_file, broken.as_bytes()).unwrap();
    for (what, path, ok) in [
        ("validate", file.path(), true),
        ("validate (broken)", broken_file.path(), false),
    ] {
        let output = Command::new(hapax_bin())
            .arg("validate")
            .arg("--config")
            .arg(path)
            .output()
            .unwrap();
        assert_eq!(output.status.success(), ok, "{what}: {output:?}");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        outputs.push((what.into(), text));
    }

    // The gateway did hold the keys: the echoing upstream saw them, and quoted them.
    let logs = [("node0 logs", node0.logs()), ("node1 logs", node1.logs())];
    for (what, text) in &logs {
        assert!(
            text.contains("DEBUG") || text.contains("\"level\":\"debug\""),
            "{what} are at debug level"
        );
        assert!(!text.contains("panicked"), "{what}: {text}");
    }
    for provider in ["echo", "claude"] {
        assert!(
            logs[0]
                .1
                .lines()
                .any(|l| l.contains(&format!("\"provider\":\"{provider}\""))
                    && l.contains("Incorrect API key provided")),
            "{provider} was tried and answered with the key quoted"
        );
    }
    let seen_by_mock = mock.last_request(CHAT).await;
    assert_eq!(
        seen_by_mock["headers"]["authorization"],
        format!("Bearer {BACKUP_KEY}")
    );
    assert!(
        outputs.iter().any(|(_, text)| text.contains("[redacted]")),
        "the echoed keys were redacted somewhere: {outputs:#?}"
    );

    for (what, text) in outputs.iter().chain(
        logs.iter()
            .map(|(w, t)| (w.to_string(), t.clone()))
            .collect::<Vec<_>>()
            .iter(),
    ) {
        assert_no_secret(what, text);
    }
    eprintln!(
        "searched {} outputs and {} KiB of debug logs: no secret",
        outputs.len(),
        logs.iter().map(|(_, t)| t.len()).sum::<usize>() / 1024
    );
}
