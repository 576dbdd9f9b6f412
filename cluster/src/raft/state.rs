//! The replicated facts: circuit-breaker state per provider and the global rate-limit
//! ledger (quota leases per key and window). Applying a command is a pure function of the
//! state and the command — time travels inside commands, it is never read here — so every
//! node that applies the same log reaches the same state.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a provider's breaker stands, cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum BreakerStatus {
    #[default]
    Closed,
    /// No traffic until `until_unix_ms`; `forced` breakers stay open until an admin closes them.
    Open {
        until_unix_ms: u64,
        reason: String,
        tripped_by: String,
        forced: bool,
    },
    /// A few probes (claimed through the log) decide between `Closed` and `Open` again.
    HalfOpen {
        probes_claimed: u32,
        /// Claims granted at this generation, ever: the leader sees a new claim by it (a
        /// probe that is alive) even when a release came between two of its looks.
        #[serde(default)]
        claims: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BreakerState {
    pub status: BreakerStatus,
    /// Bumped by every transition; commands name the generation they saw, stale ones are ignored.
    pub generation: u64,
    pub changed_at_unix_ms: u64,
    pub changed_by: String,
}

/// One limit key's budget in one window, and how much of it each node holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct QuotaWindow {
    pub limit: u64,
    /// node id -> budget leased to it.
    pub leased: BTreeMap<String, u64>,
}

impl QuotaWindow {
    pub fn total_leased(&self) -> u64 {
        self.leased
            .values()
            .fold(0u64, |sum, v| sum.saturating_add(*v))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReplicatedState {
    pub breakers: BTreeMap<String, BreakerState>,
    /// (limit key, window number) -> leases.
    #[serde(with = "quota_list")]
    pub quotas: BTreeMap<(String, u64), QuotaWindow>,
    pub last_applied_index: u64,
}

/// A change to the replicated state, proposed through the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "command")]
pub enum ClusterCommand {
    /// Closed or HalfOpen -> Open, if `expected_generation` is current.
    TripBreaker {
        provider: String,
        expected_generation: u64,
        reason: String,
        node: String,
        now_unix_ms: u64,
        open_for_ms: u64,
    },
    /// Open (not forced) -> HalfOpen, once its time has passed; proposed by the leader.
    HalfOpenBreaker {
        provider: String,
        expected_generation: u64,
        now_unix_ms: u64,
    },
    /// HalfOpen: one probe permit while fewer than `max_probes` are claimed.
    ClaimProbe {
        provider: String,
        expected_generation: u64,
        node: String,
        max_probes: u32,
    },
    /// HalfOpen: a claimed probe ended without a verdict (the request's own error, its
    /// deadline, its client gone): its permit goes back.
    ReleaseProbe {
        provider: String,
        expected_generation: u64,
        node: String,
    },
    /// HalfOpen -> HalfOpen with no probe claimed: the claimed probes went silent past their
    /// lease (the node holding one died, or its claim committed after it gave up waiting).
    /// Proposed by the leader.
    RenewProbes {
        provider: String,
        expected_generation: u64,
        now_unix_ms: u64,
    },
    /// HalfOpen -> Closed after a good probe.
    CloseBreaker {
        provider: String,
        expected_generation: u64,
        node: String,
        now_unix_ms: u64,
    },
    /// Admin override: always applies (open = forced Open, else Closed).
    ForceBreaker {
        provider: String,
        open: bool,
        node: String,
        now_unix_ms: u64,
    },
    /// Lease up to `want` of `limit` for `key` in `window` to `node`.
    Lease {
        key: String,
        window: u64,
        limit: u64,
        node: String,
        want: u64,
    },
    /// Hand unused budget back.
    Release {
        key: String,
        window: u64,
        node: String,
        amount: u64,
    },
}

/// What applying a command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandOutcome {
    Applied { generation: u64 },
    Stale { current_generation: u64 },
    ProbeGranted(bool),
    Leased { granted: u64 },
    Released,
}

impl fmt::Display for ClusterCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TripBreaker {
                provider,
                expected_generation,
                node,
                ..
            } => write!(f, "trip({provider}@{expected_generation} by {node})"),
            Self::HalfOpenBreaker {
                provider,
                expected_generation,
                ..
            } => write!(f, "half_open({provider}@{expected_generation})"),
            Self::ClaimProbe {
                provider,
                expected_generation,
                node,
                ..
            } => write!(f, "claim_probe({provider}@{expected_generation} by {node})"),
            Self::ReleaseProbe {
                provider,
                expected_generation,
                node,
            } => write!(
                f,
                "release_probe({provider}@{expected_generation} by {node})"
            ),
            Self::RenewProbes {
                provider,
                expected_generation,
                ..
            } => write!(f, "renew_probes({provider}@{expected_generation})"),
            Self::CloseBreaker {
                provider,
                expected_generation,
                node,
                ..
            } => write!(f, "close({provider}@{expected_generation} by {node})"),
            Self::ForceBreaker {
                provider,
                open,
                node,
                ..
            } => write!(f, "force({provider} open={open} by {node})"),
            Self::Lease {
                key,
                window,
                node,
                want,
                ..
            } => write!(f, "lease({key}#{window} {want} to {node})"),
            Self::Release {
                key,
                window,
                node,
                amount,
            } => write!(f, "release({key}#{window} {amount} from {node})"),
        }
    }
}

