//! The response cache against the real binary: memory and Redis backends, hits across
//! nodes, TTL, `Cache-Control`, streamed replay, tenant isolation, and a Redis outage that
//! costs clients nothing but the cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use hapax_tests::redis_server::RedisServer;
use hapax_tests::{Gateway, MockUpstream, client, eventually, metric, sse_data};
use reqwest::RequestBuilder;
use serde_json::{Value, json};

/// Upper bound for any single HTTP exchange: only there so a broken gateway fails the test
/// instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(60);
/// While Redis is down, every request must still complete well within this.
const OUTAGE_BOUND: Duration = Duration::from_secs(2);
const CHAT: &str = "/v1/chat/completions";

// === helpers ===

/// One gateway in front of the mock (`primary`, model mock-1) with the given `cache:` block
/// and `auth:` block.
fn config(mock: &MockUpstream, cache: &str, auth: &str) -> String {
    format!(
        "server: {{host: 127.0.0.1, port: 0}}\nauth: {auth}\nproviders:\n  primary: {{type: openai_compatible, base_url: \"{}\", model: mock-1, health_check: {{enabled: false}}}}\nprovider_preference: [primary]\n{cache}",
        mock.openai_base()
    )
}

fn open(mock: &MockUpstream, cache: &str) -> Gateway {
    Gateway::start(&config(mock, cache, "{enabled: false}"))
}

fn redis_cache(redis: &RedisServer, extra: &str) -> String {
    format!(
        "cache: {{type: redis, redis: {{address: \"{}\"}}{extra}}}\n",
        redis.address()
    )
}

/// A deterministic chat request (temperature 0) about `topic`.
fn cold(topic: &str) -> Value {
    json!({"model": "mock-1", "temperature": 0, "messages": [{"role": "user", "content": format!("{topic} words:6")}]})
}

