//! The read-only, lock-free picture of the cluster that the node's hot path reads.

use std::collections::BTreeMap;

use hapax_config::RemoteHealthPolicy;
use serde::Serialize;

use crate::gossip::keys::ProviderReport;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    Alive,
    Dead,
    /// Announced a clean departure.
    Left,
}

#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub node_id: String,
    pub generation: u64,
    pub liveness: Liveness,
    pub is_self: bool,
    pub gossip_addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h3: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub heartbeat: u64,
    /// Milliseconds since this node last saw the member's heartbeat advance.
    pub last_heartbeat_ms_ago: u64,
}

/// A snapshot of membership and of every live node's provider reports.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ClusterView {
    pub self_id: String,
    pub cluster_id: String,
    pub members: Vec<Member>,
    /// provider -> node id -> that node's report.
    pub provider_matrix: BTreeMap<String, BTreeMap<String, ProviderReport>>,
    /// Providers other nodes report down, under the configured policy: tried last.
    #[serde(skip)]
    pub demoted: Vec<String>,
}

impl ClusterView {
    pub fn is_demoted(&self, provider: &str) -> bool {
        !self.demoted.is_empty() && self.demoted.iter().any(|p| p == provider)
    }

    pub fn live_count(&self) -> usize {
        self.members
            .iter()
            .filter(|m| m.liveness == Liveness::Alive)
            .count()
    }

    /// Applies `policy` to the matrix: which providers should be tried last here.
    pub fn compute_demoted(&mut self, policy: RemoteHealthPolicy) {
        let live: Vec<&str> = self
            .members
            .iter()
            .filter(|m| m.liveness == Liveness::Alive)
            .map(|m| m.node_id.as_str())
            .collect();
        self.demoted = self
            .provider_matrix
            .iter()
            .filter(|(_, reports)| {
                let down_elsewhere = reports
                    .iter()
                    .filter(|(node, r)| {
                        !r.up && **node != self.self_id && live.contains(&node.as_str())
                    })
                    .count();
                let down_total = reports
                    .iter()
                    .filter(|(node, r)| !r.up && live.contains(&node.as_str()))
                    .count();
                match policy {
                    RemoteHealthPolicy::LocalOnly => false,
                    RemoteHealthPolicy::Any => down_elsewhere > 0,
                    RemoteHealthPolicy::Majority => {
                        down_elsewhere > 0 && down_total * 2 > live.len()
                    }
                }
            })
            .map(|(provider, _)| provider.clone())
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, liveness: Liveness) -> Member {
        Member {
            node_id: id.into(),
            generation: 1,
            liveness,
            is_self: id == "a",
            gossip_addr: String::new(),
            http: None,
            h3: None,
            grpc: None,
            version: None,
            heartbeat: 1,
            last_heartbeat_ms_ago: 0,
        }
    }

    fn report(up: bool) -> ProviderReport {
        ProviderReport {
            up,
            checked: None,
            latency_ms: None,
            error_rate: 0.0,
        }
    }

    #[test]
    fn policies_decide_which_remote_reports_demote_a_provider() {
        let mut view = ClusterView {
            self_id: "a".into(),
            members: vec![
                member("a", Liveness::Alive),
                member("b", Liveness::Alive),
                member("c", Liveness::Alive),
                member("d", Liveness::Dead),
            ],
            ..Default::default()
        };
        view.provider_matrix.insert(
            "p".into(),
            [
                ("a".into(), report(true)),
                ("b".into(), report(false)),
                ("c".into(), report(true)),
            ]
            .into(),
        );
        view.provider_matrix.insert(
            "q".into(),
            [("a".into(), report(true)), ("d".into(), report(false))].into(),
        );
        view.compute_demoted(RemoteHealthPolicy::Any);
        assert_eq!(
            view.demoted,
            vec!["p".to_owned()],
            "a dead node's report does not count"
        );
        view.compute_demoted(RemoteHealthPolicy::Majority);
        assert!(view.demoted.is_empty(), "1 of 3 is no majority");
        view.provider_matrix
            .get_mut("p")
            .map(|r| r.insert("c".into(), report(false)));
        view.compute_demoted(RemoteHealthPolicy::Majority);
        assert_eq!(view.demoted, vec!["p".to_owned()]);
        view.compute_demoted(RemoteHealthPolicy::LocalOnly);
        assert!(view.demoted.is_empty());
    }
}
