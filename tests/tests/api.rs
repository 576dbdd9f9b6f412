//! Every HTTP endpoint of the gateway, driven against the real `hapax` binary and the
//! fault-injecting mock provider: success shapes, headers, the one error shape for every
//! error status, secrets kept out of errors, and graceful shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hapax_tests::{Gateway, MockUpstream, chat_body, client, eventually, metric, sse_data};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// Upper bound for any single HTTP exchange in these tests: generous, only there so a broken
/// gateway fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(60);

// === helpers ===

/// A gateway config (loopback, ephemeral port, auth off) around the given YAML.
fn config(rest: &str) -> String {
    format!("server: {{host: 127.0.0.1, port: 0}}\nauth: {{enabled: false}}\n{rest}")
}

/// One `openai_compatible` provider named `primary` on the mock, with health checks off.
fn primary_only(mock: &MockUpstream, extra: &str) -> String {
    config(&format!(
        "providers:\n  primary: {{type: openai_compatible, base_url: \"{}\", model: mock-1, health_check: {{enabled: false}}{extra}}}\nprovider_preference: [primary]\n",
        mock.openai_base()
    ))
}

/// `primary` (OpenAI-compatible, model mock-1) then `claude` (Anthropic, model claude-mock).
fn primary_and_claude(mock: &MockUpstream) -> String {
    config(&format!(
        "providers:\n  primary: {{type: openai_compatible, base_url: \"{}\", model: mock-1, health_check: {{enabled: false}}}}\n  claude: {{type: anthropic, base_url: \"{}\", api_key: test-key, model: claude-mock, health_check: {{enabled: false}}}}\nprovider_preference: [primary, claude]\n",
        mock.openai_base(),
        mock.base()
    ))
}

async fn with_patience<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn post_json(url: &str, body: &Value) -> reqwest::Response {
    with_patience(url, client().post(url).json(body).send())
        .await
        .unwrap()
}

async fn body_text(response: reqwest::Response) -> String {
    with_patience("reading a body", response.text())
        .await
        .unwrap()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name} in {headers:?}"))
        .to_str()
        .unwrap()
}

/// Asserts the status and the one error shape `{"error":{"message","type","code",
/// "request_id"}}` whose request id equals the `x-request-id` header; returns the error object
/// and the headers.
async fn expect_error(response: reqwest::Response, status: u16) -> (Value, HeaderMap) {
    let headers = response.headers().clone();
    let actual = response.status().as_u16();
    let text = body_text(response).await;
    assert_eq!(actual, status, "unexpected status; body: {text}");
    assert!(
        header(&headers, "content-type").starts_with("application/json"),
        "error content type: {headers:?}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    let object = body.as_object().expect("error body is an object");
    assert_eq!(object.len(), 1, "only `error` at the top level: {text}");
    let error = body["error"].clone();
    let fields = error.as_object().expect("`error` is an object");
    let mut keys: Vec<&str> = fields.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "request_id", "type"], "{text}");
    for key in keys {
        assert!(
            fields[key].as_str().is_some_and(|s| !s.is_empty()),
            "`error.{key}` must be a non-empty string: {text}"
        );
    }
    assert_eq!(
        error["request_id"],
        header(&headers, "x-request-id"),
        "the body's request_id is the x-request-id header"
    );
    (error, headers)
}

