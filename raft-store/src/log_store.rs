//! The Raft log, vote, committed and last-purged ids in RocksDB. Nothing is acknowledged
//! before the WAL holding it is synced. Appends are group-committed: an append writes its
//! entries (readable at once) and hands openraft's callback to a syncer thread, which syncs
//! the WAL once for every append that arrived meanwhile and only then reports them
//! persisted. Vote, truncate and purge are synced writes. Every RocksDB call runs on a
//! blocking thread, and openraft awaits each call before the next, so writes stay in order.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};

use crate::codec::{self, key_u64, u64_key};
use crate::db::{cf, synced};
use crate::schema::{meta_key, Cf};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The log store; cheap to clone (the reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    syncer: Arc<Syncer>,
}

/// The syncer thread and the channel that feeds it. Dropping the last handle closes the
/// channel and joins the thread, so the database is released when the store is.
struct Syncer {
    pending: Option<std::sync::mpsc::Sender<LogFlushed<TypeConfig>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.pending.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Syncs the WAL for every append callback waiting, then completes them. Exits when the
/// last `LogStore` clone is dropped.
fn run_syncer(db: Arc<DB>, pending: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = pending.recv() {
        let mut waiting = vec![first];
        waiting.extend(pending.try_iter());
        // A synced flush covers every write issued before it, so all of `waiting`.
        let result = db.flush_wal(true).map_err(|e| e.to_string());
        for callback in waiting {
            callback.log_io_completed(result.clone().map_err(std::io::Error::other));
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::from(StorageIOError::read(&e)))?
}

fn read_meta<T: serde::de::DeserializeOwned>(db: &DB, key: &[u8], what: &'static str) -> Result<Option<T>, StorageError> {
    let bytes = db.get_cf(cf(db, Cf::Meta), key).map_err(|e| StorageIOError::read(&e))?;
    bytes
        .map(|b| codec::decode(what, &b).map_err(|e| StorageIOError::read(&e).into()))
        .transpose()
}

fn write_meta<T: serde::Serialize>(db: &DB, key: &[u8], what: &'static str, value: &T) -> Result<(), StorageError> {
    let bytes = codec::encode(what, value).map_err(|e| StorageIOError::write(&e))?;
    db.put_cf_opt(cf(db, Cf::Meta), key, bytes, &synced()).map_err(|e| StorageIOError::write(&e).into())
}

impl LogStore {
    /// Starts the syncer thread; fails only if the OS cannot start a thread.
    pub fn new(db: Arc<DB>) -> std::io::Result<Self> {
        let (sender, pending) = std::sync::mpsc::channel();
        let sync_db = db.clone();
        let thread = std::thread::Builder::new().name("raft-log-sync".into()).spawn(move || run_syncer(sync_db, pending))?;
        Ok(Self { db, syncer: Arc::new(Syncer { pending: Some(sender), thread: Some(thread) }) })
    }

    fn read_range(db: &DB, start: u64, end: Option<u64>) -> Result<Vec<Entry>, StorageError> {
        let logs = cf(db, Cf::Logs);
        let mut entries = Vec::new();
        for item in db.iterator_cf(logs, IteratorMode::From(&u64_key(start), Direction::Forward)) {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let index = key_u64(&key).ok_or_else(|| StorageIOError::read_logs(&codec::CodecError { what: "log key", reason: "not 8 bytes".into() }))?;
            if end.is_some_and(|end| index >= end) {
                break;
            }
            let entry: Entry = codec::decode("log entry", &value).map_err(|e| StorageIOError::read_log_at_index(index, &e))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => Some(x.saturating_add(1)),
            Bound::Excluded(x) => Some(*x),
            Bound::Unbounded => None,
        };
        let db = self.db.clone();
        blocking(move || Self::read_range(&db, start, end)).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let last = db.iterator_cf(cf(&db, Cf::Logs), IteratorMode::End).next();
            let last_log_id = match last {
                None => None,
                Some(item) => {
                    let (_, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                    let entry: Entry = codec::decode("log entry", &value).map_err(|e| StorageIOError::read_logs(&e))?;
                    Some(entry.log_id)
                }
            };
            let last_purged_log_id: Option<LogId> = read_meta(&db, meta_key::LAST_PURGED, "last purged log id")?;
            Ok(LogState { last_purged_log_id, last_log_id: last_log_id.or(last_purged_log_id) })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let (db, vote) = (self.db.clone(), *vote);
        blocking(move || write_meta(&db, meta_key::VOTE, "vote", &vote).map_err(|e| StorageIOError::write_vote(&e).into())).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let db = self.db.clone();
        blocking(move || read_meta(&db, meta_key::VOTE, "vote")).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || write_meta(&db, meta_key::COMMITTED, "committed log id", &committed)).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let db = self.db.clone();
        blocking(move || Ok(read_meta::<Option<LogId>>(&db, meta_key::COMMITTED, "committed log id")?.flatten())).await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let db = self.db.clone();
        let result = blocking(move || {
            let logs = cf(&db, Cf::Logs);
            let mut batch = WriteBatch::default();
            for entry in &entries {
                let bytes = codec::encode("log entry", entry).map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
                batch.put_cf(logs, u64_key(entry.log_id.index), bytes);
            }
            // Written but not yet synced: readable now, persisted when the syncer says so.
            db.write(batch).map_err(|e| StorageIOError::write_logs(&e).into())
        })
        .await;
        match result {
            Ok(()) => {
                match &self.syncer.pending {
                    Some(pending) => {
                        if let Err(std::sync::mpsc::SendError(callback)) = pending.send(callback) {
                            callback.log_io_completed(Err(std::io::Error::other("log sync thread has stopped")));
                        }
                    }
                    None => callback.log_io_completed(Err(std::io::Error::other("log sync thread has stopped"))),
                }
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(cf(&db, Cf::Logs), u64_key(log_id.index), u64_key(u64::MAX));
            db.write_opt(batch, &synced()).map_err(|e| StorageIOError::write_logs(&e).into())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let mut batch = WriteBatch::default();
            let bytes = codec::encode("last purged log id", &log_id).map_err(|e| StorageIOError::write_logs(&e))?;
            batch.put_cf(cf(&db, Cf::Meta), meta_key::LAST_PURGED, bytes);
            batch.delete_range_cf(cf(&db, Cf::Logs), u64_key(0), u64_key(log_id.index.saturating_add(1)));
            db.write_opt(batch, &synced()).map_err(|e| StorageIOError::write_logs(&e).into())
        })
        .await
    }
}
