//! The state machine: [`ReplicatedState`] in memory, published lock-free after every applied
//! batch, with snapshots persisted in redb. After a restart openraft installs the stored
//! snapshot and re-applies the committed log after it.

use std::io;
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures_util::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use redb::Database;
use tokio::sync::{Mutex, watch};

use super::state::ReplicatedState;
use super::store::{SNAPSHOT, blocking, decode, encode, read_value, write_values};
use super::types::{HapaxRaft, LogId, Snapshot, SnapshotMeta, StoredMembership};

struct Applied {
    state: ReplicatedState,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// Clones share the state; the snapshot builder is a clone.
#[derive(Clone)]
pub struct StateMachineStore {
    applied: Arc<Mutex<Applied>>,
    db: Arc<Database>,
    published: Arc<ArcSwap<ReplicatedState>>,
    applied_index: Arc<watch::Sender<u64>>,
}

impl StateMachineStore {
    pub fn new(db: Arc<Database>) -> Self {
        Self {
            applied: Arc::new(Mutex::new(Applied {
                state: ReplicatedState::default(),
                last_applied: None,
                membership: StoredMembership::default(),
            })),
            db,
            published: Arc::new(ArcSwap::from_pointee(ReplicatedState::default())),
            applied_index: Arc::new(watch::channel(0).0),
        }
    }

    /// The snapshot the hot path reads.
    pub fn published(&self) -> Arc<ArcSwap<ReplicatedState>> {
        Arc::clone(&self.published)
    }

    /// The last applied log index, as it changes.
    pub fn applied_index(&self) -> watch::Receiver<u64> {
        self.applied_index.subscribe()
    }

    fn publish(&self, state: &ReplicatedState) {
        self.published.store(Arc::new(state.clone()));
        self.applied_index.send_replace(state.last_applied_index);
    }

    async fn persist_snapshot(&self, meta: &SnapshotMeta, data: Vec<u8>) -> io::Result<()> {
        let meta = encode(meta)?;
        let db = Arc::clone(&self.db);
        blocking(move || write_values(&db, SNAPSHOT, &[("meta", Some(meta)), ("data", Some(data))]))
            .await
    }
}

impl RaftSnapshotBuilder<HapaxRaft> for StateMachineStore {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (meta, data) = {
            let applied = self.applied.lock().await;
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
            };
            (meta, encode(&applied.state)?)
        };
        self.persist_snapshot(&meta, data.clone()).await?;
        tracing::info!(last_log_id = ?meta.last_log_id.as_ref().map(|l| l.index), bytes = data.len(), "raft snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<HapaxRaft> for StateMachineStore {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let applied = self.applied.lock().await;
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<HapaxRaft>, io::Error>> + Unpin + OptionalSend,
    {
        let mut applied = self.applied.lock().await;
        let mut replies = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id();
            applied.state.last_applied_index = log_id.index;
            let reply = match &entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(command) => Some(applied.state.apply(command)),
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(log_id), membership.clone());
                    None
                }
            };
            applied.last_applied = Some(log_id);
            if let Some(responder) = responder {
                replies.push((responder, reply));
            }
        }
        // Publish before answering: a proposer sees its own outcome in `state()`.
        self.publish(&applied.state);
        drop(applied);
        for (responder, reply) in replies {
            responder.send(reply);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let mut state: ReplicatedState = decode(&snapshot)?;
        state.last_applied_index = meta.last_log_id.as_ref().map(|l| l.index).unwrap_or(0);
        self.persist_snapshot(meta, snapshot).await?;
        let mut applied = self.applied.lock().await;
        applied.state = state;
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        self.publish(&applied.state);
        tracing::info!(last_log_id = ?meta.last_log_id.as_ref().map(|l| l.index), "raft snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let Some(meta) = read_value(&self.db, SNAPSHOT, "meta")? else {
            return Ok(None);
        };
        let meta: SnapshotMeta = decode(&meta)?;
        let data = read_value(&self.db, SNAPSHOT, "data")?.unwrap_or_default();
        Ok(Some(Snapshot {
            meta,
            snapshot: data,
        }))
    }
}
