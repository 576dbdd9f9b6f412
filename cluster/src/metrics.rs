//! Cluster metrics, registered into the node's registry.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

pub struct ClusterMetrics {
    pub nodes: IntGaugeVec,
    pub gossip_rounds: IntCounter,
    pub gossip_messages: IntCounterVec,
    pub gossip_bytes: IntCounterVec,
    pub gossip_rejected: IntCounter,
    pub peer_staleness: IntGaugeVec,
}

impl ClusterMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let nodes = IntGaugeVec::new(
            Opts::new(
                "hapax_cluster_nodes",
                "Cluster members by liveness as seen by this node",
            ),
            &["state"],
        )?;
        let gossip_rounds = IntCounter::new(
            "hapax_gossip_rounds_total",
            "Gossip rounds started by this node (SYN messages sent)",
        )?;
        let gossip_messages = IntCounterVec::new(
            Opts::new(
                "hapax_gossip_messages_total",
                "Gossip datagrams by direction",
            ),
            &["direction"],
        )?;
        let gossip_bytes = IntCounterVec::new(
            Opts::new("hapax_gossip_bytes_total", "Gossip bytes by direction"),
            &["direction"],
        )?;
        let gossip_rejected = IntCounter::new(
            "hapax_gossip_rejected_total",
            "Gossip datagrams dropped: bad secret or unreadable",
        )?;
        let peer_staleness = IntGaugeVec::new(
            Opts::new(
                "hapax_cluster_peer_staleness_milliseconds",
                "Time since this node last saw each peer's heartbeat advance",
            ),
            &["peer"],
        )?;
        registry.register(Box::new(nodes.clone()))?;
        registry.register(Box::new(gossip_rounds.clone()))?;
        registry.register(Box::new(gossip_messages.clone()))?;
        registry.register(Box::new(gossip_bytes.clone()))?;
        registry.register(Box::new(gossip_rejected.clone()))?;
        registry.register(Box::new(peer_staleness.clone()))?;
        Ok(Self {
            nodes,
            gossip_rounds,
            gossip_messages,
            gossip_bytes,
            gossip_rejected,
            peer_staleness,
        })
    }
}

/// Brings a counter up to an absolute value read from an atomic.
pub fn catch_up(counter: &IntCounter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}
