//! Opening the data directory: one RocksDB database with a format header that names the
//! replica and its cluster. A directory that is corrupt, of another format, or of another
//! replica or cluster is refused with an error that says so, and never overwritten.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, ColumnFamilyDescriptor, Options, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::schema::{meta_key, Cf};
use crate::types::NodeId;

mod upgrade;

pub use upgrade::PREVIOUS_FORMAT;

/// The on-disk format this build writes and reads; a data dir of the format before it is
/// upgraded on open (`upgrade`).
/// 3: log entries carry each command as a byte string of its encoding.
pub const FORMAT_VERSION: u32 = 3;
const DB_DIR: &str = "raft-db";

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("data dir {path} is not empty and holds no Testudo store; refusing to overwrite it")]
    Foreign { path: PathBuf },
    #[error("data dir {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "data dir {path} was written by a newer Testudo (on-disk format {found}); this build reads format \
         {FORMAT_VERSION}: run the newer build, or restore a backup into an empty data dir"
    )]
    NewerFormat { path: PathBuf, found: u32 },
    #[error(
        "data dir {path} has on-disk format {found}, which this build cannot upgrade (it upgrades format \
         {PREVIOUS_FORMAT} only): start it once with a release that reads format {} first", found + 1
    )]
    OlderFormat { path: PathBuf, found: u32 },
    #[error(
        "data dir {path} has on-disk format {PREVIOUS_FORMAT} and could not be upgraded (left as it was): {reason}"
    )]
    Upgrade { path: PathBuf, reason: String },
    #[error("data dir {path} belongs to replica {found}, not replica {expected}")]
    WrongNode { path: PathBuf, found: NodeId, expected: NodeId },
    #[error("data dir {path} belongs to cluster {found:?}, not cluster {expected:?}")]
    WrongCluster { path: PathBuf, found: String, expected: String },
    #[error("data dir {path} is in use by another process (RocksDB lock held): {reason}")]
    Locked { path: PathBuf, reason: String },
    #[error("cannot open data dir {path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

/// What the header records about the data directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format_version: u32,
    pub node_id: NodeId,
    pub cluster_id: String,
}

/// The opened database and its header.
pub struct Store {
    pub db: Arc<DB>,
    pub header: Header,
    pub path: PathBuf,
}

/// Write options for everything Raft acknowledges: synced to disk before returning.
pub fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

/// Write options for state-machine writes: no WAL. The Raft log they come from is durable,
/// so a crash loses nothing: the state on disk is that of the last flush, which is atomic
/// across column families, and openraft applies the log from there again. The log is
/// purged only behind a snapshot, and building one flushes the state (`flush_state`).
pub fn unlogged() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.disable_wal(true);
    opts
}

/// Flushes every column family, atomically, and waits: afterwards the state on disk is at
/// least as new as every write made before the call. Blocking.
pub fn flush_state(db: &DB) -> Result<(), rocksdb::Error> {
    let handles: Vec<&rocksdb::ColumnFamily> = Cf::all().map(|c| cf(db, c)).collect();
    let mut opts = rocksdb::FlushOptions::default();
    opts.set_wait(true);
    db.flush_cfs_opt(&handles, &opts)
}

