//! Consensus between real `hapax` processes: breakers and rate limits agreed through Raft.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use hapax_tests::cluster::{ClusterOptions, TestCluster};
use hapax_tests::{chat_body, client, eventually, metric};
use serde_json::{Value, json};

const CHAT: &str = "/v1/chat/completions";

fn options(extra: &str) -> ClusterOptions {
    ClusterOptions {
        extra_yaml: extra.to_owned(),
        ..Default::default()
    }
}

/// Waits until every running node agrees on one leader and lists all `n` as voters.
async fn wait_for_raft(cluster: &TestCluster, n: usize) -> String {
    let mut leader = String::new();
    for node in cluster.nodes.iter().filter(|n| n.gateway.is_some()) {
        leader = eventually(
            Duration::from_secs(20),
            &format!("{} sees a leader and {n} voters", node.name),
            || async {
                let health = node.health().await;
                let status = &health["cluster"]["raft"]["status"];
                let voters = status["voters"].as_array()?.len();
                (voters == n)
                    .then(|| status["leader_id"].as_str().map(str::to_owned))
                    .flatten()
            },
        )
        .await;
    }
    leader
}

async fn breaker_state(node: &hapax_tests::cluster::ClusterNode) -> Option<f64> {
    metric(
        &node.gateway().metrics().await,
        "circuit_breaker_state",
        &[("provider", "upstream")],
    )
}

