//! Three `Consensus` instances in one process on loopback, each with a hand-made gossip view
//! listing all three alive: bootstrap, forwarding, leader loss, restart from disk, leases.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hapax_cluster::{ClusterCommand, CommandOutcome};
use hapax_config::Secret;

use self::support::{NAMES, PATIENCE, PROPOSE, Sandbox, eventually, is_open, trip};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker_trip_proposed_on_a_follower_opens_it_on_every_node() {
    let sandbox = Sandbox::start().await;
    let leader = sandbox.leader().await;
    let status = sandbox.consensus(leader).status();
    assert_eq!(
        status.voters.len(),
        3,
        "all three bootstrap as voters: {status:?}"
    );
    let follower = (leader + 1) % 3;

    let started = Instant::now();
    let outcome = sandbox
        .consensus(follower)
        .propose(trip("openai", 0, NAMES[follower]), PROPOSE)
        .await
        .unwrap();
    assert_eq!(outcome, CommandOutcome::Applied { generation: 1 });
    assert!(
        is_open(sandbox.consensus(follower), "openai"),
        "the proposer sees its own outcome at once"
    );
    eventually(
        Duration::from_secs(1).saturating_sub(started.elapsed()),
        "open on all three within 1s",
        || sandbox.running().all(|(_, c)| is_open(c, "openai")),
    )
    .await;

    let again = sandbox
        .consensus(leader)
        .propose(trip("openai", 0, NAMES[leader]), PROPOSE)
        .await
        .unwrap();
    assert_eq!(
        again,
        CommandOutcome::Stale {
            current_generation: 1
        }
    );
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_leader_elects_another_and_keeps_the_state() {
    let mut sandbox = Sandbox::start_with(Some(Secret("a-cluster-secret-of-16+".into()))).await;
    let leader = sandbox.leader().await;
    sandbox
        .consensus(leader)
        .propose(trip("anthropic", 0, NAMES[leader]), PROPOSE)
        .await
        .unwrap();
    sandbox.stop(leader).await;

    let new_leader = sandbox.leader().await;
    assert_ne!(new_leader, leader);
    let survivor = sandbox
        .running()
        .map(|(i, _)| i)
        .find(|i| *i != new_leader)
        .unwrap();
    // A follower may learn the commit only from the new leader.
    eventually(PATIENCE, "the trip survives the leader", || {
        sandbox.running().all(|(_, c)| is_open(c, "anthropic"))
    })
    .await;
    let lease = ClusterCommand::Lease {
        key: "global".into(),
        window: 1,
        limit: 10,
        node: NAMES[survivor].into(),
        want: 4,
    };
    assert_eq!(
        sandbox
            .consensus(survivor)
            .propose(lease, PROPOSE)
            .await
            .unwrap(),
        CommandOutcome::Leased { granted: 4 }
    );
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_node_recovers_its_state_from_its_data_dir() {
    let mut sandbox = Sandbox::start().await;
    let leader = sandbox.leader().await;
    let c = sandbox.consensus(leader);
    c.propose(trip("openai", 0, NAMES[leader]), PROPOSE)
        .await
        .unwrap();
    for _ in 0..5 {
        let lease = ClusterCommand::Lease {
            key: "k".into(),
            window: 9,
            limit: 100,
            node: NAMES[leader].into(),
            want: 7,
        };
        c.propose(lease, PROPOSE).await.unwrap();
    }
    let before = (*c.state().load_full()).clone();
    eventually(PATIENCE, "every node applied everything", || {
        sandbox
            .running()
            .all(|(_, c)| *c.state().load_full() == before)
    })
    .await;
    for i in 0..3 {
        sandbox.stop(i).await;
    }

    // Alone, without a quorum to learn from, the node rebuilds its state from disk.
    let lone = (leader + 1) % 3;
    sandbox.restart(lone).await;
    eventually(PATIENCE, "state rebuilt from snapshot + log", || {
        *sandbox.consensus(lone).state().load_full() == before
    })
    .await;
    assert_eq!(
        sandbox
            .consensus(lone)
            .state()
            .load()
            .quota("k", 9)
            .map(|q| q.total_leased()),
        Some(35)
    );

    // The others come back on new ports too; the group re-forms and accepts writes.
    for i in (0..3).filter(|i| *i != lone) {
        sandbox.restart(i).await;
    }
    sandbox.leader().await;
    let close = ClusterCommand::ForceBreaker {
        provider: "openai".into(),
        open: false,
        node: NAMES[lone].into(),
        now_unix_ms: 2_000,
    };
    assert_eq!(
        sandbox
            .consensus(lone)
            .propose(close, PROPOSE)
            .await
            .unwrap(),
        CommandOutcome::Applied { generation: 2 }
    );
    assert_eq!(sandbox.consensus(lone).status().voters.len(), 3);
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_from_three_nodes_never_exceed_the_limit() {
    let sandbox = Arc::new(Sandbox::start().await);
    sandbox.leader().await;
    let limit = 120;
    let mut workers = Vec::new();
    for (i, name) in NAMES.into_iter().enumerate() {
        let sandbox = Arc::clone(&sandbox);
        workers.push(tokio::spawn(async move {
            let mut granted_total = 0;
            let mut want = 3 + i as u64;
            loop {
                let lease = ClusterCommand::Lease {
                    key: "tenant-1".into(),
                    window: 42,
                    limit,
                    node: name.into(),
                    want,
                };
                match sandbox.consensus(i).propose(lease, PROPOSE).await.unwrap() {
                    CommandOutcome::Leased { granted: 0 } => break granted_total,
                    CommandOutcome::Leased { granted } => granted_total += granted,
                    other => panic!("unexpected {other:?}"),
                }
                want = want % 11 + 1;
            }
        }));
    }
    let mut granted = 0;
    for worker in workers {
        granted += worker.await.unwrap();
    }
    assert_eq!(granted, limit, "everything was leased, nothing more");
    for (_, c) in sandbox.running() {
        let state = c.state().load_full();
        let quota = state.quota("tenant-1", 42);
        assert!(quota.is_none_or(|q| q.total_leased() <= limit));
    }
    eventually(PATIENCE, "all nodes agree on the ledger", || {
        sandbox.running().all(|(_, c)| {
            c.state()
                .load()
                .quota("tenant-1", 42)
                .map(|q| q.total_leased())
                == Some(limit)
        })
    })
    .await;
    if let Ok(sandbox) = Arc::try_unwrap(sandbox) {
        sandbox.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_node_joins_as_learner_catches_up_from_a_chunked_snapshot_and_becomes_voter() {
    let sandbox = Arc::new(Sandbox::start().await);
    let leader = sandbox.leader().await;
    // Over 1000 entries (a snapshot, the log purged behind it) and a state over 1 MiB (two chunks).
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let sandbox = Arc::clone(&sandbox);
        writers.push(tokio::spawn(async move {
            for n in 0..140u64 {
                let key = format!("{:0>1200}", w * 1000 + n);
                let lease = ClusterCommand::Lease {
                    key,
                    window: 1,
                    limit: 10,
                    node: NAMES[leader].into(),
                    want: 1,
                };
                sandbox
                    .consensus(leader)
                    .propose(lease, PROPOSE)
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let mut sandbox = Arc::try_unwrap(sandbox).ok().unwrap();
    let expected = sandbox.consensus(leader).state().load_full();
    assert_eq!(expected.quotas.len(), 8 * 140);
    assert!(serde_json::to_vec(&*expected).unwrap().len() > 1024 * 1024);

    let newcomer = sandbox.add_node("node-d").await;
    eventually(Duration::from_secs(30), "the newcomer caught up", || {
        sandbox.consensus(newcomer).state().load().quotas == expected.quotas
    })
    .await;
    eventually(PATIENCE, "the newcomer is promoted to voter", || {
        let status = sandbox.consensus(leader).status();
        status.voters.len() == 4 && status.learners.is_empty()
    })
    .await;
    let trip_on_newcomer = sandbox
        .consensus(newcomer)
        .propose(trip("p", 0, "node-d"), PROPOSE)
        .await
        .unwrap();
    assert_eq!(trip_on_newcomer, CommandOutcome::Applied { generation: 1 });
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_the_cluster_secret_are_refused() {
    use hapax_cluster::raft::rpc::proto::StatusRequest;
    use hapax_cluster::raft::rpc::proto::cluster_rpc_client::ClusterRpcClient;

    let sandbox = Sandbox::start_with(Some(Secret("a-cluster-secret-of-16+".into()))).await;
    sandbox.leader().await;
    let mut client = ClusterRpcClient::connect(format!("http://{}", sandbox.nodes[0].addr))
        .await
        .unwrap();
    let refused = client.status(StatusRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut wrong = tonic::Request::new(StatusRequest {});
    wrong.metadata_mut().insert(
        "x-hapax-cluster-secret",
        "not-the-secret-at-all".parse().unwrap(),
    );
    assert_eq!(
        client.status(wrong).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    sandbox.shutdown().await;
}
