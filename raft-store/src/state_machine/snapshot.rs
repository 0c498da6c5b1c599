//! Snapshots: every state column family read from one RocksDB snapshot (so writes go on
//! while it is built), written to `snapshots/current` atomically, and installed on a
//! lagging replica in one synced WriteBatch that replaces the whole state.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::{RaftSnapshotBuilder, StorageIOError};
use rocksdb::{IteratorMode, ReadOptions, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use crate::codec::{self, Row};
use crate::db::{cf, flush_state, synced};
use crate::schema::{sm_key, Cf};
use crate::types::{LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const SNAPSHOT_FILE: &str = "current";
const MAGIC: &[u8; 8] = b"TSTDSNP1";

/// The rows of every state column family.
#[derive(Serialize, Deserialize)]
struct Payload {
    tables: Vec<(String, Vec<Row>)>,
}

/// A snapshot as kept on disk: its metadata and payload.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

static SNAPSHOT_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Builds snapshots from a consistent view of the state machine.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    dir: PathBuf,
}

impl SnapshotBuilder {
    pub fn new(db: Arc<DB>, dir: PathBuf) -> Self {
        Self { db, dir }
    }
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_snapshot(None, &std::io::Error::other(e.to_string())).into()
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, &std::io::Error::other(e.to_string())).into()
}

fn build(db: &DB, dir: &Path) -> Result<Snapshot, StorageError> {
    let (meta, data) = read_state(db)?;
    // State writes skip the WAL, and openraft purges the log only behind a snapshot: the
    // state up to this snapshot must be on disk before the snapshot exists. Flushing after
    // the read covers every write the read saw, and keeps the flush off openraft's core loop
    // (it builds snapshots in a task of their own; purge runs in the loop).
    flush_state(db).map_err(write_err)?;
    save_current(dir, &meta, &data)?;
    Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
}

/// Every state row from one consistent view, with the metadata that view implies.
pub(crate) fn read_state(db: &DB) -> Result<(SnapshotMeta, Vec<u8>), StorageError> {
    let view = db.snapshot();
    let mut tables = Vec::with_capacity(Cf::STATE.len());
    let mut last_applied: Option<LogId> = None;
    let mut membership = StoredMembership::default();
    for table in Cf::STATE {
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&view);
        let mut rows = Vec::new();
        for item in db.iterator_cf_opt(cf(db, table), opts, IteratorMode::Start) {
            let (key, value) = item.map_err(read_err)?;
            if table == Cf::SmMeta {
                if &*key == sm_key::LAST_APPLIED {
                    last_applied = Some(codec::decode("last applied", &value).map_err(read_err)?);
                } else if &*key == sm_key::MEMBERSHIP {
                    membership = codec::decode("membership", &value).map_err(read_err)?;
                }
            }
            rows.push((key.to_vec(), value.to_vec()));
        }
        tables.push((table.name().to_owned(), rows));
    }
    let data = codec::encode("snapshot", &Payload { tables }).map_err(read_err)?;
    let n = SNAPSHOT_COUNTER.fetch_add(1, Ordering::Relaxed);
    let snapshot_id = match last_applied {
        Some(id) => format!("{}-{}-{n}", id.leader_id, id.index),
        None => format!("--{n}"),
    };
    let meta = SnapshotMeta { last_log_id: last_applied, last_membership: membership, snapshot_id };
    Ok((meta, data))
}

/// A snapshot in the on-disk format (magic, then metadata and payload): what
/// `snapshots/current` holds, and what a backup file holds.
pub(crate) fn encode_file(meta: &SnapshotMeta, data: &[u8]) -> Result<Vec<u8>, StorageError> {
    let stored = StoredSnapshot { meta: meta.clone(), data: data.to_vec() };
    let mut bytes = MAGIC.to_vec();
    bytes.extend(codec::encode("snapshot file", &stored).map_err(write_err)?);
    Ok(bytes)
}

pub(crate) fn decode_file(bytes: &[u8]) -> Result<(SnapshotMeta, Vec<u8>), StorageError> {
    let body = bytes.strip_prefix(MAGIC.as_slice()).ok_or_else(|| read_err("not a Testudo snapshot (bad magic)"))?;
    let stored: StoredSnapshot = codec::decode("snapshot file", body).map_err(read_err)?;
    Ok((stored.meta, stored.data))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (db, dir) = (self.db.clone(), self.dir.clone());
        tokio::task::spawn_blocking(move || build(&db, &dir)).await.map_err(write_err)?
    }
}

/// Writes the snapshot beside the database: temporary file, fsync, rename, directory fsync.
fn save_current(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
    std::fs::create_dir_all(dir).map_err(write_err)?;
    let bytes = encode_file(meta, data)?;
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(write_err)?;
    file.write_all(&bytes).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE)).map_err(write_err)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(write_err)?;
    Ok(())
}

pub fn load_current(dir: &Path) -> Result<Option<Snapshot>, StorageError> {
    let path = dir.join(SNAPSHOT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let (meta, data) = decode_file(&bytes).map_err(|e| read_err(format!("{}: {e}", path.display())))?;
    Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
}

/// Replaces the whole state with the snapshot's, atomically, then keeps it as current.
pub fn install(db: &DB, dir: &Path, meta: &SnapshotMeta, data: Vec<u8>) -> Result<(), StorageError> {
    let payload: Payload = codec::decode("snapshot", &data).map_err(read_err)?;
    let mut batch = WriteBatch::default();
    for table in Cf::STATE {
        for item in db.iterator_cf(cf(db, table), IteratorMode::Start) {
            let (key, _) = item.map_err(write_err)?;
            batch.delete_cf(cf(db, table), key);
        }
    }
    for (name, rows) in &payload.tables {
        let table = Cf::from_name(name)
            .filter(|t| Cf::STATE.contains(t))
            .ok_or_else(|| read_err(format!("snapshot names unknown table {name:?}")))?;
        for (key, value) in rows {
            batch.put_cf(cf(db, table), key, value);
        }
    }
    // The snapshot's metadata is authoritative for what it contains.
    match meta.last_log_id {
        Some(id) => batch.put_cf(
            cf(db, Cf::SmMeta),
            sm_key::LAST_APPLIED,
            codec::encode("last applied", &id).map_err(write_err)?,
        ),
        None => batch.delete_cf(cf(db, Cf::SmMeta), sm_key::LAST_APPLIED),
    }
    batch.put_cf(
        cf(db, Cf::SmMeta),
        sm_key::MEMBERSHIP,
        codec::encode("membership", &meta.last_membership).map_err(write_err)?,
    );
    db.write_opt(batch, &synced()).map_err(write_err)?;
    save_current(dir, meta, &data)
}
