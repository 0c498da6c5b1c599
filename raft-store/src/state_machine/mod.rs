//! The replicated state machine over RocksDB column families.

mod apply;
mod requests;
pub(crate) mod snapshot;
pub(crate) mod txn;

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, StorageIOError};
use rocksdb::DB;

pub use requests::REQUEST_WINDOW;
pub use snapshot::SnapshotBuilder;

use crate::applied::{Applied, AppliedFeed};
use crate::codec::{self, u64_key};
use crate::command::{ChangeSet, Command, Outcome, Response};
use crate::db::{cf, unlogged};
use crate::log_store::ApplyProgress;
use crate::schema::{sm_key, Cf};
use crate::types::{Entry, LogId, NodeId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use txn::Txn;

/// The state machine: applies committed entries, builds and installs snapshots.
pub struct StateMachine {
    db: Arc<DB>,
    snapshot_dir: PathBuf,
    /// Tells the log's in-memory tail how far apply has come.
    progress: ApplyProgress,
    /// Where every applied change is announced.
    applied: AppliedFeed,
}

/// The revision of the last applied command (0 in a new store). Blocking.
pub(crate) fn read_revision(db: &DB) -> Result<u64, StorageError> {
    Ok(read_sm(db, sm_key::REVISION, "revision")?.unwrap_or(0))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StorageError::from(StorageIOError::write_state_machine(&e)))?
}

pub(crate) fn read_sm<T: serde::de::DeserializeOwned>(
    db: &DB,
    key: &[u8],
    what: &'static str,
) -> Result<Option<T>, StorageError> {
    let bytes = db.get_cf(cf(db, Cf::SmMeta), key).map_err(|e| StorageIOError::read_state_machine(&e))?;
    bytes.map(|b| codec::decode(what, &b).map_err(|e| StorageIOError::read_state_machine(&e).into())).transpose()
}

impl StateMachine {
    pub fn new(db: Arc<DB>, snapshot_dir: PathBuf, progress: ApplyProgress, applied: AppliedFeed) -> Self {
        Self { db, snapshot_dir, progress, applied }
    }

    /// Applies entries in one transaction and one RocksDB write. Each entry still gets its
    /// own revision and change-log record; reads inside the transaction see earlier entries.
    fn apply_all(db: &DB, entries: &[Entry]) -> Result<(Vec<Response>, Applied), StorageError> {
        let Some(last) = entries.last() else {
            return Ok((Vec::new(), Applied::Changes { revision: read_revision(db)?, sets: Arc::new([]) }));
        };
        let write_err =
            |log_id, e: &dyn std::error::Error| StorageError::from(StorageIOError::apply(log_id, anyerror_of(e)));
        let mut revision = read_revision(db)?;
        let mut txn = Txn::new(db);
        let mut responses = Vec::with_capacity(entries.len());
        let mut sets = Vec::new();
        for entry in entries {
            let outcome = match &entry.payload {
                EntryPayload::Blank => Outcome::None,
                EntryPayload::Membership(membership) => {
                    // A node id that leaves the membership is remembered for good: its
                    // certificate may never call again, nor may the id join again.
                    let before: Option<StoredMembership> = txn
                        .get(Cf::SmMeta, sm_key::MEMBERSHIP, "membership")
                        .map_err(|e| write_err(entry.log_id, &e))?;
                    if let Some(before) = before {
                        let gone: Vec<NodeId> = before
                            .membership()
                            .nodes()
                            .map(|(id, _)| *id)
                            .filter(|id| membership.get_node(id).is_none())
                            .collect();
                        if !gone.is_empty() {
                            let mut removed: std::collections::BTreeSet<NodeId> = txn
                                .get(Cf::SmMeta, sm_key::REMOVED_REPLICAS, "removed replicas")
                                .map_err(|e| write_err(entry.log_id, &e))?
                                .unwrap_or_default();
                            removed.extend(gone);
                            txn.put(Cf::SmMeta, sm_key::REMOVED_REPLICAS, "removed replicas", &removed)
                                .map_err(|e| write_err(entry.log_id, &e))?;
                        }
                    }
                    let stored = StoredMembership::new(Some(entry.log_id), membership.clone());
                    txn.put(Cf::SmMeta, sm_key::MEMBERSHIP, "membership", &stored)
                        .map_err(|e| write_err(entry.log_id, &e))?;
                    Outcome::None
                }
                EntryPayload::Normal(command) => {
                    responses.push(
                        Self::apply_one(&mut txn, command.command(), &mut revision, &mut sets)
                            .map_err(|e| write_err(entry.log_id, &e))?,
                    );
                    continue;
                }
            };
            responses.push(Response { revision, outcome });
        }
        txn.put(Cf::SmMeta, sm_key::REVISION, "revision", &revision).map_err(|e| write_err(last.log_id, &e))?;
        txn.put(Cf::SmMeta, sm_key::LAST_APPLIED, "last applied", &last.log_id)
            .map_err(|e| write_err(last.log_id, &e))?;
        // Not logged: the entries are durable in the Raft log, and a crash only takes the
        // state back to its last (atomic) flush, from which the log is applied again.
        db.write_opt(txn.into_batch(), &unlogged()).map_err(|e| write_err(last.log_id, &e))?;
        Ok((responses, Applied::Changes { revision, sets: sets.into() }))
    }
}

