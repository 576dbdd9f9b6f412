//! Reliability scenarios on one node, driving the real binary and the mock provider's
//! fault controls: failover, breakers, health checks, 429 handling, stream timeouts,
//! deduplication, rate limits and auth — each checked in `/metrics` too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::future::join_all;
use hapax_tests::{Gateway, MockUpstream, chat_body, client, eventually, metric, sse_data};
use serde_json::{Value, json};

const CHAT: &str = "/v1/chat/completions";

/// Two openai-compatible providers, each on its own mock, primary preferred.
fn two_providers(primary: &MockUpstream, backup: &MockUpstream, extra: &str) -> String {
    format!(
        r#"
server: {{host: 127.0.0.1, port: 0}}
logging: {{level: info}}
auth: {{enabled: false}}
providers:
  primary: {{type: openai_compatible, base_url: "{}", model: mock-1, timeout: 2s}}
  backup: {{type: openai_compatible, base_url: "{}", model: mock-1, timeout: 2s}}
provider_preference: [primary, backup]
routing: {{backoff_initial: 5ms, backoff_max: 20ms, first_token_timeout: 700ms, stream_stall_timeout: 700ms}}
{extra}
"#,
        primary.openai_base(),
        backup.openai_base()
    )
}

async fn post_chat(gateway: &Gateway, body: &Value) -> reqwest::Response {
    client()
        .post(gateway.url(CHAT))
        .json(body)
        .send()
        .await
        .unwrap()
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn primary_outage_fails_over_and_the_breaker_opens_half_opens_and_closes() {
    let (primary, backup) = (MockUpstream::start(), MockUpstream::start());
    let config = two_providers(
        &primary,
        &backup,
        "circuit_breaker: {failure_threshold: 3, timeout: 1s, max_requests: 1}",
    );
    let gateway = Gateway::start(&config);
    primary
        .set_fault(json!({"route": CHAT, "status": 500}))
        .await;

    let mut request_ids = Vec::new();
    for i in 0..8 {
        let response = post_chat(&gateway, &chat_body(&format!("outage {i}"))).await;
        assert_eq!(
            response.status(),
            200,
            "every client request succeeds through the backup"
        );
        assert_eq!(header(&response, "x-hapax-provider"), "backup");
        request_ids.push(header(&response, "x-request-id"));
    }
    // Each decision is a log line carrying the id of the request that made it.
    for (message, id) in [
        ("failing over to the next provider", &request_ids[0]),
        ("circuit breaker opened", &request_ids[2]),
    ] {
        let tagged = format!("\"request_id\":\"{id}\"");
        eventually(Duration::from_secs(5), message, || async {
            gateway
                .logs()
                .lines()
                .any(|line| line.contains(message) && line.contains(&tagged))
                .then_some(())
        })
        .await;
    }
    assert_eq!(
        primary.count(CHAT).await,
        3,
        "after 3 failures the open breaker keeps traffic off the primary"
    );
    let metrics = gateway.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "circuit_breaker_state",
            &[("provider", "primary")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "hapax_failovers_total",
            &[("from", "primary"), ("to", "backup")]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "hapax_provider_requests_total",
            &[("provider", "primary"), ("outcome", "server_error")]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "hapax_http_requests_total",
            &[("endpoint", CHAT), ("status", "200")]
        ),
        Some(8.0)
    );
    let health: Value = client()
        .get(gateway.url("/v1/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["providers"][0]["circuit_breaker"]["state"], "open");

    eventually(
        Duration::from_secs(5),
        "breaker half-open after its timeout",
        || async {
            (metric(
                &gateway.metrics().await,
                "circuit_breaker_state",
                &[("provider", "primary")],
            ) == Some(1.0))
            .then_some(())
        },
    )
    .await;

    primary.clear_faults().await;
    let response = post_chat(&gateway, &chat_body("probe")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-hapax-provider"),
        "primary",
        "the half-open probe goes to the primary"
    );
    let metrics = gateway.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "circuit_breaker_state",
            &[("provider", "primary")]
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "hapax_circuit_breaker_transitions_total",
            &[("provider", "primary"), ("state", "closed")]
        ),
        Some(1.0)
    );
    assert!(
        gateway.logs().contains("circuit breaker opened"),
        "the trip is logged"
    );
}

