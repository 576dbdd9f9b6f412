//! The leader's breaker clock: an open breaker whose time has passed (and that no admin
//! forced open) is proposed half-open, and a half-open breaker whose claimed probes went silent
//! past their lease is renewed (its permits freed). Only the leader reads the clock; the time
//! travels inside the command.

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

/// How long claimed probes may go without a verdict before the leader frees their permits:
/// longer than the default request deadline (120 s), so a slow probe is not doubled. Probes
/// that end without a verdict give their permit back at once (`ReleaseProbe`); this covers
/// the ones that cannot: their node died, or their claim committed after it gave up waiting.
const PROBE_LEASE: Duration = Duration::from_secs(150);

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

/// Half-open breakers with a probe claimed: (provider, generation).
fn claimed(state: &ReplicatedState) -> Vec<(String, u64)> {
    state
        .breakers
        .iter()
        .filter_map(|(provider, breaker)| match breaker.status {
            BreakerStatus::HalfOpen { probes_claimed } if probes_claimed > 0 => {
                Some((provider.clone(), breaker.generation))
            }
            _ => None,
        })
        .collect()
}

/// Claimed probes silent past the lease at `now`, given when each was first seen claimed
/// (`watched`, updated: what is no longer claimed is forgotten, what is due is watched again
/// from `now` so a failed renewal is retried).
fn silent(
    watched: &mut HashMap<(String, u64), Instant>,
    claimed: Vec<(String, u64)>,
    now: Instant,
    lease: Duration,
) -> Vec<(String, u64)> {
    let mut seen: HashMap<(String, u64), Instant> = claimed
        .into_iter()
        .map(|key| {
            let since = watched.get(&key).copied().unwrap_or(now);
            (key, since)
        })
        .collect();
    let due: Vec<(String, u64)> = seen
        .iter_mut()
        .filter(|(_, since)| now.saturating_duration_since(**since) >= lease)
        .map(|(key, since)| {
            *since = now
                .checked_sub(lease.saturating_sub(RETRY_AFTER))
                .unwrap_or(now);
            key.clone()
        })
        .collect();
    *watched = seen;
    due
}

pub async fn run(
    proposer: Proposer,
    state: Arc<ArcSwap<ReplicatedState>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut proposed: HashMap<(String, u64), Instant> = HashMap::new();
    let mut watched_probes: HashMap<(String, u64), Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        if !proposer.raft.is_leader() {
            watched_probes.clear();
            continue;
        }
        let now_ms = unix_ms();
        let claimed = claimed(&state.load());
        for (provider, generation) in
            silent(&mut watched_probes, claimed, Instant::now(), PROBE_LEASE)
        {
            let command = ClusterCommand::RenewProbes {
                provider: provider.clone(),
                expected_generation: generation,
                now_unix_ms: now_ms,
            };
            match proposer.propose(command, RETRY_AFTER).await {
                Ok(CommandOutcome::Applied { generation }) => {
                    tracing::warn!(provider = %provider, generation, lease_s = PROBE_LEASE.as_secs(), "half-open probes silent past their lease: permits freed")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(provider = %provider, error = %e, "could not renew silent half-open probes")
                }
            }
        }
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

    #[test]
    fn claimed_probes_silent_past_their_lease_are_due_once_then_retried() {
        let lease = Duration::from_secs(150);
        let start = Instant::now();
        let mut watched = HashMap::new();
        let p = ("p".to_owned(), 7);
        let at = |s| start + Duration::from_secs(s);
        assert!(silent(&mut watched, vec![p.clone()], at(0), lease).is_empty());
        assert!(silent(&mut watched, vec![p.clone()], at(149), lease).is_empty());
        let due = silent(&mut watched, vec![p.clone()], at(150), lease);
        assert_eq!(due, std::slice::from_ref(&p));
        // Not proposed again at once; retried after RETRY_AFTER if it is still claimed.
        assert!(silent(&mut watched, vec![p.clone()], at(151), lease).is_empty());
        let due = silent(&mut watched, vec![p.clone()], at(152), lease);
        assert_eq!(due, std::slice::from_ref(&p));
        // A verdict (or a release) ends the watch; a new claim starts a new lease.
        assert!(silent(&mut watched, vec![], at(153), lease).is_empty());
        assert!(silent(&mut watched, vec![p.clone()], at(154), lease).is_empty());
        assert!(silent(&mut watched, vec![p.clone()], at(303), lease).is_empty());
        assert_eq!(silent(&mut watched, vec![p.clone()], at(304), lease), [p]);
        let mut state = ReplicatedState::default();
        state.breakers.insert(
            "half".into(),
            BreakerState {
                status: BreakerStatus::HalfOpen { probes_claimed: 1 },
                generation: 3,
                ..Default::default()
            },
        );
        state.breakers.insert(
            "idle".into(),
            BreakerState {
                status: BreakerStatus::HalfOpen { probes_claimed: 0 },
                generation: 3,
                ..Default::default()
            },
        );
        assert_eq!(claimed(&state), [("half".to_owned(), 3)]);
    }
}
