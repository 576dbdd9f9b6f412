//! Fault injection and the control API, as the gateway's tests will use them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Mock, openai_chat};
use serde_json::{Value, json};

#[tokio::test]
async fn counters_count_received_requests_including_faulted_ones() {
    let mock = Mock::start().await;
    mock.post("/v1/chat/completions", openai_chat("a", false))
        .await;
    mock.set_fault(json!({"route": "/v1/chat/completions", "status": 500}))
        .await;
    let failed = mock
        .post("/v1/chat/completions", openai_chat("b", false))
        .await;
    assert_eq!(failed.status(), 500);
    mock.get_json("/api/tags").await;

    let counters = mock.counters().await;
    assert_eq!(counters["total"], 3);
    assert_eq!(counters["routes"]["/v1/chat/completions"], 2);
    assert_eq!(counters["routes"]["/api/tags"], 1);
    assert_eq!(counters["routes"]["/v1/messages"], 0);

    let reset = mock.post("/_mock/reset", json!({})).await;
    assert_eq!(reset.status(), 200);
    assert_eq!(mock.counters().await["total"], 0);
    let healed = mock
        .post("/v1/chat/completions", openai_chat("c", false))
        .await;
    assert_eq!(healed.status(), 200);
}

#[tokio::test]
async fn status_fault_uses_the_routes_error_shape_and_retry_after() {
    let mock = Mock::start().await;
    let stored = mock
        .set_fault(json!({"route": "/v1/messages", "status": 429, "retry_after": 7}))
        .await;
    assert_eq!(
        stored,
        json!({"route": "/v1/messages", "status": 429, "retry_after": 7})
    );
    let body =
        json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
    let response = mock.anthropic(body).send().await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "rate_limit_error");

    mock.set_fault(json!({"route": "*", "status": 503})).await;
    let response = mock
        .post("/v1/chat/completions", openai_chat("x", false))
        .await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_none());
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "server_error");
    let response = mock
        .post("/api/chat", json!({"model": "m", "stream": false}))
        .await;
    let error: Value = response.json().await.unwrap();
    assert!(error["error"].is_string());
}

#[tokio::test]
async fn fault_with_times_clears_itself() {
    let mock = Mock::start().await;
    mock.set_fault(json!({"route": "/v1/chat/completions", "status": 500, "times": 2}))
        .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = mock
            .post("/v1/chat/completions", openai_chat("x", false))
            .await;
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [500, 500, 200]);
    assert_eq!(mock.get_json("/_mock/faults").await["faults"], json!([]));
}

#[tokio::test]
async fn latency_and_chunk_delay_slow_the_response() {
    let mock = Mock::start().await;
    mock.set_fault(json!({"route": "/v1/models", "latency_ms": 120}))
        .await;
    let started = Instant::now();
    mock.get_json("/v1/models").await;
    assert!(started.elapsed() >= Duration::from_millis(120));

    // "w1 w2 w3" streams as 3 pieces + 1 final line = 4 chunks, each delayed 25 ms.
    mock.set_fault(json!({"route": "/api/chat", "chunk_delay_ms": 25}))
        .await;
    let started = Instant::now();
    let response = mock
        .post(
            "/api/chat",
            json!({"model": "m", "messages": [
        {"role": "user", "content": "words:3"}]}),
        )
        .await;
    assert_eq!(response.text().await.unwrap().lines().count(), 4);
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn reset_before_response_is_a_connection_error() {
    let mock = Mock::start().await;
    mock.set_fault(json!({"route": "*", "reset": "before_response", "times": 1}))
        .await;
    let error = mock
        .client
        .post(mock.url("/v1/chat/completions"))
        .json(&openai_chat("x", false))
        .send()
        .await
        .expect_err("the connection is dropped without a response");
    assert!(error.status().is_none(), "not an HTTP status: {error}");
    assert_eq!(mock.counters().await["routes"]["/v1/chat/completions"], 1);
    let response = mock
        .post("/v1/chat/completions", openai_chat("x", false))
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn mid_stream_reset_breaks_the_body_after_the_first_chunk() {
    let mock = Mock::start().await;
    mock.set_fault(json!({"route": "/v1/chat/completions", "reset": "mid_stream"}))
        .await;
    let mut response = mock
        .post("/v1/chat/completions", openai_chat("x", true))
        .await;
    assert_eq!(response.status(), 200);
    let mut received = Vec::new();
    let error = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => panic!("body ended cleanly: {}", String::from_utf8_lossy(&received)),
            Err(error) => break error,
        }
    };
    assert!(
        error.is_body() || error.is_decode() || error.is_request(),
        "{error}"
    );
    let received = String::from_utf8(received).unwrap();
    assert_eq!(common::sse_data(&received).len(), 1, "{received}");
    assert!(received.contains(r#""role":"assistant""#));
}

#[tokio::test]
async fn stall_and_hang_go_silent_until_the_client_gives_up() {
    let mock = Mock::start().await;
    mock.set_fault(json!({"route": "/api/chat", "stall_after_chunks": 2}))
        .await;
    let mut response = mock
        .post(
            "/api/chat",
            json!({"model": "m", "messages": [
            {"role": "user", "content": "words:5"}]}),
        )
        .await;
    let mut lines = 0;
    while lines < 2 {
        let chunk = response.chunk().await.unwrap().unwrap();
        lines += chunk.iter().filter(|&&byte| byte == b'\n').count();
    }
    assert_eq!(lines, 2);
    let silent = tokio::time::timeout(Duration::from_millis(150), response.chunk()).await;
    assert!(silent.is_err(), "stream stays silent after 2 chunks");

    mock.set_fault(json!({"route": "/v1/models", "hang": true}))
        .await;
    let hung = mock
        .client
        .get(mock.url("/v1/models"))
        .timeout(Duration::from_millis(150))
        .send()
        .await
        .expect_err("no answer");
    assert!(hung.is_timeout());
}

#[tokio::test]
async fn clearing_one_route_leaves_the_others() {
    let mock = Mock::start().await;
    mock.set_fault(json!({"route": "/v1/models", "status": 500}))
        .await;
    mock.set_fault(json!({"route": "/api/tags", "status": 500}))
        .await;
    let cleared = mock
        .client
        .delete(mock.url("/_mock/faults?route=/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.json::<Value>().await.unwrap()["cleared"], 1);
    let models = mock
        .client
        .get(mock.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    let tags = mock.client.get(mock.url("/api/tags")).send().await.unwrap();
    assert_eq!(tags.status(), 500);
    mock.client
        .delete(mock.url("/_mock/faults"))
        .send()
        .await
        .unwrap();
    let tags = mock.client.get(mock.url("/api/tags")).send().await.unwrap();
    assert_eq!(tags.status(), 200);

    let bad = mock
        .post("/_mock/faults", json!({"route": "/nope", "status": 500}))
        .await;
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn last_request_shows_headers_and_body_as_sent() {
    let mock = Mock::start().await;
    let missing = mock
        .client
        .get(mock.url("/_mock/last_request?route=/v1/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let body = json!({"model": "c", "max_tokens": 99, "system": "you are terse",
        "messages": [{"role": "user", "content": "x"}]});
    mock.anthropic(body.clone()).send().await.unwrap();
    let last = mock
        .get_json("/_mock/last_request?route=/v1/messages")
        .await;
    assert_eq!(last["body"], body);
    assert_eq!(last["body"]["system"], "you are terse");
    assert_eq!(last["headers"]["x-api-key"], "sk-ant-test");
    assert_eq!(last["headers"]["anthropic-version"], "2023-06-01");
    assert_eq!(last["headers"]["content-type"], "application/json");
}
