//! A sandbox of `Consensus` instances in one process on loopback, each with a hand-made
//! gossip view listing every node alive at its gRPC address. Listeners are bound on port 0
//! before the nodes start, so tests never race for ports.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hapax_cluster::{
    BreakerStatus, ClusterCommand, ClusterView, Consensus, Liveness, Member, RaftRole,
};
use hapax_config::{ClusterConfig, Secret};
use tempfile::TempDir;
use tokio::net::TcpListener;

pub const NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];
pub const PROPOSE: Duration = Duration::from_secs(5);
pub const PATIENCE: Duration = Duration::from_secs(15);

pub struct Node {
    pub name: &'static str,
    pub dir: PathBuf,
    pub addr: String,
    view: Arc<ArcSwap<ClusterView>>,
    consensus: Option<Consensus>,
}

pub struct Sandbox {
    tmp: TempDir,
    pub nodes: Vec<Node>,
    secret: Option<Secret>,
}

fn member(name: &str, addr: &str, is_self: bool) -> Member {
    Member {
        node_id: name.into(),
        generation: 1,
        liveness: Liveness::Alive,
        is_self,
        gossip_addr: String::new(),
        http: None,
        h3: None,
        grpc: Some(addr.into()),
        version: None,
        heartbeat: 1,
        last_heartbeat_ms_ago: 0,
    }
}

/// Polls `check` until it holds or `patience` runs out.
pub async fn eventually(patience: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience;
    while !check() {
        assert!(Instant::now() < deadline, "not within {patience:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Sandbox {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    pub async fn start_with(secret: Option<Secret>) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut listeners = Vec::new();
        let mut nodes = Vec::new();
        for name in NAMES {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            listeners.push(listener);
            nodes.push(Node {
                name,
                dir: tmp.path().join(name),
                addr,
                view: Arc::new(ArcSwap::from_pointee(ClusterView::default())),
                consensus: None,
            });
        }
        let mut sandbox = Self { tmp, nodes, secret };
        sandbox.publish_views();
        for (i, listener) in listeners.into_iter().enumerate() {
            sandbox.boot(i, listener).await;
        }
        sandbox
    }

    /// What gossip would show each node: every node alive at its current address.
    fn publish_views(&self) {
        for node in &self.nodes {
            node.view.store(Arc::new(ClusterView {
                self_id: node.name.into(),
                cluster_id: "test".into(),
                members: self
                    .nodes
                    .iter()
                    .map(|n| member(n.name, &n.addr, n.name == node.name))
                    .collect(),
                ..Default::default()
            }));
        }
    }

    async fn boot(&mut self, i: usize, listener: TcpListener) {
        let node = &self.nodes[i];
        let config = ClusterConfig {
            node_id: Some(node.name.into()),
            cluster_id: "test".into(),
            seeds: vec!["127.0.0.1:1".into()],
            data_dir: Some(node.dir.display().to_string()),
            bootstrap_expect: Some(3),
            secret: self.secret.clone(),
            ..Default::default()
        };
        let registry = prometheus::Registry::new();
        let consensus = Consensus::start(
            &config,
            node.name,
            listener,
            node.addr.clone(),
            Arc::clone(&node.view),
            &registry,
            std::time::Duration::from_secs(120),
        )
        .await
        .unwrap();
        self.nodes[i].consensus = Some(consensus);
    }

    /// Starts node `i` again from its data dir, on a new port that gossip then reports.
    pub async fn restart(&mut self, i: usize) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.nodes[i].addr = listener.local_addr().unwrap().to_string();
        self.publish_views();
        self.boot(i, listener).await;
    }

    /// Starts one more node that gossip then shows to everyone; returns its index.
    pub async fn add_node(&mut self, name: &'static str) -> usize {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let dir = self.tmp.path().join(name);
        self.nodes.push(Node {
            name,
            dir,
            addr,
            view: Arc::new(ArcSwap::from_pointee(ClusterView::default())),
            consensus: None,
        });
        self.publish_views();
        let i = self.nodes.len() - 1;
        self.boot(i, listener).await;
        i
    }

    pub async fn stop(&mut self, i: usize) {
        if let Some(consensus) = self.nodes[i].consensus.take() {
            consensus.shutdown().await;
        }
    }

    pub fn running(&self) -> impl Iterator<Item = (usize, &Consensus)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.consensus.as_ref().map(|c| (i, c)))
    }

    pub fn consensus(&self, i: usize) -> &Consensus {
        self.nodes[i].consensus.as_ref().unwrap()
    }

    /// Waits until every running node names the same leader; returns its index.
    pub async fn leader(&self) -> usize {
        let mut found = None;
        eventually(PATIENCE, "all running nodes agree on a leader", || {
            let leaders: Vec<Option<String>> =
                self.running().map(|(_, c)| c.status().leader_id).collect();
            let agreed = leaders.windows(2).all(|w| w[0] == w[1]) && leaders[0].is_some();
            found = agreed
                .then(|| {
                    self.nodes
                        .iter()
                        .position(|n| Some(n.name.to_owned()) == leaders[0])
                })
                .flatten();
            found.is_some_and(|i| {
                self.nodes[i]
                    .consensus
                    .as_ref()
                    .is_some_and(|c| c.status().role == RaftRole::Leader)
            })
        })
        .await;
        found.unwrap()
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}

pub fn trip(provider: &str, generation: u64, node: &str) -> ClusterCommand {
    ClusterCommand::TripBreaker {
        provider: provider.into(),
        expected_generation: generation,
        reason: "upstream 5xx".into(),
        node: node.into(),
        now_unix_ms: 1_000,
        open_for_ms: 3_600_000_000_000,
    }
}

pub fn is_open(c: &Consensus, provider: &str) -> bool {
    matches!(
        c.state().load().breaker(provider).status,
        BreakerStatus::Open { .. }
    )
}
