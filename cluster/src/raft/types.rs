//! The openraft type configuration and the names <-> ids of the Raft group.

use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::state::{ClusterCommand, CommandOutcome};

/// A member of the Raft group as stored in its membership: the node's name (its gossip id)
/// and the address of its cluster gRPC service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RaftPeer {
    pub name: String,
    pub addr: String,
}

impl fmt::Display for RaftPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

openraft::declare_raft_types!(
    /// Hapax's Raft: commands are [`ClusterCommand`]s, members are [`RaftPeer`]s.
    pub HapaxRaft:
        D = ClusterCommand,
        R = Option<CommandOutcome>,
        NodeId = u64,
        Node = RaftPeer,
);

pub type Raft = openraft::Raft<HapaxRaft, super::state_machine::StateMachineStore>;
pub type LogId = openraft::alias::LogIdOf<HapaxRaft>;
pub type Entry = openraft::alias::EntryOf<HapaxRaft>;
pub type Vote = openraft::alias::VoteOf<HapaxRaft>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<HapaxRaft>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<HapaxRaft>;
pub type Snapshot = openraft::alias::SnapshotOf<HapaxRaft, Vec<u8>>;
pub type RaftMetrics = openraft::RaftMetrics<HapaxRaft>;

/// The Raft id of a node name: the first 8 bytes of its SHA-256, so a restarted node (same
/// name) keeps its id without storing it anywhere.
pub fn raft_id(name: &str) -> u64 {
    let digest = Sha256::digest(name.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

pub(crate) fn io_err(context: &str, err: impl fmt::Display) -> io::Error {
    io::Error::other(format!("{context}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_ids_are_stable_and_distinct() {
        assert_eq!(raft_id("node-a"), raft_id("node-a"));
        assert_ne!(raft_id("node-a"), raft_id("node-b"));
        assert_eq!(
            raft_id(""),
            0xe3b0_c442_98fc_1c14,
            "sha256 of nothing starts e3b0c442 98fc1c14"
        );
    }
}