struct Reply {
    status: u16,
    cache: String,
    provider: String,
    attempts: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn send(request: RequestBuilder) -> Reply {
    let exchange = async {
        let response = request.send().await.unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        let (status, cache, provider, attempts) = (
            response.status().as_u16(),
            header("x-hapax-cache"),
            header("x-hapax-provider"),
            header("x-hapax-attempts"),
        );
        let body = response.text().await.unwrap();
        Reply {
            status,
            cache,
            provider,
            attempts,
            body,
        }
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("the exchange timed out")
}

async fn chat(gateway: &Gateway, body: &Value) -> Reply {
    send(client().post(gateway.url(CHAT)).json(body)).await
}

async fn expect(gateway: &Gateway, body: &Value, cache: &str) -> Reply {
    let reply = chat(gateway, body).await;
    assert_eq!(reply.status, 200, "body: {}", reply.body);
    assert_eq!(reply.cache, cache, "X-Hapax-Cache; body: {}", reply.body);
    reply
}

/// The streamed text: every chunk's `delta.content`, concatenated, and the chunk count.
fn stream_content(body: &str) -> (String, usize) {
    let data = sse_data(body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    (text, chunks.len())
}

// === scenarios ===

#[tokio::test]
async fn an_answer_cached_by_one_node_is_a_hit_on_another() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start();
    let cache = redis_cache(&redis, "");
    let node_a = open(&mock, &cache);
    let node_b = open(&mock, &cache);
    let body = cold("cluster");

    let first = expect(&node_a, &body, "miss").await;
    assert_eq!(mock.count(CHAT).await, 1);
    let second = expect(&node_b, &body, "hit").await;
    assert_eq!(mock.count(CHAT).await, 1, "node B answered from Redis");
    assert_eq!(second.json(), first.json(), "the same answer");
    assert_eq!(second.provider, "primary", "who produced the answer");
    assert_eq!(second.attempts, "0", "no upstream attempt");
    expect(&node_a, &body, "hit").await;
    assert_eq!(mock.count(CHAT).await, 1);

    let metrics = node_b.metrics().await;
    assert_eq!(
        metric(&metrics, "hapax_cache_requests_total", &[("result", "hit")]),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "hapax_cache_operation_duration_seconds_count",
            &[("op", "get")]
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start();
    let backends = [
        ("memory", "cache: {type: memory, ttl: 1s}\n".to_owned()),
        ("redis", redis_cache(&redis, ", ttl: 1s")),
    ];
    for (backend, cache) in backends {
        mock.reset().await;
        let gateway = open(&mock, &cache);
        let body = cold(backend);
        expect(&gateway, &body, "miss").await;
        expect(&gateway, &body, "hit").await;
        let started = Instant::now();
        let (g, b) = (&gateway, &body);
        eventually(
            Duration::from_secs(10),
            "the entry expires",
            || async move { (chat(g, b).await.cache == "miss").then_some(()) },
        )
        .await;
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "{backend}: expired too early ({:?})",
            started.elapsed()
        );
        assert_eq!(
            mock.count(CHAT).await,
            2,
            "{backend}: hits never reached the mock"
        );
        expect(&gateway, &body, "hit").await;
    }
}

#[tokio::test]
async fn no_cache_skips_the_read_and_no_store_skips_the_write() {
    let mock = MockUpstream::start();
    let gateway = open(&mock, "cache: {type: memory}\n");
    let body = cold("headers");
    let with_control = |value: &'static str| {
        client()
            .post(gateway.url(CHAT))
            .header("cache-control", value)
            .json(&body)
    };

    assert_eq!(send(with_control("no-store")).await.cache, "miss");
    expect(&gateway, &body, "miss").await;
    assert_eq!(mock.count(CHAT).await, 2, "no-store stored nothing");
    expect(&gateway, &body, "hit").await;

    let refreshed = send(with_control("no-cache")).await;
    assert_eq!(refreshed.cache, "miss", "no-cache does not read");
    assert_eq!(mock.count(CHAT).await, 3);
    let after = expect(&gateway, &body, "hit").await;
    assert_eq!(
        after.json(),
        refreshed.json(),
        "no-cache stored the fresh answer"
    );

    let neither = send(with_control("no-cache, no-store")).await;
    assert_eq!(neither.cache, "bypass");
    let opted_out = send(
        client()
            .post(gateway.url(CHAT))
            .header("x-hapax-cache", "off")
            .json(&body),
    )
    .await;
    assert_eq!(opted_out.cache, "bypass");
    assert_eq!(mock.count(CHAT).await, 5);
}

#[tokio::test]
async fn a_streamed_answer_is_replayed_as_the_same_stream() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start();
    let gateway = open(&mock, &redis_cache(&redis, ""));
    let mut body = cold("stream words:12");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});

    let first = expect(&gateway, &body, "miss").await;
    let second = expect(&gateway, &body, "hit").await;
    assert_eq!(mock.count(CHAT).await, 1);
    let (text, chunks) = stream_content(&first.body);
    assert!(chunks > 3 && !text.is_empty(), "{}", first.body);
    assert_eq!(stream_content(&second.body), (text, chunks));
    assert_eq!(
        sse_data(&second.body),
        sse_data(&first.body),
        "payload for payload"
    );
    assert_eq!(second.provider, "primary");

    // The plain (non-streamed) form of the same request is another entry.
    let mut plain = body.clone();
    plain["stream"] = json!(false);
    plain.as_object_mut().unwrap().remove("stream_options");
    expect(&gateway, &plain, "miss").await;

    // Legacy completions stream too, in their own format.
    let legacy =
        json!({"model": "mock-1", "prompt": "legacy words:5", "temperature": 0, "stream": true});
    let url = gateway.url("/v1/completions");
    let first = send(client().post(&url).json(&legacy)).await;
    let second = send(client().post(&url).json(&legacy)).await;
    assert_eq!(
        (first.cache.as_str(), second.cache.as_str()),
        ("miss", "hit")
    );
    assert_eq!(sse_data(&second.body), sse_data(&first.body));
    assert!(second.body.contains("text_completion"), "{}", second.body);
}

