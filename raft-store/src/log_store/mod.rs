//! The Raft log, vote, committed and last-purged ids in RocksDB. Nothing is acknowledged
//! before the WAL holding it is synced. Appends go to one writer thread, which writes every
//! append waiting in one synced write (group commit) and then reports them persisted.
//! Vote, truncate and purge are synced writes; the committed id is not (see `save_committed`). Every RocksDB call runs off the reactor,
//! and openraft awaits each call before the next, so writes stay in order. The tail of
//! the log is also kept in memory (`recent`), for apply and replication to read.

mod recent;

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
use recent::RecentEntries;

/// Handed to the state machine: reports the last applied index to the log's tail.
#[derive(Clone)]
pub struct ApplyProgress(Arc<RecentEntries>);

impl ApplyProgress {
    /// Every entry up to and including `index` is applied.
    pub fn applied(&self, index: u64) {
        self.0.applied(index);
    }
}

/// The log store; cheap to clone (the reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    writer: Arc<Writer>,
    recent: Arc<RecentEntries>,
}

/// An append waiting for the writer thread: the encoded rows, openraft's callback, and
/// who to tell once they are written and synced.
struct Append {
    rows: Vec<(u64, Vec<u8>)>,
    callback: LogFlushed<TypeConfig>,
    written: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// The writer thread and the channel that feeds it. Dropping the last handle closes the
/// channel and joins the thread, so the database is released when the store is.
struct Writer {
    pending: Option<std::sync::mpsc::Sender<Append>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.pending.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes every append waiting in one synced write (group commit), then completes them.
/// One thread keeps appends in order. Exits when the last `LogStore` clone is dropped.
fn run_writer(db: Arc<DB>, pending: std::sync::mpsc::Receiver<Append>) {
    while let Ok(first) = pending.recv() {
        let mut waiting = vec![first];
        waiting.extend(pending.try_iter());
        let logs = cf(&db, Cf::Logs);
        let mut batch = WriteBatch::default();
        for append in &waiting {
            for (index, bytes) in &append.rows {
                batch.put_cf(logs, u64_key(*index), bytes);
            }
        }
        let result = db.write_opt(batch, &synced()).map_err(|e| e.to_string());
        for append in waiting {
            append.callback.log_io_completed(result.clone().map_err(std::io::Error::other));
            let _ = append.written.send(result.clone());
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StorageError::from(StorageIOError::read(&e)))?
}

fn read_meta<T: serde::de::DeserializeOwned>(
    db: &DB,
    key: &[u8],
    what: &'static str,
) -> Result<Option<T>, StorageError> {
    let bytes = db.get_cf(cf(db, Cf::Meta), key).map_err(|e| StorageIOError::read(&e))?;
    bytes.map(|b| codec::decode(what, &b).map_err(|e| StorageIOError::read(&e).into())).transpose()
}

fn write_meta<T: serde::Serialize>(db: &DB, key: &[u8], what: &'static str, value: &T) -> Result<(), StorageError> {
    let bytes = codec::encode(what, value).map_err(|e| StorageIOError::write(&e))?;
    db.put_cf_opt(cf(db, Cf::Meta), key, bytes, &synced()).map_err(|e| StorageIOError::write(&e).into())
}

impl LogStore {
    /// Starts the writer thread; fails only if the OS cannot start a thread.
    pub fn new(db: Arc<DB>) -> std::io::Result<Self> {
        let (sender, pending) = std::sync::mpsc::channel();
        let writer_db = db.clone();
        let thread =
            std::thread::Builder::new().name("raft-log-writer".into()).spawn(move || run_writer(writer_db, pending))?;
        Ok(Self {
            db,
            writer: Arc::new(Writer { pending: Some(sender), thread: Some(thread) }),
            recent: Arc::default(),
        })
    }

    /// What the state machine tells the log as it applies, so the in-memory tail keeps
    /// what is still to be applied.
    pub fn apply_progress(&self) -> ApplyProgress {
        ApplyProgress(self.recent.clone())
    }

    fn read_range(db: &DB, start: u64, end: Option<u64>) -> Result<Vec<Entry>, StorageError> {
        let logs = cf(db, Cf::Logs);
        let mut entries = Vec::new();
        for item in db.iterator_cf(logs, IteratorMode::From(&u64_key(start), Direction::Forward)) {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let index = key_u64(&key).ok_or_else(|| {
                StorageIOError::read_logs(&codec::CodecError { what: "log key", reason: "not 8 bytes".into() })
            })?;
            if end.is_some_and(|end| index >= end) {
                break;
            }
            let entry: Entry =
                codec::decode("log entry", &value).map_err(|e| StorageIOError::read_log_at_index(index, &e))?;
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
        if let Some(entries) = self.recent.get(start, end) {
            return Ok(entries);
        }
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
        blocking(move || {
            write_meta(&db, meta_key::VOTE, "vote", &vote).map_err(|e| StorageIOError::write_vote(&e).into())
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let db = self.db.clone();
        blocking(move || read_meta(&db, meta_key::VOTE, "vote")).await
    }

    /// Not synced: the committed id only tells a restarting replica how far it may apply
    /// before it hears from a leader. A lost update leaves an older id, which is still
    /// committed; and it shares the WAL with the log, so it never outlives the entries it
    /// names. Syncing it would cost a second fsync per commit inside openraft's core loop.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let bytes = codec::encode("committed log id", &committed).map_err(|e| StorageIOError::write(&e))?;
            db.put_cf(cf(&db, Cf::Meta), meta_key::COMMITTED, bytes).map_err(|e| StorageIOError::write(&e).into())
        })
        .await
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
        let mut rows = Vec::new();
        let mut kept = Vec::new();
        for entry in entries {
            let bytes =
                codec::encode("log entry", &entry).map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            rows.push((entry.log_id.index, bytes));
            kept.push((entry, rows.last().map_or(0, |(_, b)| b.len())));
        }
        // Readers may see the entries before they are synced, as they may on disk: openraft
        // counts them only once the callback reports them persisted.
        self.recent.appended(kept);
        let (written, done) = tokio::sync::oneshot::channel();
        let stopped =
            || StorageError::from(StorageIOError::write_logs(&std::io::Error::other("log writer thread has stopped")));
        let Some(pending) = &self.writer.pending else {
            callback.log_io_completed(Err(std::io::Error::other("log writer thread has stopped")));
            return Err(stopped());
        };
        if let Err(std::sync::mpsc::SendError(append)) = pending.send(Append { rows, callback, written }) {
            append.callback.log_io_completed(Err(std::io::Error::other("log writer thread has stopped")));
            return Err(stopped());
        }
        // Readable once written; openraft waits for the sync before its next step anyway,
        // and the write is the sync (one synced WriteBatch).
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StorageIOError::write_logs(&std::io::Error::other(e)).into()),
            Err(_) => Err(stopped()),
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.recent.truncated(log_id.index);
        let db = self.db.clone();
        blocking(move || {
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(cf(&db, Cf::Logs), u64_key(log_id.index), u64_key(u64::MAX));
            db.write_opt(batch, &synced()).map_err(|e| StorageIOError::write_logs(&e).into())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.recent.purged(log_id.index);
        let db = self.db.clone();
        // openraft purges only behind its snapshot, whose state the snapshot's build flushed
        // (or whose install was a synced write): the state these entries produced is on disk.
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
