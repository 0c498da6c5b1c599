//! Backups and disaster recovery: a running replica writes its whole state to a file
//! (the snapshot format, from one consistent view, after a read-index barrier so it holds
//! every write acknowledged before the call), and a pristine data dir can be seeded from
//! such a file as the sole voter of a new cluster — etcd's `snapshot restore`: the state is
//! kept, the membership is replaced.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::{CommittedLeaderId, Membership};

use crate::codec;
use crate::db::{self, cf, synced};
use crate::schema::{meta_key, Cf};
use crate::state_machine::snapshot::{decode_file, encode_file, install, read_state};
use crate::types::{LogId, NodeId, ReplicaNode, SnapshotMeta, StoredMembership};
use crate::OpenError;

/// Why a backup could not be written or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup file: {0}")]
    Format(String),
    #[error("the backup holds no applied state")]
    Empty,
    #[error("{0} is not empty: restore only into a new data dir")]
    NotPristine(String),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("storage: {0}")]
    Storage(String),
}

/// The state of `db` as backup-file bytes. Blocking.
pub(crate) fn export(db: &rocksdb::DB) -> Result<Vec<u8>, BackupError> {
    let (meta, data) = read_state(db).map_err(|e| BackupError::Storage(e.to_string()))?;
    if meta.last_log_id.is_none() {
        return Err(BackupError::Empty);
    }
    encode_file(&meta, &data).map_err(|e| BackupError::Storage(e.to_string()))
}

/// Seeds the pristine `data_dir` with `backup`'s state, as applied up to the backup's index,
/// with `node_id` (at `node`) the only member. Starting a replica on it then makes it the
/// leader of a one-replica cluster with the restored state. Returns the restored index.
/// Blocking.
pub fn restore(
    data_dir: &Path,
    node_id: NodeId,
    cluster_id: &str,
    node: ReplicaNode,
    backup: &[u8],
) -> Result<u64, BackupError> {
    if data_dir.exists()
        && std::fs::read_dir(data_dir).map_err(|e| BackupError::Storage(e.to_string()))?.next().is_some()
    {
        return Err(BackupError::NotPristine(data_dir.display().to_string()));
    }
    let (meta, data) = decode_file(backup).map_err(|e| BackupError::Format(e.to_string()))?;
    let index = meta.last_log_id.map(|l| l.index).ok_or(BackupError::Empty)?;
    let store = db::open(data_dir, node_id, cluster_id)?;
    // Term 0: the first election of the new cluster moves to term 1, above every id here.
    let log_id = LogId::new(CommittedLeaderId::new(0, node_id), index);
    let membership = Membership::new(vec![BTreeSet::from([node_id])], BTreeMap::from([(node_id, node)]));
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), membership),
        snapshot_id: format!("restore-{index}"),
    };
    let storage = |e: &dyn std::fmt::Display| BackupError::Storage(e.to_string());
    install(&store.db, &data_dir.join("snapshots"), &meta, data).map_err(|e| storage(&e))?;
    // The log starts empty behind the restored state: purged and committed up to it.
    let purged = codec::encode("last purged log id", &log_id).map_err(|e| storage(&e))?;
    let committed = codec::encode("committed log id", &Some(log_id)).map_err(|e| storage(&e))?;
    let meta_cf = cf(&store.db, Cf::Meta);
    let mut batch = rocksdb::WriteBatch::default();
    batch.put_cf(meta_cf, meta_key::LAST_PURGED, purged);
    batch.put_cf(meta_cf, meta_key::COMMITTED, committed);
    // A new cluster: the old one's removed node ids and cluster CA mean nothing to it.
    batch.delete_cf(cf(&store.db, Cf::SmMeta), crate::schema::sm_key::REMOVED_REPLICAS);
    batch.delete_cf(cf(&store.db, Cf::SmMeta), crate::schema::sm_key::CLUSTER_CA);
    store.db.write_opt(batch, &synced()).map_err(|e| storage(&e))?;
    Ok(index)
}
