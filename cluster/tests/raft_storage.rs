//! The redb log store and the state machine against openraft's own storage test suite, and
//! the durability a restarted node relies on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hapax_cluster::ClusterCommand;
use hapax_cluster::raft::state_machine::StateMachineStore;
use hapax_cluster::raft::store::{LogStore, open_database};
use hapax_cluster::raft::types::{Entry, HapaxRaft, LogId, Vote};
use openraft::impls::leader_id_adv::LeaderId;
use openraft::storage::{
    IOFlushed, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine,
};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, StorageError};
use tempfile::TempDir;

struct RedbStores;

impl StoreBuilder<HapaxRaft, LogStore, StateMachineStore, TempDir> for RedbStores {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<HapaxRaft>> {
        let dir = tempfile::tempdir()
            .map_err(|e| StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        let db = open_database(dir.path())
            .map_err(|e| StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        Ok((dir, LogStore::new(db.clone()), StateMachineStore::new(db)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_storage_passes_the_openraft_suite() {
    Suite::test_all(RedbStores)
        .await
        .expect("openraft storage suite");
}

fn lease(index: u64) -> Entry {
    let command = ClusterCommand::Lease {
        key: "k".into(),
        window: 1,
        limit: 100,
        node: "a".into(),
        want: 10,
    };
    Entry {
        log_id: LogId::new(
            LeaderId {
                term: 1,
                node_id: 7,
            },
            index,
        ),
        payload: EntryPayload::Normal(command),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_vote_committed_and_snapshot_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_database(dir.path()).unwrap();
        let mut log = LogStore::new(db.clone());
        log.save_vote(&Vote::new_committed(1, 7)).await.unwrap();
        log.append((1..=5).map(lease), IOFlushed::noop())
            .await
            .unwrap();
        log.save_committed(Some(lease(4).log_id)).await.unwrap();
        let mut sm = StateMachineStore::new(db);
        let entries = (1..=3).map(|i| Ok((lease(i), None)));
        sm.apply(futures_util::stream::iter(entries)).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        log.purge(lease(2).log_id).await.unwrap();
    }
    let db = open_database(dir.path()).unwrap();
    let mut log = LogStore::new(db.clone());
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(1, 7))
    );
    assert_eq!(log.read_committed().await.unwrap(), Some(lease(4).log_id));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(
        (state.last_purged_log_id, state.last_log_id),
        (Some(lease(2).log_id), Some(lease(5).log_id))
    );
    let indexes: Vec<u64> = log
        .try_get_log_entries(0..10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(indexes, vec![3, 4, 5]);

    let mut sm = StateMachineStore::new(db);
    let snapshot = sm
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("a stored snapshot");
    assert_eq!(snapshot.meta.last_log_id, Some(lease(3).log_id));
    sm.install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    let state = sm.published().load_full();
    assert_eq!(
        (
            state.last_applied_index,
            state.quota("k", 1).map(|q| q.total_leased())
        ),
        (3, Some(30))
    );
}