impl CommandOutcome {
    /// The label of `hapax_raft_proposals_total{outcome}`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Applied { .. } => "applied",
            Self::Stale { .. } => "stale",
            Self::ProbeGranted(true) => "probe_granted",
            Self::ProbeGranted(false) => "probe_denied",
            Self::Leased { .. } => "leased",
            Self::Released => "released",
        }
    }
}

// === impl ReplicatedState ===

impl ReplicatedState {
    /// The breaker of `provider`; a provider never tripped is Closed at generation 0.
    pub fn breaker(&self, provider: &str) -> BreakerState {
        self.breakers.get(provider).cloned().unwrap_or_default()
    }

    /// Budget leased for `key` in `window`, per node.
    pub fn quota(&self, key: &str, window: u64) -> Option<&QuotaWindow> {
        self.quotas.get(&(key.to_owned(), window))
    }

    pub fn apply(&mut self, command: &ClusterCommand) -> CommandOutcome {
        match command {
            ClusterCommand::TripBreaker {
                provider,
                expected_generation,
                reason,
                node,
                now_unix_ms,
                open_for_ms,
            } => self.transition(
                provider,
                *expected_generation,
                *now_unix_ms,
                node,
                |status| match status {
                    BreakerStatus::Open { .. } => None,
                    _ => Some(BreakerStatus::Open {
                        until_unix_ms: now_unix_ms.saturating_add(*open_for_ms),
                        reason: reason.clone(),
                        tripped_by: node.clone(),
                        forced: false,
                    }),
                },
            ),
            ClusterCommand::HalfOpenBreaker {
                provider,
                expected_generation,
                now_unix_ms,
            } => self.transition(
                provider,
                *expected_generation,
                *now_unix_ms,
                "leader",
                |status| match status {
                    BreakerStatus::Open {
                        until_unix_ms,
                        forced: false,
                        ..
                    } if *until_unix_ms <= *now_unix_ms => Some(BreakerStatus::HalfOpen {
                        probes_claimed: 0,
                        claims: 0,
                    }),
                    _ => None,
                },
            ),
            ClusterCommand::CloseBreaker {
                provider,
                expected_generation,
                node,
                now_unix_ms,
            } => self.transition(
                provider,
                *expected_generation,
                *now_unix_ms,
                node,
                |status| match status {
                    BreakerStatus::HalfOpen { .. } => Some(BreakerStatus::Closed),
                    _ => None,
                },
            ),
            ClusterCommand::RenewProbes {
                provider,
                expected_generation,
                now_unix_ms,
            } => self.transition(
                provider,
                *expected_generation,
                *now_unix_ms,
                "leader",
                |status| match status {
                    BreakerStatus::HalfOpen { .. } => Some(BreakerStatus::HalfOpen {
                        probes_claimed: 0,
                        claims: 0,
                    }),
                    _ => None,
                },
            ),
            ClusterCommand::ReleaseProbe {
                provider,
                expected_generation,
                ..
            } => match self.breakers.get_mut(provider) {
                Some(breaker) if breaker.generation == *expected_generation => {
                    if let BreakerStatus::HalfOpen { probes_claimed, .. } = &mut breaker.status {
                        *probes_claimed = probes_claimed.saturating_sub(1);
                    }
                    CommandOutcome::Released
                }
                breaker => CommandOutcome::Stale {
                    current_generation: breaker.map_or(0, |b| b.generation),
                },
            },
            ClusterCommand::ClaimProbe {
                provider,
                expected_generation,
                max_probes,
                ..
            } => {
                let Some(breaker) = self.breakers.get_mut(provider) else {
                    return if *expected_generation == 0 {
                        CommandOutcome::ProbeGranted(false)
                    } else {
                        CommandOutcome::Stale {
                            current_generation: 0,
                        }
                    };
                };
                if breaker.generation != *expected_generation {
                    return CommandOutcome::Stale {
                        current_generation: breaker.generation,
                    };
                }
                match &mut breaker.status {
                    BreakerStatus::HalfOpen {
                        probes_claimed,
                        claims,
                    } if *probes_claimed < *max_probes => {
                        *probes_claimed += 1;
                        *claims += 1;
                        CommandOutcome::ProbeGranted(true)
                    }
                    _ => CommandOutcome::ProbeGranted(false),
                }
            }
            ClusterCommand::ForceBreaker {
                provider,
                open,
                node,
                now_unix_ms,
            } => {
                let breaker = self.breakers.entry(provider.clone()).or_default();
                breaker.status = if *open {
                    BreakerStatus::Open {
                        until_unix_ms: u64::MAX,
                        reason: "forced open by admin".into(),
                        tripped_by: node.clone(),
                        forced: true,
                    }
                } else {
                    BreakerStatus::Closed
                };
                breaker.generation += 1;
                breaker.changed_at_unix_ms = *now_unix_ms;
                breaker.changed_by = node.clone();
                CommandOutcome::Applied {
                    generation: breaker.generation,
                }
            }
            ClusterCommand::Lease {
                key,
                window,
                limit,
                node,
                want,
            } => self.lease(key, *window, *limit, node, *want),
            ClusterCommand::Release {
                key,
                window,
                node,
                amount,
            } => {
                if let Some(quota) = self.quotas.get_mut(&(key.clone(), *window))
                    && let Some(held) = quota.leased.get_mut(node)
                {
                    *held = held.saturating_sub(*amount);
                    if *held == 0 {
                        quota.leased.remove(node);
                    }
                }
                CommandOutcome::Released
            }
        }
    }

