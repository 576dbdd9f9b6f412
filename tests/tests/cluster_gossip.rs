//! Membership and provider-health gossip between real `hapax` processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use hapax_tests::cluster::{ClusterOptions, TestCluster, member};
use hapax_tests::{Gateway, client, eventually, metric};
use serde_json::{Value, json};

#[tokio::test]
async fn three_nodes_converge_and_each_lists_all_alive() {
    let cluster = TestCluster::start(3, ClusterOptions::default());
    cluster.wait_converged(Duration::from_secs(10)).await;
    let health = cluster.nodes[1].health().await;
    assert_eq!(health["cluster"]["node_id"], "node1");
    assert_eq!(health["cluster"]["live_nodes"], 3);
    let node0 = member(&health, "node0").unwrap();
    assert_eq!(
        node0["http"],
        cluster.nodes[0].gateway().process.addr.as_str()
    );
    assert_eq!(node0["version"], env!("CARGO_PKG_VERSION"));
    assert!(node0["last_heartbeat_ms_ago"].as_u64().unwrap() < 5_000);
    let metrics = cluster.nodes[1].gateway().metrics().await;
    assert_eq!(
        metric(&metrics, "hapax_cluster_nodes", &[("state", "alive")]),
        Some(3.0)
    );
    assert!(metric(&metrics, "hapax_gossip_rounds_total", &[]).unwrap() > 0.0);
    assert!(
        metric(
            &metrics,
            "hapax_gossip_bytes_total",
            &[("direction", "received")]
        )
        .unwrap()
            > 0.0
    );
}

#[tokio::test]
async fn an_outage_only_one_node_sees_reaches_the_others_matrix_within_two_seconds() {
    let cluster = TestCluster::start(3, ClusterOptions::default());
    cluster.wait_converged(Duration::from_secs(10)).await;
    for node in &cluster.nodes {
        eventually(
            Duration::from_secs(5),
            "every node reports upstream up everywhere",
            || async {
                let health = node.health().await;
                let row = &health["cluster"]["provider_matrix"]["upstream"];
                (0..3)
                    .all(|i| row[format!("node{i}")]["up"] == true)
                    .then_some(())
            },
        )
        .await;
    }
    // Only node0's own upstream fails its health check.
    cluster.nodes[0]
        .mock
        .set_fault(json!({"route": "/v1/models", "status": 503}))
        .await;
    let started = Instant::now();
    for node in &cluster.nodes[1..] {
        eventually(
            Duration::from_secs(2),
            &format!("{} sees node0 report upstream down", node.name),
            || async {
                let health = node.health().await;
                (health["cluster"]["provider_matrix"]["upstream"]["node0"]["up"] == false)
                    .then_some(())
            },
        )
        .await;
        let health = node.health().await;
        assert_eq!(
            health["cluster"]["demoted_providers"],
            json!(["upstream"]),
            "policy any: tried last"
        );
        assert_eq!(
            health["cluster"]["provider_matrix"]["upstream"][&node.name]["up"], true,
            "its own view is unchanged"
        );
    }
    eprintln!(
        "outage visible on the other nodes after {:?}",
        started.elapsed()
    );
    cluster.nodes[0].mock.clear_faults().await;
    for node in &cluster.nodes[1..] {
        eventually(
            Duration::from_secs(3),
            "recovery reaches the other nodes",
            || async {
                let health = node.health().await;
                (health["cluster"]["provider_matrix"]["upstream"]["node0"]["up"] == true)
                    .then_some(())
            },
        )
        .await;
    }
}

