//! Translation between the OpenAI chat format clients speak and the Anthropic and Ollama
//! formats upstreams speak, checked end to end against the mock provider: the answer, the
//! finish reason, usage, and the request the upstream actually received. Also a stream that
//! breaks mid-way ends with an error event instead of a hang or a fake `[DONE]`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hapax_tests::{Gateway, MockUpstream, client, eventually, metric, sse_data};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(60);

/// Three providers on one mock: OpenAI-compatible, Anthropic and Ollama; health checks off.
fn gateway_config(mock: &MockUpstream, claude_extra: &str) -> String {
    format!(
        "server: {{host: 127.0.0.1, port: 0}}
auth: {{enabled: false}}
providers:
  primary: {{type: openai_compatible, base_url: \"{openai}\", model: mock-1, health_check: {{enabled: false}}}}
  claude: {{type: anthropic, base_url: \"{base}\", api_key: test-key, model: claude-mock, health_check: {{enabled: false}}{claude_extra}}}
  llama: {{type: ollama, base_url: \"{base}\", model: llama-mock, health_check: {{enabled: false}}}}
provider_preference: [primary, claude, llama]
",
        openai = mock.openai_base(),
        base = mock.base(),
    )
}

/// A conversation with a system message (2 words), an earlier exchange (1 + 1 words) and a
/// last user message (3 words): 7 prompt words in all.
fn conversation(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "what is hapax"},
        ],
    })
}

const PROMPT_WORDS: u64 = 7;
const ANSWER: &str = "Hello from the Hapax mock provider. You said: what is hapax";
const ANSWER_WORDS: u64 = 11;

async fn post(gateway: &Gateway, body: &Value) -> reqwest::Response {
    tokio::time::timeout(
        PATIENCE,
        client()
            .post(gateway.url("/v1/chat/completions"))
            .json(body)
            .send(),
    )
    .await
    .expect("request timed out")
    .unwrap()
}

/// Posts a streamed request and returns its `x-request-id` and `data:` payloads.
async fn stream(gateway: &Gateway, body: &Value) -> (String, Vec<String>) {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let response = post(gateway, &body).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let text = tokio::time::timeout(PATIENCE, response.text())
        .await
        .expect("the stream did not end")
        .unwrap();
    (id, sse_data(&text))
}

fn chunks(payloads: &[String]) -> Vec<Value> {
    payloads
        .iter()
        .filter(|p| *p != "[DONE]")
        .map(|p| serde_json::from_str(p).unwrap_or_else(|e| panic!("{e}: {p}")))
        .collect()
}

fn concat_deltas(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn finish_reasons(chunks: &[Value]) -> Vec<String> {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str().map(str::to_owned))
        .collect()
}

fn usage_chunks(chunks: &[Value]) -> Vec<Value> {
    chunks
        .iter()
        .filter(|c| c["usage"].is_object())
        .map(|c| c["usage"].clone())
        .collect()
}

fn assert_usage(usage: &Value, prompt: u64, completion: u64) {
    assert_eq!(usage["prompt_tokens"], prompt, "{usage}");
    assert_eq!(usage["completion_tokens"], completion, "{usage}");
    assert_eq!(usage["total_tokens"], prompt + completion, "{usage}");
}

// === Anthropic ===

#[tokio::test]
async fn anthropic_reply_translates_to_an_openai_completion() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&gateway_config(&mock, ""));
    let response = post(&gateway, &conversation("claude-mock")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-hapax-provider"], "claude");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "claude-mock");
    assert!(
        body["id"].as_str().unwrap().starts_with("msg_mock_"),
        "{body}"
    );
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], ANSWER);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_usage(&body["usage"], PROMPT_WORDS, ANSWER_WORDS);
}

#[tokio::test]
async fn anthropic_request_carries_system_default_max_tokens_and_auth_headers() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&gateway_config(&mock, ""));
    assert_eq!(
        post(&gateway, &conversation("claude-mock")).await.status(),
        200
    );
    let seen = mock.last_request("/v1/messages").await;
    let body = &seen["body"];
    assert_eq!(body["model"], "claude-mock");
    assert_eq!(body["system"], "Answer briefly.");
    assert_eq!(
        body["max_tokens"], 4096,
        "default when the client sends none"
    );
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "what is hapax"},
        ]),
        "system messages leave the message list"
    );
    assert!(body.get("stream").is_none_or(|s| s == false), "{body}");
    assert_eq!(seen["headers"]["x-api-key"], "test-key");
    assert_eq!(seen["headers"]["anthropic-version"], "2023-06-01");
    assert!(
        seen["headers"].get("authorization").is_none(),
        "anthropic keys go in x-api-key only: {seen}"
    );
}

