//! The node's side of clustering: joins gossip, hands routing the cluster snapshot, and
//! publishes this node's view of each provider (health check and breaker combined).

use std::sync::Arc;
use std::time::Duration;

use hapax_cluster::{Cluster, ClusterError, NodeAddresses, ProviderReport};
use hapax_config::ClusterConfig;

use crate::app::App;
use crate::routing::breaker::BreakerPhase;

/// How often provider reports are recomputed (publishing itself is debounced).
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

pub struct ClusterLink {
    cluster: Arc<Cluster>,
    publisher: tokio::task::JoinHandle<()>,
}

impl ClusterLink {
    pub async fn join(
        app: &Arc<App>,
        config: &ClusterConfig,
        addresses: &NodeAddresses,
    ) -> Result<Self, ClusterError> {
        let cluster = Arc::new(Cluster::join(config, addresses, app.metrics.registry()).await?);
        app.dispatcher.attach_cluster(cluster.view());
        let publisher = tokio::spawn(publish_reports(Arc::clone(app), Arc::clone(&cluster)));
        Ok(Self { cluster, publisher })
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Announces a clean departure (bounded by `patience`).
    pub async fn leave(self, patience: Duration) {
        self.publisher.abort();
        let _ = self.publisher.await;
        match Arc::try_unwrap(self.cluster) {
            Ok(cluster) => cluster.leave(patience).await,
            Err(_) => {
                tracing::warn!("cluster still in use at shutdown; leaving without announcing")
            }
        }
    }
}

/// This node's report on a provider: usable here = health check passing and breaker not open.
pub fn report_for(entry: &crate::routing::entry::ProviderEntry) -> ProviderReport {
    let health = entry.health.snapshot();
    ProviderReport {
        up: health.healthy && entry.breaker.phase() != BreakerPhase::Open,
        checked: health.last_check_unix,
        latency_ms: health
            .latency_ewma_ms
            .map(|ms| (ms * 100.0).round() / 100.0),
        error_rate: health.recent_error_rate,
    }
}

async fn publish_reports(app: Arc<App>, cluster: Arc<Cluster>) {
    let mut ticker = tokio::time::interval(PUBLISH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for entry in app.dispatcher.providers() {
            cluster
                .publish_provider(&entry.name, report_for(entry))
                .await;
        }
    }
}

/// Everything clustering runs on this node: gossip membership and Raft consensus.
pub struct ClusterRuntime {
    gossip: ClusterLink,
    consensus: crate::consensus_link::ConsensusLink,
    grpc: std::net::SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterStartError {
    #[error("cannot bind cluster.grpc_listen {addr}")]
    GrpcBind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("cluster metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl ClusterRuntime {
    /// Binds the cluster gRPC port, joins gossip (publishing this node's addresses), starts
    /// Raft, and makes breakers and rate limits cluster-wide. `None` without a `cluster:` section.
    pub async fn start(
        app: &Arc<App>,
        config: &hapax_config::Config,
        http: String,
        h3: Option<String>,
    ) -> Result<Option<Self>, ClusterStartError> {
        let Some(cluster_config) = &config.cluster else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(&cluster_config.grpc_listen)
            .await
            .map_err(|source| ClusterStartError::GrpcBind {
                addr: cluster_config.grpc_listen.clone(),
                source,
            })?;
        let grpc = listener
            .local_addr()
            .map_err(|source| ClusterStartError::GrpcBind {
                addr: cluster_config.grpc_listen.clone(),
                source,
            })?;
        let advertise = match &cluster_config.grpc_advertise {
            Some(advertise) => advertise.clone(),
            None if grpc.ip().is_unspecified() => {
                format!("{}:{}", hapax_cluster::default_node_id(), grpc.port())
            }
            None => grpc.to_string(),
        };
        let addresses = NodeAddresses {
            http,
            h3,
            grpc: Some(advertise.clone()),
        };
        let gossip = ClusterLink::join(app, cluster_config, &addresses).await?;
        if cluster_config.secret.is_none() {
            tracing::warn!(
                "cluster runs without cluster.secret: gossip and cluster RPC are not authenticated"
            );
        }
        let node_id = gossip.cluster().node_id().to_owned();
        let view = gossip.cluster().view();
        let consensus = hapax_cluster::Consensus::start(
            cluster_config,
            &node_id,
            listener,
            advertise,
            Arc::clone(&view),
            app.metrics.registry(),
            config.routing.request_timeout.get(),
        )
        .await?;
        let consensus =
            crate::consensus_link::ConsensusLink::attach(app, config, consensus, &node_id, view)?;
        Ok(Some(Self {
            gossip,
            consensus,
            grpc,
        }))
    }

    /// ` gossip=ADDR grpc=ADDR` for the ready line.
    pub fn ready_fields(&self) -> String {
        format!(
            " gossip={} grpc={}",
            self.gossip.cluster().gossip_addr(),
            self.grpc
        )
    }

    /// Stops consensus, then leaves gossip cleanly.
    pub async fn shutdown(self, patience: Duration) {
        self.consensus.shutdown().await;
        self.gossip.leave(patience).await;
    }
}