#[tokio::test]
async fn a_broken_stream_is_not_cached() {
    let mock = MockUpstream::start();
    let gateway = open(&mock, "cache: {type: memory}\n");
    let mut body = cold("broken words:12");
    body["stream"] = json!(true);
    mock.set_fault(
        json!({"route": CHAT, "reset": "mid_stream", "reset_after_chunks": 3, "times": 1}),
    )
    .await;
    let broken = expect(&gateway, &body, "miss").await;
    assert!(!broken.body.contains("[DONE]"), "{}", broken.body);
    let whole = expect(&gateway, &body, "miss").await;
    assert!(whole.body.ends_with("data: [DONE]\n\n"), "{}", whole.body);
    expect(&gateway, &body, "hit").await;
    assert_eq!(mock.count(CHAT).await, 2);
}

#[tokio::test]
async fn one_tenant_never_gets_another_tenants_entry() {
    let mock = MockUpstream::start();
    let auth = "\n  api_keys:\n    - {name: tenant-x, key: hk-tenant-x-123}\n    - {name: tenant-y, key: hk-tenant-y-456}";
    let as_tenant = |gateway: &Gateway, key: &str, body: &Value| {
        client().post(gateway.url(CHAT)).bearer_auth(key).json(body)
    };
    let body = cold("tenants");

    let scoped = Gateway::start(&config(&mock, "cache: {type: memory}\n", auth));
    let x = send(as_tenant(&scoped, "hk-tenant-x-123", &body)).await;
    assert_eq!((x.status, x.cache.as_str()), (200, "miss"));
    let y = send(as_tenant(&scoped, "hk-tenant-y-456", &body)).await;
    assert_eq!((y.status, y.cache.as_str()), (200, "miss"), "not X's entry");
    let x = send(as_tenant(&scoped, "hk-tenant-x-123", &body)).await;
    assert_eq!(x.cache, "hit");
    let y = send(as_tenant(&scoped, "hk-tenant-y-456", &body)).await;
    assert_eq!(y.cache, "hit", "Y's own entry");
    assert_eq!(mock.count(CHAT).await, 2);

    // `scope: shared` is the explicit choice to share entries between keys.
    let shared = Gateway::start(&config(
        &mock,
        "cache: {type: memory, scope: shared}\n",
        auth,
    ));
    let x = send(as_tenant(&shared, "hk-tenant-x-123", &body)).await;
    let y = send(as_tenant(&shared, "hk-tenant-y-456", &body)).await;
    assert_eq!((x.cache.as_str(), y.cache.as_str()), ("miss", "hit"));
}

#[tokio::test]
async fn a_redis_outage_costs_only_the_cache_and_caching_resumes_after_it() {
    let mut redis = RedisServer::unstarted();
    let mock = MockUpstream::start();
    // The gateway starts while Redis is down: start-up must not wait for it.
    let gateway = open(&mock, &redis_cache(&redis, ""));
    for i in 0..5 {
        let reply = bounded(&gateway, &cold(&format!("before {i}"))).await;
        assert_eq!(reply.cache, "bypass");
    }

    redis.resume();
    until_hit(&gateway, &cold("outage"), "caching starts once Redis is up").await;

    redis.kill();
    for i in 0..10 {
        let topic = if i % 2 == 0 {
            "outage".to_owned()
        } else {
            format!("during {i}")
        };
        let reply = bounded(&gateway, &cold(&topic)).await;
        assert_eq!(reply.cache, "bypass", "request {i}");
    }
    let metrics = gateway.metrics().await;
    assert!(
        metric(&metrics, "hapax_cache_errors_total", &[("op", "get")]).is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "hapax_cache_requests_total",
            &[("result", "bypass")]
        )
        .is_some_and(|n| n >= 15.0),
        "{metrics}"
    );

    redis.resume();
    until_hit(
        &gateway,
        &cold("after"),
        "caching resumes once Redis is back",
    )
    .await;
}

#[tokio::test]
async fn a_stalled_redis_is_bypassed_within_its_timeout() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start();
    let gateway = open(&mock, &redis_cache(&redis, ""));
    let body = cold("stall");
    expect(&gateway, &body, "miss").await;
    expect(&gateway, &body, "hit").await;

    redis.stall(Duration::from_secs(4));
    for i in 0..6 {
        let topic = if i % 2 == 0 {
            "stall".to_owned()
        } else {
            format!("stalled {i}")
        };
        let reply = bounded(&gateway, &cold(&topic)).await;
        assert_eq!(reply.cache, "bypass", "request {i}");
    }
    let metrics = gateway.metrics().await;
    assert!(
        metric(&metrics, "hapax_cache_errors_total", &[("op", "get")]).is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    until_hit(&gateway, &body, "Redis answers again after its stall").await;
}

