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