/// The `content` deltas of an OpenAI chat SSE body, concatenated.
fn concat_deltas(payloads: &[String]) -> String {
    payloads
        .iter()
        .filter(|p| *p != "[DONE]")
        .map(|p| serde_json::from_str::<Value>(p).unwrap())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

async fn chat(gateway: &Gateway, body: &Value) -> reqwest::Response {
    post_json(&gateway.url("/v1/chat/completions"), body).await
}

async fn get(url: &str) -> reqwest::Response {
    with_patience(url, client().get(url).send()).await.unwrap()
}

// === success paths ===

#[tokio::test]
async fn chat_completion_returns_openai_shape_and_routing_headers() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_only(&mock, ""));
    let response = chat(&gateway, &chat_body("hello there")).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert!(header(&headers, "x-request-id").starts_with("req-"));
    assert_eq!(header(&headers, "x-hapax-provider"), "primary");
    assert_eq!(header(&headers, "x-hapax-attempts"), "1");
    let body: Value = response.json().await.unwrap();
    assert!(
        body["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{body}"
    );
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "mock-1");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from the Hapax mock provider. You said: hello there"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // The mock counts whitespace-separated words: 2 in, 8 + 2 out.
    assert_eq!(body["usage"]["prompt_tokens"], 2);
    assert_eq!(body["usage"]["completion_tokens"], 10);
    assert_eq!(body["usage"]["total_tokens"], 12);
    assert_eq!(mock.count("/v1/chat/completions").await, 1);
}

#[tokio::test]
async fn chat_completion_streams_as_sse_ending_with_done() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_only(&mock, ""));
    let prompt = "stream me please words:12";

    let plain: Value = chat(&gateway, &chat_body(prompt))
        .await
        .json()
        .await
        .unwrap();
    let expected = plain["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(expected, "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12");

    let mut body = chat_body(prompt);
    body["stream"] = json!(true);
    let response = chat(&gateway, &body).await;
    assert_eq!(response.status(), 200);
    assert!(header(response.headers(), "content-type").starts_with("text/event-stream"));
    assert_eq!(header(response.headers(), "x-hapax-provider"), "primary");
    let text = body_text(response).await;
    let payloads = sse_data(&text);
    assert!(payloads.len() > 3, "several chunks expected: {text}");
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("[DONE]"),
        "{text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(payloads.iter().filter(|p| *p == "[DONE]").count(), 1);
    for payload in &payloads[..payloads.len() - 1] {
        let chunk: Value = serde_json::from_str(payload).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk", "{payload}");
    }
    assert_eq!(concat_deltas(&payloads), expected);
    let finish: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str::<Value>(p).unwrap())
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str().map(Value::from))
        .collect();
    assert_eq!(finish, [json!("stop")]);
    // Without stream_options the client gets no usage-only chunk.
    assert!(
        !payloads.iter().any(|p| p.contains("\"usage\":{")),
        "no usage chunk unless asked: {text}"
    );
}

#[tokio::test]
async fn stream_options_include_usage_yields_a_usage_chunk() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_only(&mock, ""));
    let mut body = chat_body("count words:5");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let response = chat(&gateway, &body).await;
    assert_eq!(response.status(), 200);
    let payloads = sse_data(&body_text(response).await);
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(concat_deltas(&payloads), "w1 w2 w3 w4 w5");
    let usage: Vec<Value> = payloads
        .iter()
        .filter(|p| *p != "[DONE]")
        .map(|p| serde_json::from_str::<Value>(p).unwrap())
        .filter(|c| c["usage"].is_object())
        .map(|c| c["usage"].clone())
        .collect();
    assert_eq!(usage.len(), 1, "exactly one usage chunk: {payloads:?}");
    assert_eq!(usage[0]["prompt_tokens"], 2);
    assert_eq!(usage[0]["completion_tokens"], 5);
    assert_eq!(usage[0]["total_tokens"], 7);
}

#[tokio::test]
async fn request_model_selects_the_provider_serving_it() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_and_claude(&mock));

    let mut body = chat_body("who are you");
    body["model"] = json!("claude-mock");
    let response = chat(&gateway, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(response.headers(), "x-hapax-provider"), "claude");
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["model"], "claude-mock");
    assert_eq!(mock.count("/v1/messages").await, 1);
    assert_eq!(mock.count("/v1/chat/completions").await, 0);

    // By provider name: the provider's own model goes upstream.
    body["model"] = json!("claude");
    let response = chat(&gateway, &body).await;
    assert_eq!(header(response.headers(), "x-hapax-provider"), "claude");
    assert_eq!(
        mock.last_request("/v1/messages").await["body"]["model"],
        "claude-mock"
    );

    body["model"] = json!("mock-1");
    let response = chat(&gateway, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(response.headers(), "x-hapax-provider"), "primary");
    assert_eq!(mock.count("/v1/chat/completions").await, 1);
}

