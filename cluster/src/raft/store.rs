//! The durable Raft log on redb: one database file per node (`<data_dir>/raft.redb`) holds
//! the vote, the committed log id, the purge point, the log entries and the last snapshot.
//! Every write is a redb transaction committed with immediate durability (fsync) before
//! openraft is told it is flushed.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, RaftTypeConfig};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::types::{Entry, HapaxRaft, LogId, Vote, io_err};

/// Small values by name: `vote`, `committed`, `last_purged`.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// Log entries by index, as JSON.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// The last snapshot: `meta` (JSON `SnapshotMeta`) and `data` (JSON `ReplicatedState`).
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// Opens (or creates) the node's Raft database under `dir`. A previous instance of this node
/// in the same process may still be letting go of the file: retry for a few seconds.
pub fn open_database(dir: &Path) -> io::Result<Arc<Database>> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("raft.redb");
    let started = Instant::now();
    let db = loop {
        match Database::create(&path) {
            Ok(db) => break db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
                if started.elapsed() < Duration::from_secs(10) =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(io_err(&format!("open {}", path.display()), e)),
        }
    };
    let txn = db.begin_write().map_err(|e| io_err("begin", e))?;
    for table in [META, SNAPSHOT] {
        txn.open_table(table)
            .map_err(|e| io_err("create table", e))?;
    }
    txn.open_table(LOG).map_err(|e| io_err("create table", e))?;
    txn.commit().map_err(|e| io_err("commit", e))?;
    Ok(Arc::new(db))
}

pub(crate) fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| io_err("encode", e))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    serde_json::from_slice(bytes).map_err(|e| io_err("decode", e))
}

/// Runs a blocking redb write off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| io_err("storage task", e))?
}

/// Writes (or, with `None`, deletes) small values in one transaction.
pub(crate) fn write_values(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    values: &[(&str, Option<Vec<u8>>)],
) -> io::Result<()> {
    let mut txn = db.begin_write().map_err(|e| io_err("begin", e))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| io_err("durability", e))?;
    {
        let mut t = txn.open_table(table).map_err(|e| io_err("open", e))?;
        for (key, value) in values {
            match value {
                Some(bytes) => t.insert(*key, bytes.as_slice()).map(|_| ()),
                None => t.remove(*key).map(|_| ()),
            }
            .map_err(|e| io_err("write", e))?;
        }
    }
    txn.commit().map_err(|e| io_err("commit", e))
}

pub(crate) fn read_value(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> io::Result<Option<Vec<u8>>> {
    let txn = db.begin_read().map_err(|e| io_err("begin", e))?;
    let t = txn.open_table(table).map_err(|e| io_err("open", e))?;
    Ok(t.get(key)
        .map_err(|e| io_err("read", e))?
        .map(|v| v.value().to_vec()))
}

/// The Raft log store; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub fn new(db: Arc<Database>) -> Self {
        Self { db }
    }

    fn meta<T: DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        read_value(&self.db, META, key)?
            .map(|bytes| decode(&bytes))
            .transpose()
    }

    async fn put_meta<T: Serialize>(&self, key: &'static str, value: &T) -> io::Result<()> {
        let bytes = encode(value)?;
        let db = Arc::clone(&self.db);
        blocking(move || write_values(&db, META, &[(key, Some(bytes))])).await
    }

    fn last_entry(&self) -> io::Result<Option<Entry>> {
        let txn = self.db.begin_read().map_err(|e| io_err("begin", e))?;
        let t = txn.open_table(LOG).map_err(|e| io_err("open", e))?;
        match t.last().map_err(|e| io_err("read", e))? {
            Some((_, value)) => Ok(Some(decode(value.value())?)),
            None => Ok(None),
        }
    }
}

impl RaftLogReader<HapaxRaft> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        let txn = self.db.begin_read().map_err(|e| io_err("begin", e))?;
        let t = txn.open_table(LOG).map_err(|e| io_err("open", e))?;
        let mut entries = Vec::new();
        for item in t.range::<u64>(bounds).map_err(|e| io_err("range", e))? {
            let (_, value) = item.map_err(|e| io_err("read", e))?;
            entries.push(decode(value.value())?);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.meta(VOTE)
    }
}

impl RaftLogStorage<HapaxRaft> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<HapaxRaft>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.meta(LAST_PURGED)?;
        let last_log_id = self
            .last_entry()?
            .map(|e| e.log_id())
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_meta(VOTE, vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Durable too: a restarted node re-applies up to here from its own disk, even alone.
        self.put_meta(COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<HapaxRaft>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = <HapaxRaft as RaftTypeConfig>::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Vec::new();
        for entry in entries {
            batch.push((entry.index(), encode(&entry)?));
        }
        let db = Arc::clone(&self.db);
        let result = blocking(move || {
            let txn = db.begin_write().map_err(|e| io_err("begin", e))?;
            {
                let mut t = txn.open_table(LOG).map_err(|e| io_err("open", e))?;
                for (index, bytes) in &batch {
                    t.insert(*index, bytes.as_slice())
                        .map_err(|e| io_err("append", e))?;
                }
            }
            txn.commit().map_err(|e| io_err("commit", e))
        })
        .await;
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|id| id.index() + 1).unwrap_or(0);
        let db = Arc::clone(&self.db);
        blocking(move || {
            let txn = db.begin_write().map_err(|e| io_err("begin", e))?;
            {
                let mut t = txn.open_table(LOG).map_err(|e| io_err("open", e))?;
                t.retain_in(from.., |_, _| false)
                    .map_err(|e| io_err("truncate", e))?;
            }
            txn.commit().map_err(|e| io_err("commit", e))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let upto = log_id.index();
        let bytes = encode(&log_id)?;
        let db = Arc::clone(&self.db);
        blocking(move || {
            let txn = db.begin_write().map_err(|e| io_err("begin", e))?;
            {
                let mut meta = txn.open_table(META).map_err(|e| io_err("open", e))?;
                meta.insert(LAST_PURGED, bytes.as_slice())
                    .map_err(|e| io_err("write", e))?;
                let mut t = txn.open_table(LOG).map_err(|e| io_err("open", e))?;
                t.retain_in(..=upto, |_, _| false)
                    .map_err(|e| io_err("purge", e))?;
            }
            txn.commit().map_err(|e| io_err("commit", e))
        })
        .await
    }
}
