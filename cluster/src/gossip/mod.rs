//! Membership and provider-health gossip with chitchat: who is alive (phi-accrual), what
//! each node publishes (addresses, version, generation, its view of every provider), and a
//! background refresh that turns chitchat's state into a `ClusterView` snapshot.

pub mod keys;
pub mod transport;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use hapax_config::RemoteHealthPolicy;
use parking_lot::Mutex;

use self::keys::ProviderReport;
use self::transport::{AuthenticatedUdpTransport, GossipStats};
use crate::ClusterError;
use crate::metrics::{ClusterMetrics, catch_up};
use crate::view::{ClusterView, Liveness, Member};

/// Everything gossip needs, resolved by the caller.
pub struct GossipSettings {
    pub node_id: String,
    pub cluster_id: String,
    pub generation: u64,
    pub socket: tokio::net::UdpSocket,
    pub advertise: SocketAddr,
    pub seeds: Vec<String>,
    pub interval: Duration,
    pub failure_detector: FailureDetectorConfig,
    pub secret: Option<String>,
    pub policy: RemoteHealthPolicy,
}

/// How long an unchanged-state report may wait before it is re-published anyway.
const REPORT_DEBOUNCE: Duration = Duration::from_secs(2);

pub struct Gossip {
    handle: ChitchatHandle,
    view: Arc<ArcSwap<ClusterView>>,
    published: Mutex<HashMap<String, (ProviderReport, Instant)>>,
    interval: Duration,
    refresher: tokio::task::JoinHandle<()>,
}

impl Gossip {
    pub async fn start(
        settings: GossipSettings,
        initial: Vec<(String, String)>,
        metrics: ClusterMetrics,
    ) -> Result<Self, ClusterError> {
        let stats = Arc::new(GossipStats::default());
        let transport = AuthenticatedUdpTransport::new(
            settings.socket,
            settings.secret.as_deref(),
            Arc::clone(&stats),
        );
        let chitchat_id = ChitchatId::new(
            settings.node_id.clone(),
            settings.generation,
            settings.advertise,
        );
        let config = ChitchatConfig {
            chitchat_id,
            cluster_id: settings.cluster_id.clone(),
            gossip_interval: settings.interval,
            listen_addr: settings.advertise,
            seed_nodes: settings.seeds.clone(),
            failure_detector_config: settings.failure_detector,
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V1,
        };
        let handle = spawn_chitchat(config, initial, &transport)
            .await
            .map_err(|e| ClusterError::Gossip(format!("{e:#}")))?;
        let view = Arc::new(ArcSwap::from_pointee(ClusterView {
            self_id: settings.node_id.clone(),
            cluster_id: settings.cluster_id.clone(),
            ..Default::default()
        }));
        let refresher = tokio::spawn(refresh_loop(
            handle.chitchat(),
            Arc::clone(&view),
            settings.node_id,
            settings.cluster_id,
            settings.policy,
            settings.interval,
            stats,
            metrics,
        ));
        Ok(Self {
            handle,
            view,
            published: Mutex::new(HashMap::new()),
            interval: settings.interval,
            refresher,
        })
    }

    pub fn view(&self) -> Arc<ArcSwap<ClusterView>> {
        Arc::clone(&self.view)
    }

    pub async fn set(&self, key: &str, value: &str) {
        let chitchat = self.handle.chitchat();
        chitchat.lock().await.self_node_state().set(key, value);
    }

    /// Publishes this node's view of `provider`: at once when `up` flips, otherwise only on
    /// a material change and at most every couple of seconds, so flapping cannot flood gossip.
    pub async fn publish_provider(&self, provider: &str, report: ProviderReport) {
        let now = Instant::now();
        let due = {
            let mut published = self.published.lock();
            let due = match published.get(provider) {
                None => true,
                Some((previous, at)) => {
                    previous.up != report.up
                        || (report.differs_materially(previous)
                            && now.duration_since(*at) >= REPORT_DEBOUNCE)
                }
            };
            if due {
                published.insert(provider.to_owned(), (report, now));
            }
            due
        };
        if due && let Ok(value) = serde_json::to_string(&report) {
            self.set(&format!("{}{provider}", keys::PROVIDER_PREFIX), &value)
                .await;
        }
    }

    /// Announces a clean departure and gives it time to spread before gossip stops.
    pub async fn leave(self) {
        self.set(keys::LEAVING, "true").await;
        tokio::time::sleep(self.interval * 3).await;
        self.refresher.abort();
        let _ = self.handle.shutdown().await;
    }
}

struct RawNode {
    id: ChitchatId,
    heartbeat: u64,
    keys: BTreeMap<String, String>,
}