#[tokio::test]
async fn hapax_completion_with_messages_answers_content_model_provider_usage_request_id() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_only(&mock, ""));
    let response = post_json(
        &gateway.url("/v1/completions"),
        &json!({"messages": [{"role": "user", "content": "hi there"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let request_id = header(response.headers(), "x-request-id").to_owned();
    let body: Value = response.json().await.unwrap();
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["content", "model", "provider", "request_id", "usage"],
        "{body}"
    );
    assert_eq!(
        body["content"],
        "Hello from the Hapax mock provider. You said: hi there"
    );
    assert_eq!(body["model"], "mock-1");
    assert_eq!(body["provider"], "primary");
    assert_eq!(body["request_id"], request_id.as_str());
    assert_eq!(body["usage"]["prompt_tokens"], 2);
    assert_eq!(body["usage"]["completion_tokens"], 10);
}

#[tokio::test]
async fn hapax_completion_with_input_sends_function_description_as_system_message() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_only(&mock, ""));
    let response = post_json(
        &gateway.url("/v1/completions"),
        &json!({"input": "summarise this", "function_description": "Be a summariser."}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["content"],
        "Hello from the Hapax mock provider. You said: summarise this"
    );
    assert_eq!(body["provider"], "primary");
    // System (3 words) + user (2 words).
    assert_eq!(body["usage"]["prompt_tokens"], 3 + 2);
    let seen = mock.last_request("/v1/chat/completions").await;
    let messages = seen["body"]["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 2, "{seen}");
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(messages[0]["content"], "Be a summariser.");
    assert_eq!(messages[1]["role"], "user");
    assert_eq!(messages[1]["content"], "summarise this");
}

#[tokio::test]
async fn legacy_prompt_completion_answers_text_completion_plain_and_streamed() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_only(&mock, ""));
    let url = gateway.url("/v1/completions");

    let response = post_json(&url, &json!({"model": "mock-1", "prompt": "old style"})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(response.headers(), "x-hapax-provider"), "primary");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "text_completion");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl"), "{body}");
    assert_eq!(body["model"], "mock-1");
    assert_eq!(
        body["choices"][0]["text"],
        "Hello from the Hapax mock provider. You said: old style"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 10);

    let response = post_json(
        &url,
        &json!({"model": "mock-1", "prompt": "old words:6", "stream": true}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(header(response.headers(), "content-type").starts_with("text/event-stream"));
    let payloads = sse_data(&body_text(response).await);
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    assert!(!chunks.is_empty());
    for chunk in &chunks {
        assert_eq!(chunk["object"], "text_completion", "{chunk}");
    }
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "w1 w2 w3 w4 w5 w6");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn legacy_members_are_forwarded_refused_by_name_or_carry_the_usage_chunk() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_only(&mock, ""));
    let url = gateway.url("/v1/completions");

    // Members with a chat counterpart go on as the chat endpoint sends unknown members;
    // the legacy members' "nothing asked" values are accepted and dropped.
    let body = json!({"model": "mock-1", "prompt": "pass these", "presence_penalty": 0.5,
        "frequency_penalty": 0.25, "logit_bias": {"50256": -100}, "user": "u-42",
        "echo": false, "best_of": 1, "suffix": null, "logprobs": null});
    let response = post_json(&url, &body).await;
    assert_eq!(response.status(), 200);
    let seen = mock.last_request("/v1/chat/completions").await;
    let sent = &seen["body"];
    assert_eq!(sent["presence_penalty"], 0.5, "{seen}");
    assert_eq!(sent["frequency_penalty"], 0.25, "{seen}");
    assert_eq!(sent["logit_bias"]["50256"], -100, "{seen}");
    assert_eq!(sent["user"], "u-42", "{seen}");
    for legacy in ["echo", "best_of", "suffix", "logprobs", "prompt"] {
        assert!(
            sent.get(legacy).is_none(),
            "{legacy} reached the chat upstream: {seen}"
        );
    }

    // What a chat model cannot do is refused by name, not answered as if it was not asked.
    for (member, value) in [
        ("echo", json!(true)),
        ("logprobs", json!(3)),
        ("suffix", json!("}")),
        ("best_of", json!(4)),
    ] {
        let mut body = json!({"model": "mock-1", "prompt": "refuse me"});
        body[member] = value;
        let response = post_json(&url, &body).await;
        assert_eq!(response.status(), 400, "{member}");
        let error: Value = response.json().await.unwrap();
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("`{member}`")),
            "{member}: {error}"
        );
    }
    let bad = json!({"model": "mock-1", "prompt": "x", "stream": true, "stream_options": "yes"});
    let response = post_json(&url, &bad).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stream_options")
    );

    // `stream_options.include_usage`: the last event before [DONE] is the usage, no choices.
    let body = json!({"model": "mock-1", "prompt": "count words:4", "stream": true,
        "stream_options": {"include_usage": true}});
    let response = post_json(&url, &body).await;
    assert_eq!(response.status(), 200);
    let payloads = sse_data(&body_text(response).await);
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let usage: Value = serde_json::from_str(&payloads[payloads.len() - 2]).unwrap();
    assert_eq!(usage["object"], "text_completion", "{usage}");
    assert_eq!(usage["choices"], json!([]), "{usage}");
    assert!(
        usage["usage"]["completion_tokens"].as_u64() > Some(0),
        "{usage}"
    );
    let seen = mock.last_request("/v1/chat/completions").await;
    assert_eq!(
        seen["body"]["stream_options"]["include_usage"], true,
        "{seen}"
    );
}