impl StateMachine {
    /// Applies one command (a batch: each of its commands in order), bumping the revision
    /// and recording the change set of each.
    fn apply_one(
        txn: &mut Txn<'_>,
        command: &Command,
        revision: &mut u64,
        sets: &mut Vec<ChangeSet>,
    ) -> Result<Response, txn::TxnError> {
        if let Command::Batch(commands) = command {
            let responses =
                commands.iter().map(|c| Self::apply_one(txn, c, revision, sets)).collect::<Result<Vec<_>, _>>()?;
            return Ok(Response { revision: *revision, outcome: Outcome::Batch(responses) });
        }
        if let Command::Idempotent(once) = command {
            if let Some(earlier) = requests::answered(txn, once, *revision)? {
                return Ok(earlier);
            }
            let response = Self::apply_one(txn, &once.command, revision, sets)?;
            requests::remember(txn, once, &response)?;
            return Ok(response);
        }
        *revision += 1;
        let outcome = apply::apply_command(txn, command, *revision)?;
        let changes = txn.take_changes();
        if !changes.is_empty() {
            let set = ChangeSet { revision: *revision, changes };
            txn.put_raw(Cf::ChangeLog, u64_key(*revision).to_vec(), codec::encode("change set", &set)?);
            sets.push(set);
        }
        Ok(Response { revision: *revision, outcome })
    }
}

fn anyerror_of(e: &dyn std::error::Error) -> openraft::AnyError {
    openraft::AnyError::error(e.to_string())
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let last_applied: Option<LogId> = read_sm(&db, sm_key::LAST_APPLIED, "last applied")?;
            let membership: Option<StoredMembership> = read_sm(&db, sm_key::MEMBERSHIP, "membership")?;
            Ok((last_applied, membership.unwrap_or_default()))
        })
        .await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id.index) else { return Ok(Vec::new()) };
        let db = self.db.clone();
        let (responses, applied) = blocking(move || Self::apply_all(&db, &entries)).await?;
        self.progress.applied(last);
        self.applied.publish(applied);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder::new(self.db.clone(), self.snapshot_dir.clone())
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let (db, dir, meta) = (self.db.clone(), self.snapshot_dir.clone(), meta.clone());
        let data = snapshot.into_inner();
        let (last, bytes) = (meta.last_log_id, data.len());
        let revision = blocking(move || {
            snapshot::install(&db, &dir, &meta, data)?;
            read_revision(&db)
        })
        .await?;
        self.applied.publish(Applied::Replaced { revision });
        tracing::info!(last_log_id = ?last, bytes, "installed a snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let dir = self.snapshot_dir.clone();
        blocking(move || snapshot::load_current(&dir)).await
    }
}