#[tokio::test]
async fn anthropic_max_tokens_comes_from_the_client_or_the_provider_default() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&gateway_config(&mock, ", default_max_tokens: 512"));
    let mut body = conversation("claude-mock");
    assert_eq!(post(&gateway, &body).await.status(), 200);
    assert_eq!(
        mock.last_request("/v1/messages").await["body"]["max_tokens"],
        512
    );
    body["max_tokens"] = json!(77);
    assert_eq!(post(&gateway, &body).await.status(), 200);
    assert_eq!(
        mock.last_request("/v1/messages").await["body"]["max_tokens"],
        77
    );
    body.as_object_mut().unwrap().remove("max_tokens");
    body["max_completion_tokens"] = json!(33);
    body["temperature"] = json!(0.5);
    assert_eq!(post(&gateway, &body).await.status(), 200);
    let seen = mock.last_request("/v1/messages").await;
    assert_eq!(seen["body"]["max_tokens"], 33);
    assert_eq!(seen["body"]["temperature"], 0.5);
}

#[tokio::test]
async fn anthropic_stream_translates_to_openai_chunks_with_usage() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&gateway_config(&mock, ""));
    let mut body = conversation("claude-mock");
    body["stream_options"] = json!({"include_usage": true});
    let (_, payloads) = stream(&gateway, &body).await;
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let chunks = chunks(&payloads);
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        assert_eq!(chunk["model"], "claude-mock", "{chunk}");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(concat_deltas(&chunks), ANSWER);
    assert_eq!(finish_reasons(&chunks), ["stop"]);
    let usage = usage_chunks(&chunks);
    assert_eq!(usage.len(), 1, "{payloads:?}");
    assert_usage(&usage[0], PROMPT_WORDS, ANSWER_WORDS);

    let seen = mock.last_request("/v1/messages").await;
    assert_eq!(seen["body"]["stream"], true);
    assert_eq!(seen["body"]["system"], "Answer briefly.");
    assert_eq!(seen["body"]["max_tokens"], 4096);
}

#[tokio::test]
async fn anthropic_stream_without_include_usage_sends_no_usage_chunk() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&gateway_config(&mock, ""));
    let mut body = conversation("claude-mock");
    body["messages"][3]["content"] = json!("words:9");
    let (_, payloads) = stream(&gateway, &body).await;
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let chunks = chunks(&payloads);
    assert_eq!(concat_deltas(&chunks), "w1 w2 w3 w4 w5 w6 w7 w8 w9");
    assert_eq!(finish_reasons(&chunks), ["stop"]);
    assert!(usage_chunks(&chunks).is_empty(), "{payloads:?}");
}

// === Ollama ===

#[tokio::test]
async fn ollama_reply_translates_to_an_openai_completion() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&gateway_config(&mock, ""));
    let mut body = conversation("llama-mock");
    body["max_tokens"] = json!(64);
    let response = post(&gateway, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-hapax-provider"], "llama");
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(reply["model"], "llama-mock");
    assert_eq!(reply["choices"][0]["message"]["content"], ANSWER);
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    assert_usage(&reply["usage"], PROMPT_WORDS, ANSWER_WORDS);

    let seen = mock.last_request("/api/chat").await;
    let sent = &seen["body"];
    assert_eq!(sent["model"], "llama-mock");
    assert_eq!(sent["stream"], false);
    assert_eq!(sent["options"]["num_predict"], 64);
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "what is hapax"},
        ])
    );
}

#[tokio::test]
async fn ollama_ndjson_stream_translates_to_openai_chunks_with_usage() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&gateway_config(&mock, ""));
    let mut body = conversation("llama-mock");
    body["max_completion_tokens"] = json!(12);
    body["stream_options"] = json!({"include_usage": true});
    let (_, payloads) = stream(&gateway, &body).await;
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let chunks = chunks(&payloads);
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(concat_deltas(&chunks), ANSWER);
    assert_eq!(finish_reasons(&chunks), ["stop"]);
    let usage = usage_chunks(&chunks);
    assert_eq!(usage.len(), 1, "{payloads:?}");
    assert_usage(&usage[0], PROMPT_WORDS, ANSWER_WORDS);

    let seen = mock.last_request("/api/chat").await;
    assert_eq!(seen["body"]["stream"], true);
    assert_eq!(seen["body"]["options"]["num_predict"], 12);
}

// === broken streams ===

