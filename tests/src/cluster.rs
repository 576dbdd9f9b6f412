//! A harness for real multi-node clusters on loopback: N `hapax serve` processes with
//! gossip on ports chosen at run time, each optionally with its own mock provider, that a
//! test can kill, stop, restart and inspect through `/v1/health`.

use std::time::Duration;

use serde_json::Value;

use crate::{Gateway, MockUpstream, client, eventually};

/// What every node of a test cluster shares.
#[derive(Clone)]
pub struct ClusterOptions {
    pub cluster_id: String,
    pub secret: Option<String>,
    /// Extra top-level YAML appended to every node's config.
    pub extra_yaml: String,
    /// Extra keys inside each node's `cluster:` block (YAML flow entries, e.g. `remote_health: majority`).
    pub extra_cluster: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            cluster_id: "test-cluster".into(),
            secret: None,
            extra_yaml: String::new(),
            extra_cluster: String::new(),
        }
    }
}

pub struct ClusterNode {
    pub name: String,
    pub gateway: Option<Gateway>,
    /// This node's own upstream, so a test can fail a provider for one node only.
    pub mock: MockUpstream,
    /// The gossip address, kept across restarts so peers' seeds stay valid.
    pub gossip: String,
    pub options: ClusterOptions,
    /// Raft data, kept across restarts of this node.
    pub data_dir: tempfile::TempDir,
    /// Address every listener of this node binds.
    pub bind_ip: String,
    /// Network namespace the node (and its mock) runs in, if not this one.
    pub netns: Option<String>,
}

impl ClusterNode {
    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("node is running")
    }

    pub fn url(&self, path: &str) -> String {
        self.gateway().url(path)
    }

    pub async fn health(&self) -> Value {
        client()
            .get(self.url("/v1/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn config(&self, listen: &str, seeds: &[String]) -> String {
        let seeds = seeds
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let secret = self
            .options
            .secret
            .as_ref()
            .map(|s| format!(", secret: \"{s}\""))
            .unwrap_or_default();
        let extra_cluster = if self.options.extra_cluster.is_empty() {
            String::new()
        } else {
            format!(", {}", self.options.extra_cluster)
        };
        format!(
            r#"
server: {{host: {ip}, port: 0, shutdown_timeout: 2s}}
auth: {{enabled: false}}
logging: {{level: info}}
providers:
  upstream:
    type: openai_compatible
    base_url: "{base}"
    model: mock-1
    timeout: 2s
    health_check: {{interval: 200ms, timeout: 1s, failure_threshold: 1, success_threshold: 1}}
cluster: {{node_id: {name}, cluster_id: {cluster_id}, gossip_listen: "{listen}", grpc_listen: "{ip}:0", data_dir: "{data}", gossip_interval: 100ms, seeds: [{seeds}]{secret}{extra_cluster}}}
{extra}
"#,
            base = self.mock.openai_base(),
            name = self.name,
            ip = self.bind_ip,
            data = self.data_dir.path().display(),
            cluster_id = self.options.cluster_id,
            extra = self.options.extra_yaml,
        )
    }

    /// Starts (or restarts) the node's gateway process.
    pub fn start(&mut self, seeds: &[String]) {
        let listen = if self.gossip.is_empty() {
            format!("{}:0", self.bind_ip)
        } else {
            self.gossip.clone()
        };
        let gateway = Gateway::start_in(self.netns.as_deref(), &self.config(&listen, seeds), &[]);
        self.gossip = gateway
            .process
            .ready
            .get("gossip")
            .cloned()
            .expect("gossip address on the ready line");
        self.gateway = Some(gateway);
    }

    pub fn kill(&mut self) {
        if let Some(mut gateway) = self.gateway.take() {
            gateway.process.kill();
        }
    }

    /// Graceful stop (SIGTERM): the node announces that it leaves.
    pub fn stop(&mut self) -> bool {
        match self.gateway.take() {
            Some(mut gateway) => gateway
                .process
                .terminate(Duration::from_secs(10))
                .is_some_and(|s| s.success()),
            None => true,
        }
    }
}

pub struct TestCluster {
    pub nodes: Vec<ClusterNode>,
}

impl TestCluster {
    /// Starts `n` nodes named node0..node{n-1} on loopback; each seeds from those started before it.
    pub fn start(n: usize, options: ClusterOptions) -> Self {
        Self::start_placed(&vec![("127.0.0.1".to_owned(), None); n], options)
    }

    /// One node per `(bind ip, network namespace)`, in order.
    pub fn start_placed(placements: &[(String, Option<String>)], options: ClusterOptions) -> Self {
        let mut nodes: Vec<ClusterNode> = Vec::with_capacity(placements.len());
        for (i, (ip, netns)) in placements.iter().enumerate() {
            let mut node = ClusterNode {
                name: format!("node{i}"),
                gateway: None,
                mock: MockUpstream::start_at(ip, netns.as_deref()),
                bind_ip: ip.clone(),
                netns: netns.clone(),
                gossip: String::new(),
                options: options.clone(),
                data_dir: tempfile::tempdir().unwrap(),
            };
            let seeds: Vec<String> = nodes.iter().map(|n| n.gossip.clone()).collect();
            node.start(&seeds);
            nodes.push(node);
        }
        Self { nodes }
    }

    /// Gossip addresses of every node but `i`.
    pub fn seeds_for(&self, i: usize) -> Vec<String> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n.gossip.clone())
            .collect()
    }

    pub fn restart(&mut self, i: usize) {
        let seeds = self.seeds_for(i);
        self.nodes[i].start(&seeds);
    }

    /// Waits until every running node lists every running node as alive.
    pub async fn wait_converged(&self, patience: Duration) {
        let running: Vec<&ClusterNode> =
            self.nodes.iter().filter(|n| n.gateway.is_some()).collect();
        let names: Vec<String> = running.iter().map(|n| n.name.clone()).collect();
        for node in &running {
            eventually(
                patience,
                &format!("{} sees {names:?} alive", node.name),
                || async {
                    let health = node.health().await;
                    names
                        .iter()
                        .all(|name| member(&health, name).is_some_and(|m| m["liveness"] == "alive"))
                        .then_some(())
                },
            )
            .await;
        }
    }
}

/// The member entry for `node_id` in a `/v1/health` body.
pub fn member<'a>(health: &'a Value, node_id: &str) -> Option<&'a Value> {
    health["cluster"]["members"]
        .as_array()?
        .iter()
        .find(|m| m["node_id"] == node_id)
}
