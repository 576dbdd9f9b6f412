//! The key-values each node publishes through gossip.

use serde::{Deserialize, Serialize};

pub const HTTP: &str = "http";
pub const H3: &str = "h3";
pub const GRPC: &str = "grpc";
pub const VERSION: &str = "version";
pub const GENERATION: &str = "generation";
pub const LEAVING: &str = "leaving";
pub const PROVIDER_PREFIX: &str = "provider:";

/// One node's view of one provider, as gossiped.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProviderReport {
    /// Usable from this node: health check passing and breaker not open.
    pub up: bool,
    /// Unix seconds of the last active check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Recent failure rate of live traffic, 0..1.
    #[serde(default)]
    pub error_rate: f64,
}

impl ProviderReport {
    /// Whether publishing `self` over `previous` is worth a gossip update right now.
    pub fn differs_materially(&self, previous: &Self) -> bool {
        let latency_moved = match (self.latency_ms, previous.latency_ms) {
            (Some(a), Some(b)) => (a - b).abs() > (b * 0.25).max(1.0),
            (a, b) => a.is_some() != b.is_some(),
        };
        self.checked != previous.checked
            || latency_moved
            || (self.error_rate - previous.error_rate).abs() >= 0.05
    }
}
