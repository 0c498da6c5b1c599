//! All durable state, replicated by Raft (openraft 0.9) over RocksDB: the type config, the
//! log store and state machine, snapshots, the data model and its commands, and typed
//! reads. Knows nothing of SPIFFE protocols beyond the data model.
#![forbid(unsafe_code)]
// openraft's StorageError is large, and the storage traits return it by value.
#![allow(clippy::result_large_err)]

pub mod applied;
pub mod backup;
pub mod codec;
pub mod command;
pub mod db;
pub mod leader_contact;
mod log_store;
mod membership;
pub mod model;
pub mod network;
pub mod node;
pub mod peer_clocks;
pub mod proposer;
pub mod query;
pub mod schema;
mod state_machine;
#[cfg(feature = "testing")]
pub mod testing;
mod transfer;
pub mod types;

use std::path::Path;

pub use applied::{Applied, AppliedFeed};
pub use command::{ApplyError, BundleScope, Change, ChangeSet, Command, Outcome, Response, Table, Write};
pub use db::OpenError;
pub use log_store::{ApplyProgress, LogStore};
pub use membership::AddProgress;
pub use peer_clocks::{ClockSkewed, PeerClocks};
pub use query::{ChangedKeys, EntryChanges, Page, ReadError, Rows, StoreReader};
pub use state_machine::{SnapshotBuilder, StateMachine, REQUEST_WINDOW};
pub use types::{NodeId, ReplicaNode, TypeConfig};

/// The views of one replica's data directory, and where its apply announces.
pub struct OpenedStore {
    pub log: LogStore,
    pub state_machine: StateMachine,
    pub reader: StoreReader,
    pub applied: AppliedFeed,
    pub header: db::Header,
}

/// Opens (or creates, in an empty directory) the store of `node_id` in `cluster_id`,
/// refusing a directory that is corrupt or belongs to another replica or cluster.
pub async fn open_store(data_dir: &Path, node_id: NodeId, cluster_id: &str) -> Result<OpenedStore, OpenError> {
    let dir = data_dir.to_path_buf();
    let cluster = cluster_id.to_owned();
    let io = |reason: String| OpenError::Io { path: data_dir.to_path_buf(), reason };
    let (store, revision) = tokio::task::spawn_blocking(move || {
        let store = db::open(&dir, node_id, &cluster)?;
        let revision = state_machine::read_revision(&store.db)
            .map_err(|e| OpenError::Corrupt { path: dir.clone(), reason: e.to_string() })?;
        Ok::<_, OpenError>((store, revision))
    })
    .await
    .map_err(|e| io(e.to_string()))??;
    let log = LogStore::new(store.db.clone()).map_err(|e| io(format!("cannot start the log sync thread: {e}")))?;
    let applied = AppliedFeed::new(revision);
    let state_machine =
        StateMachine::new(store.db.clone(), data_dir.join("snapshots"), log.apply_progress(), applied.clone());
    Ok(OpenedStore { log, state_machine, reader: StoreReader::new(store.db), applied, header: store.header })
}