#[allow(clippy::too_many_arguments)]
async fn refresh_loop(
    chitchat: Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
    view: Arc<ArcSwap<ClusterView>>,
    self_id: String,
    cluster_id: String,
    policy: RemoteHealthPolicy,
    interval: Duration,
    stats: Arc<GossipStats>,
    metrics: ClusterMetrics,
) {
    let mut ticker = tokio::time::interval((interval / 2).max(Duration::from_millis(20)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeats: HashMap<ChitchatId, (u64, Instant)> = HashMap::new();
    loop {
        ticker.tick().await;
        let (raw, live) = {
            let guard = chitchat.lock().await;
            let live: HashSet<ChitchatId> = guard.live_nodes().cloned().collect();
            let raw: Vec<RawNode> = guard
                .node_states()
                .iter()
                .map(|(id, state)| RawNode {
                    id: id.clone(),
                    heartbeat: u64::from(state.heartbeat()),
                    keys: state
                        .key_values()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                })
                .collect();
            (raw, live)
        };
        let now = Instant::now();
        for node in &raw {
            let entry = heartbeats
                .entry(node.id.clone())
                .or_insert((node.heartbeat, now));
            if entry.0 != node.heartbeat {
                *entry = (node.heartbeat, now);
            }
        }
        heartbeats.retain(|id, _| raw.iter().any(|n| &n.id == id));
        let mut next = build_view(&raw, &live, &heartbeats, &self_id, &cluster_id, now);
        next.compute_demoted(policy);
        export(&metrics, &next, &stats);
        view.store(Arc::new(next));
    }
}

fn build_view(
    raw: &[RawNode],
    live: &HashSet<ChitchatId>,
    heartbeats: &HashMap<ChitchatId, (u64, Instant)>,
    self_id: &str,
    cluster_id: &str,
    now: Instant,
) -> ClusterView {
    // One entry per node id: its newest generation (a restarted node replaces its old self).
    let mut newest: BTreeMap<&str, &RawNode> = BTreeMap::new();
    for node in raw {
        let slot = newest.entry(&node.id.node_id).or_insert(node);
        if node.id.generation_id > slot.id.generation_id {
            *slot = node;
        }
    }
    let mut view = ClusterView {
        self_id: self_id.to_owned(),
        cluster_id: cluster_id.to_owned(),
        ..Default::default()
    };
    for (node_id, node) in newest {
        let is_self = node_id == self_id;
        let liveness = if node.keys.contains_key(keys::LEAVING) {
            Liveness::Left
        } else if is_self || live.contains(&node.id) {
            Liveness::Alive
        } else {
            Liveness::Dead
        };
        let since = heartbeats
            .get(&node.id)
            .map(|(_, at)| now.duration_since(*at))
            .unwrap_or_default();
        view.members.push(Member {
            node_id: node_id.to_owned(),
            generation: node.id.generation_id,
            liveness,
            is_self,
            gossip_addr: node.id.gossip_advertise_addr.to_string(),
            http: node.keys.get(keys::HTTP).cloned(),
            h3: node.keys.get(keys::H3).cloned(),
            grpc: node.keys.get(keys::GRPC).cloned(),
            version: node.keys.get(keys::VERSION).cloned(),
            heartbeat: node.heartbeat,
            last_heartbeat_ms_ago: if is_self { 0 } else { since.as_millis() as u64 },
        });
        for (key, value) in &node.keys {
            if let Some(provider) = key.strip_prefix(keys::PROVIDER_PREFIX)
                && let Ok(report) = serde_json::from_str::<ProviderReport>(value)
            {
                view.provider_matrix
                    .entry(provider.to_owned())
                    .or_default()
                    .insert(node_id.to_owned(), report);
            }
        }
    }
    view
}

fn export(metrics: &ClusterMetrics, view: &ClusterView, stats: &GossipStats) {
    for (state, liveness) in [
        ("alive", Liveness::Alive),
        ("dead", Liveness::Dead),
        ("left", Liveness::Left),
    ] {
        metrics.nodes.with_label_values(&[state]).set(
            view.members
                .iter()
                .filter(|m| m.liveness == liveness)
                .count() as i64,
        );
    }
    for member in view.members.iter().filter(|m| !m.is_self) {
        metrics
            .peer_staleness
            .with_label_values(&[&member.node_id])
            .set(member.last_heartbeat_ms_ago as i64);
    }
    catch_up(&metrics.gossip_rounds, stats.rounds.load(Ordering::Relaxed));
    catch_up(
        &metrics.gossip_messages.with_label_values(&["sent"]),
        stats.messages_sent.load(Ordering::Relaxed),
    );
    catch_up(
        &metrics.gossip_messages.with_label_values(&["received"]),
        stats.messages_received.load(Ordering::Relaxed),
    );
    catch_up(
        &metrics.gossip_bytes.with_label_values(&["sent"]),
        stats.bytes_sent.load(Ordering::Relaxed),
    );
    catch_up(
        &metrics.gossip_bytes.with_label_values(&["received"]),
        stats.bytes_received.load(Ordering::Relaxed),
    );
    catch_up(
        &metrics.gossip_rejected,
        stats.rejected.load(Ordering::Relaxed),
    );
}