#[tokio::test]
async fn models_endpoint_lists_configured_models_in_openai_format() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_and_claude(&mock));
    let response = get(&gateway.url("/v1/models")).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "list");
    let data = body["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["mock-1", "claude-mock"]);
    for model in data {
        assert_eq!(model["object"], "model");
        assert!(model["created"].is_u64());
    }
    assert_eq!(data[0]["owned_by"], "primary");
    assert_eq!(data[1]["owned_by"], "claude");
}

#[tokio::test]
async fn health_is_200_while_a_provider_is_usable_and_503_once_the_only_one_is_down() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&config(&format!(
        "providers:\n  primary: {{type: openai_compatible, base_url: \"{}\", model: mock-1, health_check: {{interval: 200ms, timeout: 2s, failure_threshold: 1, success_threshold: 1}}}}\nprovider_preference: [primary]\n",
        mock.openai_base()
    )));
    let response = get(&gateway.url("/health")).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["usable_providers"], 1);

    // The openai_compatible health check is GET {base}/models.
    mock.set_fault(json!({"route": "/v1/models", "status": 500}))
        .await;
    let url = gateway.url("/health");
    let body: Value = eventually(Duration::from_secs(30), "/health turns 503", || {
        let url = url.clone();
        async move {
            let response = client().get(&url).send().await.ok()?;
            (response.status() == 503).then_some(())?;
            response.json().await.ok()
        }
    })
    .await;
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["usable_providers"], 0);

    let response = get(&gateway.url("/v1/health")).await;
    assert_eq!(response.status(), 503);
    let node: Value = response.json().await.unwrap();
    assert_eq!(node["providers"][0]["health"]["healthy"], false);

    // With the only provider down, a completion has nowhere to go.
    let (error, _) = expect_error(chat(&gateway, &chat_body("hi")).await, 503).await;
    assert_eq!(error["code"], "no_provider_available");

    mock.clear_faults().await;
    eventually(Duration::from_secs(30), "/health back to 200", || {
        let url = url.clone();
        async move {
            let response = client().get(&url).send().await.ok()?;
            (response.status() == 200).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn node_health_reports_version_uptime_and_each_provider() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_and_claude(&mock));
    let response = get(&gateway.url("/v1/health")).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert!(
        body["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{body}"
    );
    assert!(body["uptime_seconds"].is_u64(), "{body}");
    assert_eq!(body["auth"], "off");
    let providers = body["providers"].as_array().unwrap();
    assert_eq!(providers.len(), 2);
    assert_eq!(providers[0]["name"], "primary");
    assert_eq!(providers[0]["type"], "openai_compatible");
    assert_eq!(providers[0]["model"], "mock-1");
    assert_eq!(providers[1]["name"], "claude");
    assert_eq!(providers[1]["type"], "anthropic");
    for provider in providers {
        assert_eq!(provider["usable"], true);
        assert_eq!(provider["health"]["healthy"], true);
        assert_eq!(provider["circuit_breaker"]["state"], "closed");
    }
}

#[tokio::test]
async fn metrics_count_requests_per_endpoint_in_prometheus_text() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_only(&mock, ""));
    assert_eq!(chat(&gateway, &chat_body("one")).await.status(), 200);
    assert_eq!(chat(&gateway, &chat_body("two")).await.status(), 200);
    assert_eq!(get(&gateway.url("/v1/models")).await.status(), 200);
    assert_eq!(get(&gateway.url("/nope")).await.status(), 404);

    let response = get(&gateway.url("/metrics")).await;
    assert_eq!(response.status(), 200);
    assert!(header(response.headers(), "content-type").starts_with("text/plain"));
    let text = gateway.metrics().await;
    assert!(
        text.contains("# TYPE hapax_http_requests_total counter"),
        "{text}"
    );
    let count = |endpoint: &str, status: &str| {
        metric(
            &text,
            "hapax_http_requests_total",
            &[("endpoint", endpoint), ("status", status)],
        )
    };
    assert_eq!(count("/v1/chat/completions", "200"), Some(2.0), "{text}");
    assert_eq!(count("/v1/models", "200"), Some(1.0), "{text}");
    assert_eq!(count("other", "404"), Some(1.0), "{text}");
}