/// The keep-alive race, end to end: the upstream resets a kept connection as a request
/// arrives, before a byte of an answer. The request goes again on a new connection: the client
/// gets its 200 from the same provider, the resend is counted, and the breaker (one failure
/// would open it) never hears of it.
#[tokio::test]
async fn a_kept_connection_reset_as_a_request_arrives_is_resent_not_failed_over() {
    let (primary, backup) = (MockUpstream::start(), MockUpstream::start());
    let config = two_providers(
        &primary,
        &backup,
        "circuit_breaker: {failure_threshold: 1, timeout: 30s}",
    );
    let gateway = Gateway::start(&config);
    // The first request leaves a kept connection to the primary.
    assert_eq!(post_chat(&gateway, &chat_body("warm")).await.status(), 200);
    primary
        .set_fault(json!({"route": CHAT, "reset": "before_response", "times": 1}))
        .await;
    let response = post_chat(&gateway, &chat_body("raced")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-hapax-provider"), "primary");
    let metrics = gateway.metrics().await;
    let primary_label = [("provider", "primary")];
    assert_eq!(
        metric(&metrics, "hapax_upstream_resends_total", &primary_label),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "hapax_upstream_resends_total",
            &[("provider", "backup")]
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(&metrics, "circuit_breaker_state", &primary_label),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "hapax_failovers_total",
            &[("from", "primary"), ("to", "backup")]
        ),
        None
    );
    assert_eq!(backup.count(CHAT).await, 0);
}