/// Opens (or, in an empty or absent directory, creates) the store of `node_id` in
/// `cluster_id`. Blocking: call from a blocking thread.
pub fn open(data_dir: &Path, node_id: NodeId, cluster_id: &str) -> Result<Store, OpenError> {
    let path = data_dir.join(DB_DIR);
    let io = |e: std::io::Error| OpenError::Io { path: data_dir.to_path_buf(), reason: e.to_string() };
    let fresh = !path.exists();
    if fresh {
        if data_dir.exists() && std::fs::read_dir(data_dir).map_err(io)?.next().is_some() {
            return Err(OpenError::Foreign { path: data_dir.to_path_buf() });
        }
        std::fs::create_dir_all(data_dir).map_err(io)?;
    } else if !path.join("CURRENT").exists() {
        return Err(OpenError::Corrupt { path: path.clone(), reason: "RocksDB CURRENT file is missing".into() });
    }

    let mut opts = Options::default();
    opts.create_if_missing(fresh);
    opts.create_missing_column_families(fresh);
    opts.set_paranoid_checks(true);
    // State-machine writes skip the WAL (see `unlogged`); flushing every column family
    // together keeps the state on disk one consistent point of the log.
    opts.set_atomic_flush(true);
    let cfs = Cf::all().map(|cf| ColumnFamilyDescriptor::new(cf.name(), table_options()));
    let db = DB::open_cf_descriptors(&opts, &path, cfs).map_err(|e| {
        let reason = e.to_string();
        if reason.contains("lock") {
            OpenError::Locked { path: path.clone(), reason }
        } else {
            OpenError::Corrupt { path: path.clone(), reason }
        }
    })?;
    let meta = db
        .cf_handle(Cf::Meta.name())
        .ok_or_else(|| OpenError::Corrupt { path: path.clone(), reason: "meta column family missing".into() })?;

    let expected = Header { format_version: FORMAT_VERSION, node_id, cluster_id: cluster_id.to_owned() };
    let stored = db
        .get_cf(meta, meta_key::HEADER)
        .map_err(|e| OpenError::Corrupt { path: path.clone(), reason: e.to_string() })?;
    let header = match stored {
        None if fresh => {
            let bytes = codec::encode("header", &expected)
                .map_err(|e| OpenError::Corrupt { path: path.clone(), reason: e.to_string() })?;
            db.put_cf_opt(meta, meta_key::HEADER, bytes, &synced())
                .map_err(|e| OpenError::Io { path: path.clone(), reason: e.to_string() })?;
            expected
        }
        None => return Err(OpenError::Corrupt { path: path.clone(), reason: "format header is missing".into() }),
        Some(bytes) => {
            let found: Header = codec::decode("header", &bytes)
                .map_err(|e| OpenError::Corrupt { path: path.clone(), reason: e.to_string() })?;
            if found.node_id != node_id {
                return Err(OpenError::WrongNode { path: path.clone(), found: found.node_id, expected: node_id });
            }
            if found.cluster_id != cluster_id {
                return Err(OpenError::WrongCluster {
                    path: path.clone(),
                    found: found.cluster_id,
                    expected: cluster_id.to_owned(),
                });
            }
            match found.format_version {
                FORMAT_VERSION => found,
                PREVIOUS_FORMAT => {
                    let rewritten = upgrade::from_previous(&db, &found)
                        .map_err(|e| OpenError::Upgrade { path: path.clone(), reason: e.to_string() })?;
                    tracing::info!(
                        path = %path.display(),
                        from = PREVIOUS_FORMAT,
                        to = FORMAT_VERSION,
                        log_entries = rewritten,
                        "upgraded the data dir's on-disk format"
                    );
                    Header { format_version: FORMAT_VERSION, ..found }
                }
                newer if newer > FORMAT_VERSION => {
                    return Err(OpenError::NewerFormat { path: path.clone(), found: newer })
                }
                older => return Err(OpenError::OlderFormat { path: path.clone(), found: older }),
            }
        }
    };
    Ok(Store { db: Arc::new(db), header, path })
}

/// Options of every column family. Apply looks up keys that mostly do not exist yet (a
/// new entry's id, its identity key): bloom filters in SST files answer those without
/// reading data blocks.
fn table_options() -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    opts
}

/// Looks up a column family; every one is created when the store is.
pub fn cf(db: &DB, cf: Cf) -> &rocksdb::ColumnFamily {
    // Open fails unless every column family exists, so a missing one is a bug, not bad input.
    db.cf_handle(cf.name()).unwrap_or_else(|| panic!("column family {} missing after open", cf.name()))
}
