use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn trip(provider: &str, generation: u64, now: u64) -> ClusterCommand {
    ClusterCommand::TripBreaker {
        provider: provider.into(),
        expected_generation: generation,
        reason: "5 failures".into(),
        node: "n1".into(),
        now_unix_ms: now,
        open_for_ms: 10_000,
    }
}

fn lease(key: &str, window: u64, limit: u64, node: &str, want: u64) -> ClusterCommand {
    ClusterCommand::Lease {
        key: key.into(),
        window,
        limit,
        node: node.into(),
        want,
    }
}

#[test]
fn breaker_goes_open_half_open_closed_and_bumps_the_generation_each_time() {
    let mut state = ReplicatedState::default();
    assert_eq!(
        state.apply(&trip("openai", 0, 1_000)),
        CommandOutcome::Applied { generation: 1 }
    );
    let open = state.breaker("openai");
    assert_eq!(
        open.status,
        BreakerStatus::Open {
            until_unix_ms: 11_000,
            reason: "5 failures".into(),
            tripped_by: "n1".into(),
            forced: false
        }
    );
    assert_eq!(
        (open.changed_at_unix_ms, open.changed_by.as_str()),
        (1_000, "n1")
    );

    let early = ClusterCommand::HalfOpenBreaker {
        provider: "openai".into(),
        expected_generation: 1,
        now_unix_ms: 5_000,
    };
    assert_eq!(
        state.apply(&early),
        CommandOutcome::Stale {
            current_generation: 1
        },
        "not before its time"
    );
    let half = ClusterCommand::HalfOpenBreaker {
        provider: "openai".into(),
        expected_generation: 1,
        now_unix_ms: 11_000,
    };
    assert_eq!(
        state.apply(&half),
        CommandOutcome::Applied { generation: 2 }
    );
    assert_eq!(
        state.breaker("openai").status,
        BreakerStatus::HalfOpen {
            probes_claimed: 0,
            claims: 0
        }
    );

    let close = ClusterCommand::CloseBreaker {
        provider: "openai".into(),
        expected_generation: 2,
        node: "n2".into(),
        now_unix_ms: 12_000,
    };
    assert_eq!(
        state.apply(&close),
        CommandOutcome::Applied { generation: 3 }
    );
    assert_eq!(state.breaker("openai").status, BreakerStatus::Closed);
    assert_eq!(state.breaker("openai").changed_by, "n2");
}

#[test]
fn stale_generations_are_ignored() {
    let mut state = ReplicatedState::default();
    assert_eq!(
        state.apply(&trip("p", 0, 0)),
        CommandOutcome::Applied { generation: 1 }
    );
    // A second node saw the same failures and also proposes from generation 0.
    assert_eq!(
        state.apply(&trip("p", 0, 50)),
        CommandOutcome::Stale {
            current_generation: 1
        }
    );
    // Already open: a trip naming the current generation changes nothing either.
    assert_eq!(
        state.apply(&trip("p", 1, 60)),
        CommandOutcome::Stale {
            current_generation: 1
        }
    );
    assert_eq!(state.breaker("p").changed_at_unix_ms, 0);
    let close = ClusterCommand::CloseBreaker {
        provider: "p".into(),
        expected_generation: 1,
        node: "n".into(),
        now_unix_ms: 1,
    };
    assert_eq!(
        state.apply(&close),
        CommandOutcome::Stale {
            current_generation: 1
        },
        "only a half-open breaker closes"
    );
    let unknown = ClusterCommand::HalfOpenBreaker {
        provider: "q".into(),
        expected_generation: 0,
        now_unix_ms: 1,
    };
    assert_eq!(
        state.apply(&unknown),
        CommandOutcome::Stale {
            current_generation: 0
        }
    );
    assert!(!state.breakers.contains_key("q"));
}