#[tokio::test]
async fn a_killed_node_is_reported_dead_and_rejoins_with_a_new_generation() {
    let mut cluster = TestCluster::start(3, ClusterOptions::default());
    cluster.wait_converged(Duration::from_secs(10)).await;
    let before = member(&cluster.nodes[0].health().await, "node2").unwrap()["generation"]
        .as_u64()
        .unwrap();
    cluster.nodes[2].kill();
    for node in &cluster.nodes[..2] {
        eventually(
            Duration::from_secs(10),
            &format!("{} reports node2 dead", node.name),
            || async {
                let health = node.health().await;
                (member(&health, "node2")?["liveness"] == "dead").then_some(())
            },
        )
        .await;
    }
    let metrics = cluster.nodes[0].gateway().metrics().await;
    assert_eq!(
        metric(&metrics, "hapax_cluster_nodes", &[("state", "dead")]),
        Some(1.0)
    );
    cluster.restart(2);
    for node in &cluster.nodes {
        eventually(
            Duration::from_secs(10),
            &format!("{} sees node2 alive again", node.name),
            || async {
                let health = node.health().await;
                let m = member(&health, "node2")?;
                (m["liveness"] == "alive" && m["generation"].as_u64()? > before).then_some(())
            },
        )
        .await;
    }
}

#[tokio::test]
async fn a_node_that_stops_cleanly_is_reported_as_left() {
    let mut cluster = TestCluster::start(2, ClusterOptions::default());
    cluster.wait_converged(Duration::from_secs(10)).await;
    assert!(cluster.nodes[1].stop(), "graceful stop exits 0");
    eventually(
        Duration::from_secs(5),
        "node0 sees node1 as left",
        || async {
            let health = cluster.nodes[0].health().await;
            (member(&health, "node1")?["liveness"] == "left").then_some(())
        },
    )
    .await;
}

async fn never_admitted(cluster: &TestCluster, outsider: &Gateway, name: &str) {
    // Give gossip ample rounds (100 ms each) to have admitted it, were it admissible.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for node in &cluster.nodes {
        assert!(
            member(&node.health().await, name).is_none(),
            "{} must not list {name}",
            node.name
        );
    }
    let own: Value = client()
        .get(outsider.url("/v1/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        own["cluster"]["members"].as_array().unwrap().len(),
        1,
        "the outsider sees only itself"
    );
}

fn outsider_config(name: &str, cluster_id: &str, seed: &str, secret: Option<&str>) -> String {
    let data = std::env::temp_dir()
        .join(format!("hapax-outsider-{}-{name}", std::process::id()))
        .display()
        .to_string();
    let secret = secret
        .map(|s| format!(", secret: \"{s}\""))
        .unwrap_or_default();
    format!(
        "server: {{host: 127.0.0.1, port: 0}}\nauth: {{enabled: false}}\nproviders: {{m: {{type: mock, model: mock-1}}}}\ncluster: {{node_id: {name}, cluster_id: {cluster_id}, gossip_listen: \"127.0.0.1:0\", grpc_listen: \"127.0.0.1:0\", data_dir: \"{data}\", gossip_interval: 100ms, seeds: [\"{seed}\"]{secret}}}\n"
    )
}

#[tokio::test]
async fn a_node_with_another_cluster_id_is_not_admitted() {
    let cluster = TestCluster::start(2, ClusterOptions::default());
    cluster.wait_converged(Duration::from_secs(10)).await;
    let outsider = Gateway::start(&outsider_config(
        "intruder",
        "another-cluster",
        &cluster.nodes[0].gossip,
        None,
    ));
    never_admitted(&cluster, &outsider, "intruder").await;
}

#[tokio::test]
async fn gossip_without_the_cluster_secret_is_dropped() {
    let options = ClusterOptions {
        secret: Some("correct-horse-battery-staple".into()),
        ..Default::default()
    };
    let cluster = TestCluster::start(2, options);
    cluster.wait_converged(Duration::from_secs(10)).await;
    let outsider = Gateway::start(&outsider_config(
        "intruder",
        "test-cluster",
        &cluster.nodes[0].gossip,
        Some("wrong-secret-wrong-secret"),
    ));
    never_admitted(&cluster, &outsider, "intruder").await;
    let metrics = cluster.nodes[0].gateway().metrics().await;
    assert!(metric(&metrics, "hapax_gossip_rejected_total", &[]).unwrap() > 0.0);
}