#[tokio::test]
async fn sane_request_id_is_echoed_and_insane_one_is_replaced() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_only(&mock, ""));
    let url = gateway.url("/v1/chat/completions");

    let response = with_patience(
        "sane id",
        client()
            .post(&url)
            .header("x-request-id", "trace-42_a.b:c")
            .json(&chat_body("hi"))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(response.headers(), "x-request-id"), "trace-42_a.b:c");

    for insane in ["has spaces and <tags>", &"x".repeat(200)] {
        let response = with_patience(
            "insane id",
            client()
                .post(&url)
                .header("x-request-id", insane)
                .json(&chat_body("hi"))
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 200);
        let id = header(response.headers(), "x-request-id");
        assert_ne!(id, insane);
        assert!(id.starts_with("req-"), "generated id: {id}");
    }

    // Errors carry the echoed id too, in the header and in the body.
    let response = with_patience(
        "id on error",
        client()
            .get(gateway.url("/nope"))
            .header("x-request-id", "err-id-1")
            .send(),
    )
    .await
    .unwrap();
    let (error, _) = expect_error(response, 404).await;
    assert_eq!(error["request_id"], "err-id-1");
}

// === errors ===

#[tokio::test]
async fn malformed_json_is_a_400_in_the_error_shape() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_only(&mock, ""));
    let response = with_patience(
        "malformed",
        client()
            .post(gateway.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(r#"{"model": "mock-1", "messages": [{"role": "user""#)
            .send(),
    )
    .await
    .unwrap();
    let (error, _) = expect_error(response, 400).await;
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["code"], "invalid_json");
    assert_eq!(mock.count("/v1/chat/completions").await, 0);
}

