//! Checks of the `cluster:` section.

use std::net::SocketAddr;

use crate::error::Report;
use crate::positions::KeyPath;
use crate::schema::ClusterConfig;

fn at(path: &str) -> KeyPath {
    KeyPath::parse(path)
}

/// `host:port` with a non-empty host and a numeric port.
fn is_host_port(text: &str) -> bool {
    match text.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

pub(crate) fn cluster(cluster: &ClusterConfig, report: &mut Report<'_>) {
    if cluster
        .node_id
        .as_deref()
        .is_some_and(|id| id.trim().is_empty() || id.len() > 128)
    {
        report.problem(&at("cluster.node_id"), "must be 1 to 128 characters");
    }
    if cluster.cluster_id.trim().is_empty() {
        report.problem(&at("cluster.cluster_id"), "must not be empty");
    }
    for (key, value) in [
        ("cluster.gossip_listen", &cluster.gossip_listen),
        ("cluster.grpc_listen", &cluster.grpc_listen),
    ] {
        if value.parse::<SocketAddr>().is_err() {
            report.problem(
                &at(key),
                format!("`{value}` is not an IP:port address (e.g. 0.0.0.0:7946)"),
            );
        }
    }
    if cluster.gossip_listen == cluster.grpc_listen
        && cluster
            .gossip_listen
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.port() != 0)
    {
        // Different protocols (UDP vs TCP) could share a number, but one address for both is
        // almost always a copy-paste slip.
        report.notice(
            &at("cluster.grpc_listen"),
            "is the same address as gossip_listen",
        );
    }
    for (key, value) in [
        ("cluster.gossip_advertise", &cluster.gossip_advertise),
        ("cluster.grpc_advertise", &cluster.grpc_advertise),
    ] {
        if let Some(value) = value
            && !is_host_port(value)
        {
            report.problem(&at(key), format!("`{value}` is not host:port"));
        }
    }
    for (i, seed) in cluster.seeds.iter().enumerate() {
        if !is_host_port(seed) {
            report.problem(
                &at(&format!("cluster.seeds[{i}]")),
                format!("`{seed}` is not host:port"),
            );
        }
    }
    if cluster.gossip_interval.is_zero() {
        report.problem(&at("cluster.gossip_interval"), "must be longer than 0s");
    }
    let fd = &cluster.failure_detector;
    if !(fd.phi_threshold > 0.0 && fd.phi_threshold.is_finite()) {
        report.problem(
            &at("cluster.failure_detector.phi_threshold"),
            "must be a positive number",
        );
    }
    if fd.max_interval.is_zero() {
        report.problem(
            &at("cluster.failure_detector.max_interval"),
            "must be longer than 0s",
        );
    }
    if let Some(secret) = &cluster.secret
        && secret.expose().len() < 16
    {
        report.problem(&at("cluster.secret"), "must be at least 16 characters");
    }
    if cluster
        .data_dir
        .as_deref()
        .is_some_and(|dir| dir.trim().is_empty())
    {
        report.problem(
            &at("cluster.data_dir"),
            "must not be empty (leave it out for ./data/<node_id>)",
        );
    }
    match cluster.bootstrap_expect {
        Some(0) => report.problem(&at("cluster.bootstrap_expect"), "must be at least 1"),
        Some(n) if n > 1 && cluster.seeds.is_empty() => report.notice(
            &at("cluster.bootstrap_expect"),
            format!("waits for {n} nodes but this node has no seeds: the others must list it as a seed"),
        ),
        None if !cluster.seeds.is_empty() => report.notice(
            &at("cluster.bootstrap_expect"),
            "not set: with seeds, this node never forms a Raft group itself and only joins an existing one; set it to the initial cluster size (e.g. 3) on every node of a fresh cluster",
        ),
        _ => {}
    }
    if cluster.dead_node_removal_after.is_zero() {
        report.problem(
            &at("cluster.dead_node_removal_after"),
            "must be longer than 0s",
        );
    }
    if cluster.secret.is_none() {
        report.notice(&at("cluster"), "no cluster.secret: gossip and cluster RPC are not authenticated (set one outside a trusted network)");
    }
}