#[tokio::test]
async fn a_provider_failing_for_one_node_trips_the_breaker_on_every_node() {
    let cluster = TestCluster::start(
        3,
        options(
            "circuit_breaker: {failure_threshold: 3, timeout: 2s, max_requests: 1}\nrouting: {max_attempts: 1}",
        ),
    );
    cluster.wait_converged(Duration::from_secs(10)).await;
    wait_for_raft(&cluster, 3).await;
    let (a, b, c) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    a.mock
        .set_fault(json!({"route": CHAT, "status": 500}))
        .await;
    for i in 0..3 {
        let status = client()
            .post(a.url(CHAT))
            .json(&chat_body(&format!("a{i}")))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 502);
    }
    let tripped = Instant::now();
    for node in [b, c] {
        eventually(
            Duration::from_secs(1),
            &format!("{} sees the breaker open", node.name),
            || async { (breaker_state(node).await == Some(2.0)).then_some(()) },
        )
        .await;
    }
    eprintln!(
        "breaker open on the other nodes after {:?}",
        tripped.elapsed()
    );
    let before = (b.mock.count(CHAT).await, c.mock.count(CHAT).await);
    for node in [b, c] {
        let response = client()
            .post(node.url(CHAT))
            .json(&chat_body("after the trip"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            503,
            "no node sends the provider new traffic"
        );
    }
    assert_eq!(
        (b.mock.count(CHAT).await, c.mock.count(CHAT).await),
        before,
        "their upstreams were not called"
    );
    let health = b.health().await;
    let breaker = &health["cluster"]["raft"]["breakers"]["upstream"];
    assert_eq!(breaker["status"]["state"], "open");
    assert_eq!(breaker["status"]["tripped_by"], "node0");

    // Recovery: after the open timeout the leader half-opens it; a probe from any node closes it everywhere.
    a.mock.clear_faults().await;
    eventually(
        Duration::from_secs(15),
        "the breaker closes on every node",
        || async {
            for node in &cluster.nodes {
                let _ = client()
                    .post(node.url(CHAT))
                    .json(&chat_body("probe"))
                    .send()
                    .await;
            }
            for node in &cluster.nodes {
                if breaker_state(node).await != Some(0.0) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

#[tokio::test]
async fn killing_the_leader_under_load_keeps_state_and_answers_every_request() {
    let mut cluster = TestCluster::start(3, options(""));
    cluster.wait_converged(Duration::from_secs(10)).await;
    let leader = wait_for_raft(&cluster, 3).await;
    let leader_index: usize = leader.trim_start_matches("node").parse().unwrap();
    let survivor = (leader_index + 1) % 3;
    // A replicated fact to keep: the upstream breaker forced open through the log.
    let forced = client()
        .post(cluster.nodes[survivor].url("/admin/breakers/upstream/open"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        forced.status(),
        200,
        "{}",
        forced.text().await.unwrap_or_default()
    );
    for node in &cluster.nodes {
        eventually(Duration::from_secs(2), "forced open everywhere", || async {
            (breaker_state(node).await == Some(2.0)).then_some(())
        })
        .await;
    }
    let urls: Vec<String> = cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader_index)
        .map(|(_, n)| n.url("/health"))
        .collect();
    let load = tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let (mut answered, mut unanswered) = (0, 0);
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            for url in &urls {
                match http
                    .post(url.replace("/health", CHAT))
                    .json(&chat_body("load"))
                    .send()
                    .await
                {
                    Ok(_) => answered += 1,
                    Err(_) => unanswered += 1,
                }
            }
        }
        (answered, unanswered)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.nodes[leader_index].kill();
    let (answered, unanswered) = load.await.unwrap();
    assert!(answered > 0);
    assert_eq!(unanswered, 0, "every request got an answer");
    let new_leader = eventually(Duration::from_secs(10), "a new leader", || async {
        let health = cluster.nodes[survivor].health().await;
        let leader = health["cluster"]["raft"]["status"]["leader_id"]
            .as_str()?
            .to_owned();
        (leader != format!("node{leader_index}")).then_some(leader)
    })
    .await;
    eprintln!("new leader {new_leader}");
    let health = cluster.nodes[survivor].health().await;
    assert_eq!(
        health["cluster"]["raft"]["breakers"]["upstream"]["status"]["forced"], true,
        "state kept across the election"
    );

    // The killed node restarts from its data dir and recovers the replicated state.
    cluster.restart(leader_index);
    let restarted = &cluster.nodes[leader_index];
    eventually(
        Duration::from_secs(10),
        "the restarted node recovers the forced-open breaker",
        || async {
            let health = restarted.health().await;
            (health["cluster"]["raft"]["breakers"]["upstream"]["status"]["forced"] == true)
                .then_some(())
        },
    )
    .await;
    let health: Value = restarted.health().await;
    assert!(
        health["cluster"]["raft"]["last_applied_index"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[tokio::test]
async fn a_global_limit_holds_across_three_nodes() {
    const LIMIT: u64 = 60;
    let cluster = TestCluster::start(
        3,
        options(&format!(
            "rate_limits: {{global: {{requests_per_minute: {LIMIT}}}}}\ndedup: {{enabled: false}}"
        )),
    );
    cluster.wait_converged(Duration::from_secs(10)).await;
    wait_for_raft(&cluster, 3).await;
    // Windows are whole minutes: start early in one so the burst cannot straddle two.
    let into_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if into_minute > 40 {
        tokio::time::sleep(Duration::from_secs(61 - into_minute)).await;
    }
    let mut tasks = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let url = node.url(CHAT);
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut admitted = 0u64;
            for j in 0..40 {
                let status = http
                    .post(&url)
                    .json(&chat_body(&format!("n{i} r{j}")))
                    .send()
                    .await
                    .unwrap()
                    .status();
                admitted += u64::from(status == 200);
                assert!(status == 200 || status == 429, "{status}");
            }
            admitted
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    eprintln!("admitted {total} of 120 against a cluster-wide limit of {LIMIT}");
    assert!(total <= LIMIT, "never more than the limit: {total}");
    assert!(
        total * 100 >= LIMIT * 95,
        "at least 95% of the limit: {total}"
    );
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_partitioned_minority_keeps_serving_protects_itself_and_catches_up_after_healing() {
    let Some(netns) = hapax_tests::netns::NetNs::create("p") else {
        eprintln!("SKIP: network namespaces need root");
        return;
    };
    let placements = vec![
        (netns.ns_ip.clone(), Some(netns.name.clone())),
        (netns.host_ip.clone(), None),
        (netns.host_ip.clone(), None),
    ];
    let cluster = TestCluster::start_placed(
        &placements,
        options(
            "circuit_breaker: {failure_threshold: 2, timeout: 30s}\nrouting: {max_attempts: 1}",
        ),
    );
    cluster.wait_converged(Duration::from_secs(15)).await;
    wait_for_raft(&cluster, 3).await;
    let (a, b, c) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    let open_ports = [
        port_of(&a.gateway().process.addr),
        port_of(&a.mock.process.addr),
    ];
    let partition = netns.partition(&open_ports);

    // The majority notices and keeps (or elects) a leader of its own.
    eventually(
        Duration::from_secs(15),
        "b and c agree on a leader other than node0",
        || async {
            let hb = b.health().await;
            let hc = c.health().await;
            let lb = hb["cluster"]["raft"]["status"]["leader_id"]
                .as_str()?
                .to_owned();
            let lc = hc["cluster"]["raft"]["status"]["leader_id"]
                .as_str()?
                .to_owned();
            (lb == lc && lb != "node0").then_some(())
        },
    )
    .await;

    // The minority node keeps serving from its last applied state...
    let ok = client()
        .post(a.url(CHAT))
        .json(&chat_body("cut off"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "a partitioned node still serves");
    // ...and still opens its own breaker when it sees failures, which the others do not see.
    a.mock
        .set_fault(json!({"route": CHAT, "status": 500}))
        .await;
    for i in 0..2 {
        let _ = client()
            .post(a.url(CHAT))
            .json(&chat_body(&format!("fail {i}")))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(
        breaker_state(a).await,
        Some(2.0),
        "local breaker open on the minority node"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        breaker_state(b).await,
        Some(0.0),
        "the majority never heard of it"
    );
    // Meanwhile the majority makes progress: an admin override through the log.
    let forced = client()
        .post(b.url("/admin/breakers/upstream/open"))
        .send()
        .await
        .unwrap();
    assert_eq!(forced.status(), 200);
    let majority_index = b.health().await["cluster"]["raft"]["last_applied_index"]
        .as_u64()
        .unwrap();
    let minority_index = a.health().await["cluster"]["raft"]["last_applied_index"]
        .as_u64()
        .unwrap();
    assert!(
        minority_index < majority_index,
        "the minority is behind: {minority_index} < {majority_index}"
    );

    // Heal: node0 catches up from the log (or a snapshot) and applies the override.
    a.mock.clear_faults().await;
    partition.heal();
    eventually(Duration::from_secs(20), "node0 catches up", || async {
        let health = a.health().await;
        let applied = health["cluster"]["raft"]["last_applied_index"].as_u64()?;
        (applied >= majority_index
            && health["cluster"]["raft"]["breakers"]["upstream"]["status"]["forced"] == true)
            .then_some(())
    })
    .await;
    let closed = client()
        .post(c.url("/admin/breakers/upstream/close"))
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), 200);
    for node in &cluster.nodes {
        eventually(
            Duration::from_secs(5),
            &format!("{} closed again", node.name),
            || async { (breaker_state(node).await == Some(0.0)).then_some(()) },
        )
        .await;
    }
}