#[tokio::test]
async fn wrong_field_type_is_a_400_naming_the_field_path() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_only(&mock, ""));
    let cases = [
        (
            json!({"model": "mock-1", "messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
        (
            json!({"model": "mock-1", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}),
            "temperature",
        ),
        (
            json!({"model": "mock-1", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": {"x": 1}}]}),
            "messages[1].content",
        ),
    ];
    for (body, path) in cases {
        let (error, _) = expect_error(chat(&gateway, &body).await, 400).await;
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("`{path}`")),
            "message should name `{path}`: {message}"
        );
        assert_eq!(error["type"], "invalid_request_error");
    }
    // An out-of-range value is named too.
    let mut body = chat_body("hi");
    body["temperature"] = json!(7);
    let (error, _) = expect_error(chat(&gateway, &body).await, 400).await;
    assert!(error["message"].as_str().unwrap().contains("temperature"));
    assert_eq!(mock.count("/v1/chat/completions").await, 0);
}

#[tokio::test]
async fn empty_messages_is_a_400() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_only(&mock, ""));
    let (error, _) = expect_error(
        chat(&gateway, &json!({"model": "mock-1", "messages": []})).await,
        400,
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("messages"),
        "{error}"
    );
    let (error, _) = expect_error(
        post_json(&gateway.url("/v1/completions"), &json!({"messages": []})).await,
        400,
    )
    .await;
    assert!(error["message"].as_str().unwrap().contains("messages"));
    assert_eq!(mock.count("/v1/chat/completions").await, 0);
}

#[tokio::test]
async fn missing_or_wrong_api_key_is_a_401_and_both_key_headers_work() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&format!(
        "server: {{host: 127.0.0.1, port: 0}}\nauth:\n  enabled: true\n  api_keys:\n    - {{name: tester, key: hk-right-key-123}}\nproviders:\n  primary: {{type: openai_compatible, base_url: \"{}\", model: mock-1, health_check: {{enabled: false}}}}\nprovider_preference: [primary]\n",
        mock.openai_base()
    ));
    let url = gateway.url("/v1/chat/completions");
    let send = |request: reqwest::RequestBuilder| async move {
        with_patience("auth request", request.json(&chat_body("hi")).send())
            .await
            .unwrap()
    };

    let (error, _) = expect_error(send(client().post(&url)).await, 401).await;
    assert_eq!(error["type"], "authentication_error");
    let (error, _) = expect_error(
        send(client().post(&url).bearer_auth("hk-wrong-key")).await,
        401,
    )
    .await;
    assert_eq!(error["code"], "invalid_api_key");
    expect_error(
        send(client().post(&url).header("x-api-key", "hk-wrong-key")).await,
        401,
    )
    .await;
    let models = with_patience("models", client().get(gateway.url("/v1/models")).send())
        .await
        .unwrap();
    expect_error(models, 401).await;
    assert_eq!(mock.count("/v1/chat/completions").await, 0);

    let response = send(client().post(&url).bearer_auth("hk-right-key-123")).await;
    assert_eq!(response.status(), 200);
    let response = send(client().post(&url).header("x-api-key", "hk-right-key-123")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(mock.count("/v1/chat/completions").await, 1 + 1);
    // Health stays open unless protect_health is set.
    assert_eq!(get(&gateway.url("/health")).await.status(), 200);
}

#[tokio::test]
async fn unknown_path_is_a_404_and_get_on_chat_is_a_405() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_only(&mock, ""));
    let (error, _) = expect_error(get(&gateway.url("/v1/nothing-here")).await, 404).await;
    assert_eq!(error["type"], "not_found_error");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("/v1/nothing-here")
    );
    let (error, headers) = expect_error(get(&gateway.url("/v1/chat/completions")).await, 405).await;
    assert_eq!(error["code"], "method_not_allowed");
    assert_eq!(header(&headers, "allow"), "POST");
}