#[tokio::test]
async fn mid_stream_reset_ends_the_sse_stream_with_an_error_event_and_no_done() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&gateway_config(&mock, ""));
    // Anthropic's first three events say nothing yet: reset after two content deltas there.
    for (model, route, sent) in [
        ("mock-1", "/v1/chat/completions", 2),
        ("claude-mock", "/v1/messages", 5),
        ("llama-mock", "/api/chat", 2),
    ] {
        mock.set_fault(json!({"route": route, "reset": "mid_stream", "reset_after_chunks": sent}))
            .await;
        let mut body = conversation(model);
        body["messages"][3]["content"] = json!("words:50");
        let (request_id, payloads) = stream(&gateway, &body).await;
        assert!(
            !payloads.iter().any(|p| p == "[DONE]"),
            "{model}: a broken stream must not end with [DONE]: {payloads:?}"
        );
        let last: Value = serde_json::from_str(payloads.last().unwrap()).unwrap();
        let error = &last["error"];
        assert!(
            error.is_object(),
            "{model}: last event is an error: {payloads:?}"
        );
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{last}"
        );
        assert_eq!(error["type"], "upstream_error", "{last}");
        assert_eq!(error["request_id"], request_id.as_str(), "{last}");
        let text = concat_deltas(&chunks(&payloads[..payloads.len() - 1]));
        let full: Vec<String> = (1..=50).map(|i| format!("w{i}")).collect();
        let full = full.join(" ");
        assert!(
            full.starts_with(&text) && text.len() < full.len(),
            "{model}: only a prefix of the answer arrived: {text:?}"
        );
        mock.clear_faults().await;
        // The 200 went out before the break, yet the request's log line and the error count
        // say it broke.
        let line = eventually(Duration::from_secs(5), "the request line", || async {
            gateway
                .logs()
                .lines()
                .find(|l| l.contains(&request_id) && l.contains("request finished"))
                .map(str::to_owned)
        })
        .await;
        assert!(
            line.contains("\"error\":\"stream_broken\"") && line.contains("WARN"),
            "{model}: {line}"
        );
    }
    let metrics = gateway.metrics().await;
    let broken = metric(&metrics, "hapax_errors_total", &[("type", "stream_broken")]);
    assert_eq!(broken, Some(3.0), "{metrics}");
}

#[tokio::test]
async fn a_stream_whose_body_ends_before_its_end_marker_is_an_error_not_done() {
    // The upstream's body ends cleanly (no reset) two chunks in: no `[DONE]`, no
    // `message_stop`, no `done`. The client must see an error event, never a `[DONE]` that
    // passes a cut answer as whole.
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&gateway_config(&mock, ""));
    // Anthropic's first three events say nothing yet (message_start, content_block_start,
    // ping): cut after two content deltas there.
    for (model, route, sent) in [
        ("mock-1", "/v1/chat/completions", 2),
        ("claude-mock", "/v1/messages", 5),
        ("llama-mock", "/api/chat", 2),
    ] {
        mock.set_fault(json!({"route": route, "end_after_chunks": sent}))
            .await;
        let mut body = conversation(model);
        body["messages"][3]["content"] = json!("words:50");
        let (_, payloads) = stream(&gateway, &body).await;
        assert!(
            !payloads.iter().any(|p| p == "[DONE]"),
            "{model}: a cut stream must not end with [DONE]: {payloads:?}"
        );
        let last: Value = serde_json::from_str(payloads.last().unwrap()).unwrap();
        assert_eq!(last["error"]["type"], "upstream_error", "{model}: {last}");
        mock.clear_faults().await;
    }
}

#[tokio::test]
async fn an_anthropic_stream_that_fails_before_any_content_fails_over() {
    // Anthropic can send `event: error` (overloaded) right after `message_start`; here the
    // stream is cut there instead (the mock has no error event), which takes the same path:
    // nothing has been said yet, so the stream is not committed and the next provider
    // answers it.
    let (claude, backup) = (MockUpstream::start(), MockUpstream::start());
    let config = format!(
        r#"
server: {{host: 127.0.0.1, port: 0}}
auth: {{enabled: false}}
providers:
  claude: {{type: anthropic, base_url: "{}", api_key: test, model: claude-mock, health_check: {{enabled: false}}}}
  backup: {{type: openai_compatible, base_url: "{}", model: mock-1, models: [claude-mock], health_check: {{enabled: false}}}}
provider_preference: [claude, backup]
routing: {{backoff_initial: 5ms, backoff_max: 20ms}}
"#,
        claude.base(),
        backup.openai_base()
    );
    let gateway = Gateway::start(&config);
    claude
        .set_fault(json!({"route": "/v1/messages", "end_after_chunks": 3}))
        .await;
    let mut body = conversation("claude-mock");
    body["messages"][3]["content"] = json!("words:5");
    let (_, payloads) = stream(&gateway, &body).await;
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("[DONE]"),
        "{payloads:?}"
    );
    let chunks = chunks(&payloads);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        concat_deltas(&chunks),
        "w1 w2 w3 w4 w5",
        "the backup answered it whole"
    );
}
