//! Hapax cluster: membership and provider-health gossip (chitchat over UDP) and, built on
//! it, consensus on breaker state and rate-limit budgets. The node reads the cluster only
//! through lock-free snapshots ([`ClusterView`]); nothing here knows HTTP or providers.

pub mod gossip;
pub mod metrics;
pub mod raft;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use chitchat::FailureDetectorConfig;
use hapax_config::ClusterConfig;

pub use self::gossip::keys::ProviderReport;
use self::gossip::{Gossip, GossipSettings, keys};
pub use self::raft::{
    BreakerState, BreakerStatus, ClusterCommand, CommandOutcome, Consensus, ConsensusError,
    QuotaWindow, RaftRole, RaftStatus, ReplicatedState,
};
pub use self::view::{ClusterView, Liveness, Member};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot bind cluster.gossip_listen {addr}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{key}: cannot resolve `{value}`: {reason}")]
    Resolve {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("gossip: {0}")]
    Gossip(String),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cluster.data_dir {path}: {reason}")]
    Storage { path: String, reason: String },
    #[error("raft: {0}")]
    Raft(String),
}

/// The addresses this node serves, published for the other nodes.
#[derive(Debug, Clone, Default)]
pub struct NodeAddresses {
    pub http: String,
    pub h3: Option<String>,
    pub grpc: Option<String>,
}

/// This node's membership in the cluster.
pub struct Cluster {
    node_id: String,
    generation: u64,
    gossip_addr: SocketAddr,
    gossip: Gossip,
}

/// The name a node has when config gives none: the host name.
pub fn default_node_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hapax".to_owned())
}

async fn resolve(key: &'static str, value: &str) -> Result<SocketAddr, ClusterError> {
    let mut addrs = tokio::net::lookup_host(value)
        .await
        .map_err(|e| ClusterError::Resolve {
            key,
            value: value.to_owned(),
            reason: e.to_string(),
        })?;
    addrs.next().ok_or_else(|| ClusterError::Resolve {
        key,
        value: value.to_owned(),
        reason: "no address".into(),
    })
}

/// The address peers should use: the configured one, the bound one, or — when bound to all
/// interfaces — this host's own name resolved (what docker-compose gives each service).
async fn advertised(
    key: &'static str,
    configured: Option<&str>,
    bound: SocketAddr,
) -> Result<SocketAddr, ClusterError> {
    if let Some(value) = configured {
        return resolve(key, value).await;
    }
    if !bound.ip().is_unspecified() {
        return Ok(bound);
    }
    let host = default_node_id();
    let found = resolve(key, &format!("{host}:{}", bound.port())).await?;
    if found.ip().is_loopback() {
        return Err(ClusterError::Resolve {
            key,
            value: host,
            reason: "resolves to loopback; set it explicitly".into(),
        });
    }
    Ok(found)
}

impl Cluster {
    /// Binds gossip, publishes this node and starts following the cluster.
    pub async fn join(
        config: &ClusterConfig,
        addresses: &NodeAddresses,
        registry: &prometheus::Registry,
    ) -> Result<Self, ClusterError> {
        let node_id = config.node_id.clone().unwrap_or_else(default_node_id);
        let generation = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let socket = tokio::net::UdpSocket::bind(&config.gossip_listen)
            .await
            .map_err(|source| ClusterError::Bind {
                addr: config.gossip_listen.clone(),
                source,
            })?;
        let bound = socket.local_addr().map_err(|source| ClusterError::Bind {
            addr: config.gossip_listen.clone(),
            source,
        })?;
        let gossip_addr = advertised(
            "cluster.gossip_advertise",
            config.gossip_advertise.as_deref(),
            bound,
        )
        .await?;
        let interval = config.gossip_interval.get();
        let fd = &config.failure_detector;
        let failure_detector = FailureDetectorConfig {
            phi_threshold: fd.phi_threshold,
            sampling_window_size: 1000,
            max_interval: fd.max_interval.get(),
            initial_interval: fd.initial_interval.map(|d| d.get()).unwrap_or(interval),
            dead_node_grace_period: fd.dead_node_grace_period.get(),
        };
        let mut initial = vec![
            (keys::HTTP.to_owned(), addresses.http.clone()),
            (
                keys::VERSION.to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
            (keys::GENERATION.to_owned(), generation.to_string()),
        ];
        if let Some(h3) = &addresses.h3 {
            initial.push((keys::H3.to_owned(), h3.clone()));
        }
        if let Some(grpc) = &addresses.grpc {
            initial.push((keys::GRPC.to_owned(), grpc.clone()));
        }
        let settings = GossipSettings {
            node_id: node_id.clone(),
            cluster_id: config.cluster_id.clone(),
            generation,
            socket,
            advertise: gossip_addr,
            seeds: config.seeds.clone(),
            interval,
            failure_detector,
            secret: config.secret.as_ref().map(|s| s.expose().to_owned()),
            policy: config.remote_health,
        };
        let gossip = Gossip::start(
            settings,
            initial,
            metrics::ClusterMetrics::register(registry)?,
        )
        .await?;
        tracing::info!(node_id = %node_id, generation, gossip = %gossip_addr, cluster_id = %config.cluster_id, seeds = config.seeds.len(), "joined the cluster gossip");
        Ok(Self {
            node_id,
            generation,
            gossip_addr,
            gossip,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// The snapshot handle the hot path reads (`load()` is lock-free).
    pub fn view(&self) -> Arc<ArcSwap<ClusterView>> {
        self.gossip.view()
    }

    pub async fn publish_provider(&self, provider: &str, report: ProviderReport) {
        self.gossip.publish_provider(provider, report).await;
    }

    /// Leaves cleanly: peers see this node as `left`, not dead.
    pub async fn leave(self, patience: Duration) {
        let _ = tokio::time::timeout(patience, self.gossip.leave()).await;
    }
}
