use super::*;

const MINUTE: Duration = Duration::from_secs(60);

fn peer(name: &str) -> RaftPeer {
    RaftPeer {
        name: name.into(),
        addr: format!("{name}:7947"),
    }
}

/// A group of `voters` and `learners`; every name in `live` is alive at its usual address.
fn observed(voters: &[&str], learners: &[&str], live: &[&str]) -> Observed {
    let nodes = voters
        .iter()
        .chain(learners)
        .map(|n| (raft_id(n), peer(n)))
        .collect();
    Observed {
        voters: voters.iter().map(|n| raft_id(n)).collect(),
        nodes,
        live: live.iter().map(|n| (n.to_string(), peer(n).addr)).collect(),
        removal_after: 5 * MINUTE,
        self_id: raft_id(voters[0]),
        ..Default::default()
    }
}

fn dead_for(o: &mut Observed, name: &str, how_long: Duration) {
    o.not_alive_for.insert(raft_id(name), how_long);
}

#[test]
fn a_stable_group_needs_no_change() {
    assert_eq!(
        plan(&observed(&["a", "b", "c"], &[], &["a", "b", "c"])),
        None
    );
}

#[test]
fn new_live_nodes_join_as_learners_then_become_voters_once_caught_up() {
    let o = observed(&["a"], &[], &["a", "b"]);
    assert_eq!(
        plan(&o),
        Some(Plan::AddLearners([(raft_id("b"), peer("b"))].into()))
    );
    let mut o = observed(&["a"], &["b"], &["a", "b"]);
    o.last_log_index = 100;
    o.matched.insert(raft_id("b"), 10);
    assert_eq!(plan(&o), None, "far behind: not yet");
    o.matched.insert(raft_id("b"), 95);
    assert_eq!(plan(&o), Some(Plan::Promote([raft_id("b")].into())));
}

#[test]
fn a_node_that_moved_gets_its_new_address_first() {
    let mut o = observed(&["a", "b", "c"], &[], &["a", "b", "c"]);
    o.live.insert("b".into(), "10.0.0.9:7947".into());
    let moved = RaftPeer {
        name: "b".into(),
        addr: "10.0.0.9:7947".into(),
    };
    assert_eq!(
        plan(&o),
        Some(Plan::SetAddresses([(raft_id("b"), moved)].into()))
    );
}

#[test]
fn dead_voters_go_only_after_the_delay_and_never_below_three() {
    let mut o = observed(&["a", "b", "c", "d"], &[], &["a", "b", "c"]);
    dead_for(&mut o, "d", MINUTE);
    assert_eq!(plan(&o), None, "not dead long enough");
    dead_for(&mut o, "d", 6 * MINUTE);
    assert_eq!(plan(&o), Some(Plan::RemoveVoter(raft_id("d"))));

    let mut three = observed(&["a", "b", "c"], &[], &["a", "b"]);
    dead_for(&mut three, "c", 60 * MINUTE);
    assert_eq!(plan(&three), None, "a three-voter group keeps its voters");
}

#[test]
fn removal_never_leaves_a_group_without_a_live_majority() {
    // Five voters, three dead: removing one leaves four with two alive — no majority.
    let mut o = observed(&["a", "b", "c", "d", "e"], &[], &["a", "b"]);
    for n in ["c", "d", "e"] {
        dead_for(&mut o, n, 10 * MINUTE);
    }
    assert_eq!(plan(&o), None);
    // Two dead of five: removing one leaves 3 alive of 4.
    let mut o = observed(&["a", "b", "c", "d", "e"], &[], &["a", "b", "c"]);
    dead_for(&mut o, "d", 10 * MINUTE);
    dead_for(&mut o, "e", 10 * MINUTE);
    assert_eq!(plan(&o), Some(Plan::RemoveVoter(raft_id("d"))));
}

#[test]
fn dead_learners_are_dropped_and_the_leader_never_removes_itself() {
    let mut o = observed(&["a", "b", "c"], &["x"], &["a", "b", "c"]);
    dead_for(&mut o, "x", 10 * MINUTE);
    assert_eq!(plan(&o), Some(Plan::RemoveLearner(raft_id("x"))));
    let mut o = observed(&["a", "b", "c", "d"], &[], &["b", "c", "d"]);
    dead_for(&mut o, "a", 10 * MINUTE);
    assert_eq!(plan(&o), None, "a is this node");
}
