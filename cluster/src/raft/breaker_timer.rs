//! The leader's breaker clock: an open breaker whose time has passed (and that no admin
//! forced open) is proposed half-open. Only the leader reads the wall clock; the time travels
//! inside the command.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::time::Instant;

use super::proposal::Proposer;
use super::state::{BreakerStatus, ClusterCommand, CommandOutcome, ReplicatedState};

const TICK: Duration = Duration::from_millis(200);
/// A half-open proposal for the same breaker generation is not repeated sooner than this.
const RETRY_AFTER: Duration = Duration::from_secs(2);

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Breakers due to go half-open at `now_ms`: (provider, generation).
pub fn due(state: &ReplicatedState, now_ms: u64) -> Vec<(String, u64)> {
    state
        .breakers
        .iter()
        .filter_map(|(provider, breaker)| match breaker.status {
            BreakerStatus::Open {
                until_unix_ms,
                forced: false,
                ..
            } if until_unix_ms <= now_ms => Some((provider.clone(), breaker.generation)),
            _ => None,
        })
        .collect()
}

pub async fn run(
    proposer: Proposer,
    state: Arc<ArcSwap<ReplicatedState>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut proposed: HashMap<(String, u64), Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        if !proposer.raft.is_leader() {
            continue;
        }
        let now_ms = unix_ms();
        proposed.retain(|_, at| at.elapsed() < RETRY_AFTER);
        for (provider, generation) in due(&state.load(), now_ms) {
            if proposed
                .insert((provider.clone(), generation), Instant::now())
                .is_some()
            {
                continue;
            }
            let command = ClusterCommand::HalfOpenBreaker {
                provider: provider.clone(),
                expected_generation: generation,
                now_unix_ms: now_ms,
            };
            match proposer.propose(command, RETRY_AFTER).await {
                Ok(CommandOutcome::Applied { generation }) => {
                    tracing::info!(provider = %provider, generation, "breaker half-open")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(provider = %provider, error = %e, "could not move breaker to half-open")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::state::BreakerState;

    #[test]
    fn only_unforced_breakers_past_their_time_are_due() {
        let open = |until, forced| BreakerState {
            status: BreakerStatus::Open {
                until_unix_ms: until,
                reason: String::new(),
                tripped_by: String::new(),
                forced,
            },
            generation: 4,
            ..Default::default()
        };
        let mut state = ReplicatedState::default();
        state.breakers.insert("late".into(), open(100, false));
        state.breakers.insert("early".into(), open(300, false));
        state.breakers.insert("forced".into(), open(100, true));
        state
            .breakers
            .insert("closed".into(), BreakerState::default());
        assert_eq!(due(&state, 200), vec![("late".to_owned(), 4)]);
    }
}
