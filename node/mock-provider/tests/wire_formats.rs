//! Each wire format, whole and streamed, as a client of that API would read it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Mock, openai_chat, sse_data, sse_events};
use hapax_mock_provider::reply::{count_tokens, reply_text};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn openai_completion_echoes_the_last_user_message_with_usage() {
    let mock = Mock::start().await;
    let response = mock
        .post("/v1/chat/completions", openai_chat("hi there", false))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
    assert_eq!(body["model"], "gpt-test");
    let expected = reply_text("hi there");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], expected.as_str());
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    assert_eq!(body["usage"]["completion_tokens"], count_tokens(&expected));
    assert_eq!(body["usage"]["total_tokens"], 4 + count_tokens(&expected));

    let parts = json!({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "from parts"}]}
    ]});
    let body: Value = mock
        .post("/v1/chat/completions", parts)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        reply_text("from parts")
    );
}

#[tokio::test]
async fn openai_stream_sends_role_pieces_stop_usage_and_done() {
    let mock = Mock::start().await;
    let mut request = openai_chat("stream me", true);
    request["stream_options"] = json!({"include_usage": true});
    let response = mock.post("/v1/chat/completions", request).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let chunks = sse_data(&response.text().await.unwrap());
    let expected = reply_text("stream me");

    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let pieces = &chunks[1..chunks.len() - 3];
    let text: String = pieces
        .iter()
        .map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, expected);
    assert_eq!(pieces.len(), expected.split_whitespace().count());
    let stop = &chunks[chunks.len() - 3];
    assert_eq!(stop["choices"][0]["delta"], json!({}));
    assert_eq!(stop["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[chunks.len() - 2];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], count_tokens(&expected));
    assert_eq!(chunks[chunks.len() - 1], "[DONE]");
}

#[tokio::test]
async fn words_directive_makes_long_streams() {
    let mock = Mock::start().await;
    let response = mock
        .post("/v1/chat/completions", openai_chat("words:500", true))
        .await;
    let chunks = sse_data(&response.text().await.unwrap());
    // role chunk + 500 pieces + stop chunk + [DONE]
    assert_eq!(chunks.len(), 503);
    assert_eq!(chunks[500]["choices"][0]["delta"]["content"], " w500");
}

#[tokio::test]
async fn openai_rejects_requests_without_model_or_messages() {
    let mock = Mock::start().await;
    for body in [
        json!({"messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "m", "messages": []}),
        json!({"model": "m"}),
    ] {
        let response = mock.post("/v1/chat/completions", body).await;
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert!(error["error"]["message"].is_string());
        assert!(error["error"].get("param").is_some() && error["error"].get("code").is_some());
    }
}

#[tokio::test]
async fn model_lists_name_both_mock_models() {
    let mock = Mock::start().await;
    let models = mock.get_json("/v1/models").await;
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "mock-1");
    assert_eq!(models["data"][1]["owned_by"], "hapax-mock");
    let tags = mock.get_json("/api/tags").await;
    assert_eq!(tags["models"][0]["name"], "mock-1");
    assert_eq!(tags["models"][1]["model"], "mock-2");
}

#[tokio::test]
async fn anthropic_message_counts_system_prompt_and_answers_end_turn() {
    let mock = Mock::start().await;
    let request = json!({
        "model": "claude-test",
        "max_tokens": 64,
        "system": [{"type": "text", "text": "be kind"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello claude"}]}],
    });
    let response = mock.anthropic(request).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let expected = reply_text("hello claude");
    assert!(body["id"].as_str().unwrap().starts_with("msg_mock_"));
    assert_eq!(body["type"], "message");
    assert_eq!(body["model"], "claude-test");
    assert_eq!(body["content"], json!([{"type": "text", "text": expected}]));
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["stop_sequence"], Value::Null);
    assert_eq!(body["usage"]["input_tokens"], 4);
    assert_eq!(body["usage"]["output_tokens"], count_tokens(&expected));
}

#[tokio::test]
async fn anthropic_rejects_missing_key_max_tokens_and_bad_roles() {
    let mock = Mock::start().await;
    let ok = json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
    let response = mock
        .client
        .post(mock.url("/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "authentication_error");

    for body in [
        json!({"model": "c", "messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "c", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
    ] {
        let response = mock.anthropic(body).send().await.unwrap();
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }
}

#[tokio::test]
async fn anthropic_stream_sends_the_real_event_sequence() {
    let mock = Mock::start().await;
    let request = json!({"model": "c", "max_tokens": 5, "stream": true,
        "messages": [{"role": "user", "content": "stream please"}]});
    let response = mock.anthropic(request).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = sse_events(&response.text().await.unwrap());
    let expected = reply_text("stream please");
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    let pieces = expected.split_whitespace().count();
    let mut want = vec!["message_start", "content_block_start", "ping"];
    want.extend(std::iter::repeat_n("content_block_delta", pieces));
    want.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, want);
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str());
    }
    let start = &events[0].1["message"];
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["usage"]["output_tokens"], 1);
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    let text: String = events[3..3 + pieces]
        .iter()
        .map(|(_, data)| {
            assert_eq!(data["delta"]["type"], "text_delta");
            data["delta"]["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(text, expected);
    let delta = &events[events.len() - 2].1;
    assert_eq!(
        delta["delta"],
        json!({"stop_reason": "end_turn", "stop_sequence": null})
    );
    assert_eq!(delta["usage"]["output_tokens"], count_tokens(&expected));
}

#[tokio::test]
async fn ollama_streams_ndjson_by_default_and_answers_whole_when_asked() {
    let mock = Mock::start().await;
    let messages = json!([{"role": "user", "content": "hey llama"}]);
    let expected = reply_text("hey llama");

    let response = mock
        .post("/api/chat", json!({"model": "llama", "messages": messages}))
        .await;
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = response
        .text()
        .await
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let (last, pieces) = lines.split_last().unwrap();
    assert!(pieces.iter().all(|line| line["done"] == false));
    let text: String = pieces
        .iter()
        .map(|line| line["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, expected);
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["message"]["content"], "");
    assert_eq!(last["eval_count"], count_tokens(&expected));

    let whole = json!({"model": "llama", "messages": messages, "stream": false});
    let body: Value = mock.post("/api/chat", whole).await.json().await.unwrap();
    assert_eq!(body["model"], "llama");
    assert_eq!(
        body["message"],
        json!({"role": "assistant", "content": expected})
    );
    assert_eq!(body["done"], true);
    assert_eq!(body["prompt_eval_count"], 2);
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(body["total_duration"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn keep_alive_serves_pipelined_requests_on_one_connection() {
    let mock = Mock::start().await;
    let addr = mock.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = "GET /v1/models HTTP/1.1\r\nhost: mock\r\n\r\n";
    stream
        .write_all(format!("{request}{request}").as_bytes())
        .await
        .unwrap();
    let mut received = String::new();
    let mut buf = [0u8; 4096];
    while received.matches("HTTP/1.1 200 OK").count() < 2 {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed after: {received}");
        received.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    assert_eq!(mock.counters().await["routes"]["/v1/models"], 2);
}

#[tokio::test]
async fn serve_returns_when_shutdown_resolves() {
    let mock = Mock::start().await;
    mock.get_json("/v1/models").await;
    mock.shutdown().await;
}