    /// Applies `next(status)` when the generation matches and `next` allows the move.
    fn transition(
        &mut self,
        provider: &str,
        expected_generation: u64,
        now_unix_ms: u64,
        node: &str,
        next: impl FnOnce(&BreakerStatus) -> Option<BreakerStatus>,
    ) -> CommandOutcome {
        let current = self
            .breakers
            .get(provider)
            .map(|b| b.generation)
            .unwrap_or(0);
        if current != expected_generation {
            return CommandOutcome::Stale {
                current_generation: current,
            };
        }
        let breaker = self.breakers.get(provider).cloned().unwrap_or_default();
        let Some(status) = next(&breaker.status) else {
            return CommandOutcome::Stale {
                current_generation: current,
            };
        };
        let generation = current + 1;
        self.breakers.insert(
            provider.to_owned(),
            BreakerState {
                status,
                generation,
                changed_at_unix_ms: now_unix_ms,
                changed_by: node.to_owned(),
            },
        );
        CommandOutcome::Applied { generation }
    }

    /// `granted = min(want, limit - leased)`; windows older than the newest seen minus one
    /// are refused and pruned, so a slow node cannot spend an expired window.
    fn lease(
        &mut self,
        key: &str,
        window: u64,
        limit: u64,
        node: &str,
        want: u64,
    ) -> CommandOutcome {
        let newest = self
            .quotas
            .range((key.to_owned(), 0)..=(key.to_owned(), u64::MAX))
            .map(|((_, w), _)| *w)
            .max()
            .unwrap_or(0)
            .max(window);
        let oldest_kept = newest.saturating_sub(1);
        let stale: Vec<(String, u64)> = self
            .quotas
            .range((key.to_owned(), 0)..(key.to_owned(), oldest_kept))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.quotas.remove(&k);
        }
        if window < oldest_kept {
            return CommandOutcome::Leased { granted: 0 };
        }
        let quota = self.quotas.entry((key.to_owned(), window)).or_default();
        quota.limit = limit;
        let granted = want.min(limit.saturating_sub(quota.total_leased()));
        if granted > 0 {
            let held = quota.leased.entry(node.to_owned()).or_default();
            *held = held.saturating_add(granted);
        }
        CommandOutcome::Leased { granted }
    }
}

/// JSON maps need string keys: quotas travel as a list of `{key, window, limit, leased}`.
mod quota_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::QuotaWindow;

    #[derive(Serialize, Deserialize)]
    struct Row {
        key: String,
        window: u64,
        #[serde(flatten)]
        quota: QuotaWindow,
    }

    pub fn serialize<S: Serializer>(
        quotas: &BTreeMap<(String, u64), QuotaWindow>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let rows: Vec<Row> = quotas
            .iter()
            .map(|((key, window), quota)| Row {
                key: key.clone(),
                window: *window,
                quota: quota.clone(),
            })
            .collect();
        rows.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<(String, u64), QuotaWindow>, D::Error> {
        let rows = Vec::<Row>::deserialize(deserializer)?;
        Ok(rows
            .into_iter()
            .map(|row| ((row.key, row.window), row.quota))
            .collect())
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