#[tokio::test]
async fn body_over_max_body_bytes_is_a_413_declared_or_chunked() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&config(&format!(
        "providers:\n  primary: {{type: openai_compatible, base_url: \"{}\", model: mock-1, health_check: {{enabled: false}}}}\nprovider_preference: [primary]\n",
        mock.openai_base()
    )).replace("port: 0}", "port: 0, max_body_bytes: 2048}"));
    let url = gateway.url("/v1/chat/completions");
    let big = chat_body(&"a".repeat(3000));
    let (error, _) = expect_error(post_json(&url, &big).await, 413).await;
    assert_eq!(error["code"], "payload_too_large");

    // Chunked, with no Content-Length to go by.
    let bytes = serde_json::to_vec(&big).unwrap();
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(512).map(|c| Ok(c.to_vec())).collect();
    let response = with_patience(
        "chunked",
        client()
            .post(&url)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                pieces,
            )))
            .send(),
    )
    .await
    .unwrap();
    expect_error(response, 413).await;

    // Just under the limit is fine.
    let response = chat(&gateway, &chat_body(&"a".repeat(1500))).await;
    assert_eq!(response.status(), 200);
    assert_eq!(mock.count("/v1/chat/completions").await, 1);
}

#[tokio::test]
async fn non_json_content_type_is_a_415_and_json_with_charset_is_accepted() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_only(&mock, ""));
    let url = gateway.url("/v1/chat/completions");
    let body = serde_json::to_string(&chat_body("hi")).unwrap();
    let send = |content_type: &'static str| {
        let request = client()
            .post(&url)
            .header("content-type", content_type)
            .body(body.clone());
        async move { with_patience(content_type, request.send()).await.unwrap() }
    };
    let (error, _) = expect_error(send("text/plain").await, 415).await;
    assert_eq!(error["code"], "unsupported_media_type");
    let no_type = with_patience("no type", client().post(&url).body(body.clone()).send())
        .await
        .unwrap();
    expect_error(no_type, 415).await;
    assert_eq!(send("application/json; charset=utf-8").await.status(), 200);
    assert_eq!(send("application/json").await.status(), 200);
}

#[tokio::test]
async fn upstream_429_is_answered_429_with_retry_after() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_only(&mock, ""));
    mock.set_fault(json!({"route": "/v1/chat/completions", "status": 429, "retry_after": 1}))
        .await;
    let (error, headers) = expect_error(chat(&gateway, &chat_body("hi")).await, 429).await;
    assert_eq!(header(&headers, "retry-after"), "1");
    assert_eq!(error["type"], "rate_limit_error");
    assert!(
        error["message"].as_str().unwrap().contains("rate limit"),
        "{error}"
    );
}

#[tokio::test]
async fn upstream_500_on_every_provider_is_a_502() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_and_claude(&mock));
    mock.set_fault(json!({"route": "/v1/chat/completions", "status": 500}))
        .await;
    mock.set_fault(json!({"route": "/v1/messages", "status": 500}))
        .await;
    // No model: every provider is a candidate, so the gateway fails over before giving up.
    let body = json!({"messages": [{"role": "user", "content": "hi"}]});
    let (error, _) = expect_error(chat(&gateway, &body).await, 502).await;
    assert_eq!(error["type"], "upstream_error");
    assert!(mock.count("/v1/chat/completions").await >= 1);
    assert!(
        mock.count("/v1/messages").await >= 1,
        "failed over to claude"
    );
}

#[tokio::test]
async fn no_usable_provider_is_a_503_after_the_breaker_is_forced_open() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_only(&mock, ""));
    let response = with_patience(
        "force open",
        client()
            .post(gateway.url("/admin/breakers/primary/open"))
            .send(),
    )
    .await
    .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let (error, _) = expect_error(chat(&gateway, &chat_body("hi")).await, 503).await;
    assert_eq!(error["code"], "no_provider_available");
    let mut streamed = chat_body("hi");
    streamed["stream"] = json!(true);
    expect_error(chat(&gateway, &streamed).await, 503).await;
    assert_eq!(mock.count("/v1/chat/completions").await, 0);
    assert_eq!(get(&gateway.url("/health")).await.status(), 503);

    let response = with_patience(
        "force close",
        client()
            .post(gateway.url("/admin/breakers/primary/close"))
            .send(),
    )
    .await
    .unwrap();
    assert!(response.status().is_success());
    assert_eq!(chat(&gateway, &chat_body("hi")).await.status(), 200);
}