/// A request that must succeed, and quickly, whatever Redis is doing.
async fn bounded(gateway: &Gateway, body: &Value) -> Reply {
    let started = Instant::now();
    let reply = chat(gateway, body).await;
    let took = started.elapsed();
    assert_eq!(reply.status, 200, "body: {}", reply.body);
    assert!(
        took < OUTAGE_BOUND,
        "a request took {took:?} while Redis was down"
    );
    reply
}

/// Repeats `body` until it is answered from the cache.
async fn until_hit(gateway: &Gateway, body: &Value, what: &str) {
    eventually(Duration::from_secs(15), what, || async move {
        (bounded(gateway, body).await.cache == "hit").then_some(())
    })
    .await;
}

#[tokio::test]
async fn memory_cache_hits_on_the_same_node_and_warm_requests_bypass() {
    let mock = MockUpstream::start();
    let gateway = open(&mock, "cache: {type: memory}\n");

    let body = cold("memory");
    let first = expect(&gateway, &body, "miss").await;
    let second = expect(&gateway, &body, "hit").await;
    assert_eq!(second.json(), first.json());
    assert_eq!(
        (first.attempts.as_str(), second.attempts.as_str()),
        ("1", "0")
    );
    assert_eq!(second.provider, "primary");
    assert_eq!(mock.count(CHAT).await, 1);

    let mut warm = cold("memory");
    warm["temperature"] = json!(0.7);
    expect(&gateway, &warm, "bypass").await;
    expect(&gateway, &warm, "bypass").await;
    assert_eq!(
        mock.count(CHAT).await,
        3,
        "non-deterministic requests are not cached"
    );
    let opted_in = || {
        client()
            .post(gateway.url(CHAT))
            .header("x-hapax-cache", "on")
            .json(&warm)
    };
    assert_eq!(send(opted_in()).await.cache, "miss");
    assert_eq!(send(opted_in()).await.cache, "hit");
    assert_eq!(mock.count(CHAT).await, 4);

    // Hapax's own completion body: the cached answer, a fresh request id.
    let url = gateway.url("/v1/completions");
    let hapax = json!({"input": "hapax words:4", "temperature": 0});
    let first = send(client().post(&url).json(&hapax)).await;
    let second = send(client().post(&url).json(&hapax)).await;
    assert_eq!(
        (first.cache.as_str(), second.cache.as_str()),
        ("miss", "hit")
    );
    assert_eq!(first.json()["content"], second.json()["content"]);
    assert_ne!(first.json()["request_id"], second.json()["request_id"]);

    let metrics = gateway.metrics().await;
    for (result, count) in [("hit", 3.0), ("miss", 3.0), ("bypass", 2.0)] {
        assert_eq!(
            metric(
                &metrics,
                "hapax_cache_requests_total",
                &[("result", result)]
            ),
            Some(count),
            "{result}: {metrics}"
        );
    }

    let uncached = open(&mock, "");
    expect(&uncached, &body, "bypass").await;
}

#[tokio::test]
async fn the_redis_cache_speaks_tls() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let redis = RedisServer::start_tls(
        &certified.cert.pem(),
        &certified.signing_key.serialize_pem(),
    );
    let mock = MockUpstream::start();
    let cache = format!(
        "cache: {{redis: {{address: \"localhost:{}\", tls: true}}}}\n",
        redis.port
    );
    let cert = redis.cert_file().unwrap().to_str().unwrap();
    let gateway = Gateway::start_with_env(
        &config(&mock, &cache, "{enabled: false}"),
        &[("SSL_CERT_FILE", cert)],
    );
    // The TLS handshake may still be under way for the very first request (then: bypass).
    until_hit(&gateway, &cold("tls"), "a hit through TLS").await;
    let metrics = gateway.metrics().await;
    assert!(
        metric(
            &metrics,
            "hapax_cache_requests_total",
            &[("result", "miss")]
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
}