#[test]
fn probes_are_bounded_cluster_wide_and_a_failed_probe_trips_again() {
    let mut state = ReplicatedState::default();
    state.apply(&trip("p", 0, 0));
    state.apply(&ClusterCommand::HalfOpenBreaker {
        provider: "p".into(),
        expected_generation: 1,
        now_unix_ms: 20_000,
    });
    let claim = |node: &str| ClusterCommand::ClaimProbe {
        provider: "p".into(),
        expected_generation: 2,
        node: node.into(),
        max_probes: 2,
    };
    assert_eq!(state.apply(&claim("a")), CommandOutcome::ProbeGranted(true));
    assert_eq!(state.apply(&claim("b")), CommandOutcome::ProbeGranted(true));
    assert_eq!(
        state.apply(&claim("c")),
        CommandOutcome::ProbeGranted(false)
    );
    assert_eq!(
        state.breaker("p").generation,
        2,
        "claims are not transitions"
    );
    assert_eq!(
        state.apply(&trip("p", 2, 21_000)),
        CommandOutcome::Applied { generation: 3 }
    );
    assert!(matches!(
        state.breaker("p").status,
        BreakerStatus::Open {
            until_unix_ms: 31_000,
            ..
        }
    ));
    assert_eq!(
        state.apply(&claim("d")),
        CommandOutcome::Stale {
            current_generation: 3
        }
    );
    let closed = ClusterCommand::ClaimProbe {
        provider: "never".into(),
        expected_generation: 0,
        node: "a".into(),
        max_probes: 1,
    };
    assert_eq!(state.apply(&closed), CommandOutcome::ProbeGranted(false));
}

#[test]
fn forced_breakers_ignore_generations_and_never_half_open() {
    let mut state = ReplicatedState::default();
    let force = |open| ClusterCommand::ForceBreaker {
        provider: "p".into(),
        open,
        node: "admin".into(),
        now_unix_ms: 5,
    };
    assert_eq!(
        state.apply(&force(true)),
        CommandOutcome::Applied { generation: 1 }
    );
    assert!(matches!(
        state.breaker("p").status,
        BreakerStatus::Open { forced: true, .. }
    ));
    let half = ClusterCommand::HalfOpenBreaker {
        provider: "p".into(),
        expected_generation: 1,
        now_unix_ms: u64::MAX,
    };
    assert_eq!(
        state.apply(&half),
        CommandOutcome::Stale {
            current_generation: 1
        }
    );
    assert_eq!(
        state.apply(&force(true)),
        CommandOutcome::Applied { generation: 2 }
    );
    assert_eq!(
        state.apply(&force(false)),
        CommandOutcome::Applied { generation: 3 }
    );
    assert_eq!(state.breaker("p").status, BreakerStatus::Closed);
}

#[test]
fn leases_grant_what_is_left_and_releases_give_it_back() {
    let mut state = ReplicatedState::default();
    assert_eq!(
        state.apply(&lease("k", 7, 100, "a", 60)),
        CommandOutcome::Leased { granted: 60 }
    );
    assert_eq!(
        state.apply(&lease("k", 7, 100, "b", 60)),
        CommandOutcome::Leased { granted: 40 }
    );
    assert_eq!(
        state.apply(&lease("k", 7, 100, "c", 1)),
        CommandOutcome::Leased { granted: 0 }
    );
    let release = ClusterCommand::Release {
        key: "k".into(),
        window: 7,
        node: "a".into(),
        amount: 25,
    };
    assert_eq!(state.apply(&release), CommandOutcome::Released);
    assert_eq!(
        state.apply(&lease("k", 7, 100, "c", 30)),
        CommandOutcome::Leased { granted: 25 }
    );
    let quota = state.quota("k", 7).cloned().unwrap_or_default();
    assert_eq!(
        quota.leased,
        [
            ("a".to_owned(), 35),
            ("b".to_owned(), 40),
            ("c".to_owned(), 25)
        ]
        .into()
    );
    let all = ClusterCommand::Release {
        key: "k".into(),
        window: 7,
        node: "b".into(),
        amount: 1_000,
    };
    state.apply(&all);
    assert!(
        !state
            .quota("k", 7)
            .is_some_and(|q| q.leased.contains_key("b")),
        "a node holding nothing is dropped"
    );
    let unknown = ClusterCommand::Release {
        key: "nope".into(),
        window: 1,
        node: "a".into(),
        amount: 1,
    };
    assert_eq!(state.apply(&unknown), CommandOutcome::Released);
    assert!(state.quota("nope", 1).is_none());
}

#[test]
fn old_windows_are_refused_and_pruned_per_key() {
    let mut state = ReplicatedState::default();
    state.apply(&lease("k", 10, 5, "a", 5));
    state.apply(&lease("other", 3, 5, "a", 5));
    state.apply(&lease("k", 11, 5, "a", 1));
    assert!(
        state.quota("k", 10).is_some(),
        "the previous window is kept for stragglers"
    );
    assert_eq!(
        state.apply(&lease("k", 12, 5, "a", 1)),
        CommandOutcome::Leased { granted: 1 }
    );
    assert!(state.quota("k", 10).is_none(), "two windows back is pruned");
    assert_eq!(
        state.apply(&lease("k", 10, 5, "b", 1)),
        CommandOutcome::Leased { granted: 0 }
    );
    assert!(
        state.quota("k", 10).is_none(),
        "a refused window is not recreated"
    );
    assert!(
        state.quota("other", 3).is_some(),
        "other keys keep their windows"
    );
}

