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

/// A claimed probe permit is freed when no new claim came for this long while some stayed
/// claimed: the request deadline plus this margin (a probe's verdict comes within its
/// request's deadline). Probes that end without a verdict give their permit back at once
/// (`ReleaseProbe`); the lease covers the ones that cannot: their node died, or their claim
/// committed after the node stopped waiting for it.
pub const PROBE_LEASE_MARGIN: Duration = Duration::from_secs(30);

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

/// Which half-open claim state a breaker is in: provider, generation, claims ever granted.
type ClaimState = (String, u64, u64);

/// Half-open breakers with a probe claimed, by their claim state.
fn claimed(state: &ReplicatedState) -> Vec<ClaimState> {
    state
        .breakers
        .iter()
        .filter_map(|(provider, breaker)| match breaker.status {
            BreakerStatus::HalfOpen {
                probes_claimed,
                claims,
            } if probes_claimed > 0 => Some((provider.clone(), breaker.generation, claims)),
            _ => None,
        })
        .collect()
}

/// Claim states unchanged for `lease` at `now`: no new claim came while some stayed claimed.
/// `watched` holds when each state was first seen, and is updated: states no longer current
/// are forgotten, and a due one is watched again from `now` so a failed renewal is retried.
fn silent(
    watched: &mut HashMap<ClaimState, Instant>,
    claimed: Vec<ClaimState>,
    now: Instant,
    lease: Duration,
) -> Vec<(String, u64)> {
    let mut seen: HashMap<ClaimState, Instant> = claimed
        .into_iter()
        .map(|key| {
            let since = watched.get(&key).copied().unwrap_or(now);
            (key, since)
        })
        .collect();
    let due: Vec<(String, u64)> = seen
        .iter_mut()
        .filter(|(_, since)| now.saturating_duration_since(**since) >= lease)
        .map(|((provider, generation, _), since)| {
            *since = now
                .checked_sub(lease.saturating_sub(RETRY_AFTER))
                .unwrap_or(now);
            (provider.clone(), *generation)
        })
        .collect();
    *watched = seen;
    due
}

/// Runs while this node lives; acts only while it leads. `probe_lease`: see
/// [`PROBE_LEASE_MARGIN`].
pub async fn run(
    proposer: Proposer,
    state: Arc<ArcSwap<ReplicatedState>>,
    mut stop: watch::Receiver<bool>,
    probe_lease: Duration,
) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut proposed: HashMap<(String, u64), Instant> = HashMap::new();
    let mut watched_probes: HashMap<ClaimState, Instant> = HashMap::new();
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
            silent(&mut watched_probes, claimed, Instant::now(), probe_lease)
        {
            let command = ClusterCommand::RenewProbes {
                provider: provider.clone(),
                expected_generation: generation,
                now_unix_ms: now_ms,
            };
            match proposer.propose(command, RETRY_AFTER).await {
                Ok(CommandOutcome::Applied { generation }) => {
                    tracing::warn!(provider = %provider, generation, lease_s = probe_lease.as_secs(), "half-open probes silent past their lease: permits freed")
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
        let claims = |n| vec![("p".to_owned(), 7, n)];
        let due = vec![("p".to_owned(), 7)];
        let at = |s| start + Duration::from_secs(s);
        assert!(silent(&mut watched, claims(1), at(0), lease).is_empty());
        assert!(silent(&mut watched, claims(1), at(149), lease).is_empty());
        assert_eq!(silent(&mut watched, claims(1), at(150), lease), due);
        // Not proposed again at once; retried after RETRY_AFTER if nothing changed.
        assert!(silent(&mut watched, claims(1), at(151), lease).is_empty());
        assert_eq!(silent(&mut watched, claims(1), at(152), lease), due);
        // A new claim (a live probe, though releases came between two looks) restarts the
        // lease; so does a verdict or a release seen as nothing claimed.
        assert!(silent(&mut watched, claims(2), at(153), lease).is_empty());
        assert!(silent(&mut watched, claims(2), at(302), lease).is_empty());
        assert!(silent(&mut watched, vec![], at(303), lease).is_empty());
        assert!(silent(&mut watched, claims(2), at(304), lease).is_empty());
        assert_eq!(silent(&mut watched, claims(2), at(454), lease), due);
        let mut state = ReplicatedState::default();
        let half_open = |probes_claimed, claims| BreakerState {
            status: BreakerStatus::HalfOpen {
                probes_claimed,
                claims,
            },
            generation: 3,
            ..Default::default()
        };
        state.breakers.insert("half".into(), half_open(1, 4));
        state.breakers.insert("idle".into(), half_open(0, 4));
        assert_eq!(claimed(&state), [("half".to_owned(), 3, 4)]);
    }
}
