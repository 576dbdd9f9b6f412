//! Soak with faults: steady load on a 3-node cluster while one node's provider flaps and
//! another node is killed and restarted. Every request gets exactly one answer (a success or
//! an error status with the JSON error shape), memory stays bounded, and once the flapping
//! stops every node agrees on the breaker table.
//!
//! Runs in CI for about a minute; `HAPAX_SOAK_SECS=600` soaks longer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hapax_tests::cluster::{ClusterOptions, TestCluster};
use hapax_tests::{client, eventually, metric, sse_data};
use serde_json::{Value, json};

const CHAT: &str = "/v1/chat/completions";
const CLIENTS: usize = 4;
/// Per client; the soak normally ends on time long before.
const MAX_REQUESTS_PER_CLIENT: usize = 200_000;
/// A request not answered within this is a failure, not a slow answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const RSS_LIMIT_KIB: u64 = 200 * 1024;
/// The node whose provider flaps, and the node that is killed and restarted.
const FLAPPING: usize = 1;
const RESTARTED: usize = 2;

fn soak_duration() -> Duration {
    let secs = std::env::var("HAPAX_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// The gateways clients may use (a load balancer's view): a node leaves it before it dies
/// and comes back once it is ready again.
struct Rotation {
    urls: RwLock<Vec<Option<String>>>,
    in_flight: Vec<AtomicUsize>,
    next: AtomicUsize,
}

impl Rotation {
    /// The next node in rotation, counted as in flight until the guard drops.
    fn pick(&self) -> (usize, String) {
        let urls = self.urls.read().unwrap();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for k in 0..urls.len() {
            let i = (start + k) % urls.len();
            if let Some(url) = &urls[i] {
                self.in_flight[i].fetch_add(1, Ordering::SeqCst);
                return (i, url.clone());
            }
        }
        unreachable!("at least two nodes are always in rotation")
    }
}

#[derive(Default)]
struct Tally {
    sent: u64,
    answered: u64,
    by_status: BTreeMap<u16, u64>,
    /// Transport errors, timeouts and answers of the wrong shape, with what went wrong.
    failures: Vec<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.answered += other.answered;
        for (status, n) in other.by_status {
            *self.by_status.entry(status).or_default() += n;
        }
        self.failures.extend(other.failures);
    }
}

/// Checks one answer: 200 with a completion (or a stream that ends with `[DONE]` or an error
/// event), or an error status the gateway promises, with `{"error": {message, type, code, request_id}}`.
fn check_answer(status: u16, body: &str, stream: bool) -> Result<(), String> {
    if status == 200 {
        if stream {
            let events = sse_data(body);
            let last = events.last().map(String::as_str).unwrap_or("");
            let ended = last == "[DONE]" || last.contains("\"error\"");
            return ended
                .then_some(())
                .ok_or_else(|| format!("stream without an end: {body:.300}"));
        }
        let value: Value = serde_json::from_str(body).map_err(|e| format!("200 not JSON: {e}"))?;
        return value["choices"][0]["message"]["content"]
            .is_string()
            .then_some(())
            .ok_or_else(|| format!("200 without content: {body:.300}"));
    }
    if ![429, 502, 503, 504].contains(&status) {
        return Err(format!("unexpected status {status}: {body:.300}"));
    }
    let value: Value = serde_json::from_str(body)
        .map_err(|e| format!("{status} body not JSON ({e}): {body:.300}"))?;
    let error = &value["error"];
    let shaped = ["message", "type", "code", "request_id"]
        .iter()
        .all(|k| error[k].is_string());
    shaped
        .then_some(())
        .ok_or_else(|| format!("{status} without the error shape: {body:.300}"))
}

async fn run_client(id: usize, rotation: Arc<Rotation>, stop: Arc<AtomicBool>) -> Tally {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(4)
        .build()
        .unwrap();
    let mut tally = Tally::default();
    for n in 0..MAX_REQUESTS_PER_CLIENT {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = n % 4 == 3;
        let mut body = json!({
            "model": "mock-1",
            "messages": [{"role": "user", "content": format!("soak client {id} request {n}")}],
        });
        if stream {
            body["stream"] = json!(true);
        }
        let (node, url) = rotation.pick();
        tally.sent += 1;
        let outcome = async {
            let response = http
                .post(format!("{url}{CHAT}"))
                .json(&body)
                .send()
                .await
                .map_err(|e| format!("node{node}: no answer: {e}"))?;
            let status = response.status().as_u16();
            let text = response
                .text()
                .await
                .map_err(|e| format!("node{node}: body cut: {e}"))?;
            check_answer(status, &text, stream).map(|()| status)
        }
        .await;
        rotation.in_flight[node].fetch_sub(1, Ordering::SeqCst);
        match outcome {
            Ok(status) => {
                tally.answered += 1;
                *tally.by_status.entry(status).or_default() += 1;
            }
            Err(failure) => tally.failures.push(failure),
        }
        // Steady, not flat out: three nodes, three mocks and the test share two cores.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tally
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The faults the flapping provider cycles through; `None` = healthy.
fn flap_fault(step: usize) -> Option<Value> {
    match step % 6 {
        1 => Some(json!({"route": CHAT, "status": 500})),
        3 => Some(json!({"route": CHAT, "reset": "before_response"})),
        5 => Some(json!({"route": CHAT, "latency_ms": 300})),
        _ => None,
    }
}

async fn breaker_gauge(url: &str) -> Option<f64> {
    let text = client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    metric(&text, "circuit_breaker_state", &[("provider", "upstream")])
}

async fn raft_breakers(url: &str) -> Option<Value> {
    let health: Value = client()
        .get(format!("{url}/v1/health"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(health["cluster"]["raft"]["breakers"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steady_load_through_provider_flaps_and_a_node_restart_answers_every_request() {
    let duration = soak_duration();
    let mut cluster = TestCluster::start(
        3,
        ClusterOptions {
            extra_yaml: "circuit_breaker: {failure_threshold: 3, timeout: 1s, max_requests: 1}\n\
                         routing: {max_attempts: 2, backoff_initial: 10ms, backoff_max: 50ms}"
                .to_owned(),
            ..Default::default()
        },
    );
    cluster.wait_converged(Duration::from_secs(30)).await;
    for node in &cluster.nodes {
        eventually(
            Duration::from_secs(30),
            "a raft leader and 3 voters",
            || async {
                let health = node.health().await;
                let status = &health["cluster"]["raft"]["status"];
                (status["voters"].as_array()?.len() == 3 && status["leader_id"].is_string())
                    .then_some(())
            },
        )
        .await;
    }

    let rotation = Arc::new(Rotation {
        urls: RwLock::new(cluster.nodes.iter().map(|n| Some(n.url(""))).collect()),
        in_flight: (0..3).map(|_| AtomicUsize::new(0)).collect(),
        next: AtomicUsize::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(run_client(id, Arc::clone(&rotation), Arc::clone(&stop))))
        .collect();

    let started = Instant::now();
    let kill_at = duration / 3;
    let mut restarted = false;
    let mut max_rss = [0u64; 3];
    let mut flap_step = 0;
    let mut next_flap = started;
    while started.elapsed() < duration {
        for (i, node) in cluster.nodes.iter().enumerate() {
            if let Some(kib) = node.gateway.as_ref().and_then(|g| rss_kib(g.process.pid())) {
                max_rss[i] = max_rss[i].max(kib);
            }
        }
        if Instant::now() >= next_flap {
            let mock = &cluster.nodes[FLAPPING].mock;
            match flap_fault(flap_step) {
                Some(fault) => mock.set_fault(fault).await,
                None => mock.clear_faults().await,
            }
            flap_step += 1;
            next_flap = Instant::now() + Duration::from_secs(2);
        }
        if !restarted && started.elapsed() >= kill_at {
            restarted = true;
            // Out of rotation first, drained, then killed without warning.
            rotation.urls.write().unwrap()[RESTARTED] = None;
            eventually(
                REQUEST_TIMEOUT,
                "requests to the doomed node drain",
                || async {
                    (rotation.in_flight[RESTARTED].load(Ordering::SeqCst) == 0).then_some(())
                },
            )
            .await;
            cluster.nodes[RESTARTED].kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            tokio::task::block_in_place(|| cluster.restart(RESTARTED));
            cluster.wait_converged(Duration::from_secs(30)).await;
            rotation.urls.write().unwrap()[RESTARTED] = Some(cluster.nodes[RESTARTED].url(""));
            eprintln!(
                "node{RESTARTED} killed and back after {:?}",
                started.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut tally = Tally::default();
    for task in clients {
        tally.merge(task.await.unwrap());
    }
    cluster.nodes[FLAPPING].mock.clear_faults().await;
    let quiet = Instant::now();

    // Convergence: light traffic lets half-open probes through; then every node shows the
    // same replicated breaker table and the same (closed) breaker state.
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url("")).collect();
    eventually(
        Duration::from_secs(60),
        "breakers converge on every node",
        || async {
            for url in &urls {
                let _ = client()
                    .post(format!("{url}{CHAT}"))
                    .json(&hapax_tests::chat_body("after the storm"))
                    .send()
                    .await;
            }
            let mut tables = Vec::new();
            let mut gauges = Vec::new();
            for url in &urls {
                tables.push(raft_breakers(url).await?);
                gauges.push(breaker_gauge(url).await?);
            }
            let same = tables.windows(2).all(|w| w[0] == w[1]) && gauges.iter().all(|g| *g == 0.0);
            same.then_some(())
        },
    )
    .await;
    let converged = quiet.elapsed();
    for (i, node) in cluster.nodes.iter().enumerate() {
        if let Some(kib) = node.gateway.as_ref().and_then(|g| rss_kib(g.process.pid())) {
            max_rss[i] = max_rss[i].max(kib);
        }
    }

    eprintln!(
        "soak {:?}: sent {} answered {} by status {:?}; max RSS KiB {:?}; breakers converged {:?} after the flapping stopped",
        duration, tally.sent, tally.answered, tally.by_status, max_rss, converged
    );
    assert!(
        tally.failures.is_empty(),
        "{} requests without a proper answer, first: {:?}",
        tally.failures.len(),
        &tally.failures[..tally.failures.len().min(5)]
    );
    assert_eq!(tally.sent, tally.answered, "every request got one answer");
    assert!(tally.sent >= 100, "the load ran: {}", tally.sent);
    assert!(
        tally.by_status.get(&200).copied().unwrap_or(0) > 0,
        "some requests succeeded"
    );
    for (i, kib) in max_rss.iter().enumerate() {
        assert!(
            *kib > 0 && *kib < RSS_LIMIT_KIB,
            "node{i} RSS peaked at {kib} KiB (limit {RSS_LIMIT_KIB} KiB)"
        );
    }
}