#[test]
fn leases_from_many_nodes_never_exceed_the_limit() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut state = ReplicatedState::default();
    let nodes = ["a", "b", "c", "d"];
    for round in 0..5_000u64 {
        let window = round / 500;
        let limit = 1_000;
        let node = nodes[rng.random_range(0..nodes.len())];
        let command = if rng.random_bool(0.2) {
            ClusterCommand::Release {
                key: "k".into(),
                window,
                node: node.into(),
                amount: rng.random_range(0..200),
            }
        } else {
            lease("k", window, limit, node, rng.random_range(0..400))
        };
        state.apply(&command);
        for ((_, w), quota) in &state.quotas {
            assert!(
                quota.total_leased() <= quota.limit,
                "window {w} over-leased: {quota:?}"
            );
            assert!(
                *w + 1 >= window,
                "window {w} should have been pruned at {window}"
            );
        }
    }
}

#[test]
fn state_round_trips_through_json() {
    let mut state = ReplicatedState::default();
    state.apply(&trip("p", 0, 1));
    state.apply(&lease("k", 1, 10, "a", 3));
    state.last_applied_index = 42;
    let json = serde_json::to_string(&state).unwrap_or_default();
    let back: ReplicatedState = serde_json::from_str(&json).unwrap_or_default();
    assert_eq!(back, state);
    let command = lease("k", 1, 10, "a", 3);
    let back: Option<ClusterCommand> = serde_json::to_vec(&command)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    assert_eq!(back, Some(command));
}

#[test]
fn a_probe_without_a_verdict_gives_its_permit_back_and_silent_probes_are_renewed() {
    let mut state = ReplicatedState::default();
    state.apply(&trip("p", 0, 0));
    state.apply(&ClusterCommand::HalfOpenBreaker {
        provider: "p".into(),
        expected_generation: 1,
        now_unix_ms: 20_000,
    });
    let claim = |generation| ClusterCommand::ClaimProbe {
        provider: "p".into(),
        expected_generation: generation,
        node: "a".into(),
        max_probes: 1,
    };
    let release = |generation| ClusterCommand::ReleaseProbe {
        provider: "p".into(),
        expected_generation: generation,
        node: "a".into(),
    };
    assert_eq!(state.apply(&claim(2)), CommandOutcome::ProbeGranted(true));
    assert_eq!(state.apply(&claim(2)), CommandOutcome::ProbeGranted(false));
    // The probe's request failed on its own (a 400): the permit comes back, no transition.
    assert_eq!(state.apply(&release(2)), CommandOutcome::Released);
    assert_eq!(state.breaker("p").generation, 2);
    assert_eq!(state.apply(&claim(2)), CommandOutcome::ProbeGranted(true));
    // That probe goes silent: the leader renews the half-open state, a new probe may go.
    let renew = ClusterCommand::RenewProbes {
        provider: "p".into(),
        expected_generation: 2,
        now_unix_ms: 90_000,
    };
    assert_eq!(
        state.apply(&renew),
        CommandOutcome::Applied { generation: 3 }
    );
    assert_eq!(
        state.breaker("p").status,
        BreakerStatus::HalfOpen {
            probes_claimed: 0,
            claims: 0
        }
    );
    assert_eq!(state.apply(&claim(3)), CommandOutcome::ProbeGranted(true));
    // The silent probe's late release names the old generation: it changes nothing.
    assert_eq!(
        state.apply(&release(2)),
        CommandOutcome::Stale {
            current_generation: 3
        }
    );
    assert_eq!(
        state.breaker("p").status,
        BreakerStatus::HalfOpen {
            probes_claimed: 1,
            claims: 1
        }
    );
    // Only a half-open breaker is renewed.
    state.apply(&trip("p", 3, 91_000));
    let renew_open = ClusterCommand::RenewProbes {
        provider: "p".into(),
        expected_generation: 4,
        now_unix_ms: 92_000,
    };
    assert!(matches!(
        state.apply(&renew_open),
        CommandOutcome::Stale { .. }
    ));
}