#[tokio::test]
async fn a_hanging_primary_fails_over_within_the_deadline() {
    let (primary, backup) = (MockUpstream::start(), MockUpstream::start());
    let config = two_providers(&primary, &backup, "")
        .replace("timeout: 2s}\n  backup", "timeout: 400ms}\n  backup");
    assert!(config.contains("timeout: 400ms"));
    let gateway = Gateway::start(&config);
    primary
        .set_fault(json!({"route": CHAT, "hang": true}))
        .await;
    let response = post_chat(&gateway, &chat_body("hang")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-hapax-provider"), "backup");
    assert_eq!(header(&response, "x-hapax-attempts"), "2");
    let metrics = gateway.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "hapax_provider_requests_total",
            &[("provider", "primary"), ("outcome", "timeout")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_429_with_retry_after_keeps_traffic_off_the_provider_until_it_passes() {
    let (primary, backup) = (MockUpstream::start(), MockUpstream::start());
    let gateway = Gateway::start(&two_providers(&primary, &backup, ""));
    primary
        .set_fault(json!({"route": CHAT, "status": 429, "retry_after": 2, "times": 1}))
        .await;
    let first = post_chat(&gateway, &chat_body("a")).await;
    assert_eq!(
        (first.status().as_u16(), header(&first, "x-hapax-provider")),
        (200, "backup".to_owned())
    );
    for i in 0..3 {
        let response = post_chat(&gateway, &chat_body(&format!("b{i}"))).await;
        assert_eq!(
            header(&response, "x-hapax-provider"),
            "backup",
            "Retry-After is honoured"
        );
    }
    assert_eq!(primary.count(CHAT).await, 1);
    eventually(
        Duration::from_secs(6),
        "primary used again once Retry-After passed",
        || async {
            let response = post_chat(&gateway, &chat_body("c")).await;
            (header(&response, "x-hapax-provider") == "primary").then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_single_provider_429_reaches_the_client_with_retry_after() {
    let mock = MockUpstream::start();
    let config = format!(
        "server: {{host: 127.0.0.1, port: 0}}\nauth: {{enabled: false}}\nproviders:\n  only: {{type: openai_compatible, base_url: \"{}\", model: mock-1}}\n",
        mock.openai_base()
    );
    let gateway = Gateway::start(&config);
    mock.set_fault(json!({"route": CHAT, "status": 429, "retry_after": 3}))
        .await;
    let response = post_chat(&gateway, &chat_body("x")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), "3");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn a_stream_that_stalls_before_its_first_chunk_fails_over() {
    let (primary, backup) = (MockUpstream::start(), MockUpstream::start());
    let gateway = Gateway::start(&two_providers(&primary, &backup, ""));
    primary
        .set_fault(json!({"route": CHAT, "stall_after_chunks": 0}))
        .await;
    let mut body = chat_body("stream please");
    body["stream"] = json!(true);
    let response = post_chat(&gateway, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-hapax-provider"), "backup");
    let events = sse_data(&response.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(primary.count(CHAT).await, 1);
}

#[tokio::test]
async fn a_stream_that_stalls_after_its_first_chunk_ends_with_an_error_event() {
    let (primary, backup) = (MockUpstream::start(), MockUpstream::start());
    let gateway = Gateway::start(&two_providers(&primary, &backup, ""));
    primary
        .set_fault(json!({"route": CHAT, "stall_after_chunks": 2}))
        .await;
    let mut body = chat_body("stream please");
    body["stream"] = json!(true);
    let response = post_chat(&gateway, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-hapax-provider"),
        "primary",
        "no failover after the first byte"
    );
    let text = tokio::time::timeout(Duration::from_secs(10), response.text())
        .await
        .expect("the stream ends instead of hanging")
        .unwrap();
    let events = sse_data(&text);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("interrupted"),
        "{last}"
    );
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert_eq!(backup.count(CHAT).await, 0);
}

#[tokio::test]
async fn twenty_concurrent_identical_requests_make_one_upstream_call() {
    let (primary, backup) = (MockUpstream::start(), MockUpstream::start());
    let gateway = Gateway::start(&two_providers(&primary, &backup, ""));
    primary
        .set_fault(json!({"route": CHAT, "latency_ms": 400}))
        .await;
    let body = chat_body("the same question");
    let responses = join_all((0..20).map(|_| async {
        post_chat(&gateway, &body)
            .await
            .json::<Value>()
            .await
            .unwrap()
    }))
    .await;
    assert_eq!(
        primary.count(CHAT).await,
        1,
        "one upstream call for 20 identical requests"
    );
    for response in &responses {
        assert_eq!(
            response["choices"][0]["message"]["content"],
            "Hello from the Hapax mock provider. You said: the same question"
        );
    }
    assert_eq!(
        metric(
            &gateway.metrics().await,
            "hapax_deduplicated_requests_total",
            &[]
        ),
        Some(19.0)
    );

    let opted_out = join_all((0..3).map(|_| async {
        client()
            .post(gateway.url(CHAT))
            .header("x-hapax-dedup", "off")
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
    }))
    .await;
    assert!(opted_out.iter().all(|s| *s == 200));
    assert_eq!(
        primary.count(CHAT).await,
        4,
        "the opt-out header bypasses deduplication"
    );
}

#[tokio::test]
async fn a_shared_call_outlives_its_first_caller_hanging_up_for_those_who_wait() {
    let (primary, backup) = (MockUpstream::start(), MockUpstream::start());
    let gateway = Gateway::start(&two_providers(&primary, &backup, ""));
    primary
        .set_fault(json!({"route": CHAT, "latency_ms": 1500}))
        .await;
    let body = chat_body("asked twice");
    let send = |body: Value| {
        let url = gateway.url(CHAT);
        tokio::spawn(async move { client().post(url).json(&body).send().await })
    };
    // The first caller makes the call (the mock counts it on arrival), the second joins it,
    // then the first hangs up while the call is under way.
    let first = send(body.clone());
    eventually(
        Duration::from_secs(5),
        "the first call upstream",
        || async { (primary.count(CHAT).await == 1).then_some(()) },
    )
    .await;
    let second = send(body.clone());
    eventually(
        Duration::from_secs(5),
        "the second request joining",
        || async {
            // Read at once, not settled: both requests are still in flight.
            let url = gateway.url("/metrics");
            let metrics = client().get(url).send().await.ok()?.text().await.ok()?;
            (metric(&metrics, "hapax_deduplicated_requests_total", &[]) == Some(1.0)).then_some(())
        },
    )
    .await;
    first.abort();
    let response = second.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-hapax-deduplicated"], "true");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "Hello from the Hapax mock provider. You said: asked twice"
    );
    assert_eq!(primary.count(CHAT).await, 1, "one upstream call for both");
    let hung_up = metric(
        &gateway.metrics().await,
        "hapax_http_requests_total",
        &[("endpoint", CHAT), ("status", "499")],
    );
    assert_eq!(hung_up, Some(1.0), "the gateway saw the first caller go");
}

#[tokio::test]
async fn completions_for_different_models_are_never_shared() {
    // `/v1/completions` requests are known by their re-encoded body, which leaves the model
    // out: the model must still tell them apart.
    let (primary, backup) = (MockUpstream::start(), MockUpstream::start());
    let config = two_providers(&primary, &backup, "").replacen(
        "model: mock-1, timeout: 2s}",
        "model: mock-1, models: [mock-2], timeout: 2s}",
        1,
    );
    let gateway = Gateway::start(&config);
    primary
        .set_fault(json!({"route": CHAT, "latency_ms": 1500}))
        .await;
    let send = |model: &str| {
        let (url, body) = (
            gateway.url("/v1/completions"),
            json!({"model": model, "prompt": "the same prompt"}),
        );
        tokio::spawn(async move {
            let response = client().post(url).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let shared = response.headers().contains_key("x-hapax-deduplicated");
            let answer: Value = response.json().await.unwrap();
            (
                answer["model"].as_str().unwrap_or_default().to_owned(),
                shared,
            )
        })
    };
    let first = send("mock-1");
    eventually(
        Duration::from_secs(5),
        "the first call upstream",
        || async { (primary.count(CHAT).await == 1).then_some(()) },
    )
    .await;
    let (other_model, same_model) = (send("mock-2"), send("mock-1"));
    let first = first.await.unwrap();
    let (other_model, same_model) = (other_model.await.unwrap(), same_model.await.unwrap());
    assert_eq!(primary.count(CHAT).await, 2, "one call a model");
    assert_eq!(first, ("mock-1".to_owned(), false));
    assert_eq!(other_model, ("mock-2".to_owned(), false));
    assert_eq!(
        same_model,
        ("mock-1".to_owned(), true),
        "shared the first's call"
    );
}

#[tokio::test]
async fn an_active_health_check_takes_a_down_provider_out_of_rotation() {
    let (primary, backup) = (MockUpstream::start(), MockUpstream::start());
    let extra = "";
    let config = two_providers(&primary, &backup, extra).replace(
        "model: mock-1, timeout: 2s}\n  backup",
        "model: mock-1, timeout: 2s, health_check: {interval: 150ms, timeout: 500ms, failure_threshold: 2, success_threshold: 1}}\n  backup",
    );
    assert!(config.contains("interval: 150ms"));
    let gateway = Gateway::start(&config);
    primary
        .set_fault(json!({"route": "/v1/models", "status": 503}))
        .await;
    eventually(
        Duration::from_secs(5),
        "primary marked unhealthy",
        || async {
            (metric(
                &gateway.metrics().await,
                "hapax_provider_healthy",
                &[("provider", "primary")],
            ) == Some(0.0))
            .then_some(())
        },
    )
    .await;
    let response = post_chat(&gateway, &chat_body("x")).await;
    assert_eq!(header(&response, "x-hapax-provider"), "backup");
    assert_eq!(
        primary.count(CHAT).await,
        0,
        "a provider marked down gets no traffic"
    );
    assert!(
        metric(
            &gateway.metrics().await,
            "hapax_health_check_duration_seconds_count",
            &[("provider", "primary")]
        )
        .unwrap_or(0.0)
            >= 2.0
    );
    primary.clear_faults().await;
    eventually(Duration::from_secs(5), "primary healthy again", || async {
        let response = post_chat(&gateway, &chat_body("y")).await;
        (header(&response, "x-hapax-provider") == "primary").then_some(())
    })
    .await;
}

#[tokio::test]
async fn round_robin_spreads_requests_over_deployments() {
    let (a, b) = (MockUpstream::start(), MockUpstream::start());
    let config = format!(
        r#"
server: {{host: 127.0.0.1, port: 0}}
auth: {{enabled: false}}
dedup: {{enabled: false}}
routing: {{strategy: round_robin}}
providers:
  pool:
    type: openai_compatible
    model: mock-1
    deployments:
      - {{base_url: "{}"}}
      - {{base_url: "{}"}}
"#,
        a.openai_base(),
        b.openai_base()
    );
    let gateway = Gateway::start(&config);
    for i in 0..10 {
        assert_eq!(
            post_chat(&gateway, &chat_body(&format!("rr {i}")))
                .await
                .status(),
            200
        );
    }
    assert_eq!((a.count(CHAT).await, b.count(CHAT).await), (5, 5));
}

fn auth_config(mock: &MockUpstream, limits: &str) -> String {
    format!(
        r#"
server: {{host: 127.0.0.1, port: 0}}
providers:
  primary: {{type: openai_compatible, base_url: "{}", model: mock-1, models: [mock-2]}}
auth:
  api_keys:
    - {{name: alice, key: alice-key-123, rate_limit: {{requests_per_minute: 60}}}}
    - {{name: bob, key: bob-key-456, models: [mock-2]}}
  admin_keys:
    - {{name: ops, key: admin-key-789}}
{limits}
"#,
        mock.openai_base()
    )
}

#[tokio::test]
async fn rate_limits_set_headers_reject_with_429_and_recover() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&auth_config(&mock, ""));
    let http = client();
    let send = || async {
        http.post(gateway.url(CHAT))
            .bearer_auth("alice-key-123")
            .header("x-hapax-dedup", "off")
            .json(&chat_body("limit"))
            .send()
            .await
            .unwrap()
    };
    let first = send().await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-limit"), "60");
    assert_eq!(header(&first, "x-ratelimit-remaining"), "59");
    // Both forms of `/v1/completions` draw on the same budget and say so.
    for (n, body) in [
        json!({"model": "mock-1", "prompt": "legacy form"}),
        json!({"model": "mock-1", "input": "hapax form"}),
    ]
    .into_iter()
    .enumerate()
    {
        let answer = http
            .post(gateway.url("/v1/completions"))
            .bearer_auth("alice-key-123")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(header(&answer, "x-ratelimit-limit"), "60");
        let remaining = (58 - n).to_string();
        assert_eq!(header(&answer, "x-ratelimit-remaining"), remaining);
    }
    for _ in 0..57 {
        let _ = send().await;
    }
    let rejected = send().await;
    assert_eq!(rejected.status(), 429);
    assert_eq!(header(&rejected, "x-ratelimit-remaining"), "0");
    let retry_after: u64 = header(&rejected, "retry-after").parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert!(!header(&rejected, "x-ratelimit-reset").is_empty());
    let body: Value = rejected.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        metric(
            &gateway.metrics().await,
            "hapax_rate_limit_hits_total",
            &[("client", "alice")]
        ),
        Some(1.0)
    );
    let upstream_calls = mock.count(CHAT).await;
    assert_eq!(
        upstream_calls, 60,
        "a rejected request never reaches the provider"
    );

    eventually(Duration::from_secs(5), "the bucket refills", || async {
        (send().await.status() == 200).then_some(())
    })
    .await;
    let bob = client()
        .post(gateway.url(CHAT))
        .bearer_auth("bob-key-456")
        .json(&json!({"model": "mock-2", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        bob.status(),
        200,
        "another client is not limited by alice's budget"
    );
}

#[tokio::test]
async fn a_global_token_budget_is_reserved_at_admission() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&auth_config(
        &mock,
        "rate_limits: {global: {tokens_per_minute: 1000}}",
    ));
    let body = json!({"model": "mock-1", "max_tokens": 600, "messages": [{"role": "user", "content": "tokens"}]});
    mock.set_fault(json!({"route": CHAT, "latency_ms": 300}))
        .await;
    let statuses = join_all((0..2).map(|i| {
        let mut body = body.clone();
        body["messages"][0]["content"] = json!(format!("tokens {i}"));
        let url = gateway.url(CHAT);
        async move {
            client()
                .post(url)
                .bearer_auth("alice-key-123")
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    }))
    .await;
    let mut sorted = statuses.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        vec![200, 429],
        "two concurrent 600-token reservations cannot both fit in 1000"
    );
}

#[tokio::test]
async fn auth_rejects_missing_wrong_and_unauthorised_keys_and_guards_admin_endpoints() {
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&auth_config(&mock, ""));
    let c = client();
    let missing = c
        .post(gateway.url(CHAT))
        .json(&chat_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    let wrong = c
        .post(gateway.url(CHAT))
        .header("x-api-key", "nope")
        .json(&chat_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let via_header = c
        .post(gateway.url(CHAT))
        .header("x-api-key", "alice-key-123")
        .json(&chat_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(via_header.status(), 200);
    let forbidden = c
        .post(gateway.url(CHAT))
        .bearer_auth("bob-key-456")
        .json(&chat_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403, "bob may only use mock-2");
    let body: Value = forbidden.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mock-1")
    );

    let admin = gateway.url("/admin/breakers");
    assert_eq!(c.get(&admin).send().await.unwrap().status(), 401);
    assert_eq!(
        c.get(&admin)
            .bearer_auth("alice-key-123")
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "a client key is not an admin key"
    );
    let listed: Value = c
        .get(&admin)
        .bearer_auth("admin-key-789")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["breakers"][0]["breaker"]["state"], "closed");
    let forced = c
        .post(gateway.url("/admin/breakers/primary/open"))
        .bearer_auth("admin-key-789")
        .send()
        .await
        .unwrap();
    assert_eq!(forced.status(), 200);
    let unavailable = c
        .post(gateway.url(CHAT))
        .bearer_auth("alice-key-123")
        .json(&chat_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(unavailable.status(), 503);
    assert_eq!(
        metric(
            &gateway.metrics().await,
            "circuit_breaker_state",
            &[("provider", "primary")]
        ),
        Some(2.0)
    );
    c.post(gateway.url("/admin/breakers/primary/close"))
        .bearer_auth("admin-key-789")
        .send()
        .await
        .unwrap();
    let ok = c
        .post(gateway.url(CHAT))
        .bearer_auth("alice-key-123")
        .json(&chat_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let metrics = gateway.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "hapax_http_requests_total",
            &[("endpoint", CHAT), ("status", "401")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "hapax_http_requests_total",
            &[("endpoint", CHAT), ("status", "403")]
        ),
        Some(1.0)
    );
    assert!(
        !gateway.logs().contains("alice-key-123"),
        "keys never reach the logs"
    );
}

#[tokio::test]
async fn a_timeout_the_request_deadline_caused_is_not_charged_to_the_provider() {
    // The primary hangs until its own 400 ms timeout; the backup answers in 600 ms, but the
    // request's 700 ms deadline leaves it only ~300 ms. That cut is the deadline's doing: the
    // client gets a 504, and the backup's breaker must not count it (two such requests would
    // otherwise trip a healthy backup during the primary's outage).
    let (primary, backup) = (MockUpstream::start(), MockUpstream::start());
    let config = two_providers(
        &primary,
        &backup,
        "circuit_breaker: {failure_threshold: 2, timeout: 30s}",
    )
    .replace("timeout: 2s}\n  backup", "timeout: 400ms}\n  backup")
    .replace("routing: {", "routing: {request_timeout: 700ms, ");
    assert!(config.contains("request_timeout: 700ms"));
    let gateway = Gateway::start(&config);
    primary
        .set_fault(json!({"route": CHAT, "hang": true}))
        .await;
    backup
        .set_fault(json!({"route": CHAT, "latency_ms": 600}))
        .await;
    for _ in 0..2 {
        let response = post_chat(&gateway, &chat_body("deadline")).await;
        assert_eq!(response.status(), 504);
    }
    let metrics = gateway.metrics().await;
    let breaker =
        |provider: &str| metric(&metrics, "circuit_breaker_state", &[("provider", provider)]);
    assert_eq!(breaker("primary"), Some(2.0), "the hanging primary trips");
    assert_eq!(breaker("backup"), Some(0.0), "{metrics}");
    let backup_timeouts = metric(
        &metrics,
        "hapax_provider_requests_total",
        &[("provider", "backup"), ("outcome", "timeout")],
    );
    assert_eq!(backup_timeouts.unwrap_or(0.0), 0.0, "{metrics}");
    // With time to answer, the backup serves.
    backup.clear_faults().await;
    let response = post_chat(&gateway, &chat_body("in time")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-hapax-provider"), "backup");
}

#[tokio::test]
async fn a_provider_that_hangs_through_a_whole_deadline_is_still_charged() {
    // The request deadline (300 ms) is shorter than the provider's timeout (2 s): the hanging
    // primary's attempts end at the deadline, with the whole of it theirs. Those count, so the
    // breaker opens and traffic moves to the backup.
    let (primary, backup) = (MockUpstream::start(), MockUpstream::start());
    let config = two_providers(
        &primary,
        &backup,
        "circuit_breaker: {failure_threshold: 2, timeout: 30s}",
    )
    .replace("routing: {", "routing: {request_timeout: 300ms, ");
    let gateway = Gateway::start(&config);
    primary
        .set_fault(json!({"route": CHAT, "hang": true}))
        .await;
    for _ in 0..2 {
        let response = post_chat(&gateway, &chat_body("hang")).await;
        assert_eq!(response.status(), 504);
    }
    let metrics = gateway.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "circuit_breaker_state",
            &[("provider", "primary")]
        ),
        Some(2.0),
        "{metrics}"
    );
    let response = post_chat(&gateway, &chat_body("after")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-hapax-provider"), "backup");
}

#[tokio::test]
async fn a_stream_that_reports_no_usage_keeps_its_token_estimate_charged() {
    // An openai_compatible provider is not asked for stream usage (unknown servers may refuse
    // `stream_options`) and the client did not ask either: no usage arrives. The 600-token
    // estimate stays charged (before, it was refunded in full, so token limits never bound
    // such streams).
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&auth_config(
        &mock,
        "rate_limits: {global: {tokens_per_minute: 1000}}",
    ));
    let body = json!({"model": "mock-1", "max_tokens": 600, "stream": true,
        "messages": [{"role": "user", "content": "words:5"}]});
    let send = || {
        client()
            .post(gateway.url(CHAT))
            .bearer_auth("alice-key-123")
            .json(&body)
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 200);
    let text = first.text().await.unwrap();
    assert!(text.contains("data: [DONE]"), "{text}");
    assert!(
        !text.contains("\"usage\""),
        "no usage in this stream: {text}"
    );
    let second = send().await.unwrap();
    assert_eq!(
        second.status(),
        429,
        "600 of the 1000 tokens stay charged to the first stream"
    );
}