#[tokio::test]
async fn upstream_slower_than_the_provider_timeout_is_a_504() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_only(&mock, ", timeout: 300ms"));
    mock.set_fault(json!({"route": "/v1/chat/completions", "latency_ms": 3000}))
        .await;
    let (error, _) = expect_error(chat(&gateway, &chat_body("hi")).await, 504).await;
    assert_eq!(error["type"], "timeout_error");

    mock.set_fault(json!({"route": "/v1/chat/completions", "hang": true}))
        .await;
    let mut streamed = chat_body("hi");
    streamed["stream"] = json!(true);
    let (error, _) = expect_error(chat(&gateway, &streamed).await, 504).await;
    assert_eq!(error["code"], "upstream_timeout");
}

#[tokio::test]
async fn upstream_error_bodies_do_not_leak_the_provider_key() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_only(&mock, ", api_key: sk-test-SECRET123456789"));
    mock.set_fault(json!({"route": "/v1/chat/completions", "status": 500}))
        .await;
    let response = chat(&gateway, &chat_body("hi")).await;
    let status = response.status().as_u16();
    let text = body_text(response).await;
    assert_eq!(status, 502, "{text}");
    assert!(!text.contains("SECRET123456789"), "key leaked: {text}");
    // The key did go upstream, so the gateway had it to leak.
    let seen = mock.last_request("/v1/chat/completions").await;
    assert_eq!(
        seen["headers"]["authorization"],
        "Bearer sk-test-SECRET123456789"
    );
    for path in ["/v1/health", "/metrics", "/admin/breakers"] {
        let text = body_text(get(&gateway.url(path)).await).await;
        assert!(!text.contains("SECRET123456789"), "key leaked by {path}");
    }
    assert!(
        !gateway.logs().contains("SECRET123456789"),
        "key leaked into the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_stream_finish_and_exits_zero() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&primary_only(&mock, ""));
    mock.set_fault(json!({"route": "/v1/chat/completions", "chunk_delay_ms": 100}))
        .await;
    let mut body = chat_body("slowly words:20");
    body["stream"] = json!(true);
    let mut response = chat(&gateway, &body).await;
    assert_eq!(response.status(), 200);

    // The stream is under way: its first bytes have arrived.
    let mut text = String::new();
    let first = with_patience("first chunk", response.chunk())
        .await
        .unwrap()
        .expect("a first chunk");
    text.push_str(&String::from_utf8_lossy(&first));

    let pid = gateway.process.pid().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    eventually(
        Duration::from_secs(30),
        "the gateway starts draining",
        || {
            let draining = gateway.logs().contains("shutting down");
            async move { draining.then_some(()) }
        },
    )
    .await;
    // Draining: no new connections are accepted, the open stream goes on.
    let refused = client().get(gateway.url("/health")).send().await;
    assert!(
        refused.is_err(),
        "new connections are refused while draining"
    );

    while let Some(chunk) = with_patience("next chunk", response.chunk()).await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let payloads = sse_data(&text);
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("[DONE]"),
        "{text}"
    );
    assert_eq!(
        concat_deltas(&payloads),
        (1..=20)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    );

    let terminating = tokio::task::spawn_blocking(move || {
        let mut gateway = gateway;
        let status = gateway.process.terminate(Duration::from_secs(60));
        (gateway, status)
    });
    let (gateway, status) = terminating.await.unwrap();
    let status = status.unwrap_or_else(|| panic!("gateway did not exit:\n{}", gateway.logs()));
    assert!(
        status.success(),
        "exit status {status:?}:\n{}",
        gateway.logs()
    );
}
